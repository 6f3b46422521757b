// SafetensorsReader: a checkpoint's metadata from the headers of its safetensors files, and the
// choice of reader from what a path holds.
module;
#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <new>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <sys/stat.h>
#include <utility>
#include <vector>
module dcp.storage;
import dcp.error;
import dcp.bytes;
import dcp.metadata;
import dcp.safetensors;

namespace dcp::storage {
namespace {

namespace fs = std::filesystem;
namespace st = dcp::safetensors;
using metadata::Source;

// More files than any model has (the largest public repositories hold a few hundred shards).
constexpr std::size_t kMaxFiles = std::size_t{1} << 16;
constexpr std::string_view kBundleMagic = "DST1";

bool is_checkpoint_file_name(std::string_view name) {
  return name.size() > std::string_view(".safetensors").size() && name.ends_with(".safetensors") && name.front() != '.';
}

// The `*.safetensors` regular files of `dir` (links followed), sorted; hidden names are not
// checkpoint files. Empty when `dir` cannot be listed.
std::vector<std::string> safetensors_files(const fs::path& dir) {
  std::vector<std::string> names;
  std::error_code ec;
  for (auto it = fs::directory_iterator(dir, ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
    auto name = it->path().filename().string();
    std::error_code kind;
    if (!is_checkpoint_file_name(name) || !fs::is_regular_file(it->path(), kind)) continue;
    if (names.size() == kMaxFiles)
      throw Error(Errc::resource_exhausted, "more than " + std::to_string(kMaxFiles) + " safetensors files")
          .in_file(dir.string());
    names.push_back(std::move(name));
  }
  std::sort(names.begin(), names.end());
  return names;
}

bool name_exists(const fs::path& path) {
  std::error_code ec;
  return fs::exists(path, ec);
}

fs::path reader_dir(const fs::path& path, Source source) {
  if (source == Source::safetensors_file) return path.has_parent_path() ? path.parent_path() : fs::path(".");
  if (source == Source::hf_sharded && safetensors_files(path).empty()) return path / st::kShardedDir;
  return path;
}

// An error moved to another file (Error keeps the innermost file it was given).
Error in_other_file(const Error& e, const fs::path& file) {
  Error moved(e.code(), e.message());
  moved.in_file(file.string()).for_key(e.context().key);
  if (e.context().byte_offset) moved.at_offset(*e.context().byte_offset);
  if (e.context().rank) moved.on_rank(*e.context().rank);
  return moved;
}

// The bundle read_metadata_bytes makes: "DST1", the source, the index text (may be empty),
// then each file's name, size and header text. Integers little-endian.
class BundleWriter {
 public:
  void u64(std::uint64_t v) { append_le(out_, v, 8); }
  void text(std::string_view s) {
    u64(s.size());
    const auto* p = reinterpret_cast<const std::byte*>(s.data());
    out_.insert(out_.end(), p, p + s.size());
  }
  std::vector<std::byte> take() { return std::move(out_); }

 private:
  std::vector<std::byte> out_;
};

class BundleReader {
 public:
  explicit BundleReader(std::span<const std::byte> bytes) : bytes_(bytes) {}
  std::uint64_t u64() {
    need(8);
    const std::uint64_t v = load_le(bytes_.subspan(pos_), 8);
    pos_ += 8;
    return v;
  }
  std::string_view text() {
    const auto n = u64();
    need(n);
    std::string_view s(reinterpret_cast<const char*>(bytes_.data() + pos_), static_cast<std::size_t>(n));
    pos_ += static_cast<std::size_t>(n);
    return s;
  }
  bool done() const { return pos_ == bytes_.size(); }

 private:
  void need(std::uint64_t n) const {
    if (n > bytes_.size() - pos_) throw Error(Errc::data_loss, "safetensors headers sent by the coordinator end early").at_offset(pos_);
  }
  std::span<const std::byte> bytes_;
  std::size_t pos_ = 0;
};

// A file's header text: its length field checked against the file's size, then the text.
std::string read_header_text(const fs::path& path, std::uint64_t& file_size) {
  struct stat s {};
  if (::stat(path.c_str(), &s) != 0) throw os_error(path, "cannot stat", errno);
  if (!S_ISREG(s.st_mode)) throw Error(Errc::invalid_argument, "not a regular file").in_file(path.string());
  Fd fd(path);
  if (::fstat(fd.get(), &s) != 0) throw os_error(path, "cannot stat", errno);
  file_size = static_cast<std::uint64_t>(s.st_size);
  std::byte prefix[st::kLengthBytes] = {};
  try {
    if (file_size >= st::kLengthBytes) pread_all(fd.get(), path, 0, prefix);
    const auto length = st::header_length(std::span(prefix, file_size >= st::kLengthBytes ? st::kLengthBytes : 0), file_size);
    std::string text(static_cast<std::size_t>(length), '\0');
    pread_all(fd.get(), path, st::kLengthBytes, std::as_writable_bytes(std::span(text.data(), text.size())));
    return text;
  } catch (Error& e) {
    throw e.in_file(path.string());
  }
}

}  // namespace

Source detect_source(const fs::path& path) {
  std::error_code ec;
  const auto status = fs::status(path, ec);
  if (fs::is_regular_file(status))
    return path.filename().string().ends_with(".safetensors") ? Source::safetensors_file : Source::dcp;
  if (!fs::is_directory(status) || name_exists(path / ".metadata") || name_exists(path / ".metadata.tmp")) return Source::dcp;
  if (name_exists(path / st::kIndexFile)) return Source::hf_index;
  if (!safetensors_files(path).empty()) return Source::hf_directory;
  if (!safetensors_files(path / st::kShardedDir).empty()) return Source::hf_sharded;
  return Source::dcp;
}

std::unique_ptr<StorageReader> open_reader(const fs::path& path, ReadOptions options) {
  if (!scheme_of(path.native()).empty()) return open_scheme_reader(path.native(), options);
  const auto source = detect_source(path);
  if (source == Source::dcp) return std::make_unique<FileSystemReader>(path, options);
  return std::make_unique<SafetensorsReader>(path, source, options);
}

SafetensorsReader::SafetensorsReader(const fs::path& path, Source source, ReadOptions options)
    : FileSystemReader(reader_dir(path, source), options), source_(source) {
  if (source == Source::safetensors_file) file_ = path.filename().string();
}

metadata::ValidatedMetadata SafetensorsReader::read_metadata() const { return metadata_from_bytes(read_metadata_bytes()); }

std::vector<std::byte> SafetensorsReader::read_metadata_bytes() const {
  std::vector<std::string> names;
  std::string index_text;
  if (file_) {
    names.push_back(*file_);
  } else if (source_ == Source::hf_index) {
    const auto index_path = path_of(st::kIndexFile);
    const auto bytes = read_file(index_path, st::kMaxIndexBytes);
    index_text.assign(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    try {
      const auto index = st::parse_index(index_text);
      for (const auto* mention : st::index_files(index)) {
        if (!file_size(mention->file))
          throw Error(Errc::not_found, "names '" + escape_text(mention->file) + "', which is missing (or not a regular file)")
              .for_key(mention->key)
              .at_offset(mention->offset);
        names.push_back(mention->file);
      }
    } catch (Error& e) {
      throw e.in_file(index_path.string());
    }
  } else {
    names = safetensors_files(directory());
    if (names.empty())
      throw Error(Errc::not_found, "no .safetensors files (and no .metadata): not a checkpoint directory")
          .in_file(directory().string());
  }
  BundleWriter out;
  out.text(kBundleMagic);
  out.u64(static_cast<std::uint64_t>(source_));
  out.text(index_text);
  out.u64(names.size());
  std::uint64_t total = 0;
  for (const auto& name : names) {
    std::uint64_t size = 0;
    const auto text = read_header_text(path_of(name), size);
    total += text.size();
    if (total > kMaxMetadataBytes)
      throw Error(Errc::resource_exhausted, "the headers pass " + std::to_string(kMaxMetadataBytes) + " bytes together")
          .in_file(path_of(name).string());
    out.text(name);
    out.u64(size);
    out.text(text);
  }
  return out.take();
}

metadata::ValidatedMetadata SafetensorsReader::metadata_from_bytes(std::span<const std::byte> bytes) const {
  std::vector<st::FileHeader> files;
  std::optional<st::Index> index;
  const fs::path index_path = path_of(st::kIndexFile);
  Source source = source_;
  try {
    BundleReader in(bytes);
    if (in.text() != kBundleMagic) throw Error(Errc::data_loss, "not the safetensors headers of a checkpoint").at_offset(0);
    const auto sent_source = in.u64();
    if (sent_source > static_cast<std::uint64_t>(Source::hf_sharded))
      throw Error(Errc::data_loss, "unknown checkpoint source " + std::to_string(sent_source));
    source = static_cast<Source>(sent_source);
    const auto index_text = in.text();
    if (!index_text.empty()) {
      try {
        index = st::parse_index(index_text);
      } catch (Error& e) {
        throw e.in_file(index_path.string());
      }
    }
    const auto count = in.u64();
    if (count > kMaxFiles) throw Error(Errc::resource_exhausted, "more than " + std::to_string(kMaxFiles) + " files");
    for (std::uint64_t i = 0; i < count; ++i) {
      std::string name(in.text());
      const auto size = in.u64();
      const auto text = in.text();
      if (!metadata::is_safe_relative_path(name))
        throw Error(Errc::data_loss, "'" + escape_text(name) + "' is not a file name of the checkpoint's directory");
      try {
        files.push_back({name, st::parse_header(text, size)});
      } catch (Error& e) {
        throw e.in_file(path_of(name).string());
      }
    }
    if (!in.done()) throw Error(Errc::data_loss, "bytes after the safetensors headers");
  } catch (Error& e) {
    throw e.in_file(directory().string());
  } catch (const std::bad_alloc&) {
    throw Error(Errc::resource_exhausted, "out of memory for the safetensors headers").in_file(directory().string());
  }
  std::optional<metadata::ValidatedMetadata> validated;
  try {
    validated = metadata::validate(st::build_metadata(files, source, index ? &*index : nullptr));
  } catch (const Error& e) {
    // build_metadata names a file of the directory (or the index) by its name.
    throw in_other_file(e, e.context().file.empty() ? directory() : path_of(e.context().file));
  } catch (const std::bad_alloc&) {
    throw Error(Errc::resource_exhausted, "out of memory for the checkpoint's metadata").in_file(directory().string());
  }
  check_against_files(*validated, index ? index_path : file_ ? path_of(*file_) : directory());
  return *std::move(validated);
}

}  // namespace dcp::storage
