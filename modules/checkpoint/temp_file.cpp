// A conversion's output file: written under a temporary name, renamed into place at the end.
module;
#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <system_error>
#include <unistd.h>
#include <utility>
#include <vector>
module dcp.checkpoint;
import dcp.error;

namespace dcp::checkpoint::detail {
namespace {

constexpr std::size_t kWriteBuffer = std::size_t{8} << 20;

[[noreturn]] void fail(const char* what, const std::string& path) {
  const int err = errno;
  throw Error(Errc::io, std::string(what) + ": " + std::strerror(err)).in_file(path);
}

}  // namespace

TempFile::TempFile(const std::filesystem::path& out)
    : out_(out), tmp_(out.string() + ".tmp-" + std::to_string(::getpid())) {
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) fail("cannot create output file", out_.string());  // nothing to remove
}

TempFile::~TempFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(tmp_.c_str());
}

void TempFile::write(std::span<const std::byte> data) {
  if (buffer_.size() + data.size() > kWriteBuffer) flush();
  if (data.size() >= kWriteBuffer) {
    write_at(data, position_);
  } else {
    buffer_.insert(buffer_.end(), data.begin(), data.end());
  }
  position_ += data.size();
}

void TempFile::write_at(std::span<const std::byte> data, std::uint64_t offset) {
  flush();
  while (!data.empty()) {
    const auto chunk = std::min<std::size_t>(data.size(), std::size_t{1} << 30);
    const ssize_t n = ::pwrite(fd_, data.data(), chunk, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      fail("cannot write", tmp_);
    }
    data = data.subspan(static_cast<std::size_t>(n));
    offset += static_cast<std::uint64_t>(n);
  }
}

void TempFile::commit(std::optional<std::uint64_t> size) {
  flush();
  if (size && ::ftruncate(fd_, static_cast<off_t>(*size)) != 0) fail("cannot set the size", tmp_);
  if (::fsync(fd_) != 0) fail("cannot sync", tmp_);
  const int fd = std::exchange(fd_, -1);
  if (::close(fd) != 0) fail("cannot close", tmp_);
  std::error_code ec;
  std::filesystem::rename(tmp_, out_, ec);
  if (ec) throw Error(Errc::io, "cannot rename " + tmp_ + " to it: " + ec.message()).in_file(out_.string());
  committed_ = true;
}

void TempFile::flush() {
  if (buffer_.empty()) return;
  std::vector<std::byte> pending;
  pending.swap(buffer_);
  write_at(pending, position_ - pending.size());
  pending.clear();
  buffer_.swap(pending);  // keeps the capacity
}

}  // namespace dcp::checkpoint::detail
