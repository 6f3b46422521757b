// Saving: torch's save sequence over a ProcessGroup, several ranks played in one process, and
// the row split that `dcpp convert --ranks` saves.
module;
#include <cstddef>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <variant>
#include <vector>
module dcp.checkpoint;
import dcp.error;
import dcp.layout;
import dcp.metadata;
import dcp.planning;
import dcp.storage;

namespace dcp::checkpoint {
metadata::Metadata save(const planning::StateDict& state_dict, storage::StorageWriter& writer,
                        planning::SavePlanner& planner, ProcessGroup* group, int coordinator_rank) {
  using namespace detail;
  SingleProcess single;
  ProcessGroup& pg = group_or_single(group, single, coordinator_rank);
  const int rank = pg.rank();
  const int me = failure_rank(pg);  // the rank a failure here names
  const int size = pg.size();
  const bool is_coordinator = rank == coordinator_rank;
  auto fail = [&](Error e) -> metadata::Metadata {
    writer.abort();
    throw e;
  };

  // 1. Local plans → coordinator.
  auto local = guarded(me, [&] {
    writer.reset();
    writer.set_up_storage_writer(is_coordinator, rank, size);
    planner.set_up_planner(state_dict, is_coordinator);
    return planning::encode_save_plan(writer.prepare_local_plan(planner.create_local_plan()));
  });
  auto gathered = pg.gather(std::move(local), coordinator_rank);

  // 2. Global plan (coordinator) → every rank.
  std::optional<metadata::Metadata> global_metadata;
  std::vector<Bytes> per_rank;
  if (is_coordinator)
    per_rank = coordinate(me, size, gathered, [&](std::vector<std::span<const std::byte>> bodies) {
      auto [global, md] = planner.create_global_plan(planning::decode_save_plans(bodies));
      global = writer.prepare_global_plan(std::move(global));
      global_metadata = std::move(md);
      return planning::encode_save_plans(global);
    });
  const auto central = pg.scatter(std::move(per_rank), coordinator_rank);
  if (auto failed = failure_of(central)) return fail(std::move(*failed));

  // 3. Every rank writes its items; results → coordinator.
  auto results = guarded(me, [&] {
    const auto plan = planner.finish_plan(planning::decode_save_plan(body_of(central)));
    return planning::encode_write_results(writer.write_data(plan, planner));
  });
  auto all_results = pg.gather(std::move(results), coordinator_rank);

  // 4. The coordinator writes `.metadata`; everyone learns the outcome, and the other ranks the
  // metadata (encoded only when there are other ranks: one process keeps what finish returned).
  Bytes outcome;
  std::optional<metadata::Metadata> written;
  if (is_coordinator) {
    if (auto failed = first_failure(all_results)) {
      writer.abort_after_writes();  // every rank is done writing: all of this save's files can go
      outcome = failure_payload(me, *failed);
    } else {
      outcome = guarded(me, [&] {
        std::vector<std::vector<planning::WriteResult>> decoded;
        for (const auto& r : all_results) decoded.push_back(planning::decode_write_results(body_of(r)));
        try {
          written = writer.finish(std::move(*global_metadata), decoded);
        } catch (const Error& e) {
          if (!writer.published()) throw;
          // The checkpoint is in place: say so, or the caller would take it for a failed save.
          Error after(e.code(), "published, then " + e.message());
          const auto& c = e.context();
          if (!c.file.empty()) after.in_file(c.file);
          if (!c.key.empty()) after.for_key(c.key);
          if (c.byte_offset) after.at_offset(*c.byte_offset);
          throw after;
        }
        return size > 1 ? metadata::encode_metadata(*written, written->flavor) : Bytes{};
      });
    }
  }
  outcome = pg.broadcast(std::move(outcome), coordinator_rank);
  if (auto failed = failure_of(outcome)) return fail(std::move(*failed));
  if (written) return *std::move(written);
  return metadata::decode_metadata(body_of(outcome));
}

metadata::Metadata save_ranks(std::span<const planning::StateDict* const> state_dicts,
                              std::span<storage::StorageWriter* const> writers,
                              std::span<planning::SavePlanner* const> planners) {
  const auto n = state_dicts.size();
  if (n == 0 || writers.size() != n || planners.size() != n)
    throw Error(Errc::invalid_argument, "save_ranks needs one state dict, writer and planner per rank");
  if (n == 1) return save(*state_dicts[0], *writers[0], *planners[0]);
  auto groups = make_in_process_group(static_cast<int>(n));
  std::vector<std::optional<metadata::Metadata>> results(n);
  std::vector<std::exception_ptr> errors(n);
  {
    std::vector<std::jthread> ranks;
    for (std::size_t r = 0; r < n; ++r)
      ranks.emplace_back([&, r] {
        try {
          results[r] = save(*state_dicts[r], *writers[r], *planners[r], groups[r].get(), 0);
        } catch (...) {
          errors[r] = std::current_exception();
        }
      });
  }
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
  return std::move(*results[0]);
}

metadata::Metadata save_ranks(std::span<const planning::StateDict> state_dicts,
                              const std::filesystem::path& checkpoint_dir, const storage::WriteOptions& options,
                              const planning::SavePlannerOptions& planner_options) {
  std::vector<std::unique_ptr<storage::FileSystemWriter>> writers;
  std::vector<std::unique_ptr<planning::DefaultSavePlanner>> planners;
  std::vector<const planning::StateDict*> dicts;
  std::vector<storage::StorageWriter*> writer_ptrs;
  std::vector<planning::SavePlanner*> planner_ptrs;
  for (const auto& state_dict : state_dicts) {
    writers.push_back(std::make_unique<storage::FileSystemWriter>(checkpoint_dir, options));
    planners.push_back(std::make_unique<planning::DefaultSavePlanner>(planner_options));
    dicts.push_back(&state_dict);
    writer_ptrs.push_back(writers.back().get());
    planner_ptrs.push_back(planners.back().get());
  }
  return save_ranks(dicts, writer_ptrs, planner_ptrs);
}

std::vector<planning::StateDict> split_rows(const planning::StateDict& state_dict, int ranks) {
  if (ranks < 1) throw Error(Errc::invalid_argument, "--ranks must be at least 1");
  std::vector<planning::StateDict> out(static_cast<std::size_t>(ranks));
  for (const auto& entry : state_dict.entries()) {
    const auto* tensor = std::get_if<planning::SaveTensor>(&entry.value);
    if (!tensor) {
      out[0].add_object(entry.path, std::get<planning::ObjectValue>(entry.value));
      continue;
    }
    if (tensor->sharded || tensor->chunks.size() != 1)
      throw Error(Errc::invalid_argument, "split_rows takes whole tensors").for_key(entry.fqn);
    const auto& whole = tensor->chunks[0].memory;
    if (whole.sizes.empty() || metadata::numel(whole.sizes) == 0) {
      out[0].add_tensor(entry.path, whole, tensor->properties.requires_grad);
      continue;
    }
    const auto parts = layout::chunk_split(whole.sizes, 0, ranks);
    for (int r = 0; r < ranks; ++r) {
      const auto& box = parts[static_cast<std::size_t>(r)];
      std::vector<planning::SaveChunk> chunks;
      if (!layout::is_empty(box)) chunks.push_back({box.offsets, planning::narrow(whole, box.offsets, box.sizes)});
      out[static_cast<std::size_t>(r)].add_sharded_tensor(entry.path, whole.sizes, tensor->properties, std::move(chunks));
    }
  }
  return out;
}

}  // namespace dcp::checkpoint
