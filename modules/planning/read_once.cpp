// Read-once loading: which saved items one rank reads for all (plan_read_once).
module;
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <unordered_map>
#include <utility>
#include <vector>
module dcp.planning;
import dcp.metadata;
import dcp.layout;

namespace dcp::planning {
namespace {

// A saved item: its position in Metadata::items and, for a tensor, the chunk's position.
struct ItemKey {
  std::size_t item = 0;
  std::size_t chunk = 0;
  friend bool operator==(const ItemKey&, const ItemKey&) = default;
};
struct ItemKeyHash {
  std::size_t operator()(const ItemKey& k) const noexcept { return k.item * 0x9e3779b97f4a7c15ULL ^ k.chunk; }
};

struct Demand {
  std::vector<int> ranks;     // ranks that read it, ascending (plans are visited in rank order)
  std::uint64_t spans = 0;    // elements the ranks' reads would fetch, summed (saturating)
};

}  // namespace

std::vector<SharedRead> plan_read_once(std::span<const LoadPlan> plans, const metadata::ValidatedMetadata& md) {
  std::unordered_map<ItemKey, Demand, ItemKeyHash> demand;
  for (std::size_t r = 0; r < plans.size(); ++r) {
    const int rank = static_cast<int>(r);
    for (const ReadItem& read : plans[r].items) {
      const auto& index = read.storage_index;
      const metadata::ItemMetadata* saved = md->find_item(index.fqn);
      const bool is_tensor = read.type == LoadItemType::tensor;
      if (!saved || saved->is_tensor() != is_tensor || (is_tensor && !index.offset)) continue;
      ItemKey key{static_cast<std::size_t>(saved - md->items.data()), std::numeric_limits<std::size_t>::max()};
      std::uint64_t span = 1;
      if (is_tensor) {
        const auto position = md.chunk_position(index.fqn, *index.offset);
        if (!position) continue;
        key.chunk = *position;
        const auto& chunk = saved->tensor().chunks[*position];
        if (!layout::is_inside(read.storage_offsets, read.lengths, chunk.sizes)) continue;
        if (std::ranges::find(read.lengths, 0) != read.lengths.end()) continue;  // an empty box reads nothing
        // What a strided read of it fetches from the chunk (row-major as stored).
        span = layout::span_elements(read.lengths, layout::contiguous_strides(chunk.sizes));
      }
      Demand& d = demand[key];
      if (d.ranks.empty() || d.ranks.back() != rank) d.ranks.push_back(rank);
      d.spans = d.spans > std::numeric_limits<std::uint64_t>::max() - span ? std::numeric_limits<std::uint64_t>::max()
                                                                           : d.spans + span;
    }
  }

  std::vector<std::pair<ItemKey, const Demand*>> shared;
  for (const auto& [key, d] : demand) {
    if (d.ranks.size() < 2) continue;
    const auto& saved = md->items[key.item];
    if (saved.is_tensor() && d.spans <= layout::volume(layout::full_box(saved.tensor().chunks[key.chunk].sizes)))
      continue;  // the ranks' reads are disjoint runs: together one copy
    shared.emplace_back(key, &d);
  }
  std::sort(shared.begin(), shared.end(), [](const auto& a, const auto& b) {
    return std::pair(a.first.item, a.first.chunk) < std::pair(b.first.item, b.first.chunk);
  });

  std::unordered_map<int, std::uint64_t> assigned;  // shared bytes per reader so far
  std::vector<SharedRead> reads;
  reads.reserve(shared.size());
  for (const auto& [key, d] : shared) {
    const auto& saved = md->items[key.item];
    SharedRead read;
    read.item.fqn = saved.fqn;
    if (saved.is_tensor()) read.item.offset = saved.tensor().chunks[key.chunk].offsets;
    const auto* info = md->find_storage(saved.fqn, read.item.offset ? &*read.item.offset : nullptr);
    read.stored_bytes = info ? info->length : 0;
    int best = d->ranks.front();
    for (int rank : d->ranks)
      if (assigned[rank] < assigned[best]) best = rank;
    read.reader = best;
    assigned[best] += read.stored_bytes;
    reads.push_back(std::move(read));
  }
  // Grouped by reader: one reader's consecutive items travel in one broadcast (a broadcast per
  // item costs two collectives and a read_data each: thousands of them at 4 ranks).
  std::stable_sort(reads.begin(), reads.end(), [](const SharedRead& a, const SharedRead& b) { return a.reader < b.reader; });
  return reads;
}

}  // namespace dcp::planning
