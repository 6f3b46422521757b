// Faults between dcpp and the S3 server (tests/python/fault_proxy.py): dropped connections
// halfway through a body, delayed answers and 503 SlowDown. A fault that a retry outlives ends
// in exactly the values torch saved; one that never ends fails with exit 1 naming the object
// and the byte, and nothing is written.
#include <boost/json.hpp>
#include <boost/test/unit_test.hpp>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include "server.hpp"
#include "support.hpp"

namespace json = boost::json;
namespace fs = std::filesystem;
using dcp_test::quote;

namespace {

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

std::string read_text(const fs::path& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// A fault proxy in front of the suite's server, for the scope: AWS_ENDPOINT_URL points at it.
class Proxy {
 public:
  Proxy(const std::string& mode, int every, const std::string& match = ".distcp") {
    const std::string endpoint = std::getenv("AWS_ENDPOINT_URL");
    endpoint_ = endpoint;
    const auto port = endpoint.substr(endpoint.rfind(':') + 1);
    dcp_test::run(quote(dcp_test::python2x()) + " " + quote(dcp_test::source_root() / "tests/python/fault_proxy.py") +
                  " " + port + " " + mode + " " + std::to_string(every) + " " + quote(dir_.path()) + " " + quote(match) + " >" +
                  quote(dir_.path() / "log") + " 2>&1 & echo $! >" + quote(dir_.path() / "pid"));
    for (int i = 0; i < 200 && !fs::exists(dir_.path() / "port"); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    BOOST_TEST_REQUIRE(fs::exists(dir_.path() / "port"), "fault_proxy.py did not start: " << read_text(dir_.path() / "log"));
    ::setenv("AWS_ENDPOINT_URL", ("http://127.0.0.1:" + read_text(dir_.path() / "port")).c_str(), 1);
  }
  ~Proxy() {
    ::setenv("AWS_ENDPOINT_URL", endpoint_.c_str(), 1);
    const auto pid = std::stoi(read_text(dir_.path() / "pid"));
    if (pid > 0) ::kill(pid, SIGTERM);  // the proxy this object started
  }
  int faults() const {
    const auto text = read_text(dir_.path() / "faults");
    return text.empty() ? 0 : std::stoi(text);
  }

 private:
  dcp_test::TempDir dir_;
  std::string endpoint_;
};

std::string uploaded(const std::string& name) {
  const auto url = s3_test::url("faults/" + name);
  s3_test::seaweed("put", quote(dcp_test::checkpoint_case(name) / "ckpt") + " " + quote(url));
  return url;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(faults, *boost::unit_test::precondition(dcp_test::needs_python2x))

BOOST_AUTO_TEST_CASE(retried_faults_end_in_the_exact_values) {
  dcp_test::TempDir tmp;
  const auto& case_dir = dcp_test::checkpoint_case("x2_flat");
  const auto url = uploaded("x2_flat");
  json::array jobs;
  for (const std::string mode : {"drop", "delay", "503"})
    BOOST_TEST_CONTEXT(mode) {
      Proxy proxy(mode, 3);
      const auto pt = tmp.path() / (mode + ".pt");
      const auto r = dcp_test::run_dcpp("convert --quiet " + quote(url) + " " + quote(pt), tmp.path());
      BOOST_TEST_REQUIRE(r.status == 0, r.err);
      BOOST_TEST(proxy.faults() > 0);
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

BOOST_AUTO_TEST_CASE(lasting_faults_fail_naming_the_object_and_byte) {
  dcp_test::TempDir tmp;
  const auto url = uploaded("x2_flat");
  for (const std::string mode : {"drop", "503"})
    BOOST_TEST_CONTEXT(mode) {
      Proxy proxy(mode, 1);
      const auto pt = tmp.path() / (mode + ".pt");
      const auto r = dcp_test::run_dcpp("convert --quiet " + quote(url) + " " + quote(pt), tmp.path());
      BOOST_TEST(r.status == 1, r.err);
      BOOST_TEST(contains(r.err, url + "/__0_0.distcp"), r.err);
      BOOST_TEST(contains(r.err, "byte"), r.err);
      BOOST_TEST(!fs::exists(pt));
      BOOST_TEST(proxy.faults() > 0);
    }
}

// A save whose data uploads are all refused fails with exit 1 naming its object, and nothing
// appears under the prefix: no `.metadata`, no data object, no upload left open.
BOOST_AUTO_TEST_CASE(a_failed_save_publishes_nothing) {
  dcp_test::TempDir tmp;
  const auto url = s3_test::url("faults/failed-save");
  {
    Proxy proxy("503", 1);
    const auto r = dcp_test::run_dcpp("reshard --quiet " + quote(dcp_test::checkpoint_case("x2_flat") / "ckpt") + " " +
                                          quote(url),
                                      tmp.path());
    BOOST_TEST(r.status == 1, r.err);
    BOOST_TEST(contains(r.err, url + "/__0_"), r.err);
    BOOST_TEST(proxy.faults() > 0);
  }
  BOOST_TEST(s3_test::seaweed("ls", quote(url)).empty());
}

// The answer to the PUT that publishes `.metadata` is lost and the PUT sent again: its own
// condition (no checkpoint there) then fails, and the save sees that `.metadata` holds exactly
// its bytes: published, exit 0, and the checkpoint verifies.
BOOST_AUTO_TEST_CASE(a_lost_answer_to_the_publish_still_publishes) {
  dcp_test::TempDir tmp;
  const auto url = s3_test::url("faults/lost-publish");
  {
    Proxy proxy("drop", 2, "/.metadata");
    const auto r = dcp_test::run_dcpp("reshard --quiet " + quote(dcp_test::checkpoint_case("x2_flat") / "ckpt") + " " +
                                          quote(url),
                                      tmp.path());
    BOOST_TEST(r.status == 0, r.err);
    BOOST_TEST(proxy.faults() > 0);
  }
  const auto verify = dcp_test::run_dcpp("verify " + quote(url), tmp.path());
  BOOST_TEST(verify.status == 0, verify.err);
}

BOOST_AUTO_TEST_SUITE_END()
