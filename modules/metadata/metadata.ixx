// dcp.metadata — the typed model of a DCP checkpoint's `.metadata`, decoded without Python.
//
// `decode_metadata` reads the pickled `Metadata` of torch 1.13
// (`torch.distributed._shard.checkpoint`) and torch 2.x (`torch.distributed.checkpoint`,
// every variant docs/format.md describes: both enum encodings, pathlib ids, optional
// `storage_meta`/`version`/`transform_descriptors`, unknown extra attributes) via dcp.pickle
// with an allow-list of exactly the globals those files use, then maps the value tree onto
// plain structs. `validate` checks what PyTorch's writer
// guarantees (chunks inside their tensor, no overlaps, full coverage, one storage entry per
// chunk, safe file names) in O(n log n) for any sharding, and returns a `ValidatedMetadata`:
// the only form the planner and the storage layer accept, so unvalidated metadata cannot reach
// a read. `check_storage_bounds` checks byte ranges against file sizes the caller supplies, so
// this module does no I/O. `to_json` renders the documented `dcpp inspect --json` schema.
// `DType` and its facts are dcp.dtype's, re-exported: every layer above needs them.
//
// Untrusted input: the `.metadata` bytes. Imports: dcp.dtype, dcp.error, dcp.pickle, dcp.json,
// dcp.layout.
module;
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <variant>
#include <vector>
export module dcp.metadata;
export import dcp.dtype;  // DType is part of this module's vocabulary
import dcp.error;
import dcp.pickle;
import dcp.layout;

export namespace dcp::metadata {

/// Sizes or offsets, one entry per dimension (torch.Size).
using Shape = layout::Shape;

/// Tensors may have at most this many dims here. torch has no hard rank limit, but its
/// reductions, permute and flip take dims as a 64-bit set, CUDA kernels stop at 25 dims and
/// NumPy at 64: a real model never comes close. The cap bounds what one memo reference to a
/// hostile torch.Size (thousands of dims, shared) can cost.
inline constexpr std::size_t kMaxRank = 64;

/// Which PyTorch wrote the file, from the module path of its classes.
enum class Flavor { torch_1_13, torch_2x };
std::string_view flavor_name(Flavor flavor) noexcept;  ///< "torch-1.13" / "torch-2.x"

/// What a checkpoint's files are, and so how its metadata was made.
enum class Source : std::uint8_t {
  dcp,               ///< `.metadata` (decoded) and torch.save items
  safetensors_file,  ///< one `.safetensors` file (metadata built from its header)
  hf_index,          ///< a model directory: model.safetensors.index.json's weight_map and its files
  hf_directory,      ///< every `*.safetensors` of a directory, each tensor whole in one file
  hf_sharded,        ///< torch's per-rank safetensors files (HuggingFaceStorageWriter with
                     ///< save_distributed): DCP_SHARDING_INFO places each file's piece of a tensor
};
/// "dcp", "safetensors", "hf-index", "hf-directory", "hf-sharded".
std::string_view source_name(Source source) noexcept;

enum class MemoryFormat { contiguous, channels_last, preserve };
std::string_view memory_format_name(MemoryFormat format) noexcept;

struct TensorProperties {
  DType dtype = DType::float32;
  bool requires_grad = false;
  MemoryFormat memory_format = MemoryFormat::contiguous;
  bool pin_memory = false;
};

/// One saved shard: a box in the tensor's global index space.
struct ChunkStorageMetadata {
  Shape offsets;
  Shape sizes;
  std::uint64_t pickle_offset = 0;  ///< where it was decoded, for error messages
  layout::Box box() const { return layout::Box{offsets, sizes}; }
};

struct TensorStorageMetadata {
  TensorProperties properties;
  Shape size;  ///< global shape
  std::vector<ChunkStorageMetadata> chunks;
};

/// A Python object saved with torch.save (BYTE_IO item); no fields in any version.
struct BytesStorageMetadata {};

/// One entry of `state_dict_metadata`.
struct ItemMetadata {
  std::string fqn;
  std::variant<TensorStorageMetadata, BytesStorageMetadata> storage;
  std::uint64_t pickle_offset = 0;
  bool is_tensor() const { return storage.index() == 0; }
  const TensorStorageMetadata& tensor() const { return std::get<0>(storage); }
};

/// Key of `storage_data`: equality and hashing use (fqn, offset); `index` is a hint.
struct MetadataIndex {
  std::string fqn;
  std::optional<Shape> offset;  ///< absent for BYTE_IO items
  std::optional<std::int64_t> index;
};

/// Where an item's bytes are: `[offset, offset + length)` of `relative_path`.
struct StorageInfo {
  std::string relative_path;
  std::uint64_t offset = 0;
  std::uint64_t length = 0;
  std::vector<std::string> transform_descriptors;  ///< e.g. "stream.zstd/1" (2.x extensions)
  std::uint64_t pickle_offset = 0;  ///< where it was decoded (a safetensors header entry: its byte)
  /// The range is the chunk's elements themselves, row-major and little-endian, with nothing
  /// around them (a safetensors tensor), instead of a torch.save archive.
  bool raw = false;
};

struct StorageMeta {
  std::optional<std::string> checkpoint_id;  ///< a pathlib path is joined into one string
  std::optional<std::string> save_id;
  std::optional<std::string> load_id;
  std::vector<std::string> modules;
};

/// A step of a `planner_data` path: a dict key or a list index.
using PathPart = std::variant<std::string, std::int64_t>;

class ValidatedMetadata;

/// The whole `.metadata`.
class Metadata {
 public:
  Flavor flavor = Flavor::torch_2x;
  Source source = Source::dcp;  ///< not part of `.metadata`: what the reader found on disk
  std::vector<ItemMetadata> items;  ///< state_dict_metadata, in file order
  /// fqn → path of the original nested state dict (2.x flattening); nullopt when None.
  std::optional<std::vector<std::pair<std::string, std::vector<PathPart>>>> planner_data;
  std::vector<std::pair<MetadataIndex, StorageInfo>> storage_data;  ///< in file order
  std::optional<StorageMeta> storage_meta;
  std::optional<std::string> version;
  std::vector<std::string> extra_attributes;  ///< unknown Metadata attributes, tolerated

  /// Lookups (index built by `reindex`, which decode_metadata calls).
  const ItemMetadata* find_item(std::string_view fqn) const;
  const StorageInfo* find_storage(std::string_view fqn, const Shape* offset) const;
  const std::vector<PathPart>* find_path(std::string_view fqn) const;
  /// Rebuilds the lookups. Throws resource_exhausted past 2^31 storage entries.
  void reindex();

  /// Heterogeneous lookup by name: a string_view query builds no std::string. Seeded
  /// (dcp::hash_text): the names come from the file.
  struct TextHash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const noexcept { return hash_text(s); }
  };

 private:
  using NameIndex = std::unordered_map<std::string, std::size_t, TextHash, std::equal_to<>>;
  NameIndex item_index_;
  NameIndex path_index_;
  // storage_data by (fqn, offsets), in two levels: fqn → its group's table, then open
  // addressing over the positions + 1 (0 = empty) of that fqn's entries, found by the offsets'
  // hash and compared in place. Millions of chunks at thousands of ranks cost no key strings,
  // and a probe compares offsets only, never names.
  struct StorageGroup {
    std::size_t first_slot = 0;
    std::size_t slot_count = 0;  // a power of two
  };
  // Builds the storage lookups; returns each storage entry's group (validate reads the items
  // of the entries from it instead of looking each key up again).
  std::vector<std::uint32_t> index_storage();
  void index_names();  // items and planner_data
  friend ValidatedMetadata validate(Metadata metadata);
  NameIndex storage_group_;  // fqn → index into storage_groups_
  std::vector<StorageGroup> storage_groups_;
  std::vector<std::uint32_t> storage_slots_;
};

/// Chunks of all tensor items together (how much work checking them is).
std::uint64_t tensor_chunk_count(const Metadata& metadata) noexcept;

/// The first thing wrong with a tensor's chunk list, as `check_chunks` finds it.
struct ChunkProblem {
  enum class Kind : std::uint8_t {
    wrong_rank,  ///< `chunk` has not the tensor's number of dims
    outside,     ///< `chunk` is not a valid box inside the tensor
    overlap,     ///< chunks `other` and `chunk` share an element
    gap,         ///< the chunks cover `covered` of the tensor's `total` elements (`chunk`
                 ///< names none: there may be no chunk at all)
  };
  Kind kind = Kind::gap;
  std::size_t chunk = 0;
  std::size_t other = 0;
  std::uint64_t covered = 0;
  std::uint64_t total = 0;
};
/// The chunks of `tensor` have its rank, lie inside it and tile it (layout::lists_grid_in_order
/// in one read for chunks in rank order, else layout::check_tiling: linear for grids); nullopt
/// when they do. The one check of a chunk
/// list: a loader's validate and a coordinator's global plan word its result their own way.
/// Throws out_of_range when a volume overflows.
std::optional<ChunkProblem> check_chunks(const TensorStorageMetadata& tensor);

/// The globals a `.metadata` may name (all module paths of 1.13 and 2.x).
const pickle::AllowList& metadata_allow_list();

/// Decodes `.metadata` bytes. Throws dcp::Error with the byte offset in the file (the caller
/// adds the file name) and the key where there is one: permission_denied for a foreign
/// global, data_loss for anything that is not DCP metadata, resource_exhausted for a tensor
/// of more than 64 dims, when the pickle's decoded form passes 16 bytes per byte of input
/// (plus 1 MiB), or when the decoded model would pass 32 bytes per byte plus 16 MiB (memo
/// sharing lets a 2-byte reference repeat a whole torch.Size or string).
Metadata decode_metadata(std::span<const std::byte> bytes);
/// Decodes a dtype global (`torch.float32`).
DType decode_dtype(const pickle::Document& doc, pickle::NodeId id);

/// A Metadata that passed `validate`. Immutable and shared: copies are cheap and keep it
/// alive, so planners and readers hold one instead of a pointer into the caller's frame.
/// Only `validate` makes one.
class ValidatedMetadata {
 public:
  const Metadata& get() const noexcept { return state_->metadata; }
  const Metadata& operator*() const noexcept { return state_->metadata; }
  const Metadata* operator->() const noexcept { return &state_->metadata; }

  /// The saved chunks of tensor item `fqn`, indexed (built on first use, once, thread-safe);
  /// nullptr when `fqn` is not a tensor item.
  const layout::ChunkIndex* chunk_index(std::string_view fqn) const;
  /// Position, in its tensor's chunk list, of the saved chunk of `fqn` that starts at
  /// `offsets`; nullopt when there is none.
  std::optional<std::size_t> chunk_position(std::string_view fqn, const Shape& offsets) const;

 private:
  struct TensorChunks {
    const TensorStorageMetadata* tensor = nullptr;
    // Chunk positions + 1 by offsets (open addressing; 0 = empty): the first chunk of each start.
    std::vector<std::uint32_t> start_slots;
    mutable std::once_flag index_once;  // a coordinator validating 8k ranks' chunks builds none
    mutable layout::ChunkIndex index;
  };
  struct State {
    Metadata metadata;
    std::unordered_map<std::string, TensorChunks, Metadata::TextHash, std::equal_to<>> tensors;  // per tensor fqn
  };
  friend ValidatedMetadata validate(Metadata metadata);
  explicit ValidatedMetadata(std::shared_ptr<const State> state) : state_(std::move(state)) {}
  std::shared_ptr<const State> state_;
};

/// Checks the invariants PyTorch's writer guarantees, in O(n log n) in the chunks for any
/// sharding: unique keys; rank ≤ kMaxRank; every chunk inside its tensor; no two chunks
/// overlap; the chunks cover the tensor; exactly one storage entry per chunk and per object,
/// with a safe file name and a byte range that does not overflow. Throws data_loss naming the
/// key and the byte offset of the offending entry in `.metadata`.
ValidatedMetadata validate(Metadata metadata);
/// `validate(decode_metadata(bytes))`, what a loader does, without building the lookups
/// twice: decode_metadata builds them for a Metadata used as it is, validate for itself (at
/// thousands of ranks, the storage lookups cost about as much as the chunk checks). The same
/// errors as the two calls.
ValidatedMetadata decode_validated(std::span<const std::byte> bytes);

/// Size of a checkpoint file, nullopt if it does not exist; may throw a dcp::Error naming the
/// file (relative) for one that exists but cannot hold data (a FIFO), which gets the key added.
using FileSizeFn = std::function<std::optional<std::uint64_t>(std::string_view relative_path)>;
/// Checks that every storage entry's file exists and its byte range lies inside it, and that a
/// tensor chunk's item is at least as long as the chunk's raw bytes (items are stored, not
/// compressed, unless a transform says otherwise; a `raw` range is exactly that long). So a destination sized from the metadata
/// is never larger than the data on disk.
void check_storage_bounds(const ValidatedMetadata& metadata, const FileSizeFn& file_size);

/// Number of elements of a shape: layout::volume (throws out_of_range on overflow,
/// invalid_argument for a negative size; validated metadata has neither).
std::uint64_t numel(const Shape& shape);
/// Bytes of a dense tensor of `shape` and `dtype` (checked like numel). The one place where
/// an element count becomes a byte count.
std::uint64_t byte_size(const Shape& shape, DType dtype);
/// A file name from `storage_data` that may be opened under the checkpoint directory.
bool is_safe_relative_path(std::string_view path) noexcept;

/// The layout `tensor`'s saved chunks are (`layout::describe_layout`): what `dcpp inspect`
/// shows. Never throws dcp::Error.
layout::LayoutDescription describe_layout(const TensorStorageMetadata& tensor);

/// The `dcpp inspect --json` document (schema in README.md).
std::string to_json(const Metadata& metadata, int indent = 1);

/// Encodes `metadata` as a `.metadata` pickle readable by PyTorch of `flavor` (module paths
/// of that version; enum as `cls(value)`, checkpoint id as a plain str).
std::vector<std::byte> encode_metadata(const Metadata& metadata, Flavor flavor);

}  // namespace dcp::metadata
