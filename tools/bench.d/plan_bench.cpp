// dcpp-plan-bench: the coordinator's planning at scale, without processes or files.
//
//   dcpp-plan-bench [--ranks 8192] [--tensors 1000] [--mesh AxB] [--read-metadata]
//
// Every simulated rank holds one block of every tensor in a 2-D layout (a mesh of A x B ranks,
// Shard(0) x Shard(1); by default the squarest mesh for --ranks), plus one replicated scalar
// every rank saves. Times what the coordinator does: de-duplication and the global save plan
// with its checks (DefaultSavePlanner::create_global_plan, torch's), then validating the
// resulting metadata as a loader does (metadata::validate, storage entries included), and
// prints one JSON object: wall seconds per step, and the process's CPU seconds (all threads)
// beside them, which stay comparable when other work shares the machine. The plans themselves
// are built before the clock starts, then encoded and decoded as they travel to the
// coordinator (decode_plans_s: decode_save_plans, as the save sequence calls it; the global
// plans' encoding for the scatter is encode_plans_s). Keys are named like torchtitan's
// (longer than a short string's inline buffer, as real ones are). With --read-metadata, the
// metadata is then encoded as `.metadata` (metadata_bytes) and read back as a loader does
// (read_metadata_s: decode_validated). peak_rss_bytes: the process's peak resident memory (the
// ranks' plans as the coordinator holds them, the global plans and the metadata included).
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <sys/resource.h>

import dcp.error;
import dcp.layout;
import dcp.metadata;
import dcp.planning;

namespace {
using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }
std::uint64_t peak_rss_bytes() {
  rusage r{};
  getrusage(RUSAGE_SELF, &r);
  return static_cast<std::uint64_t>(r.ru_maxrss) * 1024;  // Linux counts kilobytes
}
double cpu_seconds() {
  rusage r{};
  getrusage(RUSAGE_SELF, &r);
  return static_cast<double>(r.ru_utime.tv_sec + r.ru_stime.tv_sec) +
         1e-6 * static_cast<double>(r.ru_utime.tv_usec + r.ru_stime.tv_usec);
}
}  // namespace

int main(int argc, char** argv) {
  int ranks = 8192, tensors = 1000, mesh_a = 0, mesh_b = 0;
  bool read_metadata = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const bool has_value = i + 1 < argc;
    if (a == "--read-metadata") read_metadata = true;
    else if (a == "--ranks" && has_value) ranks = std::atoi(argv[++i]);
    else if (a == "--tensors" && has_value) tensors = std::atoi(argv[++i]);
    else if (a == "--mesh" && has_value) std::sscanf(argv[++i], "%dx%d", &mesh_a, &mesh_b);
    else {
      std::fprintf(stderr, "usage: dcpp-plan-bench [--ranks N] [--tensors N] [--mesh AxB] [--read-metadata]\n");
      return 2;
    }
  }
  if (mesh_a == 0) {
    mesh_a = static_cast<int>(std::sqrt(static_cast<double>(ranks)));
    while (ranks % mesh_a) --mesh_a;
    mesh_b = ranks / mesh_a;
  }
  if (mesh_a * mesh_b != ranks || tensors < 1) {
    std::fprintf(stderr, "dcpp-plan-bench: the mesh must have --ranks ranks\n");
    return 2;
  }
  try {
    const auto t_build = Clock::now();
    std::vector<dcp::planning::SavePlan> plans(static_cast<std::size_t>(ranks));
    dcp::metadata::TensorProperties props;
    for (int t = 0; t < tensors; ++t) {
      // Uneven shapes: torch.chunk leaves some ranks with smaller blocks.
      const dcp::layout::Shape size{mesh_a * 8 + t % 7, mesh_b * 4 + t % 5};
      const auto rows = dcp::layout::chunk_split(size, 0, mesh_a);
      const auto cols = dcp::layout::chunk_split(size, 1, mesh_b);
      const std::string fqn =
          "model.layers." + std::to_string(t / 10) + ".attention.w" + std::to_string(t % 10) + ".weight";
      for (int r = 0; r < ranks; ++r) {
        const auto& row = rows[static_cast<std::size_t>(r / mesh_b)];
        const auto& col = cols[static_cast<std::size_t>(r % mesh_b)];
        dcp::layout::Box box{{row.offsets[0], col.offsets[1]}, {row.sizes[0], col.sizes[1]}};
        dcp::planning::WriteItem item;
        item.index = {fqn, box.offsets, std::nullopt};
        item.type = dcp::planning::WriteItemType::shard;
        item.tensor_data = dcp::planning::TensorWriteData{std::move(box), props, size};
        plans[static_cast<std::size_t>(r)].items.push_back(std::move(item));
      }
    }
    for (auto& plan : plans) {  // a replicated scalar: de-duplication keeps one
      dcp::planning::WriteItem item;
      item.index = {"step", dcp::layout::Shape{}, std::nullopt};
      item.tensor_data = dcp::planning::TensorWriteData{{{}, {}}, props, {}};
      plan.items.push_back(std::move(item));
    }
    // The coordinator gets each rank's plan as bytes and decodes them rank by rank, so each
    // plan's items and key strings lie together in memory; the plans above were built tensor
    // by tensor. Encoded, freed and decoded here, the plans lie as a coordinator's do.
    std::vector<std::vector<std::byte>> encoded;
    for (const auto& plan : plans) encoded.push_back(dcp::planning::encode_save_plan(plan));
    plans.assign(plans.size(), {});
    const auto t_decode = Clock::now();
    plans = dcp::planning::decode_save_plans(std::vector<std::span<const std::byte>>(encoded.begin(), encoded.end()));
    const double decode_s = since(t_decode);
    encoded.clear();
    const double build_s = since(t_build);

    const auto t0 = Clock::now();
    const double cpu0 = cpu_seconds();
    dcp::planning::DefaultSavePlanner planner;  // what the save sequence's coordinator calls
    auto [global, md] = planner.create_global_plan(std::move(plans));
    const double coordinator_s = since(t0);
    const double coordinator_cpu_s = cpu_seconds() - cpu0;
    const auto t_encode = Clock::now();
    (void)dcp::planning::encode_save_plans(global);  // what goes back to the ranks
    const double encode_s = since(t_encode);

    std::uint64_t items = 0;
    for (std::size_t r = 0; r < global.size(); ++r)
      for (const auto& item : global[r].items) {
        md.storage_data.emplace_back(item.index, dcp::metadata::StorageInfo{"__" + std::to_string(r) + "_0.distcp", items * 1024, 1024, {}, 0});
        ++items;
      }
    md.reindex();
    const auto t2 = Clock::now();
    const double cpu2 = cpu_seconds();
    const auto validated = dcp::metadata::validate(std::move(md));
    const double validate_s = since(t2);
    const double validate_cpu_s = cpu_seconds() - cpu2;
    // What every rank of a later load does with this checkpoint's `.metadata` (--read-metadata:
    // at 8,192 ranks the file is 2.7 GB, and reading it takes minutes and most of this VM's memory).
    std::size_t metadata_bytes = 0;
    double read_metadata_s = 0;
    if (read_metadata) {
      global = {};
      const auto bytes = dcp::metadata::encode_metadata(*validated, validated->flavor);
      metadata_bytes = bytes.size();
      const auto t3 = Clock::now();
      (void)dcp::metadata::decode_validated(bytes);
      read_metadata_s = since(t3);
    }

    std::printf("{\"ranks\": %d, \"mesh\": \"%dx%d\", \"tensors\": %d, \"write_items\": %llu, \"build_plans_s\": %.3f, "
                "\"decode_plans_s\": %.3f, \"encode_plans_s\": %.3f, \"coordinator_s\": %.3f, \"coordinator_cpu_s\": %.3f, \"validate_s\": %.3f, \"validate_cpu_s\": %.3f, "
                "\"metadata_bytes\": %zu, \"read_metadata_s\": %.3f, \"peak_rss_bytes\": %llu}\n",
                ranks, mesh_a, mesh_b, tensors, static_cast<unsigned long long>(items), build_s, decode_s, encode_s, coordinator_s,
                coordinator_cpu_s, validate_s, validate_cpu_s, metadata_bytes, read_metadata_s,
                static_cast<unsigned long long>(peak_rss_bytes()));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dcpp-plan-bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
