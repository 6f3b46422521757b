// The libtorch layer (dcp.alloc, dcp.torch): a checkpoint's tensors as at::Tensor against real
// PyTorch (cases written at test time by torch 1.13 and torch 2.13), the core's buffers adopted
// without a copy, and dtypes or devices this libtorch lacks refused before any read. The core
// loader itself is tests/checkpoint.
#define BOOST_TEST_MODULE dcp.torch
#include <boost/test/unit_test.hpp>
#include <ATen/core/Tensor.h>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <filesystem>
#include <memory>

#include "support.hpp"
import dcp.error;
import dcp.metadata;
import dcp.memory;
import dcp.record;
import dcp.storage;
import dcp.alloc;
import dcp.planning;
import dcp.checkpoint;
import dcp.torch;

namespace json = boost::json;
using dcp_test::checkpoint_case;
using dcp_test::needs_python2x;

namespace {

std::vector<std::byte> tensor_bytes(const at::Tensor& t) {
  // Full tensors from the loader are contiguous: their memory is the row-major value.
  const auto* p = static_cast<const std::byte*>(t.data_ptr());
  return std::vector<std::byte>(p, p + t.numel() * t.element_size());
}

// torch's dtype names (`torch.float32` → "float32") and the c10 ScalarType each is, as c10's
// toString spells it: written here from torch's documentation, not from dcp.dtype or dcp.alloc,
// so the tests below learn what this libtorch has from c10 itself.
const std::map<std::string, std::string>& c10_names() {
  static const std::map<std::string, std::string> names = {
      {"float32", "Float"},          {"float64", "Double"},
      {"float16", "Half"},           {"bfloat16", "BFloat16"},
      {"complex32", "ComplexHalf"},  {"complex64", "ComplexFloat"},
      {"complex128", "ComplexDouble"}, {"int8", "Char"},
      {"uint8", "Byte"},             {"int16", "Short"},
      {"int32", "Int"},              {"int64", "Long"},
      {"bool", "Bool"},              {"uint16", "UInt16"},
      {"uint32", "UInt32"},          {"uint64", "UInt64"},
      {"float8_e4m3fn", "Float8_e4m3fn"}, {"float8_e5m2", "Float8_e5m2"},
      {"float8_e4m3fnuz", "Float8_e4m3fnuz"}, {"float8_e5m2fnuz", "Float8_e5m2fnuz"},
      {"float8_e8m0fnu", "Float8_e8m0fnu"}};
  return names;
}

// This libtorch's scalar types, by c10's name.
const std::map<std::string, c10::ScalarType>& libtorch_types() {
  static const auto types = [] {
    std::map<std::string, c10::ScalarType> out;
    for (int i = 0; i < static_cast<int>(c10::ScalarType::NumOptions); ++i) {
      const auto type = static_cast<c10::ScalarType>(i);
      out.emplace(c10::toString(type), type);
    }
    return out;
  }();
  return types;
}

// Whether this build's libtorch has a tensor type for torch's dtype `name` (Debian's 1.13 has no
// uint16/32/64 and no float8 types).
bool libtorch_has(const std::string& name) {
  const auto it = c10_names().find(name);
  return it != c10_names().end() && libtorch_types().contains(it->second);
}

template <class Fn>
dcp::Error error_of(Fn&& fn) {
  return dcp_test::thrown<dcp::Error>(std::forward<Fn>(fn));
}

// Every tensor this libtorch can hold and every object equal what PyTorch saved.
void check_load_full(const std::filesystem::path& dir) {
  const auto expected = dcp_test::read_json(dir / "expected.json").as_object();
  dcp::torch::LoadOptions options;
  options.batch_bytes = 4096;  // many batches: exercises the bounded-memory path
  const auto& tensors = expected.at("tensors").as_object();
  std::size_t want_tensors = 0;
  for (const auto& [fqn, t] : tensors)
    want_tensors += libtorch_has(std::string(t.at("dtype").as_string()));
  options.select = [&](std::string_view fqn) {
    const auto* t = tensors.if_contains(fqn);
    return !t || libtorch_has(std::string(t->at("dtype").as_string()));
  };
  const auto loaded = dcp::torch::load_full(dir / "ckpt", options);
  BOOST_TEST(loaded.tensors.size() == want_tensors);
  for (const auto& [fqn, tensor] : loaded.tensors) {
    const auto& want = tensors.at(fqn).as_object();
    BOOST_TEST_REQUIRE(tensor.is_contiguous(), fqn);
    BOOST_TEST(tensor.device().is_cpu(), fqn);
    BOOST_TEST(dcp::dtype_name(dcp::alloc::dtype_of(tensor)) == std::string(want.at("dtype").as_string()), fqn);
    const auto bytes = dcp_test::read_bytes(dir / std::string(want.at("file").as_string()));
    BOOST_TEST((tensor_bytes(tensor) == bytes), fqn << ": loaded bytes differ from PyTorch's");
  }
  const auto& objects = expected.at("objects").as_object();
  BOOST_TEST(loaded.objects.size() == objects.size());
  for (const auto& [fqn, doc] : loaded.objects)
    BOOST_TEST((json::parse(dcp::record::object_to_json(doc, doc.root())) == objects.at(fqn).as_object().at("json")), fqn);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(tensors)

BOOST_AUTO_TEST_CASE(torch113_cases_load_as_tensors) {
  for (const char* name : {"flat_dtypes", "single_file", "sharded_4ranks", "optimizer"})
    BOOST_TEST_CONTEXT(name) { check_load_full(checkpoint_case(name)); }
}

BOOST_AUTO_TEST_CASE(torch213_cases_load_as_tensors, *boost::unit_test::precondition(needs_python2x)) {
  for (const auto& name : dcp_test::torch2x_cases())
    BOOST_TEST_CONTEXT(name) { check_load_full(checkpoint_case(name)); }
}

BOOST_AUTO_TEST_CASE(core_buffers_become_tensors_without_a_copy) {
  auto buffer = dcp::memory::allocate(4 * 6);
  auto* data = buffer.data();
  const auto t = dcp::alloc::adopt(std::move(buffer), dcp::DType::float32, {2, 3});
  BOOST_TEST(t.data_ptr() == static_cast<void*>(data));
  BOOST_TEST(t.numel() == 6);
  BOOST_TEST(t.is_contiguous());
  // Large CPU tensors keep the core's 2 MiB-aligned huge-page mapping.
  const auto big = dcp::alloc::allocate(dcp::DType::float32, {1 << 20});
  BOOST_TEST(reinterpret_cast<std::uintptr_t>(big.data_ptr()) % dcp::memory::kHugePageBytes == 0u);
  const auto e = error_of([] { (void)dcp::alloc::adopt(dcp::memory::allocate(8), dcp::DType::float64, {2}); });
  BOOST_TEST(dcp::errc_name(e.code()) == "invalid_argument", e.what());
}

BOOST_AUTO_TEST_CASE(dtypes_this_libtorch_lacks_are_refused_before_reading, *boost::unit_test::precondition(needs_python2x)) {
  if (libtorch_has("uint16")) {
    BOOST_TEST_MESSAGE("this libtorch has uint16: nothing to refuse");
    return;
  }
  const auto ckpt = checkpoint_case("x2_dtypes_v3") / "ckpt";
  dcp::torch::LoadOptions options;
  options.select = [](std::string_view fqn) { return fqn == "u.uint16"; };
  int consumed = 0;
  const auto e = error_of([&] {
    (void)dcp::torch::for_each_tensor(ckpt, dcp::checkpoint::inspect(ckpt), options,
                                      [&](const std::string&, at::Tensor) { ++consumed; });
  });
  BOOST_TEST(dcp::errc_name(e.code()) == "unimplemented", e.what());
  BOOST_TEST(e.context().key == "u.uint16", e.what());
  BOOST_TEST(consumed == 0);
}

// Every scalar type of this libtorch that torch names a dtype is one dcpp allocates: dcp.alloc
// maps the dtype of that name to it, with c10's element size, and it comes back from a tensor;
// every other dtype is refused as unimplemented.
BOOST_AUTO_TEST_CASE(the_dtype_table_names_this_libtorchs_scalar_types) {
  std::size_t found = 0;
  for (const auto& info : dcp::dtype_table()) {
    if (!libtorch_has(std::string(info.name))) {
      const auto e = error_of([&] { (void)dcp::alloc::scalar_type(info.dtype); });
      BOOST_TEST(dcp::errc_name(e.code()) == "unimplemented", info.name << ": " << e.what());
      continue;
    }
    ++found;
    const auto want = libtorch_types().at(c10_names().at(std::string(info.name)));
    const auto type = dcp::alloc::scalar_type(info.dtype);
    BOOST_TEST((type == want), info.name << " is c10's " << c10::toString(type));
    BOOST_TEST(c10::elementSize(type) == info.itemsize, info.name);
    BOOST_TEST((dcp::alloc::dtype_of(dcp::alloc::allocate(info.dtype, {2})) == info.dtype), info.name);
  }
  std::size_t torch_named = 0;
  for (const auto& [name, c10_name] : c10_names()) torch_named += libtorch_types().contains(c10_name);
  BOOST_TEST(found == torch_named);
}

BOOST_AUTO_TEST_CASE(cuda_destinations) {
  const auto ckpt = checkpoint_case("flat_dtypes") / "ckpt";
  dcp::torch::LoadOptions options;
  options.allocation.device = dcp::memory::Device::parse("cuda:0");
  options.select = [](std::string_view fqn) { return fqn == "w.fp32"; };
  if (!dcp::alloc::cuda_available()) {
    const auto e = error_of([&] { (void)dcp::torch::load_full(ckpt, options); });
    BOOST_TEST(dcp::errc_name(e.code()) == "unimplemented", e.what());
    BOOST_TEST(std::string(e.what()).find("no CUDA") != std::string::npos, e.what());
    return;
  }
  const auto loaded = dcp::torch::load_full(ckpt, options);
  BOOST_TEST_REQUIRE(loaded.tensors.size() == 1u);
  BOOST_TEST(loaded.tensors[0].second.device().is_cuda());
  const auto expected = dcp_test::read_json(checkpoint_case("flat_dtypes") / "expected.json").as_object();
  const auto file = std::string(expected.at("tensors").at("w.fp32").at("file").as_string());
  BOOST_TEST((tensor_bytes(loaded.tensors[0].second.cpu()) == dcp_test::read_bytes(checkpoint_case("flat_dtypes") / file)));
}

BOOST_AUTO_TEST_SUITE_END()

// at::Tensors saved through the core (TensorStateDict) come back equal, a transposed view as
// its row-major value; async_save's staging goes through staging_allocator().
BOOST_AUTO_TEST_CASE(tensors_saved_as_at_tensors_load_back) {
  auto a = dcp::alloc::allocate(dcp::DType::float32, {3, 4});
  auto* pa = static_cast<float*>(a.data_ptr());
  for (int i = 0; i < 12; ++i) pa[i] = static_cast<float>(i) + 0.5f;
  const auto transposed = a.t();  // 4 x 3, strides (1, 4)
  auto step = dcp::alloc::allocate(dcp::DType::int64, {});
  *static_cast<std::int64_t*>(step.data_ptr()) = 42;

  dcp_test::TempDir tmp;
  dcp::torch::TensorStateDict sd;
  sd.add({std::string("model"), std::string("w")}, a);
  sd.add({std::string("model"), std::string("wt")}, transposed);
  sd.add({std::string("step")}, step);
  sd.add_object({std::string("note")}, dcp::planning::ObjectValue::string("x"));
  dcp::storage::WriteOptions options;
  options.sync_files = false;
  dcp::checkpoint::Checkpointer checkpointer(
      std::make_shared<dcp::storage::FileSystemWriter>(tmp.path() / "ckpt", options), nullptr, nullptr, 0, false,
      nullptr, nullptr, dcp::torch::staging_allocator());
  auto saved = checkpointer.async_save(sd.state_dict());
  pa[0] = -1.0f;  // after async_save returns the caller may change its tensors
  BOOST_TEST(saved.get().items.size() == 4u);

  const auto loaded = dcp::torch::load_full(tmp.path() / "ckpt");
  BOOST_REQUIRE(loaded.tensors.size() == 3u);
  const auto& w = loaded.tensors[0].second;
  const auto& wt = loaded.tensors[1].second;
  BOOST_TEST(loaded.tensors[0].first == "model.w");
  BOOST_TEST(static_cast<const float*>(w.data_ptr())[0] == 0.5f);
  for (int i = 1; i < 12; ++i) BOOST_TEST(static_cast<const float*>(w.data_ptr())[i] == pa[i]);
  BOOST_TEST((wt.sizes() == c10::IntArrayRef{4, 3}));
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < 3; ++c)
      BOOST_TEST(static_cast<const float*>(wt.data_ptr())[r * 3 + c] == (r == 0 && c == 0 ? 0.5f : pa[c * 4 + r]));
  BOOST_TEST(*static_cast<const std::int64_t*>(loaded.tensors[2].second.data_ptr()) == 42);
}
