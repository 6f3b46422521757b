// dcp.checkpoint — the core facade: what a user of dcpp calls, without libtorch.
//
// `inspect` reads `.metadata` without running a pickle and cross-checks it. `load` is torch's
// load: it fills a caller-described Destination in place through a LoadPlanner and a
// StorageReader (`set_up_planner` → `create_local_plan` → global plan → `read_data`).
// `for_each_tensor` loads a whole checkpoint as full, unsharded tensors into dcp.memory
// buffers, in bounded batches (what `dcpp load`/`verify`/`convert` and dcp.torch's at::Tensor
// API build on), and `load_objects` decodes the BYTE_IO values. Nothing here includes a
// libtorch header: the tensor-facing API is dcp.torch's. Later steps add save, async_save and
// the Checkpointer. Imports every core module below it.
module;
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
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

/// torch's `load(state_dict, storage_reader, planner)` without a process group: plans against
/// the reader's (validated) metadata and reads every item into `destination`'s memory.
storage::ReadReport load(planning::Destination& destination, storage::StorageReader& reader,
                         planning::LoadPlanner& planner);

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

}  // namespace dcp::checkpoint

// Not exported: shared by the implementation units (convert.cpp, safetensors.cpp,
// temp_file.cpp, verify.cpp, load.cpp).
namespace dcp::checkpoint::detail {

/// The output of a conversion: a temporary file next to `out`, renamed over it by commit()
/// and removed if the conversion fails first, so a failed conversion leaves nothing behind.
class TempFile {
 public:
  explicit TempFile(const std::filesystem::path& out);
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  ~TempFile();
  /// Appends at the current position (buffered).
  void write(std::span<const std::byte> data);
  /// Writes at an absolute offset (unbuffered; pending appends are flushed first).
  void write_at(std::span<const std::byte> data, std::uint64_t offset);
  /// Flushes, sets the final size (if given), syncs and renames the file over `out`.
  void commit(std::optional<std::uint64_t> size = std::nullopt);

 private:
  void flush();
  std::filesystem::path out_;
  std::string tmp_;
  int fd_ = -1;
  bool committed_ = false;
  std::uint64_t position_ = 0;
  std::vector<std::byte> buffer_;
};

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
