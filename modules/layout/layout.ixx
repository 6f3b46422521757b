// dcp.layout — chunk geometry: boxes in a tensor's global index space and how they meet.
//
// dcp.layout does the arithmetic that resharding needs, with no I/O and no torch: a `Shape`
// (a dims vector stored inline), a `Box` (offsets + sizes per dimension), `intersect` (torch's
// overlap rule, giving the offsets inside the destination chunk and inside the saved chunk, as
// `ReadItem`s carry them), `chunk_split` (torch.chunk / ChunkShardingSpec row splits),
// `ChunkIndex` (a bounding-box tree over a tensor's saved chunks, so finding the chunks that
// meet a destination box does not scan them all), `check_tiling` (do a tensor's chunks tile
// it? linear for grids), and layouts both ways: forward, a DTensor-style `Layout` (mesh +
// placements) gives each rank's box (`local_box`); backward, `describe_layout`
// names the split that a saved chunk list is (rows, cols, grid, nested, irregular).
//
// Conventions. A 0-dim box (a scalar) has empty shapes and volume 1; it meets every other
// 0-dim box. A box with any zero size is empty: it meets nothing, so zero-size saved chunks
// (DTensor shards past the end of a dimension) never produce reads. torch emits a zero-length
// ReadItem when such a chunk's offset lies inside the destination; it would copy nothing.
//
// Boxes from `.metadata` are untrusted: `is_valid` rejects negative numbers and ends that
// overflow int64, and every function here checks ranks before comparing. Errors are
// dcp::Error(invalid_argument) or (out_of_range) for overflow. Imports: dcp.error only, so
// dcp.metadata can validate chunk lists with `check_tiling`.
module;
#include <algorithm>
#include <compare>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <iterator>
#include <optional>
#include <stdexcept>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>
export module dcp.layout;
import dcp.error;

export namespace dcp::layout {

/// Sizes or offsets, one entry per dimension (torch.Size): a vector of int64 whose first
/// `kInline` entries live inside the object. A checkpoint saved by thousands of ranks holds
/// millions of chunk boxes; as heap vectors each would cost two allocations and two pointer
/// chases, which dominated the coordinator's planning. Iterators are pointers, so a Shape is
/// a contiguous range (std::span, c10::ArrayRef take it). Members are `inline` because a
/// named module's in-class definitions are not, and these must inline into importers.
class Shape {
 public:
  using value_type = std::int64_t;
  using size_type = std::size_t;
  using difference_type = std::ptrdiff_t;
  using reference = std::int64_t&;
  using const_reference = const std::int64_t&;
  using pointer = std::int64_t*;
  using const_pointer = const std::int64_t*;
  using iterator = std::int64_t*;
  using const_iterator = const std::int64_t*;
  static constexpr std::size_t kInline = 4;  // 2-D layouts need 2; few tensors pass 4 dims

  inline Shape() noexcept {}
  inline Shape(std::initializer_list<std::int64_t> values) { append(values.begin(), values.size()); }
  inline explicit Shape(std::size_t n, std::int64_t value = 0) { resize(n, value); }
  template <std::input_iterator It, std::sentinel_for<It> End>
  inline Shape(It first, End last) {
    for (; first != last; ++first) push_back(static_cast<std::int64_t>(*first));
  }
  inline explicit Shape(std::span<const std::int64_t> values) { append(values.data(), values.size()); }
  /// From and to std::vector, which APIs outside dcpp speak.
  inline Shape(const std::vector<std::int64_t>& values) { append(values.data(), values.size()); }
  inline explicit operator std::vector<std::int64_t>() const { return {begin(), end()}; }

  inline Shape(const Shape& other) { append(other.data(), other.size_); }
  inline Shape(Shape&& other) noexcept { steal(other); }
  inline Shape& operator=(const Shape& other) {
    if (this != &other) {
      size_ = 0;
      append(other.data(), other.size_);
    }
    return *this;
  }
  inline Shape& operator=(Shape&& other) noexcept {
    if (this != &other) {
      release();
      steal(other);
    }
    return *this;
  }
  inline ~Shape() { release(); }

  inline std::size_t size() const noexcept { return size_; }
  inline bool empty() const noexcept { return size_ == 0; }
  inline std::int64_t* data() noexcept { return on_heap() ? heap() : storage_; }
  inline const std::int64_t* data() const noexcept { return on_heap() ? heap() : storage_; }
  inline std::int64_t* begin() noexcept { return data(); }
  inline std::int64_t* end() noexcept { return data() + size_; }
  inline const std::int64_t* begin() const noexcept { return data(); }
  inline const std::int64_t* end() const noexcept { return data() + size_; }
  inline std::int64_t& operator[](std::size_t i) noexcept { return data()[i]; }
  inline const std::int64_t& operator[](std::size_t i) const noexcept { return data()[i]; }
  inline std::int64_t& front() noexcept { return data()[0]; }
  inline const std::int64_t& front() const noexcept { return data()[0]; }
  inline std::int64_t& back() noexcept { return data()[size_ - 1]; }
  inline const std::int64_t& back() const noexcept { return data()[size_ - 1]; }

  inline void clear() noexcept { size_ = 0; }
  inline void reserve(std::size_t n) {
    if (n > capacity_) grow(n);
  }
  inline void push_back(std::int64_t value) {
    if (size_ == capacity_) grow(2 * std::size_t{capacity_});
    data()[size_++] = value;
  }
  inline void pop_back() noexcept { --size_; }
  inline void resize(std::size_t n, std::int64_t value = 0) {
    reserve(n);
    std::int64_t* values = data();
    for (std::size_t i = size_; i < n; ++i) values[i] = value;
    size_ = static_cast<std::uint32_t>(n);
  }
  inline void assign(std::size_t n, std::int64_t value) {
    clear();
    resize(n, value);
  }
  template <std::input_iterator It, std::sentinel_for<It> End>
  inline void assign(It first, End last) {
    clear();
    for (; first != last; ++first) push_back(static_cast<std::int64_t>(*first));
  }

  friend inline bool operator==(const Shape& a, const Shape& b) noexcept {
    if (a.size_ != b.size_) return false;
    const std::int64_t* x = a.data();
    const std::int64_t* y = b.data();
    for (std::uint32_t i = 0; i < a.size_; ++i)  // a loop, not std::equal: that calls memcmp
      if (x[i] != y[i]) return false;
    return true;
  }
  friend inline std::strong_ordering operator<=>(const Shape& a, const Shape& b) noexcept {
    return std::lexicographical_compare_three_way(a.begin(), a.end(), b.begin(), b.end());
  }

 private:
  inline void append(const std::int64_t* values, std::size_t n) {
    reserve(size_ + n);
    std::copy(values, values + n, data() + size_);
    size_ += static_cast<std::uint32_t>(n);
  }
  inline void grow(std::size_t n) {
    if (n > 0xFFFFFFFFu) throw std::length_error("dcp::layout::Shape: too many dimensions");
    auto* fresh = new std::int64_t[n];
    std::copy(data(), data() + size_, fresh);
    release();
    set_heap(fresh);
    capacity_ = static_cast<std::uint32_t>(n);
  }
  inline void release() noexcept {
    if (on_heap()) delete[] heap();
    capacity_ = kInline;
  }
  inline void steal(Shape& other) noexcept {  // requires *this to be inline and empty
    if (other.on_heap())
      set_heap(other.heap());
    else
      std::copy(other.storage_, other.storage_ + other.size_, storage_);
    capacity_ = other.capacity_;
    size_ = other.size_;
    other.capacity_ = kInline;
    other.size_ = 0;
  }
  // Beyond kInline dims the storage holds a pointer to the heap instead of dims: millions of
  // chunk boxes at thousands of ranks are 40 bytes a shape, not 56.
  inline bool on_heap() const noexcept { return capacity_ > kInline; }
  inline std::int64_t* heap() const noexcept {
    std::int64_t* p;
    std::memcpy(&p, storage_, sizeof p);
    return p;
  }
  inline void set_heap(std::int64_t* p) noexcept { std::memcpy(storage_, &p, sizeof p); }

  std::uint32_t size_ = 0;
  std::uint32_t capacity_ = kInline;
  std::int64_t storage_[kInline];
};
static_assert(sizeof(Shape) == 40);

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
/// Whether memory of `strides` holds a tensor of `sizes` densely in row-major order: torch's
/// is_contiguous (dims of size 1 may have any stride; a tensor without elements is). False for
/// a rank mismatch or a negative stride.
bool is_row_major(std::span<const std::int64_t> sizes, std::span<const std::int64_t> strides) noexcept;
/// Elements from the first to the last element of a box of `lengths` (all > 0) in memory of
/// `strides`: what one strided read of it fetches.
std::uint64_t span_elements(const Shape& lengths, const Shape& strides);
/// Splits a non-empty box of `lengths` in memory of `strides` into sub-boxes (offsets relative
/// to it, in row-major order of the box) whose span_elements is at most `bound_elements`, or
/// which are single elements: what keeps the bounce buffer of a strided read bounded.
std::vector<Box> bounded_boxes(const Shape& lengths, const Shape& strides, std::uint64_t bound_elements);

/// Ranks agree, no negative offset or size, and every end fits in int64.
bool is_valid(const Box& box) noexcept;
/// `box` is valid and lies inside a tensor of shape `size` (same rank).
bool is_inside(const Box& box, const Shape& size) noexcept;
/// The same for the box at `offsets` of `sizes`, without making a Box (plans of millions of
/// items are checked this way).
bool is_inside(std::span<const std::int64_t> offsets, std::span<const std::int64_t> sizes, const Shape& size) noexcept;
/// No element: some size is zero (a 0-dim box is never empty).
bool is_empty(const Box& box) noexcept;
/// Number of elements of a shape (1 for 0 dims): the one place sizes are multiplied. Throws
/// out_of_range on overflow, invalid_argument for a negative size.
std::uint64_t volume(std::span<const std::int64_t> sizes);
/// volume(box.sizes).
std::uint64_t volume(const Box& box);

/// "[40, 80) x [0, 7)" (a 0-dim box is "scalar"), for messages.
std::string format_box(const Box& box);
/// "(3, 4)", "(5,)" or "()", torch.Size style, for messages.
std::string format_shape(const Shape& shape);
/// A hash of a shape's dims, for the tables that find chunks by their offsets (dcp::hash_mix:
/// seeded per process, so offsets a hostile file chooses cannot make a table quadratic).
std::uint64_t hash_shape(const Shape& shape) noexcept;

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

/// `[start, start + size)` along one dimension.
struct Extent {
  std::int64_t start = 0;
  std::int64_t size = 0;
  friend bool operator==(const Extent&, const Extent&) = default;
};
/// Part `i` of torch.chunk's split of `n` into `parts` (the rule `chunk_split` states; this is
/// its one implementation). Requires n >= 0, parts >= 1, 0 <= i < parts (invalid_argument).
Extent chunk_extent(std::int64_t n, std::int64_t parts, std::int64_t i);
/// How many parts of that split are non-empty: ceil(n / ceil(n / parts)), 0 when n == 0. These
/// are exactly the parts of the split of `n` into that many parts, so a saved chunk list cannot
/// tell how many empty trailing parts there were.
std::int64_t nonempty_parts(std::int64_t n, std::int64_t parts);
/// The inverse: the `parts` counts, [first, last], whose split of `n` has a first part of
/// `split` elements (n >= 1, split >= 1); first > last when there is none.
std::pair<std::int64_t, std::int64_t> parts_for_split(std::int64_t n, std::int64_t split);

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

/// Whether a tensor's chunk boxes tile it: no two share an element, and together they cover
/// every element (what torch's save-side validation demands of a global plan).
struct TilingCheck {
  std::optional<std::pair<std::size_t, std::size_t>> overlap;  ///< two boxes that share an element
  std::uint64_t covered = 0;                                   ///< summed box volumes
  std::uint64_t total = 0;                                     ///< the tensor's volume
  bool tiles() const noexcept { return !overlap && covered == total; }
};
/// A box whose dims live elsewhere (a metadata chunk's shapes, say): `size.size()` offsets
/// and sizes. What check_tiling reads, so that checking millions of chunks copies none.
struct BoxRef {
  const std::int64_t* offsets = nullptr;
  const std::int64_t* sizes = nullptr;
};
/// Checks `boxes` (each valid and inside a tensor of shape `size`, which the caller has
/// checked) in O(n · rank) when the non-empty boxes form a grid, as every torch.chunk,
/// ChunkShardingSpec and DTensor layout does: then they tile exactly when each grid cell is
/// one box. Otherwise (irregular layouts, gaps, overlaps) a `ChunkIndex` finds the first
/// overlap in O(n log n). Throws out_of_range when a volume overflows. Boxes that come in rank
/// order are proved faster by `lists_grid_in_order`, which a caller tries first
/// (metadata::check_chunks does, before it even checks them inside).
TilingCheck check_tiling(std::span<const BoxRef> boxes, const Shape& size);
TilingCheck check_tiling(std::span<const Box> boxes, const Shape& size);
/// Whether `boxes` (each of `size.size()` dims; nothing else checked) are, leaving out empty
/// ones inside the tensor, exactly the cells of a grid over it, listed in row-major order (the
/// last dim fastest): what the ranks of a DTensor mesh or a torch.chunk split hold, in rank
/// order. Then they lie inside the tensor and tile it. One sequential read, no table: the
/// fast path of checking millions of chunks; false says only that a full check is needed.
bool lists_grid_in_order(std::span<const BoxRef> boxes, const Shape& size);

// ---- Forward: a DTensor layout gives each rank's box ------------------------------------

/// What one mesh dimension does to the tensor (DTensor's `Shard(dim)` / `Replicate()`).
struct Placement {
  /// Tensor dimension split over this mesh dimension; nullopt for Replicate.
  std::optional<int> shard_dim;
  static Placement shard(int dim) { return Placement{dim}; }
  static Placement replicate() { return Placement{}; }
  friend bool operator==(const Placement&, const Placement&) = default;
};

/// DTensor's model of a distributed tensor: a device mesh of ranks 0..world_size-1 laid out
/// row-major (as `init_device_mesh` lays out `arange(world_size).view(mesh)`) and one placement
/// per mesh dimension. Two placements may shard the same tensor dim: torch then splits that
/// dim's piece again, left to right (`[Shard(0), Shard(0)]`, "nested").
class Layout {
 public:
  /// Throws invalid_argument when the mesh is empty, a mesh dim is < 1, the world size passes
  /// int, the placement count differs from the mesh rank or a shard dim is negative (torch
  /// normalises negative dims before they reach a placement).
  Layout(std::vector<int> mesh, std::vector<Placement> placements);
  const std::vector<int>& mesh() const noexcept { return mesh_; }
  const std::vector<Placement>& placements() const noexcept { return placements_; }
  int world_size() const noexcept { return world_size_; }
  /// Rank → mesh coordinate, row-major (DeviceMesh's `get_coordinate`). invalid_argument for a
  /// rank outside [0, world_size).
  std::vector<int> coordinate(int rank) const;
  friend bool operator==(const Layout&, const Layout&) = default;

 private:
  std::vector<int> mesh_;
  std::vector<Placement> placements_;
  int world_size_ = 1;
};

/// "rows" = mesh (N) with Shard(0); "cols" = mesh (N) with Shard(1); "replicated" = mesh (N)
/// with Replicate; "2d:AxB" = mesh (A, B) with Shard(0), Shard(1), A * B == N. Throws invalid_argument naming the text for anything
/// else (unknown names, A or B missing, < 1, not decimal, or A * B != world_size) and for
/// world_size < 1.
Layout parse_layout(std::string_view text, int world_size);

/// The box rank `rank` holds of a tensor of shape `global`: torch's
/// `compute_local_shape_and_global_offset`. Placements apply in mesh-dim order; a Shard(d)
/// takes part `coordinate` of torch.chunk's split of the current extent of d into mesh-dim-size
/// parts (`chunk_extent`). A rank whose part is empty gets size 0 at offset `global[d]` in that
/// dim (torch's offset for empty shards, which DCP saves). A 0-dim tensor is whole on every
/// rank whatever the layout (torch cannot shard one; dcpp's row splits keep scalars whole).
/// Throws invalid_argument for a rank outside the world, a shard dim >= the tensor's rank (of
/// a tensor with dims), or a negative size.
Box local_box(const Shape& global, const Layout& layout, int rank);

// ---- Backward: which layout a saved chunk list is ----------------------------------------

enum class LayoutKind : std::uint8_t {
  whole,      ///< one chunk holds every element (also: 0-dim tensors, tensors with no element)
  split,      ///< torch.chunk split of dims[0] into parts[0] non-empty parts
  nested,     ///< dims[0] split into parts[0], each part split again into parts[1] (DTensor
              ///< [Shard(d), Shard(d)]), when that is not also a plain split
  grid,       ///< torch.chunk splits of dims[0] into parts[0] and dims[1] into parts[1], every
              ///< pair of parts one chunk (DTensor [Shard(a), Shard(b)], a != b)
  irregular,  ///< anything else; parts[0] = number of non-empty chunks
};

/// What `describe_layout` found. dims ascending for grid.
struct LayoutDescription {
  LayoutKind kind = LayoutKind::irregular;
  std::vector<int> dims;             ///< split, nested: {d}; grid: {a, b}; else {}
  std::vector<std::int64_t> parts;   ///< split: {n}; nested, grid: {A, B}; irregular: {chunks}
  friend bool operator==(const LayoutDescription&, const LayoutDescription&) = default;
};

/// Names the layout of a tensor of shape `global` saved as `chunks`, judged on the non-empty
/// chunks only (empty ones, which DTensor saves for ranks past the end of a split, carry no
/// layout), and with the canonical, smallest counts: a split into P parts of which only k are
/// non-empty is `split` into k (the same chunks, see `nonempty_parts`). Tried in the order
/// whole, split, nested, grid; a nested split takes the largest first-level count A, then the
/// smallest B. Equal-size parts that torch.chunk would not make (3,3,2,2 of 10; 2,4,4) are
/// `irregular`, as are chunk lists that do not tile the tensor, invalid boxes, or ranks that
/// differ from `global`'s: this never throws dcp::Error. O(n log n) in the chunks.
LayoutDescription describe_layout(const Shape& global, std::span<const Box> chunks);

/// The non-empty boxes `description` stands for over `global`, in row-major order of their
/// offsets (the inverse of describe_layout). Throws invalid_argument for `irregular`, for dims
/// outside `global` and for counts < 1.
std::vector<Box> layout_boxes(const Shape& global, const LayoutDescription& description);

/// The JSON "kind": "whole", "rows" (split of dim 0), "cols" (split of dim 1), "dim" (split of
/// a later dim), "nested", "grid", "irregular".
std::string_view layout_kind_name(const LayoutDescription& description) noexcept;
/// For `dcpp inspect`: "whole", "rows(4)", "cols(2)", "dim2(3)", "rows(2x2 nested)",
/// "grid(2x2)" (dims 0 and 1; else "grid(2x2 dims 1,2)"), "irregular(5)".
std::string format_layout(const LayoutDescription& description);

}  // namespace dcp::layout
