// dcp.checkpoint — the core facade: what a user of dcpp calls, without libtorch.
//
// `inspect` reads `.metadata` without running a pickle and cross-checks it. `load` is torch's
// load: it fills a caller-described Destination in place through a LoadPlanner and a
// StorageReader (`set_up_planner` → `create_local_plan` → global plan → `read_data`), on one
// process or across the ranks of a `ProcessGroup`.
// `for_each_tensor` loads a whole checkpoint as full, unsharded tensors into dcp.memory
// buffers, in bounded batches (what `dcpp load`/`verify`/`convert` and dcp.torch's at::Tensor
// API build on), and `load_objects` decodes the BYTE_IO values. Nothing here includes a
// libtorch header: the tensor-facing API is dcp.torch's.
//
// `save` is torch's save sequence (local plans → coordinator's global plan → write → results →
// `.metadata`) over a SavePlanner and a StorageWriter, on one process or across the ranks of a
// `ProcessGroup` (an interface: dcp.dist implements it over c10d; `save_ranks` plays several
// ranks in one process, as `dcpp convert --ranks` does). `import_torch_save` and
// `import_safetensors` read a file as a StateDict over its read-only mapping, which
// `save_as_checkpoint` writes as an N-rank checkpoint. `Checkpointer` is torch's
// _Checkpointer: save, async_save (stages the tensors into reusable host buffers, then writes
// on a background thread; the caller may change its tensors once it returns) and load.
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
import dcp.storage;

export namespace dcp::checkpoint {

/// Reads, decodes and cross-checks `checkpoint_dir/.metadata`: chunks inside their tensors
/// and not overlapping, one storage entry per chunk, every data file present and every byte
/// range inside it (FileSystemReader::read_metadata). Throws dcp::Error naming the file, key
/// and byte offset.
metadata::ValidatedMetadata inspect(const std::filesystem::path& checkpoint_dir);

/// The collectives torch's save and load sequences need, over bytes, with `root` the
/// coordinator. Every rank calls each collective in the same order. dcp.dist implements it
/// over c10d (Gloo, NCCL); a null group means one process. A collective that cannot complete
/// (a peer lost, a timeout) throws dcp::Error; a rank's own failure travels inside the payloads
/// instead, so that the others learn it (save.cpp, load.cpp).
class ProcessGroup {
 public:
  virtual ~ProcessGroup() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  /// Every rank's `local`, in rank order, on `root`; empty elsewhere.
  virtual std::vector<std::vector<std::byte>> gather(std::vector<std::byte> local, int root) = 0;
  /// Rank r receives `per_rank[r]` (given on `root` only).
  virtual std::vector<std::byte> scatter(std::vector<std::vector<std::byte>> per_rank, int root) = 0;
  /// `root`'s bytes on every rank.
  virtual std::vector<std::byte> broadcast(std::vector<std::byte> bytes, int root) = 0;
};

/// `size` ranks played by threads of one process: handle r is rank r's group (each handle used
/// by one thread). For `save_ranks`, tests and simulations; the protocol is the one c10d runs.
std::vector<std::unique_ptr<ProcessGroup>> make_in_process_group(int size);

/// Read-once loading over a group (on by default; torch has it only as an open proposal,
/// pytorch#193909): a saved item that several ranks need (a replicated tensor, a chunk whose
/// parts overlap or interleave across ranks, an object every rank loads) is read from storage by
/// one of them and broadcast to the others (planning::plan_read_once decides which), instead of
/// every rank reading it. Each rank's ReadReport says what it read (`storage_bytes`) and what
/// it received (`received_bytes`). c10d broadcasts to the whole group, so a rank that needs none
/// of a batch still receives it. Used when every rank's reader can_share_items.
struct ReadOnce {
  bool enabled = true;
  /// Stored bytes one broadcast carries at most (a larger item travels alone): what each rank
  /// holds of shared items at a time (two batches). The coordinator's value holds for all.
  std::uint64_t batch_bytes = std::uint64_t{256} << 20;
};

/// torch's `load(state_dict, storage_reader, planner, process_group, coordinator_rank)`: the
/// coordinator reads `.metadata` once and broadcasts its bytes, which every rank decodes and
/// validates itself (`StorageReader::metadata_from_bytes`, checking the byte ranges against its
/// own view of the data files); every rank plans its reads, the coordinator builds the global
/// plan, every rank reads its items into `destination`'s memory, and a last exchange of status
/// makes a failure on any rank fail every rank, with an error naming the failed rank. A null
/// group is one process (the same sequence, collectives as identities). Saved items several
/// ranks need are read once (`read_once`). Returns this rank's report.
storage::ReadReport load(planning::Destination& destination, storage::StorageReader& reader,
                         planning::LoadPlanner& planner, ProcessGroup* group = nullptr, int coordinator_rank = 0,
                         const ReadOnce& read_once = {});

/// Runs `step` on this rank and agrees on the outcome with every rank of `group` (null: one
/// process): when it throws on any rank, every rank throws the first failed rank's error, with
/// that rank named. For a rank-local step that every rank must pass before the next collective
/// (planning a destination from the metadata). Every rank calls it.
void run_agreed(ProcessGroup* group, const std::function<void()>& step, int coordinator_rank = 0);

/// The metadata step of a distributed load on its own, for callers that need the checkpoint's
/// shapes before they can describe a destination: the coordinator reads and validates
/// `.metadata` and broadcasts its bytes, every rank decodes and validates them against its own
/// storage, and a failure on any rank fails every rank (naming it). Every rank must call it.
metadata::ValidatedMetadata read_metadata(storage::StorageReader& reader, ProcessGroup* group = nullptr,
                                          int coordinator_rank = 0);

/// `load` over metadata every rank already holds (read_metadata): no metadata step.
storage::ReadReport load(planning::Destination& destination, storage::StorageReader& reader,
                         planning::LoadPlanner& planner, const metadata::ValidatedMetadata& metadata,
                         ProcessGroup* group = nullptr, int coordinator_rank = 0, const ReadOnce& read_once = {});

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
/// decodes every selected object, in batches of at most 256 MiB (or one tensor, if larger)
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

/// Writes the selected keys as one torch.save file (`torch.load(out)` gives the state dict,
/// nested along planner_data, tensors full and contiguous on the CPU, objects as saved).
/// Streams tensor by tensor (memory ≲ 256 MiB or the largest tensor) into `out` + ".tmp-<pid>",
/// renamed to `out` at the end and removed on any error. Throws unimplemented (with the key)
/// for quantized tensors and for objects that hold tensors.
ConvertReport convert_to_torch_save(const std::filesystem::path& checkpoint_dir, const std::filesystem::path& out,
                                    const LoadOptions& options = {}, const Progress& progress = {});

/// Writes the selected keys as one safetensors file: tensors by flat key (sorted), objects as
/// JSON strings in `__metadata__` beside "format": "pt". Same streaming and temp-file rules as
/// convert_to_torch_save. Throws unimplemented (with the key) for dtypes safetensors lacks
/// (complex, quantized, float8 other than e4m3fn/e5m2), a tensor named `__metadata__`, an
/// object named `format` and objects without a JSON form.
ConvertReport convert_to_safetensors(const std::filesystem::path& checkpoint_dir, const std::filesystem::path& out,
                                     const LoadOptions& options = {}, const Progress& progress = {});

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
/// its items, and the coordinator writes `.metadata`. A failure on any rank makes every rank
/// throw (the error names the failed rank) after the writer's `abort`. Returns the metadata.
metadata::Metadata save(const planning::StateDict& state_dict, storage::StorageWriter& writer,
                        planning::SavePlanner& planner, ProcessGroup* group = nullptr, int coordinator_rank = 0);

/// The same sequence for several ranks played in one process (rank r = `state_dicts[r]`,
/// written through `writers[r]` and `planners[r]`; rank 0 coordinates). What `dcpp convert
/// --ranks N` uses to write an N-rank checkpoint.
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
/// `stage` copies every tensor chunk into a buffer kept for its (fqn, chunk), reallocated
/// only when its size changes, and returns a state dict over those buffers (objects shared).
class StagingArea {
 public:
  /// `allocate` as in LoadOptions (dcp.torch passes pinned memory when CUDA is present).
  explicit StagingArea(std::function<memory::Buffer(std::uint64_t bytes)> allocate = {});
  planning::StateDict stage(const planning::StateDict& state_dict);
  /// Bytes held by the staging buffers.
  std::uint64_t bytes() const noexcept;

 private:
  std::function<memory::Buffer(std::uint64_t)> allocate_;
  std::unordered_map<std::string, memory::Buffer> buffers_;
};

/// torch's _Checkpointer: a storage writer and reader, an optional process group and planners
/// (the defaults when null). At most one async save is in flight: `save`, `async_save` and
/// `load` first wait for the previous one (its error, if any, stays in its future).
class Checkpointer {
 public:
  Checkpointer(std::shared_ptr<storage::StorageWriter> storage_writer,
               std::shared_ptr<storage::StorageReader> storage_reader, ProcessGroup* process_group = nullptr,
               int coordinator_rank = 0, bool no_dist = false,
               std::shared_ptr<planning::LoadPlanner> load_planner = nullptr,
               std::shared_ptr<planning::SavePlanner> save_planner = nullptr,
               std::function<memory::Buffer(std::uint64_t bytes)> allocate_staging = {});
  ~Checkpointer();  ///< waits for an async save in flight
  Checkpointer(const Checkpointer&) = delete;
  Checkpointer& operator=(const Checkpointer&) = delete;

  metadata::Metadata save(const planning::StateDict& state_dict);
  /// Copies the tensors into the staging area (the only work done before returning), then
  /// saves the copy on a background thread. Errors surface through the future.
  std::future<metadata::Metadata> async_save(const planning::StateDict& state_dict);
  /// torch's load over the group, read-once as set by set_read_once (on by default).
  storage::ReadReport load(planning::Destination& destination);
  void set_read_once(const ReadOnce& read_once) { read_once_ = read_once; }

 private:
  void wait_for_pending();
  std::shared_ptr<storage::StorageWriter> writer_;
  std::shared_ptr<storage::StorageReader> reader_;
  ProcessGroup* group_;
  int coordinator_rank_;
  std::shared_ptr<planning::LoadPlanner> load_planner_;
  std::shared_ptr<planning::SavePlanner> save_planner_;
  ReadOnce read_once_;
  StagingArea staging_;
  std::thread worker_;  // the async save in flight, if any
};

}  // namespace dcp::checkpoint

// Not exported: shared by the implementation units (convert.cpp, safetensors.cpp,
// temp_file.cpp, verify.cpp, load.cpp, save.cpp, collective.cpp, import.cpp,
// import_safetensors.cpp).
namespace dcp::checkpoint::detail {

// ---- Status-carrying payloads (collective.cpp): each collective of the save and load
// sequences moves either a rank's result or its failure, so one rank's error reaches every
// rank instead of leaving them waiting.
using Bytes = std::vector<std::byte>;
/// A result: a 0 byte, then `body`.
Bytes ok_payload(std::span<const std::byte> body);
/// A failure: its parts (code, rank, file, key, offset, bare message), so the error every rank
/// throws is the failed rank's own, with its rank, never wrapped again at each collective.
/// `rank` is the failing rank unless `e` names one already; -1 names none.
Bytes failure_payload(int rank, const Error& e);
/// The rank a failure of `pg`'s rank names: -1 in a group of one (there is no other rank to
/// tell apart, and a single process's errors read as they always did).
int failure_rank(const ProcessGroup& pg);
/// The failure a payload carries, nullopt for a result (internal for a malformed payload).
std::optional<Error> failure_of(std::span<const std::byte> payload);
/// The first failure among gathered payloads (rank order).
std::optional<Error> first_failure(const std::vector<Bytes>& payloads);
std::span<const std::byte> body_of(const Bytes& payload);
/// Appends `v` as `width` little-endian bytes (the payloads' one integer encoding).
void put_le(Bytes& out, std::uint64_t v, int width);
/// The `width`-byte little-endian integer at the start of `in` (which holds at least that many).
std::uint64_t get_le(std::span<const std::byte> in, int width);

/// Runs `step`, turning any exception into this rank's failure payload.
template <class Step>
Bytes guarded(int rank, Step&& step) {
  try {
    return ok_payload(step());
  } catch (...) {
    return failure_payload(rank, current_exception_as_error());
  }
}

/// The coordinator's global step over gathered local plans: the first failed rank's failure
/// for every rank, or `plan(bodies)` (one encoded plan per rank) as results; a throw from
/// `plan` fails every rank with the coordinator's error.
template <class Plan>
std::vector<Bytes> coordinate(int rank, int size, const std::vector<Bytes>& gathered, Plan&& plan) {
  std::vector<Bytes> per_rank;
  std::optional<Error> failed = first_failure(gathered);
  if (!failed) {
    try {
      std::vector<std::span<const std::byte>> bodies;
      for (const auto& p : gathered) bodies.push_back(body_of(p));
      for (const auto& encoded : plan(std::move(bodies))) per_rank.push_back(ok_payload(encoded));
      if (per_rank.size() != static_cast<std::size_t>(size))
        throw Error(Errc::internal, "the global plan has " + std::to_string(per_rank.size()) + " plans for " +
                                        std::to_string(size) + " ranks");
    } catch (...) {
      failed = current_exception_as_error();
    }
  }
  if (failed) per_rank.assign(static_cast<std::size_t>(size), failure_payload(rank, *failed));
  return per_rank;
}

/// A load's step 3 with read-once: this rank's own reads of `plan`, then one broadcast per
/// batch of `shared` (at most `batch_bytes`, the coordinator's; in order, every rank taking
/// part whatever failed before) whose bytes feed
/// this rank's reads of those items. A rank that already `failed` reads nothing and sends its
/// failure where it is the reader. Returns this rank's status payload (its first failure, or a
/// failure a reader rank broadcast); counts go into `report` (read_once.cpp).
Bytes read_with_sharing(storage::StorageReader& reader, planning::LoadPlanner& planner, const planning::LoadPlan& plan,
                        std::span<const planning::SharedRead> shared, ProcessGroup& pg, std::uint64_t batch_bytes,
                        storage::ReadReport& report, std::optional<Error> failed);

/// One process: the collectives are identities.
class SingleProcess final : public ProcessGroup {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::vector<Bytes> gather(Bytes local, int) override;
  Bytes scatter(std::vector<Bytes> per_rank, int) override;
  Bytes broadcast(Bytes bytes, int) override { return bytes; }
};
/// The end of a sequence: every rank's `status` (a payload) to the coordinator, the first
/// failure (or success) back to every rank; throws that failure on every rank.
void agree(ProcessGroup& pg, int coordinator_rank, Bytes status);
/// `*group`, or `single` when it is null; checks that `coordinator_rank` is in the group.
ProcessGroup& group_or_single(ProcessGroup* group, SingleProcess& single, int coordinator_rank);

/// The output of a conversion: a temporary file next to `out`, renamed over it by commit()
/// (file and directory synced) and removed if the conversion fails first, so a failed
/// conversion leaves nothing behind.
class TempFile {
 public:
  explicit TempFile(const std::filesystem::path& out);
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
  bool committed_ = false;
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
  std::vector<std::pair<std::string, pickle::Document>> objects;
  std::vector<std::string> fqns;  ///< tensors and objects
};
/// The selected keys of `md`, with every selected object decoded.
Selection select_items(const std::filesystem::path& dir, const metadata::ValidatedMetadata& md, const LoadOptions& options);
/// Streams every selected tensor's bytes to `write` in bounded batches, checking that each
/// arrives dense and of the promised size; returns the bytes streamed.
std::uint64_t stream_tensors(const std::filesystem::path& dir, const metadata::ValidatedMetadata& md,
                             const LoadOptions& options, const Selection& selection, const Progress& progress,
                             const std::function<void(const std::string&, std::span<const std::byte>)>& write);
/// for_each_tensor's batch bound while streaming (verify, convert): at most this much tensor
/// memory at once (or one tensor, if larger).
inline constexpr std::uint64_t kStreamingBatchBytes = std::uint64_t{256} << 20;
/// `options` with batches of at most kStreamingBatchBytes (the default when batch_bytes is 0).
LoadOptions streaming_options(const LoadOptions& options);
/// True when `options.select` picks `fqn` (everything when it is empty).
bool is_selected(const LoadOptions& options, std::string_view fqn);
[[noreturn]] void fail_for_key(Errc code, std::string_view fqn, std::string message);
/// Names the object `fqn` in `e`: its key, its data file, and the error's archive offset
/// moved to a file offset.
void locate_object_error(Error& e, const std::filesystem::path& dir, const metadata::Metadata& md, std::string_view fqn);

}  // namespace dcp::checkpoint::detail
