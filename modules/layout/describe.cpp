// Backward layouts: which torch split a saved chunk list is (describe_layout), the boxes a
// description stands for (layout_boxes), and their names.
module;
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>
module dcp.layout;
import dcp.error;

namespace dcp::layout {
namespace {

using Extents = std::vector<Extent>;

// The extents of a torch.chunk split of n into `parts`, non-empty ones only.
Extents split_extents(std::int64_t n, std::int64_t parts) {
  Extents out;
  const std::int64_t k = nonempty_parts(n, parts);
  out.reserve(static_cast<std::size_t>(k));
  for (std::int64_t i = 0; i < k; ++i) out.push_back(chunk_extent(n, parts, i));
  return out;
}

bool is_split(std::span<const Extent> ext, std::int64_t n) {
  const auto k = static_cast<std::int64_t>(ext.size());
  if (k == 0 || nonempty_parts(n, k) != k) return false;
  for (std::int64_t i = 0; i < k; ++i)
    if (ext[static_cast<std::size_t>(i)] != chunk_extent(n, k, i)) return false;
  return true;
}

// A 1-D sequence of non-empty extents, sorted and tiling [0, n), checked against the nested
// split (A, B): torch.chunk into A, each part again into B.
class NestedSearch {
 public:
  NestedSearch(std::span<const Extent> ext, std::int64_t n) : ext_(ext), n_(n), run_end_(ext.size()) {
    for (std::size_t i = ext.size(); i-- > 0;)
      run_end_[i] = i + 1 < ext.size() && ext[i + 1].size == ext[i].size ? run_end_[i + 1] : i;
  }

  // First groups of j = 1, 2, ... chunks: group j fixes the first-level part m (its end) and
  // so A; B is the smallest count that splits both a full part and the last one as seen.
  // Each j costs O(k / j) (its A - 1 boundaries are checked first), O(k log k) in all.
  std::optional<std::pair<std::int64_t, std::int64_t>> find() const {
    const std::size_t k = ext_.size();
    for (std::size_t j = 1; j < k; ++j) {
      const std::int64_t m = ext_[j].start;
      const auto [a, a_last] = parts_for_split(n_, m);
      if (a > a_last) continue;  // no split of n has a first part of m
      const auto groups = static_cast<std::size_t>(a);
      bool aligned = true;
      for (std::size_t t = 1; t < groups && aligned; ++t)
        aligned = t * j < k && ext_[t * j].start == static_cast<std::int64_t>(t) * m;
      if (!aligned) continue;
      const std::size_t last = (groups - 1) * j;
      const std::int64_t m_last = n_ - (a - 1) * m;
      const auto [lo0, hi0] = parts_for_split(m, ext_[0].size);
      const auto [lo1, hi1] = parts_for_split(m_last, ext_[last].size);
      const std::int64_t b = std::max(lo0, lo1);
      if (b > std::min(hi0, hi1)) continue;
      std::size_t at = 0;
      for (std::size_t t = 0; t + 1 < groups && at == t * j; ++t) at = group_end(at, m, b);
      if (at == last && group_end(at, m_last, b) == k) return std::pair{a, b};
    }
    return std::nullopt;
  }

 private:
  // Where the split of extent x into b parts, starting at chunk `at`, ends if the chunks there
  // are that split's sizes (a run of equal parts then a last one: O(1) with run_end_);
  // SIZE_MAX otherwise.
  std::size_t group_end(std::size_t at, std::int64_t x, std::int64_t b) const {
    const auto parts = static_cast<std::size_t>(nonempty_parts(x, b));
    const std::size_t end = at + parts;
    if (parts == 0 || end > ext_.size()) return SIZE_MAX;
    const std::int64_t first = chunk_extent(x, b, 0).size;
    const std::int64_t final = chunk_extent(x, b, static_cast<std::int64_t>(parts) - 1).size;
    if (ext_[at].size != first || ext_[end - 1].size != final) return SIZE_MAX;
    return parts < 3 || run_end_[at] >= end - 2 ? end : SIZE_MAX;
  }

  std::span<const Extent> ext_;
  std::int64_t n_;
  std::vector<std::size_t> run_end_;  // last index of the run of equal sizes from i
};

// Extents along d of boxes full in every other dim, sorted; nullopt unless they tile [0, n).
std::optional<Extents> tiling_along(std::span<const Box* const> boxes, std::size_t d, std::int64_t n) {
  Extents ext;
  ext.reserve(boxes.size());
  for (const Box* b : boxes) ext.push_back({b->offsets[d], b->sizes[d]});
  std::sort(ext.begin(), ext.end(), [](const Extent& x, const Extent& y) { return x.start < y.start; });
  std::int64_t at = 0;
  for (const Extent& e : ext) {
    if (e.start != at) return std::nullopt;
    at += e.size;
  }
  if (at != n) return std::nullopt;
  return ext;
}

LayoutDescription describe_one_dim(std::span<const Box* const> boxes, int d, std::int64_t n) {
  const auto k = static_cast<std::int64_t>(boxes.size());
  const auto ext = tiling_along(boxes, static_cast<std::size_t>(d), n);
  if (!ext) return {LayoutKind::irregular, {}, {k}};
  if (is_split(*ext, n)) return {LayoutKind::split, {d}, {k}};
  if (const auto ab = NestedSearch(*ext, n).find()) return {LayoutKind::nested, {d}, {ab->first, ab->second}};
  return {LayoutKind::irregular, {}, {k}};
}

LayoutDescription describe_grid(std::span<const Box* const> boxes, const Shape& global, int d0, int d1) {
  const auto k = static_cast<std::int64_t>(boxes.size());
  const LayoutDescription irregular{LayoutKind::irregular, {}, {k}};
  std::vector<std::int64_t> parts;
  for (const int d : {d0, d1}) {
    const auto du = static_cast<std::size_t>(d);
    Extents ext;
    for (const Box* b : boxes) ext.push_back({b->offsets[du], b->sizes[du]});
    std::sort(ext.begin(), ext.end(), [](const Extent& x, const Extent& y) {
      return std::pair(x.start, x.size) < std::pair(y.start, y.size);
    });
    ext.erase(std::unique(ext.begin(), ext.end()), ext.end());
    if (!is_split(ext, global[du])) return irregular;
    parts.push_back(static_cast<std::int64_t>(ext.size()));
  }
  // Every box is a pair of parts; as many distinct boxes as pairs means every pair once.
  if (parts[0] * parts[1] != k) return irregular;
  std::vector<std::pair<std::int64_t, std::int64_t>> cells;
  for (const Box* b : boxes)
    cells.emplace_back(b->offsets[static_cast<std::size_t>(d0)], b->offsets[static_cast<std::size_t>(d1)]);
  std::sort(cells.begin(), cells.end());
  if (std::adjacent_find(cells.begin(), cells.end()) != cells.end()) return irregular;
  return {LayoutKind::grid, {d0, d1}, std::move(parts)};
}

}  // namespace

LayoutDescription describe_layout(const Shape& global, std::span<const Box> chunks) {
  std::vector<const Box*> boxes;  // the non-empty chunks
  for (const Box& c : chunks) {
    if (!is_inside(c, global)) return {LayoutKind::irregular, {}, {static_cast<std::int64_t>(chunks.size())}};
    if (!is_empty(c)) boxes.push_back(&c);
  }
  const auto k = static_cast<std::int64_t>(boxes.size());
  const LayoutDescription irregular{LayoutKind::irregular, {}, {k}};
  // No element to place (0-dim tensors have one, in a 0-dim chunk, which is not empty).
  if (std::any_of(global.begin(), global.end(), [](std::int64_t s) { return s == 0; }))
    return {LayoutKind::whole, {}, {}};
  std::vector<int> split_dims;  // dims that some chunk does not span
  for (std::size_t d = 0; d < global.size(); ++d)
    if (std::any_of(boxes.begin(), boxes.end(), [&](const Box* b) { return b->sizes[d] != global[d]; }))
      split_dims.push_back(static_cast<int>(d));
  switch (split_dims.size()) {
    case 0: return k == 1 ? LayoutDescription{LayoutKind::whole, {}, {}} : irregular;
    case 1: return describe_one_dim(boxes, split_dims[0], global[static_cast<std::size_t>(split_dims[0])]);
    case 2: return describe_grid(boxes, global, split_dims[0], split_dims[1]);
    default: return irregular;
  }
}

std::vector<Box> layout_boxes(const Shape& global, const LayoutDescription& description) {
  const auto& dims = description.dims;
  const auto& parts = description.parts;
  const auto bad = [&](const char* why) {
    return Error(Errc::invalid_argument, "no boxes for layout " + format_layout(description) + " of shape " +
                                             format_shape(global) + ": " + why);
  };
  std::size_t rank = 0;  // how many dims and counts the kind has
  switch (description.kind) {
    case LayoutKind::whole: break;
    case LayoutKind::split: rank = 1; break;
    case LayoutKind::nested:
    case LayoutKind::grid: rank = 2; break;
    case LayoutKind::irregular: throw bad("an irregular layout names no boxes");
  }
  const std::size_t dim_count = description.kind == LayoutKind::nested ? 1 : rank;
  if (parts.size() != rank || dims.size() != dim_count) throw bad("wrong number of dims or counts");
  if (description.kind == LayoutKind::grid && dims[0] >= dims[1]) throw bad("grid dims not ascending");
  for (const int d : dims)
    if (d < 0 || static_cast<std::size_t>(d) >= global.size()) throw bad("dim outside the tensor");
  for (const std::int64_t p : parts)
    if (p < 1) throw bad("a count below 1");
  for (const std::int64_t s : global)
    if (s < 0) throw bad("negative size");
  if (description.kind == LayoutKind::whole) return {full_box(global)};
  // Extents along each split dim; boxes are their products, the first dim outermost.
  std::vector<Extents> axes;
  if (description.kind == LayoutKind::nested) {
    Extents inner;
    for (const Extent& outer : split_extents(global[static_cast<std::size_t>(dims[0])], parts[0]))
      for (Extent e : split_extents(outer.size, parts[1])) inner.push_back({outer.start + e.start, e.size});
    axes.push_back(std::move(inner));
  } else {
    for (std::size_t i = 0; i < dims.size(); ++i)
      axes.push_back(split_extents(global[static_cast<std::size_t>(dims[i])], parts[i]));
  }
  std::vector<Box> out{full_box(global)};
  for (std::size_t i = 0; i < axes.size(); ++i) {
    std::vector<Box> next;
    for (const Box& b : out)
      for (const Extent& e : axes[i]) {
        Box c = b;
        c.offsets[static_cast<std::size_t>(dims[i])] = e.start;
        c.sizes[static_cast<std::size_t>(dims[i])] = e.size;
        next.push_back(std::move(c));
      }
    out = std::move(next);
  }
  return out;
}

std::string_view layout_kind_name(const LayoutDescription& description) noexcept {
  switch (description.kind) {
    case LayoutKind::whole: return "whole";
    case LayoutKind::split: {
      const int d = description.dims.empty() ? -1 : description.dims[0];
      return d == 0 ? "rows" : d == 1 ? "cols" : "dim";
    }
    case LayoutKind::nested: return "nested";
    case LayoutKind::grid: return "grid";
    case LayoutKind::irregular: return "irregular";
  }
  return "irregular";
}

std::string format_layout(const LayoutDescription& description) {
  const auto& p = description.parts;
  const auto& d = description.dims;
  const auto count = [&](std::size_t i) { return i < p.size() ? std::to_string(p[i]) : std::string("?"); };
  const auto dim = [&](std::size_t i) { return i < d.size() ? std::to_string(d[i]) : std::string("?"); };
  // "rows", "cols" or "dim<d>": the split dim's name, shared by split and nested.
  const auto dim_name = [&] {
    return d.empty() || d[0] > 1 ? "dim" + dim(0) : std::string(d[0] == 0 ? "rows" : "cols");
  };
  switch (description.kind) {
    case LayoutKind::whole: return "whole";
    case LayoutKind::split: return dim_name() + "(" + count(0) + ")";
    case LayoutKind::nested: return dim_name() + "(" + count(0) + "x" + count(1) + " nested)";
    case LayoutKind::grid: {
      const bool first_two = d.size() == 2 && d[0] == 0 && d[1] == 1;
      return "grid(" + count(0) + "x" + count(1) + (first_two ? "" : " dims " + dim(0) + "," + dim(1)) + ")";
    }
    case LayoutKind::irregular: return "irregular(" + count(0) + ")";
  }
  return "irregular";
}

}  // namespace dcp::layout
