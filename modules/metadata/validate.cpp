// Lookups over Metadata and the cross-checks PyTorch's writer guarantees.
module;
#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>
module dcp.metadata;
import dcp.error;

namespace dcp::metadata {
namespace {

std::string index_key(std::string_view fqn, const Shape* offset) {
  std::string key(fqn);
  key.push_back('\0');
  if (offset) {
    key.push_back('T');
    for (std::int64_t d : *offset) key += std::to_string(d) + ",";
  }
  return key;
}

std::string shape_text(const Shape& shape) { return format_shape(shape); }

Error item_error(const ItemMetadata& item, std::uint64_t offset, std::string message) {
  Error e(Errc::data_loss, std::move(message));
  e.for_key(item.fqn).at_offset(offset);
  return e;
}

bool boxes_overlap(const ChunkStorageMetadata& a, const ChunkStorageMetadata& b) {
  for (std::size_t d = 0; d < a.offsets.size(); ++d)
    if (a.offsets[d] >= b.offsets[d] + b.sizes[d] || b.offsets[d] >= a.offsets[d] + a.sizes[d])
      return false;
  return true;
}

void validate_tensor(const ItemMetadata& item) {
  const auto& t = item.tensor();
  const std::size_t rank = t.size.size();
  for (std::int64_t d : t.size)
    if (d < 0) throw item_error(item, item.pickle_offset, "negative size " + shape_text(t.size));
  const std::uint64_t total = numel(t.size);
  mul_or_throw(total, dtype_itemsize(t.properties.dtype), "tensor byte size");

  std::uint64_t covered = 0;
  std::vector<const ChunkStorageMetadata*> boxes;
  for (const auto& c : t.chunks) {
    if (c.offsets.size() != rank || c.sizes.size() != rank)
      throw item_error(item, c.pickle_offset,
                       "chunk at " + shape_text(c.offsets) + " with sizes " + shape_text(c.sizes) +
                           " does not have the tensor's " + std::to_string(rank) + " dimensions");
    for (std::size_t d = 0; d < rank; ++d) {
      if (c.offsets[d] < 0 || c.sizes[d] < 0 || c.sizes[d] > t.size[d] ||
          c.offsets[d] > t.size[d] - c.sizes[d])
        throw item_error(item, c.pickle_offset,
                         "chunk at " + shape_text(c.offsets) + " with sizes " + shape_text(c.sizes) +
                             " lies outside the tensor of size " + shape_text(t.size));
    }
    const std::uint64_t volume = numel(c.sizes);
    covered = add_or_throw(covered, volume, "covered elements");
    if (volume > 0) boxes.push_back(&c);
  }
  // Sweep along dim 0: only chunks whose dim-0 ranges intersect need a full comparison.
  if (rank > 0) {
    std::sort(boxes.begin(), boxes.end(),
              [](auto* a, auto* b) { return a->offsets[0] < b->offsets[0]; });
    for (std::size_t i = 0; i < boxes.size(); ++i)
      for (std::size_t j = i + 1;
           j < boxes.size() && boxes[j]->offsets[0] < boxes[i]->offsets[0] + boxes[i]->sizes[0]; ++j)
        if (boxes_overlap(*boxes[i], *boxes[j]))
          throw item_error(item, boxes[j]->pickle_offset,
                           "chunks at " + shape_text(boxes[i]->offsets) + " and " +
                               shape_text(boxes[j]->offsets) + " overlap");
  } else if (boxes.size() > 1) {
    throw item_error(item, boxes[1]->pickle_offset, "0-dim tensor has more than one chunk");
  }
  if (covered != total)
    throw item_error(item, item.pickle_offset,
                     "chunks cover " + std::to_string(covered) + " of " + std::to_string(total) +
                         " elements of the tensor of size " + shape_text(t.size));
}

}  // namespace

void Metadata::reindex() {
  item_index_.clear();
  storage_index_.clear();
  path_index_.clear();
  for (std::size_t i = 0; i < items.size(); ++i) item_index_.emplace(items[i].fqn, i);
  for (std::size_t i = 0; i < storage_data.size(); ++i) {
    const auto& index = storage_data[i].first;
    storage_index_.emplace(index_key(index.fqn, index.offset ? &*index.offset : nullptr), i);
  }
  if (planner_data)
    for (std::size_t i = 0; i < planner_data->size(); ++i) path_index_.emplace((*planner_data)[i].first, i);
}

const ItemMetadata* Metadata::find_item(std::string_view fqn) const {
  auto it = item_index_.find(std::string(fqn));
  return it == item_index_.end() ? nullptr : &items[it->second];
}

const StorageInfo* Metadata::find_storage(std::string_view fqn, const Shape* offset) const {
  auto it = storage_index_.find(index_key(fqn, offset));
  return it == storage_index_.end() ? nullptr : &storage_data[it->second].second;
}

const std::vector<PathPart>* Metadata::find_path(std::string_view fqn) const {
  auto it = path_index_.find(std::string(fqn));
  return it == path_index_.end() ? nullptr : &(*planner_data)[it->second].second;
}

void validate(const Metadata& md) {
  {
    std::unordered_map<std::string_view, int> seen;
    for (const auto& item : md.items)
      if (++seen[item.fqn] > 1) throw item_error(item, item.pickle_offset, "key appears twice");
  }
  for (const auto& item : md.items)
    if (item.is_tensor()) validate_tensor(item);

  std::unordered_map<std::string, int> seen;
  for (const auto& [index, info] : md.storage_data) {
    const ItemMetadata* item = md.find_item(index.fqn);
    auto fail = [&](std::string message) {
      Error e(Errc::data_loss, "storage_data: " + std::move(message));
      e.for_key(index.fqn).at_offset(info.pickle_offset);
      return e;
    };
    if (!item) throw fail("key is not in state_dict_metadata");
    if (!is_safe_relative_path(info.relative_path))
      throw fail("unsafe file name '" + info.relative_path + "' (must be a plain name in the checkpoint directory)");
    if (!checked_add(info.offset, info.length))
      throw fail("byte range overflows 64 bits");
    if (++seen[index_key(index.fqn, index.offset ? &*index.offset : nullptr)] > 1)
      throw fail("entry appears twice");
    if (item->is_tensor()) {
      if (!index.offset) throw fail("tensor entry without chunk offsets");
      const auto& chunks = item->tensor().chunks;
      if (std::none_of(chunks.begin(), chunks.end(), [&](auto& c) { return c.offsets == *index.offset; }))
        throw fail("no chunk starts at " + shape_text(*index.offset));
    } else if (index.offset) {
      throw fail("bytes entry with chunk offsets");
    }
  }
  for (const auto& item : md.items) {
    if (!item.is_tensor()) {
      if (!md.find_storage(item.fqn, nullptr))
        throw item_error(item, item.pickle_offset, "no storage_data entry for this object");
      continue;
    }
    for (const auto& c : item.tensor().chunks)
      if (!md.find_storage(item.fqn, &c.offsets))
        throw item_error(item, c.pickle_offset, "no storage_data entry for the chunk at " + shape_text(c.offsets));
  }
}

void check_storage_bounds(const Metadata& md, const FileSizeFn& file_size) {
  std::unordered_map<std::string, std::optional<std::uint64_t>> sizes;
  for (const auto& [index, info] : md.storage_data) {
    auto [it, inserted] = sizes.try_emplace(info.relative_path);
    if (inserted) it->second = file_size(info.relative_path);
    if (!it->second) {
      Error e(Errc::not_found, "file is missing (named by storage_data)");
      e.in_file(info.relative_path).for_key(index.fqn);
      throw e;
    }
    const auto end = checked_add(info.offset, info.length);
    if (!end || *end > *it->second) {
      Error e(Errc::data_loss, "item bytes [" + std::to_string(info.offset) + ", " +
                                   std::to_string(info.offset + info.length) +
                                   ") lie past the end of the file (" +
                                   std::to_string(*it->second) + " bytes)");
      e.in_file(info.relative_path).for_key(index.fqn).at_offset(info.offset);
      throw e;
    }
  }
}

}  // namespace dcp::metadata
