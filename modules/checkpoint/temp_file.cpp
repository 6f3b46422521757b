// A conversion's output file: written under a temporary name, renamed into place at the end.
module;
#include <unistd.h>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
module dcp.checkpoint;
import dcp.error;
import dcp.storage;

namespace dcp::checkpoint::detail {

TempFile::TempFile(const std::filesystem::path& out)
    : out_(out), tmp_(out.string() + ".tmp-" + std::to_string(::getpid())) {
  try {
    // Exclusive: a name that is already there, a link planted to make us truncate its target
    // included, is refused instead of followed.
    file_ = std::make_unique<storage::OutputFile>(tmp_, /*exclusive=*/true);
  } catch (Error& e) {
    throw Error(e.code(), "cannot create output file: " + e.message()).in_file(out_.string());
  }
}

TempFile::~TempFile() {
  file_.reset();
  if (!committed_) ::unlink(tmp_.c_str());
}

void TempFile::commit(std::optional<std::uint64_t> size) {
  file_->close(/*sync=*/true, size);
  std::error_code ec;
  std::filesystem::rename(tmp_, out_, ec);
  if (ec) throw Error(Errc::io, "cannot rename " + tmp_.string() + " to it: " + ec.message()).in_file(out_.string());
  committed_ = true;
  storage::sync_directory(out_.has_parent_path() ? out_.parent_path() : std::filesystem::path("."));
}

}  // namespace dcp::checkpoint::detail
