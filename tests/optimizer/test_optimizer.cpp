// dcp.optimizer without libtorch: planning (which box of each state tensor a rank holds, for
// FSDP alone and for TP inside FSDP), the errors, and loads on 4 ranks played by threads
// (collective::make_in_process_group) of a checkpoint dcpp saved from known values: every
// rank's shard must equal the slice of the full tensor that its box names, computed here from
// the values' formula, not by dcpp.
#define BOOST_TEST_MODULE dcp.optimizer
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "support.hpp"
import dcp.error;
import dcp.pickle;
import dcp.layout;
import dcp.metadata;
import dcp.planning;
import dcp.memory;
import dcp.record;
import dcp.storage;
import dcp.collective;
import dcp.checkpoint;
import dcp.optimizer;

namespace opt = dcp::optimizer;
namespace pl = dcp::planning;
namespace md = dcp::metadata;
namespace ck = dcp::checkpoint;
using dcp::layout::Box;
using Shape = md::Shape;

namespace {

// The model: parameters with row counts that split unevenly over 4 ranks, one with fewer rows
// than ranks (an empty shard) and one of one element (its state is whole everywhere).
struct Param {
  std::string name;
  Shape size;
};
const std::vector<Param> kParams = {{"fc1.weight", {10, 6}}, {"fc1.bias", {10}}, {"fc2.weight", {3, 10}},
                                    {"fc2.bias", {3}}, {"scale", {1}}};
const std::vector<std::string> kStates = {"exp_avg", "exp_avg_sq"};

// Element i (row-major) of state tensor `id`: distinct across tensors and elements.
float value(int id, std::int64_t i) { return static_cast<float>(id * 1000 + i) + 0.25f; }

std::int64_t numel(const Shape& s) {
  std::int64_t n = 1;
  for (auto d : s) n *= d;
  return n;
}

// The row-major values of `box` of tensor `id` of shape `size` (0-, 1- and 2-D).
std::vector<float> slice_values(int id, const Shape& size, const Box& box) {
  std::vector<float> out;
  if (size.empty()) {
    out.push_back(value(id, 0));
  } else if (size.size() == 1) {
    for (std::int64_t i = 0; i < box.sizes[0]; ++i) out.push_back(value(id, box.offsets[0] + i));
  } else {
    for (std::int64_t r = 0; r < box.sizes[0]; ++r)
      for (std::int64_t c = 0; c < box.sizes[1]; ++c)
        out.push_back(value(id, (box.offsets[0] + r) * size[1] + box.offsets[1] + c));
  }
  return out;
}

// A checkpoint saved by dcpp from 2 ranks (rows split): model parameters, Adam-like state
// (exp_avg, exp_avg_sq per parameter, `step` 0-dim) and param_groups objects.
struct Saved {
  std::vector<std::vector<float>> data;  // kept alive for the save
  std::vector<std::pair<std::string, int>> ids;  // "param.state" -> value id
  int id_of(const std::string& param, const std::string& state) const {
    for (const auto& [k, v] : ids)
      if (k == param + "." + state) return v;
    BOOST_FAIL("no id for " + param + "." + state);
    return -1;
  }
};

void add(pl::StateDict& sd, Saved& saved, std::vector<md::PathPart> path, const Shape& size, int id) {
  auto& d = saved.data.emplace_back();
  for (std::int64_t i = 0; i < numel(size); ++i) d.push_back(value(id, i));
  sd.add_tensor(std::move(path), pl::contiguous_slice(reinterpret_cast<std::byte*>(d.data()), dcp::DType::float32, size));
}

Saved save_checkpoint(const std::filesystem::path& dir, const std::string& key = "optim") {
  Saved saved;
  saved.data.reserve(64);
  pl::StateDict sd;
  int id = 1;
  for (const auto& p : kParams) {
    add(sd, saved, {std::string("model"), p.name}, p.size, id++);
    for (const auto& s : kStates) {
      saved.ids.emplace_back(p.name + "." + s, id);
      add(sd, saved, {key, std::string("state"), p.name, s}, p.size, id++);
    }
    saved.ids.emplace_back(p.name + ".step", id);
    add(sd, saved, {key, std::string("state"), p.name, std::string("step")}, {}, id++);
  }
  sd.add_object({key, std::string("param_groups"), std::int64_t{0}, std::string("lr")}, pl::ObjectValue::floating(0.01));
  sd.add_object({key, std::string("param_groups"), std::int64_t{0}, std::string("amsgrad")}, pl::ObjectValue::boolean(false));
  ck::save_ranks(ck::split_rows(sd, 2), dir, dcp::storage::WriteOptions{});
  return saved;
}

opt::ModelLayout fsdp_layout() {
  opt::ModelLayout m;
  for (const auto& p : kParams) m.params.emplace_back(p.name, opt::ParamLayout{p.size, std::nullopt});
  return m;
}

// 2 (dp) x 2 (tp), rank = 2 * dp + tp: weights TP-split along dim 1, vectors along dim 0
// (torch.chunk rule); the DP group of rank r is {r % 2, r % 2 + 2}.
opt::ModelLayout layout_2d(int rank) {
  opt::ModelLayout m;
  const int tp = rank % 2, dp = rank / 2;
  for (const auto& p : kParams) {
    const int dim = p.size.size() == 2 ? 1 : 0;
    m.params.emplace_back(p.name, opt::ParamLayout{p.size, dcp::layout::chunk_split(p.size, dim, 2)[tp]});
  }
  m.dp_group = opt::DataParallelGroup{dp, {tp, tp + 2}};
  return m;
}

// Runs `body(rank, group)` on `world` threads; returns each rank's exception (or null).
std::vector<std::exception_ptr> on_ranks(int world, const std::function<void(int, dcp::collective::ProcessGroup&)>& body) {
  auto groups = dcp::collective::make_in_process_group(world);
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(world));
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r)
    threads.emplace_back([&, r] {
      try {
        body(r, *groups[static_cast<std::size_t>(r)]);
      } catch (...) {
        errors[static_cast<std::size_t>(r)] = std::current_exception();
      }
    });
  for (auto& t : threads) t.join();
  return errors;
}

std::vector<float> floats(const dcp::memory::Buffer& b, std::uint64_t n) {
  std::vector<float> out(n);
  if (n) std::memcpy(out.data(), b.data(), n * sizeof(float));
  return out;
}

// Every tensor of `state` holds what its box names: the full tensor's slice at global_box().
void check_loaded(const opt::LoadedState& state, const Saved& saved, int rank) {
  BOOST_TEST_CONTEXT("rank " << rank) {
    BOOST_TEST(state.plan.tensors.size() == kParams.size() * 3);
    for (std::size_t i = 0; i < state.plan.tensors.size(); ++i) {
      const auto& t = state.plan.tensors[i];
      BOOST_TEST_CONTEXT(t.fqn) {
        const int id = saved.id_of(t.param, t.state);
        const auto want = slice_values(id, t.global_size, t.global_box());
        BOOST_TEST(floats(state.tensors[i], t.numel()) == want, boost::test_tools::per_element());
      }
    }
    BOOST_REQUIRE(state.plan.objects.size() == 2);
    BOOST_TEST(state.plan.objects[0].fqn == "optim.param_groups.0.lr");
    BOOST_TEST(dcp::record::object_to_json(state.objects[0], state.objects[0].root()) == "0.01");
    BOOST_TEST(dcp::record::object_to_json(state.objects[1], state.objects[1].root()) == "false");
  }
}

md::Metadata metadata_of(const std::filesystem::path& dir) { return *dcp::storage::FileSystemReader(dir).read_metadata(); }

}  // namespace

BOOST_AUTO_TEST_CASE(rank_devices) {
  BOOST_TEST(opt::rank_device(5, {}) == "cpu");
  BOOST_TEST(opt::rank_device(13, {"cuda", 8}) == "cuda:5");  // the local device, not cuda:13
  BOOST_TEST(opt::rank_device(3, {"cuda", 8}) == "cuda:3");
  BOOST_TEST(dcp::errc_name(dcp_test::thrown<dcp::Error>([] { (void)opt::rank_device(1, {"cuda", 0}); }).code()) ==
             "invalid_argument");
}

BOOST_AUTO_TEST_CASE(fsdp_plan_chunks_rows_over_the_world) {
  dcp_test::TempDir tmp;
  save_checkpoint(tmp.path() / "ck");
  const auto m = metadata_of(tmp.path() / "ck");
  for (int rank = 0; rank < 4; ++rank) {
    const auto plan = opt::plan_optimizer_state(m, fsdp_layout(), "optim", {rank, 4, {"cuda", 2}});
    const auto* w = plan.find("fc1.weight", "exp_avg");
    BOOST_REQUIRE(w);
    BOOST_TEST(w->fqn == "optim.state.fc1.weight.exp_avg");
    // 10 rows over 4: 3, 3, 3, 1.
    BOOST_TEST((w->shard == Box{{3 * rank, 0}, {rank < 3 ? 3 : 1, 6}}));
    BOOST_TEST((w->placements == std::vector<std::string>{"rank:0/cuda:0", "rank:1/cuda:1", "rank:2/cuda:0",
                                                          "rank:3/cuda:1"}));
    BOOST_TEST(w->device == (rank % 2 ? "cuda:1" : "cuda:0"));
    // 3 rows over 4: rank 3 owns nothing, and torch.chunk makes only 3 placements.
    const auto* b = plan.find("fc2.bias", "exp_avg_sq");
    BOOST_REQUIRE(b);
    BOOST_TEST(b->shard.sizes[0] == (rank < 3 ? 1 : 0));
    BOOST_TEST(b->placements.size() == 3u);
    // One element: whole everywhere.
    const auto* step = plan.find("fc1.weight", "step");
    BOOST_REQUIRE(step);
    BOOST_TEST(step->replicated);
    BOOST_TEST(step->shard.sizes.empty());
    BOOST_TEST(plan.find("scale", "exp_avg")->replicated);
    BOOST_TEST(plan.objects.size() == 2u);
  }
}

BOOST_AUTO_TEST_CASE(two_d_plan_splits_the_tp_slice_over_dp) {
  dcp_test::TempDir tmp;
  save_checkpoint(tmp.path() / "ck");
  const auto m = metadata_of(tmp.path() / "ck");
  for (int rank = 0; rank < 4; ++rank) {
    const int tp = rank % 2, dp = rank / 2;
    const auto plan = opt::plan_optimizer_state(m, layout_2d(rank), "optim", {rank, 4, {}});
    // fc1.weight 10x6: TP columns [3tp, 3tp+3), then 5 rows per DP rank.
    const auto* w = plan.find("fc1.weight", "exp_avg");
    BOOST_TEST((w->sharded_size == Shape{10, 3}));
    BOOST_TEST((w->tp_offsets == Shape{0, 3 * tp}));
    BOOST_TEST((w->shard == Box{{5 * dp, 0}, {5, 3}}));
    BOOST_TEST((w->global_box() == Box{{5 * dp, 3 * tp}, {5, 3}}));
    BOOST_TEST((w->placements == std::vector<std::string>{"rank:0/cpu", "rank:1/cpu"}));
    // fc2.bias 3: TP rows 2 | 1; the 1-row slice splits 1 | 0 over DP.
    const auto* b = plan.find("fc2.bias", "exp_avg");
    BOOST_TEST((b->sharded_size == Shape{tp == 0 ? 2 : 1}));
    BOOST_TEST(b->shard.sizes[0] == (tp == 0 ? 1 : (dp == 0 ? 1 : 0)));
  }
}

BOOST_AUTO_TEST_CASE(errors_name_the_key) {
  dcp_test::TempDir tmp;
  save_checkpoint(tmp.path() / "ck");
  const auto m = metadata_of(tmp.path() / "ck");
  auto wrong_key = dcp_test::thrown<dcp::Error>([&] { opt::plan_optimizer_state(m, fsdp_layout(), "optimizer", {}); });
  BOOST_TEST(dcp::errc_name(wrong_key.code()) == "not_found");
  BOOST_TEST(wrong_key.context().key == "optimizer");

  auto bad_shape = fsdp_layout();
  bad_shape.params[2].second.size = {3, 9};
  auto shape = dcp_test::thrown<dcp::Error>([&] { opt::plan_optimizer_state(m, bad_shape, "optim", {}); });
  BOOST_TEST(dcp::errc_name(shape.code()) == "failed_precondition");
  BOOST_TEST(shape.context().key == "optim.state.fc2.weight.exp_avg");
  BOOST_TEST(shape.message().find("(3, 9)") != std::string::npos);

  auto extra = fsdp_layout();
  extra.params.emplace_back("fc3.weight", opt::ParamLayout{{4, 4}, std::nullopt});
  BOOST_CHECK_NO_THROW(opt::plan_optimizer_state(m, extra, "optim", {}));  // torch's rule
  auto missing = dcp_test::thrown<dcp::Error>(
      [&] { opt::plan_optimizer_state(m, extra, "optim", {}, {.require_state_for_every_param = true}); });
  BOOST_TEST(dcp::errc_name(missing.code()) == "not_found");
  BOOST_TEST(missing.context().key == "optim.state.fc3.weight");

  auto outside = layout_2d(1);
  outside.params[0].second.tp_slice = Box{{0, 4}, {10, 3}};
  auto tp = dcp_test::thrown<dcp::Error>([&] { opt::plan_optimizer_state(m, outside, "optim", {1, 4, {}}); });
  BOOST_TEST(dcp::errc_name(tp.code()) == "failed_precondition");
  auto not_me = dcp_test::thrown<dcp::Error>([&] { opt::plan_optimizer_state(m, layout_2d(1), "optim", {0, 4, {}}); });
  BOOST_TEST(dcp::errc_name(not_me.code()) == "invalid_argument");
}

// Loads the checkpoint on 4 thread-played ranks, rank r describing its model as layout(r), and
// checks every rank's tensors against the slices their boxes name.
std::vector<std::optional<opt::LoadedState>> load_on_4_ranks(const std::function<opt::ModelLayout(int)>& layout) {
  dcp_test::TempDir tmp;
  const auto saved = save_checkpoint(tmp.path() / "ck");
  std::vector<std::optional<opt::LoadedState>> results(4);
  const auto errors = on_ranks(4, [&](int rank, dcp::collective::ProcessGroup& g) {
    dcp::storage::FileSystemReader reader(tmp.path() / "ck");
    results[static_cast<std::size_t>(rank)] = opt::load_sharded_optimizer_state_dict(layout(rank), "optim", reader, &g);
  });
  for (int r = 0; r < 4; ++r) {
    BOOST_REQUIRE_MESSAGE(!errors[static_cast<std::size_t>(r)], "rank " << r << " failed");
    check_loaded(*results[static_cast<std::size_t>(r)], saved, r);
  }
  return results;
}

BOOST_AUTO_TEST_CASE(fsdp_load_on_4_ranks_equals_the_slices) {
  const auto results = load_on_4_ranks([](int) { return fsdp_layout(); });
  // rank 3 owns no row of fc2.bias's state: a zero-size shard.
  BOOST_TEST(results[3]->plan.find("fc2.bias", "exp_avg")->numel() == 0u);
}

BOOST_AUTO_TEST_CASE(two_d_load_on_4_ranks_equals_the_slices) {
  const auto results = load_on_4_ranks(layout_2d);
  // fc2.bias (3): rank 3 (tp 1, dp 1) owns no row of its 1-row TP slice.
  BOOST_TEST(results[3]->plan.find("fc2.bias", "exp_avg")->numel() == 0u);
}

BOOST_AUTO_TEST_CASE(a_planning_failure_on_one_rank_fails_every_rank) {
  dcp_test::TempDir tmp;
  save_checkpoint(tmp.path() / "ck");
  const auto errors = on_ranks(4, [&](int rank, dcp::collective::ProcessGroup& g) {
    dcp::storage::FileSystemReader reader(tmp.path() / "ck");
    auto m = fsdp_layout();
    if (rank == 2) m.params[0].second.size = {10, 7};
    (void)opt::load_sharded_optimizer_state_dict(m, "optim", reader, &g);
  });
  for (int r = 0; r < 4; ++r) {
    BOOST_REQUIRE(errors[static_cast<std::size_t>(r)]);
    try {
      std::rethrow_exception(errors[static_cast<std::size_t>(r)]);
    } catch (const dcp::Error& e) {
      BOOST_TEST(dcp::errc_name(e.code()) == "failed_precondition");
      BOOST_TEST(e.context().rank.value_or(-1) == 2);
      BOOST_TEST(e.context().key == "optim.state.fc1.weight.exp_avg");
    }
  }
}

BOOST_AUTO_TEST_CASE(state_owners_pair_states_with_their_parameters) {
  dcp_test::TempDir tmp;
  save_checkpoint(tmp.path() / "ck");
  auto m = metadata_of(tmp.path() / "ck");
  for (bool flat : {false, true}) {
    BOOST_TEST_CONTEXT((flat ? "by flat key (1.13)" : "by planner_data path")) {
      if (flat) m.planner_data.reset();  // what a 1.13 checkpoint has
      const auto owners = opt::state_owners(m);
      BOOST_TEST(owners.size() == kParams.size() * 3);  // exp_avg, exp_avg_sq, step
      for (const auto& o : owners) {
        const auto& state = m.items[o.state].fqn;
        const auto& param = m.items[o.param].fqn;
        // "optim.state.<p>.<s>" belongs to "model.<p>".
        const auto p = state.substr(12, state.rfind('.') - 12);
        BOOST_TEST(param == "model." + p, state);
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(inspect_groups_optimizer_state_under_its_parameter) {
  dcp_test::TempDir tmp;
  save_checkpoint(tmp.path() / "ck");
  const auto r = dcp_test::run_dcpp("inspect " + dcp_test::quote(tmp.path() / "ck"), tmp.path());
  BOOST_REQUIRE_MESSAGE(r.status == 0, r.err);
  std::vector<std::string> keys;  // the first column of each row
  for (std::size_t at = r.out.find('\n') + 1; at < r.out.size();) {
    const auto end = r.out.find('\n', at);
    const auto line = r.out.substr(at, end - at);
    at = end + 1;
    if (line.empty()) break;
    auto key = line.substr(0, line.find(line.find("  tensor") != std::string::npos ? "  tensor" : "  bytes"));
    key.erase(key.find_last_not_of(' ') + 1);  // the column's padding
    keys.push_back(key);
  }
  // Each parameter row is followed by its three state rows, indented.
  for (const auto& p : kParams) {
    const auto it = std::find(keys.begin(), keys.end(), "model." + p.name);
    BOOST_REQUIRE_MESSAGE(it != keys.end(), "no row for model." << p.name << " in\n" << r.out);
    BOOST_REQUIRE(keys.end() - it > 3);
    for (int i = 1; i <= 3; ++i)
      BOOST_TEST(it[i].rfind("  optim.state." + p.name + ".", 0) == 0u, it[i] << " after model." << p.name);
  }
  BOOST_TEST(r.out.find(std::to_string(kParams.size() * 3) + " optimizer states under their parameters") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(flat_keys_without_planner_data_plan_alike) {
  dcp_test::TempDir tmp;
  save_checkpoint(tmp.path() / "ck");
  const auto with_paths = metadata_of(tmp.path() / "ck");
  auto flat = with_paths;
  flat.planner_data.reset();  // what a torch 1.13 checkpoint has
  for (int rank = 0; rank < 4; ++rank) {
    const auto a = opt::plan_optimizer_state(with_paths, fsdp_layout(), "optim", {rank, 4, {}});
    const auto b = opt::plan_optimizer_state(flat, fsdp_layout(), "optim", {rank, 4, {}});
    BOOST_REQUIRE(a.tensors.size() == b.tensors.size());
    for (std::size_t i = 0; i < a.tensors.size(); ++i) {
      BOOST_TEST(a.tensors[i].fqn == b.tensors[i].fqn);
      BOOST_TEST(a.tensors[i].param == b.tensors[i].param);
      BOOST_TEST(a.tensors[i].state == b.tensors[i].state);
      BOOST_TEST((a.tensors[i].shard == b.tensors[i].shard));
      BOOST_TEST((a.tensors[i].path == b.tensors[i].path));
    }
  }
  // Without paths, a state key must name a parameter of the model.
  auto fewer = fsdp_layout();
  fewer.params.pop_back();  // "scale"
  const auto e = dcp_test::thrown<dcp::Error>([&] { opt::plan_optimizer_state(flat, fewer, "optim", {}); });
  BOOST_TEST(dcp::errc_name(e.code()) == "not_found");
  BOOST_TEST(e.context().key.rfind("optim.state.scale.", 0) == 0u);
}
