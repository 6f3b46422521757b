// What the crash tests share: the generation a directory holds, checked whole against
// child_values (the state dict save_child writes), and a torch 2.13 check of survivors.
#pragma once
#include <boost/json.hpp>
#include <boost/test/unit_test.hpp>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>

#include "child_values.hpp"
#include "save_support.hpp"

namespace save_test {

/// Elements of each data tensor of a save_child run of `mb` MB.
inline std::size_t child_elems(double mb) { return static_cast<std::size_t>(mb * (1 << 20) / 4 / child_values::kDataTensors); }

/// The generation of the complete checkpoint in `dir` (verified whole, and the marker and the
/// data tensors compared with what that generation saves: one, or all with `check_all_data`),
/// or -1 when there is no .metadata. Fails the test (returning -2) for anything else.
inline std::int64_t generation_in(const fs::path& dir, double mb, bool check_all_data = false) {
  if (!fs::exists(dir / ".metadata")) return -1;
  try {
    (void)ck::verify(dir);
  } catch (const dcp::Error& e) {
    BOOST_ERROR("a .metadata that does not verify in " << dir << ": " << e.what());
    return -2;
  }
  const auto tensors = dcpp_tensors(dir);
  const auto& marker = tensors.at("marker");
  std::int64_t gen = 0;
  std::memcpy(&gen, marker.data(), 8);
  const auto want = child_values::marker(gen);
  BOOST_TEST((std::memcmp(marker.data(), want.data(), marker.size()) == 0 && marker.size() == want.size() * 8),
             "marker of " << dir);
  for (int i = 0; i < child_values::kDataTensors; ++i) {
    if (!check_all_data && i != static_cast<int>(gen % child_values::kDataTensors)) continue;
    const auto data = child_values::data(gen, i, child_elems(mb));
    const auto& got = tensors.at("data." + std::to_string(i));
    BOOST_TEST((got.size() == data.size() * 4 && std::memcmp(got.data(), data.data(), got.size()) == 0),
               "data." << i << " of generation " << gen << " in " << dir);
  }
  return gen;
}

/// What torch 2.13's dcp.load must find in a checkpoint of generation `gen` (save_check.py).
inline boost::json::object generation_check(const std::string& name, const fs::path& dir, std::int64_t gen, double mb,
                                            const fs::path& bins) {
  Case c(bins);
  const auto m = child_values::marker(gen);
  c.expect({std::string("marker")}, DType::int64, {child_values::kMarkerElems},
           std::vector<std::byte>(reinterpret_cast<const std::byte*>(m.data()),
                                  reinterpret_cast<const std::byte*>(m.data()) + m.size() * 8));
  for (int i = 0; i < child_values::kDataTensors; ++i) {
    const auto d = child_values::data(gen, i, child_elems(mb));
    c.expect({std::string("data"), std::int64_t{i}}, DType::float32, {static_cast<std::int64_t>(d.size())},
             std::vector<std::byte>(reinterpret_cast<const std::byte*>(d.data()),
                                    reinterpret_cast<const std::byte*>(d.data()) + d.size() * 4));
  }
  boost::json::object o;
  o["path"] = json_path({std::string("generation")});
  o["literal"] = std::to_string(gen);
  c.objects.push_back(std::move(o));
  return c.check(name, dir);
}

}  // namespace save_test
