// Loading a planned optimizer state: the destination over caller memory, the agreement on the
// plan across ranks, and the load itself (checkpoint::load with the default planner).
module;
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>
module dcp.optimizer;
import dcp.error;
import dcp.pickle;
import dcp.layout;
import dcp.metadata;
import dcp.planning;
import dcp.memory;
import dcp.record;
import dcp.storage;
import dcp.collective;
import dcp.checkpoint;

namespace dcp::optimizer {
OptimizerPlan agree_on_plan(collective::ProcessGroup* group, const std::function<OptimizerPlan()>& plan_step) {
  OptimizerPlan plan;
  collective::Collectives(group).run("optimizer: plan", [&] { plan = plan_step(); });
  return plan;
}

planning::Destination destination(const OptimizerPlan& plan, std::span<const planning::TensorSlice> memory) {
  if (memory.size() != plan.tensors.size())
    throw Error(Errc::invalid_argument, "memory for " + std::to_string(memory.size()) + " tensors, the plan has " +
                                            std::to_string(plan.tensors.size()));
  planning::Destination dest;
  for (std::size_t i = 0; i < plan.tensors.size(); ++i) {
    const auto& t = plan.tensors[i];
    if (memory[i].sizes != t.shard.sizes || memory[i].dtype != t.properties.dtype)
      throw Error(Errc::invalid_argument, "memory of shape " + layout::format_shape(memory[i].sizes) + " and dtype " +
                                              std::string(dtype_name(memory[i].dtype)) + " for a shard of shape " +
                                              layout::format_shape(t.shard.sizes) + " and dtype " +
                                              std::string(dtype_name(t.properties.dtype)))
          .for_key(t.fqn);
    planning::TensorDestination td{t.global_size, t.properties.dtype, {}};
    if (!layout::is_empty(t.shard)) {
      const auto box = t.global_box();  // the TP offset added: chunks carry global offsets
      td.chunks.push_back(planning::LocalChunk{box.offsets, box.sizes, memory[i]});
    }
    dest.add_tensor(t.fqn, std::move(td));
  }
  for (const auto& o : plan.objects) dest.add_object(o.fqn);
  return dest;
}

Objects load_optimizer_state(const OptimizerPlan& plan, std::span<const planning::TensorSlice> memory,
                             storage::StorageReader& reader, const metadata::ValidatedMetadata& metadata,
                             collective::ProcessGroup* group, const planning::LoadPlannerOptions& planner_options,
                             storage::ReadReport* report) {
  collective::Collectives ranks(group);
  planning::Destination dest;
  ranks.run("optimizer: destination", [&] { dest = destination(plan, memory); });
  planning::DefaultLoadPlanner planner(planner_options);
  auto r = checkpoint::load(dest, reader, planner, metadata, group);
  Objects objects;
  ranks.run("optimizer: objects", [&] {
    for (const auto& o : plan.objects) {
      auto bytes = planner.take_bytes(o.fqn);
      if (!bytes) throw Error(Errc::internal, "the load did not read this object").for_key(o.fqn);
      try {
        objects.push_back(record::parse_object(*bytes));
      } catch (Error& e) {
        throw e.for_key(o.fqn);
      }
    }
  });
  if (report) *report = std::move(r);
  return objects;
}

LoadedState load_sharded_optimizer_state_dict(const ModelLayout& model, std::string_view optimizer_key,
                                              storage::StorageReader& reader, collective::ProcessGroup* group,
                                              const Devices& devices, const PlanOptions& options) {
  const auto md = checkpoint::read_metadata(reader, group);
  const RankInfo rank{group ? group->rank() : 0, group ? group->size() : 1, devices};
  LoadedState out;
  std::vector<planning::TensorSlice> slices;
  out.plan = agree_on_plan(group, [&] {  // allocating is part of the step every rank must pass
    auto plan = plan_optimizer_state(*md, model, optimizer_key, rank, options);
    for (const auto& t : plan.tensors) {
      out.tensors.push_back(memory::allocate(metadata::byte_size(t.shard.sizes, t.properties.dtype)));
      slices.push_back(planning::contiguous_slice(out.tensors.back().data(), t.properties.dtype, t.shard.sizes));
    }
    return plan;
  });
  out.objects = load_optimizer_state(out.plan, slices, reader, md, group, {}, &out.report);
  return out;
}

}  // namespace dcp::optimizer
