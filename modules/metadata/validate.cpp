// Lookups over Metadata and the cross-checks PyTorch's writer guarantees.
module;
#include <algorithm>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>
module dcp.metadata;
import dcp.error;
import dcp.layout;

namespace dcp::metadata {
namespace {

// Hash of chunk offsets (absent for an object's storage entry).
std::size_t offsets_hash(const Shape* offsets) { return offsets ? layout::hash_shape(*offsets) : 0; }

Error item_error(const ItemMetadata& item, std::uint64_t offset, std::string message) {
  Error e(Errc::data_loss, std::move(message));
  e.for_key(item.fqn).at_offset(offset);
  return e;
}

std::string chunk_text(const ChunkStorageMetadata& c) {
  return "chunk at " + format_shape(c.offsets) + " with sizes " + format_shape(c.sizes);
}

// Checks one tensor: rank, size, and its chunks (check_chunks).
void validate_tensor(const ItemMetadata& item) {
  const auto& t = item.tensor();
  const std::size_t rank = t.size.size();
  if (rank > kMaxRank)
    throw item_error(item, item.pickle_offset, "tensor has " + std::to_string(rank) + " dims (at most " +
                                                   std::to_string(kMaxRank) + " are supported)");
  for (std::int64_t d : t.size)
    if (d < 0) throw item_error(item, item.pickle_offset, "negative size " + format_shape(t.size));
  try {
    (void)byte_size(t.size, t.properties.dtype);
  } catch (Error& e) {
    throw e.for_key(item.fqn).at_offset(item.pickle_offset);
  }
  const auto problem = check_chunks(t);
  if (!problem) return;
  if (problem->kind == ChunkProblem::Kind::gap)  // names no chunk: there may be none
    throw item_error(item, item.pickle_offset,
                     "chunks cover " + std::to_string(problem->covered) + " of " + std::to_string(problem->total) +
                         " elements of the tensor of size " + format_shape(t.size));
  const auto& c = t.chunks[problem->chunk];
  if (problem->kind == ChunkProblem::Kind::wrong_rank)
    throw item_error(item, c.pickle_offset, chunk_text(c) + " does not have the tensor's " + std::to_string(rank) +
                                                " dimensions");
  if (problem->kind == ChunkProblem::Kind::outside)
    throw item_error(item, c.pickle_offset, chunk_text(c) + " lies outside the tensor of size " + format_shape(t.size));
  throw item_error(item, c.pickle_offset, "chunks at " + format_shape(t.chunks[problem->other].offsets) + " and " +
                                              format_shape(c.offsets) + " overlap");
}

// `slots` (a power of two, chunk positions + 1) gets the first chunk of each distinct start;
// returns, per chunk, the position of the first chunk that starts where it does, or nothing
// when every chunk starts elsewhere (the usual case). Only empty chunks may share a start
// (the chunks tile), and torch stores one entry per start.
std::vector<std::uint32_t> index_starts(const std::vector<ChunkStorageMetadata>& chunks,
                                        std::vector<std::uint32_t>& slots) {
  std::size_t size = 16;
  while (size < 2 * chunks.size()) size *= 2;
  slots.assign(size, 0);
  std::vector<std::uint32_t> first(chunks.size());
  bool shared = false;
  for (std::size_t i = 0; i < chunks.size(); ++i) {
    std::size_t slot = offsets_hash(&chunks[i].offsets) & (size - 1);
    while (slots[slot] && chunks[slots[slot] - 1].offsets != chunks[i].offsets) slot = (slot + 1) & (size - 1);
    if (!slots[slot]) slots[slot] = static_cast<std::uint32_t>(i + 1);
    first[i] = slots[slot] - 1;
    shared = shared || first[i] != i;
  }
  if (!shared) first.clear();
  return first;
}

// Keys → numbers for millions of lookups (every storage entry names its key): open addressing
// over views of strings that outlive the table (dcp::hash_text: seeded, a word at a time).
class NameTable {
 public:
  static constexpr std::uint32_t kAbsent = 0xFFFFFFFFu;
  explicit NameTable(std::size_t keys) {
    std::size_t slots = 16;
    while (slots < 2 * keys) slots *= 2;
    names_.resize(slots);
    values_.assign(slots, kAbsent);
  }
  // The first value given a name stays.
  void insert(std::string_view name, std::uint32_t value) {
    const std::size_t slot = find_slot(name);
    if (values_[slot] != kAbsent) return;
    names_[slot] = name;
    values_[slot] = value;
  }
  std::uint32_t find(std::string_view name) const { return values_[find_slot(name)]; }

 private:
  std::size_t find_slot(std::string_view name) const {
    const std::size_t mask = names_.size() - 1;
    std::size_t slot = hash_text(name) & mask;
    while (values_[slot] != kAbsent && names_[slot] != name) slot = (slot + 1) & mask;
    return slot;
  }
  std::vector<std::string_view> names_;
  std::vector<std::uint32_t> values_;
};

}  // namespace

std::optional<ChunkProblem> check_chunks(const TensorStorageMetadata& tensor) {
  using Kind = ChunkProblem::Kind;
  const std::size_t rank = tensor.size.size();
  const auto& chunks = tensor.chunks;
  // The first chunk of the wrong rank or outside the tensor (a chunk's rank is checked first).
  auto first_misplaced = [&](std::size_t end) -> std::optional<ChunkProblem> {
    for (std::size_t i = 0; i < end; ++i) {
      if (chunks[i].offsets.size() != rank || chunks[i].sizes.size() != rank) return ChunkProblem{Kind::wrong_rank, i};
      if (!layout::is_inside(chunks[i].offsets, chunks[i].sizes, tensor.size)) return ChunkProblem{Kind::outside, i};
    }
    return std::nullopt;
  };
  std::vector<layout::BoxRef> boxes;
  boxes.reserve(chunks.size());
  for (std::size_t i = 0; i < chunks.size(); ++i) {
    if (chunks[i].offsets.size() != rank || chunks[i].sizes.size() != rank) return first_misplaced(i + 1);
    boxes.push_back(layout::BoxRef{chunks[i].offsets.data(), chunks[i].sizes.data()});
  }
  if (layout::lists_grid_in_order(boxes, tensor.size)) return std::nullopt;  // inside, and they tile
  if (auto problem = first_misplaced(chunks.size())) return problem;
  const auto tiling = layout::check_tiling(boxes, tensor.size);
  if (const auto& pair = tiling.overlap) return ChunkProblem{Kind::overlap, pair->second, pair->first};
  if (tiling.covered != tiling.total) return ChunkProblem{Kind::gap, 0, 0, tiling.covered, tiling.total};
  return std::nullopt;
}

std::uint64_t tensor_chunk_count(const Metadata& md) noexcept {
  std::uint64_t count = 0;
  for (const auto& item : md.items)
    if (item.is_tensor()) count += item.tensor().chunks.size();
  return count;
}

void Metadata::reindex() {
  index_names();
  (void)index_storage();
}

void Metadata::index_names() {
  item_index_.clear();
  path_index_.clear();
  item_index_.reserve(items.size());
  for (std::size_t i = 0; i < items.size(); ++i) item_index_.emplace(items[i].fqn, i);
  if (planner_data)
    for (std::size_t i = 0; i < planner_data->size(); ++i) path_index_.emplace((*planner_data)[i].first, i);
}

std::vector<std::uint32_t> Metadata::index_storage() {
  if (storage_data.size() >= (std::size_t{1} << 31))
    throw Error(Errc::resource_exhausted, "more than 2^31 storage_data entries");
  storage_group_.clear();
  storage_groups_.clear();
  // Each entry's group, and its offsets' hash. The groups of the items' keys exist first, so
  // entries find theirs on several threads (lookups only, in a flat table over views of the
  // items' names: faster than the node map at millions of lookups, which owns its strings and
  // outlives this call); a key that names no item (which validate rejects) gets its group
  // after, in order.
  NameTable item_groups(items.size());
  for (const auto& item : items) {
    const auto [it, fresh] = storage_group_.try_emplace(item.fqn, storage_group_.size());
    if (fresh) item_groups.insert(item.fqn, static_cast<std::uint32_t>(it->second));
  }
  constexpr std::uint32_t kLater = NameTable::kAbsent;
  std::vector<std::uint32_t> group_of(storage_data.size());
  std::vector<std::uint64_t> hash_of(storage_data.size());
  constexpr std::size_t kBlock = std::size_t{1} << 15;
  parallel_for((storage_data.size() + kBlock - 1) / kBlock, storage_data.size(), [&](std::size_t block) {
    for (std::size_t i = block * kBlock; i < std::min(storage_data.size(), (block + 1) * kBlock); ++i) {
      const auto& key = storage_data[i].first;
      group_of[i] = item_groups.find(key.fqn);
      hash_of[i] = offsets_hash(key.offset ? &*key.offset : nullptr);
    }
  });
  for (std::size_t i = 0; i < storage_data.size(); ++i)
    if (group_of[i] == kLater) {
      const auto it = storage_group_.try_emplace(storage_data[i].first.fqn, storage_group_.size()).first;
      group_of[i] = static_cast<std::uint32_t>(it->second);
    }
  // Each group's table is filled from its entries in order (the first entry of an offsets
  // wins), on several threads: the entries grouped by a counting sort, each group's hashes
  // gathered so that probes stay in the group's own memory.
  std::vector<std::size_t> group_begin(storage_group_.size() + 1, 0);
  for (const auto group : group_of) ++group_begin[group + 1];
  for (std::size_t g = 0; g < storage_group_.size(); ++g) group_begin[g + 1] += group_begin[g];
  std::vector<std::uint32_t> grouped(storage_data.size());
  {
    std::vector<std::size_t> fill(group_begin.begin(), group_begin.end() - 1);
    for (std::size_t i = 0; i < storage_data.size(); ++i) grouped[fill[group_of[i]]++] = static_cast<std::uint32_t>(i);
  }
  std::size_t slots = 0;
  for (std::size_t g = 0; g < storage_group_.size(); ++g) {
    std::size_t size = 4;
    while (size < 2 * (group_begin[g + 1] - group_begin[g])) size *= 2;
    storage_groups_.push_back(StorageGroup{slots, size});
    slots += size;
  }
  storage_slots_.assign(slots, 0);
  parallel_for(storage_groups_.size(), storage_data.size(), [&](std::size_t g) {
    const std::span<const std::uint32_t> members(grouped.data() + group_begin[g], group_begin[g + 1] - group_begin[g]);
    std::vector<std::uint64_t> hashes(members.size());
    for (std::size_t k = 0; k < members.size(); ++k) hashes[k] = hash_of[members[k]];
    const std::size_t mask = storage_groups_[g].slot_count - 1;
    std::uint32_t* table = storage_slots_.data() + storage_groups_[g].first_slot;
    std::vector<std::uint32_t> member_at(mask + 1, 0);  // per slot: member + 1 (0 = empty)
    for (std::size_t k = 0; k < members.size(); ++k) {
      std::size_t slot = hashes[k] & mask;
      while (member_at[slot] && (hashes[member_at[slot] - 1] != hashes[k] ||
                                 storage_data[members[member_at[slot] - 1]].first.offset != storage_data[members[k]].first.offset))
        slot = (slot + 1) & mask;
      if (member_at[slot]) continue;
      member_at[slot] = static_cast<std::uint32_t>(k + 1);
      table[slot] = members[k] + 1;
    }
  });
  return group_of;
}

const ItemMetadata* Metadata::find_item(std::string_view fqn) const {
  auto it = item_index_.find(fqn);
  return it == item_index_.end() ? nullptr : &items[it->second];
}

const StorageInfo* Metadata::find_storage(std::string_view fqn, const Shape* offset) const {
  const auto it = storage_group_.find(fqn);
  if (it == storage_group_.end()) return nullptr;
  const auto& g = storage_groups_[it->second];
  const std::uint32_t* table = storage_slots_.data() + g.first_slot;
  const std::size_t mask = g.slot_count - 1;
  for (std::size_t slot = offsets_hash(offset) & mask; table[slot]; slot = (slot + 1) & mask) {
    const auto& [index, info] = storage_data[table[slot] - 1];
    if (index.offset.has_value() == (offset != nullptr) && (!offset || *index.offset == *offset)) return &info;
  }
  return nullptr;
}

const std::vector<PathPart>* Metadata::find_path(std::string_view fqn) const {
  auto it = path_index_.find(fqn);
  return it == path_index_.end() ? nullptr : &(*planner_data)[it->second].second;
}

const layout::ChunkIndex* ValidatedMetadata::chunk_index(std::string_view fqn) const {
  auto it = state_->tensors.find(fqn);
  if (it == state_->tensors.end()) return nullptr;
  const auto& chunks = it->second;
  std::call_once(chunks.index_once, [&] {
    std::vector<layout::Box> boxes;
    boxes.reserve(chunks.tensor->chunks.size());
    for (const auto& c : chunks.tensor->chunks) boxes.push_back(c.box());
    chunks.index = layout::ChunkIndex(std::move(boxes));
  });
  return &chunks.index;
}

std::optional<std::size_t> ValidatedMetadata::chunk_position(std::string_view fqn, const Shape& offsets) const {
  auto it = state_->tensors.find(fqn);
  if (it == state_->tensors.end()) return std::nullopt;
  const auto& slots = it->second.start_slots;
  const auto& chunks = it->second.tensor->chunks;
  const std::size_t mask = slots.size() - 1;
  for (std::size_t slot = offsets_hash(&offsets) & mask; slots[slot]; slot = (slot + 1) & mask)
    if (chunks[slots[slot] - 1].offsets == offsets) return slots[slot] - 1;
  return std::nullopt;
}

ValidatedMetadata validate(Metadata metadata) {
  auto state = std::make_shared<ValidatedMetadata::State>();
  state->metadata = std::move(metadata);
  Metadata& md = state->metadata;  // checked in place: positions and pointers below stay valid
  md.index_names();  // the caller may have edited the vectors since decoding
  const auto group_of = md.index_storage();
  for (std::size_t pos = 0; pos < md.items.size(); ++pos)  // the name index keeps a key's first item
    if (md.item_index_.find(md.items[pos].fqn)->second != pos)
      throw item_error(md.items[pos], md.items[pos].pickle_offset, "key appears twice");
  // Each storage entry must claim one chunk start, and each only once: per chunk, the first
  // chunk with its start (`first_of`), whose flag in `claimed` it sets. Each tensor is checked
  // on its own: large metadata (thousands of ranks) on several threads, failing on the first
  // bad item as a loop would.
  std::vector<std::vector<char>> claimed(md.items.size());
  std::vector<std::vector<std::uint32_t>> first_of(md.items.size());
  std::vector<std::vector<std::uint32_t>> start_slots(md.items.size());
  parallel_for(md.items.size(), tensor_chunk_count(md), [&](std::size_t pos) {
    const auto& item = md.items[pos];
    if (!item.is_tensor()) return;
    validate_tensor(item);
    first_of[pos] = index_starts(item.tensor().chunks, start_slots[pos]);
    claimed[pos].assign(item.tensor().chunks.size(), 0);
  });
  for (std::size_t pos = 0; pos < md.items.size(); ++pos) {
    if (!md.items[pos].is_tensor()) continue;
    auto& chunks = state->tensors.try_emplace(md.items[pos].fqn).first->second;
    chunks.tensor = &md.items[pos].tensor();
    chunks.start_slots = std::move(start_slots[pos]);
  }
  const ValidatedMetadata result(state);

  // Each storage entry names an item and, for a tensor, a chunk start. Resolving that reads
  // scattered memory (torch lists entries rank by rank, each of another tensor), so it runs on
  // several threads, a block of entries each; claiming the starts (is an entry the second for
  // its start?) runs after, in order. The first failing entry is reported, as a loop would.
  const auto& entries = md.storage_data;
  constexpr std::size_t kBlock = std::size_t{1} << 15, kAhead = 8;
  constexpr std::uint32_t kObject = 0xFFFFFFFFu;
  std::vector<std::uint32_t> entry_start(entries.size());
  std::vector<std::optional<std::pair<std::size_t, Error>>> failure((entries.size() + kBlock - 1) / kBlock);
  // The storage index's groups are keys; those of items name them (the rest name no item).
  constexpr std::uint32_t kNoItem = 0xFFFFFFFFu;
  std::vector<std::uint32_t> item_of_group(md.storage_groups_.size(), kNoItem);
  for (std::size_t pos = 0; pos < md.items.size(); ++pos)
    item_of_group[md.storage_group_.find(md.items[pos].fqn)->second] = static_cast<std::uint32_t>(pos);
  parallel_for(failure.size(), entries.size(), [&](std::size_t block) {
    const std::string* safe_path = nullptr;
    const std::size_t end = std::min(entries.size(), (block + 1) * kBlock);
    for (std::size_t i = block * kBlock; i < end; ++i) {
      // The chunk an entry's hint names, a few entries ahead: entries come rank by rank, chunks
      // lie tensor by tensor.
      if (i + kAhead < end) {
        const auto& ahead = entries[i + kAhead].first;
        const auto ahead_item = item_of_group[group_of[i + kAhead]];
        if (ahead_item != kNoItem && ahead.index && md.items[ahead_item].is_tensor()) {
          const auto& chunks = md.items[ahead_item].tensor().chunks;
          if (*ahead.index >= 0 && static_cast<std::uint64_t>(*ahead.index) < chunks.size())
            __builtin_prefetch(&chunks[static_cast<std::size_t>(*ahead.index)]);
        }
      }
      const auto& [index, info] = entries[i];
      auto fail = [&](std::string message) {
        Error e(Errc::data_loss, "storage_data: " + std::move(message));
        e.for_key(index.fqn).at_offset(info.pickle_offset);
        failure[block].emplace(i, std::move(e));
      };
      const auto item_pos = item_of_group[group_of[i]];
      if (item_pos == kNoItem) return fail("key is not in state_dict_metadata");
      const ItemMetadata* item = &md.items[item_pos];
      if ((!safe_path || *safe_path != info.relative_path) && !is_safe_relative_path(info.relative_path))
        return fail("unsafe file name '" + info.relative_path + "' (must be a plain name in the checkpoint directory)");
      safe_path = &info.relative_path;  // torch lists entries rank by rank: runs share a file
      if (!checked_add(info.offset, info.length)) return fail("byte range overflows 64 bits");
      if (!item->is_tensor()) {
        if (index.offset) return fail("bytes entry with chunk offsets");
        entry_start[i] = kObject;
        continue;
      }
      if (!index.offset) return fail("tensor entry without chunk offsets");
      const auto& chunks = item->tensor().chunks;
      // torch's writer sets the index hint to the chunk's position: try it before searching.
      std::optional<std::size_t> chunk;
      if (index.index && *index.index >= 0 && static_cast<std::uint64_t>(*index.index) < chunks.size() &&
          chunks[static_cast<std::size_t>(*index.index)].offsets == *index.offset)
        chunk = static_cast<std::size_t>(*index.index);
      else
        chunk = result.chunk_position(item->fqn, *index.offset);
      if (!chunk) return fail("no chunk starts at " + format_shape(*index.offset));
      entry_start[i] = first_of[item_pos].empty() ? static_cast<std::uint32_t>(*chunk) : first_of[item_pos][*chunk];
    }
  });
  std::size_t resolved = entries.size();
  const Error* first_failure = nullptr;
  for (const auto& f : failure)
    if (f) {
      resolved = f->first;
      first_failure = &f->second;
      break;
    }
  std::vector<char> object_stored(md.items.size(), 0);
  for (std::size_t i = 0; i < resolved; ++i) {
    const auto item_pos = item_of_group[group_of[i]];
    const bool again = entry_start[i] == kObject ? object_stored[item_pos]++ != 0 : claimed[item_pos][entry_start[i]]++ != 0;
    if (again) {
      Error e(Errc::data_loss, "storage_data: entry appears twice");
      e.for_key(entries[i].first.fqn).at_offset(entries[i].second.pickle_offset);
      throw e;
    }
  }
  if (first_failure) throw *first_failure;
  for (std::size_t pos = 0; pos < md.items.size(); ++pos) {
    const auto& item = md.items[pos];
    if (!item.is_tensor()) {
      if (!object_stored[pos]) throw item_error(item, item.pickle_offset, "no storage_data entry for this object");
      continue;
    }
    for (std::size_t k = 0; k < claimed[pos].size(); ++k)
      if ((first_of[pos].empty() || first_of[pos][k] == k) && !claimed[pos][k]) {
        const auto& chunk = item.tensor().chunks[k];
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
      if (info.raw ? info.length != raw : info.length < raw)
        throw Error(Errc::data_loss, "storage_data: item of " + std::to_string(info.length) +
                                         (info.raw ? " bytes is not" : " bytes cannot hold") + " the chunk at " +
                                         format_shape(chunk.offsets) + " (" + std::to_string(raw) + " bytes of data)")
            .for_key(index.fqn)
            .at_offset(info.pickle_offset);
    }
    auto [it, inserted] = sizes.try_emplace(info.relative_path);
    if (inserted) {
      try {
        it->second = file_size(info.relative_path);
      } catch (Error& e) {
        throw e.for_key(index.fqn);
      }
    }
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
