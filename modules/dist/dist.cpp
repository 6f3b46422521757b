// The environment, and collective::ProcessGroup over the c10d bridge with its errors as
// dcp::Error.
module;
#include <charconv>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "c10d_bridge.hpp"
module dcp.dist;
import dcp.error;
import dcp.collective;

namespace dcp::dist {
namespace {

namespace bridge = dcp_c10d_bridge;
using Bytes = std::vector<std::byte>;

std::optional<std::string> getenv_lookup(std::string_view name) {
  const char* value = std::getenv(std::string(name).c_str());
  if (!value) return std::nullopt;
  return std::string(value);
}

// A decimal integer in [lo, hi], nullopt when unset and not `required`.
std::optional<long long> integer_var(const Lookup& lookup, std::string_view name, long long lo, long long hi,
                                     bool required) {
  const auto text = lookup(name);
  if (!text) {
    if (!required) return std::nullopt;
    throw Error(Errc::invalid_argument, std::string(name) + " is not set (a launcher such as torchrun sets RANK, "
                                        "WORLD_SIZE, MASTER_ADDR and MASTER_PORT for every rank)");
  }
  return collective::parse_launcher_integer(name, *text, lo, hi);
}

class C10dGroup final : public collective::ProcessGroup {
 public:
  C10dGroup(std::unique_ptr<bridge::Group> group, int rank, int size, std::chrono::milliseconds timeout)
      : group_(std::move(group)), rank_(rank), size_(size), timeout_(timeout) {}
  int rank() const override { return rank_; }
  int size() const override { return size_; }

 private:
  std::vector<Bytes> gather(Bytes local, int root, std::string_view step) override {
    return run("gather", step, root, [&] { return group_->gather(local, root); });
  }
  Bytes scatter(std::vector<Bytes> per_rank, int root, std::string_view step) override {
    return run("scatter", step, root, [&] { return group_->scatter(per_rank, root); });
  }
  Bytes broadcast(Bytes bytes, int root, std::string_view step) override {
    return run("broadcast", step, root, [&] { return group_->broadcast(std::move(bytes), root); });
  }
  // A new ProcessGroupGloo (or NCCL) over the same store, under a prefix every rank derives from
  // how many splits came before, since every rank splits at the same points.
  std::unique_ptr<collective::ProcessGroup> split(std::string_view step) override {
    const auto prefix = "dcpp/split/" + std::to_string(splits_++);
    return run("split", step, 0, [&]() -> std::unique_ptr<collective::ProcessGroup> {
      return std::make_unique<C10dGroup>(group_->split(prefix), rank_, size_, timeout_);
    });
  }

  template <class Fn>
  auto run(std::string_view what, std::string_view step, int root, Fn&& fn) -> decltype(fn()) {
    const auto seq = next_++;
    const auto name = std::string(what) + " #" + std::to_string(seq) + " (" + std::string(step) + ", root " +
                      std::to_string(root) + ", " + std::to_string(size_) + " ranks)";
    if (broken_)
      throw Error(Errc::failed_precondition, name + ": the process group failed in an earlier collective").on_rank(rank_);
    if (root < 0 || root >= size_) throw Error(Errc::invalid_argument, name + ": root outside the group").on_rank(rank_);
    try {
      return fn();
    } catch (const bridge::Failure& f) {
      broken_ = true;
      group_->abandon();
      throw failure(name, f);
    }
  }

  Error failure(const std::string& name, const bridge::Failure& f) const {
    using Kind = bridge::Failure::Kind;
    const auto seconds = std::to_string(std::chrono::duration_cast<std::chrono::seconds>(timeout_).count());
    switch (f.kind) {
      case Kind::timeout:
        return Error(Errc::cancelled, name + " timed out after " + seconds + " s waiting for the other ranks: " + f.what())
            .on_rank(rank_);
      case Kind::lost_peer: {
        const auto whom = f.peer_rank >= 0 ? "rank " + std::to_string(f.peer_rank) : std::string("another rank");
        return Error(Errc::io, name + " lost the connection to " + whom + " (it exited or was killed): " + f.what())
            .on_rank(rank_);
      }
      default:
        return Error(Errc::io, name + " failed: " + f.what()).on_rank(rank_);
    }
  }

  std::unique_ptr<bridge::Group> group_;
  int rank_;
  int size_;
  std::chrono::milliseconds timeout_;
  std::uint64_t next_ = 0;
  std::uint64_t splits_ = 0;
  bool broken_ = false;
};

}  // namespace

std::string_view backend_name(Backend backend) noexcept { return backend == Backend::nccl ? "nccl" : "gloo"; }

bool has_nccl() noexcept { return bridge::has_nccl(); }

Environment read_environment(const Lookup& given) {
  const Lookup lookup = given ? given : Lookup(getenv_lookup);
  Environment env;
  env.world_size = static_cast<int>(*integer_var(lookup, "WORLD_SIZE", 1, 65536, true));
  env.rank = static_cast<int>(*integer_var(lookup, "RANK", 0, env.world_size - 1, true));
  env.local_rank = static_cast<int>(integer_var(lookup, "LOCAL_RANK", 0, 65535, false).value_or(env.rank));
  env.master_addr = lookup("MASTER_ADDR").value_or("");
  if (env.master_addr.empty())
    throw Error(Errc::invalid_argument, "MASTER_ADDR is not set (the address of rank 0's store, e.g. 127.0.0.1)");
  env.master_port = static_cast<std::uint16_t>(*integer_var(lookup, "MASTER_PORT", 1, 65535, true));
  // torchrun's agent serves the store already (its static rendezvous); with --standalone, or
  // without torchrun, rank 0 serves it.
  const auto agent = lookup("TORCHELASTIC_USE_AGENT_STORE").value_or("");
  env.agent_store = agent == "True" || agent == "true" || agent == "1";
  env.restart_count = static_cast<int>(integer_var(lookup, "TORCHELASTIC_RESTART_COUNT", 0, 1 << 30, false).value_or(0));
  env.socket_ifname = lookup("GLOO_SOCKET_IFNAME").value_or("");
  if (auto port = integer_var(lookup, "DCPP_STORE_PORT", 1, 65535, false)) env.store_port = static_cast<std::uint16_t>(*port);
  return env;
}

std::unique_ptr<collective::ProcessGroup> connect(const Environment& env, const Options& options) {
  if (options.timeout.count() <= 0) throw Error(Errc::invalid_argument, "the process group timeout must be positive");
  if (options.backend == Backend::nccl && !bridge::has_nccl())
    throw Error(Errc::unimplemented, "backend nccl: this build has no NCCL process groups (it needs -Dnccl=enabled and a "
                                     "CUDA libtorch; this libtorch is CPU-only); use gloo");
  bridge::Rendezvous r;
  r.master_addr = env.master_addr;
  r.master_port = env.store_port.value_or(env.master_port);
  r.rank = env.rank;
  r.size = env.world_size;
  r.local_rank = env.local_rank;
  const bool agent_store = env.agent_store && !env.store_port;
  r.serve_store = !agent_store && env.rank == 0;
  if (agent_store) r.store_prefix = "/worker/attempt_" + std::to_string(env.restart_count);
  r.socket_ifname = env.socket_ifname;
  r.timeout = options.timeout;
  r.nccl = options.backend == Backend::nccl;
  const auto where = std::string(backend_name(options.backend)) + " process group of " + std::to_string(env.world_size) +
                     " ranks at " + env.master_addr + ":" + std::to_string(r.master_port);
  try {
    return std::make_unique<C10dGroup>(std::make_unique<bridge::Group>(r), env.rank, env.world_size, options.timeout);
  } catch (const bridge::Failure& f) {
    const auto code = f.kind == bridge::Failure::Kind::timeout ? Errc::cancelled : Errc::io;
    std::string hint;
    if (agent_store)
      hint = " (under torchrun's agent store: a torchrun of torch 2.x serves a store protocol this libtorch 1.13 does "
             "not speak; set DCPP_STORE_PORT to a free port for rank 0 to serve dcpp's own store)";
    throw Error(code, "cannot form the " + where + ": " + f.what() + hint).on_rank(env.rank);
  }
}

std::unique_ptr<collective::ProcessGroup> from_environment(const Options& options) {
  return connect(read_environment(), options);
}

}  // namespace dcp::dist
