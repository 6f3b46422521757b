// The collectives' plumbing shared by the save and load sequences: status-carrying payloads,
// the one-process group, and several ranks played by threads of one process.
module;
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>
module dcp.checkpoint;
import dcp.error;

namespace dcp::checkpoint {
namespace detail {

Bytes ok_payload(std::span<const std::byte> body) {
  Bytes out;
  out.reserve(body.size() + 1);
  out.push_back(std::byte{0});
  out.insert(out.end(), body.begin(), body.end());
  return out;
}

namespace {

constexpr std::uint32_t kNoRank = 0xffffffff;

void put_text(Bytes& out, std::string_view text) {
  put_le(out, text.size(), 4);
  for (char c : text) out.push_back(static_cast<std::byte>(c));
}

}  // namespace

void put_le(Bytes& out, std::uint64_t v, int width) {
  for (int i = 0; i < width; ++i) out.push_back(static_cast<std::byte>(v >> (8 * i)));
}

std::uint64_t get_le(std::span<const std::byte> in, int width) {
  std::uint64_t v = 0;
  for (int i = 0; i < width; ++i) v |= std::to_integer<std::uint64_t>(in[static_cast<std::size_t>(i)]) << (8 * i);
  return v;
}

Bytes failure_payload(int rank, const Error& e) {
  const auto& c = e.context();
  Bytes out{std::byte{1}};
  put_le(out, static_cast<std::uint32_t>(c.rank.value_or(rank)), 4);  // -1: kNoRank
  out.push_back(static_cast<std::byte>(static_cast<int>(e.code())));
  out.push_back(static_cast<std::byte>(c.byte_offset ? 1 : 0));
  put_le(out, c.byte_offset.value_or(0), 8);
  put_text(out, c.file);
  put_text(out, c.key);
  put_text(out, e.message());
  return out;
}

std::optional<Error> failure_of(std::span<const std::byte> payload) {
  if (payload.empty()) return Error(Errc::internal, "empty collective payload");
  if (payload[0] == std::byte{0}) return std::nullopt;
  std::size_t pos = 1;
  bool bad = false;
  auto u32 = [&]() -> std::uint32_t {
    if (payload.size() - pos < 4) {
      bad = true;
      return 0;
    }
    const auto v = static_cast<std::uint32_t>(get_le(payload.subspan(pos), 4));
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
  if (rank != kNoRank) e.on_rank(static_cast<int>(rank));
  return e;
}

std::span<const std::byte> body_of(const Bytes& payload) { return std::span(payload).subspan(1); }

std::optional<Error> first_failure(const std::vector<Bytes>& payloads) {
  for (const auto& p : payloads)
    if (auto failed = failure_of(p)) return failed;
  return std::nullopt;
}

std::vector<Bytes> SingleProcess::gather(Bytes local, int) {
  std::vector<Bytes> all;
  all.push_back(std::move(local));
  return all;
}

Bytes SingleProcess::scatter(std::vector<Bytes> per_rank, int) { return std::move(per_rank.at(0)); }

void agree(ProcessGroup& pg, int coordinator_rank, Bytes status) {
  auto statuses = pg.gather(std::move(status), coordinator_rank);
  Bytes outcome;
  if (pg.rank() == coordinator_rank) {
    auto failed = first_failure(statuses);
    outcome = failed ? failure_payload(failure_rank(pg), *failed) : ok_payload({});
  }
  outcome = pg.broadcast(std::move(outcome), coordinator_rank);
  if (auto failed = failure_of(outcome)) throw *failed;
}

int failure_rank(const ProcessGroup& pg) { return pg.size() > 1 ? pg.rank() : -1; }

ProcessGroup& group_or_single(ProcessGroup* group, SingleProcess& single, int coordinator_rank) {
  ProcessGroup& pg = group ? *group : single;
  if (coordinator_rank < 0 || coordinator_rank >= pg.size())
    throw Error(Errc::invalid_argument, "coordinator rank " + std::to_string(coordinator_rank) + " outside the group of " +
                                            std::to_string(pg.size()));
  return pg;
}

}  // namespace detail

void run_agreed(ProcessGroup* group, const std::function<void()>& step, int coordinator_rank) {
  detail::SingleProcess single;
  ProcessGroup& pg = detail::group_or_single(group, single, coordinator_rank);
  auto status = detail::guarded(detail::failure_rank(pg), [&] {
    step();
    return detail::Bytes{};
  });
  if (pg.size() == 1) {
    if (auto failed = detail::failure_of(status)) throw *failed;
    return;
  }
  detail::agree(pg, coordinator_rank, std::move(status));
}

namespace {

using detail::Bytes;

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

}  // namespace dcp::checkpoint
