// Whole-file and ranged reads, and the FileSystemReader's metadata step.
module;
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fcntl.h>
#include <algorithm>
#include <filesystem>
#include <map>
#include <utility>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>
module dcp.storage;
import dcp.error;
import dcp.metadata;
import dcp.planning;

namespace dcp::storage {

Error os_error(const std::filesystem::path& path, std::string_view what, int err) {
  Error e(err == ENOENT ? Errc::not_found : Errc::io,
          std::string(what) + ": " + std::strerror(err));
  e.in_file(path.string());
  return e;
}

std::string_view file_kind(unsigned mode) noexcept {
  switch (mode & S_IFMT) {
    case S_IFREG: return "a regular file";
    case S_IFDIR: return "a directory";
    case S_IFIFO: return "a FIFO";
    case S_IFCHR: return "a character device";
    case S_IFBLK: return "a block device";
    case S_IFSOCK: return "a socket";
    default: return "not a file";
  }
}

Fd::Fd(const std::filesystem::path& path) : fd_(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK)) {
  if (fd_ < 0) throw os_error(path, "cannot open", errno);
  struct stat st {};
  const int err = ::fstat(fd_, &st) != 0 ? errno : 0;
  if (err != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd_);
    if (err != 0) throw os_error(path, "cannot stat", err);
    throw Error(Errc::invalid_argument, "not a regular file: it is " + std::string(file_kind(st.st_mode)))
        .in_file(path.string());
  }
  // Regular files ignore O_NONBLOCK, but a descriptor handed on (io_uring) should not carry it.
  (void)::fcntl(fd_, F_SETFL, ::fcntl(fd_, F_GETFL) & ~O_NONBLOCK);
  size_ = static_cast<std::uint64_t>(st.st_size);
}

Fd::~Fd() {
  if (fd_ >= 0) ::close(fd_);
}

int Fd::release() noexcept { return std::exchange(fd_, -1); }

FileTable::FileTable(std::filesystem::path dir, std::size_t capacity)
    : dir_(std::move(dir)), capacity_(std::max<std::size_t>(capacity, 1)) {}

std::shared_ptr<const Fd> FileTable::get(const std::string& name) {
  std::lock_guard lock(mutex_);
  if (auto it = where_.find(name); it != where_.end()) {
    recent_.splice(recent_.begin(), recent_, it->second);
    return it->second->second;
  }
  auto fd = std::make_shared<const Fd>(dir_ / name);  // opened under the lock: rare, and keeps the count exact
  if (recent_.size() >= capacity_) {
    where_.erase(recent_.back().first);
    recent_.pop_back();
  }
  recent_.emplace_front(name, fd);
  where_[name] = recent_.begin();
  return fd;
}

std::size_t open_file_budget(std::size_t requested) {
  if (requested > 0) return requested;
  rlimit limit{};
  std::size_t budget = 256;
  if (::getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY)
    budget = std::min<std::size_t>(budget, static_cast<std::size_t>(limit.rlim_cur / 4));
  return std::max<std::size_t>(budget, 1);
}

void pread_all(int fd, const std::filesystem::path& path, std::uint64_t offset, std::span<std::byte> out) {
  std::size_t done = 0;
  while (done < out.size()) {
    const ssize_t n = ::pread(fd, out.data() + done, out.size() - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw os_error(path, "read failed", errno).at_offset(offset + done);
    if (n == 0) {
      Error e(Errc::data_loss, "file ends at byte " + std::to_string(offset + done) + ", " +
                                   std::to_string(out.size() - done) + " bytes short");
      e.in_file(path.string()).at_offset(offset + done);
      throw e;
    }
    done += static_cast<std::size_t>(n);
  }
}

std::vector<std::byte> read_file(const std::filesystem::path& path, std::uint64_t max_bytes) {
  Fd fd(path);
  const auto size = fd.size();
  if (size > max_bytes) {
    Error e(Errc::out_of_range, "file of " + std::to_string(size) + " bytes exceeds the limit of " +
                                    std::to_string(max_bytes));
    e.in_file(path.string());
    throw e;
  }
  std::vector<std::byte> bytes;
  try {
    bytes.resize(static_cast<std::size_t>(size));
  } catch (const std::bad_alloc&) {
    throw Error(Errc::resource_exhausted, "out of memory for its " + std::to_string(size) + " bytes").in_file(path.string());
  }
  pread_all(fd.get(), path, 0, bytes);
  return bytes;
}

FileSystemReader::FileSystemReader(std::filesystem::path checkpoint_dir, ReadOptions options)
    : dir_(std::move(checkpoint_dir)), options_(options) {}

void FileSystemReader::set_up_storage_reader(metadata::ValidatedMetadata metadata, bool) {
  metadata_ = std::move(metadata);
}

void ReadReport::merge(ReadReport other) {
  bytes_read += other.bytes_read;
  items += other.items;
  storage_bytes += other.storage_bytes;
  received_bytes += other.received_bytes;
  requests += other.requests;
  for (auto& e : other.errors) errors.push_back(std::move(e));
}

void SharedItems::add(const metadata::MetadataIndex& item, std::span<const std::byte> bytes) {
  items_.insert_or_assign(std::pair(item.fqn, item.offset.value_or(metadata::Shape{})), bytes);
}

const std::span<const std::byte>* SharedItems::find(std::string_view fqn, const metadata::Shape* offset) const {
  if (items_.empty()) return nullptr;
  const auto it = items_.find(std::pair(std::string(fqn), offset ? *offset : metadata::Shape{}));
  return it == items_.end() ? nullptr : &it->second;
}

void StorageReader::read_item(const metadata::MetadataIndex& item, std::span<std::byte>, ReadReport&) {
  throw Error(Errc::unimplemented, "this storage reader cannot share items (read-once)").for_key(item.fqn);
}

ReadReport StorageReader::read_data(const planning::LoadPlan&, planning::LoadPlanner&, const SharedItems&) {
  throw Error(Errc::unimplemented, "this storage reader cannot read shared items (read-once)");
}

std::vector<std::byte> StorageReader::read_metadata_bytes() const {
  const auto md = read_metadata();
  return metadata::encode_metadata(*md, md->flavor);
}

metadata::ValidatedMetadata StorageReader::metadata_from_bytes(std::span<const std::byte> bytes) const {
  return metadata::decode_validated(bytes);
}

metadata::ValidatedMetadata FileSystemReader::read_metadata() const { return metadata_from_bytes(read_metadata_bytes()); }

std::vector<std::byte> FileSystemReader::read_metadata_bytes() const {
  const auto path = dir_ / ".metadata";
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    const bool interrupted = std::filesystem::exists(dir_ / ".metadata.tmp", ec);
    Error e(Errc::not_found, interrupted ? "incomplete checkpoint: only .metadata.tmp exists (the save was interrupted)"
                                         : "no .metadata: not a DCP checkpoint directory");
    e.in_file(path.string());
    throw e;
  }
  // Followed if it is a symlink (a snapshot of a checkpoint may link every file); a FIFO or
  // device is refused by read_file without waiting on it.
  return read_file(path, kMaxMetadataBytes);
}

metadata::ValidatedMetadata FileSystemReader::metadata_from_bytes(std::span<const std::byte> bytes) const {
  const auto path = dir_ / ".metadata";
  std::optional<metadata::ValidatedMetadata> validated;
  try {
    validated = metadata::decode_validated(bytes);
  } catch (Error& e) {
    e.in_file(path.string());
    throw;
  } catch (const std::bad_alloc&) {
    throw Error(Errc::resource_exhausted, "out of memory decoding it").in_file(path.string());
  }
  check_against_files(*validated, path);
  return *std::move(validated);
}

void FileSystemReader::check_against_files(const metadata::ValidatedMetadata& validated,
                                           const std::filesystem::path& metadata_file) const {
  try {
    metadata::check_storage_bounds(validated, [&](std::string_view name) { return file_size(name); });
  } catch (Error& e) {
    // check_storage_bounds names a data file relative to the directory (make it a full path),
    // or none when the fault is in the metadata itself.
    Error full(e.code(), e.message());
    full.in_file(e.context().file.empty() ? metadata_file.string() : path_of(e.context().file).string())
        .for_key(e.context().key);
    if (e.context().byte_offset) full.at_offset(*e.context().byte_offset);
    throw full;
  }
}

std::optional<std::uint64_t> FileSystemReader::file_size(std::string_view relative_path) const {
  if (!metadata::is_safe_relative_path(relative_path)) return std::nullopt;
  struct stat st {};
  if (::stat(path_of(relative_path).c_str(), &st) != 0) return std::nullopt;
  // Missing is one error, there but unreadable as data another (a FIFO would hang a reader).
  if (!S_ISREG(st.st_mode))
    throw Error(Errc::invalid_argument, "not a regular file: it is " + std::string(file_kind(st.st_mode)))
        .in_file(relative_path);
  return static_cast<std::uint64_t>(st.st_size);
}

std::filesystem::path FileSystemReader::path_of(std::string_view relative_path) const {
  return dir_ / std::string(relative_path);
}

}  // namespace dcp::storage
