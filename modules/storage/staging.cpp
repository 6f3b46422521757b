// FileSystemWriter's life cycle around the data: the target's checks and lock, the staging
// directory, `.metadata`, and the atomic swap that makes a checkpoint appear whole.
//
// A save writes everything into `.<name>.dcpp-<save id>` beside the target, syncs every file
// and the directory, and exchanges it with the target in one renameat2(RENAME_EXCHANGE); the
// swapped-out previous checkpoint is then removed. So at every instant the target holds the
// previous complete checkpoint or the new complete one; a crash leaves at most a hidden
// staging directory, which the next save into the target removes.
module;
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <random>
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

namespace {

constexpr std::string_view kStagingTag = ".dcpp-";

std::string new_save_id() {
  std::random_device device;
  std::mt19937_64 random((std::uint64_t{device()} << 32) ^ device());
  constexpr char hex[] = "0123456789abcdef";
  std::string id;
  for (int i = 0; i < 32; ++i) {
    if (i == 8 || i == 12 || i == 16 || i == 20) id += '-';
    id += hex[random() & 15];
  }
  return id;
}

// The target as an absolute path without a trailing slash; a symlink to a directory is
// followed, so the swap replaces the directory and not the link.
fs::path absolute_target(const fs::path& dir) {
  std::error_code ec;
  auto abs = fs::weakly_canonical(fs::absolute(dir), ec);
  if (ec) abs = fs::absolute(dir).lexically_normal();
  if (!abs.has_filename()) abs = abs.parent_path();
  return abs;
}

std::string staging_prefix(const fs::path& target) { return "." + target.filename().string() + std::string(kStagingTag); }

// Files a checkpoint directory may hold (torch's and ours); anything else is the user's.
bool is_checkpoint_file(std::string_view name) {
  auto ends_with = [&](std::string_view s) { return name.size() >= s.size() && name.substr(name.size() - s.size()) == s; };
  return name == ".metadata" || name == ".metadata.tmp" || ends_with(".distcp") ||
         (name.starts_with("__") && (ends_with(".metadata") || ends_with(".metadata.tmp")));
}

void remove_tree(const fs::path& path) noexcept {
  std::error_code ec;
  fs::remove_all(path, ec);
}

[[noreturn]] void refuse(const fs::path& dir, std::string message) {
  throw Error(Errc::failed_precondition, std::move(message)).in_file(dir.string());
}

// renameat2(RENAME_EXCHANGE); false (errno set) when the kernel or file system lacks it.
bool exchange(const fs::path& a, const fs::path& b) {
#ifdef SYS_renameat2
  constexpr unsigned kRenameExchange = 1u << 1;
  return ::syscall(SYS_renameat2, AT_FDCWD, a.c_str(), AT_FDCWD, b.c_str(), kRenameExchange) == 0;
#else
  errno = ENOSYS;
  return false;
#endif
}

}  // namespace

// An exclusive flock on the target directory, held for the whole save by the coordinator.
struct FileSystemWriter::Lock {
  int fd = -1;
  ~Lock() {
    if (fd >= 0) ::close(fd);
  }
};

FileSystemWriter::FileSystemWriter(fs::path checkpoint_dir, WriteOptions options)
    : dir_(absolute_target(checkpoint_dir)), options_(std::move(options)), save_id_(new_save_id()) {}

FileSystemWriter::~FileSystemWriter() = default;

void FileSystemWriter::reset(std::optional<fs::path> checkpoint_dir) {
  if (checkpoint_dir) dir_ = absolute_target(*checkpoint_dir);
  save_id_ = new_save_id();
  staging_.clear();
  created_target_ = false;
  published_ = false;
  lock_.reset();
}

void FileSystemWriter::set_up_storage_writer(bool is_coordinator, int rank, int) {
  is_coordinator_ = is_coordinator;
  rank_ = rank;
  staging_.clear();
  if (!is_coordinator) return;
  std::error_code ec;
  if (!fs::exists(dir_, ec)) {
    if (!fs::create_directories(dir_, ec) && ec) throw os_error(dir_, "cannot create the checkpoint directory", ec.value());
    created_target_ = true;
  } else if (!fs::is_directory(dir_, ec)) {
    refuse(dir_, "exists and is not a directory");
  }
  auto lock = std::make_unique<Lock>();
  lock->fd = ::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (lock->fd < 0) throw os_error(dir_, "cannot open the checkpoint directory", errno);
  if (::flock(lock->fd, LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) refuse(dir_, "another save into this directory is in progress");
    throw os_error(dir_, "cannot lock the checkpoint directory", errno);
  }
  bool holds_checkpoint = false;
  fs::directory_iterator it(dir_, ec);
  for (; !ec && it != fs::directory_iterator(); it.increment(ec)) {
    const auto name = it->path().filename().string();
    std::error_code type_ec;
    if (!it->is_regular_file(type_ec) || !is_checkpoint_file(name))
      refuse(dir_, "holds '" + name + "', which is not part of a checkpoint; refusing to replace it");
    holds_checkpoint = true;
  }
  if (ec) throw os_error(dir_, "cannot list the checkpoint directory", ec.value());
  if (holds_checkpoint && !options_.overwrite)
    refuse(dir_, "already holds a checkpoint; overwrite it explicitly (--overwrite) to replace it");
  lock_ = std::move(lock);
  // With the lock held no other save into this target runs: staging directories left by a
  // crashed one can go.
  for (const auto& stale : stale_staging_dirs(dir_)) remove_tree(stale);
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
  staging_ = dir_.parent_path() / (staging_prefix(dir_) + save_id_);
  if (::mkdir(staging_.c_str(), 0755) != 0) {
    const int err = errno;
    staging_.clear();
    throw os_error(dir_.parent_path() / (staging_prefix(dir_) + save_id_), "cannot create the staging directory", err);
  }
  struct stat st {};
  if (::stat(dir_.c_str(), &st) == 0) (void)::chmod(staging_.c_str(), st.st_mode & 07777);  // keep the target's mode
  for (std::size_t i = 0; i < plans.size(); ++i)
    plans[i].storage_data = staging_.filename().string() + "\n__" + std::to_string(i) + "_";
  return plans;
}

metadata::Metadata FileSystemWriter::finish(metadata::Metadata md,
                                            const std::vector<std::vector<planning::WriteResult>>& results) {
  if (staging_.empty()) throw Error(Errc::failed_precondition, "finish without prepare_global_plan").in_file(dir_.string());
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
  // Check what we are about to publish exactly as a reader will.
  try {
    const auto validated = metadata::validate(md);
    metadata::check_storage_bounds(validated, [&](std::string_view name) -> std::optional<std::uint64_t> {
      std::error_code ec;
      const auto size = fs::file_size(staging_ / std::string(name), ec);
      if (ec) return std::nullopt;
      return size;
    });
  } catch (Error& e) {
    throw Error(Errc::internal, "the checkpoint written fails its own checks: " + std::string(e.what())).in_file(dir_.string());
  }
  const auto bytes = metadata::encode_metadata(md, md.flavor);
  {
    OutputFile file(staging_ / ".metadata.tmp", /*exclusive=*/true);
    file.write(bytes);
    file.close(options_.sync_files);
  }
  if (::rename((staging_ / ".metadata.tmp").c_str(), (staging_ / ".metadata").c_str()) != 0)
    throw os_error(staging_ / ".metadata", "cannot rename .metadata.tmp to", errno);
  if (options_.sync_files) sync_directory(staging_);
  if (options_.before_publish) options_.before_publish();

  // Publish: swap the staging directory with the target, then drop the old contents.
  const auto parent = dir_.parent_path();
  if (!exchange(staging_, dir_)) {
    const int err = errno;
    if (err != EINVAL && err != ENOSYS && err != ENOTSUP) throw os_error(dir_, "cannot move the new checkpoint into place", err);
    // No RENAME_EXCHANGE here: move the old directory aside, then the new one in (a crash
    // between the two renames leaves the target missing and both copies beside it).
    const auto aside = parent / (staging_prefix(dir_) + save_id_ + ".old");
    if (::rename(dir_.c_str(), aside.c_str()) != 0) throw os_error(dir_, "cannot move the old checkpoint aside", errno);
    if (::rename(staging_.c_str(), dir_.c_str()) != 0) throw os_error(dir_, "cannot move the new checkpoint into place", errno);
    staging_ = aside;
  }
  published_ = true;
  if (options_.sync_files) sync_directory(parent);
  remove_tree(staging_);  // now the previous contents
  staging_.clear();
  lock_.reset();
  created_target_ = false;
  return md;
}

void FileSystemWriter::abort() noexcept {
  if (published_) return;
  if (is_coordinator_) {
    if (!staging_.empty()) remove_tree(staging_);
    if (created_target_) {
      std::error_code ec;
      fs::remove(dir_, ec);  // only if still empty
    }
  }
  staging_.clear();
  lock_.reset();
  created_target_ = false;
}

std::vector<fs::path> stale_staging_dirs(const fs::path& checkpoint_dir) {
  const auto target = absolute_target(checkpoint_dir);
  const auto prefix = staging_prefix(target);
  std::vector<fs::path> found;
  std::error_code ec;
  // Exactly prefix + save id (36 characters) [+ ".old"]: a sibling target whose own name
  // starts with "<name>.dcpp-" must not match.
  for (fs::directory_iterator it(target.parent_path(), ec), end; !ec && it != end; it.increment(ec)) {
    const auto name = it->path().filename().string();
    if (!name.starts_with(prefix)) continue;
    auto id = std::string_view(name).substr(prefix.size());
    if (id.ends_with(".old")) id.remove_suffix(4);
    const bool is_save_id = id.size() == 36 && id.find_first_not_of("0123456789abcdef-") == std::string_view::npos;
    if (is_save_id) found.push_back(it->path());
  }
  return found;
}

}  // namespace dcp::storage
