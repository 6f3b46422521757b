// Unit tests for dcp.layout: boxes, torch's overlap rule, torch.chunk splits, ChunkIndex,
// coverage holes.
#define BOOST_TEST_MODULE dcp.layout
#include <boost/test/unit_test.hpp>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <ostream>
#include <optional>
#include <random>
#include <vector>
import dcp.error;
import dcp.layout;

using dcp::layout::Box;
using dcp::layout::ChunkIndex;
using dcp::layout::Overlap;
using dcp::layout::Shape;
namespace layout = dcp::layout;

#include "layout_test.hpp"

using dcp_layout_test::code_of;

namespace {

Box box1(std::int64_t off, std::int64_t size) { return Box{{off}, {size}}; }

// torch's all-pairs loop, the reference the index must agree with.
std::vector<std::size_t> brute_force(const std::vector<Box>& saved, const Box& dest) {
  std::vector<std::size_t> out;
  for (std::size_t i = 0; i < saved.size(); ++i)
    if (layout::intersect(dest, saved[i])) out.push_back(i);
  return out;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(unit)

BOOST_AUTO_TEST_CASE(torch_worked_example_rank1) {
  // 120 elements saved as 4 × 30, loaded on 3 ranks × 40: rank 1 holds [40, 80).
  const Box dest = box1(40, 40);
  BOOST_TEST(!layout::intersect(dest, box1(0, 30)));
  const auto a = layout::intersect(dest, box1(30, 30));
  BOOST_REQUIRE(a);
  BOOST_TEST(*a == (Overlap{{0}, {10}, {20}}));  // [10,30) of chunk [30,60) into [0,20)
  const auto b = layout::intersect(dest, box1(60, 30));
  BOOST_REQUIRE(b);
  BOOST_TEST(*b == (Overlap{{20}, {0}, {20}}));  // [0,20) of chunk [60,90) into [20,40)
  BOOST_TEST(!layout::intersect(dest, box1(90, 30)));
}

BOOST_AUTO_TEST_CASE(touching_boxes_do_not_meet) {
  BOOST_TEST(!layout::intersect(box1(0, 10), box1(10, 5)));
  BOOST_TEST(!layout::intersect(box1(10, 5), box1(0, 10)));
}

BOOST_AUTO_TEST_CASE(two_dim_overlap) {
  // Saved split along dim 1, loaded along dim 0.
  const Box dest{{2, 0}, {2, 8}};
  const Box saved{{0, 4}, {4, 4}};
  const auto o = layout::intersect(dest, saved);
  BOOST_REQUIRE(o);
  BOOST_TEST(*o == (Overlap{{0, 4}, {2, 0}, {2, 4}}));
}

BOOST_AUTO_TEST_CASE(zero_dim_boxes_always_meet) {
  const auto o = layout::intersect(Box{}, Box{});
  BOOST_REQUIRE(o);
  BOOST_TEST(o->lengths.empty());
  BOOST_TEST(o->dest_offsets.empty());
  BOOST_TEST(layout::volume(Box{}) == 1u);
  BOOST_TEST(!layout::is_empty(Box{}));
  BOOST_TEST(layout::format_box(Box{}) == "scalar");
}

BOOST_AUTO_TEST_CASE(zero_size_boxes_meet_nothing) {
  // torch would emit a zero-length item for a zero-size chunk whose offset lies inside.
  BOOST_TEST(!layout::intersect(box1(0, 10), box1(5, 0)));
  BOOST_TEST(!layout::intersect(box1(5, 0), box1(0, 10)));
  BOOST_TEST(!layout::intersect(Box{{0, 0}, {4, 4}}, Box{{1, 1}, {0, 2}}));
  BOOST_TEST(layout::is_empty(box1(3, 0)));
}

BOOST_AUTO_TEST_CASE(intersect_rejects_bad_boxes) {
  BOOST_TEST((code_of([] { (void)layout::intersect(box1(0, 1), Box{{0, 0}, {1, 1}}); }) ==
              dcp::Errc::invalid_argument));
  BOOST_TEST((code_of([] { (void)layout::intersect(box1(-1, 1), box1(0, 1)); }) == dcp::Errc::invalid_argument));
  const std::int64_t big = std::numeric_limits<std::int64_t>::max();
  BOOST_TEST((code_of([&] { (void)layout::intersect(box1(big, 1), box1(0, 1)); }) == dcp::Errc::invalid_argument));
  BOOST_TEST(!layout::is_valid(Box{{0}, {1, 2}}));
}

BOOST_AUTO_TEST_CASE(box_helpers) {
  BOOST_TEST(layout::volume(Box{{0, 0}, {3, 4}}) == 12u);
  BOOST_TEST(layout::format_box(Box{{40, 0}, {40, 7}}) == "[40, 80) x [0, 7)");
  BOOST_TEST(layout::format_shape(Shape{5}) == "(5,)");
  BOOST_TEST(layout::format_shape(Shape{3, 4}) == "(3, 4)");
  BOOST_TEST(layout::format_shape(Shape{}) == "()");
  BOOST_TEST(layout::is_inside(Box{{9, 0}, {1, 7}}, Shape{10, 7}));
  BOOST_TEST(!layout::is_inside(Box{{9, 0}, {2, 7}}, Shape{10, 7}));
  BOOST_TEST(!layout::is_inside(box1(0, 1), Shape{10, 7}));
  // The offsets/sizes form says the same, for plans checked without making Boxes.
  const Shape ten_by_seven{10, 7}, max_offset{INT64_MAX, 0};
  BOOST_TEST(layout::is_inside(Shape{9, 0}, Shape{1, 7}, ten_by_seven));
  BOOST_TEST(!layout::is_inside(Shape{9, 0}, Shape{2, 7}, ten_by_seven));
  BOOST_TEST(!layout::is_inside(Shape{-1, 0}, Shape{1, 7}, ten_by_seven));
  BOOST_TEST(!layout::is_inside(Shape{0, 0}, Shape{1, -1}, ten_by_seven));
  BOOST_TEST(!layout::is_inside(Shape{0}, Shape{1, 7}, ten_by_seven));
  BOOST_TEST(!layout::is_inside(max_offset, Shape{1, 0}, Shape{INT64_MAX, 0}));
  BOOST_TEST(layout::span_elements(Shape{3, 4}, Shape{10, 1}) == 24u);  // rows 0-2 of width 10, 4 used
  BOOST_TEST(layout::span_elements(Shape{2, 5}, layout::contiguous_strides(Shape{2, 5})) == 10u);
  BOOST_TEST(layout::full_box(Shape{2, 3}) == (Box{{0, 0}, {2, 3}}));
  BOOST_TEST(layout::format_shape(Shape(1000, 7)) == "(7, 7, 7, 7, 7, 7, 7, 7, ..., 1000 dims)");
  BOOST_TEST(layout::contiguous_strides(Shape{2, 3, 4}) == (Shape{12, 4, 1}));
  BOOST_TEST(layout::contiguous_strides(Shape{2, 0, 4}) == (Shape{4, 4, 1}));
  BOOST_TEST(layout::contiguous_strides(Shape{}).empty());
  BOOST_TEST((code_of([] { (void)layout::contiguous_strides(Shape{1 << 30, 1 << 30, 1 << 30, 1 << 30}); }) ==
              dcp::Errc::out_of_range));
  const std::int64_t big = std::int64_t{1} << 40;
  BOOST_TEST((code_of([&] { (void)layout::volume(Box{{0, 0}, {big, big}}); }) == dcp::Errc::out_of_range));
}

BOOST_AUTO_TEST_CASE(chunk_split_matches_torch_chunk) {
  // 10 rows over 4 ranks: split 3 → 3, 3, 3, 1 (the 1.13 ShardedTensor example).
  const auto parts = layout::chunk_split(Shape{10, 7}, 0, 4);
  BOOST_REQUIRE(parts.size() == 4u);
  BOOST_TEST(parts[0] == (Box{{0, 0}, {3, 7}}));
  BOOST_TEST(parts[1] == (Box{{3, 0}, {3, 7}}));
  BOOST_TEST(parts[2] == (Box{{6, 0}, {3, 7}}));
  BOOST_TEST(parts[3] == (Box{{9, 0}, {1, 7}}));
  // 5 × 16 along dim 1 into 4.
  const auto cols = layout::chunk_split(Shape{5, 16}, 1, 4);
  BOOST_TEST(cols[3] == (Box{{0, 12}, {5, 4}}));
}

BOOST_AUTO_TEST_CASE(chunk_split_empty_trailing_parts) {
  // 2 rows over 4 ranks: sizes 1, 1, 0, 0 with offsets clamped at 2.
  const auto p = layout::chunk_split(Shape{2, 3}, 0, 4);
  BOOST_TEST(p[2] == (Box{{2, 0}, {0, 3}}));
  BOOST_TEST(p[3] == (Box{{2, 0}, {0, 3}}));
  // 10 over 6: split 2 → 2, 2, 2, 2, 2, 0.
  const auto q = layout::chunk_split(Shape{10}, 0, 6);
  BOOST_TEST(q[4] == box1(8, 2));
  BOOST_TEST(q[5] == box1(10, 0));
  // 0 rows: every part empty at offset 0.
  for (const Box& b : layout::chunk_split(Shape{0}, 0, 3)) BOOST_TEST(b == box1(0, 0));
  // Huge n: split * i must not overflow.
  const std::int64_t big = std::numeric_limits<std::int64_t>::max();
  const auto h = layout::chunk_split(Shape{big}, 0, 3);
  std::int64_t total = 0;
  for (const Box& b : h) total += b.sizes[0];
  BOOST_TEST(total == big);
}

BOOST_AUTO_TEST_CASE(chunk_split_rejects_bad_arguments) {
  BOOST_TEST((code_of([] { (void)layout::chunk_split(Shape{4}, 1, 2); }) == dcp::Errc::invalid_argument));
  BOOST_TEST((code_of([] { (void)layout::chunk_split(Shape{}, 0, 2); }) == dcp::Errc::invalid_argument));
  BOOST_TEST((code_of([] { (void)layout::chunk_split(Shape{4}, 0, 0); }) == dcp::Errc::invalid_argument));
  BOOST_TEST((code_of([] { (void)layout::chunk_split(Shape{-4}, 0, 2); }) == dcp::Errc::invalid_argument));
}

BOOST_AUTO_TEST_CASE(chunk_index_worked_example) {
  const ChunkIndex index(layout::chunk_split(Shape{120}, 0, 4));
  BOOST_TEST(index.is_disjoint());
  BOOST_TEST(index.overlapping(box1(40, 40)) == (std::vector<std::size_t>{1, 2}));
  BOOST_TEST(index.overlapping(box1(0, 120)) == (std::vector<std::size_t>{0, 1, 2, 3}));
  BOOST_TEST(index.overlapping(box1(30, 0)).empty());
}

BOOST_AUTO_TEST_CASE(chunk_index_of_row_chunks) {
  const ChunkIndex index(std::vector<Box>{{{0, 0}, {3, 7}}, {{3, 0}, {3, 7}}, {{6, 0}, {4, 7}}});
  BOOST_TEST(index.size() == 3u);
  BOOST_TEST(index.box(2) == (Box{{6, 0}, {4, 7}}));
  BOOST_TEST(index.overlapping(Box{{5, 3}, {2, 1}}) == (std::vector<std::size_t>{1, 2}));
  BOOST_TEST(index.is_disjoint());
}

BOOST_AUTO_TEST_CASE(chunk_index_names_the_first_overlapping_pair) {
  const ChunkIndex index(std::vector<Box>{{{0, 0}, {3, 7}}, {{3, 0}, {3, 7}}, {{5, 6}, {2, 1}}});
  BOOST_TEST(!index.is_disjoint());
  BOOST_REQUIRE(index.first_overlap().has_value());
  BOOST_TEST(index.first_overlap()->first == 1u);
  BOOST_TEST(index.first_overlap()->second == 2u);
}

BOOST_AUTO_TEST_CASE(chunk_index_skips_empty_chunks_and_handles_scalars) {
  const ChunkIndex index(layout::chunk_split(Shape{2, 3}, 0, 4));
  BOOST_TEST(index.overlapping(Box{{0, 0}, {2, 3}}) == (std::vector<std::size_t>{0, 1}));
  const ChunkIndex scalar(std::vector<Box>{Box{}});
  BOOST_TEST(scalar.overlapping(Box{}) == (std::vector<std::size_t>{0}));
  BOOST_TEST(ChunkIndex().overlapping(box1(0, 4)).empty());
}

BOOST_AUTO_TEST_CASE(chunk_index_detects_overlapping_chunks) {
  const ChunkIndex index(std::vector<Box>{box1(0, 10), box1(5, 10)});
  BOOST_TEST(!index.is_disjoint());
  BOOST_TEST(index.overlapping(box1(7, 1)) == (std::vector<std::size_t>{0, 1}));
}

BOOST_AUTO_TEST_CASE(chunk_index_rejects_bad_boxes) {
  BOOST_TEST((code_of([] { ChunkIndex(std::vector<Box>{box1(0, 1), Box{{0, 0}, {1, 1}}}); }) ==
              dcp::Errc::invalid_argument));
  BOOST_TEST((code_of([] { ChunkIndex(std::vector<Box>{box1(0, -1)}); }) == dcp::Errc::invalid_argument));
  const ChunkIndex index(std::vector<Box>{box1(0, 1)});
  BOOST_TEST((code_of([&] { (void)index.overlapping(Box{{0, 0}, {1, 1}}); }) == dcp::Errc::invalid_argument));
}

BOOST_AUTO_TEST_CASE(chunk_index_agrees_with_all_pairs_on_grids) {
  // A 2-D grid of uneven tiles (rows split 37 ways, columns 11 ways) queried with random
  // boxes, including ones that stick out of the tensor.
  const Shape size{1000, 300};
  std::vector<Box> tiles;
  for (const Box& rows : layout::chunk_split(size, 0, 37))
    for (const Box& cols : layout::chunk_split(Shape{rows.sizes[0], 300}, 1, 11))
      tiles.push_back(Box{{rows.offsets[0], cols.offsets[1]}, {rows.sizes[0], cols.sizes[1]}});
  const ChunkIndex index(tiles);
  BOOST_TEST(index.is_disjoint());
  std::mt19937_64 rng(42);
  for (int q = 0; q < 500; ++q) {
    const std::int64_t r0 = static_cast<std::int64_t>(rng() % 1100), c0 = static_cast<std::int64_t>(rng() % 320);
    const Box dest{{r0, c0}, {static_cast<std::int64_t>(rng() % 200), static_cast<std::int64_t>(rng() % 90)}};
    BOOST_TEST(index.overlapping(dest) == brute_force(tiles, dest));
  }
}

BOOST_AUTO_TEST_SUITE_END()
