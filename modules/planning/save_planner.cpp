// The save half of the planner protocol: state dicts, write items, de-duplication and the
// coordinator's global plan (torch's default_planner.py and _dedup_save_plans.py).
module;
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <map>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>
module dcp.planning;
import dcp.error;
import dcp.pickle;
import dcp.metadata;
import dcp.layout;

namespace dcp::planning {

std::optional<std::uint64_t> WriteItem::tensor_storage_size() const {
  if (!tensor_data) return std::nullopt;
  return metadata::byte_size(tensor_data->chunk.sizes, tensor_data->properties.dtype);
}

static bool same_index(const metadata::MetadataIndex& a, const metadata::MetadataIndex& b) {
  return a.fqn == b.fqn && a.offset == b.offset && a.index == b.index;
}

bool operator==(const TensorWriteData& a, const TensorWriteData& b) {
  const auto& p = a.properties;
  const auto& q = b.properties;
  return a.chunk == b.chunk && a.size == b.size && p.dtype == q.dtype && p.requires_grad == q.requires_grad &&
         p.memory_format == q.memory_format && p.pin_memory == q.pin_memory;
}

bool operator==(const WriteItem& a, const WriteItem& b) {
  return same_index(a.index, b.index) && a.type == b.type && a.tensor_data == b.tensor_data;
}

// ---- Objects ---------------------------------------------------------------------------------

namespace {
template <class Add>
ObjectValue make_scalar(Add add) {
  auto doc = std::make_shared<pickle::Document>();
  const auto id = add(*doc);
  doc->set_root(id);
  return ObjectValue{std::move(doc), id};
}
}  // namespace

ObjectValue ObjectValue::integer(std::int64_t value) {
  return make_scalar([&](pickle::Document& d) { return d.add_integer(0, value); });
}
ObjectValue ObjectValue::floating(double value) {
  return make_scalar([&](pickle::Document& d) { return d.add_floating(0, value); });
}
ObjectValue ObjectValue::string(std::string_view utf8) {
  return make_scalar([&](pickle::Document& d) { return d.add_text(pickle::NodeKind::string, 0, utf8); });
}
ObjectValue ObjectValue::boolean(bool value) {
  return make_scalar([&](pickle::Document&) { return value ? pickle::Document::kTrue : pickle::Document::kFalse; });
}
ObjectValue ObjectValue::none() {
  return make_scalar([&](pickle::Document&) { return pickle::Document::kNone; });
}

// ---- StateDict --------------------------------------------------------------------------------

std::string join_path(const std::vector<metadata::PathPart>& path) {
  std::string fqn;
  for (std::size_t i = 0; i < path.size(); ++i) {
    if (i) fqn += '.';
    if (const auto* key = std::get_if<std::string>(&path[i])) fqn += *key;
    else fqn += std::to_string(std::get<std::int64_t>(path[i]));
  }
  return fqn;
}

namespace {
// Whether Python reads `s` back: pickle decodes strings as UTF-8 with "surrogatepass", so lone
// surrogates (which Python keys may hold) pass, and nothing else that is not UTF-8 does. A
// string Python cannot decode makes torch's load of the whole `.metadata` or object fail.
bool python_reads_utf8(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    std::size_t len = 0;
    std::uint32_t code = 0, least = 0;
    if ((c & 0xE0) == 0xC0) len = 2, code = c & 0x1Fu, least = 0x80;
    else if ((c & 0xF0) == 0xE0) len = 3, code = c & 0x0Fu, least = 0x800;
    else if ((c & 0xF8) == 0xF0) len = 4, code = c & 0x07u, least = 0x10000;
    else return false;
    if (s.size() - i < len) return false;
    for (std::size_t k = 1; k < len; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      code = (code << 6) | (cc & 0x3Fu);
    }
    if (code < least || code > 0x10FFFF) return false;
    i += len;
  }
  return true;
}

// Every string of the value at `root` (dict keys included) must be one Python reads back.
void check_object_strings(std::string_view fqn, const pickle::Document& doc, pickle::NodeId root) {
  std::vector<bool> seen(doc.size(), false);
  std::vector<pickle::NodeId> stack{root};
  while (!stack.empty()) {
    const auto id = stack.back();
    stack.pop_back();
    if (id == pickle::kNoNode || id >= seen.size() || seen[id]) continue;
    seen[id] = true;
    const auto node = doc.at(id);
    if (node.kind() == pickle::NodeKind::string && !python_reads_utf8(node.text()))
      fail_for_key(Errc::invalid_argument, fqn, "the object holds a string that is not UTF-8, which Python cannot load");
    for (auto child : node.items()) stack.push_back(child);
    stack.push_back(node.callee());
    stack.push_back(node.args());
    stack.push_back(node.state());
  }
}
}  // namespace

void StateDict::insert(std::vector<metadata::PathPart> path, Value value) {
  if (path.empty()) throw Error(Errc::invalid_argument, "a state dict entry needs a non-empty path");
  std::string fqn = join_path(path);
  if (!python_reads_utf8(fqn))
    fail_for_key(Errc::invalid_argument, fqn, "the key is not UTF-8, which Python cannot load from .metadata");
  if (index_.contains(fqn))
    fail_for_key(Errc::invalid_argument, fqn, "the state dict holds this key twice after flattening");
  index_.emplace(fqn, entries_.size());
  entries_.push_back(Entry{std::move(fqn), std::move(path), std::move(value)});
}

namespace {
void check_chunk_memory(std::string_view fqn, DType dtype, const SaveChunk& chunk, const Shape& global_size) {
  const auto& m = chunk.memory;
  if (dtype_info(dtype).rebuild == TensorRebuild::none)
    fail_for_key(Errc::unimplemented, fqn, std::string("saving ") + std::string(dtype_name(dtype)) + " tensors is not supported");
  if (m.dtype != dtype)
    fail_for_key(Errc::invalid_argument, fqn, std::string("chunk memory is ") + std::string(dtype_name(m.dtype)) +
                                                  ", the tensor " + std::string(dtype_name(dtype)));
  if (m.strides.size() != m.sizes.size())
    fail_for_key(Errc::invalid_argument, fqn, "chunk memory has " + std::to_string(m.strides.size()) + " strides for " +
                                                  std::to_string(m.sizes.size()) + " dims");
  for (auto s : m.strides)
    if (s < 0) fail_for_key(Errc::invalid_argument, fqn, "chunk memory has a negative stride");
  const layout::Box box{chunk.offsets, m.sizes};
  if (!layout::is_inside(box, global_size))
    fail_for_key(Errc::invalid_argument, fqn, "chunk " + layout::format_box(box) + " lies outside the tensor of shape " +
                                                  layout::format_shape(global_size));
  if (!m.data && numel(m) != 0) fail_for_key(Errc::invalid_argument, fqn, "chunk has no memory");
}
}  // namespace

void StateDict::add_tensor(std::vector<metadata::PathPart> path, TensorSlice memory, bool requires_grad) {
  SaveTensor t;
  t.global_size = memory.sizes;
  t.properties.dtype = memory.dtype;
  t.properties.requires_grad = requires_grad;
  t.chunks.push_back(SaveChunk{Shape(memory.sizes.size(), 0), std::move(memory)});
  check_chunk_memory(join_path(path), t.properties.dtype, t.chunks[0], t.global_size);
  insert(std::move(path), std::move(t));
}

void StateDict::add_sharded_tensor(std::vector<metadata::PathPart> path, Shape global_size,
                                   metadata::TensorProperties properties, std::vector<SaveChunk> chunks) {
  const auto fqn = join_path(path);
  for (auto s : global_size)
    if (s < 0) fail_for_key(Errc::invalid_argument, fqn, "negative size in " + layout::format_shape(global_size));
  for (const auto& c : chunks) check_chunk_memory(fqn, properties.dtype, c, global_size);
  insert(std::move(path), SaveTensor{std::move(global_size), properties, std::move(chunks), /*sharded=*/true});
}

void StateDict::add_object(std::vector<metadata::PathPart> path, ObjectValue value) {
  if (!value.document || value.id == pickle::kNoNode || value.id >= value.document->size())
    fail_for_key(Errc::invalid_argument, join_path(path), "object value without a document node");
  check_object_strings(join_path(path), *value.document, value.id);
  insert(std::move(path), std::move(value));
}

const StateDict::Entry* StateDict::find(std::string_view fqn) const {
  auto it = index_.find(std::string(fqn));
  return it == index_.end() ? nullptr : &entries_[it->second];
}

std::uint64_t StateDict::tensor_bytes() const {
  std::uint64_t total = 0;
  for (const auto& e : entries_)
    if (const auto* t = std::get_if<SaveTensor>(&e.value))
      for (const auto& c : t->chunks) total = add_or_throw(total, metadata::byte_size(c.memory.sizes, c.memory.dtype), "state dict bytes");
  return total;
}

// ---- DefaultSavePlanner -----------------------------------------------------------------------

void DefaultSavePlanner::set_up_planner(const StateDict& state_dict, bool is_coordinator) {
  state_dict_ = &state_dict;
  is_coordinator_ = is_coordinator;
}

SavePlan DefaultSavePlanner::create_local_plan() {
  if (!state_dict_) throw Error(Errc::failed_precondition, "create_local_plan before set_up_planner");
  SavePlan plan;
  for (const auto& entry : state_dict_->entries()) {
    plan.planner_data.emplace_back(entry.fqn, entry.path);
    if (const auto* t = std::get_if<SaveTensor>(&entry.value)) {
      for (const auto& chunk : t->chunks) {
        WriteItem item;
        item.index = metadata::MetadataIndex{entry.fqn, chunk.offsets, std::nullopt};
        item.type = t->sharded ? WriteItemType::shard : WriteItemType::tensor;
        item.tensor_data = TensorWriteData{layout::Box{chunk.offsets, chunk.memory.sizes}, t->properties, t->global_size};
        plan.items.push_back(std::move(item));
      }
    } else {
      WriteItem item;
      item.index = metadata::MetadataIndex{entry.fqn, std::nullopt, std::nullopt};
      item.type = WriteItemType::byte_io;
      plan.items.push_back(std::move(item));
    }
  }
  return plan;
}

std::pair<std::vector<SavePlan>, metadata::Metadata> DefaultSavePlanner::create_global_plan(std::vector<SavePlan> plans) {
  return create_global_save_plan(dedup_save_plans(std::move(plans), options_.dedup_save_to_lowest_rank));
}

SavePlan DefaultSavePlanner::finish_plan(SavePlan central_plan) { return central_plan; }

ResolvedData DefaultSavePlanner::resolve_data(const WriteItem& item) {
  if (!state_dict_) throw Error(Errc::failed_precondition, "resolve_data before set_up_planner");
  const auto* entry = state_dict_->find(item.index.fqn);
  if (!entry) fail_for_key(Errc::invalid_argument, item.index.fqn, "write item names no state dict entry");
  if (item.type == WriteItemType::byte_io) {
    const auto* object = std::get_if<ObjectValue>(&entry->value);
    if (!object) fail_for_key(Errc::invalid_argument, item.index.fqn, "object write item for a tensor entry");
    return *object;
  }
  const auto* tensor = std::get_if<SaveTensor>(&entry->value);
  if (!tensor || !item.index.offset)
    fail_for_key(Errc::invalid_argument, item.index.fqn, "tensor write item for an object entry");
  for (const auto& chunk : tensor->chunks)
    if (chunk.offsets == *item.index.offset) return chunk.memory;
  fail_for_key(Errc::invalid_argument, item.index.fqn,
               "no local chunk at offsets " + layout::format_shape(*item.index.offset));
}

// ---- Global planning --------------------------------------------------------------------------

namespace {

// Every item's fqn id, plan by plan (flat: plan p's items start at begin[p]). Ranks usually
// plan the same keys in the same order, so an item is first compared with the item at the same
// position of the previous plan (on several threads, as those comparisons are independent);
// only the others cost a hash lookup.
struct ItemFqns {
  std::vector<std::size_t> begin;
  std::vector<std::uint32_t> fqn;
  std::size_t fqn_count = 0;
};

std::vector<std::size_t> plan_starts(const std::vector<SavePlan>& plans) {
  std::vector<std::size_t> begin;
  begin.reserve(plans.size() + 1);
  std::size_t total = 0;
  for (const auto& plan : plans) {
    begin.push_back(total);
    total += plan.items.size();
  }
  begin.push_back(total);
  if (total >= 0xFFFFFFFFu) throw Error(Errc::resource_exhausted, "save plans of 2^32 items or more");
  return begin;
}

// `visit(flat, item)` runs on every item in that same pass (each item is read from memory once).
template <class Visit>
ItemFqns fqn_ids(const std::vector<SavePlan>& plans, Visit visit) {
  ItemFqns out;
  out.begin = plan_starts(plans);
  const std::size_t total = out.begin.back();
  std::vector<unsigned char> as_before(total, 0);  // same fqn as the previous plan's item here
  parallel_for(plans.size(), total, [&](std::size_t p) {
    const auto& items = plans[p].items;
    const auto* before = p > 0 ? &plans[p - 1].items : nullptr;
    for (std::size_t i = 0; i < items.size(); ++i) {
      const std::size_t flat = out.begin[p] + i;
      as_before[flat] = before && i < before->size() && items[i].index.fqn == (*before)[i].index.fqn;
      visit(flat, items[i]);
    }
  });
  std::unordered_map<std::string_view, std::uint32_t> ids;
  out.fqn.resize(total);
  for (std::size_t p = 0; p < plans.size(); ++p) {
    const auto& items = plans[p].items;
    for (std::size_t i = 0; i < items.size(); ++i) {
      const std::size_t flat = out.begin[p] + i;
      if (as_before[flat])
        out.fqn[flat] = out.fqn[out.begin[p - 1] + i];
      else
        out.fqn[flat] = ids.emplace(items[i].index.fqn, static_cast<std::uint32_t>(ids.size())).first->second;
    }
  }
  out.fqn_count = ids.size();
  return out;
}

std::uint64_t hash_offsets(const std::optional<Shape>& offsets) {
  if (!offsets) return 0x9e3779b97f4a7c15ull;  // objects
  std::uint64_t h = 0xcbf29ce484222325ull ^ offsets->size();
  for (auto v : *offsets) h = (h ^ static_cast<std::uint64_t>(v)) * 0x100000001b3ull;
  return h ^ (h >> 29);
}

}  // namespace

std::vector<SavePlan> dedup_save_plans(std::vector<SavePlan> plans, bool save_to_lowest_rank) {
  // Millions of items at 8k ranks: every pass over the items themselves runs in plan order
  // (sequential memory, on several threads); the passes that jump between plans read only
  // small flat arrays.
  const auto begin = plan_starts(plans);
  std::vector<std::uint64_t> hash(begin.back()), bytes(begin.back());  // offsets' hash; torch's `size or 1`
  const auto fqns = fqn_ids(plans, [&](std::size_t flat, const WriteItem& item) {
    hash[flat] = hash_offsets(item.index.offset);
    const auto size = item.tensor_storage_size().value_or(0);
    bytes[flat] = size ? size : 1;
  });
  const std::size_t total = fqns.fqn.size();
  // Items grouped by fqn, in plan order (a counting sort), with what grouping compares.
  struct Entry {
    std::uint64_t hash;
    std::uint32_t plan;
    std::uint32_t flat;
  };
  // Plans in blocks, each block's items of one fqn in a range of their own: the scatter runs
  // on several threads and keeps plan order within each fqn.
  const std::size_t blocks = std::min<std::size_t>(plans.size(), 64);
  auto block_plans = [&](std::size_t b) { return std::pair{b * plans.size() / blocks, (b + 1) * plans.size() / blocks}; };
  std::vector<std::size_t> fill(blocks * fqns.fqn_count, 0);  // per block and fqn: items, then where they go
  parallel_for(blocks, total, [&](std::size_t b) {
    const auto [first, last] = block_plans(b);
    for (std::size_t flat = fqns.begin[first]; flat < fqns.begin[last]; ++flat) ++fill[b * fqns.fqn_count + fqns.fqn[flat]];
  });
  std::vector<std::size_t> group_begin(fqns.fqn_count + 1, 0);
  for (std::size_t f = 0, at = 0; f < fqns.fqn_count; ++f) {
    group_begin[f] = at;
    for (std::size_t b = 0; b < blocks; ++b) at += std::exchange(fill[b * fqns.fqn_count + f], at);
    group_begin[f + 1] = at;
  }
  std::vector<Entry> grouped(total);
  parallel_for(blocks, total, [&](std::size_t b) {
    const auto [first, last] = block_plans(b);
    for (std::size_t p = first; p < last; ++p)
      for (std::size_t flat = fqns.begin[p]; flat < fqns.begin[p + 1]; ++flat)
        grouped[fill[b * fqns.fqn_count + fqns.fqn[flat]]++] =
            Entry{hash[flat], static_cast<std::uint32_t>(p), static_cast<std::uint32_t>(flat)};
  });
  auto offsets_at = [&](const Entry& e) -> const std::optional<Shape>& {
    return plans[e.plan].items[e.flat - fqns.begin[e.plan]].index.offset;
  };
  // Per fqn (on several threads): the distinct offsets, each a key. Most keys have one holder
  // and are kept where they are; a key held by several plans ("shared") gets an entry in
  // `shared`. Per item, in flat order so the passes below read it in sequence: kKept, or the
  // shared key's index (with kFirst on the item where torch first sees the key: its first
  // holder in plan order).
  constexpr std::uint32_t kKept = 0xFFFFFFFFu, kFirst = 0x80000000u, kNone = 0xFFFFFFFFu;
  struct Shared {
    std::vector<std::uint32_t> holders;  // plans, ascending, the first holder first
    std::uint32_t keeper = 0;
  };
  std::vector<std::vector<Shared>> shared_of(fqns.fqn_count);  // numbered per fqn, then joined
  std::vector<std::uint32_t> role(total, kKept);
  parallel_for(fqns.fqn_count, total, [&](std::size_t f) {
    struct Key {
      Entry first;
      std::uint32_t shared = kNone;
    };
    std::vector<Key> keys;
    auto& shared = shared_of[f];
    const std::size_t n = group_begin[f + 1] - group_begin[f];
    std::size_t slots = 16;
    while (slots < 2 * n) slots *= 2;
    std::vector<std::uint32_t> table(slots, kNone);
    for (std::size_t g = group_begin[f]; g < group_begin[f + 1]; ++g) {
      const auto& e = grouped[g];
      std::size_t slot = e.hash & (slots - 1);
      auto same_key = [&](const Key& key) { return key.first.hash == e.hash && offsets_at(key.first) == offsets_at(e); };
      while (table[slot] != kNone && !same_key(keys[table[slot]])) slot = (slot + 1) & (slots - 1);
      if (table[slot] == kNone) {
        table[slot] = static_cast<std::uint32_t>(keys.size());
        keys.push_back(Key{e});
        continue;
      }
      auto& key = keys[table[slot]];
      if (e.plan == key.first.plan) continue;  // twice in one plan: the global plan's error to report
      if (key.shared == kNone) {
        key.shared = static_cast<std::uint32_t>(shared.size());
        shared.push_back(Shared{{key.first.plan}});
        role[key.first.flat] = key.shared | kFirst;
      }
      auto& holders = shared[key.shared].holders;
      if (holders.back() != e.plan) holders.push_back(e.plan);
      role[e.flat] = key.shared;
    }
  });
  std::vector<Shared> shared;
  std::vector<std::uint32_t> shared_begin(fqns.fqn_count);
  for (std::size_t f = 0; f < fqns.fqn_count; ++f) {
    if (shared.size() + shared_of[f].size() >= kFirst)
      throw Error(Errc::resource_exhausted, "more than 2^31 keys held by several plans");
    shared_begin[f] = static_cast<std::uint32_t>(shared.size());
    std::move(shared_of[f].begin(), shared_of[f].end(), std::back_inserter(shared));
  }
  for (std::size_t flat = 0; flat < total; ++flat)
    if (role[flat] != kKept) role[flat] += shared_begin[fqns.fqn[flat]];  // kFirst stays set: indices < 2^31
  if (shared.empty()) return plans;  // nothing is held twice: every plan keeps all it has
  // Keys in the order torch first sees them (plan by plan); a shared one goes to its lowest
  // rank, or to the rank with the fewest bytes planned so far (ties: the lowest rank).
  std::vector<std::uint64_t> planned(plans.size(), 0);
  for (std::size_t p = 0; p < plans.size(); ++p)
    for (std::size_t flat = fqns.begin[p]; flat < fqns.begin[p + 1]; ++flat) {
      std::uint32_t best = static_cast<std::uint32_t>(p);
      if (role[flat] == kKept) {
      } else if (role[flat] & kFirst) {
        auto& key = shared[role[flat] & ~kFirst];
        if (!save_to_lowest_rank)
          for (auto holder : key.holders)
            if (planned[holder] < planned[best]) best = holder;
        key.keeper = best;
      } else {
        continue;  // not where torch first sees it
      }
      planned[best] += bytes[flat];
    }
  for (std::size_t p = 0; p < plans.size(); ++p) {
    auto& items = plans[p].items;
    auto kept = [&](std::size_t i) {
      const auto r = role[fqns.begin[p] + i];
      return r == kKept || shared[r & ~kFirst].keeper == p;
    };
    std::size_t out = 0;
    for (std::size_t i = 0; i < items.size(); ++i)
      if (kept(i)) {
        if (out != i) items[out] = std::move(items[i]);
        ++out;
      }
    items.resize(out);
  }
  return plans;
}

std::pair<std::vector<SavePlan>, metadata::Metadata> create_global_save_plan(std::vector<SavePlan> plans) {
  // Millions of items at 8k ranks. A parallel pass reads each item once (its kind); the steps
  // that depend on order (where a key first appears, plain tensor versus shards, each chunk's
  // place in its list) run over flat arrays in plan order; a second parallel pass compares each
  // item with its key's metadata and copies its chunk. The error is the one a loop over the
  // items in plan order would raise first.
  enum Kind : std::uint8_t { kObject, kPlain, kShard, kMalformed };
  std::vector<std::uint8_t> kind(plan_starts(plans).back());
  const auto fqns = fqn_ids(plans, [&](std::size_t flat, const WriteItem& item) {
    if (item.type == WriteItemType::byte_io)
      kind[flat] = kObject;
    else if (!item.tensor_data || !item.index.offset || *item.index.offset != item.tensor_data->chunk.offsets)
      kind[flat] = kMalformed;
    else
      kind[flat] = item.type == WriteItemType::tensor ? kPlain : kShard;
  });
  const std::size_t total = kind.size();
  auto item_at = [&](std::size_t p, std::size_t flat) -> WriteItem& { return plans[p].items[flat - fqns.begin[p]]; };

  metadata::Metadata md;
  constexpr std::uint32_t kUnseen = 0xFFFFFFFFu;
  std::vector<std::uint32_t> item_of(fqns.fqn_count, kUnseen);  // fqn id → position in md.items
  std::vector<std::uint32_t> chunk_of(total);                   // a tensor item's place in its chunk list
  std::vector<std::uint32_t> chunk_count;                       // per md item
  std::vector<bool> has_plain;                                  // per md item: an object or plain tensor seen
  std::size_t failed = total;                                   // the first item the order-dependent checks fail
  const char* failure = nullptr;
  bool content_checked_first = false;  // the comparisons with the key's metadata come before that check
  for (std::size_t p = 0; p < plans.size() && failed == total; ++p)
    for (std::size_t flat = fqns.begin[p]; flat < fqns.begin[p + 1]; ++flat) {
      auto fail = [&](const char* message, bool after_content) {
        failed = flat;
        failure = message;
        content_checked_first = after_content;
      };
      auto& position = item_of[fqns.fqn[flat]];
      const bool fresh = position == kUnseen;
      if (kind[flat] == kMalformed) {
        fail("tensor write item without matching chunk data", false);
        break;
      }
      if (fresh) {
        const auto& item = item_at(p, flat);
        position = static_cast<std::uint32_t>(md.items.size());
        if (kind[flat] == kObject)
          md.items.push_back(metadata::ItemMetadata{item.index.fqn, metadata::BytesStorageMetadata{}, 0});
        else
          md.items.push_back(metadata::ItemMetadata{
              item.index.fqn, metadata::TensorStorageMetadata{item.tensor_data->properties, item.tensor_data->size, {}}, 0});
        has_plain.push_back(kind[flat] == kObject);
        chunk_count.push_back(0);
        if (kind[flat] == kObject) continue;
      } else if (kind[flat] == kObject) {
        fail("saved twice, or as an object and as a tensor", false);
        break;
      } else if (!md.items[position].is_tensor()) {
        fail("saved as an object and as a tensor", false);
        break;
      }
      if (kind[flat] == kPlain) {
        if (has_plain[position] || chunk_count[position] != 0) {
          fail("a plain tensor saved twice, or also as shards", true);
          break;
        }
        has_plain[position] = true;
      } else if (has_plain[position]) {
        fail("shards of a tensor that is also saved plain", true);
        break;
      }
      chunk_of[flat] = chunk_count[position]++;
    }
  parallel_for(md.items.size(), total, [&](std::size_t position) {  // fresh pages: faulted in on every core
    if (md.items[position].is_tensor())
      std::get<metadata::TensorStorageMetadata>(md.items[position].storage).chunks.resize(chunk_count[position]);
  });
  const std::size_t checked_end = failed + (content_checked_first ? 1 : 0);
  parallel_for(plans.size(), total, [&](std::size_t p) {
    for (std::size_t flat = fqns.begin[p]; flat < std::min(fqns.begin[p + 1], checked_end); ++flat) {
      if (kind[flat] == kObject) continue;
      auto& item = item_at(p, flat);
      const auto& fqn = item.index.fqn;
      const auto& data = *item.tensor_data;
      auto& tensor = std::get<metadata::TensorStorageMetadata>(md.items[item_of[fqns.fqn[flat]]].storage);
      if (tensor.size != data.size)
        fail_for_key(Errc::invalid_argument, fqn, "ranks disagree on the global size: " + layout::format_shape(tensor.size) +
                                                      " and " + layout::format_shape(data.size));
      const auto& a = tensor.properties;
      const auto& b = data.properties;
      if (a.dtype != b.dtype || a.requires_grad != b.requires_grad || a.memory_format != b.memory_format ||
          a.pin_memory != b.pin_memory)
        fail_for_key(Errc::invalid_argument, fqn, "ranks disagree on the tensor's properties (dtype " +
                                                      std::string(dtype_name(a.dtype)) + " and " +
                                                      std::string(dtype_name(b.dtype)) + ")");
      if (flat == failed) break;  // its order-dependent check fails next
      item.index.index = static_cast<std::int64_t>(chunk_of[flat]);
      tensor.chunks[chunk_of[flat]] = metadata::ChunkStorageMetadata{data.chunk.offsets, data.chunk.sizes, 0};
    }
  });
  if (failed < total) {
    std::size_t p = 0;
    while (fqns.begin[p + 1] <= failed) ++p;
    fail_for_key(Errc::invalid_argument, item_at(p, failed).index.fqn, failure);
  }
  // The chunks must tile each tensor: inside, disjoint and covering it (layout::check_tiling).
  // Each tensor on its own: on several threads at thousands of ranks.
  parallel_for(md.items.size(), metadata::tensor_chunk_count(md), [&](std::size_t position) {
    const auto& entry = md.items[position];
    if (!entry.is_tensor()) return;
    const auto& t = entry.tensor();
    std::vector<layout::Box> boxes;
    boxes.reserve(t.chunks.size());
    for (const auto& c : t.chunks) {
      if (!layout::is_inside(c.offsets, c.sizes, t.size))
        fail_for_key(Errc::invalid_argument, entry.fqn, "chunk " + layout::format_box(c.box()) +
                                                            " lies outside the tensor of shape " + layout::format_shape(t.size));
      boxes.push_back(c.box());
    }
    const auto tiling = layout::check_tiling(boxes, t.size);
    if (const auto& pair = tiling.overlap)
      fail_for_key(Errc::invalid_argument, entry.fqn, "chunks " + layout::format_box(boxes[pair->first]) + " and " +
                                                          layout::format_box(boxes[pair->second]) + " overlap");
    if (tiling.covered != tiling.total)
      fail_for_key(Errc::invalid_argument, entry.fqn,
                   "the saved chunks cover " + std::to_string(tiling.covered) + " of " + std::to_string(tiling.total) +
                       " elements");
  });
  // planner_data: every rank's paths (torch's ChainMap: the first plan holding a key wins).
  std::vector<std::pair<std::string, std::vector<metadata::PathPart>>> paths;
  std::unordered_map<std::string_view, bool> wanted;  // md's keys → already given a path
  for (const auto& entry : md.items) wanted.emplace(entry.fqn, false);
  for (const auto& plan : plans)
    for (const auto& [fqn, path] : plan.planner_data)
      if (auto it = wanted.find(fqn); it != wanted.end() && !it->second) {
        it->second = true;
        paths.emplace_back(fqn, path);
      }
  md.planner_data = std::move(paths);
  md.reindex();
  return {std::move(plans), std::move(md)};
}

}  // namespace dcp::planning
