// The program the crash trials start and kill (tests/save/test_save_crash.cpp): saves the
// deterministic state dict of generation GEN (child_values.hpp) into DIR with overwrite and
// sync_files on, two files per rank.
//
//   save_child DIR GEN [--mb N] [--fsize BYTES] [--no-sync] [--no-overwrite]
//
// --mb: total size of the data tensors (default 8). --fsize: RLIMIT_FSIZE for this process
// (SIGXFSZ ignored, so an oversized write fails with EFBIG). Prints "saved" and exits 0 on
// success; prints "error: CODE: MESSAGE" and exits 3 when the save throws a dcp::Error.
#include <sys/resource.h>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "child_values.hpp"

import dcp.error;
import dcp.metadata;
import dcp.planning;
import dcp.storage;
import dcp.checkpoint;

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: save_child DIR GEN [--mb N] [--fsize BYTES] [--no-sync] [--no-overwrite]\n");
    return 2;
  }
  const std::string dir = argv[1];
  const std::int64_t gen = std::atoll(argv[2]);
  double mb = 8;
  bool sync = true;
  bool overwrite = true;
  for (int i = 3; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--mb" && i + 1 < argc) {
      mb = std::atof(argv[++i]);
    } else if (a == "--fsize" && i + 1 < argc) {
      const rlim_t limit = std::strtoull(argv[++i], nullptr, 10);
      std::signal(SIGXFSZ, SIG_IGN);
      const rlimit rl{limit, limit};
      if (::setrlimit(RLIMIT_FSIZE, &rl) != 0) {
        std::perror("setrlimit");
        return 2;
      }
    } else if (a == "--no-sync") {
      sync = false;
    } else if (a == "--no-overwrite") {
      overwrite = false;
    } else {
      std::fprintf(stderr, "save_child: unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  const auto elems = static_cast<std::size_t>(mb * (1 << 20) / 4 / child_values::kDataTensors);
  auto marker = child_values::marker(gen);
  std::vector<std::vector<std::uint32_t>> data;
  for (int i = 0; i < child_values::kDataTensors; ++i) data.push_back(child_values::data(gen, i, elems));
  namespace pl = dcp::planning;
  pl::StateDict sd;
  sd.add_tensor({std::string("marker")}, pl::contiguous_slice(reinterpret_cast<std::byte*>(marker.data()), dcp::DType::int64,
                                                              {child_values::kMarkerElems}));
  for (int i = 0; i < child_values::kDataTensors; ++i)
    sd.add_tensor({std::string("data"), std::int64_t{i}},
                  pl::contiguous_slice(reinterpret_cast<std::byte*>(data[static_cast<std::size_t>(i)].data()),
                                       dcp::DType::float32, {static_cast<std::int64_t>(elems)}));
  sd.add_object({std::string("generation")}, pl::ObjectValue::integer(gen));
  dcp::storage::WriteOptions options;
  options.overwrite = overwrite;
  options.sync_files = sync;
  options.files_per_rank = 2;
  try {
    dcp::storage::FileSystemWriter writer(dir, options);
    pl::DefaultSavePlanner planner;
    (void)dcp::checkpoint::save(sd, writer, planner);
  } catch (const dcp::Error& e) {
    std::printf("error: %s: %s\n", std::string(dcp::errc_name(e.code())).c_str(), e.what());
    return 3;
  }
  std::printf("saved\n");
  return 0;
}
