// The coordinator's half of saving: de-duplication of the ranks' plans and the global plan
// with its metadata (torch's _dedup_save_plans.py and create_global_plan). At thousands of
// ranks these see millions of items, so they run in passes over flat arrays, on every core.
module;
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>
module dcp.planning;
import dcp.error;
import dcp.metadata;
import dcp.layout;

namespace dcp::planning {

namespace {

// What the coordinator's passes need of each item, read from the plans once, plan by plan
// (flat: plan p's items start at begin[p]). Ranks usually plan the same keys in the same
// order, so an item's key is compared with the item at the same position of the previous plan
// (on several threads: those comparisons are independent); only the others cost a hash lookup.
// An item that agrees with the previous plan's item at its position (same key, and for tensors
// the same global size and properties) agrees with the key's metadata when that one did: the
// global plan reads only the items that start such a chain.
enum Kind : std::uint8_t { kObject, kPlain, kShard, kMalformed };
enum Likeness : std::uint8_t { kSameKey = 1, kSameTensor = 2 };
struct ItemFacts {
  std::vector<std::size_t> begin;
  std::vector<std::uint32_t> fqn;          // key ids
  std::size_t fqn_count = 0;
  std::vector<std::uint64_t> key;          // offsets_key (what de-duplication compares)
  std::vector<std::uint64_t> bytes;        // torch's `tensor_storage_size or 1`
  std::vector<std::uint8_t> kind;
  std::vector<std::uint8_t> like_before;   // Likeness bits
  std::vector<std::uint8_t> dropped;       // set by de-duplication: another plan keeps it
  // Every plan lists the same keys, each once, in the same order: item i of every plan is
  // key id i (what torch's trainers plan: each rank its own part of every tensor).
  bool regular = false;
  const WriteItem& item(const std::vector<SavePlan>& plans, std::size_t p, std::size_t flat) const {
    return plans[p].items[flat - begin[p]];
  }
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

bool same_properties(const metadata::TensorProperties& a, const metadata::TensorProperties& b) {
  return a.dtype == b.dtype && a.requires_grad == b.requires_grad && a.memory_format == b.memory_format &&
         a.pin_memory == b.pin_memory;
}

// What de-duplication compares of an item's offsets: with the top bit set, the offsets
// themselves (up to 2 dims, each below 2^30: every layout in practice), so that equal keys
// mean equal offsets; else a hash (top bit clear), whose matches are compared item by item.
constexpr std::uint64_t kExactKey = std::uint64_t{1} << 63;
std::uint64_t offsets_key(const std::optional<Shape>& offsets) {
  if (!offsets) return 0x1e3779b97f4a7c15ull;  // objects: compared item by item
  constexpr std::int64_t kLimit = std::int64_t{1} << 30;
  const auto& o = *offsets;
  if (o.size() <= 2 && std::all_of(o.begin(), o.end(), [](std::int64_t v) { return v >= 0 && v < kLimit; })) {
    std::uint64_t key = kExactKey | std::uint64_t{o.size()} << 60;
    for (std::size_t d = 0; d < o.size(); ++d) key |= static_cast<std::uint64_t>(o[d]) << (30 * (1 - d));
    return key;
  }
  return layout::hash_shape(o) & ~kExactKey;
}

void prefetch_item(const WriteItem& item) {
  for (std::size_t line = 0; line < sizeof(WriteItem); line += 64)
    __builtin_prefetch(reinterpret_cast<const char*>(&item) + line);
}

ItemFacts read_items(const std::vector<SavePlan>& plans) {
  constexpr std::size_t kAhead = 4;
  ItemFacts out;
  out.begin = plan_starts(plans);
  const std::size_t total = out.begin.back();
  out.key.resize(total);
  out.bytes.resize(total);
  out.kind.resize(total);
  out.like_before.resize(total);
  parallel_for(plans.size(), total, [&](std::size_t p) {
    const auto& items = plans[p].items;
    const auto* before = p > 0 ? &plans[p - 1].items : nullptr;
    for (std::size_t i = 0; i < items.size(); ++i) {
      const std::size_t flat = out.begin[p] + i;
      const auto& item = items[i];
      if (i + kAhead < items.size()) {  // two streams of items, each a few lines long
        prefetch_item(items[i + kAhead]);
        if (before && i + kAhead < before->size()) prefetch_item((*before)[i + kAhead]);
      }
      std::uint8_t like = 0;
      if (before && i < before->size() && item.index.fqn == (*before)[i].index.fqn) {
        const auto& a = item.tensor_data;
        const auto& b = (*before)[i].tensor_data;
        like = kSameKey;
        if (a && b && a->size == b->size && same_properties(a->properties, b->properties)) like |= kSameTensor;
      }
      out.like_before[flat] = like;
      out.key[flat] = offsets_key(item.index.offset);
      const auto size = item.tensor_storage_size().value_or(0);
      out.bytes[flat] = size ? size : 1;
      if (item.type == WriteItemType::byte_io)
        out.kind[flat] = kObject;
      else if (!item.tensor_data || !item.index.offset || *item.index.offset != item.tensor_data->chunk.offsets)
        out.kind[flat] = kMalformed;
      else
        out.kind[flat] = item.type == WriteItemType::tensor ? kPlain : kShard;
    }
  });
  std::unordered_map<std::string_view, std::uint32_t> ids;
  out.fqn.resize(total);
  for (std::size_t p = 0; p < plans.size(); ++p) {
    const auto& items = plans[p].items;
    for (std::size_t i = 0; i < items.size(); ++i) {
      const std::size_t flat = out.begin[p] + i;
      if (out.like_before[flat] & kSameKey)
        out.fqn[flat] = out.fqn[out.begin[p - 1] + i];
      else
        out.fqn[flat] = ids.emplace(items[i].index.fqn, static_cast<std::uint32_t>(ids.size())).first->second;
    }
  }
  out.fqn_count = ids.size();
  const std::size_t width = plans.empty() ? 0 : plans[0].items.size();
  out.regular = out.fqn_count == width &&
                std::all_of(plans.begin(), plans.end(), [&](const SavePlan& plan) { return plan.items.size() == width; });
  for (std::size_t flat = width; out.regular && flat < total; ++flat) out.regular = out.like_before[flat] & kSameKey;
  return out;
}

// The order in which CPython iterates a set of the distinct non-negative ints `ascending`,
// added in that order (Objects/setobject.c, 3.7 on: a small int hashes to itself; 10 slots
// probed in a row when they fit, then the perturbed jump; the table grows to 4x the entries
// once 3/5 full, 2x past 50,000 entries). torch breaks de-duplication ties by it.
std::vector<std::uint32_t> python_set_order(std::span<const std::uint32_t> ascending) {
  constexpr std::size_t kLinearProbes = 9, kMinSize = 8;
  constexpr std::int64_t kEmpty = -1;
  auto insert = [](std::vector<std::int64_t>& table, std::uint32_t value) {
    const std::size_t mask = table.size() - 1;
    std::size_t perturb = value, i = value & mask;
    while (true) {
      const std::size_t probes = i + kLinearProbes <= mask ? kLinearProbes : 0;
      for (std::size_t j = 0; j <= probes; ++j)
        if (table[i + j] == kEmpty) {
          table[i + j] = value;
          return;
        }
      perturb >>= 5;
      i = (i * 5 + 1 + perturb) & mask;
    }
  };
  std::vector<std::int64_t> table(kMinSize, kEmpty);
  std::size_t used = 0;
  for (const auto value : ascending) {
    insert(table, value);
    ++used;
    if (used * 5 < (table.size() - 1) * 3) continue;
    const std::size_t min_used = used > 50000 ? used * 2 : used * 4;
    std::size_t size = kMinSize;
    while (size <= min_used) size <<= 1;
    std::vector<std::int64_t> grown(size, kEmpty);
    for (const auto v : table)
      if (v != kEmpty) insert(grown, static_cast<std::uint32_t>(v));
    table = std::move(grown);
  }
  std::vector<std::uint32_t> order;
  order.reserve(used);
  for (const auto v : table)
    if (v != kEmpty) order.push_back(static_cast<std::uint32_t>(v));
  return order;
}

// torch's de-duplication: marks in `facts.dropped` (left empty when nothing is) the items of
// `plans` that another plan keeps. Millions of items at 8k ranks: the passes jump between plans
// over flat arrays; the items themselves are read only where hashed offsets keys meet.
void dedup(const std::vector<SavePlan>& plans, ItemFacts& facts, bool save_to_lowest_rank) {
  const auto& key_of = facts.key;
  auto& bytes = facts.bytes;
  const std::size_t total = facts.fqn.size();
  // Per fqn, its items in plan order (on several threads): the distinct offsets, each a key.
  // Most keys have one holder and are kept where they are; a key held by several plans
  // ("shared") gets an entry in `shared`. Per item, in flat order so the passes below read it in
  // sequence: kKept, or the shared key's index (with kFirst on the item where torch first sees
  // the key: its first holder in plan order). kRepeat: the key again in the same plan, which
  // keeps it with the key (torch's plans hold sets of keys: a repeat neither counts nor is kept
  // apart).
  static constexpr std::uint32_t kKept = 0xFFFFFFFFu, kRepeat = 0xFFFFFFFEu, kFirst = 0x80000000u, kNone = 0xFFFFFFFFu;
  struct Entry {
    std::uint64_t key;  // offsets_key
    std::uint32_t plan;
    std::uint32_t flat;
  };
  struct Shared {
    std::vector<std::uint32_t> holders;  // plans, ascending, the first holder first
    std::uint32_t keeper = 0;
  };
  std::vector<std::vector<Shared>> shared_of(facts.fqn_count);  // numbered per fqn, then joined
  std::vector<std::uint32_t> role(total, kKept);
  auto offsets_at = [&](const Entry& e) -> const std::optional<Shape>& {
    return plans[e.plan].items[e.flat - facts.begin[e.plan]].index.offset;
  };
  // One fqn's keys, its items added in plan order.
  class KeyGroup {
   public:
    KeyGroup(std::size_t items, std::vector<Shared>& shared, std::vector<std::uint32_t>& role,
             std::vector<std::uint64_t>& bytes, const decltype(offsets_at)& offsets_at)
        : shared_(shared), role_(role), bytes_(bytes), offsets_at_(offsets_at) {
      std::size_t slots = 16;
      while (slots < 2 * items) slots *= 2;
      table_.assign(slots, kNone);
      keys_.reserve(items);
    }
    void add(const Entry& e) {
      const std::size_t mask = table_.size() - 1;
      std::size_t slot = hash_mix(e.key) & mask;
      auto same_key = [&](const Key& key) {
        return key.first.key == e.key && ((e.key & kExactKey) || offsets_at_(key.first) == offsets_at_(e));
      };
      while (table_[slot] != kNone && !same_key(keys_[table_[slot]])) slot = (slot + 1) & mask;
      if (table_[slot] == kNone) {
        table_[slot] = static_cast<std::uint32_t>(keys_.size());
        keys_.push_back(Key{e, e.flat});
        return;
      }
      auto& key = keys_[table_[slot]];
      key.last = e.flat;
      if (key.shared == kNone && e.plan == key.first.plan) {
        role_[e.flat] = kRepeat;
        first_plan_repeats_.emplace_back(table_[slot], e.flat);
        return;
      }
      if (key.shared == kNone) {
        key.shared = static_cast<std::uint32_t>(shared_.size());
        shared_.push_back(Shared{{key.first.plan}});
        role_[key.first.flat] = key.shared | kFirst;
      }
      auto& holders = shared_[key.shared].holders;
      if (holders.back() != e.plan) holders.push_back(e.plan);
      role_[e.flat] = key.shared;
    }
    void finish() {
      for (const auto& [k, flat] : first_plan_repeats_)
        if (keys_[k].shared != kNone) role_[flat] = keys_[k].shared;
      for (const auto& key : keys_)  // read where torch first sees the key
        if (key.last != key.first.flat) bytes_[key.first.flat] = bytes_[key.last];
    }

   private:
    struct Key {
      Entry first;
      std::uint32_t last = 0;  // the key's last item: torch counts its bytes
      std::uint32_t shared = kNone;
    };
    std::vector<std::uint32_t> table_;
    std::vector<Key> keys_;
    std::vector<std::pair<std::uint32_t, std::uint32_t>> first_plan_repeats_;  // (key, item)
    std::vector<Shared>& shared_;
    std::vector<std::uint32_t>& role_;
    std::vector<std::uint64_t>& bytes_;
    const decltype(offsets_at)& offsets_at_;
  };
  const std::size_t width = plans.empty() ? 0 : plans[0].items.size();
  if (facts.regular) {
    // Column c of every plan is fqn c: each fqn's items are read down its column, a few
    // columns at a time so that each plan's row of them is one read.
    constexpr std::size_t kColumns = 8, kAhead = 8;
    parallel_for((width + kColumns - 1) / kColumns, total, [&](std::size_t block) {
      const std::size_t first = block * kColumns, last = std::min(width, first + kColumns);
      std::vector<KeyGroup> groups;
      groups.reserve(last - first);
      for (std::size_t c = first; c < last; ++c) groups.emplace_back(plans.size(), shared_of[c], role, bytes, offsets_at);
      for (std::size_t p = 0; p < plans.size(); ++p) {
        if (p + kAhead < plans.size())  // rows lie a plan's width apart: the hardware does not follow
          __builtin_prefetch(&key_of[(p + kAhead) * width + first]);
        for (std::size_t c = first; c < last; ++c) {
          const std::size_t flat = p * width + c;
          groups[c - first].add(Entry{key_of[flat], static_cast<std::uint32_t>(p), static_cast<std::uint32_t>(flat)});
        }
      }
      for (auto& group : groups) group.finish();
    });
  } else {
    // Items grouped by fqn, in plan order: a counting sort over plans in blocks, each block's
    // items of one fqn in a range of their own, so the scatter runs on several threads.
    const std::size_t blocks = std::min<std::size_t>(plans.size(), 64);
    auto block_plans = [&](std::size_t b) {
      return std::pair{b * plans.size() / blocks, (b + 1) * plans.size() / blocks};
    };
    std::vector<std::size_t> fill(blocks * facts.fqn_count, 0);  // per block and fqn: items, then where they go
    parallel_for(blocks, total, [&](std::size_t b) {
      const auto [first, last] = block_plans(b);
      for (std::size_t flat = facts.begin[first]; flat < facts.begin[last]; ++flat)
        ++fill[b * facts.fqn_count + facts.fqn[flat]];
    });
    std::vector<std::size_t> group_begin(facts.fqn_count + 1, 0);
    for (std::size_t f = 0, at = 0; f < facts.fqn_count; ++f) {
      group_begin[f] = at;
      for (std::size_t b = 0; b < blocks; ++b) at += std::exchange(fill[b * facts.fqn_count + f], at);
      group_begin[f + 1] = at;
    }
    std::vector<Entry> grouped(total);
    parallel_for(blocks, total, [&](std::size_t b) {
      const auto [first, last] = block_plans(b);
      for (std::size_t p = first; p < last; ++p)
        for (std::size_t flat = facts.begin[p]; flat < facts.begin[p + 1]; ++flat)
          grouped[fill[b * facts.fqn_count + facts.fqn[flat]]++] =
              Entry{key_of[flat], static_cast<std::uint32_t>(p), static_cast<std::uint32_t>(flat)};
    });
    parallel_for(facts.fqn_count, total, [&](std::size_t f) {
      KeyGroup group(group_begin[f + 1] - group_begin[f], shared_of[f], role, bytes, offsets_at);
      for (std::size_t g = group_begin[f]; g < group_begin[f + 1]; ++g) group.add(grouped[g]);
      group.finish();
    });
  }
  std::vector<Shared> shared;
  std::vector<std::uint32_t> shared_begin(facts.fqn_count);
  for (std::size_t f = 0; f < facts.fqn_count; ++f) {
    if (shared.size() + shared_of[f].size() >= kFirst)
      throw Error(Errc::resource_exhausted, "more than 2^31 keys held by several plans");
    shared_begin[f] = static_cast<std::uint32_t>(shared.size());
    std::move(shared_of[f].begin(), shared_of[f].end(), std::back_inserter(shared));
  }
  if (shared.empty()) return;  // nothing is held twice: every plan keeps all it has
  for (std::size_t flat = 0; flat < total; ++flat)
    if (role[flat] < kRepeat) role[flat] += shared_begin[facts.fqn[flat]];  // kFirst stays set: indices < 2^31
  // Keys in the order torch first sees them (plan by plan); a shared one goes to its lowest
  // rank, or to the rank with the fewest bytes planned so far. torch takes `min` over the set
  // of holders, so a tie goes to the first of them in CPython's iteration order of that set.
  std::vector<std::uint64_t> planned(plans.size(), 0);
  for (std::size_t p = 0; p < plans.size(); ++p)
    for (std::size_t flat = facts.begin[p]; flat < facts.begin[p + 1]; ++flat) {
      std::uint32_t best = static_cast<std::uint32_t>(p);
      if (role[flat] == kRepeat) continue;
      if (role[flat] == kKept) {
      } else if (role[flat] & kFirst) {
        auto& key = shared[role[flat] & ~kFirst];
        if (!save_to_lowest_rank) {
          std::size_t tied = 0;
          for (auto holder : key.holders) {
            if (planned[holder] < planned[best]) {
              best = holder;
              tied = 0;
            }
            tied += planned[holder] == planned[best];
          }
          if (tied > 1)
            for (auto holder : python_set_order(key.holders))
              if (planned[holder] == planned[best]) {
                best = holder;
                break;
              }
        }
        key.keeper = best;
      } else {
        continue;  // not where torch first sees it
      }
      planned[best] += bytes[flat];
    }
  facts.dropped.assign(total, 0);
  parallel_for(plans.size(), total, [&](std::size_t p) {
    for (std::size_t flat = facts.begin[p]; flat < facts.begin[p + 1]; ++flat)
      facts.dropped[flat] = role[flat] < kRepeat && shared[role[flat] & ~kFirst].keeper != p;
  });
}

// Removes the dropped items from their plans (a drop moves the plan's later items).
std::vector<SavePlan> drop_items(std::vector<SavePlan> plans, const ItemFacts& facts) {
  if (facts.dropped.empty()) return plans;
  parallel_for(plans.size(), facts.dropped.size(), [&](std::size_t p) {
    auto& items = plans[p].items;
    std::size_t out = 0;
    for (std::size_t i = 0; i < items.size(); ++i) {
      if (facts.dropped[facts.begin[p] + i]) continue;
      if (out != i) items[out] = std::move(items[i]);
      ++out;
    }
    items.resize(out);
  });
  return plans;
}

// torch's create_global_plan over `plans` and their read_items facts, leaving out the items
// de-duplication dropped. Millions of items at 8k ranks:
//  1. one pass in plan order over flat arrays applies the rules that depend on order (where a
//     key first appears, objects, plain tensor versus shards) and compares each item with its
//     key's metadata; it reads an item only where a chain of like items starts (ReadItems'
//     like_before), so its error is the one a loop over the items in plan order meets first;
//  2. one pass over the items (on several threads) keeps each plan's own, with their index
//     hints, and copies their chunks into the metadata;
//  3. each tensor's chunks are checked to tile it (on several threads).
std::pair<std::vector<SavePlan>, metadata::Metadata> global_plan(std::vector<SavePlan> plans, const ItemFacts& facts) {
  const auto& kind = facts.kind;
  const std::size_t total = kind.size();
  auto dropped = [&](std::size_t flat) { return !facts.dropped.empty() && facts.dropped[flat]; };

  metadata::Metadata md;
  constexpr std::uint32_t kUnseen = 0xFFFFFFFFu;
  std::vector<std::uint32_t> item_of(facts.fqn_count, kUnseen);  // fqn id → position in md.items
  std::vector<std::uint32_t> chunk_of(total);                   // a kept tensor item's place in its chunk list
  std::vector<std::uint32_t> chunk_count;                       // per md item
  std::vector<bool> has_plain;                                  // per md item: an object or plain tensor seen
  std::vector<std::uint8_t> agrees(total, 0);                   // a tensor item agrees with its key's metadata
  for (std::size_t p = 0; p < plans.size(); ++p)
    for (std::size_t flat = facts.begin[p]; flat < facts.begin[p + 1]; ++flat) {
      auto fail = [&](const char* message) {
        fail_for_key(Errc::invalid_argument, facts.item(plans, p, flat).index.fqn, message);
      };
      auto& position = item_of[facts.fqn[flat]];
      const bool fresh = position == kUnseen;
      const bool is_tensor = kind[flat] == kPlain || kind[flat] == kShard;
      // Agreement with the key's metadata: inherited along a chain of like items, else compared.
      auto compare = [&](bool throw_on_mismatch) {
        if ((facts.like_before[flat] & kSameTensor) && agrees[facts.begin[p - 1] + (flat - facts.begin[p])]) {
          agrees[flat] = 1;
          return;
        }
        if (fresh || !md.items[position].is_tensor()) return;
        const auto& data = *facts.item(plans, p, flat).tensor_data;
        const auto& tensor = md.items[position].tensor();
        if (tensor.size == data.size && same_properties(tensor.properties, data.properties)) {
          agrees[flat] = 1;
        } else if (throw_on_mismatch) {
          const auto& fqn = facts.item(plans, p, flat).index.fqn;
          if (tensor.size != data.size)
            fail_for_key(Errc::invalid_argument, fqn, "ranks disagree on the global size: " +
                                                          layout::format_shape(tensor.size) + " and " +
                                                          layout::format_shape(data.size));
          fail_for_key(Errc::invalid_argument, fqn, "ranks disagree on the tensor's properties (dtype " +
                                                        std::string(dtype_name(tensor.properties.dtype)) + " and " +
                                                        std::string(dtype_name(data.properties.dtype)) + ")");
        }
      };
      if (dropped(flat)) {
        if (is_tensor) compare(false);  // for the chains through it
        continue;
      }
      if (kind[flat] == kMalformed) fail("tensor write item without matching chunk data");
      if (fresh) {
        const auto& item = facts.item(plans, p, flat);
        position = static_cast<std::uint32_t>(md.items.size());
        if (kind[flat] == kObject)
          md.items.push_back(metadata::ItemMetadata{item.index.fqn, metadata::BytesStorageMetadata{}, 0});
        else
          md.items.push_back(metadata::ItemMetadata{
              item.index.fqn, metadata::TensorStorageMetadata{item.tensor_data->properties, item.tensor_data->size, {}}, 0});
        has_plain.push_back(kind[flat] == kObject);
        chunk_count.push_back(0);
        agrees[flat] = is_tensor;
        if (kind[flat] == kObject) continue;
      } else if (kind[flat] == kObject) {
        fail("saved twice, or as an object and as a tensor");
      } else if (!md.items[position].is_tensor()) {
        fail("saved as an object and as a tensor");
      } else {
        compare(true);
      }
      if (kind[flat] == kPlain) {
        if (has_plain[position] || chunk_count[position] != 0) fail("a plain tensor saved twice, or also as shards");
        has_plain[position] = true;
      } else if (has_plain[position]) {
        fail("shards of a tensor that is also saved plain");
      }
      chunk_of[flat] = chunk_count[position]++;
    }
  // One pass over the items: each plan keeps its own (a drop moves the later ones), tensors get
  // their chunk's position as index hint and copy their chunk into the metadata. Plans go in
  // blocks, item by item across the block: consecutive ranks hold consecutive chunks, so the
  // chunk lists fill in runs while each plan is still read in order.
  std::vector<metadata::TensorStorageMetadata*> tensor_at(md.items.size(), nullptr);
  parallel_for(md.items.size(), total, [&](std::size_t position) {  // fresh pages: faulted in on every core
    if (!md.items[position].is_tensor()) return;
    tensor_at[position] = &std::get<metadata::TensorStorageMetadata>(md.items[position].storage);
    tensor_at[position]->chunks.resize(chunk_count[position]);
  });
  constexpr std::size_t kBlock = 32, kAhead = 2;
  parallel_for((plans.size() + kBlock - 1) / kBlock, total, [&](std::size_t block) {
    const std::size_t first = block * kBlock, last = std::min(plans.size(), first + kBlock);
    std::size_t out[kBlock] = {};
    std::size_t longest = 0;
    for (std::size_t p = first; p < last; ++p) longest = std::max(longest, plans[p].items.size());
    for (std::size_t i = 0; i < longest; ++i)
      for (std::size_t p = first; p < last; ++p) {
        auto& items = plans[p].items;
        if (i + kAhead < items.size()) {  // 32 streams of items: more than the hardware follows
          const auto* ahead = reinterpret_cast<const char*>(&items[i + kAhead]);
          __builtin_prefetch(ahead + 64, 1);  // about where the index hint lies (items are not line-aligned)
          __builtin_prefetch(ahead + 128);    // and the chunk
        }
        const std::size_t flat = facts.begin[p] + i;
        if (i >= items.size() || dropped(flat)) continue;
        auto& kept = out[p - first];
        if (kept != i) items[kept] = std::move(items[i]);
        auto& item = items[kept++];
        if (kind[flat] == kObject) continue;
        item.index.index = static_cast<std::int64_t>(chunk_of[flat]);
        auto& chunk = tensor_at[item_of[facts.fqn[flat]]]->chunks[chunk_of[flat]];
        chunk.offsets = item.tensor_data->chunk.offsets;
        chunk.sizes = item.tensor_data->chunk.sizes;
      }
    for (std::size_t p = first; p < last; ++p) plans[p].items.resize(out[p - first]);
  });
  // The chunks must tile each tensor: inside, disjoint and covering it (metadata::check_chunks).
  // Each tensor on its own: on several threads at thousands of ranks.
  parallel_for(md.items.size(), metadata::tensor_chunk_count(md), [&](std::size_t position) {
    const auto& entry = md.items[position];
    if (!entry.is_tensor()) return;
    const auto& t = entry.tensor();
    const auto problem = metadata::check_chunks(t);
    if (!problem) return;
    const auto box = [&](std::size_t i) { return layout::format_box(t.chunks[i].box()); };
    using Kind = metadata::ChunkProblem::Kind;
    if (problem->kind == Kind::overlap)
      fail_for_key(Errc::invalid_argument, entry.fqn, "chunks " + box(problem->other) + " and " + box(problem->chunk) + " overlap");
    if (problem->kind == Kind::gap)
      fail_for_key(Errc::invalid_argument, entry.fqn, "the saved chunks cover " + std::to_string(problem->covered) +
                                                          " of " + std::to_string(problem->total) + " elements");
    fail_for_key(Errc::invalid_argument, entry.fqn, "chunk " + box(problem->chunk) + " lies outside the tensor of shape " +
                                                        layout::format_shape(t.size));
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

}  // namespace

std::vector<SavePlan> dedup_save_plans(std::vector<SavePlan> plans, bool save_to_lowest_rank) {
  auto facts = read_items(plans);
  dedup(plans, facts, save_to_lowest_rank);
  return drop_items(std::move(plans), facts);
}

std::pair<std::vector<SavePlan>, metadata::Metadata> create_global_save_plan(std::vector<SavePlan> plans) {
  const auto facts = read_items(plans);
  return global_plan(std::move(plans), facts);
}

// Both steps on one reading of the items (at 8k ranks, reading them is most of the cost).
std::pair<std::vector<SavePlan>, metadata::Metadata> DefaultSavePlanner::create_global_plan(std::vector<SavePlan> plans) {
  auto facts = read_items(plans);
  dedup(plans, facts, options_.dedup_save_to_lowest_rank);
  return global_plan(std::move(plans), facts);
}

}  // namespace dcp::planning
