// dcp.checkpoint — the core facade: what a user of dcpp calls, without libtorch.
//
// `inspect` reads `.metadata` without running a pickle and cross-checks it. `load` is torch's
// load: it fills a caller-described Destination in place through a LoadPlanner and a
// StorageReader (`set_up_planner` → `create_local_plan` → global plan → `read_data`), on one
// process or across the ranks of a `collective::ProcessGroup`, every collective a step of
// dcp.collective's `Collectives` (a rank's failure reaches every rank, naming it).
// `for_each_tensor` loads a whole checkpoint as full, unsharded tensors into dcp.memory
// buffers, in bounded batches (what `dcpp load`/`verify`/`convert` and dcp.torch's at::Tensor
// API build on), and `load_objects` decodes the BYTE_IO values. Nothing here includes a
// libtorch header: the tensor-facing API is dcp.torch's.
//
// `save` is torch's save sequence (local plans → coordinator's global plan → write → results →
// `.metadata`) over a SavePlanner and a StorageWriter, on one process or across the ranks of a
// process group (dcp.dist's over c10d; `save_ranks` plays several ranks in one process, as
// `dcpp convert --ranks` does). `import_torch_save` and
// `import_safetensors` read a file as a StateDict over its read-only mapping, which
// `save_as_checkpoint` writes as an N-rank checkpoint. `Checkpointer` is torch's
// _Checkpointer: save, async_save (stages the tensors into reusable host buffers, then writes
// on a background thread over a group of its own; the caller may change its tensors, and run
// its own collectives, once it returns) and load.
// Imports every core module below it.
module;
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>
export module dcp.checkpoint;
import dcp.error;
import dcp.pickle;
import dcp.metadata;
import dcp.planning;
import dcp.memory;
import dcp.record;
import dcp.storage;
import dcp.collective;

export namespace dcp::checkpoint {

/// Reads, decodes and cross-checks `checkpoint_dir/.metadata`: chunks inside their tensors
/// and not overlapping, one storage entry per chunk, every data file present and every byte
/// range inside it (FileSystemReader::read_metadata). Throws dcp::Error naming the file, key
/// and byte offset.
metadata::ValidatedMetadata inspect(const std::filesystem::path& checkpoint_dir);

/// Read-once loading over a group (on by default; torch has it only as an open proposal,
/// pytorch#193909): a saved item that ranks on several hosts need (a replicated tensor, a chunk
/// whose parts overlap or interleave across ranks, an object every rank loads) is read from
/// storage once per host, each host's page cache sharing it between its ranks, or, where that
/// moves fewer bytes over the slowest link (`slowest_link` storage), by one rank and broadcast
/// to the others (planning::plan_read_once decides). Ranks on one host never broadcast to each
/// other: copying from the page cache is faster than any loopback transfer. Each rank's
/// ReadReport says what it read (`storage_bytes`) and what it received (`received_bytes`).
/// c10d broadcasts to the whole group, so a rank that needs none of a batch still receives it.
/// Broadcasts are used only when every rank's reader can_share_items. Readers without a page
/// cache to share (object stores) count the storage as the slowest link whatever `slowest_link`
/// says: there each rank's read is a transfer from the store.
struct ReadOnce {
  bool enabled = true;
  /// The coordinator's value holds for all.
  planning::ReadTopology::Link slowest_link = planning::ReadTopology::Link::host;
  /// This rank's host: ranks that give the same string share a page cache. Empty:
  /// host_identity(). Tests and benchmarks play several hosts on one machine with it.
  std::string host = {};
  /// Stored bytes one broadcast carries at most (a larger item travels alone): what each rank
  /// holds of shared items at a time (two batches). The coordinator's value holds for all.
  std::uint64_t batch_bytes = std::uint64_t{256} << 20;
};

/// This process's host as read-once sees it: $DCPP_HOST when set and not empty (the override:
/// a launcher gives each rank the host it plays), else the running kernel's boot id
/// (/proc/sys/kernel/random/boot_id: the same for every process, containers included, that
/// shares this kernel's page cache), else the host name.
std::string host_identity();

/// torch's `load(state_dict, storage_reader, planner, process_group, coordinator_rank)`: the
/// coordinator reads `.metadata` once and broadcasts its bytes, which every rank decodes and
/// validates itself (`StorageReader::metadata_from_bytes`, checking the byte ranges against its
/// own view of the data files); every rank plans its reads, the coordinator builds the global
/// plan, every rank reads its items into `destination`'s memory, and a last exchange of status
/// makes a failure on any rank fail every rank, with an error naming the failed rank. A null
/// group is one process (the same sequence, collectives as identities). Saved items several
/// ranks need are read once (`read_once`). Returns this rank's report.
storage::ReadReport load(planning::Destination& destination, storage::StorageReader& reader,
                         planning::LoadPlanner& planner, collective::ProcessGroup* group = nullptr, int coordinator_rank = 0,
                         const ReadOnce& read_once = {});

/// The metadata step of a distributed load on its own, for callers that need the checkpoint's
/// shapes before they can describe a destination: the coordinator reads and validates
/// `.metadata` and broadcasts its bytes, every rank decodes and validates them against its own
/// storage, and a failure on any rank fails every rank (naming it). Every rank must call it.
metadata::ValidatedMetadata read_metadata(storage::StorageReader& reader, collective::ProcessGroup* group = nullptr,
                                          int coordinator_rank = 0);

/// `load` over metadata every rank already holds (read_metadata): no metadata step.
storage::ReadReport load(planning::Destination& destination, storage::StorageReader& reader,
                         planning::LoadPlanner& planner, const metadata::ValidatedMetadata& metadata,
                         collective::ProcessGroup* group = nullptr, int coordinator_rank = 0, const ReadOnce& read_once = {});

struct LoadOptions {
  storage::ReadOptions read;        ///< how the storage layer reads (threads, backend, budgets)
  std::uint64_t batch_bytes = std::uint64_t{1} << 30;  ///< for_each_tensor's memory bound
  std::function<bool(std::string_view fqn)> select;     ///< keys to load (all when empty)
  /// Memory for one full tensor of `bytes` bytes (at least that many; memory::allocate when
  /// empty). dcp.torch passes libtorch's pinned memory here; an engine, its own arena.
  std::function<memory::Buffer(std::uint64_t bytes)> allocate;
};

/// Bytes of the full tensors `options.select` picks (what a progress bar counts to).
std::uint64_t selected_tensor_bytes(const metadata::Metadata& metadata, const LoadOptions& options);

/// One full tensor in host memory it owns: `dtype`, `shape`, and the row-major bytes.
struct TensorBuffer {
  DType dtype = DType::float32;
  metadata::Shape shape;
  memory::Buffer memory;  ///< at least byte_size(shape, dtype) bytes
  /// The tensor's bytes (byte_size(shape, dtype) of them).
  std::span<const std::byte> bytes() const;
  /// The memory as a contiguous planning::TensorSlice.
  planning::TensorSlice slice();
};

/// Loads every selected tensor as a full tensor, in metadata order, a batch of at most
/// `batch_bytes` (or one tensor, if larger) at a time; `consume` receives each tensor and may
/// keep or drop it. Returns the combined report (with collect_errors, the errors).
storage::ReadReport for_each_tensor(const std::filesystem::path& checkpoint_dir,
                                    const metadata::ValidatedMetadata& metadata, const LoadOptions& options,
                                    const std::function<void(const std::string& fqn, TensorBuffer tensor)>& consume);

/// Decodes every selected BYTE_IO object of a checkpoint.
std::vector<std::pair<std::string, pickle::Document>> load_objects(
    const std::filesystem::path& checkpoint_dir, const metadata::ValidatedMetadata& metadata, const LoadOptions& options);

/// A BYTE_IO object as saved, ready to be saved again: its decoded value, with the storages of
/// the tensors it holds (torch 1.13 saves every non-tensor value of a state dict as one
/// object, tensors inside included), viewing `archive`, which the value keeps alive only
/// together with this struct.
struct LoadedObject {
  std::string fqn;
  planning::ObjectValue value;  ///< the root of the object's data.pkl, and its storages
  std::shared_ptr<const std::vector<std::byte>> archive;  ///< the item's torch.save archive
};

/// load_objects, keeping what saving the objects again needs: each object's archive, and the
/// storages of its tensors, each checked once (size, CRC-32, every view inside it).
std::vector<LoadedObject> load_object_values(const std::filesystem::path& checkpoint_dir,
                                             const metadata::ValidatedMetadata& metadata, const LoadOptions& options);
/// One loaded BYTE_IO item's archive as a LoadedObject, checked as load_object_values checks.
/// Errors name the key, and the data file and file offset `metadata` and `reader` give it.
LoadedObject decode_object(std::string fqn, std::vector<std::byte> archive, const metadata::Metadata& metadata,
                           const storage::StorageReader& reader);

/// Called after each tensor is verified or written, with its size in bytes.
using Progress = std::function<void(std::uint64_t tensor_bytes)>;

/// What verify read.
struct VerifyReport {
  std::uint64_t tensors = 0;  ///< tensors read whole
  std::uint64_t objects = 0;  ///< objects decoded
  std::uint64_t bytes = 0;    ///< tensor bytes read
  std::vector<Error> errors;  ///< with options.read.collect_errors, every problem found
};
/// Reads every selected record whole, checking every bound, dtype, size and CRC-32, and
/// decodes every selected object (checking the storages of the tensors it holds), in batches of at most 256 MiB (or one tensor, if larger)
/// dropped as soon as they are checked. Throws the first problem, or with
/// `options.read.collect_errors` reports them all (errors in `.metadata` always throw).
VerifyReport verify(const std::filesystem::path& checkpoint_dir, const LoadOptions& options = {},
                    const Progress& progress = {});

/// What a conversion wrote.
struct ConvertReport {
  std::uint64_t tensors = 0;  ///< tensors written
  std::uint64_t objects = 0;  ///< objects written
  std::uint64_t bytes = 0;    ///< tensor bytes written
};

/// What the converters check of their output path before any work: failed_precondition for a
/// directory, or (without `overwrite`) any existing entry; invalid_argument for an empty path.
void check_output_path(const std::filesystem::path& out, bool overwrite);

/// Writes the selected keys as one torch.save file (`torch.load(out)` gives the state dict,
/// nested along planner_data, tensors full and contiguous on the CPU, objects as saved).
/// An object that holds tensors (torch 1.13's nested values) is written with their storages.
/// Streams tensor by tensor (memory ≲ 256 MiB or the largest tensor, plus the objects) into a
/// new hidden file beside `out`, renamed to `out` at the end and removed on any error; an
/// existing `out` is replaced only with `overwrite` (failed_precondition otherwise, before any
/// work). Throws unimplemented (with the key) for quantized tensors.
ConvertReport convert_to_torch_save(const std::filesystem::path& checkpoint_dir, const std::filesystem::path& out,
                                    const LoadOptions& options = {}, const Progress& progress = {},
                                    bool overwrite = false);

/// Writes the selected keys as one safetensors file: tensors by flat key (sorted), objects as
/// JSON strings in `__metadata__` beside "format": "pt". Same streaming and temp-file rules as
/// convert_to_torch_save. Throws unimplemented (with the key) for dtypes safetensors lacks
/// (complex, quantized, float8 other than e4m3fn/e5m2), a tensor named `__metadata__`, an
/// object named `format` and objects without a JSON form.
ConvertReport convert_to_safetensors(const std::filesystem::path& checkpoint_dir, const std::filesystem::path& out,
                                     const LoadOptions& options = {}, const Progress& progress = {},
                                     bool overwrite = false);

/// Hugging Face's default largest shard (huggingface_hub's MAX_SHARD_SIZE, "5GB": decimal).
inline constexpr std::uint64_t kDefaultMaxShardBytes = 5'000'000'000;
/// Writes the selected keys as a Hugging Face model directory `out_dir`, as huggingface_hub's
/// save_torch_state_dict does: tensors in the checkpoint's order split into shards of at most
/// `max_shard_bytes` (a new shard when the next tensor would pass it; a larger tensor alone),
/// `model.safetensors` when one shard holds them all, else `model-0000i-of-0000N.safetensors`
/// and `model.safetensors.index.json` (total_size, weight_map); each shard as
/// convert_to_safetensors writes one file (objects in the first shard's `__metadata__`).
/// Published crash-safe by storage::HfDirectoryWriter (an existing checkpoint is replaced only
/// with `overwrite`). Same key checks as convert_to_safetensors.
ConvertReport convert_to_hf(const std::filesystem::path& checkpoint_dir, const std::filesystem::path& out_dir,
                            const LoadOptions& options = {}, const Progress& progress = {}, bool overwrite = false,
                            std::uint64_t max_shard_bytes = kDefaultMaxShardBytes);

// ---------------------------------------------------------------------------------------------
// Importing a file (`dcpp convert FILE CKPT_DIR`).

/// What an import may cost: the checkpoint it becomes is bounded by the input's size, so a
/// small hostile file cannot make `dcpp convert` write terabytes or build millions of entries.
struct ImportOptions {
  /// Ranks the checkpoint will be written by (save_as_checkpoint splits each tensor's rows
  /// over them, as torch.chunk does: a tensor costs one item per non-empty part).
  int ranks = 1;
  /// Bytes the checkpoint may take, charged as entries are read, so an import stops as soon as
  /// it passes (resource_exhausted, naming the key): each tensor at its dense size (a view
  /// that repeats its storage's elements, by stride 0 or overlapping strides, is written out
  /// whole), each object as pickled, each item's archive and each entry's metadata, per
  /// reference (a value that many keys share is written for each; OutputBudget). 0 means
  /// default_max_output_bytes of the file's size.
  std::uint64_t max_output_bytes = 0;
};
/// 2 × `input_bytes` + 1 GiB: room for every tensor of the file written out once or twice (a
/// view of part of a storage is written again), and for a small file's overheads.
std::uint64_t default_max_output_bytes(std::uint64_t input_bytes) noexcept;

/// A state dict read from one file, its tensors viewing a read-only mapping of the file.
struct ImportedStateDict {
  planning::StateDict state_dict;
  /// The mapping and any decoded document the state dict points into: keep it as long as
  /// the state dict, or a split of it, is used.
  std::shared_ptr<const void> keep_alive;
  /// The file the tensors view: a save from it must not publish what a changed file gave.
  std::shared_ptr<const storage::MappedFile> source;
  ImportOptions options;          ///< what the import was bounded for (max_output_bytes resolved)
  std::uint64_t output_bytes = 0;  ///< what the checkpoint will take at most (the budget's charge)
};

/// Reads a torch.save zip archive (torch 1.6+, little-endian): data.pkl is decoded with
/// record::object_allow_list (nothing runs) and flattened as torch 2.4+'s flatten_state_dict
/// (mappings descended with str(key), a list by index only when it holds a tensor or a
/// mapping, tuples and other values one object each); tensors and parameters are views of
/// their storage records (offset and strides kept; every bound and CRC-32 checked). The root
/// must be a dict. Throws dcp::Error naming the file, key and byte offset: unimplemented for
/// the legacy non-zip format, big-endian data, quantized tensors and objects holding tensors;
/// data_loss for a corrupt file, or one that changed while it was read (the message says so);
/// resource_exhausted past the walk's budget (32 units per byte of data.pkl + 16 Mi: a value
/// shared by memo is walked at each reference) or past `options.max_output_bytes`. A FIFO or
/// device is refused (invalid_argument) without waiting on it.
ImportedStateDict import_torch_save(const std::filesystem::path& file, const ImportOptions& options = {});

/// Reads a torch.save file as torch 1.13's save_state_dict takes a state dict, for a torch 1.13
/// checkpoint: nothing is flattened. Each item of the root dict (or OrderedDict) becomes one
/// entry under its key: a tensor or parameter a tensor (a view of its storage record), any
/// other value one object holding that whole value, with the storages of the tensors inside
/// it (ObjectValue::storages, views of the mapping). Every storage is checked once (size,
/// CRC-32, every view inside it). Top-level keys must be strings. Errors as import_torch_save's;
/// the walks over the objects share its budget (32 units per byte of data.pkl + 16 Mi), and
/// the output is charged as import_torch_save's is (an object at its pickle and storages).
ImportedStateDict import_torch_save_top_level(const std::filesystem::path& file, const ImportOptions& options = {});

/// The state dict torch 1.13's save_state_dict would be given for the nested one `state_dict`
/// describes (`dcpp reshard --format torch1.13` of a torch 2.x checkpoint): entries whose path
/// has one part are kept; the others are regrouped under their top-level key, each group one
/// object holding the nested value as torch.save pickles it (dicts with str keys, lists for int
/// parts with None in holes, tensors whole and contiguous, objects as they are, the storages
/// of their tensors included), in order of first appearance. The objects' storages view the
/// state dict's memory, which must outlive the result. Throws invalid_argument (with the key)
/// for a grouped tensor that is not one whole contiguous chunk, and unflatten's errors for
/// paths that collide.
planning::StateDict group_top_level(const planning::StateDict& state_dict);

/// Reads a safetensors file: each tensor under its key as a one-part path (never split on
/// dots), in header order, viewing the file's data section. `__metadata__` is not imported.
/// The header (at most 100 MB, inside the file) and every dtype, shape and data offset are
/// checked: offsets inside the data section, exactly the tensor's bytes, no two tensors
/// overlapping. Errors name the file, key and byte offset; budgets and changes as for
/// import_torch_save.
ImportedStateDict import_safetensors(const std::filesystem::path& file, const ImportOptions& options = {});

/// import_safetensors for *.safetensors, import_torch_save otherwise.
ImportedStateDict import_file(const std::filesystem::path& file, const ImportOptions& options = {});

/// Saves an imported state dict as a checkpoint written by `imported.options.ranks` ranks
/// (split_rows: rows of each tensor over the ranks as torch.chunk splits them), each rank
/// through its own FileSystemWriter with `options` and a DefaultSavePlanner, played in this
/// process (save_ranks); with several ranks, files_per_rank 0 means one file per rank. Just
/// before `.metadata` is published the source file must be as it was (`before_publish`, then
/// the caller's own): else nothing is published and the error (data_loss) names the input and
/// says how it changed; so does any failure of the save once the file changed (a writer
/// reading zeros, or failing on pages that vanished). Reports what the state dict held.
ConvertReport save_as_checkpoint(const ImportedStateDict& imported, const std::filesystem::path& checkpoint_dir,
                                 const storage::WriteOptions& options);

// ---------------------------------------------------------------------------------------------
// Saving.

/// torch's save(state_dict, storage_writer, planner, process_group, coordinator_rank): every
/// rank plans its items, the coordinator builds the global plan and metadata, every rank writes
/// its items, and the coordinator writes `.metadata` (two steps of collective::Collectives:
/// reduce_scatter of the plans, all_reduce of the writes). A failure on any rank before the
/// coordinator published makes every rank throw (the error names the failed rank) after its
/// writer's `abort`; a failure after it (sending or decoding the metadata, a lost peer) reads
/// "published, then ..." and aborts nothing: the checkpoint is complete. Returns the metadata
/// on every rank.
metadata::Metadata save(const planning::StateDict& state_dict, storage::StorageWriter& writer,
                        planning::SavePlanner& planner, collective::ProcessGroup* group = nullptr, int coordinator_rank = 0);

/// The same sequence for several ranks played in one process (rank r = `state_dicts[r]`,
/// written through `writers[r]` and `planners[r]`; rank 0 coordinates). What `dcpp convert
/// --ranks N` uses to write an N-rank checkpoint. Only the coordinator holds the metadata (the
/// played ranks never decode it: memory stays O(metadata), not O(ranks x metadata)); a
/// failure on any rank after the coordinator published reads "published, then ...".
metadata::Metadata save_ranks(std::span<const planning::StateDict* const> state_dicts,
                              std::span<storage::StorageWriter* const> writers,
                              std::span<planning::SavePlanner* const> planners);
/// save_ranks into `checkpoint_dir`, each rank through its own FileSystemWriter with `options`
/// and a DefaultSavePlanner with `planner_options`.
metadata::Metadata save_ranks(std::span<const planning::StateDict> state_dicts,
                              const std::filesystem::path& checkpoint_dir, const storage::WriteOptions& options,
                              const planning::SavePlannerOptions& planner_options = {});

/// torch.chunk along dim 0 over `ranks`, as if each rank held its rows of every tensor
/// (ChunkShardingSpec: ranks past the last non-empty part hold nothing); 0-dim and empty
/// tensors and every object stay whole on rank 0. Chunks view `state_dict`'s memory.
std::vector<planning::StateDict> split_rows(const planning::StateDict& state_dict, int ranks);

/// Copies of a state dict's tensors in host memory that persist between saves: each
/// `stage` copies every tensor chunk, and every storage an object's tensors view, into a
/// buffer kept for it (by fqn and chunk or storage key), reallocated only when its size
/// changes, and returns a state dict over those buffers (object documents shared).
class StagingArea {
 public:
  /// `allocate` as in LoadOptions (dcp.torch passes pinned memory when CUDA is present).
  explicit StagingArea(std::function<memory::Buffer(std::uint64_t bytes)> allocate = {});
  planning::StateDict stage(const planning::StateDict& state_dict);
  /// Allocates every buffer stage(state_dict) copies into and writes each of its pages once:
  /// fresh memory costs a page fault per page (several times the copy on a VM), which a first
  /// stage() would otherwise take.
  void reserve(const planning::StateDict& state_dict);
  /// Bytes held by the staging buffers.
  std::uint64_t bytes() const noexcept;

 private:
  memory::Buffer& buffer(const std::string& name, std::uint64_t bytes, std::string_view fqn);
  std::function<memory::Buffer(std::uint64_t)> allocate_;
  std::unordered_map<std::string, memory::Buffer> buffers_;
};

/// torch's _Checkpointer: a storage writer and reader, an optional process group and planners
/// (the defaults when null). At most one async save is in flight: `save`, `async_save` and
/// `load` first wait for the previous one (its error, if any, stays in its future). The async
/// save runs over a group of its own (split from the caller's at the first async_save), never
/// over the caller's: the caller may run collectives on its group while one is in flight.
class Checkpointer {
 public:
  Checkpointer(std::shared_ptr<storage::StorageWriter> storage_writer,
               std::shared_ptr<storage::StorageReader> storage_reader, collective::ProcessGroup* process_group = nullptr,
               int coordinator_rank = 0, bool no_dist = false,
               std::shared_ptr<planning::LoadPlanner> load_planner = nullptr,
               std::shared_ptr<planning::SavePlanner> save_planner = nullptr,
               std::function<memory::Buffer(std::uint64_t bytes)> allocate_staging = {});
  ~Checkpointer();  ///< waits for an async save in flight
  Checkpointer(const Checkpointer&) = delete;
  Checkpointer& operator=(const Checkpointer&) = delete;

  metadata::Metadata save(const planning::StateDict& state_dict);
  /// Copies the tensors into the staging area (the only work done before returning; a step
  /// every rank agrees on), then saves the copy on a background thread over the Checkpointer's
  /// own group. Every rank calls it. Errors surface through the future.
  std::future<metadata::Metadata> async_save(const planning::StateDict& state_dict);
  /// Makes async_save's staging memory for a state dict of this shape resident now (waiting for
  /// a save in flight first): a local step, no collective, that a training loop calls once at
  /// set-up, so that even its first async_save stalls only for the copy. Optional; the values
  /// are not read.
  void prepare_async_save(const planning::StateDict& state_dict);
  /// torch's load over the group, read-once as set by set_read_once (on by default).
  storage::ReadReport load(planning::Destination& destination);
  void set_read_once(const ReadOnce& read_once) { read_once_ = read_once; }

 private:
  void wait_for_pending();
  std::shared_ptr<storage::StorageWriter> writer_;
  std::shared_ptr<storage::StorageReader> reader_;
  collective::ProcessGroup* group_;
  int coordinator_rank_;
  std::shared_ptr<planning::LoadPlanner> load_planner_;
  std::shared_ptr<planning::SavePlanner> save_planner_;
  ReadOnce read_once_;
  StagingArea staging_;
  std::unique_ptr<collective::ProcessGroup> async_group_;  // the background saves' own group
  std::thread worker_;  // the async save in flight, if any
};

}  // namespace dcp::checkpoint

// Not exported: shared by the implementation units.
namespace dcp::checkpoint::detail {

/// A load's step 3 with read-once: this rank's own reads of `plan`, then one broadcast per
/// batch of `shared` (at most `batch_bytes`, the coordinator's; in order, every rank taking
/// part whatever failed before) whose bytes feed this rank's reads of those items. A reader
/// rank that failed sends its failure, which every rank throws at that broadcast. Returns this
/// rank's first failure (its own reads, or its use of received bytes), which the caller's last
/// step agrees on; counts go into `report` (read_once.cpp).
std::optional<Error> read_with_sharing(storage::StorageReader& reader, planning::LoadPlanner& planner,
                                       const planning::LoadPlan& plan, std::span<const planning::SharedRead> shared,
                                       collective::Collectives& ranks, std::uint64_t batch_bytes,
                                       storage::ReadReport& report);

/// The output of a conversion: a new hidden temporary file next to `out`, renamed to `out` by
/// commit() (file and directory synced; over an existing `out` only with `overwrite`) and
/// removed if the conversion fails first, so a failed conversion leaves nothing behind.
class TempFile {
 public:
  TempFile(const std::filesystem::path& out, bool overwrite);
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  ~TempFile();
  /// Appends at the current position (buffered).
  void write(std::span<const std::byte> data) { file_->write(data); }
  /// Writes at an absolute offset (unbuffered; pending appends are flushed first).
  void write_at(std::span<const std::byte> data, std::uint64_t offset) { file_->write_at(data, offset); }
  /// Flushes, sets the final size (if given), syncs and renames the file over `out`.
  void commit(std::optional<std::uint64_t> size = std::nullopt);

 private:
  std::filesystem::path out_;
  std::filesystem::path tmp_;
  std::unique_ptr<storage::OutputFile> file_;
  bool overwrite_ = false;
  bool committed_ = false;
  int lock_fd_ = -1;  // an flock on the temporary file while this conversion lives
};

/// What an import's checkpoint will cost (ImportOptions::max_output_bytes), charged entry by
/// entry as the importer reads them; throws resource_exhausted, naming the key, as soon as
/// the total passes the limit, so a hostile file stops the import early (import_budget.cpp).
class OutputBudget {
 public:
  OutputBudget(const ImportOptions& options, std::uint64_t input_bytes);
  /// A whole tensor: its dense bytes, an item archive per non-empty part of the ranks' split
  /// and the metadata of its entry and chunks.
  void tensor(std::string_view fqn, DType dtype, const metadata::Shape& sizes);
  /// An object whose data.pkl is at most `pickle_bytes` long: its item archive and metadata.
  void object(std::string_view fqn, std::uint64_t pickle_bytes);
  std::uint64_t charged() const noexcept { return charged_; }
  const ImportOptions& options() const noexcept { return options_; }

 private:
  void charge(std::uint64_t bytes, std::string_view fqn);
  ImportOptions options_;
  std::uint64_t input_bytes_ = 0;
  std::uint64_t charged_ = 0;
};

/// Throws `e`, an importer's error, naming `path`; when `file` (null before it was mapped)
/// changed meanwhile, as data_loss that says so first: a record that looks corrupt, or a
/// failed write, is then the change's doing.
[[noreturn]] void throw_import_error(Error e, const std::filesystem::path& path, const storage::MappedFile* file);

/// What a conversion's selection holds, in metadata order.
struct Selection {
  std::vector<const metadata::ItemMetadata*> tensors;
  std::vector<LoadedObject> objects;
  std::vector<std::string> fqns;  ///< tensors and objects
};
/// The selected keys of `md`, with every selected object decoded.
Selection select_items(const std::filesystem::path& dir, const metadata::ValidatedMetadata& md, const LoadOptions& options);
/// Receives a piece of tensor `fqn`'s row-major bytes at byte `offset` of them; a tensor's
/// pieces come in order, the one ending it with `last`.
using PieceWriter =
    std::function<void(const std::string& fqn, std::uint64_t offset, std::span<const std::byte> piece, bool last)>;
/// Streams every selected tensor's bytes to `write`, in metadata order, in pieces of at most
/// kStreamingPieceBytes (boxes of rows, contiguous in the tensor) read in batches of at most
/// the streaming batch bound into one reused buffer: memory stays bounded whatever the
/// tensors' sizes. Returns the bytes streamed.
std::uint64_t stream_tensors(const std::filesystem::path& dir, const metadata::ValidatedMetadata& md,
                             const LoadOptions& options, const Selection& selection, const Progress& progress,
                             const PieceWriter& write);
/// for_each_tensor's batch bound while streaming (verify, convert): at most this much tensor
/// memory at once (or one tensor, if larger).
inline constexpr std::uint64_t kStreamingBatchBytes = std::uint64_t{256} << 20;
/// The largest piece stream_tensors reads of a tensor at once.
inline constexpr std::uint64_t kStreamingPieceBytes = std::uint64_t{64} << 20;
/// `options` with batches of at most kStreamingBatchBytes (the default when batch_bytes is 0).
LoadOptions streaming_options(const LoadOptions& options);
/// True when `options.select` picks `fqn` (everything when it is empty).
bool is_selected(const LoadOptions& options, std::string_view fqn);
/// Names the object `fqn` in `e`: its key, its data file, and the error's archive offset
/// moved to a file offset.
void locate_object_error(Error& e, const std::filesystem::path& dir, const metadata::Metadata& md, std::string_view fqn);
/// What walking an imported file's state dict may cost: units (values visited, key bytes) per
/// byte of its data.pkl, plus a floor (a value shared by memo is walked at each reference).
inline constexpr std::uint64_t kImportWalkPerByte = 32;
inline constexpr std::uint64_t kImportWalkFloor = std::uint64_t{16} << 20;
/// Writes `node` (an unflatten tree) into `pickler` as torch.save pickles nested containers:
/// dicts and lists, None for a hole, and `leaf(fqn)` for each leaf.
void pickle_nested(record::StateDictPickler& pickler, const planning::NestedNode& node,
                   const std::function<void(const std::string& fqn)>& leaf);

}  // namespace dcp::checkpoint::detail
