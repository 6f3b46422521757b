// ChunkIndex: a static bounding-box tree over one tensor's saved chunks.
module;
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>
module dcp.layout;
import dcp.error;

namespace dcp::layout {
namespace {

constexpr std::size_t leaf_size = 8;

}  // namespace

ChunkIndex::ChunkIndex(std::vector<Box> boxes) : boxes_(std::move(boxes)) {
  if (boxes_.empty()) return;
  rank_ = boxes_.front().offsets.size();
  lo_.resize(boxes_.size() * rank_);
  hi_.resize(boxes_.size() * rank_);
  for (std::size_t i = 0; i < boxes_.size(); ++i) {
    const Box& b = boxes_[i];
    if (!is_valid(b) || b.offsets.size() != rank_)
      throw Error(Errc::invalid_argument, "chunk " + std::to_string(i) + " at " + format_box(b) +
                                              " is not a valid box of rank " + std::to_string(rank_));
    for (std::size_t d = 0; d < rank_; ++d) {
      lo_[i * rank_ + d] = b.offsets[d];
      hi_[i * rank_ + d] = b.offsets[d] + b.sizes[d];
    }
    if (!is_empty(b)) order_.push_back(i);
  }
  if (order_.empty()) return;
  nodes_.reserve(2 * (order_.size() / leaf_size + 1));
  build(0, order_.size());

  // Every box queried against the others: O(n (log n + k)), cheap next to reading the data.
  std::vector<std::size_t> hits;
  for (std::size_t id : order_) {
    hits.clear();
    query(lo_.data() + id * rank_, hi_.data() + id * rank_, hits);
    if (hits.size() > 1) {
      const std::size_t other = hits[0] != id ? hits[0] : hits[1];
      first_overlap_ = std::minmax(id, other);
      break;
    }
  }
}

std::size_t ChunkIndex::build(std::size_t begin, std::size_t end) {
  const std::size_t id = nodes_.size();
  nodes_.push_back(Node{begin, end, 0, 0});
  node_lo_.resize(node_lo_.size() + rank_, std::numeric_limits<std::int64_t>::max());
  node_hi_.resize(node_hi_.size() + rank_, std::numeric_limits<std::int64_t>::min());
  // Bounds of the node, and along which dim the chunk centres spread most.
  std::size_t split_dim = 0;
  std::int64_t best_spread = -1;
  for (std::size_t d = 0; d < rank_; ++d) {
    std::int64_t c_min = std::numeric_limits<std::int64_t>::max(), c_max = std::numeric_limits<std::int64_t>::min();
    for (std::size_t k = begin; k < end; ++k) {
      const std::size_t box = order_[k];
      const std::int64_t lo = lo_[box * rank_ + d], hi = hi_[box * rank_ + d];
      node_lo_[id * rank_ + d] = std::min(node_lo_[id * rank_ + d], lo);
      node_hi_[id * rank_ + d] = std::max(node_hi_[id * rank_ + d], hi);
      const std::int64_t centre = lo + (hi - lo) / 2;
      c_min = std::min(c_min, centre);
      c_max = std::max(c_max, centre);
    }
    if (c_max - c_min > best_spread) {
      best_spread = c_max - c_min;
      split_dim = d;
    }
  }
  // A 0-dim tensor has nothing to split on (and normally one chunk).
  if (end - begin <= leaf_size || rank_ == 0) return id;

  const std::size_t mid = begin + (end - begin) / 2;
  auto centre = [&](std::size_t box) {
    const std::int64_t lo = lo_[box * rank_ + split_dim];
    return lo + (hi_[box * rank_ + split_dim] - lo) / 2;
  };
  std::nth_element(order_.begin() + static_cast<std::ptrdiff_t>(begin),
                   order_.begin() + static_cast<std::ptrdiff_t>(mid),
                   order_.begin() + static_cast<std::ptrdiff_t>(end),
                   [&](std::size_t a, std::size_t b) { return centre(a) < centre(b); });
  const std::size_t left = build(begin, mid);
  const std::size_t right = build(mid, end);
  nodes_[id].left = left;  // nodes_ may have grown: index, do not hold a reference
  nodes_[id].right = right;
  return id;
}

bool ChunkIndex::node_meets(std::size_t node, const std::int64_t* lo, const std::int64_t* hi) const {
  const std::int64_t* n_lo = node_lo_.data() + node * rank_;
  const std::int64_t* n_hi = node_hi_.data() + node * rank_;
  for (std::size_t d = 0; d < rank_; ++d)
    if (n_lo[d] >= hi[d] || lo[d] >= n_hi[d]) return false;
  return true;
}

bool ChunkIndex::box_meets(std::size_t id, const std::int64_t* lo, const std::int64_t* hi) const {
  const std::int64_t* b_lo = lo_.data() + id * rank_;
  const std::int64_t* b_hi = hi_.data() + id * rank_;
  for (std::size_t d = 0; d < rank_; ++d)
    if (b_lo[d] >= hi[d] || lo[d] >= b_hi[d]) return false;
  return true;
}

void ChunkIndex::query(const std::int64_t* lo, const std::int64_t* hi, std::vector<std::size_t>& out) const {
  if (nodes_.empty()) return;
  std::vector<std::size_t> stack{0};
  while (!stack.empty()) {
    const std::size_t n = stack.back();
    stack.pop_back();
    if (!node_meets(n, lo, hi)) continue;
    const Node& node = nodes_[n];
    if (node.left == 0) {
      for (std::size_t k = node.begin; k < node.end; ++k)
        if (box_meets(order_[k], lo, hi)) out.push_back(order_[k]);
    } else {
      stack.push_back(node.right);
      stack.push_back(node.left);
    }
  }
}

std::vector<std::size_t> ChunkIndex::overlapping(const Box& dest) const {
  std::vector<std::size_t> hits;
  if (boxes_.empty()) return hits;
  if (!is_valid(dest) || dest.offsets.size() != rank_)
    throw Error(Errc::invalid_argument, "query box " + format_box(dest) + " is not a valid box of rank " +
                                            std::to_string(rank_));
  if (is_empty(dest)) return hits;
  Shape hi(rank_);
  for (std::size_t d = 0; d < rank_; ++d) hi[d] = dest.offsets[d] + dest.sizes[d];
  query(dest.offsets.data(), hi.data(), hits);
  std::sort(hits.begin(), hits.end());
  return hits;
}

}  // namespace dcp::layout
