// Read-once loading: which saved items one rank reads for all hosts (plan_read_once).
module;
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>
module dcp.planning;
import dcp.error;
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

// Whether a broadcast of `stored` bytes moves fewer of them over the slowest link than each
// host reading them for its ranks (plan_read_once's rule). `needing` are the ranks that read the
// item; `ranks_on` counts the group's ranks per host.
bool broadcast_is_cheaper(std::uint64_t stored, std::span<const int> needing, std::span<const int> host_of,
                          const std::unordered_map<int, std::uint64_t>& ranks_on, ReadTopology::Link slowest) {
  using Wide = unsigned __int128;  // bytes times ranks cannot overflow it
  std::vector<int> hosts;
  for (int rank : needing)
    if (std::ranges::find(hosts, host_of[static_cast<std::size_t>(rank)]) == hosts.end())
      hosts.push_back(host_of[static_cast<std::size_t>(rank)]);
  const Wide s = stored;
  if (slowest == ReadTopology::Link::storage) return s < s * hosts.size();
  // Each host's own link: reading puts S on each needing host's; a broadcast S (from storage)
  // plus S per rank elsewhere out of the reader's host, and S per rank into every other host.
  std::uint64_t world = 0;
  for (const auto& [host, count] : ranks_on) world += count;
  Wide best = ~Wide{0};
  for (int root_host : hosts) {
    Wide busiest = s + s * (world - ranks_on.at(root_host));
    for (const auto& [host, count] : ranks_on)
      if (host != root_host) busiest = std::max(busiest, s * count);
    best = std::min(best, busiest);
  }
  return best < s;
}

}  // namespace

std::vector<SharedRead> plan_read_once(std::span<const LoadPlan> plans, const metadata::ValidatedMetadata& md,
                                       const ReadTopology& topology) {
  std::vector<int> host_of = topology.host_of_rank;
  if (host_of.empty())
    for (std::size_t r = 0; r < plans.size(); ++r) host_of.push_back(static_cast<int>(r));
  if (host_of.size() != plans.size())
    throw Error(Errc::invalid_argument, "read-once topology names the hosts of " + std::to_string(host_of.size()) +
                                            " ranks, the group has " + std::to_string(plans.size()));
  std::unordered_map<int, std::uint64_t> ranks_on;
  for (int host : host_of) ++ranks_on[host];

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
    if (!broadcast_is_cheaper(read.stored_bytes, d->ranks, host_of, ranks_on, topology.slowest_link)) continue;
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
