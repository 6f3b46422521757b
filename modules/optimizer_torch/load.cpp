// load_sharded_optimizer_state_dict into at::Tensors (dcp.alloc), host first for GPUs.
module;
#include <ATen/core/Tensor.h>
#include <string_view>
#include <utility>
#include <vector>
module dcp.optimizer_torch;
import dcp.error;
import dcp.planning;
import dcp.memory;
import dcp.storage;
import dcp.alloc;
import dcp.collective;
import dcp.checkpoint;
import dcp.optimizer;

namespace dcp::optimizer_torch {

LoadedState load_sharded_optimizer_state_dict(const optimizer::ModelLayout& model, std::string_view optimizer_key,
                                              storage::StorageReader& reader, collective::ProcessGroup* group,
                                              const optimizer::Devices& devices,
                                              const optimizer::PlanOptions& options) {
  const auto md = checkpoint::read_metadata(reader, group);
  const optimizer::RankInfo rank{group ? group->rank() : 0, group ? group->size() : 1, devices};
  LoadedState out;
  std::vector<planning::TensorSlice> slices;
  out.plan = optimizer::agree_on_plan(group, [&] {  // allocating is part of the step every rank must pass
    auto plan = optimizer::plan_optimizer_state(*md, model, optimizer_key, rank, options);
    for (const auto& t : plan.tensors) {
      alloc::check_device(memory::Device::parse(t.device));
      (void)alloc::scalar_type(t.properties.dtype);  // a dtype this libtorch has
    }
    for (const auto& t : plan.tensors) {
      const auto device = memory::Device::parse(t.device);
      const bool host_first = device.kind != memory::DeviceKind::cpu;
      out.tensors.push_back(alloc::allocate(t.properties.dtype, t.shard.sizes,
                                            {memory::Device{}, host_first && alloc::cuda_available()}));
      slices.push_back(alloc::slice_of(out.tensors.back()));
    }
    return plan;
  });
  out.objects = optimizer::load_optimizer_state(out.plan, slices, reader, md, group, {}, &out.report);
  collective::Collectives(group).run("optimizer: to device", [&] {
    for (std::size_t i = 0; i < out.tensors.size(); ++i) {
      const auto& t = out.plan.tensors[i];
      auto& tensor = out.tensors[i];
      tensor = alloc::to_device(tensor, memory::Device::parse(t.device));
      if (t.properties.requires_grad) tensor.set_requires_grad(true);
    }
  });
  return out;
}

}  // namespace dcp::optimizer_torch
