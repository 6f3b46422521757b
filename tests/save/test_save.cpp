// dcp.checkpoint's save path: planner, filesystem writer and save sequence, checked by loading
// the result back through dcpp and through real PyTorch.
#define BOOST_TEST_MODULE dcp.save
#include <boost/test/unit_test.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <numeric>
#include <string>
#include <variant>
#include <vector>

#include "../support/support.hpp"

import dcp.error;
import dcp.metadata;
import dcp.planning;
import dcp.memory;
import dcp.storage;
import dcp.checkpoint;

namespace pl = dcp::planning;
namespace md = dcp::metadata;
namespace st = dcp::storage;
namespace ck = dcp::checkpoint;
using dcp::DType;

namespace {

// A tensor whose bytes are 0, 1, 2, ... (mod 251), owned by the test.
struct OwnedTensor {
  std::vector<std::byte> bytes;
  pl::TensorSlice slice;
};

OwnedTensor make_tensor(DType dtype, md::Shape sizes, int seed = 0) {
  OwnedTensor t;
  t.bytes.resize(static_cast<std::size_t>(md::byte_size(sizes, dtype)) + 1);
  for (std::size_t i = 0; i < t.bytes.size(); ++i) t.bytes[i] = static_cast<std::byte>((i * 7 + seed) % 251);
  if (dtype == DType::boolean)
    for (auto& b : t.bytes) b = static_cast<std::byte>(std::to_integer<int>(b) & 1);
  t.slice = pl::contiguous_slice(t.bytes.data(), dtype, std::move(sizes));
  return t;
}

st::WriteOptions fast(st::WriteOptions o = {}) {
  o.sync_files = false;
  return o;
}

std::vector<std::byte> load_full(const std::filesystem::path& dir, const std::string& fqn) {
  std::vector<std::byte> out;
  ck::LoadOptions options;
  options.select = [&](std::string_view k) { return k == fqn; };
  const auto md = ck::inspect(dir);
  (void)ck::for_each_tensor(dir, md, options, [&](const std::string&, ck::TensorBuffer t) {
    out.assign(t.bytes().begin(), t.bytes().end());
  });
  return out;
}

std::vector<std::byte> dense_bytes(const pl::TensorSlice& s) {
  const auto n = md::byte_size(s.sizes, s.dtype);
  std::vector<std::byte> out(static_cast<std::size_t>(n));
  if (n) st::copy_box(out.data(), pl::contiguous_slice(nullptr, s.dtype, s.sizes).strides, s.dtype, s.data, s.strides, s.dtype, s.sizes);
  return out;
}

}  // namespace

BOOST_AUTO_TEST_CASE(round_trip_through_dcpp) {
  dcp_test::TempDir tmp;
  auto a = make_tensor(DType::float32, {4, 3});
  auto b = make_tensor(DType::int64, {});
  auto c = make_tensor(DType::bfloat16, {0, 5});
  pl::StateDict sd;
  sd.add_tensor({std::string("model"), std::string("a")}, a.slice);
  sd.add_tensor({std::string("step")}, b.slice);
  sd.add_tensor({std::string("empty")}, c.slice);
  sd.add_object({std::string("meta"), std::string("name")}, pl::ObjectValue::string("hello"));
  st::FileSystemWriter writer(tmp.path() / "ckpt", fast());
  pl::DefaultSavePlanner planner;
  const auto saved = ck::save(sd, writer, planner);
  BOOST_TEST(saved.items.size() == 4u);
  const auto md = ck::inspect(tmp.path() / "ckpt");
  BOOST_TEST(md->planner_data.has_value());
  BOOST_TEST((load_full(tmp.path() / "ckpt", "model.a") == std::vector<std::byte>(a.bytes.begin(), a.bytes.end() - 1)));
  BOOST_TEST((load_full(tmp.path() / "ckpt", "step") == std::vector<std::byte>(b.bytes.begin(), b.bytes.end() - 1)));
  const auto objects = ck::load_objects(tmp.path() / "ckpt", md, {});
  BOOST_TEST(objects.size() == 1u);
  BOOST_TEST(objects[0].first == "meta.name");
  BOOST_TEST(std::string(objects[0].second.at(objects[0].second.root()).text()) == "hello");
}

// Keeps a checkpoint for a manual look when DCPP_KEEP is set.
BOOST_AUTO_TEST_CASE(torch213_loads_a_dcpp_checkpoint, *boost::unit_test::precondition(dcp_test::needs_python2x)) {
  dcp_test::TempDir tmp;
  auto a = make_tensor(DType::float32, {4, 3});
  auto b = make_tensor(DType::int64, {});
  pl::StateDict sd;
  sd.add_tensor({std::string("model"), std::string("a")}, a.slice);
  sd.add_tensor({std::string("step")}, b.slice);
  sd.add_object({std::string("meta"), std::string("name")}, pl::ObjectValue::string("hello"));
  st::FileSystemWriter writer(tmp.path() / "ckpt", fast());
  pl::DefaultSavePlanner planner;
  (void)ck::save(sd, writer, planner);
  const std::string script =
      "import sys, torch, torch.distributed.checkpoint as dcp\n"
      "sd = {'model': {'a': torch.zeros(4, 3)}, 'step': torch.zeros((), dtype=torch.int64), 'meta': {'name': None}}\n"
      "dcp.load(sd, checkpoint_id=sys.argv[1])\n"
      "exp = (torch.arange(49, dtype=torch.int64) * 7 % 251).to(torch.uint8)[:48].view(torch.float32).reshape(4, 3)\n"
      "assert torch.equal(sd['model']['a'].view(torch.int32), exp.view(torch.int32)), sd\n"
      "assert sd['meta']['name'] == 'hello', sd\n"
      "print('ok')\n";
  const auto out = dcp_test::run_capture(dcp_test::python2x() + " -c " + dcp_test::quote(script) + " " +
                                         dcp_test::quote(tmp.path() / "ckpt") + " 2>&1");
  BOOST_TEST(out.find("ok") != std::string::npos, out);
}
