// The dcp.dist suite's launcher: starts the ranks of one run as torchrun would (RANK,
// WORLD_SIZE, LOCAL_RANK, MASTER_ADDR=127.0.0.1, MASTER_PORT=<a free port>), captures each
// rank's output and exit status, and kills whatever still runs at the deadline.
#pragma once
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

namespace dist_test {

struct RankResult {
  int status = -1;       ///< exit status, or 128 + signal
  bool killed = false;   ///< killed by the launcher at the deadline
  double seconds = 0;    ///< from the launch to this rank's exit
  std::string out, err;
};

struct Launch {
  int world = 2;
  /// The command line of rank r (argv[0] a path). Ranks may differ (a bad path on one rank).
  std::function<std::vector<std::string>(int rank)> argv;
  std::vector<std::pair<std::string, std::string>> env;  ///< more variables for every rank
  double deadline_s = 90;                                 ///< every rank is SIGKILLed after this
  int port = 0;                                           ///< MASTER_PORT; 0: a free one
  std::filesystem::path scratch;                          ///< where output is captured
};

/// Runs the ranks to completion (or the deadline); results in rank order.
std::vector<RankResult> launch(const Launch& launch);

/// A TCP port on 127.0.0.1 that was free a moment ago.
int free_port();

/// "rank R: status S (T s): stderr" for every rank, for test messages.
std::string describe(const std::vector<RankResult>& results);

}  // namespace dist_test
