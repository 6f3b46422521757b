// dcp.layout's Shape (a vector with inline storage) and check_tiling, against element-by-
// element counting as the oracle: a box list tiles a tensor when every element is covered
// exactly once, and overlaps when some element is covered twice.
#include <boost/test/unit_test.hpp>
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <random>
#include <span>
#include <utility>
#include <vector>
import dcp.error;
import dcp.layout;

using dcp::layout::Box;
using dcp::layout::Shape;
namespace layout = dcp::layout;

namespace {

// How many boxes cover each element of a 2-D tensor.
std::vector<int> coverage(const std::vector<Box>& boxes, const Shape& size) {
  std::vector<int> count(static_cast<std::size_t>(size[0] * size[1]), 0);
  for (const auto& b : boxes)
    for (auto r = b.offsets[0]; r < b.offsets[0] + b.sizes[0]; ++r)
      for (auto c = b.offsets[1]; c < b.offsets[1] + b.sizes[1]; ++c) ++count[static_cast<std::size_t>(r * size[1] + c)];
  return count;
}

std::vector<layout::BoxRef> refs(const std::vector<Box>& boxes) {
  std::vector<layout::BoxRef> out;
  for (const auto& b : boxes) out.push_back(layout::BoxRef{b.offsets.data(), b.sizes.data()});
  return out;
}

// A grid over `size`: rows cut at `row_cuts`, columns at `col_cuts` (both ascending, inside).
std::vector<Box> grid(const Shape& size, const std::vector<std::int64_t>& row_cuts,
                      const std::vector<std::int64_t>& col_cuts) {
  auto lines = [](std::int64_t n, std::vector<std::int64_t> cuts) {
    cuts.insert(cuts.begin(), 0);
    cuts.push_back(n);
    return cuts;
  };
  const auto rows = lines(size[0], row_cuts), cols = lines(size[1], col_cuts);
  std::vector<Box> boxes;
  for (std::size_t r = 0; r + 1 < rows.size(); ++r)
    for (std::size_t c = 0; c + 1 < cols.size(); ++c)
      boxes.push_back(Box{{rows[r], cols[c]}, {rows[r + 1] - rows[r], cols[c + 1] - cols[c]}});
  return boxes;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(shape)

BOOST_AUTO_TEST_CASE(behaves_like_a_vector_inline_and_on_the_heap) {
  Shape small{3, 4};
  BOOST_TEST(small.size() == 2u);
  BOOST_TEST(small[1] == 4);
  Shape big;
  for (std::int64_t i = 0; i < 70; ++i) big.push_back(i);  // past the inline entries: the heap
  BOOST_TEST(big.size() == 70u);
  BOOST_TEST(big.back() == 69);
  Shape copy = big;
  BOOST_TEST((copy == big));
  Shape moved = std::move(copy);
  BOOST_TEST((moved == big));
  BOOST_TEST(copy.empty());
  moved = small;  // heap to inline
  BOOST_TEST((moved == small));
  small = std::move(big);  // inline to heap
  BOOST_TEST(small.size() == 70u);
  Shape filled(6, 7);
  BOOST_TEST(filled.size() == 6u);
  BOOST_TEST(filled[5] == 7);
  filled.resize(2);
  BOOST_TEST((filled == Shape{7, 7}));
  const std::vector<std::int64_t> v{1, 2, 3, 4, 5};
  const Shape from_vector = v;
  BOOST_TEST((static_cast<std::vector<std::int64_t>>(from_vector) == v));
  const std::span<const std::int64_t> view = from_vector;
  BOOST_TEST(view.size() == 5u);
}

BOOST_AUTO_TEST_CASE(orders_lexicographically_like_a_vector) {
  BOOST_TEST((Shape{1, 2} < Shape{1, 3}));
  BOOST_TEST((Shape{1, 2} < Shape{1, 2, 0}));
  BOOST_TEST((Shape{} < Shape{0}));
  BOOST_TEST(!(Shape{2} < Shape{1, 9}));
  BOOST_TEST((Shape{5, 5} != Shape{5}));
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(tiling)

BOOST_AUTO_TEST_CASE(grids_tile_and_their_faults_are_named) {
  const Shape size{10, 7};
  auto boxes = grid(size, {3, 6}, {2});
  BOOST_TEST(layout::check_tiling(boxes, size).tiles());
  auto gap = boxes;
  gap.erase(gap.begin() + 2);
  auto check = layout::check_tiling(gap, size);
  BOOST_TEST(!check.overlap);
  BOOST_TEST(check.covered == 70u - 3u * 2u);
  BOOST_TEST(check.total == 70u);
  auto twice = boxes;
  twice.push_back(boxes[4]);  // one cell saved twice
  check = layout::check_tiling(twice, size);
  BOOST_TEST(check.overlap.has_value());
  BOOST_TEST((check.overlap == std::pair<std::size_t, std::size_t>{4, twice.size() - 1}));
}

BOOST_AUTO_TEST_CASE(irregular_tilings_and_empty_chunks) {
  const Shape size{4, 6};
  // Rows [0, 2) whole; rows [2, 4) in two columns: not a grid, still a tiling.
  const std::vector<Box> nested{{{0, 0}, {2, 6}}, {{2, 0}, {2, 3}}, {{2, 3}, {2, 3}}};
  BOOST_TEST(layout::check_tiling(nested, size).tiles());
  // torch.chunk's empty trailing shards lie at the end of a dim, or at a start they share.
  const std::vector<Box> with_empty{{{0, 0}, {4, 6}}, {{4, 0}, {0, 6}}, {{0, 0}, {0, 6}}};
  BOOST_TEST(layout::check_tiling(with_empty, size).tiles());
  const std::vector<Box> scalar{Box{}};
  BOOST_TEST(layout::check_tiling(scalar, Shape{}).tiles());
  const std::vector<Box> none;
  BOOST_TEST(layout::check_tiling(none, Shape{0, 3}).tiles());
  BOOST_TEST(!layout::check_tiling(none, Shape{1, 3}).tiles());
}

BOOST_AUTO_TEST_CASE(grids_listed_in_order) {
  // A 3-D DTensor-style split (2 x 3 x 4 ranks, uneven: empty parts past the ends), in rank order.
  const Shape size{3, 7, 5};
  std::vector<Box> boxes;
  for (const Box& a : layout::chunk_split(size, 0, 2))
    for (const Box& b : layout::chunk_split(size, 1, 3))
      for (const Box& c : layout::chunk_split(size, 2, 4))
        boxes.push_back(Box{{a.offsets[0], b.offsets[1], c.offsets[2]}, {a.sizes[0], b.sizes[1], c.sizes[2]}});
  BOOST_TEST(layout::lists_grid_in_order(refs(boxes), size));
  BOOST_TEST(layout::check_tiling(boxes, size).tiles());
  // De-duplication keeps one of the empty parts that share offsets: still a grid in order.
  auto kept = boxes;
  kept.pop_back();
  BOOST_TEST(layout::lists_grid_in_order(refs(kept), size));
  // A non-empty cell twice, missing, out of order, or a negative size: not proved.
  auto twice = boxes;
  twice.insert(twice.begin() + 1, boxes[1]);
  BOOST_TEST(!layout::lists_grid_in_order(refs(twice), size));
  BOOST_TEST(!layout::check_tiling(twice, size).tiles());
  auto missing = boxes;
  missing.erase(missing.begin());
  BOOST_TEST(!layout::lists_grid_in_order(refs(missing), size));
  auto swapped = boxes;
  std::swap(swapped[0], swapped[1]);
  BOOST_TEST(!layout::lists_grid_in_order(refs(swapped), size));
  BOOST_TEST(layout::check_tiling(swapped, size).tiles());  // still a tiling, found the slow way
  auto negative = boxes;
  negative[0].sizes[2] = -1;
  BOOST_TEST(!layout::lists_grid_in_order(refs(negative), size));
  BOOST_TEST(!layout::lists_grid_in_order(refs(boxes), Shape{3, 7, 6}));  // does not reach the end
  BOOST_TEST(!layout::lists_grid_in_order({}, size));
  const std::vector<Box> scalar{Box{}};
  BOOST_TEST(!layout::lists_grid_in_order(refs(scalar), Shape{}));
}

BOOST_AUTO_TEST_CASE(agrees_with_counting_elements) {
  // Random grids, then random damage: a cell moved, resized, dropped or repeated.
  std::mt19937_64 rng(7);
  auto pick = [&](std::int64_t n) { return static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(n)); };
  for (int round = 0; round < 3000; ++round) {
    const Shape size{1 + pick(9), 1 + pick(9)};
    std::vector<std::int64_t> rows, cols;
    for (std::int64_t r = 1; r < size[0]; ++r)
      if (pick(3) == 0) rows.push_back(r);
    for (std::int64_t c = 1; c < size[1]; ++c)
      if (pick(3) == 0) cols.push_back(c);
    auto boxes = grid(size, rows, cols);
    const bool shuffled = pick(2) == 0;  // else in row-major order, as ranks list them
    if (shuffled) std::shuffle(boxes.begin(), boxes.end(), rng);
    const auto victim = static_cast<std::size_t>(pick(static_cast<std::int64_t>(boxes.size())));
    const auto damage = pick(6);
    switch (damage) {
      case 0: break;  // intact
      case 5: {  // an empty chunk among the others, inside the tensor or just past its end
        const bool outside = pick(4) == 0;
        const Box empty{{outside ? size[0] + 1 : pick(size[0] + 1), pick(size[1])}, {0, 1}};
        boxes.insert(boxes.begin() + static_cast<std::ptrdiff_t>(victim), empty);
        if (outside) {
          BOOST_TEST(!layout::lists_grid_in_order(refs(boxes), size), "round " << round);
          continue;  // check_tiling takes boxes inside the tensor only
        }
        break;
      }
      case 1: boxes.erase(boxes.begin() + static_cast<std::ptrdiff_t>(victim)); break;
      case 2: boxes.push_back(boxes[victim]); break;
      case 3: {  // moved or resized, kept inside the tensor
        auto& b = boxes[victim];
        b.offsets[0] = pick(size[0]);
        b.sizes[1] = 1 + pick(size[1] - b.offsets[1]);
        b.sizes[0] = 1 + pick(size[0] - b.offsets[0]);
        break;
      }
      default: boxes.push_back(Box{{pick(size[0]), 0}, {0, size[1]}});  // an empty chunk
    }
    const auto count = coverage(boxes, size);
    bool tiles = true, overlaps = false;
    for (int c : count) tiles = tiles && c == 1, overlaps = overlaps || c > 1;
    const auto check = layout::check_tiling(boxes, size);
    BOOST_TEST(check.tiles() == tiles, "round " << round);
    // The fast path proves only tilings, and proves every intact grid listed in order.
    const bool in_order = layout::lists_grid_in_order(refs(boxes), size);
    if (in_order) BOOST_TEST(tiles, "round " << round << ": a grid in order that does not tile");
    if (!shuffled && (damage == 0 || damage == 5)) BOOST_TEST(in_order, "round " << round);
    BOOST_TEST(check.overlap.has_value() == overlaps, "round " << round);
    if (check.overlap) {
      const auto both = coverage({boxes[check.overlap->first], boxes[check.overlap->second]}, size);
      bool shared = false;
      for (int c : both) shared = shared || c == 2;
      BOOST_TEST(shared, "round " << round << ": the named pair does not overlap");
    }
  }
}

BOOST_AUTO_TEST_SUITE_END()
