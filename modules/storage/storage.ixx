// dcp.storage — reading checkpoint bytes from a directory, driven by Boost.Asio.
//
// `FileSystemReader` is torch's FileSystemReader in C++ behind the `StorageReader` protocol
// (read_metadata, set_up_storage_reader, prepare_local_plan, prepare_global_plan, read_data),
// so other backends can be added. `read_data` executes a LoadPlan: the plan's items are
// grouped per saved item (one torch.save archive); an Asio thread pool locates each
// archive's storage record (dcp.record) with a few small preads, then copies: a region that
// is contiguous on disk and in the destination is read straight into destination memory
// (large ones in parallel pieces), anything strided goes through a bounce buffer. The
// planner is called only from the calling thread (resolve before, commit and load_bytes
// after), so workers share no mutable state. Every error names the file, key and byte
// offset. Imports: dcp.error, dcp.metadata, dcp.planning, dcp.record.
module;
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>
export module dcp.storage;
import dcp.error;
import dcp.metadata;
import dcp.planning;

export namespace dcp::storage {

/// How bytes move from files into memory.
enum class ReadBackend {
  automatic,  ///< a pread pool: fastest for data in the page cache (see README, "Performance")
  pread,      ///< positional reads on an Asio thread pool
  io_uring,   ///< Asio random_access_file on io_uring, many reads in flight; falls back to
              ///< pread when the build lacks it or the kernel refuses io_uring
};

/// How read_data runs.
struct ReadOptions {
  ReadBackend backend = ReadBackend::automatic;
  int threads = 0;             ///< worker threads; 0 = min(hardware threads, 8)
  bool verify_crc = false;     ///< check each storage record's CRC-32 (reads whole records)
  bool collect_errors = false; ///< keep going after an item fails and report them all
};

/// What read_data did.
struct ReadReport {
  std::uint64_t bytes_read = 0;          ///< bytes copied into destination memory
  std::uint64_t items = 0;               ///< saved items touched
  std::vector<Error> errors;             ///< with collect_errors: every failure, in plan order
};

/// `.metadata` larger than this is refused before reading (the largest real ones are MBs).
inline constexpr std::uint64_t kMaxMetadataBytes = std::uint64_t{1} << 30;

/// Reads a whole file of at most `max_bytes`. Throws not_found / io / out_of_range.
std::vector<std::byte> read_file(const std::filesystem::path& path, std::uint64_t max_bytes);

/// Reads `[offset, offset + out.size())` of `path` into `out` (pread loop, EINTR-safe).
void read_range(const std::filesystem::path& path, std::uint64_t offset, std::span<std::byte> out);

/// torch's StorageReader protocol.
class StorageReader {
 public:
  virtual ~StorageReader() = default;
  virtual metadata::Metadata read_metadata() const = 0;
  virtual void set_up_storage_reader(const metadata::Metadata& metadata, bool is_coordinator) = 0;
  virtual planning::LoadPlan prepare_local_plan(planning::LoadPlan plan) { return plan; }
  virtual std::vector<planning::LoadPlan> prepare_global_plan(std::vector<planning::LoadPlan> plans) { return plans; }
  /// Executes `plan`, calling the planner's resolve_tensor / commit_tensor / load_bytes.
  virtual ReadReport read_data(const planning::LoadPlan& plan, planning::LoadPlanner& planner) = 0;
};

class FileSystemReader : public StorageReader {
 public:
  explicit FileSystemReader(std::filesystem::path checkpoint_dir, ReadOptions options = {});
  void set_up_storage_reader(const metadata::Metadata& metadata, bool is_coordinator) override;
  ReadReport read_data(const planning::LoadPlan& plan, planning::LoadPlanner& planner) override;

  const std::filesystem::path& directory() const { return dir_; }
  /// Reads and decodes `.metadata` (an interrupted save, with only `.metadata.tmp`, is
  /// reported as such). Errors carry the file path and the byte offset.
  metadata::Metadata read_metadata() const override;
  /// Size of a data file named in storage_data; nullopt if missing or unsafe.
  std::optional<std::uint64_t> file_size(std::string_view relative_path) const;
  /// Full path of a data file (the name must satisfy is_safe_relative_path).
  std::filesystem::path path_of(std::string_view relative_path) const;

 private:
  std::filesystem::path dir_;
  ReadOptions options_;
  const metadata::Metadata* metadata_ = nullptr;
};

}  // namespace dcp::storage

namespace dcp::storage {
// Not exported: shared by the implementation units.
Error os_error(const std::filesystem::path& path, std::string_view what, int err);
/// Reads exactly out.size() bytes at `offset` (EINTR-safe; a short file is data_loss).
void pread_all(int fd, const std::filesystem::path& path, std::uint64_t offset, std::span<std::byte> out);
/// An open read-only file descriptor.
/// One contiguous read straight into destination memory.
struct ReadPiece {
  std::filesystem::path path;
  std::uint64_t offset = 0;
  std::byte* destination = nullptr;
  std::uint64_t size = 0;
};
/// Reads every piece through Asio's io_uring files with up to `in_flight` reads outstanding,
/// on `threads` threads; `errors[i]` receives piece i's failure. Returns false, having read
/// nothing, when io_uring is not available (build option or kernel).
bool read_pieces_uring(const std::vector<ReadPiece>& pieces, int threads, std::size_t in_flight,
                       std::vector<std::optional<Error>>& errors);

class Fd {
 public:
  explicit Fd(const std::filesystem::path& path);
  ~Fd();
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};
}  // namespace dcp::storage
