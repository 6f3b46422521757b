// Unit tests for dcp.layout's layouts: torch.chunk extents and their inverse, DTensor layouts
// (parse_layout, Layout, local_box), describe_layout
// on synthetic tilings, and forward → backward round trips over random layouts.
#include <boost/test/unit_test.hpp>
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <random>
#include <set>
#include <string>
#include <vector>
import dcp.error;
import dcp.layout;

#include "layout_test.hpp"

namespace layout = dcp::layout;
using dcp_layout_test::code_of;
using layout::Box;
using layout::Layout;
using layout::LayoutDescription;
using layout::LayoutKind;
using layout::Placement;
using layout::Shape;

namespace {

const auto S0 = Placement::shard(0);
const auto S1 = Placement::shard(1);
const auto R = Placement::replicate();

// 1-D boxes of `sizes` laid end to end.
std::vector<Box> row_boxes(std::initializer_list<std::int64_t> sizes, std::int64_t cols = 4) {
  std::vector<Box> out;
  std::int64_t at = 0;
  for (std::int64_t s : sizes) {
    out.push_back(Box{{at, 0}, {s, cols}});
    at += s;
  }
  return out;
}

LayoutDescription describe(const Shape& global, const std::vector<Box>& boxes) {
  return layout::describe_layout(global, boxes);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(extents)

// chunk_extent itself is checked against torch.chunk in test_layout_torch.cpp; here the
// functions derived from it: nonempty_parts and the inverse parts_for_split.
BOOST_AUTO_TEST_CASE(nonempty_parts_and_the_inverse_agree_with_chunk_extent) {
  for (std::int64_t n = 0; n <= 40; ++n)
    for (int parts = 1; parts <= 12; ++parts) {
      std::int64_t nonempty = 0;
      for (int i = 0; i < parts; ++i) nonempty += layout::chunk_extent(n, parts, i).size > 0;
      BOOST_TEST(layout::nonempty_parts(n, parts) == nonempty, n << " / " << parts);
      // The non-empty parts are the split of n into that many parts.
      for (std::int64_t i = 0; i < nonempty; ++i)
        BOOST_TEST(layout::chunk_extent(n, nonempty, i) == layout::chunk_extent(n, parts, i));
    }
  for (std::int64_t n = 1; n <= 40; ++n)
    for (std::int64_t split = 1; split <= n + 1; ++split) {
      const auto [first, last] = layout::parts_for_split(n, split);
      for (std::int64_t p = 1; p <= 2 * n + 2; ++p)
        BOOST_TEST((layout::chunk_extent(n, p, 0).size == split) == (first <= p && p <= last), n << " " << split << " " << p);
    }
}

BOOST_AUTO_TEST_CASE(bad_extents) {
  BOOST_TEST((code_of([] { (void)layout::chunk_extent(-1, 2, 0); }) == dcp::Errc::invalid_argument));
  BOOST_TEST((code_of([] { (void)layout::chunk_extent(4, 0, 0); }) == dcp::Errc::invalid_argument));
  BOOST_TEST((code_of([] { (void)layout::chunk_extent(4, 2, 2); }) == dcp::Errc::invalid_argument));
  BOOST_TEST((code_of([] { (void)layout::chunk_extent(4, 2, -1); }) == dcp::Errc::invalid_argument));
  const auto big = layout::chunk_extent(INT64_MAX, 3, 2);
  BOOST_TEST(big.start + big.size == INT64_MAX);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(forward)

BOOST_AUTO_TEST_CASE(parse_layout_names) {
  BOOST_TEST((layout::parse_layout("rows", 4) == Layout({4}, {S0})));
  BOOST_TEST((layout::parse_layout("cols", 3) == Layout({3}, {S1})));
  BOOST_TEST((layout::parse_layout("2d:2x3", 6) == Layout({2, 3}, {S0, S1})));
  BOOST_TEST((layout::parse_layout("2d:1x1", 1) == Layout({1, 1}, {S0, S1})));
  BOOST_TEST((layout::parse_layout("replicated", 4) == Layout({4}, {layout::Placement::replicate()})));
  BOOST_TEST((layout::local_box({6, 2}, layout::parse_layout("replicated", 4), 3) == layout::full_box({6, 2})));
}

BOOST_AUTO_TEST_CASE(parse_layout_rejects_bad_text) {
  for (const char* text : {"", "row", "Rows", "rows ", "2d:", "2d:2", "2d:2x", "2d:x2", "2d:0x4", "2d:4x0", "2d:2x3",
                           "2d:-2x-2", "2d:2x2x1", "2d: 2x2", "2d:+2x2", "2d:2X2", "2d:2x99999999999", "3d:1x2x2"})
    BOOST_TEST_CONTEXT(text) {
      BOOST_TEST((code_of([&] { (void)layout::parse_layout(text, 4); }) == dcp::Errc::invalid_argument));
    }
  BOOST_TEST((code_of([] { (void)layout::parse_layout("rows", 0); }) == dcp::Errc::invalid_argument));
  try {
    (void)layout::parse_layout("2d:2x3", 4);
  } catch (const dcp::Error& e) {
    BOOST_TEST(std::string(e.what()).find("2d:2x3") != std::string::npos, e.what());
  }
}

BOOST_AUTO_TEST_CASE(layout_checks_itself) {
  for (auto make : std::initializer_list<void (*)()>{
           [] { (void)Layout({}, {}); }, [] { (void)Layout({0}, {S0}); }, [] { (void)Layout({2}, {S0, S1}); },
           [] { (void)Layout({2}, {Placement::shard(-1)}); }, [] { (void)Layout({65536, 65536}, {S0, S1}); }})
    BOOST_TEST((code_of(make) == dcp::Errc::invalid_argument));
  const Layout mesh({2, 3}, {S0, S1});
  BOOST_TEST(mesh.world_size() == 6);
  BOOST_TEST((mesh.coordinate(4) == std::vector<int>{1, 1}));
  BOOST_TEST((mesh.coordinate(5) == std::vector<int>{1, 2}));
  BOOST_TEST((code_of([&] { (void)mesh.coordinate(6); }) == dcp::Errc::invalid_argument));
  BOOST_TEST((code_of([&] { (void)mesh.coordinate(-1); }) == dcp::Errc::invalid_argument));
}

BOOST_AUTO_TEST_CASE(local_box_follows_torch) {
  const auto rows = layout::parse_layout("rows", 4);
  BOOST_TEST((layout::local_box({10, 7}, rows, 3) == Box{{9, 0}, {1, 7}}));
  // Fewer rows than ranks: empty shards at offset global[0], as DCP saves them.
  BOOST_TEST((layout::local_box({2, 3}, rows, 1) == Box{{1, 0}, {1, 3}}));
  BOOST_TEST((layout::local_box({2, 3}, rows, 2) == Box{{2, 0}, {0, 3}}));
  // [Shard(0), Shard(0)] on (2, 3), 4 rows: rank 2 = (0, 2) gets part 2 of rows [0, 2), empty:
  // torch places it at 4 (the global end), not at 2 (the end of its parent part).
  const Layout nested({2, 3}, {S0, S0});
  BOOST_TEST((layout::local_box({4, 5}, nested, 1) == Box{{1, 0}, {1, 5}}));
  BOOST_TEST((layout::local_box({4, 5}, nested, 2) == Box{{4, 0}, {0, 5}}));
  BOOST_TEST((layout::local_box({4, 5}, nested, 3) == Box{{2, 0}, {1, 5}}));
  const auto grid = layout::parse_layout("2d:2x2", 4);
  BOOST_TEST((layout::local_box({7, 9}, grid, 3) == Box{{4, 5}, {3, 4}}));
  // A 0-dim tensor is whole everywhere; sharding a dim the tensor lacks is an error.
  BOOST_TEST((layout::local_box({}, grid, 2) == Box{{}, {}}));
  BOOST_TEST((code_of([&] { (void)layout::local_box({5}, grid, 0); }) == dcp::Errc::invalid_argument));
  BOOST_TEST((code_of([&] { (void)layout::local_box({5, 5}, grid, 4); }) == dcp::Errc::invalid_argument));
  BOOST_TEST((code_of([&] { (void)layout::local_box({-1, 5}, grid, 0); }) == dcp::Errc::invalid_argument));
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(backward)

BOOST_AUTO_TEST_CASE(recognised_layouts) {
  const LayoutDescription whole{LayoutKind::whole, {}, {}};
  BOOST_TEST(describe({10, 4}, row_boxes({10})) == whole);
  BOOST_TEST(describe({}, {Box{{}, {}}}) == whole);
  BOOST_TEST(describe({0, 4}, {Box{{0, 0}, {0, 4}}}) == whole);
  BOOST_TEST(describe({0, 4}, {}) == whole);
  BOOST_TEST(describe({10, 4}, row_boxes({3, 3, 3, 1})) == (LayoutDescription{LayoutKind::split, {0}, {4}}));
  // 9 rows on 4 ranks (3, 3, 3 and an empty shard) are the torch.chunk split into 3.
  auto nine = row_boxes({3, 3, 3});
  nine.push_back(Box{{9, 0}, {0, 4}});
  BOOST_TEST(describe({9, 4}, nine) == (LayoutDescription{LayoutKind::split, {0}, {3}}));
  BOOST_TEST(describe({5, 10}, {Box{{0, 3}, {5, 3}}, Box{{0, 0}, {5, 3}}, Box{{0, 6}, {5, 3}}, Box{{0, 9}, {5, 1}}}) ==
             (LayoutDescription{LayoutKind::split, {1}, {4}}));
  BOOST_TEST(describe({2, 3, 4}, {Box{{0, 0, 2}, {2, 3, 2}}, Box{{0, 0, 0}, {2, 3, 2}}}) ==
             (LayoutDescription{LayoutKind::split, {2}, {2}}));
  // [Shard(0), Shard(0)] of 10 rows on (2, 2): 5, 5, then 3, 2 each.
  BOOST_TEST(describe({10, 4}, row_boxes({3, 2, 3, 2})) == (LayoutDescription{LayoutKind::nested, {0}, {2, 2}}));
  // 7 rows on (2, 3): 4, 3 → 2, 2 | 1, 1, 1 (the last part splits into more pieces).
  BOOST_TEST(describe({7, 4}, row_boxes({2, 2, 1, 1, 1})) == (LayoutDescription{LayoutKind::nested, {0}, {2, 3}}));
  // 7 x 9 on a 2 x 2 grid.
  const std::vector<Box> grid{Box{{0, 0}, {4, 5}}, Box{{0, 5}, {4, 4}}, Box{{4, 0}, {3, 5}}, Box{{4, 5}, {3, 4}}};
  BOOST_TEST(describe({7, 9}, grid) == (LayoutDescription{LayoutKind::grid, {0, 1}, {2, 2}}));
}

BOOST_AUTO_TEST_CASE(irregular_tilings) {
  const auto irregular = [](std::int64_t k) { return LayoutDescription{LayoutKind::irregular, {}, {k}}; };
  BOOST_TEST(describe({10, 4}, row_boxes({3, 3, 2, 2})) == irregular(4));  // tensor_split's sizes
  BOOST_TEST(describe({10, 4}, row_boxes({2, 4, 4})) == irregular(3));     // equal sizes, remainder first
  BOOST_TEST(describe({10, 4}, row_boxes({4, 1, 4, 1})) == irregular(4));  // no split of 10 into 2 of 5s
  BOOST_TEST(describe({11, 4}, row_boxes({5, 5, 1})) == irregular(3));
  auto gap = row_boxes({3, 3, 3});
  BOOST_TEST(describe({10, 4}, gap) == irregular(3));
  auto overlap = row_boxes({5, 5});
  overlap.push_back(Box{{4, 0}, {2, 4}});
  BOOST_TEST(describe({10, 4}, overlap) == irregular(3));
  auto twice = row_boxes({5, 5});
  twice.push_back(twice[0]);
  BOOST_TEST(describe({10, 4}, twice) == irregular(3));
  BOOST_TEST(describe({10, 4}, {Box{{0, 0}, {10, 4}}, Box{{0, 0}, {10, 4}}}) == irregular(2));
  // A brick wall: rows split 2, 2, columns offset in the second row.
  BOOST_TEST(describe({4, 4}, {Box{{0, 0}, {2, 2}}, Box{{0, 2}, {2, 2}}, Box{{2, 0}, {2, 1}}, Box{{2, 1}, {2, 3}}}) ==
             irregular(4));
  // A grid whose columns are not torch.chunk's.
  BOOST_TEST(describe({4, 10}, {Box{{0, 0}, {2, 2}}, Box{{0, 2}, {2, 8}}, Box{{2, 0}, {2, 2}}, Box{{2, 2}, {2, 8}}}) ==
             irregular(4));
  // Three split dims; a chunk outside the tensor; a chunk of another rank; no chunk at all.
  std::vector<Box> cube;
  for (std::int64_t a : {0, 1})
    for (std::int64_t b : {0, 1})
      for (std::int64_t c : {0, 1}) cube.push_back(Box{{a, b, c}, {1, 1, 1}});
  BOOST_TEST(describe({2, 2, 2}, cube) == irregular(8));
  BOOST_TEST(describe({10, 4}, row_boxes({5, 6})) == irregular(2));
  BOOST_TEST(describe({10, 4}, {Box{{0}, {10}}}) == irregular(1));
  BOOST_TEST(describe({10, 4}, {}) == irregular(0));
  BOOST_TEST(describe({10, 4}, {Box{{-1, 0}, {11, 4}}}) == irregular(1));
}

BOOST_AUTO_TEST_CASE(names) {
  const auto text = [](LayoutKind kind, std::vector<int> dims, std::vector<std::int64_t> parts) {
    const LayoutDescription d{kind, std::move(dims), std::move(parts)};
    return std::string(layout::layout_kind_name(d)) + " " + layout::format_layout(d);
  };
  BOOST_TEST(text(LayoutKind::whole, {}, {}) == "whole whole");
  BOOST_TEST(text(LayoutKind::split, {0}, {4}) == "rows rows(4)");
  BOOST_TEST(text(LayoutKind::split, {1}, {2}) == "cols cols(2)");
  BOOST_TEST(text(LayoutKind::split, {2}, {3}) == "dim dim2(3)");
  BOOST_TEST(text(LayoutKind::nested, {0}, {2, 3}) == "nested rows(2x3 nested)");
  BOOST_TEST(text(LayoutKind::grid, {0, 1}, {2, 2}) == "grid grid(2x2)");
  BOOST_TEST(text(LayoutKind::grid, {1, 2}, {4, 2}) == "grid grid(4x2 dims 1,2)");
  BOOST_TEST(text(LayoutKind::irregular, {}, {5}) == "irregular irregular(5)");
}

BOOST_AUTO_TEST_CASE(layout_boxes_rejects_what_names_no_boxes) {
  const auto code = [](LayoutKind kind, std::vector<int> dims, std::vector<std::int64_t> parts) {
    return code_of([&] { (void)layout::layout_boxes({4, 4}, LayoutDescription{kind, dims, parts}); });
  };
  BOOST_TEST((code(LayoutKind::irregular, {}, {2}) == dcp::Errc::invalid_argument));
  BOOST_TEST((code(LayoutKind::split, {2}, {2}) == dcp::Errc::invalid_argument));
  BOOST_TEST((code(LayoutKind::split, {0}, {0}) == dcp::Errc::invalid_argument));
  BOOST_TEST((code(LayoutKind::split, {0}, {2, 2}) == dcp::Errc::invalid_argument));
  BOOST_TEST((code(LayoutKind::grid, {1, 0}, {2, 2}) == dcp::Errc::invalid_argument));
  BOOST_TEST((code(LayoutKind::nested, {0, 1}, {2, 2}) == dcp::Errc::invalid_argument));
  BOOST_TEST((code(LayoutKind::whole, {0}, {}) == dcp::Errc::invalid_argument));
}

// Forward then backward over random DTensor layouts on 1-D and 2-D meshes: describe_layout
// recognises every one, and the boxes its description names are exactly the saved ones.
BOOST_AUTO_TEST_CASE(round_trip_random_layouts) {
  std::mt19937 rng(20240611);
  const auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  std::set<std::string> kinds;
  for (int iter = 0; iter < 4000; ++iter) {
    Shape global(static_cast<std::size_t>(pick(0, 3)));
    for (auto& s : global) s = pick(0, 4) == 0 ? pick(0, 2) : pick(1, 30);
    const int rank = static_cast<int>(global.size());
    const auto placement = [&] { return rank == 0 || pick(0, 3) == 0 ? R : Placement::shard(pick(0, rank - 1)); };
    const Layout l = pick(0, 1) ? Layout({pick(1, 9)}, {placement()}) : Layout({pick(1, 4), pick(1, 4)}, {placement(), placement()});
    const auto saved = dcp_layout_test::unique_boxes(global, l, false);
    const auto d = layout::describe_layout(global, saved);
    BOOST_TEST_CONTEXT(layout::format_shape(global) << " " << layout::format_layout(d)) {
      BOOST_TEST_REQUIRE((d.kind != LayoutKind::irregular));
      auto boxes = layout::layout_boxes(global, d);
      if (layout::volume(layout::full_box(global)) == 0) boxes.clear();
      BOOST_TEST((boxes == saved));
    }
    kinds.insert(std::string(layout::layout_kind_name(d)));
  }
  BOOST_TEST(kinds.size() == 6u);  // whole, rows, cols, dim, nested, grid all met
}

// O(n log n): 200k rows, a 400 x 399 grid, and a periodic nested list (many candidate first
// groups) take well under a second each.
BOOST_AUTO_TEST_CASE(large_chunk_lists) {
  const auto timed = [](const Shape& global, const std::vector<Box>& boxes) {
    const auto t0 = std::chrono::steady_clock::now();
    const auto d = layout::describe_layout(global, boxes);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    BOOST_TEST(s < 2.0, layout::format_layout(d) << " took " << s << " s");
    return d;
  };
  const Shape rows{1'000'003, 8};  // 200k parts of 6 rows: 166,668 non-empty
  BOOST_TEST(timed(rows, layout::chunk_split(rows, 0, 200'000)) == (LayoutDescription{LayoutKind::split, {0}, {166'668}}));
  const LayoutDescription grid{LayoutKind::grid, {0, 1}, {400, 399}};
  BOOST_TEST(timed({4000, 3990}, layout::layout_boxes({4000, 3990}, grid)) == grid);
  // 2,1 repeated: a nested split of 3-row parts into 2; every first group is a candidate.
  std::vector<Box> periodic;
  for (std::int64_t i = 0; i < 100'000; ++i) {
    periodic.push_back(Box{{3 * i}, {2}});
    periodic.push_back(Box{{3 * i + 2}, {1}});
  }
  periodic.back().sizes[0] = 2;  // breaks the pattern at the very end: irregular
  BOOST_TEST((timed({300'001}, periodic).kind == LayoutKind::irregular));
}

BOOST_AUTO_TEST_SUITE_END()
