// dcp.safetensors — the safetensors format and Hugging Face's model directories, as codecs.
//
// A safetensors file is an 8-byte little-endian header length, a JSON header (each tensor's
// dtype code, shape and `data_offsets` in the data section; `__metadata__` strings) and the
// data section: each tensor's raw row-major bytes. A model directory holds one file or shards
// with `model.safetensors.index.json` (`weight_map`: key → file); torch's
// HuggingFaceStorageWriter with `save_distributed` writes per-rank files whose `__metadata__`
// `DCP_SHARDING_INFO` gives each tensor piece's `saved_offsets`. This module reads and writes
// those texts (`parse_header`/`encode_header`, `parse_index`/`encode_index`,
// `parse_sharding_info`/`encode_sharding_info`) and builds a checkpoint's `metadata::Metadata`
// from the headers of a set of files (`build_metadata`): each tensor an item, each file's piece a
// chunk, each chunk's storage entry the piece's byte range marked `raw`, so the planner and the
// storage layer read them as they read a DCP checkpoint. No I/O: readers (dcp.storage) and
// writers bring the bytes. Everything it reads is untrusted: bounded (100 MB per header, the
// format's own limit), every offset checked, errors naming the file, key and byte.
// Imports: dcp.error, dcp.dtype, dcp.json, dcp.layout, dcp.metadata.
module;
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>
export module dcp.safetensors;
import dcp.error;
import dcp.dtype;
import dcp.metadata;

namespace dcp::safetensors {
// Not exported: shared by the implementation units.
/// The offset of the member name that follows `offset` (JsonReader::offset() before next_key:
/// the separating ',' or the name's '"') in `text`, which starts at file offset `base`.
std::uint64_t member_offset(std::string_view text, std::uint64_t base, std::uint64_t offset) noexcept;
}  // namespace dcp::safetensors

export namespace dcp::safetensors {

/// The safetensors library's bound on a header (its MAX_HEADER_SIZE).
inline constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;
/// The header length field before the header.
inline constexpr std::uint64_t kLengthBytes = 8;
/// Hugging Face's index of a sharded model (transformers' SAFE_WEIGHTS_INDEX_NAME).
inline constexpr std::string_view kIndexFile = "model.safetensors.index.json";
/// Where HuggingFaceStorageWriter puts the per-rank files when it also consolidates.
inline constexpr std::string_view kShardedDir = "sharded";
/// The `__metadata__` keys torch's HuggingFaceStorageWriter writes.
inline constexpr std::string_view kShardingInfoKey = "DCP_SHARDING_INFO";
inline constexpr std::string_view kDcpVersionKey = "DCP_VERSION";
/// An index file larger than this is refused (the largest real ones are a few MB).
inline constexpr std::uint64_t kMaxIndexBytes = 1'000'000'000;

/// One tensor of a header.
struct Entry {
  std::string key;
  DType dtype = DType::float32;
  metadata::Shape shape;
  std::uint64_t begin = 0;   ///< data_offsets[0], relative to the data section
  std::uint64_t end = 0;     ///< data_offsets[1]
  std::uint64_t offset = 0;  ///< file offset of the entry's key in the header, for errors
};

/// A parsed header.
struct Header {
  std::vector<Entry> entries;  ///< in header order
  std::vector<std::pair<std::string, std::string>> metadata;  ///< `__metadata__`'s strings, in order
  std::uint64_t metadata_offset = 0;  ///< file offset of `__metadata__`'s value (0: none)
  std::uint64_t data_start = 0;       ///< file offset of the data section (8 + header length)
  /// The `__metadata__` string under `key`; nullptr when there is none.
  const std::string* find_metadata(std::string_view key) const;
};

/// The header length that a file's first 8 bytes (`prefix`, at least that many) give, checked
/// against the 100 MB limit and `file_size`. Throws data_loss at byte 0.
std::uint64_t header_length(std::span<const std::byte> prefix, std::uint64_t file_size);

/// Parses the header text of a file of `file_size` bytes (`json`: the header_length bytes after
/// the length field). Every entry has exactly `dtype` (a code of dcp.dtype's table: unimplemented
/// otherwise), `shape` (at most metadata::kMaxRank dims, each below 2^63) and `data_offsets`
/// [begin, end] inside the data section holding exactly the tensor's bytes; no two tensors
/// share bytes (gaps are allowed); no key appears twice. `__metadata__`'s string values are
/// kept, anything else in it skipped (DCP_SHARDING_INFO must be a string). `on_entry` sees
/// each entry once its data_offsets lie in the data section, before its size is checked against
/// its shape and before it is kept (an import charges its budget there, so a hostile shape meets
/// the budget first). Throws dcp::Error naming the key and the file offset (no file name: the
/// caller adds it).
Header parse_header(std::string_view json, std::uint64_t file_size,
                    const std::function<void(const Entry&)>& on_entry = {});

/// A whole header as the safetensors library writes one: the length field, then
/// `{"__metadata__": {...}, "key": {"dtype", "shape", "data_offsets"}, ...}` (entries in the
/// order given; `__metadata__` left out when empty), padded with spaces to a multiple of 8.
/// Throws unimplemented (with the key) for a dtype safetensors has no code for, and
/// resource_exhausted past kMaxHeaderBytes.
std::string encode_header(std::span<const Entry> entries, std::span<const std::pair<std::string, std::string>> metadata);

/// One `weight_map` entry of an index file.
struct IndexEntry {
  std::string key;
  std::string file;
  std::uint64_t offset = 0;  ///< byte of the entry in the index file, for errors
};
/// `model.safetensors.index.json`: `{"metadata": {"total_size": N, ...}, "weight_map": {key: file}}`.
struct Index {
  std::optional<std::uint64_t> total_size;
  std::vector<IndexEntry> weight_map;  ///< in file order
};
/// Parses an index file's text (other members, and other fields of "metadata", are skipped).
/// A key listed twice is data_loss. Errors name the key and byte; the caller adds the file.
Index parse_index(std::string_view json);
/// The files `index` names, each once, in the order of their first mention (that mention, for
/// errors). A name that is not a plain file name of the index's directory (a path, "..", "")
/// is data_loss naming the key and byte; the caller adds the index file.
std::vector<const IndexEntry*> index_files(const Index& index);
/// An index file's text as transformers writes it (indent 2, weight_map in the order given).
std::string encode_index(std::uint64_t total_size, std::span<const std::pair<std::string, std::string>> weight_map);

/// `DCP_SHARDING_INFO`: `{key: {"saved_offsets": [..]}, ...}`, a JSON text inside a
/// `__metadata__` string. `base_offset` is the file offset errors count from. A key listed twice
/// is data_loss.
std::vector<std::pair<std::string, metadata::Shape>> parse_sharding_info(std::string_view json,
                                                                        std::uint64_t base_offset = 0);
/// The same JSON as torch writes (`json.dumps` of the dict, its separators:
/// `{"k": {"saved_offsets": [0, 4]}}`; non-ASCII text as UTF-8 rather than \u escapes).
std::string encode_sharding_info(std::span<const std::pair<std::string, metadata::Shape>> offsets);

/// One file of a checkpoint: its name (relative to the checkpoint's directory) and its header.
struct FileHeader {
  std::string name;
  Header header;
};

/// The checkpoint metadata of `files` (`source`: how they were found; hf_directory becomes
/// hf_sharded when a file has DCP_SHARDING_INFO). Each tensor is an item with its dtype and the
/// shape its pieces span (torch's HuggingFaceStorageReader: the largest offset + size per dim);
/// each piece a chunk at its `saved_offsets` (zeros without DCP_SHARDING_INFO), stored as a
/// `raw` range of its file. Items in file order, then header order; flavor torch 2.x, no
/// planner_data. With `index` (read from `index_name`), its weight_map and the headers must
/// agree: each key in the file the index names, each key of those files in the index.
/// Checked as `.metadata` is (metadata::check_chunks): a key in two files without sharding info,
/// pieces that overlap, leave holes, differ in dtype or rank, or lie past 2^63 are data_loss
/// naming the file, the key and the byte of its entry. The result passes metadata::validate.
metadata::Metadata build_metadata(std::span<const FileHeader> files, metadata::Source source,
                                  const Index* index = nullptr, std::string_view index_name = kIndexFile);

}  // namespace dcp::safetensors
