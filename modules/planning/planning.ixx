// dcp.planning — torch's planner protocol, both halves: which saved bytes go where on load,
// and which values become which saved items on save.
//
// dcp.planning does no I/O. A caller describes where values should land (`Destination`:
// per fqn either a tensor's local chunks over caller-owned memory, or an object whose
// bytes the planner keeps); `DefaultLoadPlanner` checks it against the checkpoint's
// `Metadata` and emits a `LoadPlan` of `ReadItem`s with torch's offset semantics
// (docs/format.md, "Load planning"), using dcp.layout's `ChunkIndex` instead of torch's all-pairs
// loop. The storage layer later executes the plan: for a tensor item it asks
// `resolve_tensor` for the destination view (`TensorSlice`), copies into it and calls
// `commit_tensor`; for a bytes item it calls `load_bytes`. Plans cross ranks as bytes
// (`encode_plan` / `decode_plan`, our own format, not torch's pickle). `unflatten` rebuilds
// the nested state-dict shape from `planner_data`.
//
// Stricter than torch: a destination key missing from the checkpoint (unless
// allow_partial_load), a global shape, kind or dtype mismatch (unless
// allow_dtype_conversion) and destination elements that no saved chunk covers are errors.
// Checkpoint keys the destination lacks are ignored, as in torch.
//
// Untrusted inputs: the checkpoint's metadata arrives as `metadata::ValidatedMetadata` (its
// chunks already proved inside their tensors and disjoint, their index built once), and plan
// bytes from other ranks (`decode_plan`; `resolve_tensor` re-checks every item against the
// destination, the storage layer against the saved chunk).
//
// The save half (`SavePlanner`, `DefaultSavePlanner`): a caller's `StateDict` (flat keys with
// their nested paths, tensors as strided views of caller memory, objects as pickle values with
// the storages of the tensors they hold)
// becomes a `SavePlan` of `WriteItem`s per rank; the coordinator de-duplicates replicated
// items across ranks (`dedup_save_plans`) and builds the global `Metadata`
// (`create_global_save_plan`, O(n log n) in chunks); the storage writer then asks
// `resolve_data` for each item's data (a tensor chunk's memory, or an object's value) and reports `WriteResult`s that the coordinator puts into `.metadata`.
// Imports: dcp.error, dcp.pickle, dcp.metadata, dcp.layout.
module;
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>
export module dcp.planning;
import dcp.error;
import dcp.pickle;
import dcp.metadata;
import dcp.layout;

export namespace dcp::planning {

using metadata::Shape;

/// What a ReadItem fills: part of a tensor, or a whole torch.save'd object.
enum class LoadItemType : std::uint8_t { tensor, byte_io };

/// One read: `lengths` elements per dim from `storage_offsets` inside saved chunk
/// `storage_index` to `dest_offsets` inside local chunk `dest_index`. `storage_index.index` is
/// the saved chunk's position in the metadata chunk list, `dest_index.index` the local chunk's
/// position in its TensorDestination; both `offset`s are the chunks' global offsets. Bytes
/// items use `MetadataIndex{fqn}` on both sides and torch's dummy `{0}` shapes.
struct ReadItem {
  LoadItemType type = LoadItemType::tensor;
  metadata::MetadataIndex dest_index;
  Shape dest_offsets;
  metadata::MetadataIndex storage_index;
  Shape storage_offsets;
  Shape lengths;
  /// Field-wise, including the `index` hints.
  friend bool operator==(const ReadItem& a, const ReadItem& b);
};

/// The reads one rank performs.
struct LoadPlan {
  std::vector<ReadItem> items;
  friend bool operator==(const LoadPlan&, const LoadPlan&) = default;
};

/// Encodes a plan for the wire: "DLP1", u64 count, then per item the fields in order
/// (strings and shapes length-prefixed, optionals flagged), integers little-endian.
std::vector<std::byte> encode_plan(const LoadPlan& plan);
/// Inverse of encode_plan. Throws Error(data_loss) with the byte offset on a bad magic,
/// unknown item type, truncated field, count larger than the input can hold or trailing bytes.
LoadPlan decode_plan(std::span<const std::byte> bytes);

/// Read-once loading: a saved item that several ranks need is read from storage by one of
/// them, which broadcasts its stored bytes to the others (docs/format.md, "Read-once loading").
struct SharedRead {
  metadata::MetadataIndex item;    ///< the saved item: fqn, and the chunk's offsets for a tensor
  int reader = 0;                  ///< the rank that reads it from storage and broadcasts it
  std::uint64_t stored_bytes = 0;  ///< its length in storage
  friend bool operator==(const SharedRead& a, const SharedRead& b);
};

/// Where the ranks run, as read-once weighs it: which ranks share a host (and so its page
/// cache: a byte one of them reads from storage, the others copy from memory), and which link
/// is the slowest.
struct ReadTopology {
  /// The link whose bytes a shared item's reading should keep fewest: `host`, each host's own
  /// (its storage reads and its group traffic alike), or `storage`, a storage service all hosts
  /// share whose bandwidth is below what the hosts' links add up to.
  enum class Link : std::uint8_t { host, storage };
  /// host_of_rank[r]: rank r's host, any number that is equal for the ranks of one host; empty:
  /// every rank on a host of its own.
  std::vector<int> host_of_rank;
  Link slowest_link = Link::host;
};

/// The coordinator's choice of shared reads over every rank's plan (plans[r] is rank r's), by
/// reader rank and in metadata order for each reader: the order in which every rank takes part
/// in their broadcasts (one reader's consecutive items share a broadcast). A saved tensor
/// chunk is a candidate when at least two ranks read from it and their reads together would
/// fetch more than one copy of it (each read costs its row-major span: a replicated chunk,
/// boxes that overlap, column bands of a row chunk), not when the ranks read disjoint row
/// ranges; an object is a candidate when at least two ranks load it. A candidate of S stored
/// bytes that ranks on H hosts need is read by each of its ranks (the page cache of each host
/// fetching it once: S on each host's link, H·S from the storage) unless a broadcast from one
/// of them moves fewer bytes over `topology.slowest_link` (S from the storage; out of the
/// reader's host S plus S per rank of the group elsewhere, into another host S per rank
/// there; ties read): so never on one host, and across hosts when the storage is the slowest
/// link. A broadcast item goes to the reader among its ranks with the fewest shared bytes so far
/// (ties: the lowest rank). Items that name nothing in `metadata` are left to the storage
/// layer, which refuses them.
std::vector<SharedRead> plan_read_once(std::span<const LoadPlan> plans, const metadata::ValidatedMetadata& metadata,
                                       const ReadTopology& topology);
/// Shared reads as bytes ("DRO1", encode_plan's conventions); the decoder throws data_loss
/// with the byte offset.
std::vector<std::byte> encode_shared_reads(std::span<const SharedRead> reads);
std::vector<SharedRead> decode_shared_reads(std::span<const std::byte> bytes);

/// A strided view of caller-owned tensor memory, without libtorch. `strides` count elements.
struct TensorSlice {
  std::byte* data = nullptr;
  DType dtype = DType::float32;
  Shape sizes;
  Shape strides;
};
/// A row-major view of `sizes` elements at `data`.
TensorSlice contiguous_slice(std::byte* data, DType dtype, Shape sizes);
/// The sub-view `[offsets, offsets + lengths)` (torch's chained `narrow`). Throws
/// invalid_argument for a rank mismatch or a box outside `slice`, out_of_range when the byte
/// offset overflows. An empty result keeps `slice.data` (it is never dereferenced).
TensorSlice narrow(const TensorSlice& slice, const Shape& offsets, const Shape& lengths);
/// Dense row-major layout (torch's rule: dims of size 1 are ignored; empty is contiguous).
bool is_contiguous(const TensorSlice& slice);
/// Number of elements (checked).
std::uint64_t numel(const TensorSlice& slice);

/// One chunk of a destination tensor held by this rank: its box in global coordinates and
/// its memory (`memory.sizes == sizes`, `memory.dtype` == the tensor's dtype). Planning alone
/// needs no memory (`data` may be null); `resolve_tensor` does.
struct LocalChunk {
  Shape offsets;
  Shape sizes;
  TensorSlice memory;
};

/// A tensor to load into: its global shape and dtype, and the chunks this rank holds (one
/// whole-tensor chunk for a plain tensor, several for a ShardedTensor, none on a rank that
/// holds no part of it).
struct TensorDestination {
  Shape global_size;
  DType dtype = DType::float32;
  std::vector<LocalChunk> chunks;
};

/// An object (BYTE_IO item) to load; its bytes are kept by the planner.
struct ObjectDestination {};

/// Where a load puts each value: fqn → tensor or object, in insertion order (the order of
/// the plan's items).
class Destination {
 public:
  using Entry = std::variant<TensorDestination, ObjectDestination>;
  /// Throw invalid_argument (with the key) when `fqn` is already present.
  void add_tensor(std::string fqn, TensorDestination tensor);
  void add_object(std::string fqn);
  /// nullptr when absent.
  const Entry* find(std::string_view fqn) const;
  Entry* find(std::string_view fqn);
  const std::vector<std::pair<std::string, Entry>>& entries() const noexcept { return entries_; }
  std::size_t size() const noexcept { return entries_.size(); }

 private:
  void insert(std::string fqn, Entry entry);
  std::vector<std::pair<std::string, Entry>> entries_;
  std::unordered_map<std::string, std::size_t> index_;
};

/// This rank's share of a tensor split along dim 0 with torch.chunk / ChunkShardingSpec rules
/// (`layout::chunk_split(global_size, 0, world_size)[rank]`) as local chunks over `data`, which
/// holds that share row-major. Empty for a rank whose share has no rows (ChunkShardingSpec
/// gives it no shard); a 0-dim tensor is one whole chunk on every rank. Throws
/// invalid_argument for rank outside [0, world_size).
std::vector<LocalChunk> row_chunks(const Shape& global_size, DType dtype, int rank, int world_size,
                                   std::byte* data);

struct LoadPlannerOptions {
  bool allow_partial_load = false;      ///< destination keys absent from the checkpoint are skipped
  bool allow_dtype_conversion = false;  ///< saved dtype may differ; the storage layer converts
                                        ///< (bool, integer and floating dtypes, as torch's copy_)
};

/// torch's LoadPlanner protocol, called in this order: set_up_planner (all ranks),
/// create_local_plan (all), create_global_plan (coordinator), finish_plan (all), then the
/// storage layer's resolve_tensor + commit_tensor / load_bytes per item.
class LoadPlanner {
 public:
  virtual ~LoadPlanner() = default;
  /// Keeps a reference to `destination` (caller-owned memory: it must outlive the load) and a
  /// share of `metadata`.
  virtual void set_up_planner(Destination& destination, metadata::ValidatedMetadata metadata,
                              bool is_coordinator) = 0;
  virtual LoadPlan create_local_plan() = 0;
  /// Gets every rank's local plan (in rank order), returns the plan for each rank.
  virtual std::vector<LoadPlan> create_global_plan(std::vector<LoadPlan> plans) = 0;
  virtual LoadPlan finish_plan(LoadPlan central_plan) = 0;
  /// The destination memory a tensor item is copied into.
  virtual TensorSlice resolve_tensor(const ReadItem& item) = 0;
  /// Called after the copy into `resolve_tensor`'s slice is complete.
  virtual void commit_tensor(const ReadItem& item, const TensorSlice& slice) = 0;
  /// The whole saved object of a bytes item (a torch.save stream).
  virtual void load_bytes(const ReadItem& item, std::span<const std::byte> bytes) = 0;
};

/// The default planner: local plans from the chunk overlap, identity global planning.
class DefaultLoadPlanner : public LoadPlanner {
 public:
  explicit DefaultLoadPlanner(LoadPlannerOptions options = {}) : options_(options) {}

  /// Also checks the destination's own consistency (chunks inside the global shape, memory
  /// shape and dtype equal to the chunk's): invalid_argument with the key.
  void set_up_planner(Destination& destination, metadata::ValidatedMetadata metadata,
                      bool is_coordinator) override;
  /// Throws (with the key): not_found for a missing key or an uncovered region,
  /// failed_precondition for a shape, kind or dtype mismatch.
  LoadPlan create_local_plan() override;
  std::vector<LoadPlan> create_global_plan(std::vector<LoadPlan> plans) override;
  LoadPlan finish_plan(LoadPlan central_plan) override;
  /// Throws invalid_argument (with the key) when the item does not name a local chunk of a
  /// destination tensor or reaches outside it.
  TensorSlice resolve_tensor(const ReadItem& item) override;
  void commit_tensor(const ReadItem& item, const TensorSlice& slice) override;
  /// Throws invalid_argument when the item's key is not an object destination.
  void load_bytes(const ReadItem& item, std::span<const std::byte> bytes) override;

  /// Bytes loaded for an object, or nullptr before `load_bytes` ran for it.
  const std::vector<std::byte>* loaded_bytes(std::string_view fqn) const;
  /// Moves the loaded bytes out (nullopt if none).
  std::optional<std::vector<std::byte>> take_bytes(std::string_view fqn);

  bool is_coordinator() const noexcept { return is_coordinator_; }
  const LoadPlannerOptions& options() const noexcept { return options_; }

 private:
  void plan_tensor(const std::string& fqn, const TensorDestination& dest,
                   const metadata::TensorStorageMetadata& saved, const layout::ChunkIndex& index, LoadPlan& plan);
  const TensorDestination& tensor_destination(const ReadItem& item) const;

  LoadPlannerOptions options_;
  Destination* destination_ = nullptr;
  std::optional<metadata::ValidatedMetadata> metadata_;
  bool is_coordinator_ = false;
  std::unordered_map<std::string, std::vector<std::byte>> bytes_;
};

// ---------------------------------------------------------------------------------------------
// The save half.

/// What a WriteItem saves: a whole plain tensor, one local shard of a sharded tensor, or an
/// object (torch.save'd into its own archive).
enum class WriteItemType : std::uint8_t { tensor, shard, byte_io };

/// The tensor facts of a WriteItem: the chunk it writes, and the whole tensor's properties
/// and global size.
struct TensorWriteData {
  layout::Box chunk;
  metadata::TensorProperties properties;
  Shape size;
  friend bool operator==(const TensorWriteData& a, const TensorWriteData& b);
};

/// One saved item. `index` is (fqn, chunk offsets) for tensors, (fqn) for objects; the global
/// plan rewrites `index.index` to the chunk's position in the metadata chunk list.
struct WriteItem {
  metadata::MetadataIndex index;
  WriteItemType type = WriteItemType::tensor;
  std::optional<TensorWriteData> tensor_data;  ///< set for tensor and shard items
  /// Bytes of the whole tensor's elements (its global size, not the chunk's: torch's
  /// tensor_storage_size, which de-duplication and the writer's file split weigh items by);
  /// nullopt for objects.
  std::optional<std::uint64_t> tensor_storage_size() const;
  friend bool operator==(const WriteItem& a, const WriteItem& b);
};

/// The writes of one rank. `storage_data` belongs to the storage writer (torch's
/// `_StoragePrefix`: the filesystem writer puts the file prefix and its staging directory
/// there in prepare_global_plan); `planner_data` is this rank's flat key → nested path map.
struct SavePlan {
  std::vector<WriteItem> items;
  std::string storage_data;
  std::vector<std::pair<std::string, std::vector<metadata::PathPart>>> planner_data;
  bool usable = true;
  friend bool operator==(const SavePlan&, const SavePlan&) = default;
};

/// Where the writer put one item (gathered to the coordinator for `.metadata`).
struct WriteResult {
  metadata::MetadataIndex index;
  std::uint64_t size_in_bytes = 0;
  metadata::StorageInfo storage_data;
};

/// SavePlans and WriteResults as bytes for gather and scatter between ranks ("DSP1" / "DWR1",
/// same conventions as encode_plan). Decoders throw data_loss with the byte offset.
std::vector<std::byte> encode_save_plan(const SavePlan& plan);
SavePlan decode_save_plan(std::span<const std::byte> bytes);
/// The coordinator's side: every rank's plan at once, on several threads (thousands of ranks
/// send millions of items). Decoding throws the error of the lowest rank whose bytes are bad.
std::vector<SavePlan> decode_save_plans(std::span<const std::span<const std::byte>> bodies);
std::vector<std::vector<std::byte>> encode_save_plans(std::span<const SavePlan> plans);
std::vector<std::byte> encode_write_results(std::span<const WriteResult> results);
std::vector<WriteResult> decode_write_results(std::span<const std::byte> bytes);

/// A Python value to save as an object: node `id` of a shared pickle document (containers,
/// scalars, and tensors as torch.save pickles them: `_rebuild_tensor_v2`/`_v3` over a
/// persistent id ('storage', class, key, location, numel), which torch 1.13 saves inside
/// the objects of a nested state dict).
struct ObjectValue {
  std::shared_ptr<const pickle::Document> document;
  pickle::NodeId id = pickle::kNoNode;
  /// The bytes of each storage the value's tensors view, by the key its persistent ids name
  /// (empty for a value without tensors). Caller-owned memory, as a tensor's: it must outlive
  /// the save. The writer checks each tensor against it (dcp.record's write_object_archive).
  std::unordered_map<std::string, std::span<const std::byte>> storages = {};
  /// Scalars, for callers without a document at hand.
  static ObjectValue integer(std::int64_t value);
  static ObjectValue floating(double value);
  static ObjectValue string(std::string_view utf8);
  static ObjectValue boolean(bool value);
  static ObjectValue none();
};

/// One chunk of a tensor to save: its offsets in the global tensor and its memory (sizes =
/// `memory.sizes`, any strides). The save never writes through `memory.data`.
struct SaveChunk {
  Shape offsets;
  TensorSlice memory;
};

/// A tensor to save: global size and properties, and the chunks this rank holds (one chunk
/// at offset 0 covering the tensor for a plain tensor).
struct SaveTensor {
  Shape global_size;
  metadata::TensorProperties properties;
  std::vector<SaveChunk> chunks;
  bool sharded = false;  ///< items are shards (ShardedTensor / DTensor), not a plain tensor
};

/// What a save writes: flat keys in insertion order, each with the nested path it came from
/// (torch's flatten_state_dict: the fqn is the path joined with '.').
class StateDict {
 public:
  using Value = std::variant<SaveTensor, ObjectValue>;
  struct Entry {
    std::string fqn;
    std::vector<metadata::PathPart> path;
    Value value;
  };
  /// A plain tensor over `memory` (replicated: every rank that adds it may be the one that
  /// writes it). Throws invalid_argument (with the key) for a key that is already present
  /// after flattening, an empty path, or an unsupported dtype.
  void add_tensor(std::vector<metadata::PathPart> path, TensorSlice memory, bool requires_grad = false);
  /// This rank's shards of a sharded tensor (none is allowed). Each chunk must lie inside
  /// `global_size` and have `properties.dtype`.
  void add_sharded_tensor(std::vector<metadata::PathPart> path, Shape global_size,
                          metadata::TensorProperties properties, std::vector<SaveChunk> chunks);
  void add_object(std::vector<metadata::PathPart> path, ObjectValue value);
  /// nullptr when absent.
  const Entry* find(std::string_view fqn) const;
  const std::vector<Entry>& entries() const noexcept { return entries_; }
  std::size_t size() const noexcept { return entries_.size(); }
  /// Bytes of tensor elements this state dict holds locally.
  std::uint64_t tensor_bytes() const;

 private:
  void insert(std::vector<metadata::PathPart> path, Value value);
  std::vector<Entry> entries_;
  std::unordered_map<std::string, std::size_t> index_;
};

/// torch's flattening of one path: parts joined with '.', list indices in decimal.
std::string join_path(const std::vector<metadata::PathPart>& path);

/// What `resolve_data` hands the writer: a tensor chunk's memory, or an object's value. (torch's
/// planner torch.saves objects itself; here the writer does, because the archive layout
/// belongs to the storage format it writes, as the tensors' does.)
using ResolvedData = std::variant<TensorSlice, ObjectValue>;

/// torch's SavePlanner protocol, called in this order: set_up_planner (all ranks),
/// create_local_plan (all), create_global_plan (coordinator), finish_plan (all), then the
/// storage writer's resolve_data per item.
class SavePlanner {
 public:
  virtual ~SavePlanner() = default;
  /// Keeps a reference to `state_dict` (it must outlive the save).
  virtual void set_up_planner(const StateDict& state_dict, bool is_coordinator) = 0;
  virtual SavePlan create_local_plan() = 0;
  /// Gets every rank's local plan (rank order); returns each rank's plan and the global
  /// Metadata (without storage_data: the writer's results fill it).
  virtual std::pair<std::vector<SavePlan>, metadata::Metadata> create_global_plan(std::vector<SavePlan> plans) = 0;
  virtual SavePlan finish_plan(SavePlan central_plan) = 0;
  virtual ResolvedData resolve_data(const WriteItem& item) = 0;
};

struct SavePlannerOptions {
  /// A replicated item goes to the lowest rank holding it, instead of the rank with the
  /// fewest bytes planned so far (torch's dedup_save_to_lowest_rank).
  bool dedup_save_to_lowest_rank = false;
};

/// The default planner: one item per plain tensor, per local shard and per object, on every
/// rank; the coordinator de-duplicates and builds the metadata.
class DefaultSavePlanner : public SavePlanner {
 public:
  explicit DefaultSavePlanner(SavePlannerOptions options = {}) : options_(options) {}
  void set_up_planner(const StateDict& state_dict, bool is_coordinator) override;
  SavePlan create_local_plan() override;
  /// Throws invalid_argument (with the key) when ranks disagree on a tensor's size or
  /// properties, a key is a tensor on one rank and an object on another, shards overlap or
  /// leave the tensor, or (after de-duplication) a tensor's chunks do not cover it.
  std::pair<std::vector<SavePlan>, metadata::Metadata> create_global_plan(std::vector<SavePlan> plans) override;
  SavePlan finish_plan(SavePlan central_plan) override;
  /// Throws invalid_argument when the item names nothing in the state dict.
  ResolvedData resolve_data(const WriteItem& item) override;

 private:
  SavePlannerOptions options_;
  const StateDict* state_dict_ = nullptr;
  bool is_coordinator_ = false;
};

/// torch's dedup_save_plans: an item (by fqn and offsets) planned on several ranks is kept on
/// one: the lowest rank, or the rank with the fewest bytes so far (`tensor_storage_size() or
/// 1`; a tie goes where torch's `min` over the Python set of holders puts it, docs/format.md
/// "Saving"). O(n log n) in items.
std::vector<SavePlan> dedup_save_plans(std::vector<SavePlan> plans, bool save_to_lowest_rank);
/// torch's create_default_global_save_plan plus validation: the Metadata of every item in
/// every plan (index hints rewritten to chunk positions), planner_data merged from every
/// plan, and the chunks checked (inside the tensor, disjoint, covering it) in O(n log n).
std::pair<std::vector<SavePlan>, metadata::Metadata> create_global_save_plan(std::vector<SavePlan> plans);

/// A node of a nested state dict rebuilt from flat keys: a hole (`none`, Python's None in a
/// list), a leaf naming the flat key whose value goes there, a dict (string keys in
/// insertion order) or a list.
struct NestedNode {
  enum class Kind : std::uint8_t { none, leaf, dict, list };
  Kind kind = Kind::none;
  std::string fqn;                   ///< leaf: the flat key
  std::vector<std::string> keys;     ///< dict: keys, parallel to `children`
  std::vector<NestedNode> children;  ///< dict: values; list: elements
  /// Dict lookup (linear in the keys); nullptr when absent or not a dict.
  const NestedNode* find(std::string_view key) const;
};

/// Rebuilds the nesting of `fqns` (torch's `set_element` over `planner_data` paths): string
/// parts make dicts, int parts make lists extended with holes up to the index. Never splits
/// on dots. Without planner_data (torch 1.13) every fqn is a top-level key. The root is a
/// dict. Throws (with the key) not_found for an fqn without a path, data_loss for paths that
/// collide or mix dict and list at one place, out_of_range for a list index or depth past
/// the limits (2^20, 256).
NestedNode unflatten(const metadata::Metadata& metadata, const std::vector<std::string>& fqns);
/// The nesting of a state dict's entries along their paths, by the same rules.
NestedNode unflatten(const StateDict& state_dict);

}  // namespace dcp::planning

