#include "measured.hpp"

#include <boost/test/unit_test.hpp>
#include <cstdlib>
#include <sstream>

#include "support.hpp"

namespace dcp_cli_test {

std::string env(const char* name) {
  const char* value = std::getenv(name);
  BOOST_TEST_REQUIRE(value != nullptr, name << " is not set");
  return value;
}

Measured run_measured(const std::string& args, const std::string& prefix) {
  dcp_test::TempDir tmp;
  const auto err = tmp.path() / "stderr", usage = tmp.path() / "time";
  Measured m;
  (void)dcp_test::run_capture("bash -c " + dcp_test::quote(prefix + "exec /usr/bin/time -f '%e %M' -o " +
                                                            dcp_test::quote(usage) + " " + env("DCPP_EXE") + " " + args) +
                                  " 2>" + dcp_test::quote(err),
                              &m.status);
  const auto e = dcp_test::read_bytes(err);
  m.err.assign(reinterpret_cast<const char*>(e.data()), e.size());
  // time's file ends with the "%e %M" line (a line before it reports a non-zero exit).
  const auto u = dcp_test::read_bytes(usage);
  std::string text(reinterpret_cast<const char*>(u.data()), u.size());
  while (!text.empty() && text.back() == '\n') text.pop_back();
  std::istringstream(text.substr(text.rfind('\n') == std::string::npos ? 0 : text.rfind('\n') + 1)) >> m.seconds >>
      m.max_rss_kib;
  BOOST_TEST_REQUIRE(m.max_rss_kib > 0, "no usage from /usr/bin/time: " << text);
  BOOST_TEST_MESSAGE("dcpp " << args << ": exit " << m.status << ", " << m.seconds << " s, " << m.max_rss_kib / 1024
                             << " MiB");
  return m;
}

void expect_one_line_error(const Measured& m, const std::string& file, const std::string& key, const std::string& text,
                           long max_rss_kib) {
  BOOST_TEST(m.status == 1, m.err);
  BOOST_TEST(m.err.rfind("dcpp: error: " + file + ": ", 0) == 0u, m.err);
  BOOST_TEST(m.err.find('\n') == m.err.size() - 1, "not one line: " << m.err);
  BOOST_TEST(m.err.size() < 600u, m.err);
  if (!key.empty()) BOOST_TEST(m.err.find(": key '" + key + "': byte ") != std::string::npos, m.err);
  BOOST_TEST(m.err.find(text) != std::string::npos, m.err << " lacks '" << text << "'");
  BOOST_TEST(m.max_rss_kib < max_rss_kib, m.max_rss_kib / 1024 << " MiB");
}

}  // namespace dcp_cli_test
