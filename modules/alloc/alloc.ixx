// dcp.alloc — at::Tensor destinations: the libtorch allocator of the tensor-facing layer.
//
// `allocate` makes an empty tensor of a checkpoint dtype and shape (CPU, pinned CPU, or CUDA
// when libtorch has it); `adopt` turns a core memory::Buffer (what dcp.checkpoint loads
// full tensors into) into a CPU tensor without copying; `allocate_pinned` lends libtorch's
// page-locked memory to the core loader as a Buffer; `slice_of` describes a CPU tensor's
// memory as a planning::TensorSlice, so the storage layer can read file bytes straight into
// it. Heavy libtorch calls live in a C++17 bridge (torch_bridge.cpp); this interface only
// needs <ATen/core/Tensor.h>. libtorch errors become dcp::Error here.
// Imports: dcp.error, dcp.metadata, dcp.planning, dcp.memory.
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
import dcp.memory;

export namespace dcp::alloc {

struct AllocOptions {
  memory::Device device;
  bool pinned = false;  ///< page-locked CPU memory (faster later copies to a GPU)
};

/// torch's scalar type for a checkpoint dtype; throws unimplemented for dtypes this libtorch
/// lacks (quantized ones; Debian's 1.13 also has no uint16/32/64 or float8).
c10::ScalarType scalar_type(DType dtype);
/// The checkpoint dtype of a tensor's scalar type.
DType dtype_of(const at::Tensor& tensor);

/// An uninitialized contiguous tensor (on the CPU in dcp.memory's aligned memory). Throws
/// dcp::Error (resource_exhausted when memory runs out, unimplemented for CUDA without a
/// CUDA libtorch).
at::Tensor allocate(DType dtype, const metadata::Shape& sizes, const AllocOptions& options = {});

/// A contiguous CPU tensor over `buffer`'s memory, no copy; the tensor owns the buffer. The
/// buffer must hold byte_size(sizes, dtype) bytes (invalid_argument otherwise).
at::Tensor adopt(memory::Buffer buffer, DType dtype, const metadata::Shape& sizes);

/// `bytes` of page-locked host memory from libtorch's pinned allocator, as a Buffer (for
/// checkpoint::LoadOptions::allocate when tensors go on to a GPU).
memory::Buffer allocate_pinned(std::uint64_t bytes);

/// The memory of a CPU tensor as a TensorSlice (strides in elements, as torch keeps them).
planning::TensorSlice slice_of(const at::Tensor& tensor);

/// A copy of a CPU tensor on `device` (itself when the device is the CPU).
at::Tensor to_device(const at::Tensor& tensor, const memory::Device& device);

/// A CPU copy of `tensor` whose bytes are all there when it returns (`tensor` itself when it
/// is on the CPU).
at::Tensor to_host(const at::Tensor& tensor);

/// True when this libtorch can use a CUDA GPU.
bool cuda_available();
/// Throws unimplemented when `device` is a GPU this libtorch cannot use.
void check_device(const memory::Device& device);

}  // namespace dcp::alloc
