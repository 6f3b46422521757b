#include "server.hpp"

#include <boost/test/unit_test.hpp>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>

#include "support.hpp"

namespace s3_test {
namespace {

std::string script() { return dcp_test::quote(dcp_test::source_root() / "tests/python/seaweed.py"); }

struct Server {
  dcp_test::TempDir dir;
  Server() {
    int status = 0;
    const auto out = dcp_test::run_capture(dcp_test::quote(dcp_test::python2x()) + " " + script() + " start " +
                                               dcp_test::quote(dir.path()),
                                           &status);
    if (status == 3) {
      // No weed binary or botocore (seaweed.py said which on stderr): a skip, never a pass.
      std::fprintf(stderr, "SKIPPED: no SeaweedFS (weed) or botocore in the virtualenv for dcp.s3's server tests\n");
      std::exit(77);
    }
    // A server that is there but does not start is a failure of the test that needed it.
    if (status != 0) throw std::runtime_error("seaweed.py start failed with status " + std::to_string(status));
    std::ifstream env(dir.path() / "env");
    for (std::string line; std::getline(env, line);) {
      const auto eq = line.find('=');
      if (eq != std::string::npos) ::setenv(line.substr(0, eq).c_str(), line.substr(eq + 1).c_str(), 1);
    }
  }
  ~Server() { dcp_test::run(dcp_test::quote(dcp_test::python2x()) + " " + script() + " stop " + dcp_test::quote(dir.path())); }
};

std::unique_ptr<Server>& server() {
  static std::unique_ptr<Server> instance;
  return instance;
}

// Stops the server when the test binary ends (a global fixture's teardown runs before exit).
struct StopAtExit {
  ~StopAtExit() { server().reset(); }
};
BOOST_TEST_GLOBAL_FIXTURE(StopAtExit);

}  // namespace

const std::filesystem::path& server_dir() {
  if (!server()) server() = std::make_unique<Server>();
  return server()->dir.path();
}

std::string seaweed(const std::string& command, const std::string& args) {
  int status = 0;
  const auto out = dcp_test::run_capture(dcp_test::quote(dcp_test::python2x()) + " " + script() + " " + command + " " +
                                             dcp_test::quote(server_dir()) + " " + args,
                                         &status);
  BOOST_TEST_REQUIRE(status == 0, "seaweed.py " << command << " " << args << " failed");
  return out;
}

std::string url(const std::string& prefix) {
  (void)server_dir();  // the AWS_* variables are set once the server runs
  return "s3://dcpp/" + prefix;
}

}  // namespace s3_test
