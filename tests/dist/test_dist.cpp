// dcp.dist: the c10d process group between real processes, and checkpoint::load over it.
// Each test launches 2-4 ranks (launcher.hpp) of tests/dist/dist_rank.cpp.
#define BOOST_TEST_MODULE dcp.dist
#include <boost/test/unit_test.hpp>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>
#include <csignal>

#include "launcher.hpp"
#include "support.hpp"
import dcp.error;
import dcp.alloc;
import dcp.dist;

namespace {

using dcp_test::TempDir;
namespace fs = std::filesystem;

std::vector<dist_test::RankResult> run_ranks(int world, const fs::path& scratch,
                                             std::function<std::vector<std::string>(int)> argv) {
  dist_test::Launch l;
  l.world = world;
  l.argv = std::move(argv);
  l.scratch = scratch;
  return dist_test::launch(l);
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// dist_rank beside this executable, so that a build folder still runs when moved (tools/device
// carries one to a GPU machine).
std::string dist_rank_exe() { return (fs::read_symlink("/proc/self/exe").parent_path() / "dist_rank").string(); }

// The torch 2.13 DTensor checkpoints saved by 4 ranks.
const char* const kDtensorCases[] = {"x2_fsdp_4ranks", "x2_2d_4ranks"};

}  // namespace

BOOST_AUTO_TEST_SUITE(environment)

dcp::dist::Lookup vars(std::vector<std::pair<std::string, std::string>> given) {
  return [given](std::string_view name) -> std::optional<std::string> {
    for (const auto& [k, v] : given)
      if (k == name) return v;
    return std::nullopt;
  };
}

BOOST_AUTO_TEST_CASE(read_environment_parses_and_refuses) {
  const auto env = dcp::dist::read_environment(vars({{"RANK", "2"},
                                                     {"WORLD_SIZE", "3"},
                                                     {"MASTER_ADDR", "10.0.0.1"},
                                                     {"MASTER_PORT", "29500"},
                                                     {"TORCHELASTIC_USE_AGENT_STORE", "True"},
                                                     {"TORCHELASTIC_RESTART_COUNT", "1"}}));
  BOOST_TEST(env.rank == 2);
  BOOST_TEST(env.world_size == 3);
  BOOST_TEST(env.local_rank == 2);  // RANK when LOCAL_RANK is unset
  BOOST_TEST(env.master_addr == "10.0.0.1");
  BOOST_TEST(env.master_port == 29500);
  BOOST_TEST(env.agent_store);
  BOOST_TEST(env.restart_count == 1);

  struct Bad {
    std::vector<std::pair<std::string, std::string>> vars;
    std::string names;
  };
  const std::vector<std::pair<std::string, std::string>> ok = {
      {"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "127.0.0.1"}, {"MASTER_PORT", "1234"}};
  auto without = [&](const std::string& name) {
    auto v = ok;
    std::erase_if(v, [&](const auto& kv) { return kv.first == name; });
    return v;
  };
  auto with = [&](const std::string& name, const std::string& value) {
    auto v = without(name);
    v.emplace_back(name, value);
    return v;
  };
  const Bad bad[] = {{without("RANK"), "RANK is not set"},
                     {without("WORLD_SIZE"), "WORLD_SIZE is not set"},
                     {without("MASTER_ADDR"), "MASTER_ADDR is not set"},
                     {without("MASTER_PORT"), "MASTER_PORT is not set"},
                     {with("RANK", "2"), "RANK='2'"},
                     {with("RANK", "-1"), "RANK='-1'"},
                     {with("WORLD_SIZE", "two"), "WORLD_SIZE='two'"},
                     {with("WORLD_SIZE", "0"), "WORLD_SIZE='0'"},
                     {with("MASTER_PORT", "65536"), "MASTER_PORT='65536'"},
                     {with("MASTER_PORT", "80x"), "MASTER_PORT='80x'"},
                     {with("LOCAL_RANK", ""), "LOCAL_RANK=''"}};
  for (const auto& b : bad) {
    const auto e = dcp_test::thrown<dcp::Error>([&] { (void)dcp::dist::read_environment(vars(b.vars)); });
    BOOST_TEST((e.code() == dcp::Errc::invalid_argument), e.what());
    BOOST_TEST(contains(e.what(), b.names), e.what());
  }
}

BOOST_AUTO_TEST_CASE(nccl_is_unimplemented_without_it) {
  if (dcp::dist::has_nccl()) return;  // an NCCL build: nccl_collectives_on_one_gpu, where a GPU is
  dcp::dist::Environment env;
  env.master_addr = "127.0.0.1";
  env.master_port = static_cast<std::uint16_t>(dist_test::free_port());
  const auto e = dcp_test::thrown<dcp::Error>([&] {
    (void)dcp::dist::connect(env, {.timeout = std::chrono::seconds(5), .backend = dcp::dist::Backend::nccl});
  });
  BOOST_TEST((e.code() == dcp::Errc::unimplemented), e.what());
  BOOST_TEST(contains(e.what(), "nccl"), e.what());
}

BOOST_AUTO_TEST_CASE(a_peer_that_never_joins_times_out) {
  // Rank 0 of 2 alone: the group cannot form; the error says so within the timeout.
  dcp::dist::Environment env;
  env.world_size = 2;
  env.master_addr = "127.0.0.1";
  env.master_port = static_cast<std::uint16_t>(dist_test::free_port());
  const auto start = std::chrono::steady_clock::now();
  const auto e = dcp_test::thrown<dcp::Error>([&] { (void)dcp::dist::connect(env, {.timeout = std::chrono::seconds(2)}); });
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  BOOST_TEST((e.code() == dcp::Errc::cancelled || e.code() == dcp::Errc::io), e.what());
  BOOST_TEST(contains(e.what(), "rank 0: cannot form the gloo process group of 2 ranks"), e.what());
  BOOST_TEST(seconds < 30);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_CASE(collectives_on_3_ranks) {
  TempDir tmp;
  const auto results = run_ranks(3, tmp.path(), [](int) { return std::vector<std::string>{dist_rank_exe(), "collectives"}; });
  for (std::size_t r = 0; r < results.size(); ++r) {
    BOOST_TEST(results[r].status == 0, dist_test::describe(results));
    BOOST_TEST(contains(results[r].out, "ok collectives: rank " + std::to_string(r) + " of 3"), results[r].out);
  }
}

// Each of 3 Gloo ranks starts an async save and runs its own steps on its group while the save
// is in flight (the background save has a group of its own); then the ranks load the tensor
// back and find the values of the call.
BOOST_AUTO_TEST_CASE(async_save_beside_the_callers_collectives_on_3_ranks) {
  TempDir tmp;
  const auto out = tmp.path() / "ckpt";
  const auto results =
      run_ranks(3, tmp.path(), [&](int) { return std::vector<std::string>{dist_rank_exe(), "async_save", out.string()}; });
  for (std::size_t r = 0; r < results.size(); ++r) {
    BOOST_TEST(results[r].status == 0, dist_test::describe(results));
    BOOST_TEST(contains(results[r].out, "ok async_save: rank " + std::to_string(r) + " of 3"), results[r].out);
  }
}

// NCCL needs a GPU per rank and refuses two ranks on one; the GPU machines dcpp is checked on
// have one (tools/device check), so NCCL is checked at world size 1 and many ranks over Gloo.
boost::test_tools::assertion_result needs_nccl_and_a_gpu(boost::unit_test::test_unit_id) {
  const bool nccl = dcp::dist::has_nccl();
  boost::test_tools::assertion_result result(nccl && dcp::alloc::cuda_available());
  if (!result) {
    const std::string why = nccl ? "no CUDA device is visible" : "this build has no NCCL (-Dnccl=enabled, a CUDA libtorch)";
    result.message() << "skipped: " << why;
    std::cerr << "test_dist: SKIPPING the NCCL test: " << why << std::endl;
  }
  return result;
}

BOOST_AUTO_TEST_CASE(nccl_collectives_on_one_gpu, *boost::unit_test::precondition(needs_nccl_and_a_gpu)) {
  TempDir tmp;
  const auto results = run_ranks(1, tmp.path(), [](int) {
    return std::vector<std::string>{dist_rank_exe(), "collectives", "--backend", "nccl"};
  });
  BOOST_TEST(results[0].status == 0, dist_test::describe(results));
  BOOST_TEST(contains(results[0].out, "ok collectives: rank 0 of 1"), results[0].out);
}

// torchrun's default: its agent serves the store and every rank is a client, under the
// agent's "/worker/attempt_<restart>" prefix. Played by a TCPStore that speaks the protocol of
// the libtorch dcpp links (it changed in 2.x; against another, DCPP_STORE_PORT, see dcp.dist):
// torch 1.13's, or the torch 2.13 oracle's when dcpp links a libtorch 2.x.
bool links_torch1() { return std::string_view(DCP_TORCH_VERSION).starts_with("1."); }

boost::test_tools::assertion_result needs_agent_python(boost::unit_test::test_unit_id id) {
  return links_torch1() ? boost::test_tools::assertion_result(true) : dcp_test::needs_python2x(id);
}

BOOST_AUTO_TEST_CASE(collectives_under_an_agent_store, *boost::unit_test::precondition(needs_agent_python)) {
  TempDir tmp;
  dist_test::Launch l;
  l.world = 3;
  l.port = dist_test::free_port();
  l.scratch = tmp.path();
  l.env = {{"TORCHELASTIC_USE_AGENT_STORE", "True"}, {"TORCHELASTIC_RESTART_COUNT", "2"}};
  l.argv = [](int) { return std::vector<std::string>{dist_rank_exe(), "collectives"}; };
  const auto ready = tmp.path() / "store-ready";
  const auto python = links_torch1() ? dcp_test::python() : dcp_test::python2x();
  const std::string agent = dcp_test::quote(python) + " -c \"import time, pathlib, torch.distributed as d; "
                            "s = d.TCPStore('127.0.0.1', " + std::to_string(l.port) + ", 4, True, wait_for_workers=False); "
                            "pathlib.Path('" + ready.string() + "').touch(); time.sleep(60)\" >/dev/null 2>&1 & echo $!";
  const auto pid = std::stoi(dcp_test::run_capture(agent));
  for (int i = 0; i < 300 && !fs::exists(ready); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  BOOST_TEST_REQUIRE(fs::exists(ready), "the agent's store (" + python + ") did not start");
  const auto results = dist_test::launch(l);
  ::kill(pid, SIGKILL);
  for (std::size_t r = 0; r < results.size(); ++r) BOOST_TEST(results[r].status == 0, dist_test::describe(results));
}

BOOST_AUTO_TEST_CASE(torch_dtensor_checkpoints_load_by_rows_on_3_ranks,
                     *boost::unit_test::precondition(dcp_test::needs_python2x)) {
  for (const char* name : kDtensorCases) {
    BOOST_TEST_CONTEXT(name) {
      TempDir tmp;
      const auto& case_dir = dcp_test::checkpoint_case(name);
      const auto results = run_ranks(3, tmp.path(), [&](int) {
        return std::vector<std::string>{dist_rank_exe(), "load", (case_dir / "ckpt").string(), case_dir.string()};
      });
      for (std::size_t r = 0; r < results.size(); ++r) {
        BOOST_TEST(results[r].status == 0, dist_test::describe(results));
        BOOST_TEST(contains(results[r].out, "ok load: rank " + std::to_string(r) + " of 3"), results[r].out);
      }
    }
  }
}

BOOST_AUTO_TEST_SUITE(failures, *boost::unit_test::precondition(dcp_test::needs_python2x))

// Every rank exits 1 soon, and every rank's error names `rank_text` (the failed rank).
void all_fail_naming(const std::vector<dist_test::RankResult>& results, const std::string& rank_text,
                     const std::string& what) {
  for (const auto& r : results) {
    BOOST_TEST(r.status == 1, dist_test::describe(results));
    BOOST_TEST(!r.killed);
    BOOST_TEST(r.seconds < 60);
    BOOST_TEST(contains(r.err, rank_text), dist_test::describe(results));
    BOOST_TEST(contains(r.err, what), dist_test::describe(results));
  }
}

BOOST_AUTO_TEST_CASE(one_rank_pointed_at_a_missing_checkpoint) {
  const auto& case_dir = dcp_test::checkpoint_case("x2_fsdp_4ranks");
  // Rank 1 sees no data files: its check of the coordinator's metadata fails. Rank 0 (the
  // coordinator) finds no .metadata to read. Either way every rank fails, naming that rank.
  const std::pair<int, std::string> cases[] = {{1, "missing"}, {0, "no .metadata"}};
  for (const auto& [bad, what] : cases) {
    TempDir tmp;
    const auto results = run_ranks(3, tmp.path(), [&, bad = bad](int rank) {
      const auto ckpt = rank == bad ? tmp.path() / "missing" : case_dir / "ckpt";
      return std::vector<std::string>{dist_rank_exe(), "load", ckpt.string(), case_dir.string()};
    });
    all_fail_naming(results, "rank " + std::to_string(bad) + ": ", what);
  }
}

BOOST_AUTO_TEST_CASE(a_corrupt_record_that_only_one_rank_reads) {
  TempDir tmp;
  const auto& case_dir = dcp_test::checkpoint_case("x2_fsdp_4ranks");
  const auto ckpt = tmp.path() / "ckpt";
  dcp_test::copy_checkpoint(case_dir / "ckpt", ckpt);
  // dt.rows (10 rows) was saved as 3,3,3,1 rows; loaded by 3 ranks as 4,4,2: only rank 2 reads
  // saved rank 3's row 9. Break that record's zip header.
  const auto expected = dcp_test::read_json(case_dir / "expected.json");
  const auto& chunks = expected.at("tensors").at("dt.rows").at("chunks").as_array();
  const auto& last = chunks.back().as_object();
  BOOST_TEST_REQUIRE(last.at("offsets").as_array().at(0).as_int64() == 9);
  {
    std::fstream f(ckpt / std::string(last.at("file").as_string()), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(last.at("byte_offset").as_int64());
    f.write("XXXX", 4);
  }
  const auto results = run_ranks(3, tmp.path(), [&](int) {
    return std::vector<std::string>{dist_rank_exe(), "load", ckpt.string(), case_dir.string()};
  });
  all_fail_naming(results, "rank 2: ", "dt.rows");
}

// Rank 1, and rank 0 (the coordinator, which also serves the store): the others exit 1 within
// 60 s, naming the rank they lost (gloo's message names its address, which the group mapped to
// the rank when it formed): the killed rank, or a rank that exited because it lost the killed
// one (whose own error names it).
BOOST_AUTO_TEST_CASE(a_rank_killed_mid_load) {
  const auto& case_dir = dcp_test::checkpoint_case("x2_fsdp_4ranks");
  for (int die : {1, 0}) {
    BOOST_TEST_CONTEXT("rank " << die << " killed") {
      TempDir tmp;
      const auto results = run_ranks(3, tmp.path(), [&](int) {
        return std::vector<std::string>{dist_rank_exe(), "load", (case_dir / "ckpt").string(), case_dir.string(),
                                        "--die-on-rank", std::to_string(die)};
      });
      BOOST_TEST(results[static_cast<std::size_t>(die)].status == 128 + 9, dist_test::describe(results));
      auto lost = [&](int r, int whom) {
        return contains(results[static_cast<std::size_t>(r)].err, "lost the connection to rank " + std::to_string(whom) + " ");
      };
      bool direct = false;
      for (int r = 0; r < 3; ++r) {
        if (r == die) continue;
        const auto& result = results[static_cast<std::size_t>(r)];
        BOOST_TEST(result.status == 1, dist_test::describe(results));
        BOOST_TEST(result.seconds < 60);
        const int other = 3 - r - die;
        BOOST_TEST((lost(r, die) || (lost(r, other) && lost(other, die))), dist_test::describe(results));
        direct = direct || lost(r, die);
      }
      BOOST_TEST(direct, dist_test::describe(results));
    }
  }
}

BOOST_AUTO_TEST_SUITE_END()
