// FileSystemWriter's life cycle around the data: the target's checks and lock, the save's
// record of the files it creates, `.metadata`, and the one rename that publishes.
//
// The protocol (docs/format.md, "Publishing"): every file is written inside the target under a
// name no entry there had when the save began — torch's `__{rank}_{n}.distcp` when no entry
// starts with `__`, else `__{rank}_g{G}_{n}.distcp` — after the coordinator has recorded that
// naming in `.dcpp-<save id>.save`. Data files are fsync'ed, then the directory; `.metadata` is
// written as `.dcpp-<save id>.metadata`, fsync'ed and renamed over `.metadata` (the commit:
// atomic on every POSIX file system, NFS included), and the directory fsync'ed. Only then are
// the data files the replaced `.metadata` named (and the new one does not) removed, and the
// record last. Nothing leaves the target directory and nothing in it is replaced wholesale, so
// saving works in a mount point, below a read-only parent and on file systems without
// RENAME_EXCHANGE, and the directory keeps its owner, mode, ACLs and extended attributes.
//
// A crash at any instant leaves the previous complete checkpoint or the new complete one, plus
// files that nothing references; the record proves which of those are this save's, and the
// next save into the directory removes exactly those. The record, the lock and the search for
// leftovers are publish_record.cpp's, shared with HfDirectoryWriter (hf_publish.cpp).
module;
#include <fcntl.h>
#include <dirent.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>
module dcp.storage;
import dcp.error;
import dcp.metadata;
import dcp.planning;

namespace dcp::storage {
namespace fs = std::filesystem;

using namespace publishing;


bool is_data_file_prefix(std::string_view prefix) noexcept {
  // "__{rank}_" or "__{rank}_g{G}_": what prepare_global_plan hands out.
  if (!prefix.starts_with("__")) return false;
  prefix.remove_prefix(2);
  if (!take_number(prefix) || !prefix.starts_with('_')) return false;
  prefix.remove_prefix(1);
  if (prefix.empty()) return true;
  if (!prefix.starts_with('g')) return false;
  prefix.remove_prefix(1);
  return take_number(prefix) && prefix == "_";
}

// An exclusive flock on the target directory, held for the whole save by the coordinator.
struct FileSystemWriter::Lock {
  int fd = -1;
  ~Lock() {
    if (fd >= 0) ::close(fd);
  }
};

FileSystemWriter::FileSystemWriter(fs::path checkpoint_dir, WriteOptions options)
    : dir_(absolute_target(checkpoint_dir)), options_(std::move(options)), save_id_(new_save_id()) {}

FileSystemWriter::~FileSystemWriter() { close_directory(); }

void FileSystemWriter::close_directory() noexcept {
  if (dir_fd_ >= 0) ::close(dir_fd_);
  dir_fd_ = -1;
}

void FileSystemWriter::reset(std::optional<fs::path> checkpoint_dir) {
  if (checkpoint_dir) dir_ = absolute_target(*checkpoint_dir);
  save_id_ = new_save_id();
  marker_.clear();
  replaces_.clear();
  {
    std::lock_guard lock(created_mutex_);
    created_.clear();
  }
  ranks_ = 0;
  recorded_ = wrote_ = finishing_ = published_ = created_target_ = false;
  lock_.reset();
  close_directory();
}

void FileSystemWriter::open_directory() {
  if (dir_fd_ >= 0) return;
  dir_fd_ = ::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd_ < 0) {
    const int err = errno;
    if (err == ENOTDIR) refuse(dir_, "exists and is not a directory");
    throw os_error(dir_, "cannot open the checkpoint directory", err);
  }
}

void FileSystemWriter::set_up_storage_writer(bool is_coordinator, int rank, int world_size) {
  is_coordinator_ = is_coordinator;
  rank_ = rank;
  world_size_ = world_size;
  if (!is_coordinator) return;
  std::error_code ec;
  if (!fs::exists(dir_, ec)) {
    if (!fs::create_directories(dir_, ec) && ec) throw os_error(dir_, "cannot create the checkpoint directory", ec.value());
    created_target_ = true;
  }
  open_directory();
  auto lock = std::make_unique<Lock>();
  lock->fd = lock_directory(dir_fd_, dir_);
  if (lock->fd >= 0) remove_leftovers();

  if (const auto st = entry_stat(dir_fd_, ".metadata", dir_)) {
    if (!S_ISREG(st->st_mode))
      refuse(dir_ / ".metadata", "is not a regular file (a link or another kind of entry); refusing to replace it");
    if (!options_.overwrite)
      refuse(dir_, "already holds a checkpoint; overwrite it explicitly (--overwrite) to replace it");
    // The files the replaced checkpoint names are removed once the new one is published; when
    // its .metadata cannot be decoded nothing but .metadata itself is replaced.
    try {
      const auto named = files_named(read_entry(dir_fd_, ".metadata", dir_, kMaxMetadataBytes));
      replaces_.assign(named.begin(), named.end());
    } catch (const Error&) {
      replaces_.clear();
    }
  }
  // Torch's names when no entry could be confused with them, else the next generation's.
  std::uint64_t generation = 0;
  bool plain = true;
  for (const auto& name : list_names(dir_fd_, dir_)) {
    if (!name.starts_with("__")) continue;
    plain = false;
    generation = std::max(generation, generation_of(name));
  }
  marker_ = plain ? std::string() : "g" + std::to_string(generation + 1) + "_";
  lock_ = std::move(lock);
}

void FileSystemWriter::remove_leftovers() {
  if (publishing::remove_leftovers(dir_fd_, dir_, save_id_) && options_.sync_files) sync_dir_fd(dir_fd_, dir_);
}

planning::SavePlan FileSystemWriter::prepare_local_plan(planning::SavePlan plan) {
  if (options_.format == metadata::Flavor::torch_1_13)
    for (const auto& item : plan.items)
      if (item.tensor_data && dtype_info(item.tensor_data->properties.dtype).rebuild != TensorRebuild::v2)
        throw Error(Errc::unimplemented, "torch 1.13 has no " + std::string(dtype_name(item.tensor_data->properties.dtype)) +
                                             " tensors; save this checkpoint in the torch 2.x format")
            .for_key(item.index.fqn);
  return plan;
}

std::vector<planning::SavePlan> FileSystemWriter::prepare_global_plan(std::vector<planning::SavePlan> plans) {
  if (dir_fd_ < 0 || !lock_)
    throw Error(Errc::failed_precondition, "prepare_global_plan without set_up_storage_writer").in_file(dir_.string());
  // The record comes before any data file: whatever this save creates is provably its own.
  recorded_ = true;  // set before the file exists: abort removes whatever of it was created
  write_record(dir_fd_, dir_, SaveRecord{save_id_, marker_, plans.size(), replaces_, true, Layout::dcp, {}}, options_.sync_files);
  ranks_ = plans.size();
  for (std::size_t i = 0; i < plans.size(); ++i) plans[i].storage_data = "__" + std::to_string(i) + "_" + marker_;
  return plans;
}

metadata::Metadata FileSystemWriter::finish(metadata::Metadata md,
                                            const std::vector<std::vector<planning::WriteResult>>& results) {
  if (!recorded_) throw Error(Errc::failed_precondition, "finish without prepare_global_plan").in_file(dir_.string());
  finishing_ = true;
  md.flavor = options_.format;
  md.storage_data.clear();
  for (const auto& rank_results : results)
    for (const auto& r : rank_results) md.storage_data.emplace_back(r.index, r.storage_data);
  if (md.flavor == metadata::Flavor::torch_2x) {
    md.version = "1.0.0";  // torch 2.13's CURRENT_DCP_VERSION
    md.storage_meta = metadata::StorageMeta{dir_.string(), save_id_, std::nullopt, {}};
  } else {
    md.planner_data.reset();  // torch 1.13 does not flatten: its keys are the fqns, planner_data None
  }
  md.reindex();
  // What is about to be published is checked exactly as a reader will, against the files as
  // they lie in the directory (every rank has fsync'ed its own).
  std::set<std::string, std::less<>> named;
  try {
    const auto validated = metadata::validate(md);
    metadata::check_storage_bounds(validated, [&](std::string_view name) -> std::optional<std::uint64_t> {
      struct stat st {};
      if (name.find('/') != std::string_view::npos ||
          ::fstatat(dir_fd_, std::string(name).c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode))
        return std::nullopt;
      return static_cast<std::uint64_t>(st.st_size);
    });
  } catch (Error& e) {
    throw Error(Errc::internal, "the checkpoint written fails its own checks: " + std::string(e.what())).in_file(dir_.string());
  }
  for (const auto& [index, info] : md.storage_data) named.insert(info.relative_path);
  if (options_.sync_files) sync_dir_fd(dir_fd_, dir_);  // every data file's entry is durable
  if (options_.before_publish) options_.before_publish();

  const auto bytes = metadata::encode_metadata(md, md.flavor);
  const auto pending = pending_metadata_name(save_id_);
  {
    OutputFile file(dir_fd_, pending, dir_ / pending);
    file.write(bytes);
    file.close(options_.sync_files);
  }
  if (::renameat(dir_fd_, pending.c_str(), dir_fd_, ".metadata") != 0) {
    const int err = errno;
    // A rename retried over NFS can report failure after it happened: with the new file gone
    // from its own name the checkpoint may be published, so nothing of it may be removed.
    struct stat st {};
    if (::fstatat(dir_fd_, pending.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0 && errno == ENOENT) {
      published_ = true;
      lock_.reset();
      close_directory();
      throw os_error(dir_ / ".metadata", "the rename that publishes .metadata reported", err);
    }
    throw os_error(dir_ / ".metadata", "cannot publish the new .metadata", err);
  }
  published_ = true;

  // Published: what fails from here is reported as such, and nothing new is removed.
  std::string trouble;
  try {
    if (options_.sync_files) sync_dir_fd(dir_fd_, dir_);
  } catch (const Error& e) {
    trouble = e.message();
  }
  std::size_t kept = 0;
  int removal_error = 0;
  for (const auto& name : replaces_)
    if (!named.contains(name) && !remove_regular(dir_fd_, name)) {
      ++kept;
      removal_error = errno;
    }
  if (kept == 0) {
    (void)remove_regular(dir_fd_, record_name(save_id_));  // a stale record would only prove nothing
    if (options_.sync_files) (void)::fsync(dir_fd_);
  } else if (trouble.empty()) {
    trouble = "cannot remove " + std::to_string(kept) + " file(s) of the replaced checkpoint: " + std::strerror(removal_error) +
              " (the next save into this directory retries)";
  }
  lock_.reset();
  close_directory();
  created_target_ = false;
  // The caller reports this as "published, then ..." (published() is true).
  if (!trouble.empty()) throw Error(Errc::io, trouble).in_file(dir_.string());
  return md;
}

void FileSystemWriter::abort_after_writes() noexcept {
  finishing_ = true;
  abort();
}

void FileSystemWriter::abort() noexcept {
  if (published_) return;
  if (is_coordinator_) {
    if (dir_fd_ >= 0 && recorded_) {
      // This save's names were new when it began and its .metadata was never renamed into
      // place, so no checkpoint names its files. After finish began every rank is done writing
      // and everything can go; before it, other ranks may still be creating files, and the
      // record stays for the next save to finish the job.
      bool all = true;
      try {
        const auto pending = pending_metadata_name(save_id_);
        for (const auto& name : list_names(dir_fd_, dir_))
          if (name == pending || is_data_file_of(name, marker_, ranks_)) all = remove_regular(dir_fd_, name) && all;
      } catch (...) {
        all = false;
      }
      if (all && (finishing_ || world_size_ <= 1)) (void)remove_regular(dir_fd_, record_name(save_id_));
      if (options_.sync_files) (void)::fsync(dir_fd_);
    }
    if (created_target_) (void)::rmdir(dir_.c_str());  // only if still empty
  } else if (!wrote_) {
    // This rank failed before handing its results over: no checkpoint can name its files.
    std::lock_guard lock(created_mutex_);
    const int fd = dir_fd_ >= 0 ? dir_fd_ : ::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
      for (const auto& name : created_) (void)remove_regular(fd, name);
      if (fd != dir_fd_) ::close(fd);
    }
    created_.clear();
  }
  lock_.reset();
  close_directory();
  created_target_ = false;
}

std::vector<std::string> save_leftovers(const fs::path& checkpoint_dir) {
  const auto dir = absolute_target(checkpoint_dir);
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return {};
    throw os_error(dir, "cannot open the checkpoint directory", errno);
  }
  std::vector<std::string> out;
  try {
    for (auto& leftover : find_leftovers(fd, dir, {})) {
      out.push_back(std::move(leftover.record_file));
      for (auto& name : leftover.files) out.push_back(std::move(name));
    }
  } catch (...) {
    ::close(fd);
    throw;
  }
  ::close(fd);
  return out;
}

}  // namespace dcp::storage
