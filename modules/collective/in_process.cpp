// Several ranks played by threads of one process: a hub where each collective's payloads meet,
// every wait bounded by the group's timeout.
module;
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>
module dcp.collective;
import dcp.error;

namespace dcp::collective {
namespace {

using Clock = std::chrono::steady_clock;

class Hub {
 public:
  Hub(int size, std::chrono::milliseconds timeout) : size_(size), timeout_(timeout) {}
  int size() const { return size_; }
  std::chrono::milliseconds timeout() const { return timeout_; }

  struct Slot {
    std::vector<Bytes> values;
    std::vector<bool> arrived;
    int arrivals = 0;
    int left = 0;
    bool published = false;  // the root's payloads are in (scatter, broadcast)
    std::shared_ptr<Hub> child;
  };

  // Collective `seq` of rank `me`: `deposit` runs under the lock, `ready` says when `me` may
  // take its result, `take` extracts it. Waiting past the timeout (or finding the hub broken by
  // another rank's timeout) throws cancelled naming `name` and the ranks `awaited` lists.
  template <class Deposit, class Ready, class Awaited, class Take>
  auto run(std::uint64_t seq, int me, const std::string& name, Deposit deposit, Ready ready, Awaited awaited,
           Take take) {
    const auto deadline = Clock::now() + timeout_;
    std::unique_lock lock(mutex_);
    if (broken_) throw Error(Errc::failed_precondition, name + ": the process group failed in an earlier collective").on_rank(me);
    auto& slot = slots_[seq];
    if (slot.values.empty()) {
      slot.values.resize(static_cast<std::size_t>(size_));
      slot.arrived.resize(static_cast<std::size_t>(size_));
    }
    deposit(slot);
    slot.arrived[static_cast<std::size_t>(me)] = true;
    ++slot.arrivals;
    changed_.notify_all();
    const bool woken = changed_.wait_until(lock, deadline, [&] { return broken_ || ready(slot); });
    if (!ready(slot)) {
      // Every rank still waiting gives up with this one: the collective it waits for cannot
      // complete once a rank has left the sequence.
      const bool own_timeout = !woken && !broken_;
      broken_ = true;
      changed_.notify_all();
      throw Error(Errc::cancelled, name + (own_timeout ? " timed out after " + seconds()
                                                       : " gave up when another rank's collective timed out") +
                                       " waiting for " + awaited(slot) + ", which did not arrive")
          .on_rank(me);
    }
    auto result = take(slot);
    if (++slot.left == size_) slots_.erase(seq);
    return result;
  }

  // "rank 3" or "ranks 1, 2" among those of `slot` that have not arrived.
  std::string missing(const Slot& slot) const {
    std::string list;
    int count = 0;
    for (int r = 0; r < size_; ++r)
      if (!slot.arrived[static_cast<std::size_t>(r)]) {
        if (count < 8) list += (count ? ", " : "") + std::to_string(r);
        ++count;
      }
    if (count > 8) list += " and " + std::to_string(count - 8) + " more";
    return (count == 1 ? "rank " : "ranks ") + list;
  }

 private:
  std::string seconds() const {
    const auto ms = timeout_.count();
    return ms % 1000 == 0 ? std::to_string(ms / 1000) + " s" : std::to_string(ms) + " ms";
  }

  int size_;
  std::chrono::milliseconds timeout_;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::map<std::uint64_t, Slot> slots_;
  bool broken_ = false;
};

class InProcessGroup final : public ProcessGroup {
 public:
  InProcessGroup(std::shared_ptr<Hub> hub, int rank) : hub_(std::move(hub)), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return hub_->size(); }

 private:
  std::string name(const char* what, std::uint64_t seq, int root, std::string_view step) const {
    return std::string(what) + " #" + std::to_string(seq) + " (" + std::string(step) + ", root " + std::to_string(root) +
           ", " + std::to_string(size()) + " ranks)";
  }
  void check_root(int root, const std::string& name) const {
    if (root < 0 || root >= size()) throw Error(Errc::invalid_argument, name + ": root outside the group").on_rank(rank_);
  }
  // The root, when it is what a rank waits for.
  auto root_awaited(int root) {
    return [root](const Hub::Slot&) { return "rank " + std::to_string(root) + " (the root)"; };
  }

  std::vector<Bytes> gather(Bytes local, int root, std::string_view step) override {
    const auto seq = next_++;
    const auto what = name("gather", seq, root, step);
    check_root(root, what);
    return hub_->run(
        seq, rank_, what, [&](Hub::Slot& s) { s.values[static_cast<std::size_t>(rank_)] = std::move(local); },
        [&](Hub::Slot& s) { return rank_ != root || s.arrivals == size(); },
        [&](const Hub::Slot& s) { return hub_->missing(s); },
        [&](Hub::Slot& s) { return rank_ == root ? std::move(s.values) : std::vector<Bytes>{}; });
  }
  Bytes scatter(std::vector<Bytes> per_rank, int root, std::string_view step) override {
    const auto seq = next_++;
    const auto what = name("scatter", seq, root, step);
    check_root(root, what);
    return hub_->run(
        seq, rank_, what,
        [&](Hub::Slot& s) {
          if (rank_ != root) return;
          for (std::size_t r = 0; r < s.values.size() && r < per_rank.size(); ++r) s.values[r] = std::move(per_rank[r]);
          s.published = true;
        },
        [&](Hub::Slot& s) { return s.published; }, root_awaited(root),
        [&](Hub::Slot& s) { return std::move(s.values[static_cast<std::size_t>(rank_)]); });
  }
  Bytes broadcast(Bytes bytes, int root, std::string_view step) override {
    const auto seq = next_++;
    const auto what = name("broadcast", seq, root, step);
    check_root(root, what);
    return hub_->run(
        seq, rank_, what,
        [&](Hub::Slot& s) {
          if (rank_ != root) return;
          s.values[0] = std::move(bytes);
          s.published = true;
        },
        [&](Hub::Slot& s) { return s.published; }, root_awaited(root),
        // The last rank to take it moves it: N ranks cost N - 1 copies, not N.
        [&](Hub::Slot& s) -> Bytes {
          if (s.left + 1 == size()) return std::move(s.values[0]);
          return s.values[0];
        });
  }
  // Every rank takes the same child hub, made by the first to arrive.
  std::unique_ptr<ProcessGroup> split(std::string_view step) override {
    const auto seq = next_++;
    auto child = hub_->run(
        seq, rank_, name("split", seq, 0, step),
        [&](Hub::Slot& s) {
          if (!s.child) s.child = std::make_shared<Hub>(hub_->size(), hub_->timeout());
        },
        [](Hub::Slot&) { return true; }, [](const Hub::Slot&) { return std::string(); },
        [](Hub::Slot& s) { return s.child; });
    return std::make_unique<InProcessGroup>(std::move(child), rank_);
  }

  std::shared_ptr<Hub> hub_;
  int rank_;
  std::uint64_t next_ = 0;
};

}  // namespace

std::vector<std::unique_ptr<ProcessGroup>> make_in_process_group(int size, const InProcessOptions& options) {
  if (size < 1) throw Error(Errc::invalid_argument, "a process group needs at least one rank");
  if (options.timeout.count() <= 0) throw Error(Errc::invalid_argument, "the process group timeout must be positive");
  auto hub = std::make_shared<Hub>(size, options.timeout);
  std::vector<std::unique_ptr<ProcessGroup>> groups;
  for (int r = 0; r < size; ++r) groups.push_back(std::make_unique<InProcessGroup>(hub, r));
  return groups;
}

}  // namespace dcp::collective
