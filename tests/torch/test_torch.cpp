// The libtorch layer (dcp.alloc, dcp.torch): a checkpoint's tensors as at::Tensor against real
// PyTorch (cases written at test time by torch 1.13 and torch 2.13), the core's buffers adopted
// without a copy, and dtypes or devices this libtorch lacks refused before any read. The core
// loader itself is tests/checkpoint.
#define BOOST_TEST_MODULE dcp.torch
#include <boost/test/unit_test.hpp>
#include <ATen/core/Tensor.h>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "support.hpp"
import dcp.error;
import dcp.metadata;
import dcp.memory;
import dcp.record;
import dcp.storage;
import dcp.alloc;
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

// Whether this build's libtorch has a tensor type for `dtype` (Debian's 1.13 has no uint16/32/64
// and no float8 types).
bool libtorch_has(dcp::DType dtype) {
  try {
    (void)dcp::alloc::scalar_type(dtype);
    return true;
  } catch (const dcp::Error&) {
    return false;
  }
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
    want_tensors += libtorch_has(*dcp::dtype_from_name(std::string(t.at("dtype").as_string())));
  options.select = [&](std::string_view fqn) {
    const auto* t = tensors.if_contains(fqn);
    return !t || libtorch_has(*dcp::dtype_from_name(std::string(t->at("dtype").as_string())));
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
  if (libtorch_has(dcp::DType::uint16)) {
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
