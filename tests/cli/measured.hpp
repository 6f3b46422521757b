// dcpp run under /usr/bin/time, for the suites that bound its time and memory on hostile
// input (test_cli_hostile.cpp, test_cli_imports.cpp).
#pragma once
#include <string>

namespace dcp_cli_test {

/// Generous next to libtorch's own ~160 MiB start-up: the inputs of test_cli_hostile.cpp used
/// to need 0.8-16 GB.
constexpr long kMaxRssKiB = 768 * 1024;

/// $NAME, which the suite's environment must set (DCPP_EXE, DCPP_MAKE_HOSTILE).
std::string env(const char* name);

struct Measured {
  int status = 0;  ///< the exit status; 128 + N when a signal N ended it
  std::string err;
  double seconds = 0;
  long max_rss_kib = 0;
};

/// `dcpp ARGS` under /usr/bin/time, in a shell so `prefix` may set limits (ulimit).
Measured run_measured(const std::string& args, const std::string& prefix = "");

/// Exit 1, one short line "dcpp: error: FILE: [key 'K': ][byte N: ]...", within `max_rss_kib`.
void expect_one_line_error(const Measured& m, const std::string& file, const std::string& key, const std::string& text,
                           long max_rss_kib = kMaxRssKiB);

}  // namespace dcp_cli_test
