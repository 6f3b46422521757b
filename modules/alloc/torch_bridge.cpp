// The translation unit holding libtorch's heavy calls (see torch_bridge.hpp).
#include "torch_bridge.hpp"

#include <ATen/ATen.h>
#include <ATen/Context.h>

namespace dcp_torch_bridge {

at::Tensor empty(const std::vector<std::int64_t>& sizes, c10::ScalarType dtype, bool pinned,
                 c10::DeviceType device_type, int device_index) {
  auto options = at::TensorOptions().dtype(dtype).device(c10::Device(device_type, static_cast<c10::DeviceIndex>(device_index)));
  if (pinned && device_type == c10::DeviceType::CPU) options = options.pinned_memory(true);
  return at::empty(sizes, options);
}

at::Tensor from_memory(void* data, const std::vector<std::int64_t>& sizes, c10::ScalarType dtype,
                       void (*deleter)(void*), void* context) {
  return at::from_blob(data, sizes, [deleter, context](void*) { deleter(context); },
                       at::TensorOptions().dtype(dtype));
}

at::Tensor to_device(const at::Tensor& tensor, c10::DeviceType device_type, int device_index) {
  return tensor.to(c10::Device(device_type, static_cast<c10::DeviceIndex>(device_index)), /*non_blocking=*/true);
}

// Blocking: a non-blocking copy to the host may return before the bytes arrive.
at::Tensor to_host(const at::Tensor& tensor) { return tensor.to(c10::Device(c10::kCPU), /*non_blocking=*/false); }

bool cuda_available() { return at::hasCUDA(); }

std::string first_line(const std::exception& e) {
  std::string text = e.what();
  const auto newline = text.find('\n');
  return newline == std::string::npos ? text : text.substr(0, newline);
}

}  // namespace dcp_torch_bridge
