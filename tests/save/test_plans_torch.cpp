// The coordinator's save planning against torch 2.13's own (tests/python/plan_oracle.py):
// de-duplication and the global plan on random plan sets must keep the same items on the same
// ranks, with the same index hints and metadata, or refuse exactly what torch refuses.
#include <boost/json.hpp>
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "../support/support.hpp"
#include "save_support.hpp"

using namespace save_test;

BOOST_AUTO_TEST_SUITE(global_plan_torch)

// torch 2.13's own coordinator (DefaultSavePlanner.create_global_plan, via
// tests/python/plan_oracle.py) as the oracle: random plan sets of objects, replicated plain
// tensors and sharded grids whose blocks one or two ranks hold (empty trailing blocks
// included), in a shared or a per-rank key order, some with a block missing or one extra
// overlapping shard; and a third of them DTensor-style meshes where every rank plans every key. dcpp must keep the same items on the same ranks with the same index hints
// and build the same metadata, or refuse exactly the plan sets torch refuses, both through
// the planner (one reading of the items) and step by step.
namespace {
struct PlanCase {
  bool lowest = false;
  std::vector<pl::SavePlan> plans;
};

// A DTensor-style save: ranks on an A x B mesh, every rank an item of every key in the same
// order (the coordinator's regular case): replicated objects and tensors, Shard(0) x Shard(1)
// and Shard(0) x Replicate blocks.
PlanCase mesh_plan_case(std::uint64_t& seed) {
  auto below = [&](std::uint64_t n) { return static_cast<std::int64_t>(splitmix(seed) % n); };
  PlanCase c;
  c.lowest = below(2) == 0;
  const int a = 1 + static_cast<int>(below(6)), b = 2 + static_cast<int>(below(11));  // up to 72 ranks: ties over large holder sets
  c.plans.resize(static_cast<std::size_t>(a * b));
  const DType dtypes[] = {DType::float32, DType::float16, DType::int64};
  for (int k = 0, keys = 1 + static_cast<int>(below(5)); k < keys; ++k) {
    const std::string fqn = "model." + std::to_string(k);
    const auto kind = below(4);
    const DType dtype = dtypes[below(3)];
    const md::Shape size{1 + below(7), 1 + below(7)};
    const auto rows = dcp::layout::chunk_split(size, 0, a);
    const auto cols = dcp::layout::chunk_split(size, 1, b);
    for (int r = 0; r < a * b; ++r) {
      auto& items = c.plans[static_cast<std::size_t>(r)].items;
      const auto& row = rows[static_cast<std::size_t>(r / b)];
      const auto& col = cols[static_cast<std::size_t>(r % b)];
      if (kind == 0) items.push_back(object_item(fqn));
      else if (kind == 1) items.push_back(tensor_item(fqn, size, dtype));
      else if (kind == 2) items.push_back(shard_item(fqn, {row.offsets[0], col.offsets[1]}, {row.sizes[0], col.sizes[1]}, size));
      else items.push_back(shard_item(fqn, row.offsets, row.sizes, size));
      if (items.back().tensor_data) items.back().tensor_data->properties.dtype = dtype;
    }
  }
  return c;
}

PlanCase random_plan_case(std::uint64_t& seed) {
  auto below = [&](std::uint64_t n) { return static_cast<std::int64_t>(splitmix(seed) % n); };
  if (below(3) == 0) return mesh_plan_case(seed);
  PlanCase c;
  c.lowest = below(2) == 0;
  const int ranks = 2 + static_cast<int>(below(5));
  c.plans.resize(static_cast<std::size_t>(ranks));
  const bool shared_order = below(2) == 0;
  const bool damaged = below(6) == 0;
  std::vector<std::vector<pl::WriteItem>> held(static_cast<std::size_t>(ranks));
  const int keys = 1 + static_cast<int>(below(5));
  const DType dtypes[] = {DType::float32, DType::float16, DType::int64, DType::bfloat16, DType::uint8};
  auto holders = [&](int at_least) {  // a random non-empty set of ranks
    std::vector<int> out;
    while (static_cast<int>(out.size()) < at_least || out.empty())
      for (int r = 0; r < ranks; ++r)
        if (below(3) == 0 && std::find(out.begin(), out.end(), r) == out.end()) out.push_back(r);
    return out;
  };
  for (int k = 0; k < keys; ++k) {
    const std::string fqn = "layers." + std::to_string(k) + ".w";
    const auto kind = below(4);
    md::TensorProperties props;
    props.dtype = dtypes[below(5)];
    if (kind == 0) {  // an object
      for (int r : holders(1)) held[static_cast<std::size_t>(r)].push_back(object_item(fqn));
      continue;
    }
    if (kind == 1) {  // a plain tensor, replicated
      md::Shape size;
      for (auto d = below(3); d > 0; --d) size.push_back(1 + below(5));
      for (int r : holders(1)) held[static_cast<std::size_t>(r)].push_back(tensor_item(fqn, size, props.dtype));
      continue;
    }
    // Shards: a rows x cols grid of torch.chunk blocks, each held by one or two ranks.
    const md::Shape size{1 + below(9), 1 + below(6)};
    const auto rows = dcp::layout::chunk_split(size, 0, 1 + static_cast<int>(below(4)));
    const auto cols = dcp::layout::chunk_split(size, 1, 1 + static_cast<int>(below(3)));
    std::vector<dcp::layout::Box> blocks;
    for (const auto& row : rows)
      for (const auto& col : cols)
        blocks.push_back({{row.offsets[0], col.offsets[1]}, {row.sizes[0], col.sizes[1]}});
    const auto missing = damaged && below(2) == 0 ? below(static_cast<std::uint64_t>(blocks.size())) : -1;
    for (std::size_t b = 0; b < blocks.size(); ++b) {
      if (static_cast<std::int64_t>(b) == missing && !dcp::layout::is_empty(blocks[b])) continue;
      const int first = static_cast<int>(below(static_cast<std::uint64_t>(ranks)));
      std::vector<int> owners{first};
      if (below(3) == 0) owners.push_back((first + 1 + static_cast<int>(below(static_cast<std::uint64_t>(ranks - 1)))) % ranks);
      for (int r : owners)
        held[static_cast<std::size_t>(r)].push_back(
            shard_item(fqn, blocks[b].offsets, blocks[b].sizes, size));
    }
    if (damaged && missing < 0 && below(2) == 0)  // a column strip over the first column
      held[static_cast<std::size_t>(below(static_cast<std::uint64_t>(ranks)))].push_back(
          shard_item(fqn, {0, 0}, {size[0], 1}, size));
    for (auto& items : held)
      for (auto& item : items)
        if (item.index.fqn == fqn && item.tensor_data) item.tensor_data->properties = props;
  }
  for (std::size_t r = 0; r < held.size(); ++r) {
    auto& items = held[r];
    if (!shared_order)  // a per-rank order of keys (a key's own items keep theirs)
      std::stable_sort(items.begin(), items.end(), [&, salt = splitmix(seed)](const auto& a, const auto& b) {
        auto h = [&](const std::string& s) { return std::hash<std::string>{}(s) ^ salt; };
        return h(a.index.fqn) < h(b.index.fqn);
      });
    c.plans[r].items = std::move(items);
  }
  return c;
}

boost::json::value shape_json(const md::Shape& s) {
  boost::json::array a;
  for (auto d : s) a.push_back(d);
  return a;
}

boost::json::object item_json(const pl::WriteItem& item) {
  boost::json::object o;
  o["fqn"] = item.index.fqn;
  o["type"] = item.type == pl::WriteItemType::byte_io ? "byte_io" : item.type == pl::WriteItemType::shard ? "shard" : "tensor";
  if (item.tensor_data) {
    o["offsets"] = shape_json(item.tensor_data->chunk.offsets);
    o["sizes"] = shape_json(item.tensor_data->chunk.sizes);
    o["size"] = shape_json(item.tensor_data->size);
    o["dtype"] = std::string(dcp::dtype_name(item.tensor_data->properties.dtype));
  }
  return o;
}

// What plan_oracle.py prints for a result.
boost::json::value result_json(const std::vector<pl::SavePlan>& plans, const md::Metadata& m) {
  boost::json::array out_plans;
  for (const auto& plan : plans) {
    boost::json::array items;
    for (const auto& item : plan.items) {
      boost::json::array i{boost::json::value(item.index.fqn)};
      i.push_back(item.index.offset ? shape_json(*item.index.offset) : boost::json::value(nullptr));
      i.push_back(item.index.index ? boost::json::value(*item.index.index) : boost::json::value(nullptr));
      items.push_back(std::move(i));
    }
    out_plans.push_back(std::move(items));
  }
  boost::json::array out_md;
  for (const auto& entry : m.items) {
    boost::json::array e{boost::json::value(entry.fqn)};
    if (!entry.is_tensor()) {
      e.push_back("bytes");
    } else {
      const auto& t = entry.tensor();
      e.push_back(boost::json::value(std::string(dcp::dtype_name(t.properties.dtype))));
      e.push_back(shape_json(t.size));
      boost::json::array chunks;
      for (const auto& ch : t.chunks) chunks.push_back(boost::json::array{shape_json(ch.offsets), shape_json(ch.sizes)});
      e.push_back(std::move(chunks));
    }
    out_md.push_back(std::move(e));
  }
  return boost::json::object{{"plans", std::move(out_plans)}, {"metadata", std::move(out_md)}};
}
}  // namespace

BOOST_AUTO_TEST_CASE(same_result_as_torch_213, *boost::unit_test::precondition(dcp_test::needs_python2x)) {
  std::uint64_t seed = 0x5eed;
  std::vector<PlanCase> cases;
  boost::json::array in;
  for (int i = 0; i < 400; ++i) {
    cases.push_back(random_plan_case(seed));
    boost::json::array plans;
    for (const auto& plan : cases.back().plans) {
      boost::json::array items;
      for (const auto& item : plan.items) items.push_back(item_json(item));
      plans.push_back(std::move(items));
    }
    in.push_back(boost::json::object{{"lowest", cases.back().lowest}, {"plans", std::move(plans)}});
  }
  dcp_test::TempDir tmp;
  {
    std::ofstream f(tmp.path() / "in.json");
    f << boost::json::serialize(boost::json::object{{"cases", std::move(in)}});
  }
  int status = 0;
  const auto log = dcp_test::run_capture(dcp_test::python2x() + " " +
                                             dcp_test::quote(dcp_test::source_root() / "tests/python/plan_oracle.py") + " " +
                                             dcp_test::quote(tmp.path() / "in.json") + " " +
                                             dcp_test::quote(tmp.path() / "out.json") + " 2>&1",
                                         &status);
  BOOST_TEST_REQUIRE(status == 0, log);
  const auto expected = dcp_test::read_json(tmp.path() / "out.json").at("cases").as_array();
  BOOST_TEST_REQUIRE(expected.size() == cases.size());
  int refused = 0, deduplicated = 0;
  for (std::size_t i = 0; i < cases.size(); ++i) {
    BOOST_TEST_CONTEXT("case " << i) {
      const bool torch_refused = expected[i].as_object().contains("error");
      refused += torch_refused;
      pl::DefaultSavePlanner planner(pl::SavePlannerOptions{cases[i].lowest});
      std::size_t items_in = 0, items_out = 0;
      for (const auto& p : cases[i].plans) items_in += p.items.size();
      try {
        const auto [global, m] = planner.create_global_plan(cases[i].plans);
        for (const auto& p : global) items_out += p.items.size();
        deduplicated += items_out < items_in;
        BOOST_TEST(!torch_refused, expected[i]);
        if (!torch_refused) BOOST_TEST(result_json(global, m) == expected[i]);
        const auto [step_global, step_m] =
            pl::create_global_save_plan(pl::dedup_save_plans(cases[i].plans, cases[i].lowest));
        BOOST_TEST(result_json(step_global, step_m) == result_json(global, m));
      } catch (const dcp::Error& e) {
        BOOST_TEST(torch_refused, e.what());
        BOOST_TEST((e.code() == dcp::Errc::invalid_argument));
      }
    }
  }
  BOOST_TEST_MESSAGE("plan sets: " << cases.size() << ", refused by torch: " << refused
                                   << ", with items de-duplicated: " << deduplicated);
  BOOST_TEST(refused > 20);  // both branches are exercised
  BOOST_TEST(deduplicated > 100);
}

BOOST_AUTO_TEST_SUITE_END()
