// Saves into a real SeaweedFS server: `dcpp reshard SRC s3://...` writes a checkpoint that,
// downloaded, torch 2.13 loads to exactly the values torch saved (tests/python/save_check.py);
// `.metadata` is published last, so a save that fails (a fault proxy refusing every data
// upload) leaves no checkpoint and none of its objects; a checkpoint already there is replaced
// only with --overwrite.
#include <boost/json.hpp>
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "server.hpp"
#include "support.hpp"

namespace json = boost::json;
namespace fs = std::filesystem;
using dcp_test::quote;

namespace {

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// The keys under a prefix, relative to it.
std::vector<std::string> listed(const std::string& url) {
  std::vector<std::string> names;
  std::istringstream in(s3_test::seaweed("ls", quote(url)));
  const auto prefix = url.substr(std::string("s3://dcpp/").size()) + "/";
  for (std::string key, size; in >> key >> size;) names.push_back(key.substr(prefix.size()));
  return names;
}

json::object check_of(const std::string& name, const fs::path& ckpt, const fs::path& case_dir) {
  const auto expected = dcp_test::read_json(case_dir / "expected.json").as_object();
  json::array tensors;
  for (const auto& [fqn, t] : expected.at("tensors").as_object())
    tensors.push_back(json::object{{"path", t.at("path")},
                                   {"dtype", t.at("dtype")},
                                   {"shape", t.at("shape")},
                                   {"bin", (case_dir / std::string(t.at("file").as_string())).string()}});
  return json::object{{"name", name}, {"ckpt", ckpt.string()}, {"exact_keys", false}, {"tensors", tensors},
                      {"objects", json::array{}}};
}

}  // namespace

BOOST_AUTO_TEST_SUITE(saves, *boost::unit_test::precondition(dcp_test::needs_python2x))

BOOST_AUTO_TEST_CASE(saved_checkpoints_load_exactly_in_torch) {
  dcp_test::TempDir tmp;
  json::array checks;
  for (const std::string name : {"x2_flat", "x2_dtypes_v3", "x2_fsdp_4ranks"})
    BOOST_TEST_CONTEXT(name) {
      const auto& case_dir = dcp_test::checkpoint_case(name);
      const auto url = s3_test::url("saved/" + name);
      const auto r = dcp_test::run_dcpp("reshard --quiet " + quote(case_dir / "ckpt") + " " + quote(url), tmp.path());
      BOOST_TEST_REQUIRE(r.status == 0, r.err);
      const auto names = listed(url);
      BOOST_TEST(std::count(names.begin(), names.end(), ".metadata") == 1);
      const auto local = tmp.path() / name;
      s3_test::seaweed("get", quote(url) + " " + quote(local));
      checks.push_back(check_of(name, local, case_dir));
      // dcpp reads back what it wrote, every record checked.
      const auto verify = dcp_test::run_dcpp("verify " + quote(url), tmp.path());
      BOOST_TEST(verify.status == 0, verify.err);
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

BOOST_AUTO_TEST_CASE(a_checkpoint_there_is_replaced_only_with_overwrite) {
  dcp_test::TempDir tmp;
  const auto url = s3_test::url("replace/x2_flat");
  const auto src = quote(dcp_test::checkpoint_case("x2_flat") / "ckpt");
  BOOST_TEST_REQUIRE(dcp_test::run_dcpp("reshard --quiet " + src + " " + quote(url), tmp.path()).status == 0);
  const auto before = listed(url);
  auto r = dcp_test::run_dcpp("reshard --quiet " + src + " " + quote(url), tmp.path());
  BOOST_TEST(r.status == 1);
  BOOST_TEST(contains(r.err, url + "/.metadata"), r.err);
  BOOST_TEST(listed(url) == before);
  r = dcp_test::run_dcpp("reshard --quiet --overwrite " + src + " " + quote(url), tmp.path());
  BOOST_TEST(r.status == 0, r.err);
  BOOST_TEST(dcp_test::run_dcpp("verify " + quote(url), tmp.path()).status == 0);
}

// A rank's object larger than a part goes up as a multipart upload (DCPP_S3_PART_BYTES = 5 MiB:
// 3 parts of a 12 MB tensor, the store's ETag ending -3): torch 2.13 loads the downloaded
// checkpoint to exactly what torch.load reads from the file.
BOOST_AUTO_TEST_CASE(multipart_uploads_load_exactly) {
  dcp_test::TempDir tmp;
  const auto python = quote(dcp_test::python2x());
  const auto pt = tmp.path() / "big.pt", local = tmp.path() / "local", back = tmp.path() / "back";
  BOOST_TEST_REQUIRE(dcp_test::run(python + " -c 'import sys, torch; torch.manual_seed(0); torch.save({\"w\": "
                                   "torch.randn(3_000_000), \"b\": torch.arange(10)}, sys.argv[1])' " + quote(pt)) == 0);
  auto r = dcp_test::run_dcpp("convert --quiet " + quote(pt) + " " + quote(local), tmp.path());
  BOOST_TEST_REQUIRE(r.status == 0, r.err);
  const auto url = s3_test::url("saved/multipart");
  ::setenv("DCPP_S3_PART_BYTES", "5242880", 1);
  r = dcp_test::run_dcpp("reshard --quiet " + quote(local) + " " + quote(url), tmp.path());
  ::unsetenv("DCPP_S3_PART_BYTES");
  BOOST_TEST_REQUIRE(r.status == 0, r.err);
  const auto names = listed(url);
  const auto data = std::find_if(names.begin(), names.end(), [](const auto& n) { return n.ends_with(".distcp"); });
  BOOST_TEST_REQUIRE((data != names.end()));
  BOOST_TEST(contains(s3_test::seaweed("etag", quote(url + "/" + *data)), "-3\""));
  s3_test::seaweed("get", quote(url) + " " + quote(back));
  int status = 0;
  const auto out = dcp_test::run_capture(
      python + " -c 'import sys, torch, torch.distributed.checkpoint as dcp; want = torch.load(sys.argv[1]); "
               "got = {k: torch.empty_like(v) for k, v in want.items()}; dcp.load(got, checkpoint_id=sys.argv[2]); "
               "print(all(torch.equal(got[k], want[k]) for k in want))' " +
          quote(pt) + " " + quote(back) + " 2>&1",
      &status);
  BOOST_TEST(status == 0, out);
  BOOST_TEST(contains(out, "True"), out);
}

BOOST_AUTO_TEST_SUITE_END()
