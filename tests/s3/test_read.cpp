#define BOOST_TEST_MODULE dcp.s3.server
// Checkpoints that torch 2.13 saved, uploaded to a real SeaweedFS server, read through
// `s3://` locations by dcpp: inspect gives what it gives for the same files on disk, load reads
// every byte, verify checks every record, and convert writes a .pt that torch 2.13 reads to
// exactly the values torch saved (tests/convert/check_convert.py). Requests are counted to
// show coalescing; bad credentials, a missing checkpoint and a missing data object fail with
// one line naming the object.
#include <boost/json.hpp>
#include <boost/test/unit_test.hpp>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>

#include "server.hpp"
#include "support.hpp"

namespace json = boost::json;
namespace fs = std::filesystem;
using dcp_test::quote;

namespace {

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// The case's checkpoint under s3://dcpp/cases/NAME, uploaded once per binary.
std::string uploaded_case(const std::string& name) {
  static std::map<std::string, std::string> done;
  if (auto it = done.find(name); it != done.end()) return it->second;
  const auto url = s3_test::url("cases/" + name);
  s3_test::seaweed("put", quote(dcp_test::checkpoint_case(name) / "ckpt") + " " + quote(url));
  return done[name] = url;
}

// Sets an environment variable for the scope (dcpp inherits it), restoring it afterwards.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value) ::setenv(name, value, 1);
    else ::unsetenv(name);
  }
  ~ScopedEnv() {
    if (old_) ::setenv(name_, old_->c_str(), 1);
    else ::unsetenv(name_);
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

}  // namespace

BOOST_AUTO_TEST_SUITE(reads, *boost::unit_test::precondition(dcp_test::needs_python2x))

BOOST_AUTO_TEST_CASE(every_torch_case_reads_exactly) {
  dcp_test::TempDir tmp;
  json::array jobs;
  for (const auto& name : dcp_test::torch2x_cases())
    BOOST_TEST_CONTEXT(name) {
      const auto& case_dir = dcp_test::checkpoint_case(name);
      const auto url = uploaded_case(name);
      const auto local = dcp_test::run_dcpp("inspect --json " + quote(case_dir / "ckpt"), tmp.path());
      const auto remote = dcp_test::run_dcpp("inspect --json " + quote(url), tmp.path());
      BOOST_TEST_REQUIRE(remote.status == 0, remote.err);
      BOOST_TEST(json::parse(remote.out) == json::parse(local.out));

      const auto load = dcp_test::run_dcpp("load --json " + quote(url), tmp.path());
      BOOST_TEST_REQUIRE(load.status == 0, load.err);
      const auto expected = dcp_test::read_json(case_dir / "expected.json").as_object();
      std::uint64_t bytes = 0;
      for (const auto& [key, t] : expected.at("tensors").as_object()) bytes += t.at("nbytes").to_number<std::uint64_t>();
      BOOST_TEST(json::parse(load.out).at("bytes").to_number<std::uint64_t>() == bytes);

      const auto verify = dcp_test::run_dcpp("verify " + quote(url), tmp.path());
      BOOST_TEST(verify.status == 0, verify.err);

      const auto pt = tmp.path() / (name + ".pt");
      const auto convert = dcp_test::run_dcpp("convert --quiet " + quote(url) + " " + quote(pt), tmp.path());
      BOOST_TEST_REQUIRE(convert.status == 0, convert.err);
      jobs.push_back(json::array{"pt", case_dir.string(), pt.string()});
    }
  std::ofstream(tmp.path() / "jobs.json") << json::serialize(jobs);
  int status = 0;
  const auto out = dcp_test::run_capture(quote(dcp_test::python2x()) + " " +
                                             quote(dcp_test::source_root() / "tests/convert/check_convert.py") + " batch " +
                                             quote(tmp.path() / "jobs.json") + " 2>&1",
                                         &status);
  BOOST_TEST(status == 0, out);
  BOOST_TEST(!contains(out, "FAIL"), out);
}

// x2_flat holds many small tensors in one data file: the reads of one object are coalesced, so
// a load issues far fewer requests than it reads items, and never asks for more than the data
// objects hold.
BOOST_AUTO_TEST_CASE(neighbouring_reads_share_requests) {
  dcp_test::TempDir tmp;
  const auto url = uploaded_case("x2_flat");
  const auto load = dcp_test::run_dcpp("load --json " + quote(url), tmp.path());
  BOOST_TEST_REQUIRE(load.status == 0, load.err);
  const auto doc = json::parse(load.out).as_object();
  const auto items = doc.at("items_read").to_number<std::uint64_t>();
  const auto requests = doc.at("requests").to_number<std::uint64_t>();
  std::uint64_t stored = 0;
  std::istringstream listing(s3_test::seaweed("ls", quote(url)));
  for (std::string key, size; listing >> key >> size;)
    if (!key.ends_with("/.metadata")) stored += std::stoull(size);
  BOOST_TEST_MESSAGE("x2_flat: " << items << " items in " << requests << " requests, " << doc.at("storage_bytes")
                                 << " bytes requested of " << stored << " stored");
  BOOST_TEST(items > 4u);
  BOOST_TEST(requests >= 1u);
  BOOST_TEST(requests * 4 <= items);
  BOOST_TEST(doc.at("storage_bytes").to_number<std::uint64_t>() <= stored);
}

BOOST_AUTO_TEST_CASE(anonymous_reads_work_and_bad_keys_are_refused) {
  dcp_test::TempDir tmp;
  const auto url = uploaded_case("x2_flat");
  {
    ScopedEnv access("AWS_ACCESS_KEY_ID", nullptr), secret("AWS_SECRET_ACCESS_KEY", nullptr);
    const auto r = dcp_test::run_dcpp("verify " + quote(url), tmp.path());
    BOOST_TEST(r.status == 0, r.err);
  }
  {
    ScopedEnv secret("AWS_SECRET_ACCESS_KEY", "not-the-secret");
    const auto r = dcp_test::run_dcpp("inspect " + quote(url), tmp.path());
    BOOST_TEST(r.status == 1);
    BOOST_TEST(contains(r.err, url + "/.metadata"), r.err);
    BOOST_TEST(contains(r.err, "403"), r.err);
  }
}

BOOST_AUTO_TEST_CASE(a_missing_checkpoint_or_data_object_is_named) {
  dcp_test::TempDir tmp;
  auto r = dcp_test::run_dcpp("inspect " + quote(s3_test::url("nothing/here")), tmp.path());
  BOOST_TEST(r.status == 1);
  BOOST_TEST(contains(r.err, s3_test::url("nothing/here/.metadata")), r.err);

  // A copy without one of its data objects: refused before anything is loaded, naming it.
  const auto url = s3_test::url("partial/x2_flat");
  s3_test::seaweed("put", quote(dcp_test::checkpoint_case("x2_flat") / "ckpt") + " " + quote(url));
  s3_test::seaweed("rm", quote(url + "/__0_0.distcp"));
  r = dcp_test::run_dcpp("load " + quote(url), tmp.path());
  BOOST_TEST(r.status == 1);
  BOOST_TEST(contains(r.err, url + "/__0_0.distcp"), r.err);
}

BOOST_AUTO_TEST_SUITE_END()
