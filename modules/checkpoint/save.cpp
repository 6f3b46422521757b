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
import dcp.collective;

namespace dcp::checkpoint {
namespace {

using collective::Bytes;
using collective::Collectives;

constexpr std::string_view kPublished = "published, then ";

// A failure after the coordinator made the checkpoint visible: the checkpoint is complete, so
// it must not read as a failed save.
Error published_then(const Error& e) {
  if (e.message().starts_with(kPublished)) return e;
  Error out(e.code(), std::string(kPublished) + e.message());
  const auto& c = e.context();
  if (!c.file.empty()) out.in_file(c.file);
  if (!c.key.empty()) out.for_key(c.key);
  if (c.byte_offset) out.at_offset(*c.byte_offset);
  if (c.rank) out.on_rank(*c.rank);
  return out;
}

// torch's save_state_dict as two steps over `ranks`: the plans (reduce_scatter), then the
// writes and `.metadata` (all_reduce). With `share_metadata`, the coordinator sends what it
// wrote to every rank, which returns it; without, only the coordinator returns it. Any failure
// aborts this rank's writer unless it published.
std::optional<metadata::Metadata> save_sequence(const planning::StateDict& state_dict, storage::StorageWriter& writer,
                                                planning::SavePlanner& planner, Collectives& ranks,
                                                bool share_metadata) {
  std::optional<metadata::Metadata> global_metadata, written;
  Bytes outcome;
  bool writing = false;  // the write step began: a failure reported in it comes after every rank wrote
  try {
    const auto central = ranks.reduce_scatter(
        "save: plan",
        [&] {
          writer.reset();
          writer.set_up_storage_writer(ranks.is_coordinator(), ranks.rank(), ranks.size());
          planner.set_up_planner(state_dict, ranks.is_coordinator());
          return planning::encode_save_plan(writer.prepare_local_plan(planner.create_local_plan()));
        },
        [&](Collectives::Results bodies) {
          auto [global, md] = planner.create_global_plan(planning::decode_save_plans(bodies));
          global = writer.prepare_global_plan(std::move(global));
          global_metadata = std::move(md);
          return planning::encode_save_plans(global);
        });
    writing = true;
    outcome = ranks.all_reduce(
        "save: write",
        [&] {
          const auto plan = planner.finish_plan(planning::decode_save_plan(central));
          return planning::encode_write_results(writer.write_data(plan, planner));
        },
        [&](Collectives::Results bodies) {
          std::vector<std::vector<planning::WriteResult>> decoded;
          for (const auto& body : bodies) decoded.push_back(planning::decode_write_results(body));
          try {
            written = writer.finish(std::move(*global_metadata), decoded);
            return share_metadata && ranks.size() > 1 ? metadata::encode_metadata(*written, written->flavor) : Bytes{};
          } catch (...) {
            if (writer.published()) throw published_then(current_exception_as_error());
            throw;
          }
        });
  } catch (...) {
    auto e = current_exception_as_error();
    if (writer.published()) throw published_then(e);
    // The coordinator learns a rank's write failure from the gathered results, when every rank
    // has returned from write_data: then all of this save's files can go at once.
    if (writing && ranks.is_coordinator()) writer.abort_after_writes();
    else writer.abort();
    throw e;
  }
  if (written) return written;
  if (!share_metadata) return std::nullopt;
  try {  // the coordinator published: what fails now fails after it
    return metadata::decode_metadata(outcome);
  } catch (...) {
    throw published_then(current_exception_as_error().on_rank(ranks.failure_rank()));
  }
}

}  // namespace

metadata::Metadata save(const planning::StateDict& state_dict, storage::StorageWriter& writer,
                        planning::SavePlanner& planner, collective::ProcessGroup* group, int coordinator_rank) {
  Collectives ranks(group, coordinator_rank);
  return *save_sequence(state_dict, writer, planner, ranks, true);
}

metadata::Metadata save_ranks(std::span<const planning::StateDict* const> state_dicts,
                              std::span<storage::StorageWriter* const> writers,
                              std::span<planning::SavePlanner* const> planners) {
  const auto n = state_dicts.size();
  if (n == 0 || writers.size() != n || planners.size() != n)
    throw Error(Errc::invalid_argument, "save_ranks needs one state dict, writer and planner per rank");
  if (n == 1) return save(*state_dicts[0], *writers[0], *planners[0]);
  auto groups = collective::make_in_process_group(static_cast<int>(n));
  std::optional<metadata::Metadata> written;  // the coordinator's
  std::vector<std::exception_ptr> errors(n);  // caught without allocating: nothing escapes a rank
  {
    std::vector<std::jthread> ranks;
    ranks.reserve(n);
    for (std::size_t r = 0; r < n; ++r)
      ranks.emplace_back([&, r]() noexcept {
        try {
          Collectives collectives(groups[r].get(), 0);
          auto md = save_sequence(*state_dicts[r], *writers[r], *planners[r], collectives, false);
          if (r == 0) written = std::move(md);
        } catch (...) {
          errors[r] = std::current_exception();
        }
      });
  }
  auto error_of = [](const std::exception_ptr& e) {
    try {
      std::rethrow_exception(e);
    } catch (...) {
      return current_exception_as_error();
    }
  };
  // The coordinator's outcome decides whether the checkpoint was published.
  if (written) {
    for (const auto& e : errors)
      if (e) throw published_then(error_of(e));
    return *std::move(written);
  }
  for (const auto& e : errors)
    if (e) std::rethrow_exception(e);
  throw Error(Errc::internal, "save_ranks: the coordinator returned no metadata");
}

metadata::Metadata save_ranks(std::span<const planning::StateDict> state_dicts,
                              const std::filesystem::path& checkpoint_dir, const storage::WriteOptions& options,
                              const planning::SavePlannerOptions& planner_options) {
  std::vector<std::unique_ptr<storage::StorageWriter>> writers;
  std::vector<std::unique_ptr<planning::DefaultSavePlanner>> planners;
  std::vector<const planning::StateDict*> dicts;
  std::vector<storage::StorageWriter*> writer_ptrs;
  std::vector<planning::SavePlanner*> planner_ptrs;
  for (const auto& state_dict : state_dicts) {
    writers.push_back(storage::open_writer(checkpoint_dir, options));
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
