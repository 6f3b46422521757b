// dcp.dist — `collective::ProcessGroup` over c10d: the collectives of the save and load
// sequences between processes, as torchrun (or any launcher that sets torch's environment
// variables) starts them.
//
// `from_environment` reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT, meets
// the other ranks through a c10d TCPStore (rank 0 serves it, or, under torchrun's agent store,
// TORCHELASTIC_USE_AGENT_STORE=True, every rank is a client under the agent's
// "/worker/attempt_N" prefix) and forms a ProcessGroupGloo on the CPU (NCCL with -Dnccl and a
// CUDA libtorch). A torchrun of torch 2.x serves a store whose protocol libtorch 1.13's client
// does not speak (2.x added a query type in front of the others): DCPP_STORE_PORT=<port> then
// makes rank 0 serve dcpp's own store on MASTER_ADDR:<port> instead. Gather, scatter and broadcast move byte buffers of any size, every wait is
// bounded by `Options::timeout`, and what c10d or gloo throws becomes a dcp::Error naming this
// rank, the collective and its step: `io` for a lost peer (a rank exited or was killed, named
// by its rank: the addresses gloo's messages print are mapped to the ranks that published them
// when the group formed), `cancelled` for a timeout. After such an error the group is broken:
// later collectives throw at once. `split` forms a new Gloo (or NCCL) group of the same ranks
// over the same store, under a prefix of its own. The libtorch layer only: c10d's headers stay
// in the bridge (c10d_bridge.cpp). Imports: dcp.error, dcp.collective (the ProcessGroup
// interface).
module;
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
export module dcp.dist;
import dcp.error;
import dcp.collective;

export namespace dcp::dist {

enum class Backend { gloo, nccl };
/// "gloo" / "nccl".
std::string_view backend_name(Backend backend) noexcept;

struct Options {
  /// The longest any rendezvous or collective may wait for the other ranks (c10d's default of
  /// 30 minutes is far too long for a rank that died).
  std::chrono::milliseconds timeout = collective::kDefaultTimeout;
  Backend backend = Backend::gloo;
};

/// The launcher's view of this process.
struct Environment {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;              ///< LOCAL_RANK; RANK when unset (one machine)
  std::string master_addr;
  std::uint16_t master_port = 0;
  bool agent_store = false;        ///< TORCHELASTIC_USE_AGENT_STORE=True: torchrun serves the store
  int restart_count = 0;           ///< TORCHELASTIC_RESTART_COUNT (the agent store's key prefix)
  std::string socket_ifname;       ///< GLOO_SOCKET_IFNAME, if set
  /// DCPP_STORE_PORT: rank 0 serves dcpp's own store on this port, whatever torchrun serves.
  std::optional<std::uint16_t> store_port;
};

/// A variable's value, nullopt when unset.
using Lookup = std::function<std::optional<std::string>(std::string_view name)>;

/// Reads the environment (`lookup`, getenv when empty). Throws invalid_argument naming the
/// variable when RANK, WORLD_SIZE, MASTER_ADDR or MASTER_PORT is missing, or any of them (or
/// LOCAL_RANK, TORCHELASTIC_RESTART_COUNT, DCPP_STORE_PORT) is malformed: not a decimal number, WORLD_SIZE
/// outside [1, 65536], RANK outside [0, WORLD_SIZE), a port outside [1, 65535].
Environment read_environment(const Lookup& lookup = {});

/// Forms the process group of `env` (every rank of the world must call it). Throws
/// unimplemented for NCCL in a build without it, invalid_argument for a bad timeout, and io
/// (or cancelled, past the timeout) when the ranks cannot meet.
std::unique_ptr<collective::ProcessGroup> connect(const Environment& env, const Options& options = {});

/// connect(read_environment(), options).
std::unique_ptr<collective::ProcessGroup> from_environment(const Options& options = {});

/// Whether this build has NCCL process groups (-Dnccl=enabled with a CUDA libtorch).
bool has_nccl() noexcept;

}  // namespace dcp::dist
