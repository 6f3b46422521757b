// The bridge between dcp.alloc and libtorch's heavy headers (at::empty, Tensor::to): before
// torch 2.14 those headers do not compile as C++20 in clang-19 unless included in a careful
// order, so they stay in torch_bridge.cpp, built as C++17 (as C++20 from 2.14 on, which
// demands it). This header names only Tensor.h types.
#pragma once
#include <ATen/core/Tensor.h>
#include <cstdint>
#include <string>
#include <vector>

namespace dcp_torch_bridge {

/// at::empty with a contiguous layout; `pinned` asks for page-locked CPU memory.
at::Tensor empty(const std::vector<std::int64_t>& sizes, c10::ScalarType dtype, bool pinned,
                 c10::DeviceType device_type, int device_index);
/// A contiguous CPU tensor over memory the caller allocated; `deleter(context)` runs when the
/// last reference goes.
at::Tensor from_memory(void* data, const std::vector<std::int64_t>& sizes, c10::ScalarType dtype,
                       void (*deleter)(void* context), void* context);
/// A copy of `tensor` on the given device (non_blocking from pinned memory).
at::Tensor to_device(const at::Tensor& tensor, c10::DeviceType device_type, int device_index);
at::Tensor to_host(const at::Tensor& tensor);
/// True when this libtorch was built with CUDA and a GPU is visible.
bool cuda_available();
/// Turns a c10::Error (or other std::exception) message into a one-line string.
std::string first_line(const std::exception& e);

}  // namespace dcp_torch_bridge
