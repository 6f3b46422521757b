// dcp.optimizer against PyTorch, on Gloo ranks run as processes (tests/dist's launcher, each
// rank tests/optimizer/optim_rank.cpp over dcp.dist): torch 2.13 checkpoints of Adam state
// written by tests/python/optim_oracle.py (FSDP2 on 4 ranks; a 2 dp x 2 tp mesh), where each
// rank's result must equal torch's own load_sharded_optimizer_state_dict on that rank (the 2x2
// mesh, where torch 2.13's loader fails, the result it means to build), and on 2 ranks the
// slices of the full state; a torch 1.13 checkpoint (no such function there) against slices of
// its full state; `dcpp reshard` (3 ranks, cols) keeping each state tensor in its parameter's
// boxes, the result loading to torch's result again; tensors on the device asked for (a GPU only where libtorch has CUDA); and the errors: a wrong optimizer key, a parameter shape that does not match
// on one rank, a parameter without state, each failing every rank with the code and key.
#define BOOST_TEST_MODULE dcp.optimizer_torch
#include <boost/test/unit_test.hpp>

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include "launcher.hpp"
#include "support.hpp"
import dcp.error;
import dcp.layout;
import dcp.metadata;
import dcp.memory;
import dcp.storage;
import dcp.alloc;
import dcp.optimizer;
import dcp.optimizer_torch;

namespace {

namespace fs = std::filesystem;

// optim_oracle.py's cases, written once for the binary.
const fs::path& oracle_root() {
  static dcp_test::TempDir dir;
  static const bool made = [] {
    const int status = dcp_test::run(dcp_test::quote(dcp_test::python2x()) + " " +
                                     dcp_test::quote(dcp_test::source_root() / "tests/python/optim_oracle.py") +
                                     " --out " + dcp_test::quote(dir.path()));
    BOOST_REQUIRE_MESSAGE(status == 0, "optim_oracle.py failed");
    return true;
  }();
  (void)made;
  return dir.path();
}

// torch 1.13's hand-flattened optimizer checkpoint (make_checkpoint.py --case optimizer).
const fs::path& torch113_case() {
  static dcp_test::TempDir dir;
  static const bool made = [] {
    dcp_test::make_checkpoint("optimizer", dir.path());
    return true;
  }();
  (void)made;
  return dir.path();
}

std::vector<dist_test::RankResult> run_ranks(int world, const fs::path& case_dir, std::vector<std::string> args) {
  static dcp_test::TempDir scratch;
  dist_test::Launch l;
  l.world = world;
  l.deadline_s = 90;
  l.scratch = scratch.path();
  l.argv = [&](int) {
    std::vector<std::string> argv{OPTIM_RANK, case_dir.string()};
    argv.insert(argv.end(), args.begin(), args.end());
    return argv;
  };
  return dist_test::launch(l);
}

void expect_ok(const std::vector<dist_test::RankResult>& results) {
  for (const auto& r : results) BOOST_TEST(r.status == 0, dist_test::describe(results));
}

// `dcpp ARGS` as the ranks of a launcher (dcpp execs dcpp-torch).
std::vector<dist_test::RankResult> run_dcpp_ranks(int world, std::vector<std::string> args) {
  static dcp_test::TempDir scratch;
  dist_test::Launch l;
  l.world = world;
  l.scratch = scratch.path();
  l.argv = [&](int) {
    std::vector<std::string> argv{dcp_test::dcpp_exe().string()};
    argv.insert(argv.end(), args.begin(), args.end());
    return argv;
  };
  return dist_test::launch(l);
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// Every rank exits 1 with `code` and `key` in its error line (the failed rank's own error).
void expect_failure(const std::vector<dist_test::RankResult>& results, const std::string& code, const std::string& key) {
  for (const auto& r : results) {
    BOOST_TEST(r.status == 1, dist_test::describe(results));
    BOOST_TEST(contains(r.err, "optim_rank: error: " + code + ": key '" + key + "'"), dist_test::describe(results));
  }
}

}  // namespace

BOOST_AUTO_TEST_CASE(torch213_fsdp_4_ranks_equal_torchs_own_loader, *boost::unit_test::precondition(dcp_test::needs_python2x)) {
  expect_ok(run_ranks(4, oracle_root() / "fsdp", {"oracle"}));
}

BOOST_AUTO_TEST_CASE(torch213_fsdp_2_ranks_equal_slices_of_the_full_state,
                     *boost::unit_test::precondition(dcp_test::needs_python2x)) {
  expect_ok(run_ranks(2, oracle_root() / "fsdp", {"full"}));
}

BOOST_AUTO_TEST_CASE(torch213_2d_4_ranks_equal_the_tp_then_dp_split, *boost::unit_test::precondition(dcp_test::needs_python2x)) {
  const auto dir = oracle_root() / "2d";
  if (fs::exists(dir / "oracle/torch_error.txt"))
    BOOST_TEST_MESSAGE("torch 2.13's own loader failed on the 2x2 mesh; comparing with the result it means to build");
  expect_ok(run_ranks(4, dir, {"oracle", "--2d"}));
  expect_ok(run_ranks(4, dir, {"full", "--2d"}));
}

BOOST_AUTO_TEST_CASE(torch113_4_ranks_equal_slices_of_the_full_state) {
  expect_ok(run_ranks(4, torch113_case(), {"full"}));
}

BOOST_AUTO_TEST_CASE(errors_fail_every_rank_with_code_and_key) {
  expect_failure(run_ranks(2, torch113_case(), {"full", "--key", "optimizer"}), "not_found", "optimizer");
  expect_failure(run_ranks(2, torch113_case(), {"full", "--bad-shape-on", "1"}), "failed_precondition",
                 "optim.state.fc1.weight.exp_avg");
  expect_failure(run_ranks(2, torch113_case(), {"full", "--extra-param"}), "not_found", "optim.state.extra.weight");
}

BOOST_AUTO_TEST_CASE(tensors_go_to_the_device_asked_for) {
  // One process, the 1.13 checkpoint: fc1.weight is 8x4, so its state has 8 rows here.
  dcp::storage::FileSystemReader reader(torch113_case() / "ckpt");
  dcp::optimizer::ModelLayout model;
  model.params = {{"fc1.weight", {{8, 4}, std::nullopt}}, {"fc1.bias", {{8}, std::nullopt}},
                  {"fc2.weight", {{3, 8}, std::nullopt}}, {"fc2.bias", {{3}, std::nullopt}}};
  const auto cpu = dcp::optimizer_torch::load_sharded_optimizer_state_dict(model, "optim", reader, nullptr);
  const auto* state = cpu.plan.find("fc1.weight", "exp_avg");
  BOOST_REQUIRE(state);
  const auto& t = cpu.tensors[static_cast<std::size_t>(state - cpu.plan.tensors.data())];
  BOOST_TEST(t.is_cpu());
  BOOST_TEST(t.numel() == 32);
  if (!dcp::alloc::cuda_available()) {
    // A CPU libtorch cannot place a tensor on a GPU: refused before any read.
    const auto e = dcp_test::thrown<dcp::Error>([&] {
      (void)dcp::optimizer_torch::load_sharded_optimizer_state_dict(model, "optim", reader, nullptr, {"cuda", 1});
    });
    BOOST_TEST(dcp::errc_name(e.code()) == "unimplemented");
    return;
  }
  const auto gpu = dcp::optimizer_torch::load_sharded_optimizer_state_dict(model, "optim", reader, nullptr, {"cuda", 1});
  for (std::size_t i = 0; i < gpu.tensors.size(); ++i) {
    BOOST_TEST(gpu.tensors[i].is_cuda());
    BOOST_TEST(dcp::alloc::to_host(gpu.tensors[i]).equal(cpu.tensors[i]));
  }
}

BOOST_AUTO_TEST_CASE(reshard_keeps_state_with_its_parameter, *boost::unit_test::precondition(dcp_test::needs_python2x)) {
  dcp_test::TempDir tmp;
  const auto out = tmp.path() / "case";
  fs::create_directories(out);
  expect_ok(run_dcpp_ranks(3, {"reshard", "--quiet", "--layout", "cols", (oracle_root() / "fsdp/ckpt").string(),
                               (out / "ckpt").string()}));
  // Every state tensor of its parameter's shape was saved in exactly its parameter's chunks.
  const auto md = *dcp::storage::FileSystemReader(out / "ckpt").read_metadata();
  const auto owners = dcp::optimizer::state_owners(md);
  BOOST_TEST(owners.size() == 18u);  // 6 parameters: exp_avg, exp_avg_sq, step
  for (const auto& o : owners) {
    const auto& state = md.items[o.state].tensor();
    const auto& param = md.items[o.param].tensor();
    if (state.size != param.size) continue;  // step
    std::vector<dcp::layout::Box> a, b;
    for (const auto& c : state.chunks) a.push_back(c.box());
    for (const auto& c : param.chunks) b.push_back(c.box());
    BOOST_TEST((a == b), md.items[o.state].fqn);
  }
  // And the resharded checkpoint loads to what torch's loader gave from the original.
  fs::create_directory_symlink(oracle_root() / "fsdp/oracle", out / "oracle");
  expect_ok(run_ranks(4, out, {"oracle"}));
}
