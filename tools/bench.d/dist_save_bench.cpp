// dcpp-dist-save-bench: dcpp's side of `tools/bench --only dist`'s save measurement, run as
// every rank of a launcher (torchrun; RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT).
//
//   dcpp-dist-save-bench --spec CKPT_DIR --out DIR [--repeat N]
//
// Every rank builds the tensors (names, dtypes, shapes) of CKPT_DIR in memory and keeps its
// rows of each (torch.chunk along dim 0, as a DTensor Shard(0) holds them); then N times: rank 0
// removes DIR and syncs, every rank waits for the others, and the ranks save together over a
// Gloo process group (checkpoint::save, fsync on). Rank 0 prints one JSON object: the global
// bytes and, per save, the slowest rank's seconds.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include "spec_state_dict.hpp"

import dcp.error;
import dcp.planning;
import dcp.storage;
import dcp.checkpoint;
import dcp.collective;
import dcp.dist;

namespace {

using Clock = std::chrono::steady_clock;

[[noreturn]] void usage() {
  std::fprintf(stderr, "usage: dcpp-dist-save-bench --spec CKPT_DIR --out DIR [--repeat N]\n");
  std::exit(2);
}

// The slowest rank's `seconds`, on every rank.
double slowest_seconds(dcp::collective::Collectives& ranks, double seconds) {
  const auto bytes = ranks.all_reduce(
      "bench: seconds",
      [&] {
        std::vector<std::byte> mine(sizeof seconds);
        std::memcpy(mine.data(), &seconds, sizeof seconds);
        return mine;
      },
      [](dcp::collective::Collectives::Results all) {
        double slowest = 0;
        for (const auto& b : all) {
          double s = 0;
          if (b.size() == sizeof s) std::memcpy(&s, b.data(), sizeof s);
          slowest = std::max(slowest, s);
        }
        std::vector<std::byte> out(sizeof slowest);
        std::memcpy(out.data(), &slowest, sizeof slowest);
        return out;
      });
  double s = 0;
  if (bytes.size() == sizeof s) std::memcpy(&s, bytes.data(), sizeof s);
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  std::string spec, out;
  int repeat = 3;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) usage();
    if (a == "--spec") spec = argv[++i];
    else if (a == "--out") out = argv[++i];
    else if (a == "--repeat") repeat = std::atoi(argv[++i]);
    else usage();
  }
  if (spec.empty() || out.empty() || repeat < 1) usage();
  try {
    auto pg = dcp::dist::from_environment();
    const int rank = pg->rank();
    dcp::collective::Collectives ranks(pg.get());
    const auto whole = bench::state_dict_of_spec(spec);
    const auto mine = dcp::checkpoint::split_rows(whole.state_dict, pg->size())[static_cast<std::size_t>(rank)];
    dcp::storage::WriteOptions options;
    options.overwrite = true;
    dcp::storage::FileSystemWriter writer(out, options);
    dcp::planning::DefaultSavePlanner planner;
    std::vector<double> slowest;
    for (int r = 0; r < repeat; ++r) {
      if (rank == 0) {
        std::filesystem::remove_all(out);
        ::sync();
        std::this_thread::sleep_for(std::chrono::seconds(1));
      }
      ranks.run("bench: start", [] {});  // every rank starts together
      const auto t0 = Clock::now();
      (void)dcp::checkpoint::save(mine, writer, planner, pg.get(), 0);
      slowest.push_back(slowest_seconds(ranks, std::chrono::duration<double>(Clock::now() - t0).count()));
    }
    if (rank == 0) {
      std::string list;
      for (double s : slowest) list += (list.empty() ? "" : ", ") + std::to_string(s);
      std::printf("{\"ranks\": %d, \"bytes\": %llu, \"seconds\": [%s]}\n", pg->size(),
                  static_cast<unsigned long long>(whole.bytes), list.c_str());
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dcpp-dist-save-bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
