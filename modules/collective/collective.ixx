// dcp.collective — the collectives of the save and load sequences, and the one way to run them.
//
// A `ProcessGroup` moves bytes between ranks (gather, scatter, broadcast, split), but those
// collectives are protected: only `Collectives` calls them, and it does so as torch's
// _DistWrapper does, one *step* at a time: each rank runs its local work, then the collective,
// with the local work's failure carried inside the payload instead of thrown. So a rank whose
// local step throws still takes part in the collective its peers run, and every rank leaves
// the step together, throwing the same error: the failed rank's own, naming that rank. Code
// above this module cannot reach a raw collective, so it cannot skip one on an error path.
// dcp.dist implements ProcessGroup over c10d (Gloo, NCCL); `make_in_process_group` plays N
// ranks as threads of one process (`dcpp convert --ranks`, tests). Imports: dcp.error.
module;
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string_view>
#include <vector>
export module dcp.collective;
import dcp.error;

export namespace dcp::collective {

using Bytes = std::vector<std::byte>;
class Collectives;

/// A group of ranks. Every rank calls each collective in the same order. An implementation
/// overrides the protected collectives; a collective that cannot complete (a peer lost, a
/// timeout) throws dcp::Error naming this rank, the collective, its `step` and, where it can
/// tell, the ranks it waited for; after that the group is broken and later collectives throw
/// at once. Each handle is used by one thread at a time; `split` gives another thread its own.
class ProcessGroup {
 public:
  virtual ~ProcessGroup() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;

 protected:
  ProcessGroup() = default;
  /// Every rank's `local`, in rank order, on `root`; empty elsewhere.
  virtual std::vector<Bytes> gather(Bytes local, int root, std::string_view step) = 0;
  /// Rank r receives `per_rank[r]` (given on `root` only).
  virtual Bytes scatter(std::vector<Bytes> per_rank, int root, std::string_view step) = 0;
  /// `root`'s bytes on every rank.
  virtual Bytes broadcast(Bytes bytes, int root, std::string_view step) = 0;
  /// A new group of the same ranks whose collectives are independent of this one's, so that
  /// another thread may run a sequence on it while this one is in use. A collective itself.
  virtual std::unique_ptr<ProcessGroup> split(std::string_view step) = 0;

 private:
  friend class Collectives;
};

/// torch's _DistWrapper over a group (null: one process, every collective an identity) with
/// `coordinator` the rank that reduces. Each step runs a local function on the ranks it names,
/// then the collective; when a local function (or the coordinator's reduction) throws on any
/// rank, every rank throws that error, with the failed rank named (the first in rank order;
/// no rank is named in a group of one). A rank-local failure never makes a rank skip a step.
/// `step` names the step in the group's own errors (a timeout, a lost peer).
class Collectives {
 public:
  /// Throws invalid_argument when `coordinator` is outside the group.
  explicit Collectives(ProcessGroup* group = nullptr, int coordinator = 0);

  int rank() const noexcept { return rank_; }
  int size() const noexcept { return size_; }
  int coordinator() const noexcept { return coordinator_; }
  bool is_coordinator() const noexcept { return rank_ == coordinator_; }
  /// The rank a failure of this rank names: -1 in a group of one.
  int failure_rank() const noexcept { return size_ > 1 ? rank_ : -1; }

  /// A local step's result. A large one should leave one byte of spare capacity: the status
  /// byte is appended to it (a copy otherwise).
  using Local = std::function<Bytes()>;
  /// The coordinator's view of every rank's result, in rank order.
  using Results = std::span<const std::span<const std::byte>>;

  /// `local` on every rank, every result to the coordinator, `reduce` there gives one result per
  /// rank, and rank r receives the r-th (torch's reduce_scatter: the global plan).
  Bytes reduce_scatter(std::string_view step, const Local& local,
                       const std::function<std::vector<Bytes>(Results)>& reduce);
  /// `local` on every rank, `reduce` on the coordinator, its result on every rank (torch's
  /// all_reduce: the writes, then `.metadata`).
  Bytes all_reduce(std::string_view step, const Local& local, const std::function<Bytes(Results)>& reduce);
  /// `produce` on `root` (the coordinator when unset), its result on every rank.
  Bytes broadcast(std::string_view step, const Local& produce, std::optional<int> root = std::nullopt);
  /// `local` on every rank; returns when it succeeded on all of them (a local step that every
  /// rank must pass before the next one: building a destination, parsing what was loaded).
  void run(std::string_view step, const std::function<void()>& local);
  /// A group of the same ranks for another thread (null in one process): every rank calls it
  /// at the same point, on the thread that uses this group.
  std::unique_ptr<ProcessGroup> split(std::string_view step);

 private:
  Bytes status_of(const Local& local);
  std::vector<Bytes> gather(Bytes local, std::string_view step);
  ProcessGroup* group_;
  int rank_ = 0;
  int size_ = 1;
  int coordinator_ = 0;
};

/// How long a rank waits for the others unless told otherwise: long enough for a slow peer's
/// file system, short enough that a dead one ends the job in minutes (c10d's own default of 30
/// minutes is not).
inline constexpr std::chrono::seconds kDefaultTimeout{120};

/// The value of a launcher's integer variable (WORLD_SIZE, RANK, MASTER_PORT...) `name` holding
/// `text`: ASCII decimal digits only, in [lo, hi]. Throws invalid_argument naming the variable.
long long parse_launcher_integer(std::string_view name, std::string_view text, long long lo, long long hi);

/// How long a played rank waits for the others.
struct InProcessOptions {
  /// The longest any collective waits for the other ranks; past it the collective throws
  /// `cancelled` naming itself and the ranks that did not arrive.
  std::chrono::milliseconds timeout = kDefaultTimeout;
};

/// `size` ranks played by threads of one process: handle r is rank r's group (each handle used
/// by one thread). For `save_ranks`, tests and simulations; the protocol is the one c10d runs.
std::vector<std::unique_ptr<ProcessGroup>> make_in_process_group(int size, const InProcessOptions& options = {});


}  // namespace dcp::collective

// Not exported: the status every payload carries (collective.cpp).
namespace dcp::collective::detail {
/// A result: `body` and a trailing 0 byte.
Bytes ok_payload(Bytes body);
/// A failure: its parts (code, rank, file, key, offset, bare message) and a trailing 1 byte, so
/// the error every rank throws is the failed rank's own, never wrapped again at each step.
/// `rank` is the failing rank unless `e` names one already; -1 names none.
Bytes failure_payload(int rank, const Error& e);
/// The failure a payload carries, nullopt for a result (internal for a malformed payload).
std::optional<Error> failure_of(std::span<const std::byte> payload);
/// A result payload's body (without its status byte).
std::span<const std::byte> body_of(std::span<const std::byte> payload);
}  // namespace dcp::collective::detail
