// dtype mapping, allocation, adoption of core buffers and device copies through the bridge.
module;
#include <ATen/core/Tensor.h>
#include <cstdint>
#include <exception>
#include <memory>
#include <new>
#include <string>
#include <string_view>
#include <utility>
#include <vector>
#include "torch_bridge.hpp"
module dcp.alloc;
import dcp.error;
import dcp.metadata;
import dcp.planning;
import dcp.memory;

namespace dcp::alloc {
namespace {

c10::DeviceType device_type(const memory::Device& d) {
  return d.kind == memory::DeviceKind::cuda ? c10::DeviceType::CUDA : c10::DeviceType::CPU;
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

void release_buffer(void* context) { delete static_cast<memory::Buffer*>(context); }
void release_tensor(std::byte*, std::size_t, void* context) noexcept { delete static_cast<at::Tensor*>(context); }

}  // namespace

// dcp.dtype's table holds c10::ScalarType's values; a libtorch has those below its NumOptions
// (Debian's 1.13 stops at QUInt2x4, 2.x adds float8 and uint16/32/64). Quantized dtypes have no
// rebuild function dcpp writes, so no tensor type here either.
static bool has_tensor_type(DType dtype) noexcept {
  const int code = dtype_info(dtype).c10_scalar_type;
  return code >= 0 && code < static_cast<int>(c10::ScalarType::NumOptions) && dtype_info(dtype).rebuild != TensorRebuild::none;
}

c10::ScalarType scalar_type(DType dtype) {
  if (!has_tensor_type(dtype))
    throw Error(Errc::unimplemented, "dtype " + std::string(dtype_name(dtype)) + " has no tensor type in this libtorch");
  return static_cast<c10::ScalarType>(dtype_info(dtype).c10_scalar_type);
}

DType dtype_of(const at::Tensor& tensor) {
  const auto dtype = dtype_from_c10(static_cast<int>(tensor.scalar_type()));
  if (!dtype || !has_tensor_type(*dtype)) throw Error(Errc::unimplemented, "tensor of an unsupported scalar type");
  return *dtype;
}

bool cuda_available() { return dcp_torch_bridge::cuda_available(); }

void check_device(const memory::Device& device) {
  if (device.kind == memory::DeviceKind::cuda && !cuda_available())
    throw Error(Errc::unimplemented, "device " + device.to_string() + ": this libtorch has no CUDA");
}

at::Tensor allocate(DType dtype, const metadata::Shape& sizes, const AllocOptions& options) {
  check_device(options.device);
  const auto type = scalar_type(dtype);
  if (options.device.kind == memory::DeviceKind::cpu && !options.pinned)
    return adopt(memory::allocate(metadata::byte_size(sizes, dtype)), dtype, sizes);
  return torch_call("allocating a tensor", [&] {
    return dcp_torch_bridge::empty(std::vector<std::int64_t>(sizes), type, options.pinned, device_type(options.device),
                                   options.device.index);
  });
}

at::Tensor adopt(memory::Buffer buffer, DType dtype, const metadata::Shape& sizes) {
  const auto type = scalar_type(dtype);
  const auto bytes = metadata::byte_size(sizes, dtype);
  if (buffer.size() < bytes)
    throw Error(Errc::invalid_argument, "a buffer of " + std::to_string(buffer.size()) + " bytes cannot hold a " +
                                            std::string(dtype_name(dtype)) + " tensor of shape " + format_shape(sizes));
  auto owner = std::make_unique<memory::Buffer>(std::move(buffer));
  auto tensor = torch_call("adopting a buffer", [&] {
    return dcp_torch_bridge::from_memory(owner->data(), std::vector<std::int64_t>(sizes), type, release_buffer,
                                         owner.get());
  });
  (void)owner.release();  // the tensor's deleter frees it now
  return tensor;
}

memory::Buffer allocate_pinned(std::uint64_t bytes) {
  auto tensor = torch_call("allocating pinned memory", [&] {
    return dcp_torch_bridge::empty({static_cast<std::int64_t>(bytes)}, c10::ScalarType::Byte, /*pinned=*/true,
                                   c10::DeviceType::CPU, 0);
  });
  auto* data = static_cast<std::byte*>(tensor.data_ptr());
  return memory::Buffer(data, static_cast<std::size_t>(bytes), release_tensor, new at::Tensor(std::move(tensor)));
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

at::Tensor to_device(const at::Tensor& tensor, const memory::Device& device) {
  if (device.kind == memory::DeviceKind::cpu) return tensor;
  check_device(device);
  return torch_call("copying to " + device.to_string(),
                    [&] { return dcp_torch_bridge::to_device(tensor, device_type(device), device.index); });
}

at::Tensor to_host(const at::Tensor& tensor) {
  if (tensor.is_cpu()) return tensor;
  return torch_call("copying to the host", [&] { return dcp_torch_bridge::to_host(tensor); });
}

}  // namespace dcp::alloc
