// Files being written: buffered appends, direct large writes, fsync; and directory fsync.
module;
#include <fcntl.h>
#include <unistd.h>
#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>
module dcp.storage;
import dcp.error;

namespace dcp::storage {
namespace {
constexpr std::size_t kWriteBuffer = std::size_t{8} << 20;
// Writeback is started per this many bytes, and waited for one window later: the dirty pages
// of a file stay within about two windows, and the disk works while we copy.
constexpr std::uint64_t kWriteBehindWindow = std::uint64_t{32} << 20;
}  // namespace

namespace {
// io even for ENOENT (a missing parent): a file we fail to create is a write failure, not a
// missing input (os_error's not_found).
[[noreturn]] void cannot_create(const std::filesystem::path& path, int err) {
  throw Error(Errc::io, std::string("cannot create: ") +
                            (err == ELOOP ? "a symbolic link is in the way" : std::strerror(err)))
      .in_file(path.string());
}
}  // namespace

OutputFile::OutputFile(std::filesystem::path path, bool exclusive, bool write_behind)
    : path_(std::move(path)), write_behind_(write_behind) {
  const int flags = O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW | (exclusive ? O_EXCL : O_TRUNC);
  fd_ = ::open(path_.c_str(), flags, 0644);
  if (fd_ < 0) cannot_create(path_, errno);
}

OutputFile::OutputFile(int dir_fd, const std::string& name, std::filesystem::path path, bool write_behind)
    : path_(std::move(path)), write_behind_(write_behind) {
  fd_ = ::openat(dir_fd, name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd_ < 0) cannot_create(path_, errno);
}

OutputFile::~OutputFile() {
  if (fd_ >= 0) ::close(fd_);
}

void OutputFile::write(std::span<const std::byte> data) {
  if (buffer_.size() + data.size() > kWriteBuffer) flush();
  if (data.size() >= kWriteBuffer) {
    write_at(data, position_);
  } else {
    if (buffer_.capacity() < kWriteBuffer) buffer_.reserve(kWriteBuffer);
    buffer_.insert(buffer_.end(), data.begin(), data.end());
  }
  position_ += data.size();
}

void OutputFile::write_at(std::span<const std::byte> data, std::uint64_t offset) {
  flush();
  while (!data.empty()) {
    const auto chunk = std::min<std::size_t>(data.size(), std::size_t{1} << 30);
    const ssize_t n = ::pwrite(fd_, data.data(), chunk, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      throw os_error(path_, "cannot write", errno).at_offset(offset);
    }
    data = data.subspan(static_cast<std::size_t>(n));
    offset += static_cast<std::uint64_t>(n);
  }
  if (write_behind_) write_behind(offset);
}

void OutputFile::write_behind(std::uint64_t end) {
  // Best effort: a failure here shows up again at fsync, which reports it.
  while (end >= started_ + kWriteBehindWindow) {
    if (started_ >= waited_ + 2 * kWriteBehindWindow) {  // all but the latest window
      const auto until = started_ - kWriteBehindWindow;
      (void)::sync_file_range(fd_, static_cast<off_t>(waited_), static_cast<off_t>(until - waited_),
                              SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER);
      waited_ = until;
    }
    (void)::sync_file_range(fd_, static_cast<off_t>(started_), static_cast<off_t>(kWriteBehindWindow),
                            SYNC_FILE_RANGE_WRITE);
    started_ += kWriteBehindWindow;
  }
}

void OutputFile::flush() {
  if (buffer_.empty()) return;
  std::vector<std::byte> pending;
  pending.swap(buffer_);
  write_at(pending, position_ - pending.size());
  pending.clear();
  buffer_.swap(pending);  // keeps the capacity
}

void OutputFile::close(bool sync, std::optional<std::uint64_t> size) {
  flush();
  if (size && ::ftruncate(fd_, static_cast<off_t>(*size)) != 0) throw os_error(path_, "cannot set the size", errno);
  if (sync && ::fsync(fd_) != 0) throw os_error(path_, "cannot sync", errno);
  const int fd = std::exchange(fd_, -1);
  if (::close(fd) != 0) throw os_error(path_, "cannot close", errno);
}

void sync_directory(const std::filesystem::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw os_error(dir, "cannot open directory", errno);
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) throw os_error(dir, "cannot sync directory", err);
}

}  // namespace dcp::storage
