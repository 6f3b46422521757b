// Shared by the dcp.layout suite's files: Boost.Test printers for the module's value types,
// `code_of`, and the boxes a layout's ranks would save. Include after `import dcp.error;
// import dcp.layout;`.
#pragma once
#include <boost/test/unit_test.hpp>
#include <algorithm>
#include <ostream>
#include <utility>
#include <vector>

namespace dcp::layout {
inline std::ostream& operator<<(std::ostream& os, const Box& b) { return os << format_box(b); }
inline std::ostream& operator<<(std::ostream& os, const Overlap& o) {
  return os << "dest " << format_shape(o.dest_offsets) << " storage " << format_shape(o.storage_offsets)
            << " lengths " << format_shape(o.lengths);
}
inline std::ostream& operator<<(std::ostream& os, const Extent& e) {
  return os << "[" << e.start << ", " << e.start + e.size << ")";
}
inline std::ostream& operator<<(std::ostream& os, const LayoutDescription& d) { return os << format_layout(d); }
}  // namespace dcp::layout

namespace dcp_layout_test {
/// The code of the dcp::Error that `fn()` throws; fails the test when it throws none.
inline dcp::Errc code_of(auto&& fn) {
  try {
    fn();
  } catch (const dcp::Error& e) {
    return e.code();
  }
  BOOST_FAIL("expected a dcp::Error");
  return dcp::Errc::internal;
}

/// Sorted by offsets (then sizes), so chunk lists compare as sets; tilings come out row-major.
inline std::vector<dcp::layout::Box> sorted(std::vector<dcp::layout::Box> boxes) {
  std::sort(boxes.begin(), boxes.end(), [](const auto& a, const auto& b) {
    return a.offsets != b.offsets ? a.offsets < b.offsets : a.sizes < b.sizes;
  });
  return boxes;
}

/// The distinct boxes of `layout`'s ranks, sorted: what DCP saves for a DTensor (it keeps one
/// of each replica, empty shards included); without the empty ones, what names its layout.
inline std::vector<dcp::layout::Box> unique_boxes(const dcp::layout::Shape& global, const dcp::layout::Layout& layout,
                                                  bool keep_empty) {
  std::vector<dcp::layout::Box> out;
  for (int r = 0; r < layout.world_size(); ++r) {
    auto b = dcp::layout::local_box(global, layout, r);
    if ((keep_empty || !dcp::layout::is_empty(b)) && std::find(out.begin(), out.end(), b) == out.end())
      out.push_back(std::move(b));
  }
  return sorted(std::move(out));
}
}  // namespace dcp_layout_test
