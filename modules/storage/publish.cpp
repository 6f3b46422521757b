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
// next save into the directory removes exactly those. Every name is opened relative to the
// directory's descriptor with O_NOFOLLOW, and only regular files are ever removed.
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

namespace {

constexpr std::string_view kRecordTag = ".dcpp-";
constexpr std::string_view kRecordSuffix = ".save";
constexpr std::string_view kMetadataSuffix = ".metadata";
constexpr std::string_view kRecordMagic = "dcpp save record 1";
// A record is a few lines per rank and per replaced file; one longer than this is not ours.
constexpr std::uint64_t kMaxRecordBytes = std::uint64_t{256} << 20;

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

bool is_save_id(std::string_view id) {
  if (id.size() != 36) return false;
  for (std::size_t i = 0; i < id.size(); ++i) {
    const bool dash = i == 8 || i == 13 || i == 18 || i == 23;
    const char c = id[i];
    if (dash ? c != '-' : !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

std::string record_name(std::string_view id) {
  return std::string(kRecordTag) + std::string(id) + std::string(kRecordSuffix);
}
std::string pending_metadata_name(std::string_view id) {
  return std::string(kRecordTag) + std::string(id) + std::string(kMetadataSuffix);
}

// The save id of a record's name (`.dcpp-<id>.save`), or empty.
std::string_view record_id(std::string_view name) {
  if (!name.starts_with(kRecordTag) || !name.ends_with(kRecordSuffix)) return {};
  const auto id = name.substr(kRecordTag.size(), name.size() - kRecordTag.size() - kRecordSuffix.size());
  return is_save_id(id) ? id : std::string_view{};
}

// Consumes a run of decimal digits (no leading zero unless it is "0"); nullopt if none.
std::optional<std::uint64_t> take_number(std::string_view& s) {
  std::size_t n = 0;
  std::uint64_t value = 0;
  while (n < s.size() && n < 10 && s[n] >= '0' && s[n] <= '9') value = value * 10 + static_cast<std::uint64_t>(s[n++] - '0');
  if (n == 0 || (n > 1 && s[0] == '0')) return std::nullopt;
  s.remove_prefix(n);
  return value;
}

// Whether `name` is `__{rank}_{marker}{n}.distcp` with rank < ranks: a data file of the save
// whose file marker is `marker` ("" or "g{G}_").
bool is_data_file_of(std::string_view name, std::string_view marker, std::uint64_t ranks) {
  if (!name.starts_with("__")) return false;
  name.remove_prefix(2);
  const auto rank = take_number(name);
  if (!rank || *rank >= ranks || !name.starts_with('_')) return false;
  name.remove_prefix(1);
  if (!name.starts_with(marker)) return false;
  name.remove_prefix(marker.size());
  if (!take_number(name)) return false;
  return name == ".distcp";
}

// The generation G of a marked data file name `__{r}_g{G}_...`, or 0.
std::uint64_t generation_of(std::string_view name) {
  if (!name.starts_with("__")) return 0;
  name.remove_prefix(2);
  if (!take_number(name) || !name.starts_with("_g")) return 0;
  name.remove_prefix(2);
  const auto g = take_number(name);
  return g && name.starts_with('_') ? *g : 0;
}

[[noreturn]] void refuse(const fs::path& dir, std::string message) {
  throw Error(Errc::failed_precondition, std::move(message)).in_file(dir.string());
}

// The target as an absolute path without a trailing slash. A symlink to a directory is the
// user's way to name that directory: the save writes inside it.
fs::path absolute_target(const fs::path& dir) {
  auto abs = fs::absolute(dir).lexically_normal();
  if (!abs.has_filename()) abs = abs.parent_path();
  return abs;
}

// lstat of `name` in the directory; nullopt when absent.
std::optional<struct stat> entry_stat(int dir_fd, const std::string& name, const fs::path& dir) {
  struct stat st {};
  if (::fstatat(dir_fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) return st;
  if (errno == ENOENT) return std::nullopt;
  throw os_error(dir / name, "cannot stat", errno);
}

// Names in the directory (without "." and ".."), read through the descriptor.
std::vector<std::string> list_names(int dir_fd, const fs::path& dir) {
  const int fd = ::openat(dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw os_error(dir, "cannot list the checkpoint directory", errno);
  DIR* stream = ::fdopendir(fd);
  if (!stream) {
    const int err = errno;
    ::close(fd);
    throw os_error(dir, "cannot list the checkpoint directory", err);
  }
  std::vector<std::string> names;
  errno = 0;
  while (const dirent* entry = ::readdir(stream)) {
    const std::string_view name = entry->d_name;
    if (name != "." && name != "..") names.emplace_back(name);
    errno = 0;
  }
  const int err = errno;
  ::closedir(stream);
  if (err != 0) throw os_error(dir, "cannot list the checkpoint directory", err);
  return names;
}

// Reads a regular file of the directory (never through a link, never a FIFO) of at most
// `max_bytes`.
std::vector<std::byte> read_entry(int dir_fd, const std::string& name, const fs::path& dir, std::uint64_t max_bytes) {
  const int fd = ::openat(dir_fd, name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) throw os_error(dir / name, "cannot open", errno);
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) throw os_error(dir / name, "cannot stat", errno);
  if (!S_ISREG(st.st_mode)) refuse(dir / name, "is not a regular file");
  if (static_cast<std::uint64_t>(st.st_size) > max_bytes)
    throw Error(Errc::out_of_range, "file of " + std::to_string(st.st_size) + " bytes exceeds the limit of " +
                                        std::to_string(max_bytes))
        .in_file((dir / name).string());
  std::vector<std::byte> bytes(static_cast<std::size_t>(st.st_size));
  pread_all(fd, dir / name, 0, bytes);
  return bytes;
}

// The single-component data file names a `.metadata` names (a name with a directory part is
// never removed: only what lies in the directory itself is ours to manage).
std::set<std::string, std::less<>> files_named(std::span<const std::byte> metadata_bytes) {
  std::set<std::string, std::less<>> names;
  const auto md = metadata::decode_metadata(metadata_bytes);
  for (const auto& [index, info] : md.storage_data)
    if (metadata::is_safe_relative_path(info.relative_path) && info.relative_path.find('/') == std::string::npos)
      names.insert(info.relative_path);
  return names;
}

// What `.metadata` names now: nullopt when it exists but cannot be read or decoded (then no
// file may be judged unreferenced).
std::optional<std::set<std::string, std::less<>>> current_references(int dir_fd, const fs::path& dir) {
  const auto st = entry_stat(dir_fd, ".metadata", dir);
  if (!st) return std::set<std::string, std::less<>>{};
  if (!S_ISREG(st->st_mode)) return std::nullopt;
  try {
    return files_named(read_entry(dir_fd, ".metadata", dir, kMaxMetadataBytes));
  } catch (const Error&) {
    return std::nullopt;
  }
}

// Removes `name` if it is a regular file (a link, directory or anything else stays). False
// when it is there and could not be removed.
bool remove_regular(int dir_fd, const std::string& name) noexcept {
  struct stat st {};
  if (::fstatat(dir_fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) return errno == ENOENT;
  if (!S_ISREG(st.st_mode)) return true;
  return ::unlinkat(dir_fd, name.c_str(), 0) == 0 || errno == ENOENT;
}

void sync_dir_fd(int dir_fd, const fs::path& dir) {
  if (::fsync(dir_fd) != 0) throw os_error(dir, "cannot sync directory", errno);
}

// A save's record: how its data files are named, how many ranks write them, and the files of
// the checkpoint it replaces.
struct SaveRecord {
  std::string id;
  std::string marker;  // "" or "g{G}_"
  std::uint64_t ranks = 0;
  std::vector<std::string> replaces;
  bool complete = false;  // the record was fully written (else the save never got to its data)
};

std::string encode_record(const SaveRecord& r) {
  std::string text = std::string(kRecordMagic) + "\nid " + r.id + "\nranks " + std::to_string(r.ranks) + "\nmarker " +
                     (r.marker.empty() ? "-" : r.marker) + "\n";
  for (const auto& name : r.replaces) text += "replaces " + name + "\n";
  return text + "end\n";
}

// A record as written by encode_record, or a torn prefix of one (the save was killed before
// the record was durable, so before any data file: it proves only its own names). Anything
// else is not ours: nullopt.
std::optional<SaveRecord> decode_record(std::span<const std::byte> bytes, std::string_view id) {
  std::string_view text(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  SaveRecord r;
  r.id = std::string(id);
  if (text.size() <= kRecordMagic.size()) {
    if (!kRecordMagic.starts_with(text)) return std::nullopt;
    return r;  // torn in its first line
  }
  bool first = true, has_ranks = false, has_marker = false;
  while (!text.empty()) {
    const auto eol = text.find('\n');
    if (eol == std::string_view::npos) break;  // a torn last line: the record is incomplete
    const auto line = text.substr(0, eol);
    text.remove_prefix(eol + 1);
    if (first) {
      if (line != kRecordMagic) return std::nullopt;
      first = false;
    } else if (line == "end") {
      r.complete = text.empty();
      if (!r.complete) return std::nullopt;
      break;
    } else if (line.starts_with("id ")) {
      if (line.substr(3) != id) return std::nullopt;
    } else if (line.starts_with("ranks ")) {
      auto n = line.substr(6);
      const auto v = take_number(n);
      if (!v || !n.empty()) return std::nullopt;
      r.ranks = *v;
      has_ranks = true;
    } else if (line.starts_with("marker ")) {
      const auto m = line.substr(7);
      if (m != "-") {
        auto rest = m;
        if (!rest.starts_with('g')) return std::nullopt;
        rest.remove_prefix(1);
        if (!take_number(rest) || rest != "_") return std::nullopt;
        r.marker = std::string(m);
      }
      has_marker = true;
    } else if (line.starts_with("replaces ")) {
      const auto name = line.substr(9);
      if (!metadata::is_safe_relative_path(name) || name.find('/') != std::string_view::npos) return std::nullopt;
      r.replaces.emplace_back(name);
    } else {
      return std::nullopt;
    }
  }
  if (first) return r;  // the first line torn after the magic's length: incomplete
  if (r.complete && (!has_ranks || !has_marker)) return std::nullopt;
  return r;
}

// Files of the directory that `record` proves are its save's and that `.metadata` does not
// name now: its data files, the files it was replacing, its unpublished `.metadata`. nullopt
// when `.metadata` cannot be read (nothing can be judged unreferenced then).
std::optional<std::vector<std::string>> unreferenced_files_of(const SaveRecord& record, const std::vector<std::string>& names,
                                                              int dir_fd, const fs::path& dir) {
  std::vector<std::string> out;
  const auto pending = pending_metadata_name(record.id);
  for (const auto& name : names)
    if (name == pending) out.push_back(name);
  if (!record.complete) return out;
  const auto referenced = current_references(dir_fd, dir);
  if (!referenced) return std::nullopt;
  std::set<std::string, std::less<>> replaced(record.replaces.begin(), record.replaces.end());
  for (const auto& name : names)
    if ((is_data_file_of(name, record.marker, record.ranks) || replaced.contains(name)) && !referenced->contains(name))
      out.push_back(name);
  return out;
}

struct Leftover {
  std::string record_file;
  std::vector<std::string> files;  // without the record itself
};

// Every record in the directory with the files it proves removable. A record whose
// `.metadata` cannot be judged is skipped (left for a later save).
std::vector<Leftover> find_leftovers(int dir_fd, const fs::path& dir, std::string_view except_id) {
  std::vector<Leftover> found;
  const auto names = list_names(dir_fd, dir);
  for (const auto& name : names) {
    const auto id = record_id(name);
    if (id.empty() || id == except_id) continue;
    std::optional<SaveRecord> record;
    try {
      record = decode_record(read_entry(dir_fd, name, dir, kMaxRecordBytes), id);
    } catch (const Error&) {
      continue;  // not a regular file, or unreadable: not provably ours
    }
    if (!record) continue;
    auto files = unreferenced_files_of(*record, names, dir_fd, dir);
    if (!files) continue;
    found.push_back({name, std::move(*files)});
  }
  return found;
}

}  // namespace

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
  lock->fd = ::dup(dir_fd_);
  if (lock->fd < 0) throw os_error(dir_, "cannot open the checkpoint directory", errno);
  // Some FUSE and NFS mounts have no locks: the save then goes ahead unlocked, but leaves other
  // saves' records alone (without the lock one of them may still be running).
  bool locked = true;
  if (::flock(lock->fd, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    if (err == EWOULDBLOCK) refuse(dir_, "another save into this directory is in progress");
    if (err != ENOLCK && err != EOPNOTSUPP && err != ENOSYS && err != EINVAL)
      throw os_error(dir_, "cannot lock the checkpoint directory", err);
    locked = false;
  }
  if (locked) remove_leftovers();

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
  bool removed = false;
  for (const auto& leftover : find_leftovers(dir_fd_, dir_, save_id_)) {
    bool all = true;
    for (const auto& name : leftover.files) all = remove_regular(dir_fd_, name) && all;
    // The record goes last, and only when everything it proves is gone.
    if (all) all = remove_regular(dir_fd_, leftover.record_file);
    removed = true;
  }
  if (removed && options_.sync_files) sync_dir_fd(dir_fd_, dir_);
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
  SaveRecord record{save_id_, marker_, plans.size(), replaces_, true};
  const auto text = encode_record(record);
  {
    OutputFile file(dir_fd_, record_name(save_id_), dir_ / record_name(save_id_));
    recorded_ = true;
    file.write(std::as_bytes(std::span(text.data(), text.size())));
    file.close(options_.sync_files);
  }
  if (options_.sync_files) sync_dir_fd(dir_fd_, dir_);
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
