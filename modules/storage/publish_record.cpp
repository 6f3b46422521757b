// The machinery both writers' publish protocols share (docs/format.md, "Publishing"): save
// ids and records (`.dcpp-<id>.save`: how a save names what it creates and which files of the
// replaced checkpoint it removes), the target's lock, and finding what crashed saves left.
// Every name is opened relative to the directory's descriptor with O_NOFOLLOW, and only
// regular files are ever removed. A record proves files removable only while the checkpoint
// published now does not name them: `.metadata` for a DCP save's record, the Hugging Face
// index (or, without one, every `*.safetensors`) for a record of layout hf.
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
#include <optional>
#include <random>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>
module dcp.storage;
import dcp.error;
import dcp.metadata;
import dcp.safetensors;

namespace dcp::storage::publishing {
namespace fs = std::filesystem;

namespace {
constexpr std::string_view kRecordTag = ".dcpp-";
constexpr std::string_view kRecordSuffix = ".save";
constexpr std::string_view kMetadataSuffix = ".metadata";
constexpr std::string_view kRecordMagic = "dcpp save record 1";
// A record is a few lines per rank and per replaced file; one longer than this is not ours.
constexpr std::uint64_t kMaxRecordBytes = std::uint64_t{256} << 20;

bool is_save_id(std::string_view id) {
  if (id.size() != 36) return false;
  for (std::size_t i = 0; i < id.size(); ++i) {
    const bool dash = i == 8 || i == 13 || i == 18 || i == 23;
    const char c = id[i];
    if (dash ? c != '-' : !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

// The save id of a record's name (`.dcpp-<id>.save`), or empty.
std::string_view record_id(std::string_view name) {
  if (!name.starts_with(kRecordTag) || !name.ends_with(kRecordSuffix)) return {};
  const auto id = name.substr(kRecordTag.size(), name.size() - kRecordTag.size() - kRecordSuffix.size());
  return is_save_id(id) ? id : std::string_view{};
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
    } else if (line == "layout hf") {
      r.layout = Layout::hf;
    } else if (line.starts_with("replaces ") || line.starts_with("creates ")) {
      const bool replaces = line.starts_with("replaces ");
      const auto name = line.substr(replaces ? 9 : 8);
      if (!metadata::is_safe_relative_path(name) || name.find('/') != std::string_view::npos) return std::nullopt;
      (replaces ? r.replaces : r.creates).emplace_back(name);
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
  const auto referenced = record.layout == Layout::hf ? hf_files(dir_fd, dir) : current_references(dir_fd, dir);
  if (!referenced) return std::nullopt;
  std::set<std::string, std::less<>> replaced(record.replaces.begin(), record.replaces.end());
  replaced.insert(record.creates.begin(), record.creates.end());
  for (const auto& name : names)
    if (name != pending && (is_data_file_of(name, record.marker, record.ranks) || replaced.contains(name)) &&
        !referenced->contains(name))
      out.push_back(name);
  return out;
}

}  // namespace

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


std::string record_name(std::string_view id) {
  return std::string(kRecordTag) + std::string(id) + std::string(kRecordSuffix);
}
std::string pending_metadata_name(std::string_view id) {
  return std::string(kRecordTag) + std::string(id) + std::string(kMetadataSuffix);
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

std::string encode_record(const SaveRecord& r) {
  std::string text = std::string(kRecordMagic) + "\nid " + r.id + "\nranks " + std::to_string(r.ranks) + "\nmarker " +
                     (r.marker.empty() ? "-" : r.marker) + "\n";
  if (r.layout == Layout::hf) text += "layout hf\n";
  for (const auto& name : r.creates) text += "creates " + name + "\n";
  for (const auto& name : r.replaces) text += "replaces " + name + "\n";
  return text + "end\n";
}




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

std::string pending_name(std::string_view id, std::string_view suffix) {
  return std::string(kRecordTag) + std::string(id) + std::string(suffix);
}

std::optional<std::set<std::string, std::less<>>> hf_files(int dir_fd, const fs::path& dir) {
  std::set<std::string, std::less<>> names;
  const std::string index(safetensors::kIndexFile);
  if (const auto st = entry_stat(dir_fd, index, dir)) {
    if (!S_ISREG(st->st_mode)) return std::nullopt;
    try {
      const auto bytes = read_entry(dir_fd, index, dir, safetensors::kMaxIndexBytes);
      const auto parsed = safetensors::parse_index({reinterpret_cast<const char*>(bytes.data()), bytes.size()});
      for (const auto* entry : safetensors::index_files(parsed)) names.insert(entry->file);
    } catch (const Error&) {
      return std::nullopt;
    }
    names.insert(index);
    return names;
  }
  for (auto& name : list_names(dir_fd, dir))
    if (!name.starts_with('.') && name.ends_with(".safetensors")) names.insert(std::move(name));
  return names;
}

int lock_directory(int dir_fd, const fs::path& dir) {
  const int fd = ::dup(dir_fd);
  if (fd < 0) throw os_error(dir, "cannot open the checkpoint directory", errno);
  if (::flock(fd, LOCK_EX | LOCK_NB) == 0) return fd;
  const int err = errno;
  ::close(fd);
  if (err == EWOULDBLOCK) refuse(dir, "another save into this directory is in progress");
  // Some FUSE and NFS mounts have no locks: the save then goes ahead unlocked, but leaves other
  // saves' records alone (without the lock one of them may still be running).
  if (err != ENOLCK && err != EOPNOTSUPP && err != ENOSYS && err != EINVAL)
    throw os_error(dir, "cannot lock the checkpoint directory", err);
  return -1;
}

bool remove_leftovers(int dir_fd, const fs::path& dir, std::string_view except_id) {
  bool removed = false;
  for (const auto& leftover : find_leftovers(dir_fd, dir, except_id)) {
    bool all = true;
    for (const auto& name : leftover.files) all = remove_regular(dir_fd, name) && all;
    // The record goes last, and only when everything it proves is gone.
    if (all) all = remove_regular(dir_fd, leftover.record_file);
    removed = true;
  }
  return removed;
}

void write_record(int dir_fd, const fs::path& dir, const SaveRecord& record, bool sync) {
  const auto text = encode_record(record);
  const auto name = record_name(record.id);
  OutputFile file(dir_fd, name, dir / name);
  file.write(std::as_bytes(std::span(text.data(), text.size())));
  file.close(sync);
  if (sync) sync_dir_fd(dir_fd, dir);
}

}  // namespace dcp::storage::publishing
