// at::Tensors described to the core's save path.
module;
#include <ATen/core/Tensor.h>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>
module dcp.torch;
import dcp.error;
import dcp.metadata;
import dcp.planning;
import dcp.memory;
import dcp.alloc;

namespace dcp::torch {

void TensorStateDict::add(std::vector<metadata::PathPart> path, const at::Tensor& tensor) {
  at::Tensor host = tensor;
  try {
    if (!tensor.defined() || tensor.layout() != c10::kStrided)
      throw Error(Errc::invalid_argument, "only dense strided tensors can be saved");
    host = alloc::to_host(tensor);
    auto slice = alloc::slice_of(host);
    state_dict_.add_tensor(std::move(path), std::move(slice), tensor.requires_grad());
  } catch (Error& e) {
    e.for_key(planning::join_path(path));
    throw;
  }
  keep_.push_back(std::move(host));
}

void TensorStateDict::add_object(std::vector<metadata::PathPart> path, planning::ObjectValue value) {
  state_dict_.add_object(std::move(path), std::move(value));
}

std::function<memory::Buffer(std::uint64_t)> staging_allocator() {
  if (alloc::cuda_available()) return [](std::uint64_t bytes) { return alloc::allocate_pinned(bytes); };
  return [](std::uint64_t bytes) { return memory::allocate(bytes); };
}

}  // namespace dcp::torch
