// A conversion's output file: written under a new hidden name beside `out`, published by one
// rename at the end, so `out` is the previous complete file or the new complete one at every
// instant. The temporary name is random and created O_EXCL|O_NOFOLLOW: a link planted there is
// never followed. Without `overwrite` an existing `out` is never replaced, not even by a file
// that appears while the conversion runs (renameat2 RENAME_NOREPLACE, or link(2) where a file
// system lacks it). A conversion holds an flock on its temporary file: one that nobody holds,
// named exactly as ours and untouched for a minute, was left by a conversion that died, and the
// next conversion to the same output removes it.
module;
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <ctime>
#include <system_error>
module dcp.checkpoint;
import dcp.error;
import dcp.storage;

namespace dcp::checkpoint::detail {
namespace {

std::string random_tag() {
  std::random_device device;
  std::mt19937_64 random((std::uint64_t{device()} << 32) ^ device());
  constexpr char hex[] = "0123456789abcdef";
  std::string tag;
  for (int i = 0; i < 16; ++i) tag += hex[random() & 15];
  return tag;
}

std::filesystem::path directory_of(const std::filesystem::path& out) {
  return out.has_parent_path() ? out.parent_path() : std::filesystem::path(".");
}

constexpr std::string_view kTempTag = ".dcpp-";
constexpr std::string_view kTempSuffix = ".tmp";
constexpr std::size_t kTagChars = 16;
// A temporary file untouched this long, and locked by nobody, belongs to a dead conversion.
constexpr std::time_t kStaleSeconds = 60;

std::string temp_prefix(const std::filesystem::path& out) { return "." + out.filename().string() + std::string(kTempTag); }

bool is_temp_of(std::string_view name, std::string_view prefix) {
  if (!name.starts_with(prefix) || !name.ends_with(kTempSuffix)) return false;
  const auto tag = name.substr(prefix.size(), name.size() - prefix.size() - kTempSuffix.size());
  return tag.size() == kTagChars && tag.find_first_not_of("0123456789abcdef") == std::string_view::npos;
}

// Removes the temporary files of conversions to `out` that died (see the top of this file).
void remove_dead_temps(const std::filesystem::path& out, const std::filesystem::path& mine) noexcept {
  const auto dir = directory_of(out);
  const auto prefix = temp_prefix(out);
  const int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0) return;
  const int list_fd = ::dup(dir_fd);
  DIR* stream = list_fd >= 0 ? ::fdopendir(list_fd) : nullptr;
  if (!stream) {
    if (list_fd >= 0) ::close(list_fd);
    ::close(dir_fd);
    return;
  }
  const auto now = std::time(nullptr);
  while (const dirent* entry = ::readdir(stream)) {
    const std::string name = entry->d_name;
    if (!is_temp_of(name, prefix) || name == mine.filename().string()) continue;
    const int fd = ::openat(dir_fd, name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) continue;
    struct stat st {};
    if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && now - st.st_mtime > kStaleSeconds &&
        ::flock(fd, LOCK_EX | LOCK_NB) == 0)
      (void)::unlinkat(dir_fd, name.c_str(), 0);
    ::close(fd);
  }
  ::closedir(stream);
  ::close(dir_fd);
}

[[noreturn]] void exists_already(const std::filesystem::path& out) {
  throw Error(Errc::failed_precondition, "exists already; overwrite it explicitly (--overwrite) to replace it")
      .in_file(out.string());
}

}  // namespace
}  // namespace dcp::checkpoint::detail

namespace dcp::checkpoint {

void check_output_path(const std::filesystem::path& out, bool overwrite) {
  if (out.empty() || !out.has_filename())
    throw Error(Errc::invalid_argument, "the output must name a file").in_file(out.string());
  struct stat st {};
  if (::lstat(out.c_str(), &st) != 0) {
    if (errno == ENOENT) return;
    throw Error(Errc::io, std::string("cannot stat: ") + std::strerror(errno)).in_file(out.string());
  }
  if (S_ISDIR(st.st_mode)) throw Error(Errc::failed_precondition, "is a directory").in_file(out.string());
  if (!overwrite) detail::exists_already(out);
}

}  // namespace dcp::checkpoint

namespace dcp::checkpoint::detail {

TempFile::TempFile(const std::filesystem::path& out, bool overwrite)
    : out_(out),
      tmp_(directory_of(out) / (temp_prefix(out) + random_tag() + std::string(kTempSuffix))),
      overwrite_(overwrite) {
  check_output_path(out_, overwrite_);
  try {
    file_ = std::make_unique<storage::OutputFile>(tmp_, /*exclusive=*/true);
  } catch (Error& e) {
    throw Error(e.code(), "cannot create the output's temporary file " + tmp_.string() + ": " + e.message())
        .in_file(out_.string());
  }
  // The lock says "alive" to remove_dead_temps; a file system without flock just keeps
  // temporary files of dead conversions.
  lock_fd_ = ::open(tmp_.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (lock_fd_ >= 0 && ::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    ::close(lock_fd_);
    lock_fd_ = -1;
  }
  if (lock_fd_ >= 0) remove_dead_temps(out_, tmp_);
}

TempFile::~TempFile() {
  file_.reset();
  if (!committed_) ::unlink(tmp_.c_str());
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

void TempFile::commit(std::optional<std::uint64_t> size) {
  file_->close(/*sync=*/true, size);
  if (overwrite_) {
    check_output_path(out_, true);  // a directory that appeared meanwhile is not replaced
    if (::rename(tmp_.c_str(), out_.c_str()) != 0)
      throw Error(Errc::io, "cannot rename " + tmp_.string() + " to it: " + std::strerror(errno)).in_file(out_.string());
  } else if (::renameat2(AT_FDCWD, tmp_.c_str(), AT_FDCWD, out_.c_str(), RENAME_NOREPLACE) != 0) {
    const int err = errno;
    if (err == EEXIST) exists_already(out_);
    if (err != EINVAL && err != ENOSYS && err != ENOTSUP)
      throw Error(Errc::io, "cannot rename " + tmp_.string() + " to it: " + std::strerror(err)).in_file(out_.string());
    // No RENAME_NOREPLACE here (NFS, FUSE): link(2) fails on an existing name, atomically.
    if (::link(tmp_.c_str(), out_.c_str()) != 0) {
      if (errno == EEXIST) exists_already(out_);
      throw Error(Errc::io, "cannot link " + tmp_.string() + " to it: " + std::strerror(errno)).in_file(out_.string());
    }
    ::unlink(tmp_.c_str());
  }
  committed_ = true;
  storage::sync_directory(directory_of(out_));
}

}  // namespace dcp::checkpoint::detail
