// check_tiling: does a tensor's chunk list tile it? A grid in linear time, anything else
// through a ChunkIndex. A coordinator planning thousands of ranks checks millions of chunks.
module;
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>
module dcp.layout;
import dcp.error;

namespace dcp::layout {
namespace {

// The distinct values of one coordinate, each mapped to its rank among them: an open-
// addressing table, as the boxes repeat each start many times (128 rows of 64 columns
// repeat every row start 64 times).
class DistinctStarts {
 public:
  DistinctStarts() { rehash(16); }
  void insert(std::int64_t v) {
    const std::size_t slot = find(v);
    if (used_[slot]) return;
    used_[slot] = 1;
    keys_[slot] = v;
    values_.push_back(v);
    if (2 * values_.size() > keys_.size()) rehash(2 * keys_.size());  // at most half full
  }
  // After every insert: numbers the values in ascending order.
  void seal() {
    std::sort(values_.begin(), values_.end());
    ranks_.resize(keys_.size());
    for (std::size_t k = 0; k < values_.size(); ++k) ranks_[find(values_[k])] = k;
  }
  const std::vector<std::int64_t>& sorted() const { return values_; }
  std::size_t rank_of(std::int64_t v) const { return ranks_[find(v)]; }  // v was inserted

 private:
  void rehash(std::size_t slots) {
    keys_.assign(slots, 0);
    used_.assign(slots, 0);
    for (auto v : values_) {
      const std::size_t slot = find(v);
      used_[slot] = 1;
      keys_[slot] = v;
    }
  }
  std::size_t find(std::int64_t v) const {
    const std::size_t mask = keys_.size() - 1;
    std::size_t slot = static_cast<std::size_t>(hash_mix(static_cast<std::uint64_t>(v))) & mask;
    while (used_[slot] && keys_[slot] != v) slot = (slot + 1) & mask;
    return slot;
  }
  std::vector<std::int64_t> keys_;
  std::vector<unsigned char> used_;
  std::vector<std::int64_t> values_;
  std::vector<std::size_t> ranks_;
};

// The boxes' dims, `rank` each: no box of them is copied.
struct BoxDims {
  std::span<const BoxRef> boxes;
  std::size_t rank;
  bool empty(const BoxRef& b) const noexcept {
    for (std::size_t d = 0; d < rank; ++d)
      if (b.sizes[d] == 0) return true;
    return false;
  }
  std::uint64_t volume(const BoxRef& b) const {
    std::uint64_t n = 1;
    for (std::size_t d = 0; d < rank; ++d)
      n = mul_or_throw(n, static_cast<std::uint64_t>(b.sizes[d]), "box volume");
    return n;
  }
};

// The non-empty boxes are the cells of a grid whose lines are their starts: per dim the
// smallest start is 0, each box ends where the next start (or the tensor) begins, and every
// cell is one box. Then they are disjoint and cover the tensor.
bool forms_grid(const BoxDims& dims, const Shape& size) {
  const std::size_t rank = dims.rank;
  std::size_t nonempty = 0;
  for (const auto& b : dims.boxes) nonempty += !dims.empty(b);
  if (rank == 0 || nonempty == 0) return false;
  std::vector<DistinctStarts> starts;
  starts.reserve(rank);
  std::size_t cells = 1;
  for (std::size_t d = 0; d < rank; ++d) {
    auto& s = starts.emplace_back();
    for (const auto& b : dims.boxes)
      if (!dims.empty(b)) s.insert(b.offsets[d]);
    s.seal();
    if (s.sorted().front() != 0) return false;
    cells *= s.sorted().size();  // each factor <= nonempty, and the product is checked below
    if (cells > nonempty) return false;
  }
  if (cells != nonempty) return false;
  std::vector<unsigned char> hit(cells, 0);
  for (const auto& b : dims.boxes) {
    if (dims.empty(b)) continue;
    std::size_t cell = 0;
    for (std::size_t d = 0; d < rank; ++d) {
      const auto& lines = starts[d].sorted();
      const std::size_t k = starts[d].rank_of(b.offsets[d]);
      const std::int64_t end = k + 1 < lines.size() ? lines[k + 1] : size[d];
      if (b.offsets[d] + b.sizes[d] != end) return false;
      cell = cell * lines.size() + k;
    }
    if (hit[cell]++) return false;
  }
  return true;
}

}  // namespace

// Empty boxes (torch.chunk's past the end of a dim, those de-duplication left one of) only
// need to lie inside. Of the others, per dim the grid's extents are read off at that dim's
// stride (box 0, stride, 2·stride, ...: each starts where the one before ends, from 0 to the
// tensor's size); then box i must be the cell its position names. Where forms_grid hashes
// every start, this reads the boxes once, in order.
bool lists_grid_in_order(std::span<const BoxRef> boxes, const Shape& size) {
  const std::size_t rank = size.size();
  if (rank == 0) return false;
  const BoxDims dims{boxes, rank};
  std::vector<BoxRef> cells;  // the non-empty boxes, in order
  cells.reserve(boxes.size());
  for (const auto& b : boxes) {
    if (!dims.empty(b))
      cells.push_back(b);
    else if (!is_inside(std::span(b.offsets, rank), std::span(b.sizes, rank), size))
      return false;
  }
  const std::size_t n = cells.size();
  struct Extent {
    std::int64_t start, size;
  };
  std::vector<std::vector<Extent>> lines(rank);
  std::size_t stride = 1;  // boxes between neighbours along dim d: the product of later dims' counts
  for (std::size_t d = rank; d-- > 0;) {
    std::int64_t end = 0;
    for (std::size_t j = 0; j < n && end < size[d] && cells[j].offsets[d] == end; j += stride) {
      const std::int64_t extent = cells[j].sizes[d];
      if (extent <= 0 || extent > size[d] - end) return false;
      lines[d].push_back(Extent{end, extent});
      end += extent;
    }
    if (end != size[d] || lines[d].empty() || lines[d].size() > n / stride) return false;
    stride *= lines[d].size();
  }
  if (stride != n) return false;
  std::vector<std::size_t> cell(rank, 0);  // box i's grid coordinates, counted up like an odometer
  for (const auto& b : cells) {
    for (std::size_t d = 0; d < rank; ++d) {
      const auto& line = lines[d][cell[d]];
      if (b.offsets[d] != line.start || b.sizes[d] != line.size) return false;
    }
    for (std::size_t d = rank; d-- > 0 && ++cell[d] == lines[d].size();) cell[d] = 0;
  }
  return true;
}

TilingCheck check_tiling(std::span<const BoxRef> boxes, const Shape& size) {
  const BoxDims dims{boxes, size.size()};
  TilingCheck check;
  check.total = volume(full_box(size));
  for (const auto& b : boxes) check.covered = add_or_throw(check.covered, dims.volume(b), "covered elements");
  if (check.covered == check.total && forms_grid(dims, size)) return check;
  std::vector<Box> copies;  // irregular: the tree needs boxes of its own
  copies.reserve(boxes.size());
  for (const auto& b : boxes)
    copies.push_back(Box{Shape(std::span(b.offsets, dims.rank)), Shape(std::span(b.sizes, dims.rank))});
  check.overlap = ChunkIndex(std::move(copies)).first_overlap();
  return check;
}

TilingCheck check_tiling(std::span<const Box> boxes, const Shape& size) {
  std::vector<BoxRef> refs;
  refs.reserve(boxes.size());
  for (const auto& b : boxes) refs.push_back(BoxRef{b.offsets.data(), b.sizes.data()});
  return check_tiling(refs, size);
}

}  // namespace dcp::layout
