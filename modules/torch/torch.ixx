// dcp.torch — the tensor-facing layer: a checkpoint's tensors as at::Tensor.
//
// Built on dcp.checkpoint's buffer API: the core reads each full tensor into host memory
// (dcp.memory's aligned buffers, or libtorch's pinned memory when tensors go on to a GPU),
// and this layer wraps that memory as an at::Tensor without copying (dcp.alloc's `adopt`),
// then places it on the requested device. For saving, `TensorStateDict` describes at::Tensors
// to the core's save path (CPU tensors in place, CUDA tensors copied to pinned host memory),
// and `staging_allocator` gives the Checkpointer's async_save pinned staging buffers when a GPU
// is present.
// Imports: dcp.error, dcp.pickle, dcp.metadata, dcp.planning, dcp.memory, dcp.storage,
// dcp.alloc, dcp.checkpoint.
module;
#include <ATen/core/Tensor.h>
#include <filesystem>
#include <functional>
#include <string>
#include <utility>
#include <vector>
export module dcp.torch;
import dcp.error;
import dcp.pickle;
import dcp.metadata;
import dcp.planning;
import dcp.memory;
import dcp.storage;
import dcp.alloc;
import dcp.checkpoint;

export namespace dcp::torch {

/// The core's load options, and where the tensors go.
struct LoadOptions : checkpoint::LoadOptions {
  alloc::AllocOptions allocation;  ///< device (cpu, cuda:N) and pinned CPU memory
};

/// checkpoint::for_each_tensor with each tensor as a contiguous at::Tensor on
/// `options.allocation.device`. Checks before reading anything that this libtorch has a
/// tensor type for every selected dtype and can use the device (unimplemented, with the key).
storage::ReadReport for_each_tensor(const std::filesystem::path& checkpoint_dir,
                                    const metadata::ValidatedMetadata& metadata, const LoadOptions& options,
                                    const std::function<void(const std::string& fqn, at::Tensor tensor)>& consume);

/// A whole checkpoint in memory.
struct LoadedCheckpoint {
  metadata::ValidatedMetadata metadata;
  std::vector<std::pair<std::string, at::Tensor>> tensors;          ///< metadata order
  std::vector<std::pair<std::string, pickle::Document>> objects;    ///< metadata order
  storage::ReadReport report;
};

/// Loads every selected tensor and object (objects decoded without running them).
LoadedCheckpoint load_full(const std::filesystem::path& checkpoint_dir, const LoadOptions& options = {});

/// A state dict of at::Tensors for checkpoint::save / Checkpointer: a CPU tensor is described
/// in place (its strides kept; it must stay alive and unchanged until a synchronous save
/// returns, or until async_save returns), a CUDA tensor is copied into pinned host memory this
/// object keeps. Keys are flattened from their paths as torch's flatten_state_dict does.
class TensorStateDict {
 public:
  /// Throws unimplemented (with the key) for a dtype the checkpoint format lacks, and
  /// invalid_argument for a sparse or otherwise non-strided tensor, or a duplicate key.
  void add(std::vector<metadata::PathPart> path, const at::Tensor& tensor);
  void add_object(std::vector<metadata::PathPart> path, planning::ObjectValue value);
  const planning::StateDict& state_dict() const noexcept { return state_dict_; }

 private:
  planning::StateDict state_dict_;
  std::vector<at::Tensor> keep_;  // host tensors the state dict views
};

/// Staging memory for checkpoint::Checkpointer: libtorch's pinned memory when CUDA is usable
/// (faster device-to-host copies), dcp.memory's buffers otherwise.
std::function<memory::Buffer(std::uint64_t bytes)> staging_allocator();

}  // namespace dcp::torch
