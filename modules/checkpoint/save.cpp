// Saving: torch's save sequence over a ProcessGroup, an in-process group for several ranks in
// one process, and the row split that `dcpp convert --ranks` saves.
module;
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
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
namespace {

using Bytes = std::vector<std::byte>;

// ---- Status-carrying payloads: each collective moves either a rank's result or its failure,
// so one rank's error reaches every rank instead of leaving them waiting.

Bytes ok_payload(const Bytes& body) {
  Bytes out;
  out.reserve(body.size() + 1);
  out.push_back(std::byte{0});
  out.insert(out.end(), body.begin(), body.end());
  return out;
}

// A failure crosses ranks as its parts (code, rank, file, key, offset, bare message), so the
// error every rank throws is the failed rank's own, with its rank: "rank R: FILE: key 'K':
// byte N: message", never wrapped again at each collective it passes through.
void put_u32(Bytes& out, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<std::byte>(v >> (8 * i)));
}
void put_text(Bytes& out, std::string_view text) {
  put_u32(out, static_cast<std::uint32_t>(text.size()));
  for (char c : text) out.push_back(static_cast<std::byte>(c));
}

Bytes failure_payload(int rank, const Error& e) {
  const auto& c = e.context();
  Bytes out{std::byte{1}};
  put_u32(out, static_cast<std::uint32_t>(c.rank.value_or(rank)));
  out.push_back(static_cast<std::byte>(static_cast<int>(e.code())));
  out.push_back(static_cast<std::byte>(c.byte_offset ? 1 : 0));
  const std::uint64_t offset = c.byte_offset.value_or(0);
  put_u32(out, static_cast<std::uint32_t>(offset));
  put_u32(out, static_cast<std::uint32_t>(offset >> 32));
  put_text(out, c.file);
  put_text(out, c.key);
  put_text(out, e.message());
  return out;
}

std::optional<Error> failure_of(const Bytes& payload) {
  if (payload.empty()) return Error(Errc::internal, "empty collective payload");
  if (payload[0] == std::byte{0}) return std::nullopt;
  std::size_t pos = 1;
  bool bad = false;
  auto u32 = [&]() -> std::uint32_t {
    if (payload.size() - pos < 4) {
      bad = true;
      return 0;
    }
    std::uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= std::to_integer<std::uint32_t>(payload[pos + static_cast<std::size_t>(i)]) << (8 * i);
    pos += 4;
    return v;
  };
  auto byte = [&]() -> int {
    if (pos >= payload.size()) {
      bad = true;
      return 0;
    }
    return std::to_integer<int>(payload[pos++]);
  };
  auto text = [&]() -> std::string {
    const auto n = u32();
    if (bad || payload.size() - pos < n) {
      bad = true;
      return {};
    }
    std::string t(reinterpret_cast<const char*>(payload.data() + pos), n);
    pos += n;
    return t;
  };
  const auto rank = u32();
  const auto code = static_cast<Errc>(byte());
  const bool has_offset = byte() != 0;
  const std::uint64_t lo = u32();
  const std::uint64_t offset = lo | (std::uint64_t{u32()} << 32);
  auto file = text();
  auto key = text();
  auto message = text();
  if (bad) return Error(Errc::internal, "short failure payload");
  Error e(code, std::move(message));
  if (!file.empty()) e.in_file(file);
  if (!key.empty()) e.for_key(key);
  if (has_offset) e.at_offset(offset);
  e.on_rank(static_cast<int>(rank));
  return e;
}

std::span<const std::byte> body_of(const Bytes& payload) { return std::span(payload).subspan(1); }

// Runs `step`, turning any exception into this rank's failure payload.
template <class Step>
Bytes guarded(int rank, Step&& step) {
  try {
    return ok_payload(step());
  } catch (...) {
    return failure_payload(rank, current_exception_as_error());
  }
}

// ---- One process: the collectives are identities.

class SingleProcess final : public ProcessGroup {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::vector<Bytes> gather(Bytes local, int) override {
    std::vector<Bytes> all;
    all.push_back(std::move(local));
    return all;
  }
  Bytes scatter(std::vector<Bytes> per_rank, int) override { return std::move(per_rank.at(0)); }
  Bytes broadcast(Bytes bytes, int) override { return bytes; }
};

// ---- Several ranks as threads of one process.

class Hub {
 public:
  explicit Hub(int size) : size_(size) {}

  // Collective `seq` of every rank: `deposit` runs under the lock once per rank, `ready`
  // says when rank `me` may take its result, `take` extracts it.
  template <class Deposit, class Ready, class Take>
  auto run(std::uint64_t seq, Deposit deposit, Ready ready, Take take) {
    std::unique_lock lock(mutex_);
    auto& slot = slots_[seq];
    if (slot.values.empty()) slot.values.resize(static_cast<std::size_t>(size_));
    deposit(slot);
    ++slot.arrived;
    changed_.notify_all();
    changed_.wait(lock, [&] { return ready(slot); });
    auto result = take(slot);
    if (++slot.left == size_) slots_.erase(seq);
    return result;
  }
  int size() const { return size_; }

  struct Slot {
    std::vector<Bytes> values;
    int arrived = 0;
    int left = 0;
    bool published = false;
  };

 private:
  int size_;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::map<std::uint64_t, Slot> slots_;
};

class InProcessGroup final : public ProcessGroup {
 public:
  InProcessGroup(std::shared_ptr<Hub> hub, int rank) : hub_(std::move(hub)), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return hub_->size(); }

  std::vector<Bytes> gather(Bytes local, int root) override {
    return hub_->run(
        next_++, [&](Hub::Slot& s) { s.values[static_cast<std::size_t>(rank_)] = std::move(local); },
        [&](Hub::Slot& s) { return rank_ != root || s.arrived == size(); },
        [&](Hub::Slot& s) { return rank_ == root ? std::move(s.values) : std::vector<Bytes>{}; });
  }
  Bytes scatter(std::vector<Bytes> per_rank, int root) override {
    return hub_->run(
        next_++,
        [&](Hub::Slot& s) {
          if (rank_ != root) return;
          for (std::size_t r = 0; r < s.values.size() && r < per_rank.size(); ++r) s.values[r] = std::move(per_rank[r]);
          s.published = true;
        },
        [&](Hub::Slot& s) { return s.published; },
        [&](Hub::Slot& s) { return std::move(s.values[static_cast<std::size_t>(rank_)]); });
  }
  Bytes broadcast(Bytes bytes, int root) override {
    return hub_->run(
        next_++,
        [&](Hub::Slot& s) {
          if (rank_ != root) return;
          s.values[0] = std::move(bytes);
          s.published = true;
        },
        [&](Hub::Slot& s) { return s.published; }, [&](Hub::Slot& s) { return s.values[0]; });
  }

 private:
  std::shared_ptr<Hub> hub_;
  int rank_;
  std::uint64_t next_ = 0;
};

}  // namespace

std::vector<std::unique_ptr<ProcessGroup>> make_in_process_group(int size) {
  if (size < 1) throw Error(Errc::invalid_argument, "a process group needs at least one rank");
  auto hub = std::make_shared<Hub>(size);
  std::vector<std::unique_ptr<ProcessGroup>> groups;
  for (int r = 0; r < size; ++r) groups.push_back(std::make_unique<InProcessGroup>(hub, r));
  return groups;
}

metadata::Metadata save(const planning::StateDict& state_dict, storage::StorageWriter& writer,
                        planning::SavePlanner& planner, ProcessGroup* group, int coordinator_rank) {
  SingleProcess single;
  ProcessGroup& pg = group ? *group : single;
  const int rank = pg.rank();
  const int size = pg.size();
  if (coordinator_rank < 0 || coordinator_rank >= size)
    throw Error(Errc::invalid_argument, "coordinator rank " + std::to_string(coordinator_rank) + " outside the group");
  const bool is_coordinator = rank == coordinator_rank;
  auto fail = [&](Error e) -> metadata::Metadata {
    writer.abort();
    throw e;
  };

  // 1. Local plans → coordinator.
  auto local = guarded(rank, [&] {
    writer.reset();
    writer.set_up_storage_writer(is_coordinator, rank, size);
    planner.set_up_planner(state_dict, is_coordinator);
    return planning::encode_save_plan(writer.prepare_local_plan(planner.create_local_plan()));
  });
  auto gathered = pg.gather(std::move(local), coordinator_rank);

  // 2. Global plan (coordinator) → every rank.
  std::optional<metadata::Metadata> global_metadata;
  std::vector<Bytes> per_rank;
  if (is_coordinator) {
    std::optional<Error> failed;
    for (const auto& p : gathered)
      if (!failed) failed = failure_of(p);
    if (failed) {
      per_rank.assign(static_cast<std::size_t>(size), failure_payload(rank, *failed));
    } else {
      std::vector<planning::SavePlan> plans;
      Bytes error;
      try {
        for (const auto& p : gathered) plans.push_back(planning::decode_save_plan(body_of(p)));
        auto [global, md] = planner.create_global_plan(std::move(plans));
        global = writer.prepare_global_plan(std::move(global));
        global_metadata = std::move(md);
        for (const auto& plan : global) per_rank.push_back(ok_payload(planning::encode_save_plan(plan)));
      } catch (...) {
        per_rank.assign(static_cast<std::size_t>(size), failure_payload(rank, current_exception_as_error()));
      }
    }
  }
  const auto central = pg.scatter(std::move(per_rank), coordinator_rank);
  if (auto failed = failure_of(central)) return fail(std::move(*failed));

  // 3. Every rank writes its items; results → coordinator.
  auto results = guarded(rank, [&] {
    const auto plan = planner.finish_plan(planning::decode_save_plan(body_of(central)));
    return planning::encode_write_results(writer.write_data(plan, planner));
  });
  auto all_results = pg.gather(std::move(results), coordinator_rank);

  // 4. The coordinator writes `.metadata`; everyone learns the outcome.
  Bytes outcome;
  if (is_coordinator) {
    std::optional<Error> failed;
    for (const auto& r : all_results)
      if (!failed) failed = failure_of(r);
    if (failed) {
      outcome = failure_payload(rank, *failed);
    } else {
      outcome = guarded(rank, [&] {
        std::vector<std::vector<planning::WriteResult>> decoded;
        for (const auto& r : all_results) decoded.push_back(planning::decode_write_results(body_of(r)));
        auto md = writer.finish(std::move(*global_metadata), decoded);
        return metadata::encode_metadata(md, md.flavor);
      });
    }
  }
  outcome = pg.broadcast(std::move(outcome), coordinator_rank);
  if (auto failed = failure_of(outcome)) return fail(std::move(*failed));
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
