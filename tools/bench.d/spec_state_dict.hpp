// The state dict the save benchmarks write: the tensors (names, dtypes, shapes) of a
// checkpoint, in fresh memory filled with a byte pattern and touched before any clock starts.
#pragma once
#include <cstdint>
#include <filesystem>
#include <vector>

import dcp.metadata;
import dcp.planning;
import dcp.memory;
import dcp.checkpoint;

namespace bench {

struct SpecStateDict {
  std::vector<dcp::memory::Buffer> buffers;
  dcp::planning::StateDict state_dict;
  std::uint64_t bytes = 0;
};

inline SpecStateDict state_dict_of_spec(const std::filesystem::path& checkpoint_dir) {
  SpecStateDict out;
  const auto md = dcp::checkpoint::inspect(checkpoint_dir);
  for (const auto& item : md->items) {
    if (!item.is_tensor()) continue;
    const auto& t = item.tensor();
    const auto bytes = dcp::metadata::byte_size(t.size, t.properties.dtype);
    auto& buffer = out.buffers.emplace_back(dcp::memory::allocate(bytes));
    for (std::uint64_t i = 0; i < bytes; ++i) buffer.data()[i] = static_cast<std::byte>(i * 31 % 251);
    out.state_dict.add_tensor({item.fqn}, dcp::planning::contiguous_slice(buffer.data(), t.properties.dtype, t.size));
    out.bytes += bytes;
  }
  return out;
}

}  // namespace bench
