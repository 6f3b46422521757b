// dcp.optimizer_torch — sharded optimizer state as at::Tensors: dcp.optimizer's plan, allocated
// the way torch's `_alloc_tensor` allocates (the saved dtype and requires_grad, on this rank's
// device: the CPU, or `cuda:<global rank % devices per node>`; a zero-size tensor where the rank
// owns no rows), then loaded.
//
// The core reads file bytes into host memory only, so a state tensor for a GPU is read into a
// CPU tensor (pinned when CUDA is usable) and copied to its device once the load is done; a CPU
// tensor is read into in place. The device type is the caller's (`optimizer::Devices`), never a
// default "cuda". Only <ATen/core/Tensor.h> here; allocation goes through dcp.alloc's bridge.
// Imports: dcp.error, dcp.pickle, dcp.planning, dcp.memory, dcp.storage, dcp.alloc,
// dcp.checkpoint, dcp.optimizer.
module;
#include <ATen/core/Tensor.h>
#include <string_view>
#include <vector>
export module dcp.optimizer_torch;
import dcp.error;
import dcp.pickle;
import dcp.planning;
import dcp.memory;
import dcp.storage;
import dcp.alloc;
import dcp.collective;
import dcp.checkpoint;
import dcp.optimizer;

export namespace dcp::optimizer_torch {

/// A loaded optimizer state: the plan (each tensor's key, path, parameter, state name, boxes
/// and placements), the tensors parallel to plan.tensors, the objects parallel to plan.objects.
struct LoadedState {
  optimizer::OptimizerPlan plan;
  std::vector<at::Tensor> tensors;
  optimizer::Objects objects;
  storage::ReadReport report;
};

/// torch's load_sharded_optimizer_state_dict(model_state_dict, optimizer_key, storage_reader)
/// with at::Tensors: optimizer::load_sharded_optimizer_state_dict's steps (metadata over
/// `group`, the plan agreed across ranks, the load), each tensor on its StateTensor::device.
/// Throws what they throw, and unimplemented for a device this libtorch cannot use (checked
/// before any read, on every rank).
LoadedState load_sharded_optimizer_state_dict(const optimizer::ModelLayout& model, std::string_view optimizer_key,
                                              storage::StorageReader& reader, collective::ProcessGroup* group,
                                              const optimizer::Devices& devices = {},
                                              const optimizer::PlanOptions& options = {});

}  // namespace dcp::optimizer_torch
