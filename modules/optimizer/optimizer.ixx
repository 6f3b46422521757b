// dcp.optimizer — sharded optimizer state: torch's `load_sharded_optimizer_state_dict`
// (torch/distributed/checkpoint/optimizer.py) without libtorch.
//
// An FSDP job saves its optimizer state (`<key>.state.<param fqn>.<state>`, `<key>.param_groups
// ...`) with DCP; a later job, sharded in its own way, wants each state tensor laid out like the
// parameter it belongs to. dcp.optimizer plans that from the checkpoint's metadata and what the
// caller says about its model (`ModelLayout`, torch's `_get_state_dict_2d_layout`), then loads:
//
//   * one-element state tensors (Adam's `step`) are whole on every rank;
//   * without a data-parallel group (FSDP alone), every other state tensor is split along dim 0
//     over the world as torch.chunk splits it (`_create_chunk_sharded_tensor`);
//   * with one (tensor parallel inside FSDP, "2-D"), a state tensor takes its parameter's TP
//     slice on this rank and splits that along dim 0 over the DP group (`_create_colwise_spec`).
//     torch reads it through `_ReaderWithOffset`, which shifts each destination chunk into the
//     checkpoint's global coordinates; here a destination chunk carries global offsets
//     already, so the TP offset is simply added to the chunk's offsets (`StateTensor::
//     global_box`) and the default planner does the rest.
//   * objects (`param_groups` leaves) come back decoded (pickle::Document, nothing run).
//
// Placements and devices follow torch's `_gen_rank_device`: "rank:<r>/cpu", or
// "rank:<r>/cuda:<global rank % devices per node>" (never the global rank itself, pytorch#95892,
// #98063). A rank that owns no rows of a tensor gets a zero-size shard (pytorch#102821), never
// an error; the saved sharding may differ from the loading one (pytorch#91205): the reads go
// through the ordinary planner's overlap rule. The device type is the caller's choice, never a
// default "cuda" (pytorch#129110).
//
// Stricter than torch: a key with no entry in the checkpoint, a state tensor whose shape is not
// its parameter's, and (when asked) a parameter without state are dcp::Errors naming the key; a
// planning failure on any rank fails every rank. Torch 2.13's own 2-D path fails before it reads
// (its DP placements name group ranks where ShardedTensor wants global ones); dcpp's does not.
//
// `plan_optimizer_state` and `destination` are pure (no I/O), testable with thread-played ranks;
// `load_optimizer_state` runs checkpoint::load over caller memory; `load_sharded_optimizer_state
// _dict` is the whole thing into host buffers; dcp.optimizer_torch makes at::Tensors of it.
// `state_owners` pairs each state entry with its parameter's entry (`dcpp inspect` groups them).
// Imports: dcp.error, dcp.pickle, dcp.layout, dcp.metadata, dcp.planning, dcp.memory,
// dcp.record, dcp.storage, dcp.checkpoint.
module;
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>
export module dcp.optimizer;
import dcp.error;
import dcp.pickle;
import dcp.layout;
import dcp.metadata;
import dcp.planning;
import dcp.memory;
import dcp.storage;
import dcp.collective;
import dcp.checkpoint;

export namespace dcp::optimizer {

using metadata::Shape;

/// One model parameter as this rank holds it (an entry of torch's 2-D layout specs).
struct ParamLayout {
  Shape size;                           ///< the parameter's global shape
  /// 2-D only: this rank's tensor-parallel slice of the parameter (global offsets and sizes),
  /// which FSDP then splits along dim 0 over the DP group. nullopt: no TP.
  std::optional<layout::Box> tp_slice;
};

/// The data-parallel group of a 2-D job: this rank's position and the members' global ranks.
struct DataParallelGroup {
  int rank = 0;
  std::vector<int> global_ranks;
};

/// What the caller's model state dict says (torch infers it from nested ShardedTensors): the
/// parameters by fqn (the model state dict's keys, e.g. "fc1.weight"), and the DP group when
/// parameters are TP-sliced. A DP group without any tp_slice is allowed (FSDP over a subgroup).
struct ModelLayout {
  std::vector<std::pair<std::string, ParamLayout>> params;
  std::optional<DataParallelGroup> dp_group;
  /// nullptr when absent.
  const ParamLayout* find(std::string_view fqn) const;
};

/// Where this job's tensors live: `type` "cpu", or a device type ("cuda") with
/// `per_node` devices on each node.
struct Devices {
  std::string type = "cpu";
  int per_node = 0;
};
/// torch's `_gen_rank_device`: "cpu" for the CPU, else "<type>:<global_rank % per_node>".
/// Throws invalid_argument for a non-CPU type with per_node < 1 or a negative rank.
std::string rank_device(int global_rank, const Devices& devices);

/// This rank in the world.
struct RankInfo {
  int rank = 0;
  int world_size = 1;
  Devices devices;
};

/// One optimizer state tensor as this rank loads it.
struct StateTensor {
  std::string fqn;                          ///< the flat checkpoint key
  std::vector<metadata::PathPart> path;     ///< its nesting: planner_data, or parsed (1.13)
  std::string param;                        ///< the parameter it belongs to; "" for none
  std::string state;                        ///< the state's name ("exp_avg"); "" for none
  metadata::TensorProperties properties;
  Shape global_size;                        ///< the saved shape
  bool replicated = false;                  ///< one element: whole on every rank
  /// The dim-0 sharded tensor: the parameter's TP slice (2-D), else the whole state tensor.
  Shape sharded_size;
  Shape tp_offsets;                         ///< where it starts in the state tensor (zeros without TP)
  /// The sharded tensor's ChunkShardingSpec placements, "rank:<r>/<device>", as torch builds
  /// them: over the DP group (group ranks, every member) in 2-D, else over the world (the
  /// non-empty torch.chunk parts only). Empty for a replicated tensor.
  std::vector<std::string> placements;
  /// This rank's box of the sharded tensor, in its coordinates: what torch's local shard
  /// holds. Zero rows when this rank owns none.
  layout::Box shard;
  std::string device;                       ///< where it is allocated (rank_device)
  /// `shard` moved into the state tensor's coordinates (offsets + tp_offsets): what is read.
  layout::Box global_box() const;
  /// Elements of this rank's shard.
  std::uint64_t numel() const;
};

/// One object (BYTE_IO) entry under the optimizer key.
struct StateObject {
  std::string fqn;
  std::vector<metadata::PathPart> path;
};

/// Every checkpoint entry under the optimizer key, in metadata order.
struct OptimizerPlan {
  std::vector<StateTensor> tensors;
  std::vector<StateObject> objects;
  /// nullptr when absent.
  const StateTensor* find(std::string_view param, std::string_view state) const;
};

struct PlanOptions {
  /// Every parameter of the ModelLayout must have a state entry (not_found naming
  /// "<key>.state.<param>" otherwise). Off by default, as in torch: frozen parameters have none.
  bool require_state_for_every_param = false;
};

/// Plans the optimizer state under `optimizer_key` for `rank` (torch's allocation loop, without
/// allocating). Entries belong to the key when their planner_data path starts with it; a
/// checkpoint without planner_data (torch 1.13) is read by flat key, "<key>.state.<param>.<state>"
/// with <state> after the last dot and <param> a parameter of `model`. Throws dcp::Error naming the key:
/// not_found when nothing is under `optimizer_key`, when a 1.13 state key names no parameter of
/// `model`, or (PlanOptions) a parameter has no state; data_loss for an entry without a
/// planner_data path in a checkpoint that has them; failed_precondition when a state tensor of
/// more than one element does not have its parameter's shape, or a TP slice lies outside its
/// parameter; invalid_argument for a RankInfo or DP group that is not consistent.
OptimizerPlan plan_optimizer_state(const metadata::Metadata& metadata, const ModelLayout& model,
                                   std::string_view optimizer_key, const RankInfo& rank,
                                   const PlanOptions& options = {});

/// The load destination of `plan`: each tensor's shard over `memory[i]` (plan.tensors[i], of
/// shape shard.sizes and the tensor's dtype) at its global offsets (tp_offsets added), no chunk
/// for an empty shard; each object as an object. Throws invalid_argument when `memory` does not
/// match the plan.
planning::Destination destination(const OptimizerPlan& plan, std::span<const planning::TensorSlice> memory);

/// The objects a load decoded, parallel to plan.objects.
using Objects = std::vector<pickle::Document>;

/// Loads `plan` (made from `metadata`, which every rank holds: checkpoint::read_metadata) into
/// `memory` (as `destination`) through checkpoint::load over `group` (null: one process) and a
/// DefaultLoadPlanner with `planner_options`; returns the objects. Every rank calls it.
Objects load_optimizer_state(const OptimizerPlan& plan, std::span<const planning::TensorSlice> memory,
                             storage::StorageReader& reader, const metadata::ValidatedMetadata& metadata,
                             collective::ProcessGroup* group = nullptr,
                             const planning::LoadPlannerOptions& planner_options = {},
                             storage::ReadReport* report = nullptr);

/// Every rank's planning outcome agreed: `plan_step` runs here, and if it throws on any rank,
/// every rank throws that rank's error (naming it). Every rank of `group` calls it.
OptimizerPlan agree_on_plan(collective::ProcessGroup* group, const std::function<OptimizerPlan()>& plan_step);

/// A loaded optimizer state in host memory.
struct LoadedState {
  OptimizerPlan plan;
  std::vector<memory::Buffer> tensors;  ///< parallel to plan.tensors: the shard, row-major
  Objects objects;                      ///< parallel to plan.objects
  storage::ReadReport report;
};

/// torch's load_sharded_optimizer_state_dict(model_state_dict, optimizer_key, storage_reader)
/// into host buffers: reads the metadata (once, over `group`), plans this rank's state
/// (plan_optimizer_state, agreed across ranks), allocates and loads. `rank.rank` and
/// `rank.world_size` must be the group's. Every rank calls it.
LoadedState load_sharded_optimizer_state_dict(const ModelLayout& model, std::string_view optimizer_key,
                                              storage::StorageReader& reader, collective::ProcessGroup* group,
                                              const Devices& devices = {}, const PlanOptions& options = {});

/// An optimizer state entry and the entry of the parameter it belongs to (positions in
/// Metadata::items).
struct StateOwner {
  std::size_t state = 0;
  std::size_t param = 0;
};
/// For every optimizer state tensor ("<key>.state.<param>.<state>": its planner_data path is
/// (key, "state", param, state), or without planner_data its flat key reads so), the first
/// tensor entry, not itself state, whose key is <param> or ends with "." <param> (the model's
/// "model.fc1.weight" for "fc1.weight"); in metadata order. States whose parameter is not in
/// the checkpoint are left out. Keys only, no I/O; O(total key length). For `dcpp inspect`.
std::vector<StateOwner> state_owners(const metadata::Metadata& metadata);

}  // namespace dcp::optimizer
