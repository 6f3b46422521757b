// Files being written: buffered appends, large writes straight from the caller's memory (or
// to the disk directly, O_DIRECT), fsync; and directory fsync.
module;
#include <fcntl.h>
#include <unistd.h>
#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>
module dcp.storage;
import dcp.error;
import dcp.record;

namespace dcp::storage {
namespace {
constexpr std::size_t kWriteBuffer = std::size_t{8} << 20;
// Writeback is started per this many bytes, and waited for one window later: the dirty pages
// of a file stay within about two windows, and the disk works while we copy.
constexpr std::uint64_t kWriteBehindWindow = std::uint64_t{32} << 20;
// Direct writes: block-aligned offsets, lengths and (for the kernel's DMA) memory. Appends of
// at least kDirectMinBytes go direct; each write call moves at most kDirectChunk, through a
// bounce buffer of that size when the caller's memory is not aligned.
constexpr std::uint64_t kDirectAlign = record::kLargeRecordAlignment;
constexpr std::uint64_t kDirectMinBytes = record::kLargeRecordBytes;
constexpr std::size_t kDirectChunk = std::size_t{16} << 20;
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

OutputFile::OutputFile(int dir_fd, const std::string& name, std::filesystem::path path, WritePath mode)
    : path_(std::move(path)), write_behind_(mode != WritePath::buffered), direct_(mode == WritePath::direct) {
  fd_ = ::openat(dir_fd, name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd_ < 0) cannot_create(path_, errno);
}

OutputFile::~OutputFile() {
  if (fd_ >= 0) ::close(fd_);
}

void OutputFile::write(std::span<const std::byte> data) {
  if (direct_ && data.size() >= kDirectMinBytes && position_ % kDirectAlign == 0) {
    flush();
    const auto aligned = data.size() / kDirectAlign * kDirectAlign;
    if (write_direct(data.first(aligned), position_)) {
      position_ += aligned;
      data = data.subspan(aligned);
    }
  }
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
  set_direct(false);
  pwrite_all(data, offset);
  if (write_behind_) write_behind(offset + data.size());
}

void OutputFile::pwrite_all(std::span<const std::byte> data, std::uint64_t offset) {
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
}

void OutputFile::set_direct(bool on) {
  if (fd_direct_ == on) return;
  const int flags = ::fcntl(fd_, F_GETFL);
  if (flags < 0 || ::fcntl(fd_, F_SETFL, on ? flags | O_DIRECT : flags & ~O_DIRECT) != 0) {
    if (on) {
      direct_ = false;  // this file system has no direct I/O: buffered from now on
      return;
    }
    throw os_error(path_, "cannot leave direct I/O", errno);
  }
  fd_direct_ = on;
}

bool OutputFile::write_direct(std::span<const std::byte> data, std::uint64_t at) {
  set_direct(true);
  if (!fd_direct_) return false;
  std::uint64_t done = 0;
  while (done < data.size()) {
    auto piece = data.subspan(done, std::min<std::size_t>(data.size() - done, kDirectChunk));
    if (reinterpret_cast<std::uintptr_t>(piece.data()) % kDirectAlign != 0) {
      if (!bounce_) {
        auto* raw = static_cast<std::byte*>(std::aligned_alloc(kDirectAlign, kDirectChunk));
        if (!raw) throw Error(Errc::resource_exhausted, "out of memory for a direct-write buffer").in_file(path_.string());
        bounce_ = decltype(bounce_)(raw, [](std::byte* p) { std::free(p); });
      }
      std::memcpy(bounce_.get(), piece.data(), piece.size());
      piece = std::span<const std::byte>(bounce_.get(), piece.size());
    }
    const ssize_t n = ::pwrite(fd_, piece.data(), piece.size(), static_cast<off_t>(at + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EINVAL && done == 0) {
      // Alignment this device does not take (a larger block or DMA alignment): buffered.
      set_direct(false);
      direct_ = false;
      return false;
    }
    if (n < 0) throw os_error(path_, "cannot write", errno).at_offset(at + done);
    if (n == 0 || static_cast<std::uint64_t>(n) % kDirectAlign != 0) {
      // A short direct write (a full disk): the rest through the page cache, which says why.
      set_direct(false);
      pwrite_all(data.subspan(done + static_cast<std::size_t>(n)), at + done + static_cast<std::uint64_t>(n));
      return true;
    }
    done += static_cast<std::uint64_t>(n);
  }
  return true;
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
