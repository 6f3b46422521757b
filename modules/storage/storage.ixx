// dcp.storage — reading checkpoint bytes from a directory.
//
// `FileSystemReader` is torch's FileSystemReader in C++: it reads and decodes `.metadata`,
// knows the size of every data file, and reads byte ranges. Every error names the file.
// Imports: dcp.error, dcp.metadata.
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

export namespace dcp::storage {

/// `.metadata` larger than this is refused before reading (the largest real ones are MBs).
inline constexpr std::uint64_t kMaxMetadataBytes = std::uint64_t{1} << 30;

/// Reads a whole file of at most `max_bytes`. Throws not_found / io / out_of_range.
std::vector<std::byte> read_file(const std::filesystem::path& path, std::uint64_t max_bytes);

/// Reads `[offset, offset + out.size())` of `path` into `out` (pread loop, EINTR-safe).
void read_range(const std::filesystem::path& path, std::uint64_t offset, std::span<std::byte> out);

class FileSystemReader {
 public:
  explicit FileSystemReader(std::filesystem::path checkpoint_dir);

  const std::filesystem::path& directory() const { return dir_; }
  /// Reads and decodes `.metadata` (an interrupted save, with only `.metadata.tmp`, is
  /// reported as such). Errors carry the file path and the byte offset.
  metadata::Metadata read_metadata() const;
  /// Size of a data file named in storage_data; nullopt if missing or unsafe.
  std::optional<std::uint64_t> file_size(std::string_view relative_path) const;
  /// Full path of a data file (the name must satisfy is_safe_relative_path).
  std::filesystem::path path_of(std::string_view relative_path) const;

 private:
  std::filesystem::path dir_;
};

}  // namespace dcp::storage
