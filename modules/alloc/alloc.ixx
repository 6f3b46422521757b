// dcp.alloc — destination tensors: the only module that allocates libtorch memory.
//
// `allocate` makes an empty tensor of a checkpoint dtype and shape (CPU, pinned CPU, or CUDA
// when libtorch has it) and `slice_of` describes its memory as a planning::TensorSlice, so the
// storage layer can read file bytes straight into it. Heavy libtorch calls live in a C++17
// bridge (torch_bridge.cpp); this interface only needs <ATen/core/Tensor.h>. libtorch errors
// become dcp::Error here. Imports: dcp.error, dcp.metadata, dcp.planning.
module;
#include <ATen/core/Tensor.h>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>
export module dcp.alloc;
import dcp.error;
import dcp.metadata;
import dcp.planning;

export namespace dcp::alloc {

enum class DeviceKind { cpu, cuda };

/// Where destination tensors live.
struct Device {
  DeviceKind kind = DeviceKind::cpu;
  int index = 0;
  /// "cpu", "cuda" or "cuda:N"; throws invalid_argument otherwise.
  static Device parse(std::string_view text);
  std::string to_string() const;
};

struct AllocOptions {
  Device device;
  bool pinned = false;  ///< page-locked CPU memory (faster later copies to a GPU)
};

/// torch's scalar type for a checkpoint dtype; throws unimplemented for quantized types and
/// for dtypes this libtorch lacks (Debian's 1.13 has no uint16/32/64 and no float8).
c10::ScalarType scalar_type(DType dtype);
/// Whether this libtorch has a tensor type for `dtype` (scalar_type would not throw).
bool has_tensor_type(DType dtype) noexcept;
/// The checkpoint dtype of a tensor's scalar type.
DType dtype_of(const at::Tensor& tensor);

/// An uninitialized contiguous tensor. Throws dcp::Error (resource_exhausted when memory runs out,
/// unimplemented for CUDA without a CUDA libtorch).
at::Tensor allocate(DType dtype, const metadata::Shape& sizes, const AllocOptions& options = {});

/// The memory of a CPU tensor as a TensorSlice (strides in elements, as torch keeps them).
planning::TensorSlice slice_of(const at::Tensor& tensor);

/// A copy of a CPU tensor on `device` (itself when the device is the CPU).
at::Tensor to_device(const at::Tensor& tensor, const Device& device);

/// True when this libtorch can use a CUDA GPU.
bool cuda_available();

}  // namespace dcp::alloc
