// dcpp-save-bench: the dcpp half of `tools/bench`'s save measurements.
//
//   dcpp-save-bench --spec CKPT_DIR --out DIR [--mode sync|async|prepared] [--repeat N] [--files N]
//
// Builds an in-memory state dict with the tensors (names, dtypes, shapes) of the checkpoint
// CKPT_DIR, filled with a byte pattern and touched before timing, then:
//   sync:  saves it N times into a fresh DIR (the previous save removed, then sync(2) and a
//          1 s pause before the clock starts), fsync on;
//   async: makes one Checkpointer and calls async_save N times, each after the previous
//          future completed, changing one byte of every tensor between calls;
//   prepared: as async, after Checkpointer::prepare_async_save (its seconds: prepare_seconds);
// and prints one JSON object: bytes, per-save seconds (sync) or per-call stall seconds and
// per-save total seconds (async). Peak RSS is measured by the caller (wait4).
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include "spec_state_dict.hpp"

import dcp.error;
import dcp.metadata;
import dcp.planning;
import dcp.memory;
import dcp.storage;
import dcp.checkpoint;

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::string json_list(const std::vector<double>& xs) {
  std::string s = "[";
  for (std::size_t i = 0; i < xs.size(); ++i) s += (i ? ", " : "") + std::to_string(xs[i]);
  return s + "]";
}

// Every saver starts from the same state: earlier writes and removals flushed, and a pause for
// the (virtual) disk's background work (discards of removed files) to finish.
void settle() {
  ::sync();
  std::this_thread::sleep_for(std::chrono::seconds(1));
}

[[noreturn]] void usage() {
  std::fprintf(stderr, "usage: dcpp-save-bench --spec CKPT_DIR --out DIR [--mode sync|async|prepared] [--repeat N] [--files N]\n");
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  std::string spec, out, mode = "sync";
  int repeat = 3, files = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) usage();
    if (a == "--spec") spec = argv[++i];
    else if (a == "--out") out = argv[++i];
    else if (a == "--mode") mode = argv[++i];
    else if (a == "--repeat") repeat = std::atoi(argv[++i]);
    else if (a == "--files") files = std::atoi(argv[++i]);
    else usage();
  }
  if (spec.empty() || out.empty() || repeat < 1 || (mode != "sync" && mode != "async" && mode != "prepared")) usage();
  try {
    auto spec_state = bench::state_dict_of_spec(spec);
    auto& buffers = spec_state.buffers;
    const auto& state_dict = spec_state.state_dict;
    const std::uint64_t total = spec_state.bytes;
    dcp::storage::WriteOptions options;
    options.overwrite = true;
    options.files_per_rank = files;
    std::vector<double> times, stalls;
    double prepare_seconds = 0;
    if (mode == "sync") {
      dcp::storage::FileSystemWriter writer(out, options);
      dcp::planning::DefaultSavePlanner planner;
      for (int r = 0; r < repeat; ++r) {
        std::filesystem::remove_all(out);
        settle();
        const auto t0 = Clock::now();
        (void)dcp::checkpoint::save(state_dict, writer, planner);
        times.push_back(seconds_since(t0));
      }
    } else {
      dcp::checkpoint::Checkpointer checkpointer(std::make_shared<dcp::storage::FileSystemWriter>(out, options), nullptr);
      if (mode == "prepared") {
        const auto t0 = Clock::now();
        checkpointer.prepare_async_save(state_dict);
        prepare_seconds = seconds_since(t0);
      }
      for (int r = 0; r < repeat; ++r) {
        settle();
        const auto t0 = Clock::now();
        auto future = checkpointer.async_save(state_dict);
        stalls.push_back(seconds_since(t0));
        for (auto& b : buffers)
          if (b.size()) b.data()[0] = static_cast<std::byte>(r);  // the caller goes on changing its tensors
        (void)future.get();
        times.push_back(seconds_since(t0));
      }
    }
    std::printf("{\"mode\": \"%s\", \"bytes\": %llu, \"seconds\": %s, \"stall_seconds\": %s, \"prepare_seconds\": %.3f}\n",
                mode.c_str(), static_cast<unsigned long long>(total), json_list(times).c_str(), json_list(stalls).c_str(),
                prepare_seconds);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dcpp-save-bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
