// dcp.storage — reading and writing checkpoint bytes in a directory, driven by Boost.Asio.
//
// `FileSystemReader` is torch's FileSystemReader in C++ behind the `StorageReader` protocol
// (read_metadata, set_up_storage_reader, prepare_local_plan, prepare_global_plan, read_data),
// so other backends can be added. `read_metadata` decodes, validates and bounds-checks
// `.metadata` against the data files before anything else is read, and hands out a
// `metadata::ValidatedMetadata`, the only form `set_up_storage_reader` takes. `read_data`
// executes a LoadPlan: every item is first checked against the saved chunk (plans may come
// from other ranks), items are grouped per saved item (one torch.save archive), an Asio
// thread pool locates each archive's storage record (dcp.record) with a few small preads,
// then copies: a region that is contiguous on disk and in the destination is read straight
// into destination memory (large ones in parallel pieces); anything strided, or of another
// dtype (converted as torch's `copy_` does), goes through bounce buffers of bounded size.
// The planner is called only from the calling thread (resolve before, commit and load_bytes
// after), so workers share no mutable state; every exception is caught at the pool boundary
// (out of memory as resource_exhausted). At most `max_open_files` files are open at once.
// Every error names the file, key and byte offset in that file.
//
// `FileSystemWriter` is torch's FileSystemWriter behind the `StorageWriter` protocol
// (set_up_storage_writer, prepare_local_plan, prepare_global_plan, write_data, finish): each
// rank's items go into `__{rank}_{n}.distcp` files (n size-balanced files written in parallel
// on an Asio pool, or one file per item), each item a torch.save archive of the chosen torch
// version, and the coordinator writes `.metadata` last. Unlike torch it never mixes two
// checkpoints and never loses one: the data files get names no entry of the directory had, are
// fsync'ed, and the new `.metadata` is published by one atomic rename over the old one; only
// then are the replaced checkpoint's own files removed (publish.cpp; docs/format.md,
// "Publishing").
// `SafetensorsReader` reads Hugging Face's safetensors model directories and torch's per-rank
// safetensors files through the same read path (their items are raw byte ranges), and
// `open_reader` picks the reader a path needs.
// Imports: dcp.error, dcp.bytes, dcp.dtype, dcp.layout, dcp.metadata, dcp.planning, dcp.record,
// dcp.safetensors, dcp.zip.
module;
#include <sys/stat.h>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>
export module dcp.storage;
import dcp.error;
import dcp.layout;
import dcp.metadata;
import dcp.planning;

export namespace dcp::storage {

/// How bytes move from files into memory.
enum class ReadBackend {
  automatic,  ///< a pread pool: fastest for data in the page cache (see README, "Performance")
  pread,      ///< positional reads on an Asio thread pool
  io_uring,   ///< Asio random_access_file on io_uring, many reads in flight from one thread;
              ///< falls back to pread when the build lacks it or the kernel refuses io_uring
};

/// How read_data runs.
struct ReadOptions {
  ReadBackend backend = ReadBackend::automatic;
  int threads = 0;             ///< worker threads; 0 = min(hardware threads, 8)
  bool verify_crc = false;     ///< check each storage record's CRC-32 (reads whole records)
  bool collect_errors = false; ///< keep going after an item fails and report them all
  /// A BYTE_IO item longer than this is refused (resource_exhausted) before any allocation.
  std::uint64_t max_object_bytes = std::uint64_t{1} << 30;
  /// Largest bounce buffer of one strided or converting read (one per worker at a time).
  std::uint64_t bounce_bytes = std::uint64_t{16} << 20;
  /// Files open at once; 0 = min(256, a quarter of RLIMIT_NOFILE).
  std::size_t max_open_files = 0;
};

/// What read_data did.
struct ReadReport {
  std::uint64_t bytes_read = 0;          ///< bytes copied into destination memory
  std::uint64_t items = 0;               ///< saved items touched
  std::uint64_t storage_bytes = 0;       ///< bytes read from storage (archive headers included)
  std::uint64_t received_bytes = 0;      ///< stored bytes another rank read and sent (read-once)
  std::uint64_t requests = 0;            ///< requests an object store was sent (0 for files)
  std::vector<Error> errors;             ///< with collect_errors: every failure, in plan order
  /// Adds `other`'s counts and errors.
  void merge(ReadReport other);
};

/// Stored bytes of saved items that another rank read and broadcast (read-once loading): a
/// read of one of these items takes its bytes from here instead of storage. The spans must
/// outlive the read_data call.
class SharedItems {
 public:
  /// `bytes` is the item's stored form (`[offset, offset + length)` of its file).
  void add(const metadata::MetadataIndex& item, std::span<const std::byte> bytes);
  /// nullptr when `fqn` (with `offset` for a tensor chunk) was not added.
  const std::span<const std::byte>* find(std::string_view fqn, const metadata::Shape* offset) const;
  bool empty() const noexcept { return items_.empty(); }

 private:
  std::map<std::pair<std::string, metadata::Shape>, std::span<const std::byte>, std::less<>> items_;
};

/// `.metadata` larger than this is refused before reading. It grows with ranks × tensors: 351 MB
/// at 1,024 ranks × 1,000 tensors, 2.7 GB at 8,192 (what dcpp's coordinator writes there).
inline constexpr std::uint64_t kMaxMetadataBytes = std::uint64_t{8} << 30;

/// Reads a whole file of at most `max_bytes`. Throws not_found / io / out_of_range, and
/// invalid_argument for anything but a regular file (a FIFO, a device: never waited on).
std::vector<std::byte> read_file(const std::filesystem::path& path, std::uint64_t max_bytes);

/// A whole regular file mapped read-only (an empty file maps nothing), for readers that use
/// its bytes in place. Shrinking the file, or an I/O error, while its pages are read cannot
/// kill the process: a SIGBUS handler (installed with the first mapping, chaining to the
/// handler before it for any other address) maps zero pages over the rest of the mapping and
/// flags it, so the reader sees zeros and `changed` says why they cannot be trusted. Every
/// error names the path; FIFOs and devices are refused without waiting on them.
class MappedFile {
 public:
  explicit MappedFile(const std::filesystem::path& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  std::span<const std::byte> bytes() const noexcept { return {data_, size_}; }
  const std::filesystem::path& path() const noexcept { return path_; }
  /// How the file changed since it was mapped, as a sentence ("the file shrank below byte N
  /// while it was read"): a fault in the mapping, or a size, modification or status-change
  /// time that differs now. nullopt while it is as it was (to the file system's timestamp
  /// granularity; a SIGBUS is always seen).
  std::optional<std::string> changed() const;
  /// Throws data_loss, naming the file, when `changed()` says it did.
  void check_unchanged() const;
  /// Drops the whole pages inside `bytes` (a part of the mapping; anything else is ignored)
  /// from this process's memory: read again from the file when touched. What a reader that
  /// has used a range calls, so that streaming a large file holds little of it at once.
  void release(std::span<const std::byte> bytes) const noexcept;

 private:
  std::filesystem::path path_;
  int fd_ = -1;  // kept open: `changed` compares the file's status with the one at mapping
  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
  struct Stamp {
    std::int64_t size, mtime_sec, mtime_nsec, ctime_sec, ctime_nsec;
    friend bool operator==(const Stamp&, const Stamp&) = default;
  };
  Stamp stamp_{};
  void* guard_ = nullptr;  // the SIGBUS handler's record of this mapping
};

/// torch's StorageReader protocol.
class StorageReader {
 public:
  virtual ~StorageReader() = default;
  /// The checkpoint's metadata, validated (a reader makes one only through metadata::validate).
  virtual metadata::ValidatedMetadata read_metadata() const = 0;
  /// `.metadata` as stored, undecoded: a distributed load's coordinator reads it once and sends
  /// it to every rank. By default read_metadata()'s metadata encoded again.
  virtual std::vector<std::byte> read_metadata_bytes() const;
  /// What read_metadata would make of `bytes` (read by this rank or the coordinator): decoded,
  /// validated and checked against this reader's storage. By default decoded and validated.
  virtual metadata::ValidatedMetadata metadata_from_bytes(std::span<const std::byte> bytes) const;
  virtual void set_up_storage_reader(metadata::ValidatedMetadata metadata, bool is_coordinator) = 0;
  virtual planning::LoadPlan prepare_local_plan(planning::LoadPlan plan) { return plan; }
  virtual std::vector<planning::LoadPlan> prepare_global_plan(std::vector<planning::LoadPlan> plans) { return plans; }
  /// Executes `plan`, calling the planner's resolve_tensor / commit_tensor / load_bytes.
  virtual ReadReport read_data(const planning::LoadPlan& plan, planning::LoadPlanner& planner) = 0;

  /// Read-once loading (checkpoint::load over a group): whether this reader can hand out a
  /// saved item's stored bytes (read_item) and execute reads from such bytes (read_data with
  /// SharedItems). Readers that cannot are read by every rank themselves. A reader that says
  /// yes must allow read_item on one thread while read_data runs on another (the load reads
  /// the next batch while the last one is copied out).
  virtual bool can_share_items() const { return false; }
  /// Whether ranks of one host reading the same bytes share them through the host's page
  /// cache (files on a local or network file system). When not (an object store), every rank's
  /// read goes to the storage, and read-once counts the storage as the slowest link.
  virtual bool reads_share_host_cache() const { return false; }
  /// Reads the stored bytes of saved item `item` (its whole torch.save archive, or the object's
  /// bytes) into `out`, which must be exactly that long (invalid_argument otherwise), counted
  /// into `report.storage_bytes`. By default unimplemented.
  virtual void read_item(const metadata::MetadataIndex& item, std::span<std::byte> out, ReadReport& report);
  /// read_data, with the reads of items in `shared` taken from those bytes (every check the
  /// same as for bytes from storage). By default unimplemented.
  virtual ReadReport read_data(const planning::LoadPlan& plan, planning::LoadPlanner& planner,
                               const SharedItems& shared);
  /// How errors name the data file `relative_path`: a full path, an object's URL. By default
  /// the name as the metadata gives it.
  virtual std::string location_of(std::string_view relative_path) const { return std::string(relative_path); }
};

class FileSystemReader : public StorageReader {
 public:
  explicit FileSystemReader(std::filesystem::path checkpoint_dir, ReadOptions options = {});
  void set_up_storage_reader(metadata::ValidatedMetadata metadata, bool is_coordinator) override;
  ReadReport read_data(const planning::LoadPlan& plan, planning::LoadPlanner& planner) override;
  bool can_share_items() const override { return true; }
  bool reads_share_host_cache() const override { return true; }
  /// Refuses an object longer than ReadOptions::max_object_bytes (resource_exhausted).
  void read_item(const metadata::MetadataIndex& item, std::span<std::byte> out, ReadReport& report) override;
  ReadReport read_data(const planning::LoadPlan& plan, planning::LoadPlanner& planner,
                       const SharedItems& shared) override;

  const std::filesystem::path& directory() const { return dir_; }
  /// Reads, decodes and validates `.metadata` and checks every storage entry's byte range
  /// against its data file (an interrupted save, with only `.metadata.tmp`, is reported as
  /// such). Errors carry the file path (a data file's full path) and the byte offset.
  metadata::ValidatedMetadata read_metadata() const override;
  /// The file `.metadata` (at most kMaxMetadataBytes).
  std::vector<std::byte> read_metadata_bytes() const override;
  /// read_metadata's decoding and checks, over `bytes`, with errors naming this directory's files.
  metadata::ValidatedMetadata metadata_from_bytes(std::span<const std::byte> bytes) const override;
  /// Size of a data file named in storage_data; nullopt if missing or unsafe.
  std::optional<std::uint64_t> file_size(std::string_view relative_path) const;
  /// Full path of a data file (the name must satisfy is_safe_relative_path).
  std::filesystem::path path_of(std::string_view relative_path) const;
  std::string location_of(std::string_view relative_path) const override { return path_of(relative_path).string(); }

 protected:
  /// check_storage_bounds against this directory's files, errors naming full paths (a fault of
  /// the metadata itself names `metadata_file`).
  void check_against_files(const metadata::ValidatedMetadata& metadata, const std::filesystem::path& metadata_file) const;

 private:
  std::filesystem::path dir_;
  ReadOptions options_;
  std::optional<metadata::ValidatedMetadata> metadata_;
};

/// Reads the safetensors checkpoints of Hugging Face and of torch's HuggingFaceStorageWriter: a
/// model directory (`model.safetensors.index.json`'s weight_map and the files it names, or
/// every `*.safetensors` in the directory), torch's per-rank files with DCP_SHARDING_INFO (in
/// the directory, or in its `sharded/` when nothing else is there), or one `.safetensors` file.
/// The metadata is built from the headers (dcp.safetensors' build_metadata: bounded, every
/// offset checked, pieces that overlap or leave holes refused) and validated as `.metadata` is;
/// reading is FileSystemReader's, by byte range (rows: one contiguous range, columns: strided
/// reads through the bounce buffer), read-once included. Symlinks are followed (a Hugging Face
/// cache snapshot is all links); hidden names are not checkpoint files.
class SafetensorsReader : public FileSystemReader {
 public:
  /// `path` is the directory or the file; `source` what detect_source says of it (not dcp).
  SafetensorsReader(const std::filesystem::path& path, metadata::Source source, ReadOptions options = {});
  /// Reads every header (and the index), builds, validates and bounds-checks the metadata.
  /// Errors name the file (a header's, or the index), the key and the byte.
  metadata::ValidatedMetadata read_metadata() const override;
  /// The headers and the index as they are stored, in one byte string: what a distributed
  /// load's coordinator reads once and sends to every rank.
  std::vector<std::byte> read_metadata_bytes() const override;
  /// read_metadata's building and checks, over another rank's read_metadata_bytes, with byte
  /// ranges checked against this rank's view of the files.
  metadata::ValidatedMetadata metadata_from_bytes(std::span<const std::byte> bytes) const override;
  metadata::Source source() const noexcept { return source_; }

 private:
  metadata::Source source_;
  std::optional<std::string> file_;  // the one file of a safetensors_file source
};

/// What a checkpoint path holds, from its names alone: a directory with `.metadata` (or an
/// interrupted save's `.metadata.tmp`) is dcp; else with model.safetensors.index.json hf_index;
/// else with `*.safetensors` files hf_directory (SafetensorsReader turns it into hf_sharded when
/// their headers have DCP_SHARDING_INFO); else with `sharded/*.safetensors` hf_sharded; a
/// `*.safetensors` file is safetensors_file; anything else dcp (whose reader then says what is
/// missing).
metadata::Source detect_source(const std::filesystem::path& path);
/// The reader for a checkpoint location: a location with a registered scheme
/// (`s3://bucket/prefix`) gets that backend's reader; a path gets what it holds (detect_source):
/// FileSystemReader or SafetensorsReader. Throws invalid_argument for a scheme this build has
/// no backend for. The one place every command and entry point turns a location into a reader.
std::unique_ptr<StorageReader> open_reader(const std::filesystem::path& location, ReadOptions options = {});

/// dtypes that `copy_box` converts between (floating, integer and bool types), as torch's
/// `copy_` does.
bool can_convert(DType from, DType to) noexcept;
/// Copies the box `lengths` from `src` (strides in elements, dtype `src_dtype`) to `dst`,
/// converting each element when the dtypes differ (torch's `static_cast` semantics: floats to
/// integers truncate toward zero, to float16/bfloat16 round to nearest even through float32).
/// The caller checked can_convert and that both boxes lie in their memory.
void copy_box(std::byte* dst, const metadata::Shape& dst_strides, DType dst_dtype, const std::byte* src,
              const metadata::Shape& src_strides, DType src_dtype, const metadata::Shape& lengths);

/// One strided copy of equal shapes and dtypes (`copy_box` without conversion).
struct SliceCopy {
  planning::TensorSlice to;
  planning::TensorSlice from;
};
/// Runs the copies on an Asio pool of `threads` (0 = min(hardware threads, 8)), dense ones
/// split into pieces so that one large tensor uses every thread. Throws invalid_argument when
/// a pair's shapes or dtypes differ.
void copy_slices(std::span<const SliceCopy> copies, int threads = 0);

/// A file being written: small appends are buffered, large ones go straight from the caller's
/// memory. The destructor closes the file (it never removes it). Errors name the path.
/// How an OutputFile gets its bytes to the disk.
enum class WritePath {
  buffered,      ///< through the page cache; a final fsync does the rest
  write_behind,  ///< buffered, each written range handed to the kernel's writeback as it completes
  /// Large appends that start on a record::kLargeRecordAlignment boundary of the file go to
  /// the disk directly (O_DIRECT: no page-cache copy, no writeback left for the fsync), from
  /// the caller's memory when it is aligned, else through a bounded bounce buffer; the rest as
  /// write_behind. A file system that refuses direct I/O gets write_behind.
  direct,
};

class OutputFile {
 public:
  /// Creates `path`, which must not exist when `exclusive` (else it is truncated); a symbolic
  /// link there is never followed. With
  /// `write_behind`, written ranges are handed to the kernel's writeback as they complete
  /// (sync_file_range), so a final fsync overlaps the writing instead of following it.
  OutputFile(std::filesystem::path path, bool exclusive, bool write_behind = false);
  /// Creates the new file `name` in the directory `dir_fd` (never through a link; it must not
  /// exist); `path` is its name in errors.
  OutputFile(int dir_fd, const std::string& name, std::filesystem::path path, WritePath mode = WritePath::buffered);
  ~OutputFile();
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;
  /// Appends at the current position.
  void write(std::span<const std::byte> data);
  /// Writes at an absolute offset (pending appends are flushed first).
  void write_at(std::span<const std::byte> data, std::uint64_t offset);
  /// Bytes appended so far.
  std::uint64_t position() const noexcept { return position_; }
  /// Flushes, sets the size (if given), fsyncs (if `sync`) and closes.
  void close(bool sync, std::optional<std::uint64_t> size = std::nullopt);
  const std::filesystem::path& path() const noexcept { return path_; }

 private:
  void flush();
  void write_behind(std::uint64_t end);
  /// Writes data at offset `at` (a multiple of the alignment, as is data.size()) with O_DIRECT;
  /// false, having written nothing, when the file system refuses it.
  bool write_direct(std::span<const std::byte> data, std::uint64_t at);
  void pwrite_all(std::span<const std::byte> data, std::uint64_t offset);
  void set_direct(bool on);
  std::filesystem::path path_;
  int fd_ = -1;
  bool write_behind_ = false;
  bool direct_ = false;       // direct writes allowed (WritePath::direct, not refused yet)
  bool fd_direct_ = false;    // fd_ has O_DIRECT set now
  std::unique_ptr<std::byte, void (*)(std::byte*)> bounce_{nullptr, nullptr};
  std::uint64_t started_ = 0;  // writeback started below this offset
  std::uint64_t waited_ = 0;   // writeback finished below this offset
  std::uint64_t position_ = 0;
  std::vector<std::byte> buffer_;
};

/// fsync of a directory: makes the creation, renaming and removal of its entries durable.
void sync_directory(const std::filesystem::path& dir);

/// How a FileSystemWriter writes.
struct WriteOptions {
  /// The torch whose layout and metadata classes the checkpoint uses.
  metadata::Flavor format = metadata::Flavor::torch_2x;
  /// Files per rank (torch's thread_count), written in parallel, items size-balanced over
  /// them; 0 = min(hardware threads, 8). Ignored with single_file_per_rank false.
  int files_per_rank = 0;
  /// torch's single_file_per_rank: false writes one file per item.
  bool single_file_per_rank = true;
  /// fsync every file and directory (torch's sync_files). Off only for benchmarks and tests.
  bool sync_files = true;
  /// Replace a checkpoint that is already there (torch 2.x defaults to true; we refuse unless
  /// asked).
  bool overwrite = false;
  /// Largest bounce buffer for a strided tensor chunk (one per writing thread at a time).
  std::uint64_t bounce_bytes = std::uint64_t{16} << 20;
  /// Called after each item is written, with its tensor bytes (0 for an object), from the
  /// writing threads one at a time.
  std::function<void(std::uint64_t bytes)> progress;
  /// Called by the coordinator's finish() once every data file is durable, just before
  /// `.metadata` is published: a throw refuses to publish (the save fails and is aborted). An
  /// import checks here that its input file did not change while it was read.
  std::function<void()> before_publish;
  /// Called, from the writing threads, with each piece (at most kWritePieceBytes) of a dense
  /// tensor's memory once it is written: an import releases its source file's pages there.
  std::function<void(std::span<const std::byte> source)> written;
};
/// The pieces a dense tensor's memory is written in.
inline constexpr std::uint64_t kWritePieceBytes = std::uint64_t{64} << 20;

/// torch's StorageWriter protocol, called in this order: set_up_storage_writer (all ranks),
/// prepare_local_plan (all), prepare_global_plan (coordinator), write_data (all), finish
/// (coordinator, with every rank's results). `abort` (any rank, after a failure anywhere)
/// removes what this save wrote.
class StorageWriter {
 public:
  virtual ~StorageWriter() = default;
  /// Starts a new save (torch's reset: a new save id), into `checkpoint_id` when given.
  virtual void reset(std::optional<std::filesystem::path> checkpoint_id = std::nullopt) { (void)checkpoint_id; }
  virtual void set_up_storage_writer(bool is_coordinator, int rank, int world_size) = 0;
  virtual planning::SavePlan prepare_local_plan(planning::SavePlan plan) { return plan; }
  virtual std::vector<planning::SavePlan> prepare_global_plan(std::vector<planning::SavePlan> plans) { return plans; }
  /// Writes every item of `plan`, asking the planner for each item's data.
  virtual std::vector<planning::WriteResult> write_data(const planning::SavePlan& plan, planning::SavePlanner& planner) = 0;
  /// Completes the checkpoint: `metadata` (from the global plan) gets storage_data from the
  /// results; returns the metadata written.
  virtual metadata::Metadata finish(metadata::Metadata metadata,
                                    const std::vector<std::vector<planning::WriteResult>>& results) = 0;
  /// Undoes an unfinished save (best effort, never throws). Safe on any rank at any moment of
  /// the sequence: it never removes a file that a published checkpoint, or one the coordinator
  /// may still publish, references.
  virtual void abort() noexcept {}
  /// abort() on the coordinator once every rank has returned from write_data (it gathered
  /// their results, one of them a failure): nothing is being written any more.
  virtual void abort_after_writes() noexcept { abort(); }
  /// True once finish() has made the new checkpoint visible (on the coordinator). A failure
  /// after that is reported as "published, then ...", and abort() changes nothing.
  virtual bool published() const noexcept { return false; }
};

class FileSystemWriter : public StorageWriter {
 public:
  explicit FileSystemWriter(std::filesystem::path checkpoint_dir, WriteOptions options = {});
  ~FileSystemWriter() override;
  FileSystemWriter(const FileSystemWriter&) = delete;
  FileSystemWriter& operator=(const FileSystemWriter&) = delete;

  /// Coordinator: creates a missing target, locks it (an flock: a second save into it fails
  /// with failed_precondition), removes what crashed saves provably left in it, and checks that
  /// a checkpoint already there (a regular `.metadata`) may be replaced (`overwrite`). Other
  /// files in the directory are never touched.
  void set_up_storage_writer(bool is_coordinator, int rank, int world_size) override;
  /// With format torch_1_13: throws unimplemented (with the key) for a tensor whose dtype
  /// torch 1.13 lacks (uint16/32/64, float8, complex32), before anything is written.
  planning::SavePlan prepare_local_plan(planning::SavePlan plan) override;
  /// Coordinator: records the names this save will create (`.dcpp-<save id>.save`) and gives
  /// plan i the file prefix `__{i}_`, or `__{i}_g{G}_` when the directory holds names like those.
  std::vector<planning::SavePlan> prepare_global_plan(std::vector<planning::SavePlan> plans) override;
  std::vector<planning::WriteResult> write_data(const planning::SavePlan& plan, planning::SavePlanner& planner) override;
  /// Checks the checkpoint as a reader will, writes `.metadata` under a new name, syncs it and
  /// renames it over `.metadata`, then removes the files only the replaced checkpoint named.
  /// A throw with published() true happened after publishing.
  metadata::Metadata finish(metadata::Metadata metadata,
                            const std::vector<std::vector<planning::WriteResult>>& results) override;
  void abort() noexcept override;
  void abort_after_writes() noexcept override;
  bool published() const noexcept override { return published_; }

  const std::filesystem::path& directory() const { return dir_; }
  const WriteOptions& options() const { return options_; }
  /// Restarts the writer for another save (a new save id), into `checkpoint_dir` if given.
  void reset(std::optional<std::filesystem::path> checkpoint_dir = std::nullopt) override;

 private:
  struct Lock;
  void open_directory();
  void close_directory() noexcept;
  void remove_leftovers();
  std::filesystem::path dir_;
  WriteOptions options_;
  std::string save_id_;
  bool is_coordinator_ = true;
  int rank_ = 0;
  int world_size_ = 1;
  int dir_fd_ = -1;                    // the target, opened once: every name is relative to it
  std::string marker_;                 // "" or "g{G}_": this save's data file names
  std::vector<std::string> replaces_;  // files the replaced checkpoint names
  std::size_t ranks_ = 0;              // plans in the global plan
  std::mutex created_mutex_;
  std::vector<std::string> created_;   // data files this rank created
  bool recorded_ = false;              // the coordinator wrote this save's record
  bool wrote_ = false;                 // write_data finished: the coordinator may publish its files
  bool finishing_ = false;             // finish began: every rank is done writing
  bool created_target_ = false;        // set_up made the target directory (abort removes it if empty)
  bool published_ = false;             // finish renamed the new .metadata into place
  std::unique_ptr<Lock> lock_;
};

/// Writes a Hugging Face model directory as one process: `model.safetensors`, or shards named
/// as huggingface_hub names them with `model.safetensors.index.json`. Crash-safe by the DCP
/// writer's publish rule (docs/format.md, "Publishing"; its record, lock and leftover search):
/// the files are written under new hidden names `.dcpp-<id>.<name>` and fsync'ed; the commit is
/// one rename (of the index, naming them, or of the one file to `model.safetensors` when no
/// index is there); then the replaced checkpoint's files are removed, the shards linked to
/// their final names and the index renamed once more to name those (or removed: one file needs
/// none). A crash at any instant leaves the old or the new checkpoint complete; the next save
/// removes what the record proves is its own and nothing names. A target holding a DCP
/// checkpoint (`.metadata`), a link where a file goes, or a name in the way that the replaced
/// checkpoint does not own is refused before anything is written.
class HfDirectoryWriter {
 public:
  HfDirectoryWriter(std::filesystem::path dir, bool overwrite, bool sync_files = true);
  ~HfDirectoryWriter();  ///< aborts an unpublished save
  HfDirectoryWriter(const HfDirectoryWriter&) = delete;
  HfDirectoryWriter& operator=(const HfDirectoryWriter&) = delete;
  /// Creates a missing target, locks it, removes what crashed saves provably left, checks what
  /// is there (an existing checkpoint needs `overwrite`), records the names and creates the
  /// files `names` (final names, in shard order; one name: no index), empty.
  void begin(std::vector<std::string> names);
  /// The file of shard `i`, created by begin.
  OutputFile& file(std::size_t i) { return *files_.at(i); }
  /// Closes and syncs every file (each of `sizes[i]` bytes) and publishes; `weight_map` gives
  /// each key's shard, in the index's order. A throw with published() true came after the
  /// commit (the new checkpoint is complete; some cleanup failed).
  void publish(std::span<const std::uint64_t> sizes, std::uint64_t total_size,
               std::span<const std::pair<std::string, std::size_t>> weight_map);
  /// Removes what this save created (never throws); nothing once published.
  void abort() noexcept;
  bool published() const noexcept { return published_; }

 private:
  void rename_index(std::span<const std::string> names, std::uint64_t total_size,
                    std::span<const std::pair<std::string, std::size_t>> weight_map);
  std::filesystem::path dir_;
  bool overwrite_;
  bool sync_;
  std::string save_id_;
  int dir_fd_ = -1;
  int lock_fd_ = -1;
  bool created_target_ = false;
  bool recorded_ = false;
  bool published_ = false;
  bool had_index_ = false;                  // the replaced checkpoint has an index file
  std::vector<std::string> finals_;         // final names
  std::vector<std::string> hidden_;         // the names the files are written under
  std::vector<std::string> replaces_;       // files of the replaced checkpoint
  std::vector<std::unique_ptr<OutputFile>> files_;
};

/// Files an unfinished save left in `checkpoint_dir` that the next save into it removes: its
/// record (`.dcpp-<save id>.save`), the `.metadata` it had not yet published, and the files it
/// created or was replacing that `.metadata` does not name now. Reads only.
std::vector<std::string> save_leftovers(const std::filesystem::path& checkpoint_dir);


/// The scheme of a location ("s3" of `s3://bucket/prefix`); empty for a path.
std::string_view scheme_of(std::string_view location) noexcept;
/// A storage backend for locations `<scheme>://...`, registered by the module that implements
/// it (it sits above this one, so open_reader cannot name it). Factories take the whole
/// location string and throw dcp::Error for one they cannot open.
struct SchemeBackend {
  std::function<std::unique_ptr<StorageReader>(std::string_view location, const ReadOptions& options)> reader;
  std::function<std::unique_ptr<StorageWriter>(std::string_view location, const WriteOptions& options)> writer;
};
/// Registers (or replaces) the backend of `scheme`; thread-safe.
void register_scheme(std::string scheme, SchemeBackend backend);
/// The writer for a checkpoint location: a registered scheme's, else a FileSystemWriter.
std::unique_ptr<StorageWriter> open_writer(const std::filesystem::path& location, WriteOptions options = {});

}  // namespace dcp::storage

namespace dcp::storage::publishing {
// Not exported: the save records and directory operations of publish.cpp and hf_publish.cpp
// (publish_record.cpp). `dir_fd` is the target's descriptor; every name is one component of it.
enum class Layout { dcp, hf };
/// A save's record: how its files are named (DCP: `__{rank}_{marker}{n}.distcp` for ranks <
/// `ranks`; any layout: `creates`), and the files of the checkpoint it replaces.
struct SaveRecord {
  std::string id;
  std::string marker;  // "" or "g{G}_"
  std::uint64_t ranks = 0;
  std::vector<std::string> replaces;
  bool complete = false;  // the record was fully written (else the save never got to its data)
  Layout layout = Layout::dcp;
  std::vector<std::string> creates;
};
struct Leftover {
  std::string record_file;
  std::vector<std::string> files;  // without the record itself
};
std::string new_save_id();
std::string record_name(std::string_view id);
/// `.dcpp-<id>.metadata`, the DCP save's unpublished `.metadata`.
std::string pending_metadata_name(std::string_view id);
/// `.dcpp-<id><suffix>`: a name no entry had (the id is new).
std::string pending_name(std::string_view id, std::string_view suffix);
/// Consumes a run of decimal digits (no leading zero unless it is "0"); nullopt if none.
std::optional<std::uint64_t> take_number(std::string_view& s);
bool is_data_file_of(std::string_view name, std::string_view marker, std::uint64_t ranks);
std::uint64_t generation_of(std::string_view name);
[[noreturn]] void refuse(const std::filesystem::path& dir, std::string message);
std::filesystem::path absolute_target(const std::filesystem::path& dir);
/// lstat of `name`; nullopt when absent.
std::optional<struct stat> entry_stat(int dir_fd, const std::string& name, const std::filesystem::path& dir);
std::vector<std::string> list_names(int dir_fd, const std::filesystem::path& dir);
/// A regular file of the directory (never through a link, never a FIFO) of at most `max_bytes`.
std::vector<std::byte> read_entry(int dir_fd, const std::string& name, const std::filesystem::path& dir,
                                  std::uint64_t max_bytes);
/// The single-component data file names a `.metadata` names.
std::set<std::string, std::less<>> files_named(std::span<const std::byte> metadata_bytes);
/// The files of the Hugging Face checkpoint in the directory: the index and the files it names,
/// or without an index every `*.safetensors` that is not hidden; nullopt when the index cannot
/// be read (then nothing may be judged unreferenced).
std::optional<std::set<std::string, std::less<>>> hf_files(int dir_fd, const std::filesystem::path& dir);
/// Removes `name` if it is a regular file; false when it is there and could not be removed.
bool remove_regular(int dir_fd, const std::string& name) noexcept;
void sync_dir_fd(int dir_fd, const std::filesystem::path& dir);
std::string encode_record(const SaveRecord& record);
/// Creates `.dcpp-<id>.save` (never replacing anything), synced with the directory when `sync`.
void write_record(int dir_fd, const std::filesystem::path& dir, const SaveRecord& record, bool sync);
/// Every other save's record in the directory with the files it proves removable.
std::vector<Leftover> find_leftovers(int dir_fd, const std::filesystem::path& dir, std::string_view except_id);
/// Removes find_leftovers' files, each record last; whether anything was found.
bool remove_leftovers(int dir_fd, const std::filesystem::path& dir, std::string_view except_id);
/// An exclusive flock on the directory (a dup of `dir_fd`, which the caller closes to unlock);
/// failed_precondition when another save holds it; -1 when the file system has no locks.
int lock_directory(int dir_fd, const std::filesystem::path& dir);
}  // namespace dcp::storage::publishing

namespace dcp::storage {
// Not exported: shared by the implementation units.
/// Runs task(i) for every i in [0, count) on an Asio pool of `threads` and waits. Nothing
/// escapes a worker: an exception (out of memory included) goes to fail(i, error), called on
/// this thread once the pool has joined (what `fail` throws reaches the caller).
void run_on_pool(int threads, std::size_t count, const std::function<void(std::size_t)>& task,
                 const std::function<void(std::size_t, Error)>& fail);
/// Worker threads when the caller asks for 0: min(hardware threads, 8). More threads than that
/// add no bandwidth on the disks checkpoints live on and cost memory for their buffers.
int default_threads() noexcept;
Error os_error(const std::filesystem::path& path, std::string_view what, int err);
/// Whether `prefix` is a data file prefix FileSystemWriter hands out (`__{rank}_[g{G}_]`).
bool is_data_file_prefix(std::string_view prefix) noexcept;
/// Reads exactly out.size() bytes at `offset` (EINTR-safe). Errors (io, or data_loss for a
/// short file) carry the path and the file offset where the read stopped.
void pread_all(int fd, const std::filesystem::path& path, std::uint64_t offset, std::span<std::byte> out);

/// An open read-only descriptor of a regular file. Opening never blocks (O_NONBLOCK, so a
/// FIFO planted where a file was expected cannot hang us) and anything but a regular file is
/// refused (invalid_argument, naming the path and what it is). Symlinks are followed: every
/// caller opens a name the user gave or a file of a directory the user named, and a Hugging
/// Face cache snapshot is all symlinks.
class Fd {
 public:
  explicit Fd(const std::filesystem::path& path);
  ~Fd();
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  /// The file's size when it was opened.
  std::uint64_t size() const { return size_; }
  /// Gives up the descriptor (the caller closes it).
  int release() noexcept;

 private:
  int fd_;
  std::uint64_t size_ = 0;
};
/// What a file of mode `mode` (st_mode) is, for errors: "a FIFO", "a directory", ...
std::string_view file_kind(unsigned mode) noexcept;

/// The data files of one read_data, opened on first use and shared by the workers (pread is
/// thread-safe). At most `capacity` stay open: the least recently used is closed when a new
/// one is needed; a caller's shared_ptr keeps an evicted file open until its read is done.
class FileTable {
 public:
  FileTable(std::filesystem::path dir, std::size_t capacity);
  std::shared_ptr<const Fd> get(const std::string& name);
  std::filesystem::path path(const std::string& name) const { return dir_ / name; }

 private:
  std::filesystem::path dir_;
  std::size_t capacity_;
  std::mutex mutex_;
  std::list<std::pair<std::string, std::shared_ptr<const Fd>>> recent_;  // most recent first
  std::unordered_map<std::string, decltype(recent_)::iterator> where_;
};
/// ReadOptions::max_open_files resolved against the process's descriptor limit.
std::size_t open_file_budget(std::size_t requested);

/// One contiguous read straight into destination memory.
struct ReadPiece {
  std::string file;  ///< relative name (FileTable key)
  std::uint64_t offset = 0;
  std::byte* destination = nullptr;
  std::uint64_t size = 0;
};
/// Reads every piece through Asio's io_uring files with up to `in_flight` reads outstanding,
/// all from the calling thread (one io_context, one thread: no strand needed); `errors[i]`
/// receives piece i's failure. Pieces must be grouped by file: a file is open only while its
/// pieces are in flight. Returns false, having read nothing, when io_uring is not available.
bool read_pieces_uring(const FileTable& files, const std::vector<ReadPiece>& pieces, std::size_t in_flight,
                       std::vector<std::optional<Error>>& errors);

/// The registered backend's reader for `location` (a scheme_of it is not empty).
std::unique_ptr<StorageReader> open_scheme_reader(std::string_view location, const ReadOptions& options);

}  // namespace dcp::storage
