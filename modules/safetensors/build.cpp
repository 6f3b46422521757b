// A checkpoint's metadata from the headers of its safetensors files: each tensor an item, each
// file's piece a chunk stored as a raw byte range, checked as `.metadata` is checked.
module;
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>
module dcp.safetensors;
import dcp.error;
import dcp.dtype;
import dcp.metadata;

namespace dcp::safetensors {
namespace {

using metadata::Shape;
using Names = std::unordered_map<std::string_view, std::size_t, metadata::Metadata::TextHash, std::equal_to<>>;

// A file's piece of a tensor, at its saved offsets.
struct Piece {
  std::size_t file = 0;
  const Entry* entry = nullptr;
  Shape offsets;
};

Error piece_error(std::string_view file, const Entry& entry, std::string message) {
  Error e(Errc::data_loss, std::move(message));
  e.in_file(file).for_key(entry.key).at_offset(entry.offset);
  return e;
}

// DCP_SHARDING_INFO of one file, by key; nullopt when the file has none.
std::optional<std::unordered_map<std::string, Shape, metadata::Metadata::TextHash, std::equal_to<>>> sharding_info(
    const FileHeader& file) {
  const std::string* text = file.header.find_metadata(kShardingInfoKey);
  if (!text) return std::nullopt;
  std::unordered_map<std::string, Shape, metadata::Metadata::TextHash, std::equal_to<>> offsets;
  try {
    for (auto& [key, shape] : parse_sharding_info(*text, file.header.metadata_offset)) offsets.emplace(std::move(key), std::move(shape));
  } catch (Error& e) {
    e.in_file(file.name);
    if (!e.context().byte_offset) e.at_offset(file.header.metadata_offset);
    throw;
  }
  std::unordered_map<std::string_view, bool> in_header;
  for (const auto& entry : file.header.entries) in_header.emplace(entry.key, true);
  for (const auto& [key, shape] : offsets)
    if (!in_header.contains(key))
      throw Error(Errc::data_loss, "DCP_SHARDING_INFO places a tensor the header does not hold")
          .in_file(file.name)
          .for_key(key)
          .at_offset(file.header.metadata_offset);
  return offsets;
}

// The weight_map must say where every key is, and only that.
void check_against_index(std::span<const FileHeader> files, const Names& item_of, const std::vector<std::vector<Piece>>& pieces,
                         const Index& index, std::string_view index_name) {
  Names listed;
  for (std::size_t i = 0; i < index.weight_map.size(); ++i) listed.emplace(index.weight_map[i].key, i);
  for (const auto& file : files)
    for (const auto& entry : file.header.entries) {
      const auto it = listed.find(entry.key);
      if (it == listed.end()) throw piece_error(file.name, entry, "the file holds a tensor that " + std::string(index_name) + " does not list");
      if (index.weight_map[it->second].file != file.name)
        throw piece_error(file.name, entry, std::string(index_name) + " places this tensor in '" +
                                                escape_text(index.weight_map[it->second].file) + "'");
    }
  for (const auto& e : index.weight_map)
    if (!item_of.contains(e.key) || pieces[item_of.find(e.key)->second].empty()) {
      Error err(Errc::data_loss, "the index places this tensor in '" + escape_text(e.file) + "', whose header does not hold it");
      err.in_file(index_name).for_key(e.key).at_offset(e.offset);
      throw err;
    }
}

// One tensor from its pieces: dtype and rank agree, the shape spans them (torch's rule), and
// they tile it.
// `kept` receives the piece of each chunk.
metadata::TensorStorageMetadata tensor_of(std::span<const FileHeader> files, const std::vector<Piece>& pieces,
                                          std::vector<const Piece*>& kept) {
  const Piece& first = pieces.front();
  const auto& file_of = [&](const Piece& p) -> const std::string& { return files[p.file].name; };
  metadata::TensorStorageMetadata t;
  t.properties.dtype = first.entry->dtype;
  t.size.assign(first.entry->shape.size(), 0);
  for (const auto& p : pieces) {
    if (p.entry->dtype != t.properties.dtype || p.entry->shape.size() != t.size.size())
      throw piece_error(file_of(p), *p.entry,
                        "this piece is " + std::string(dtype_name(p.entry->dtype)) + " of " +
                            std::to_string(p.entry->shape.size()) + " dims, the piece in '" + escape_text(file_of(first)) +
                            "' " + std::string(dtype_name(t.properties.dtype)) + " of " + std::to_string(t.size.size()));
    for (std::size_t d = 0; d < t.size.size(); ++d) {
      const auto end = checked_add(static_cast<std::uint64_t>(p.offsets[d]), static_cast<std::uint64_t>(p.entry->shape[d]));
      if (!end || *end > static_cast<std::uint64_t>(INT64_MAX))
        throw piece_error(file_of(p), *p.entry, "saved offset " + format_shape(p.offsets) + " + shape passes 2^63");
      t.size[d] = std::max(t.size[d], static_cast<std::int64_t>(*end));
    }
  }
  // An empty piece adds no elements (torch saves the empty shards of several ranks at one
  // offset); it still counts toward the shape, and an empty tensor keeps its first piece.
  kept.clear();
  for (const auto& p : pieces) {
    bool empty = false;
    for (auto n : p.entry->shape) empty = empty || n == 0;
    if (!empty) kept.push_back(&p);
  }
  if (kept.empty()) kept.push_back(&first);
  for (const Piece* p : kept) t.chunks.push_back({p->offsets, p->entry->shape, p->entry->offset});

  std::optional<metadata::ChunkProblem> problem;
  try {
    problem = metadata::check_chunks(t);
  } catch (Error& e) {
    throw e.in_file(file_of(first)).for_key(first.entry->key).at_offset(first.entry->offset);
  }
  if (!problem) return t;
  using Kind = metadata::ChunkProblem::Kind;
  if (problem->kind == Kind::gap)
    throw piece_error(file_of(first), *first.entry,
                      "the pieces in the files cover " + std::to_string(problem->covered) + " of the tensor's " +
                          std::to_string(problem->total) + " elements (shape " + format_shape(t.size) + ")");
  const Piece& p = *kept[problem->chunk];
  if (problem->kind == Kind::overlap) {
    const Piece& other = *kept[problem->other];
    throw piece_error(file_of(p), *p.entry,
                      "the piece at " + format_shape(p.offsets) + " overlaps the piece at " + format_shape(other.offsets) +
                          " in '" + escape_text(file_of(other)) + "'");
  }
  throw piece_error(file_of(p), *p.entry, "the piece at " + format_shape(p.offsets) + " of shape " +
                                              format_shape(p.entry->shape) + " lies outside the tensor " + format_shape(t.size));
}

}  // namespace

metadata::Metadata build_metadata(std::span<const FileHeader> files, metadata::Source source, const Index* index,
                                  std::string_view index_name) {
  metadata::Metadata md;
  md.flavor = metadata::Flavor::torch_2x;
  md.source = source;
  Names item_of;
  std::vector<std::string_view> keys;
  std::vector<std::vector<Piece>> pieces;
  std::vector<bool> file_sharded(files.size(), false);
  for (std::size_t f = 0; f < files.size(); ++f) {
    const FileHeader& file = files[f];
    if (!metadata::is_safe_relative_path(file.name))
      throw Error(Errc::invalid_argument, "not a file name of the checkpoint's directory").in_file(file.name);
    const auto info = sharding_info(file);
    file_sharded[f] = info.has_value();
    for (const auto& entry : file.header.entries) {
      Piece piece{f, &entry, Shape(entry.shape.size(), 0)};
      if (info) {
        const auto it = info->find(entry.key);
        if (it == info->end()) throw piece_error(file.name, entry, "DCP_SHARDING_INFO has no saved_offsets for this tensor");
        if (it->second.size() != entry.shape.size())
          throw piece_error(file.name, entry, "saved_offsets " + format_shape(it->second) + " do not have the tensor's " +
                                                  std::to_string(entry.shape.size()) + " dims");
        piece.offsets = it->second;
      }
      const auto [it, inserted] = item_of.try_emplace(entry.key, pieces.size());
      if (inserted) {
        keys.push_back(entry.key);
        pieces.emplace_back();
      } else {
        const Piece& before = pieces[it->second].front();
        if (!info || !file_sharded[before.file])
          throw piece_error(file.name, entry, "the tensor is in '" + escape_text(files[before.file].name) +
                                                  "' too (without DCP_SHARDING_INFO a tensor is in one file)");
      }
      pieces[it->second].push_back(std::move(piece));
    }
  }
  if (index) check_against_index(files, item_of, pieces, *index, index_name);
  if (source == metadata::Source::hf_directory && std::find(file_sharded.begin(), file_sharded.end(), true) != file_sharded.end())
    md.source = metadata::Source::hf_sharded;

  md.items.reserve(keys.size());
  std::vector<const Piece*> kept;
  for (std::size_t i = 0; i < keys.size(); ++i) {
    auto tensor = tensor_of(files, pieces[i], kept);
    const Entry& first = *pieces[i].front().entry;
    for (std::size_t k = 0; k < tensor.chunks.size(); ++k) {
      const auto& chunk = tensor.chunks[k];
      const Piece* piece = kept[k];
      const Header& header = files[piece->file].header;
      metadata::StorageInfo info;
      info.relative_path = files[piece->file].name;
      info.offset = header.data_start + piece->entry->begin;
      info.length = piece->entry->end - piece->entry->begin;
      info.raw = true;
      info.pickle_offset = piece->entry->offset;
      md.storage_data.emplace_back(metadata::MetadataIndex{first.key, chunk.offsets, static_cast<std::int64_t>(k)},
                                   std::move(info));
    }
    md.items.push_back({first.key, std::move(tensor), first.offset});
  }
  md.reindex();
  return md;
}

}  // namespace dcp::safetensors
