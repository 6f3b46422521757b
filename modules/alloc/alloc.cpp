// dtype mapping, allocation and device copies through the C++17 bridge.
module;
#include <ATen/core/Tensor.h>
#include <cstdint>
#include <exception>
#include <new>
#include <sys/mman.h>
#include <string>
#include <string_view>
#include <vector>
#include "torch_bridge.hpp"
module dcp.alloc;
import dcp.error;
import dcp.metadata;
import dcp.planning;

namespace dcp::alloc {
namespace {

struct ScalarTypeOf {
  DType dtype;
  c10::ScalarType type;
};
constexpr ScalarTypeOf kScalarTypes[] = {
    {DType::float32, c10::ScalarType::Float}, {DType::float64, c10::ScalarType::Double},
    {DType::float16, c10::ScalarType::Half}, {DType::bfloat16, c10::ScalarType::BFloat16},
    {DType::int8, c10::ScalarType::Char}, {DType::uint8, c10::ScalarType::Byte},
    {DType::int16, c10::ScalarType::Short}, {DType::int32, c10::ScalarType::Int},
    {DType::int64, c10::ScalarType::Long}, {DType::boolean, c10::ScalarType::Bool},
    {DType::complex64, c10::ScalarType::ComplexFloat}, {DType::complex128, c10::ScalarType::ComplexDouble},
    {DType::complex32, c10::ScalarType::ComplexHalf},
};

c10::DeviceType device_type(const Device& d) {
  return d.kind == DeviceKind::cuda ? c10::DeviceType::CUDA : c10::DeviceType::CPU;
}

constexpr std::size_t kHugePage = std::size_t{2} << 20;
constexpr std::size_t kSmallPage = 4096;

void unmap(void* data, std::size_t length) { ::munmap(data, length); }

// Large CPU tensors: a mapping aligned to 2 MiB with MADV_HUGEPAGE, so first-touch page faults
// (the bound on loading into fresh memory) come 512 times less often. The mapping is trimmed
// to the tensor's size, so the resident set does not grow. nullptr when not applicable.
void* map_huge(std::size_t bytes, std::size_t& length) {
  length = (bytes + kSmallPage - 1) / kSmallPage * kSmallPage;
  void* raw = ::mmap(nullptr, length + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  const auto start = reinterpret_cast<std::uintptr_t>(raw);
  const auto aligned = (start + kHugePage - 1) / kHugePage * kHugePage;
  if (aligned > start) ::munmap(raw, aligned - start);
  const auto end = start + length + kHugePage;
  if (end > aligned + length) ::munmap(reinterpret_cast<void*>(aligned + length), end - (aligned + length));
  ::madvise(reinterpret_cast<void*>(aligned), length, MADV_HUGEPAGE);
  return reinterpret_cast<void*>(aligned);
}

template <class Fn>
auto torch_call(std::string_view what, Fn&& fn) {
  try {
    return fn();
  } catch (const std::bad_alloc&) {
    throw Error(Errc::resource_exhausted, std::string(what) + ": out of memory");
  } catch (const dcp::Error&) {
    throw;
  } catch (const std::exception& e) {
    // c10's allocators report exhaustion as c10::Error ("can't allocate memory", "out of memory").
    const std::string line = dcp_torch_bridge::first_line(e);
    const bool memory = line.find("allocate memory") != std::string::npos || line.find("out of memory") != std::string::npos;
    throw Error(memory ? Errc::resource_exhausted : Errc::internal, std::string(what) + ": " + line);
  }
}

}  // namespace

Device Device::parse(std::string_view text) {
  if (text == "cpu") return {DeviceKind::cpu, 0};
  if (text == "cuda") return {DeviceKind::cuda, 0};
  if (text.substr(0, 5) == "cuda:" && text.size() > 5 && text.size() < 9) {
    int index = 0;
    for (char c : text.substr(5)) {
      if (c < '0' || c > '9') throw Error(Errc::invalid_argument, "bad device '" + std::string(text) + "'");
      index = index * 10 + (c - '0');
    }
    return {DeviceKind::cuda, index};
  }
  throw Error(Errc::invalid_argument, "bad device '" + std::string(text) + "' (cpu, cuda or cuda:N)");
}

std::string Device::to_string() const {
  return kind == DeviceKind::cpu ? "cpu" : "cuda:" + std::to_string(index);
}

c10::ScalarType scalar_type(DType dtype) {
  for (const auto& s : kScalarTypes)
    if (s.dtype == dtype) return s.type;
  throw Error(Errc::unimplemented, "dtype " + std::string(dtype_name(dtype)) + " has no tensor type in this libtorch");
}

bool has_tensor_type(DType dtype) noexcept {
  for (const auto& s : kScalarTypes)
    if (s.dtype == dtype) return true;
  return false;
}

DType dtype_of(const at::Tensor& tensor) {
  for (const auto& s : kScalarTypes)
    if (s.type == tensor.scalar_type()) return s.dtype;
  throw Error(Errc::unimplemented, "tensor of an unsupported scalar type");
}

bool cuda_available() { return dcp_torch_bridge::cuda_available(); }

at::Tensor allocate(DType dtype, const metadata::Shape& sizes, const AllocOptions& options) {
  if (options.device.kind == DeviceKind::cuda && !cuda_available())
    throw Error(Errc::unimplemented, "device " + options.device.to_string() + ": this libtorch has no CUDA");
  const auto type = scalar_type(dtype);
  const auto bytes = metadata::byte_size(sizes, dtype);
  if (options.device.kind == DeviceKind::cpu && !options.pinned && bytes >= kHugePage) {
    std::size_t length = 0;
    if (void* data = map_huge(bytes, length))
      return torch_call("allocating a tensor", [&] { return dcp_torch_bridge::from_memory(data, sizes, type, unmap, length); });
  }
  return torch_call("allocating a tensor", [&] {
    return dcp_torch_bridge::empty(sizes, type, options.pinned, device_type(options.device), options.device.index);
  });
}

planning::TensorSlice slice_of(const at::Tensor& tensor) {
  if (!tensor.device().is_cpu()) throw Error(Errc::invalid_argument, "only CPU tensors can be read into directly");
  planning::TensorSlice slice;
  slice.data = static_cast<std::byte*>(tensor.data_ptr());
  slice.dtype = dtype_of(tensor);
  slice.sizes.assign(tensor.sizes().begin(), tensor.sizes().end());
  slice.strides.assign(tensor.strides().begin(), tensor.strides().end());
  return slice;
}

at::Tensor to_device(const at::Tensor& tensor, const Device& device) {
  if (device.kind == DeviceKind::cpu) return tensor;
  if (!cuda_available()) throw Error(Errc::unimplemented, "device " + device.to_string() + ": this libtorch has no CUDA");
  return torch_call("copying to " + device.to_string(),
                    [&] { return dcp_torch_bridge::to_device(tensor, device_type(device), device.index); });
}

}  // namespace dcp::alloc
