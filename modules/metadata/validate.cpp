// Lookups over Metadata and the cross-checks PyTorch's writer guarantees.
module;
#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>
module dcp.metadata;
import dcp.error;
import dcp.layout;

namespace dcp::metadata {
namespace {

// Hash of a storage_data key (fqn, offsets), what torch's MetadataIndex hashes and compares.
std::uint64_t index_hash(std::string_view fqn, const Shape* offset) {
  std::uint64_t h = std::hash<std::string_view>{}(fqn) ^ (offset ? 0x9e3779b97f4a7c15ull : 0);
  if (offset)
    for (std::int64_t v : *offset) h = (h ^ static_cast<std::uint64_t>(v)) * 0x100000001b3ull;
  return h ^ (h >> 31);
}

bool same_index(const MetadataIndex& index, std::string_view fqn, const Shape* offset) {
  if (index.fqn != fqn || index.offset.has_value() != (offset != nullptr)) return false;
  return !offset || *index.offset == *offset;
}

Error item_error(const ItemMetadata& item, std::uint64_t offset, std::string message) {
  Error e(Errc::data_loss, std::move(message));
  e.for_key(item.fqn).at_offset(offset);
  return e;
}

std::string chunk_text(const ChunkStorageMetadata& c) {
  return "chunk at " + format_shape(c.offsets) + " with sizes " + format_shape(c.sizes);
}

// Checks one tensor's chunks and returns their index (disjointness found by the index: a
// bounding-box tree, O(n log n) for the tilings checkpoints hold, whatever dim they split).
layout::ChunkIndex validate_tensor(const ItemMetadata& item) {
  const auto& t = item.tensor();
  const std::size_t rank = t.size.size();
  if (rank > kMaxRank)
    throw item_error(item, item.pickle_offset, "tensor has " + std::to_string(rank) + " dims (at most " +
                                                   std::to_string(kMaxRank) + " are supported)");
  for (std::int64_t d : t.size)
    if (d < 0) throw item_error(item, item.pickle_offset, "negative size " + format_shape(t.size));
  std::uint64_t total = 0;
  try {
    total = numel(t.size);
    (void)byte_size(t.size, t.properties.dtype);
  } catch (Error& e) {
    throw e.for_key(item.fqn).at_offset(item.pickle_offset);
  }

  std::uint64_t covered = 0;
  std::vector<layout::Box> boxes;
  boxes.reserve(t.chunks.size());
  for (const auto& c : t.chunks) {
    if (c.offsets.size() != rank || c.sizes.size() != rank)
      throw item_error(item, c.pickle_offset, chunk_text(c) + " does not have the tensor's " + std::to_string(rank) +
                                                  " dimensions");
    if (!layout::is_inside(c.box(), t.size))
      throw item_error(item, c.pickle_offset, chunk_text(c) + " lies outside the tensor of size " + format_shape(t.size));
    covered = add_or_throw(covered, numel(c.sizes), "covered elements");
    boxes.push_back(c.box());
  }
  layout::ChunkIndex index(std::move(boxes));
  if (const auto& pair = index.first_overlap()) {
    const auto& a = t.chunks[pair->first];
    const auto& b = t.chunks[pair->second];
    throw item_error(item, b.pickle_offset, "chunks at " + format_shape(a.offsets) + " and " +
                                                format_shape(b.offsets) + " overlap");
  }
  if (covered != total)
    throw item_error(item, item.pickle_offset,
                     "chunks cover " + std::to_string(covered) + " of " + std::to_string(total) +
                         " elements of the tensor of size " + format_shape(t.size));
  return index;
}

}  // namespace

std::uint64_t tensor_chunk_count(const Metadata& md) noexcept {
  std::uint64_t count = 0;
  for (const auto& item : md.items)
    if (item.is_tensor()) count += item.tensor().chunks.size();
  return count;
}

void Metadata::reindex() {
  item_index_.clear();
  path_index_.clear();
  item_index_.reserve(items.size());
  for (std::size_t i = 0; i < items.size(); ++i) item_index_.emplace(items[i].fqn, i);
  if (storage_data.size() >= (std::size_t{1} << 31))
    throw Error(Errc::resource_exhausted, "more than 2^31 storage_data entries");
  std::size_t slots = 16;
  while (slots < 2 * storage_data.size()) slots *= 2;
  storage_slots_.assign(slots, 0);
  for (std::size_t i = 0; i < storage_data.size(); ++i) {
    const auto& index = storage_data[i].first;
    const Shape* offset = index.offset ? &*index.offset : nullptr;
    std::size_t slot = index_hash(index.fqn, offset) & (slots - 1);
    while (storage_slots_[slot] && !same_index(storage_data[storage_slots_[slot] - 1].first, index.fqn, offset))
      slot = (slot + 1) & (slots - 1);
    if (!storage_slots_[slot]) storage_slots_[slot] = static_cast<std::uint32_t>(i + 1);  // the first entry wins
  }
  if (planner_data)
    for (std::size_t i = 0; i < planner_data->size(); ++i) path_index_.emplace((*planner_data)[i].first, i);
}

const ItemMetadata* Metadata::find_item(std::string_view fqn) const {
  auto it = item_index_.find(fqn);
  return it == item_index_.end() ? nullptr : &items[it->second];
}

const StorageInfo* Metadata::find_storage(std::string_view fqn, const Shape* offset) const {
  if (storage_slots_.empty()) return nullptr;
  const std::size_t mask = storage_slots_.size() - 1;
  for (std::size_t slot = index_hash(fqn, offset) & mask; storage_slots_[slot]; slot = (slot + 1) & mask) {
    const auto& [index, info] = storage_data[storage_slots_[slot] - 1];
    if (same_index(index, fqn, offset)) return &info;
  }
  return nullptr;
}

const std::vector<PathPart>* Metadata::find_path(std::string_view fqn) const {
  auto it = path_index_.find(fqn);
  return it == path_index_.end() ? nullptr : &(*planner_data)[it->second].second;
}

const layout::ChunkIndex* ValidatedMetadata::chunk_index(std::string_view fqn) const {
  auto it = state_->tensors.find(fqn);
  return it == state_->tensors.end() ? nullptr : &it->second.index;
}

std::optional<std::size_t> ValidatedMetadata::chunk_position(std::string_view fqn, const Shape& offsets) const {
  auto it = state_->tensors.find(fqn);
  if (it == state_->tensors.end()) return std::nullopt;
  const auto& chunks = state_->metadata.find_item(fqn)->tensor().chunks;
  const auto& order = it->second.by_offsets;
  auto pos = std::lower_bound(order.begin(), order.end(), offsets,
                              [&](std::size_t i, const Shape& o) { return chunks[i].offsets < o; });
  if (pos == order.end() || chunks[*pos].offsets != offsets) return std::nullopt;
  return *pos;
}

ValidatedMetadata validate(Metadata metadata) {
  auto state = std::make_shared<ValidatedMetadata::State>();
  state->metadata = std::move(metadata);
  Metadata& md = state->metadata;  // checked in place: positions and pointers below stay valid
  md.reindex();  // the caller may have edited the vectors since decoding
  {
    std::unordered_set<std::string_view> seen;
    for (const auto& item : md.items)
      if (!seen.insert(item.fqn).second) throw item_error(item, item.pickle_offset, "key appears twice");
  }
  // Chunk starts sorted per tensor (equal starts, which only empty chunks may share, once):
  // each storage entry must claim one, and each only once. Per item position, so the loop
  // over millions of storage entries does one name lookup each.
  std::vector<std::vector<char>> claimed(md.items.size());
  std::vector<std::vector<std::uint32_t>> start_of(md.items.size());  // chunk → its start's rank
  // Each tensor's chunks are checked on their own: large metadata (thousands of ranks) is
  // checked on several threads, failing on the first bad item as a loop would.
  struct TensorCheck {
    layout::ChunkIndex index;
    std::vector<std::size_t> order;  // chunk positions sorted by offsets, one per distinct start
  };
  std::vector<TensorCheck> checks(md.items.size());
  parallel_for(md.items.size(), tensor_chunk_count(md), [&](std::size_t pos) {
    const auto& item = md.items[pos];
    if (!item.is_tensor()) return;
    auto& out = checks[pos];
    const auto& chunks = item.tensor().chunks;
    out.index = validate_tensor(item);
    auto& order = out.order;
    order.resize(chunks.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(),
                     [&](std::size_t a, std::size_t b) { return chunks[a].offsets < chunks[b].offsets; });
    auto& starts = start_of[pos];
    starts.resize(chunks.size());
    std::uint32_t distinct = 0;
    for (std::size_t k = 0; k < order.size(); ++k) {
      if (k > 0 && chunks[order[k]].offsets != chunks[order[k - 1]].offsets) ++distinct;
      starts[order[k]] = distinct;
    }
    order.erase(std::unique(order.begin(), order.end(),
                            [&](std::size_t a, std::size_t b) { return chunks[a].offsets == chunks[b].offsets; }),
                order.end());
  });
  for (std::size_t pos = 0; pos < md.items.size(); ++pos) {
    if (!md.items[pos].is_tensor()) continue;
    auto& c = checks[pos];
    claimed[pos].assign(c.order.size(), 0);
    state->tensors.emplace(md.items[pos].fqn, ValidatedMetadata::TensorChunks{std::move(c.index), std::move(c.order)});
  }
  const ValidatedMetadata result(state);

  std::unordered_set<std::string_view> objects_stored;
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
    if (!checked_add(info.offset, info.length)) throw fail("byte range overflows 64 bits");
    if (item->is_tensor()) {
      if (!index.offset) throw fail("tensor entry without chunk offsets");
      const auto pos = static_cast<std::size_t>(item - md.items.data());
      const auto& chunks = item->tensor().chunks;
      // torch's writer sets the index hint to the chunk's position: try it before searching.
      std::optional<std::size_t> chunk;
      if (index.index && *index.index >= 0 && static_cast<std::uint64_t>(*index.index) < chunks.size() &&
          chunks[static_cast<std::size_t>(*index.index)].offsets == *index.offset)
        chunk = static_cast<std::size_t>(*index.index);
      else
        chunk = result.chunk_position(item->fqn, *index.offset);
      if (!chunk) throw fail("no chunk starts at " + format_shape(*index.offset));
      if (claimed[pos][start_of[pos][*chunk]]++) throw fail("entry appears twice");
    } else {
      if (index.offset) throw fail("bytes entry with chunk offsets");
      if (!objects_stored.insert(index.fqn).second) throw fail("entry appears twice");
    }
  }
  for (const auto& item : md.items) {
    if (!item.is_tensor()) {
      if (!objects_stored.contains(item.fqn))
        throw item_error(item, item.pickle_offset, "no storage_data entry for this object");
      continue;
    }
    const auto& flags = claimed[static_cast<std::size_t>(&item - md.items.data())];
    const auto& order = state->tensors.at(item.fqn).by_offsets;
    for (std::size_t k = 0; k < flags.size(); ++k)
      if (!flags[k]) {
        const auto& chunk = item.tensor().chunks[order[k]];
        throw item_error(item, chunk.pickle_offset, "no storage_data entry for the chunk at " + format_shape(chunk.offsets));
      }
  }
  return result;
}

void check_storage_bounds(const ValidatedMetadata& validated, const FileSizeFn& file_size) {
  const Metadata& md = *validated;
  std::unordered_map<std::string, std::optional<std::uint64_t>> sizes;
  for (const auto& [index, info] : md.storage_data) {
    if (index.offset && info.transform_descriptors.empty()) {
      const ItemMetadata& item = *md.find_item(index.fqn);
      const auto& chunk = item.tensor().chunks[*validated.chunk_position(index.fqn, *index.offset)];
      const std::uint64_t raw = byte_size(chunk.sizes, item.tensor().properties.dtype);
      if (info.length < raw)
        throw Error(Errc::data_loss, "storage_data: item of " + std::to_string(info.length) +
                                         " bytes cannot hold the chunk at " + format_shape(chunk.offsets) + " (" +
                                         std::to_string(raw) + " bytes of data)")
            .for_key(index.fqn)
            .at_offset(info.pickle_offset);
    }
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
