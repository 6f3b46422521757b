// The bridge between dcp.dist and c10d (TCPStore, PrefixStore, ProcessGroupGloo and, when
// built with it, ProcessGroupNCCL): c10d's headers pull in ATen's full headers and gloo, which
// stay out of module units (docs/build.md), so they are included only by c10d_bridge.cpp,
// built as C++17 (C++20 from torch 2.14 on). This header names standard types only.
#pragma once
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace dcp_c10d_bridge {

/// How to form the group (dcp.dist fills it from the environment).
struct Rendezvous {
  std::string master_addr;
  std::uint16_t master_port = 0;
  int rank = 0;
  int size = 1;
  int local_rank = 0;
  bool serve_store = false;   ///< this rank hosts the TCPStore (rank 0 unless an agent serves it)
  std::string store_prefix;   ///< keys under this prefix (torchelastic's agent store); empty: none
  std::string socket_ifname;  ///< GLOO_SOCKET_IFNAME; empty: by address
  std::chrono::milliseconds timeout{120000};
  bool nccl = false;          ///< ProcessGroupNCCL on cuda:local_rank instead of Gloo on the CPU
};

/// What c10d or gloo reported, as one line, and what kind of failure it was.
struct Failure : std::runtime_error {
  enum class Kind { timeout, lost_peer, other };
  Failure(Kind kind, const std::string& message) : std::runtime_error(message), kind(kind) {}
  Kind kind;
  /// For a lost peer: the rank whose address the message names ("Connection closed by peer
  /// [addr]:port"), learned from the addresses the ranks exchanged when the group formed; -1
  /// when the message names none this group knows.
  int peer_rank = -1;
};

/// A c10d process group moving byte buffers of any size (Gloo's collectives need equal sizes:
/// sizes travel first, then payloads padded to the largest, trimmed on arrival). Every
/// operation waits at most the rendezvous timeout and throws Failure.
class Group {
 public:
  explicit Group(const Rendezvous& rendezvous);
  ~Group();
  Group(const Group&) = delete;
  Group& operator=(const Group&) = delete;

  std::vector<std::vector<std::byte>> gather(const std::vector<std::byte>& local, int root);
  std::vector<std::byte> scatter(const std::vector<std::vector<std::byte>>& per_rank, int root);
  std::vector<std::byte> broadcast(std::vector<std::byte> bytes, int root);
  /// A new group of the same ranks over the same store, its keys under `prefix` (every rank
  /// passes the same one): its collectives are independent of this group's.
  std::unique_ptr<Group> split(const std::string& prefix);
  /// After a failure: drops the c10d objects without destroying them, so that this process
  /// never waits in a destructor for a peer that is gone.
  void abandon() noexcept;

 private:
  struct Impl;
  explicit Group(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

/// Whether this build has ProcessGroupNCCL (-Dnccl with a CUDA libtorch).
bool has_nccl() noexcept;

}  // namespace dcp_c10d_bridge
