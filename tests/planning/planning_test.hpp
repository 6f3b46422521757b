// Shared by the dcp.planning test units: hand-built metadata and destinations, and the plan
// helpers the unit and scale tests use.
#pragma once
#include <boost/test/unit_test.hpp>
#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <ostream>
#include <span>
#include <set>
#include <string>
#include <variant>
#include <vector>
import dcp.error;
import dcp.metadata;
import dcp.layout;
import dcp.planning;

using dcp::DType;
using dcp::Errc;
using dcp::layout::Box;
using dcp::metadata::Metadata;
using dcp::metadata::MetadataIndex;
using dcp::metadata::Shape;
namespace layout = dcp::layout;
namespace md = dcp::metadata;
namespace planning = dcp::planning;
using planning::Destination;
using planning::DefaultLoadPlanner;
using planning::LoadItemType;
using planning::LoadPlan;
using planning::ReadItem;
using planning::TensorSlice;

namespace dcp::planning {
inline std::ostream& operator<<(std::ostream& os, const ReadItem& i) {
  return os << (i.type == LoadItemType::tensor ? "tensor " : "bytes ") << i.dest_index.fqn << " dest "
            << layout::format_shape(i.dest_offsets) << " storage " << layout::format_shape(i.storage_offsets) << " len "
            << layout::format_shape(i.lengths);
}
}  // namespace dcp::planning

namespace dcp_planning_test {

inline md::StorageInfo some_file() {
  md::StorageInfo info;
  info.relative_path = "__0_0.distcp";
  return info;
}

// A Metadata built by hand, as decode_metadata would produce it.
struct Checkpoint {
  Metadata md;
  Checkpoint& tensor(const std::string& fqn, const Shape& size, const std::vector<Box>& chunks,
                     DType dtype = DType::int64) {
    md::TensorStorageMetadata t;
    t.properties.dtype = dtype;
    t.size = size;
    std::set<Shape> seen;
    for (std::size_t i = 0; i < chunks.size(); ++i) {
      t.chunks.push_back(md::ChunkStorageMetadata{chunks[i].offsets, chunks[i].sizes});
      // storage_data is a dict keyed by (fqn, offsets): empty chunks at one offset share an entry.
      if (seen.insert(chunks[i].offsets).second)
        md.storage_data.push_back({MetadataIndex{fqn, chunks[i].offsets, static_cast<std::int64_t>(i)}, some_file()});
    }
    md.items.push_back(md::ItemMetadata{fqn, std::move(t)});
    md.reindex();
    return *this;
  }
  Checkpoint& object(const std::string& fqn) {
    md.items.push_back(md::ItemMetadata{fqn, md::BytesStorageMetadata{}});
    md.storage_data.push_back({MetadataIndex{fqn, {}, {}}, some_file()});
    md.reindex();
    return *this;
  }
};

// Local chunks without memory: enough for planning.
inline planning::TensorDestination chunks_of(const Shape& global, const std::vector<Box>& boxes, DType dtype = DType::int64) {
  planning::TensorDestination t{global, dtype, {}};
  for (const Box& b : boxes)
    t.chunks.push_back(planning::LocalChunk{b.offsets, b.sizes, planning::contiguous_slice(nullptr, dtype, b.sizes)});
  return t;
}

inline LoadPlan plan_for(const Metadata& metadata, Destination& dest, planning::LoadPlannerOptions options = {}) {
  DefaultLoadPlanner planner(options);
  planner.set_up_planner(dest, md::validate(metadata), true);
  return planner.create_local_plan();
}

inline void for_each_index(const Shape& lengths, const std::function<void(const Shape&)>& fn) {
  for (std::int64_t l : lengths)
    if (l == 0) return;
  Shape idx(lengths.size(), 0);
  while (true) {
    fn(idx);
    std::size_t d = lengths.size();
    while (d > 0 && ++idx[d - 1] == lengths[d - 1]) idx[--d] = 0;
    if (d == 0) return;
  }
}

inline std::int64_t linear(const Shape& global, const Shape& coord) {
  std::int64_t v = 0;
  for (std::size_t d = 0; d < global.size(); ++d) v = v * global[d] + coord[d];
  return v;
}

// Loads `fqn` (saved as `saved` chunks whose element values are their global linear index)
// into `dest` boxes held by one rank, executing the plan like the storage layer would, and
// checks that every destination element got its own value. Returns the plan.
inline LoadPlan load_and_check(const Shape& global, const std::vector<Box>& saved, const std::vector<Box>& dest) {
  Checkpoint ck;
  ck.tensor("w", global, saved);
  std::vector<std::vector<std::int64_t>> buffers;
  for (const Box& b : dest) buffers.emplace_back(layout::volume(b), -1);
  planning::TensorDestination t{global, DType::int64, {}};
  for (std::size_t i = 0; i < dest.size(); ++i)
    t.chunks.push_back(planning::LocalChunk{
        dest[i].offsets, dest[i].sizes,
        planning::contiguous_slice(reinterpret_cast<std::byte*>(buffers[i].data()), DType::int64, dest[i].sizes)});
  Destination destination;
  destination.add_tensor("w", std::move(t));
  DefaultLoadPlanner planner;
  planner.set_up_planner(destination, md::validate(ck.md), false);
  LoadPlan plan = planner.finish_plan(planner.create_local_plan());
  for (const ReadItem& item : plan.items) {
    const TensorSlice slice = planner.resolve_tensor(item);
    const md::ChunkStorageMetadata& chunk = ck.md.items[0].tensor().chunks.at(static_cast<std::size_t>(*item.storage_index.index));
    BOOST_REQUIRE(chunk.offsets == *item.storage_index.offset);
    const Box& local = dest.at(static_cast<std::size_t>(*item.dest_index.index));
    for_each_index(item.lengths, [&](const Shape& idx) {
      Shape from_saved(idx.size()), from_dest(idx.size());
      std::int64_t element = 0;
      for (std::size_t d = 0; d < idx.size(); ++d) {
        BOOST_REQUIRE(item.storage_offsets[d] + idx[d] < chunk.sizes[d]);
        from_saved[d] = chunk.offsets[d] + item.storage_offsets[d] + idx[d];
        from_dest[d] = local.offsets[d] + item.dest_offsets[d] + idx[d];
        element += idx[d] * slice.strides[d];
      }
      BOOST_REQUIRE(from_saved == from_dest);
      reinterpret_cast<std::int64_t*>(slice.data)[element] = linear(global, from_saved);
    });
    planner.commit_tensor(item, slice);
  }
  for (std::size_t i = 0; i < dest.size(); ++i) {
    std::size_t k = 0;
    for_each_index(dest[i].sizes, [&](const Shape& idx) {
      Shape coord(idx.size());
      for (std::size_t d = 0; d < idx.size(); ++d) coord[d] = dest[i].offsets[d] + idx[d];
      BOOST_REQUIRE_EQUAL(buffers[i][k++], linear(global, coord));
    });
  }
  return plan;
}

// Every rank of a `to`-way dim-0 split loads a `from`-way dim-0 save.
inline void reshard_rows(const Shape& global, int from, int to) {
  BOOST_TEST_CONTEXT("rows " << layout::format_shape(global) << " " << from << " -> " << to) {
    const auto saved = layout::chunk_split(global, 0, from);
    for (const Box& mine : layout::chunk_split(global, 0, to)) load_and_check(global, saved, {mine});
  }
}

inline void expect_error(const std::function<void()>& fn, Errc code, const std::string& key, const std::string& text = "") {
  try {
    fn();
  } catch (const dcp::Error& e) {
    BOOST_TEST(dcp::errc_name(e.code()) == dcp::errc_name(code));
    BOOST_TEST(e.context().key == key);
    BOOST_TEST(std::string(e.what()).find(text) != std::string::npos, e.what() << " lacks '" << text << "'");
    return;
  }
  BOOST_FAIL("expected a dcp::Error");
}

inline std::vector<std::byte> bytes_of(const std::string& s) {
  std::vector<std::byte> out;
  for (char c : s) out.push_back(static_cast<std::byte>(c));
  return out;
}

}  // namespace dcp_planning_test

using namespace dcp_planning_test;
