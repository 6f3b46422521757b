// Ranks of a launcher through s3:// locations (dcpp execs dcpp-torch, which forms the Gloo
// group): 3 ranks reshard a torch 2.13 checkpoint by rows from the server back into it, and the
// result, downloaded, loads in torch 2.13 to exactly the values torch saved; 3 ranks that each
// load every tensor whole take a third of the bytes from the store with read-once (one rank
// reads a saved item and broadcasts it) that they take when every rank reads for itself.
#include <boost/json.hpp>
#include <boost/test/unit_test.hpp>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "launcher.hpp"
#include "server.hpp"
#include "support.hpp"

namespace json = boost::json;
namespace fs = std::filesystem;
using dcp_test::quote;

namespace {

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

std::vector<dist_test::RankResult> run_ranks(int world, const fs::path& scratch, std::vector<std::string> args) {
  dist_test::Launch l;
  l.world = world;
  l.scratch = scratch;
  for (const char* name : {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"})
    if (const char* value = std::getenv(name)) l.env.emplace_back(name, value);
  l.argv = [&](int) {
    std::vector<std::string> argv{dcp_test::dcpp_exe().string()};
    argv.insert(argv.end(), args.begin(), args.end());
    return argv;
  };
  return dist_test::launch(l);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(ranks, *boost::unit_test::precondition(dcp_test::needs_python2x))

BOOST_AUTO_TEST_CASE(three_ranks_reshard_by_rows_exactly) {
  dcp_test::TempDir tmp;
  json::array checks;
  for (const std::string name : {"x2_flat", "x2_fsdp_4ranks", "x2_2d_4ranks"})
    BOOST_TEST_CONTEXT(name) {
      const auto& case_dir = dcp_test::checkpoint_case(name);
      const auto src = s3_test::url("ranks/src/" + name), dst = s3_test::url("ranks/dst/" + name);
      s3_test::seaweed("put", quote(case_dir / "ckpt") + " " + quote(src));
      const auto results = run_ranks(3, tmp.path(), {"reshard", "--quiet", src, dst});
      for (const auto& r : results) BOOST_TEST(r.status == 0, dist_test::describe(results));
      const auto local = tmp.path() / name;
      s3_test::seaweed("get", quote(dst) + " " + quote(local));
      const auto expected = dcp_test::read_json(case_dir / "expected.json").as_object();
      json::array tensors;
      for (const auto& [fqn, t] : expected.at("tensors").as_object())
        tensors.push_back(json::object{{"path", t.at("path")},
                                       {"dtype", t.at("dtype")},
                                       {"shape", t.at("shape")},
                                       {"bin", (case_dir / std::string(t.at("file").as_string())).string()}});
      checks.push_back(json::object{{"name", name}, {"ckpt", local.string()}, {"exact_keys", false},
                                    {"tensors", tensors}, {"objects", json::array{}}});
    }
  std::ofstream(tmp.path() / "manifest.json") << json::serialize(json::object{{"checks", checks}, {"dist", json::array{}}});
  int status = 0;
  const auto out = dcp_test::run_capture(quote(dcp_test::python2x()) + " " +
                                             quote(dcp_test::source_root() / "tests/python/save_check.py") + " load " +
                                             quote(tmp.path() / "manifest.json") + " 2>&1",
                                         &status);
  BOOST_TEST(status == 0, out);
  BOOST_TEST(!contains(out, "FAIL"), out);
}

BOOST_AUTO_TEST_CASE(read_once_reads_each_item_once) {
  dcp_test::TempDir tmp;
  const auto url = s3_test::url("ranks/read-once");
  s3_test::seaweed("put", quote(dcp_test::checkpoint_case("x2_fsdp_4ranks") / "ckpt") + " " + quote(url));
  struct Totals {
    std::uint64_t requests = 0, stored = 0, loaded = 0;
  };
  auto totals = [&](std::vector<std::string> args) {
    const auto results = run_ranks(3, tmp.path(), args);
    Totals t;
    for (const auto& r : results) {
      BOOST_TEST_REQUIRE(r.status == 0, dist_test::describe(results));
      const auto doc = json::parse(r.out).as_object();
      t.requests += doc.at("requests").to_number<std::uint64_t>();
      t.stored += doc.at("storage_bytes").to_number<std::uint64_t>();
      t.loaded += doc.at("bytes").to_number<std::uint64_t>();
    }
    return t;
  };
  const auto once = totals({"load", "--json", "--layout", "replicated", url});
  const auto each = totals({"load", "--json", "--layout", "replicated", "--no-read-once", url});
  BOOST_TEST_MESSAGE("3 ranks, every tensor whole: read-once " << once.stored << " bytes from the store in "
                     << once.requests << " requests; every rank itself " << each.stored << " bytes in "
                     << each.requests << " requests");
  BOOST_TEST(once.loaded == each.loaded);
  // Every saved item read once in all (read-once) against once per rank.
  BOOST_TEST(once.stored * 2 < each.stored);
}

BOOST_AUTO_TEST_SUITE_END()
