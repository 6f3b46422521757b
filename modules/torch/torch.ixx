// dcp.torch — the tensor-facing layer: a checkpoint's tensors as at::Tensor.
//
// Built on dcp.checkpoint's buffer API: the core reads each full tensor into host memory
// (dcp.memory's aligned buffers, or libtorch's pinned memory when tensors go on to a GPU),
// and this layer wraps that memory as an at::Tensor without copying (dcp.alloc's `adopt`),
// then places it on the requested device. Later steps add the Checkpointer here.
// Imports: dcp.error, dcp.pickle, dcp.metadata, dcp.memory, dcp.storage, dcp.alloc,
// dcp.checkpoint.
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

}  // namespace dcp::torch
