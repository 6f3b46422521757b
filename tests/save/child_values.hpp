// The state dict save_child writes for generation `gen`, shared with the crash trials that
// check what survived: pure functions, no dcpp.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace child_values {

/// Tensors of the state dict: "marker" (int64, 1024 elements, all = gen) and "data.<i>"
/// (float32, `elems` each, seeded by gen and i).
inline constexpr int kDataTensors = 4;
inline constexpr std::int64_t kMarkerElems = 1024;

inline std::vector<std::int64_t> marker(std::int64_t gen) { return std::vector<std::int64_t>(kMarkerElems, gen); }

inline std::vector<std::uint32_t> data(std::int64_t gen, int i, std::size_t elems) {
  std::uint64_t s = static_cast<std::uint64_t>(gen) * 1000003u + static_cast<std::uint64_t>(i) * 7919u + 1;
  std::vector<std::uint32_t> out(elems);
  for (auto& v : out) {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    v = static_cast<std::uint32_t>(s);
  }
  return out;
}

}  // namespace child_values
