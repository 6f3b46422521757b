// Box predicates, overlap, torch.chunk splits and coverage holes.
module;
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <vector>
module dcp.layout;
import dcp.error;

namespace dcp::layout {
namespace {

constexpr std::int64_t int64_max = std::numeric_limits<std::int64_t>::max();

void require_valid(const Box& box, const char* what) {
  if (!is_valid(box))
    throw Error(Errc::invalid_argument, std::string(what) + " box " + format_box(box) +
                                            " has mismatched ranks, a negative number or an end past int64");
}

void require_same_rank(const Box& a, const Box& b) {
  if (a.offsets.size() != b.offsets.size())
    throw Error(Errc::invalid_argument, "boxes of rank " + std::to_string(a.offsets.size()) +
                                            " and " + std::to_string(b.offsets.size()) + " cannot meet");
}

// Both boxes share at least one element (non-strict on empty boxes; callers filter those).
bool meets(const Box& a, const Box& b) {
  for (std::size_t d = 0; d < a.offsets.size(); ++d)
    if (a.offsets[d] >= b.offsets[d] + b.sizes[d] || b.offsets[d] >= a.offsets[d] + a.sizes[d])
      return false;
  return true;
}

}  // namespace

Box full_box(const Shape& size) { return Box{Shape(size.size(), 0), size}; }

bool is_row_major(std::span<const std::int64_t> sizes, std::span<const std::int64_t> strides) noexcept {
  if (strides.size() != sizes.size()) return false;
  for (std::int64_t s : sizes)
    if (s == 0) return true;
  std::uint64_t expected = 1;  // stays below the element count while it is checked
  for (std::size_t d = sizes.size(); d-- > 0;) {
    if (sizes[d] == 1) continue;
    if (sizes[d] < 0 || strides[d] < 0 || static_cast<std::uint64_t>(strides[d]) != expected) return false;
    if (__builtin_mul_overflow(expected, static_cast<std::uint64_t>(sizes[d]), &expected)) return false;
  }
  return true;
}

Shape contiguous_strides(const Shape& sizes) {
  Shape strides(sizes.size());
  std::uint64_t stride = 1;
  for (std::size_t d = sizes.size(); d-- > 0;) {
    if (sizes[d] < 0) throw Error(Errc::invalid_argument, "negative size in shape " + format_shape(sizes));
    strides[d] = static_cast<std::int64_t>(stride);
    stride = mul_or_throw(stride, static_cast<std::uint64_t>(std::max<std::int64_t>(sizes[d], 1)), "contiguous stride");
    if (stride > static_cast<std::uint64_t>(int64_max) && d > 0)
      throw Error(Errc::out_of_range, "contiguous stride of shape " + format_shape(sizes) + " overflows int64");
  }
  return strides;
}

std::uint64_t span_elements(const Shape& lengths, const Shape& strides) {
  std::uint64_t last = 0;
  for (std::size_t d = 0; d < lengths.size(); ++d)
    last += static_cast<std::uint64_t>(lengths[d] - 1) * static_cast<std::uint64_t>(strides[d]);
  return last + 1;
}

namespace {

void split_bounded(Shape& offsets, Shape& lengths, const Shape& strides, std::uint64_t bound, std::size_t dim,
                   std::vector<Box>& out) {
  if (dim == lengths.size() || span_elements(lengths, strides) <= bound) {
    out.push_back(Box{offsets, lengths});
    return;
  }
  const std::int64_t start = offsets[dim], full = lengths[dim];
  lengths[dim] = 1;
  const std::uint64_t row_span = span_elements(lengths, strides);
  if (row_span > bound || strides[dim] == 0) {
    for (std::int64_t i = 0; i < full; ++i) {
      offsets[dim] = start + i;
      split_bounded(offsets, lengths, strides, bound, dim + 1, out);
    }
  } else {
    // As many indices of this dim as fit: each adds strides[dim] elements to the span.
    const auto per = static_cast<std::int64_t>(std::min<std::uint64_t>(
        (bound - row_span) / static_cast<std::uint64_t>(strides[dim]) + 1, static_cast<std::uint64_t>(full)));
    for (std::int64_t i = 0; i < full; i += per) {
      offsets[dim] = start + i;
      lengths[dim] = std::min(per, full - i);
      out.push_back(Box{offsets, lengths});
    }
  }
  offsets[dim] = start;
  lengths[dim] = full;
}

}  // namespace

std::vector<Box> bounded_boxes(const Shape& lengths, const Shape& strides, std::uint64_t bound_elements) {
  std::vector<Box> out;
  Shape offsets(lengths.size(), 0), sizes = lengths;
  split_bounded(offsets, sizes, strides, std::max<std::uint64_t>(bound_elements, 1), 0, out);
  return out;
}

bool is_valid(const Box& box) noexcept {
  if (box.offsets.size() != box.sizes.size()) return false;
  for (std::size_t d = 0; d < box.offsets.size(); ++d)
    if (box.offsets[d] < 0 || box.sizes[d] < 0 || box.offsets[d] > int64_max - box.sizes[d]) return false;
  return true;
}

bool is_inside(const Box& box, const Shape& size) noexcept { return is_inside(box.offsets, box.sizes, size); }

bool is_inside(std::span<const std::int64_t> offsets, std::span<const std::int64_t> sizes, const Shape& size) noexcept {
  if (offsets.size() != size.size() || sizes.size() != size.size()) return false;
  for (std::size_t d = 0; d < size.size(); ++d)
    if (offsets[d] < 0 || sizes[d] < 0 || offsets[d] > int64_max - sizes[d] || offsets[d] + sizes[d] > size[d])
      return false;
  return true;
}

bool is_empty(const Box& box) noexcept {
  return std::any_of(box.sizes.begin(), box.sizes.end(), [](std::int64_t s) { return s == 0; });
}

std::uint64_t volume(std::span<const std::int64_t> sizes) {
  std::uint64_t n = 1;
  for (std::int64_t s : sizes) {
    if (s < 0) throw Error(Errc::invalid_argument, "negative size " + std::to_string(s));
    n = mul_or_throw(n, static_cast<std::uint64_t>(s), "number of elements");
  }
  return n;
}

std::uint64_t volume(const Box& box) { return volume(std::span<const std::int64_t>(box.sizes)); }

std::string format_box(const Box& box) {
  if (box.offsets.empty() && box.sizes.empty()) return "scalar";
  std::string s;
  const std::size_t rank = std::max(box.offsets.size(), box.sizes.size());
  for (std::size_t d = 0; d < std::min<std::size_t>(rank, 8); ++d) {
    const std::int64_t off = d < box.offsets.size() ? box.offsets[d] : 0;
    const std::int64_t size = d < box.sizes.size() ? box.sizes[d] : 0;
    // Printed as numbers even when they overflow: the text is for a message about bad input.
    const auto end = static_cast<std::int64_t>(static_cast<std::uint64_t>(off) + static_cast<std::uint64_t>(size));
    s += (d ? " x [" : "[") + std::to_string(off) + ", " + std::to_string(end) + ")";
  }
  if (rank > 8) s += " x ... (" + std::to_string(rank) + " dims)";
  return s;
}

std::string format_shape(const Shape& shape) { return dcp::format_shape(shape); }

std::uint64_t hash_shape(const Shape& shape) noexcept {
  std::uint64_t h = hash_mix(shape.size());
  for (auto v : shape) h = hash_mix(h + static_cast<std::uint64_t>(v));
  return h;
}

std::optional<Overlap> intersect(const Box& dest, const Box& saved) {
  require_valid(dest, "destination");
  require_valid(saved, "saved");
  require_same_rank(dest, saved);
  if (!meets(dest, saved)) return std::nullopt;
  const std::size_t rank = dest.offsets.size();
  Overlap o{Shape(rank), Shape(rank), Shape(rank)};
  for (std::size_t d = 0; d < rank; ++d) {
    const std::int64_t s_off = saved.offsets[d], l_off = dest.offsets[d];
    const std::int64_t end = std::min(s_off + saved.sizes[d], l_off + dest.sizes[d]);
    o.lengths[d] = end - std::max(s_off, l_off);
    if (o.lengths[d] == 0) return std::nullopt;  // a zero-size box inside the other one
    // The later start is where the overlap begins; the other box is read from its offset.
    if (s_off > l_off) {
      o.dest_offsets[d] = s_off - l_off;
    } else {
      o.storage_offsets[d] = l_off - s_off;
    }
  }
  return o;
}

std::vector<Box> chunk_split(const Shape& size, int dim, int parts) {
  if (dim < 0 || static_cast<std::size_t>(dim) >= size.size())
    throw Error(Errc::invalid_argument, "cannot split dim " + std::to_string(dim) + " of a tensor of shape " +
                                            format_shape(size));
  if (parts < 1) throw Error(Errc::invalid_argument, "cannot split into " + std::to_string(parts) + " parts");
  for (std::int64_t s : size)
    if (s < 0) throw Error(Errc::invalid_argument, "negative size in shape " + format_shape(size));
  const std::int64_t n = size[static_cast<std::size_t>(dim)];
  std::vector<Box> boxes;
  boxes.reserve(static_cast<std::size_t>(parts));
  for (std::int64_t i = 0; i < parts; ++i) {
    Box b = full_box(size);
    const Extent e = chunk_extent(n, parts, i);
    b.offsets[static_cast<std::size_t>(dim)] = e.start;
    b.sizes[static_cast<std::size_t>(dim)] = e.size;
    boxes.push_back(std::move(b));
  }
  return boxes;
}

Extent chunk_extent(std::int64_t n, std::int64_t parts, std::int64_t i) {
  if (n < 0 || parts < 1 || i < 0 || i >= parts)
    throw Error(Errc::invalid_argument, "no part " + std::to_string(i) + " of " + std::to_string(n) +
                                            " elements split into " + std::to_string(parts));
  const std::int64_t split = n / parts + (n % parts != 0);  // ceil without overflow
  // split * i may pass n (and int64) for trailing parts; those are empty, clamped at n.
  const std::int64_t start = i != 0 && split > n / i ? n : std::min(n, split * i);
  const std::int64_t stop = split > n - start ? n : start + split;
  return {start, stop - start};
}

std::int64_t nonempty_parts(std::int64_t n, std::int64_t parts) {
  const std::int64_t split = chunk_extent(n, parts, 0).size;
  return split == 0 ? 0 : n / split + (n % split != 0);
}

std::pair<std::int64_t, std::int64_t> parts_for_split(std::int64_t n, std::int64_t split) {
  if (n < 1 || split < 1) return {1, 0};
  // ceil(n / p) == split  <=>  (split - 1) * p < n <= split * p.
  const std::int64_t first = n / split + (n % split != 0);
  const std::int64_t last = split == 1 ? std::numeric_limits<std::int64_t>::max() : (n - 1) / (split - 1);
  return {first, last};
}

}  // namespace dcp::layout
