// plan_optimizer_state: which box of each optimizer state tensor this rank holds (torch's
// allocation loop in load_sharded_optimizer_state_dict, without allocating).
module;
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>
module dcp.optimizer;
import dcp.error;
import dcp.layout;
import dcp.metadata;

namespace dcp::optimizer {
namespace {

[[noreturn]] void fail(Errc code, std::string_view key, std::string message) {
  throw Error(code, std::move(message)).for_key(key);
}

const std::string* as_text(const metadata::PathPart& part) { return std::get_if<std::string>(&part); }

// Where an entry sits under the optimizer key: its path, and the parameter and state it names.
struct Placement {
  std::vector<metadata::PathPart> path;
  std::string param, state;
};

// 2.x: the planner_data path, when it starts with the key. (torch's key_path[2] is the param.)
std::optional<Placement> from_path(const std::vector<metadata::PathPart>& path, std::string_view key) {
  if (path.empty() || !as_text(path[0]) || *as_text(path[0]) != key) return std::nullopt;
  Placement p{path, {}, {}};
  if (path.size() >= 3 && as_text(path[1]) && *as_text(path[1]) == "state" && as_text(path[2])) {
    p.param = *as_text(path[2]);
    if (path.size() == 4 && as_text(path[3])) p.state = *as_text(path[3]);
  }
  return p;
}

using ParamIndex = std::unordered_map<std::string_view, const ParamLayout*>;

// torch 1.13 (no planner_data): "<key>.state.<param>.<state>", the state's name after the last
// dot (names of states have none; names of parameters may), <param> a parameter of the model.
std::optional<Placement> from_flat_key(std::string_view fqn, std::string_view key, const ParamIndex& params) {
  if (fqn.size() <= key.size() || fqn.substr(0, key.size()) != key || fqn[key.size()] != '.') return std::nullopt;
  const std::string_view rest = fqn.substr(key.size() + 1);
  constexpr std::string_view kState = "state.";
  if (rest.substr(0, kState.size()) != kState) return Placement{{std::string(key), std::string(rest)}, {}, {}};
  const std::string_view tail = rest.substr(kState.size());
  const auto dot = tail.rfind('.');
  if (dot == std::string_view::npos || !params.contains(tail.substr(0, dot)))
    fail(Errc::not_found, fqn,
         "optimizer state entry names no parameter of the model (a checkpoint without planner_data is read by "
         "'<key>.state.<param>.<state>' with the model's parameter names)");
  std::string param(tail.substr(0, dot)), state(tail.substr(dot + 1));
  return Placement{{std::string(key), std::string("state"), param, state}, param, state};
}

void check_rank(const RankInfo& rank) {
  if (rank.world_size < 1 || rank.rank < 0 || rank.rank >= rank.world_size)
    throw Error(Errc::invalid_argument, "rank " + std::to_string(rank.rank) + " is outside a world of " +
                                            std::to_string(rank.world_size));
  (void)rank_device(rank.rank, rank.devices);  // checks the devices
}

void check_group(const DataParallelGroup& group, const RankInfo& rank) {
  const auto n = static_cast<int>(group.global_ranks.size());
  if (n < 1 || group.rank < 0 || group.rank >= n)
    throw Error(Errc::invalid_argument, "data-parallel rank " + std::to_string(group.rank) + " is outside a group of " +
                                            std::to_string(n));
  std::set<int> seen;
  for (int r : group.global_ranks)
    if (r < 0 || r >= rank.world_size || !seen.insert(r).second)
      throw Error(Errc::invalid_argument, "data-parallel group member " + std::to_string(r) +
                                              " is repeated or outside a world of " + std::to_string(rank.world_size));
  if (group.global_ranks[static_cast<std::size_t>(group.rank)] != rank.rank)
    throw Error(Errc::invalid_argument, "data-parallel group position " + std::to_string(group.rank) + " is rank " +
                                            std::to_string(group.global_ranks[static_cast<std::size_t>(group.rank)]) +
                                            ", not this rank " + std::to_string(rank.rank));
}

std::string placement(int rank_in_spec, int global_rank, const Devices& devices) {
  return "rank:" + std::to_string(rank_in_spec) + "/" + rank_device(global_rank, devices);
}

// Fills the sharded size, TP offsets, placements and this rank's shard of a state tensor of
// more than one element.
void shard_tensor(StateTensor& t, const ParamLayout* param, const ModelLayout& model, const RankInfo& rank) {
  const auto dims = t.global_size.size();
  if (param && param->size != t.global_size)
    fail(Errc::failed_precondition, t.fqn,
         "optimizer state of shape " + layout::format_shape(t.global_size) + " does not match parameter '" + t.param +
             "' of shape " + layout::format_shape(param->size));
  t.tp_offsets.assign(dims, 0);
  t.sharded_size = t.global_size;
  if (dims == 0) {  // more than one element and no dims cannot happen; keep it whole
    t.shard = layout::full_box(t.global_size);
    return;
  }
  if (!model.dp_group) {  // FSDP alone: torch.chunk rows over the world
    const auto parts = layout::chunk_split(t.global_size, 0, rank.world_size);
    const auto nonempty = layout::nonempty_parts(t.global_size[0], rank.world_size);
    for (int r = 0; r < static_cast<int>(std::max<std::int64_t>(nonempty, 1)); ++r)
      t.placements.push_back(placement(r, r, rank.devices));
    t.shard = parts[static_cast<std::size_t>(rank.rank)];
    return;
  }
  const auto& group = *model.dp_group;
  if (param && param->tp_slice) {
    const auto& tp = *param->tp_slice;
    if (!layout::is_inside(tp, param->size))
      fail(Errc::failed_precondition, t.fqn,
           "the tensor-parallel slice " + layout::format_box(tp) + " of parameter '" + t.param +
               "' lies outside its shape " + layout::format_shape(param->size));
    t.tp_offsets = tp.offsets;
    t.sharded_size = tp.sizes;
  }
  for (std::size_t i = 0; i < group.global_ranks.size(); ++i)
    t.placements.push_back(placement(static_cast<int>(i), group.global_ranks[i], rank.devices));
  t.shard = layout::chunk_split(t.sharded_size, 0, static_cast<int>(group.global_ranks.size()))
                [static_cast<std::size_t>(group.rank)];
}

}  // namespace

const ParamLayout* ModelLayout::find(std::string_view fqn) const {
  for (const auto& [name, p] : params)
    if (name == fqn) return &p;
  return nullptr;
}

const StateTensor* OptimizerPlan::find(std::string_view param, std::string_view state) const {
  for (const auto& t : tensors)
    if (t.param == param && t.state == state) return &t;
  return nullptr;
}

std::string rank_device(int global_rank, const Devices& devices) {
  if (global_rank < 0) throw Error(Errc::invalid_argument, "negative rank " + std::to_string(global_rank));
  if (devices.type == "cpu") return "cpu";
  if (devices.type.empty() || devices.per_node < 1)
    throw Error(Errc::invalid_argument, "device type '" + devices.type + "' needs at least one device per node, got " +
                                            std::to_string(devices.per_node));
  return devices.type + ":" + std::to_string(global_rank % devices.per_node);
}

layout::Box StateTensor::global_box() const {
  layout::Box box = shard;
  for (std::size_t d = 0; d < box.offsets.size() && d < tp_offsets.size(); ++d) box.offsets[d] += tp_offsets[d];
  return box;
}

std::uint64_t StateTensor::numel() const { return layout::volume(shard); }

OptimizerPlan plan_optimizer_state(const metadata::Metadata& md, const ModelLayout& model,
                                   std::string_view optimizer_key, const RankInfo& rank, const PlanOptions& options) {
  check_rank(rank);
  if (model.dp_group) check_group(*model.dp_group, rank);
  for (const auto& [name, p] : model.params)
    if (p.tp_slice && !model.dp_group)
      fail(Errc::invalid_argument, name, "a tensor-parallel slice needs the data-parallel group it is sharded over");
  ParamIndex params;
  for (const auto& [name, p] : model.params) params.try_emplace(name, &p);
  OptimizerPlan plan;
  std::set<std::string> params_with_state;
  for (const auto& item : md.items) {
    std::optional<Placement> where;
    if (md.planner_data) {
      const auto* path = md.find_path(item.fqn);
      if (!path) {
        // An entry of another key may lack a path only if it cannot be ours.
        if (item.fqn.substr(0, optimizer_key.size()) != optimizer_key) continue;
        fail(Errc::data_loss, item.fqn, "checkpoint entry has no planner_data path");
      }
      where = from_path(*path, optimizer_key);
    } else {
      where = from_flat_key(item.fqn, optimizer_key, params);
    }
    if (!where) continue;
    if (!where->param.empty()) params_with_state.insert(where->param);
    if (!item.is_tensor()) {
      plan.objects.push_back({item.fqn, std::move(where->path)});
      continue;
    }
    const auto& saved = item.tensor();
    StateTensor t;
    t.fqn = item.fqn;
    t.path = std::move(where->path);
    t.param = std::move(where->param);
    t.state = std::move(where->state);
    t.properties = saved.properties;
    t.global_size = saved.size;
    t.device = rank_device(rank.rank, rank.devices);
    if (metadata::numel(saved.size) == 1) {  // torch: numel() == 1 is allocated whole everywhere
      t.replicated = true;
      t.sharded_size = saved.size;
      t.tp_offsets.assign(saved.size.size(), 0);
      t.shard = layout::full_box(saved.size);
    } else {
      const auto found = params.find(t.param);
      shard_tensor(t, found == params.end() ? nullptr : found->second, model, rank);
    }
    plan.tensors.push_back(std::move(t));
  }
  if (plan.tensors.empty() && plan.objects.empty())
    fail(Errc::not_found, optimizer_key, "the checkpoint has no entry under optimizer key");
  if (options.require_state_for_every_param)
    for (const auto& [name, _] : model.params)
      if (!params_with_state.contains(name))
        fail(Errc::not_found, std::string(optimizer_key) + ".state." + name, "the checkpoint has no optimizer state for parameter");
  return plan;
}

}  // namespace dcp::optimizer
