// dcp.layout — chunk geometry: boxes in a tensor's global index space and how they meet.
//
// dcp.layout does the arithmetic that resharding needs, with no I/O and no torch: a `Box`
// (offsets + sizes per dimension), `intersect` (torch's overlap rule, giving the offsets inside
// the destination chunk and inside the saved chunk, as `ReadItem`s carry them), `chunk_split`
// (torch.chunk / ChunkShardingSpec row splits), `ChunkIndex` (a bounding-box tree over a
// tensor's saved chunks, so finding the chunks that meet a destination box does not scan
// them all).
//
// Conventions. A 0-dim box (a scalar) has empty shapes and volume 1; it meets every other
// 0-dim box. A box with any zero size is empty: it meets nothing, so zero-size saved chunks
// (DTensor shards past the end of a dimension) never produce reads. torch emits a zero-length
// ReadItem when such a chunk's offset lies inside the destination; it would copy nothing.
//
// Boxes from `.metadata` are untrusted: `is_valid` rejects negative numbers and ends that
// overflow int64, and every function here checks ranks before comparing. Errors are
// dcp::Error(invalid_argument) or (out_of_range) for overflow. Imports: dcp.error only, so
// dcp.metadata can validate chunk lists with `ChunkIndex`.
module;
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>
export module dcp.layout;
import dcp.error;

export namespace dcp::layout {

/// Sizes or offsets, one entry per dimension (torch.Size).
using Shape = std::vector<std::int64_t>;

/// A box in a tensor's global index space: `[offsets[d], offsets[d] + sizes[d])` per dim.
struct Box {
  Shape offsets;
  Shape sizes;
  friend bool operator==(const Box&, const Box&) = default;
};

/// The box covering a whole tensor of shape `size` (offsets all zero).
Box full_box(const Shape& size);

/// Row-major strides, in elements, of a dense tensor of `sizes` (torch's rule: a dim of size
/// 0 or 1 multiplies by 1). The one place strides are computed. Throws out_of_range when a
/// stride overflows int64, invalid_argument for a negative size.
Shape contiguous_strides(const Shape& sizes);

/// Ranks agree, no negative offset or size, and every end fits in int64.
bool is_valid(const Box& box) noexcept;
/// `box` is valid and lies inside a tensor of shape `size` (same rank).
bool is_inside(const Box& box, const Shape& size) noexcept;
/// No element: some size is zero (a 0-dim box is never empty).
bool is_empty(const Box& box) noexcept;
/// Number of elements (1 for a 0-dim box). Throws out_of_range on overflow, invalid_argument
/// for a negative size.
std::uint64_t volume(const Box& box);

/// "[40, 80) x [0, 7)" (a 0-dim box is "scalar"), for messages.
std::string format_box(const Box& box);
/// "(3, 4)", "(5,)" or "()", torch.Size style, for messages.
std::string format_shape(const Shape& shape);

/// Where a destination box and a saved box meet, in each box's own coordinates.
struct Overlap {
  Shape dest_offsets;     ///< start inside the destination box
  Shape storage_offsets;  ///< start inside the saved box
  Shape lengths;          ///< extent per dim, all > 0
  friend bool operator==(const Overlap&, const Overlap&) = default;
};

/// torch's overlap rule (planner_helpers / resharding): disjoint when any dim is disjoint.
/// nullopt when they do not meet or meet in zero elements. 0-dim boxes give an Overlap of
/// empty shapes. Throws invalid_argument when the ranks differ or a box is not valid.
std::optional<Overlap> intersect(const Box& dest, const Box& saved);

/// torch.chunk / ChunkShardingSpec split of `size` along `dim` into exactly `parts` boxes:
/// split = ceil(n / parts); part i starts at min(split * i, n) and has
/// max(min(n, split * (i + 1)) - split * i, 0) rows, so trailing parts may be empty (torch.chunk
/// drops those; ChunkShardingSpec gives their ranks no shard). Other dims are whole.
/// Throws invalid_argument for dim outside [0, rank), parts < 1 or a negative size.
std::vector<Box> chunk_split(const Shape& size, int dim, int parts);

/// The saved chunks of one tensor, indexed for "which chunks meet this box?".
///
/// A static bounding-volume tree: chunks are split recursively at the median of their
/// centres along the dimension where the centres spread most, at most 8 chunks per leaf,
/// and each node keeps the bounding box of its chunks. Build O(n log n · rank); a query
/// visits only nodes whose bounds meet the box, which for the disjoint tilings checkpoints
/// hold is O(log n + k) for k hits (worst case O(n) for pathological layouts). Memory
/// O(n · rank). Empty chunks are kept for numbering but never returned.
class ChunkIndex {
 public:
  ChunkIndex() = default;
  /// Throws invalid_argument when a box is not valid or the ranks differ.
  explicit ChunkIndex(std::vector<Box> boxes);

  std::size_t size() const noexcept { return boxes_.size(); }
  /// The i-th box, in the order given (= position in the metadata chunk list).
  const Box& box(std::size_t i) const { return boxes_.at(i); }

  /// Positions of the non-empty boxes that meet `dest` in at least one element, ascending
  /// (the order torch's all-pairs loop emits them in). Empty when `dest` is empty. Throws
  /// invalid_argument when `dest` is not valid or its rank differs from the boxes'.
  std::vector<std::size_t> overlapping(const Box& dest) const;

  /// No two non-empty boxes share an element (what torch's save-side validation
  /// guarantees). Then summed overlap volumes measure coverage exactly.
  bool is_disjoint() const noexcept { return !first_overlap_; }
  /// Two boxes that share an element (positions in the order given), when not disjoint.
  const std::optional<std::pair<std::size_t, std::size_t>>& first_overlap() const noexcept {
    return first_overlap_;
  }

 private:
  struct Node {
    std::size_t begin = 0, end = 0;  // range of `order_` below this node
    std::size_t left = 0, right = 0;  // child nodes; 0 for a leaf (the root is never a child)
  };
  std::size_t build(std::size_t begin, std::size_t end);
  bool node_meets(std::size_t node, const std::int64_t* lo, const std::int64_t* hi) const;
  bool box_meets(std::size_t id, const std::int64_t* lo, const std::int64_t* hi) const;
  void query(const std::int64_t* lo, const std::int64_t* hi, std::vector<std::size_t>& out) const;

  std::vector<Box> boxes_;
  std::size_t rank_ = 0;
  std::vector<std::int64_t> lo_, hi_;            // per box: rank_ starts, then rank_ ends
  std::vector<std::size_t> order_;               // non-empty boxes, permuted into tree order
  std::vector<Node> nodes_;
  std::vector<std::int64_t> node_lo_, node_hi_;  // per node: bounding box
  std::optional<std::pair<std::size_t, std::size_t>> first_overlap_;
};

}  // namespace dcp::layout
