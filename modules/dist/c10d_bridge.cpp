// The translation unit holding the c10d calls, C++17 or C++20 (see c10d_bridge.hpp).
#include "c10d_bridge.hpp"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#if DCP_DIST_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <algorithm>
#include <cstring>
#include <exception>
#include <type_traits>
#include <utility>

#ifndef USE_C10D_GLOO
#error "modules/dist/meson.build defines USE_C10D_GLOO (ProcessGroupGloo.hpp is empty without it)"
#endif

namespace dcp_c10d_bridge {
namespace {

// c10::Error's text without its backtrace, gloo's without its "[file:line] " prefix, on one line.
std::string message_of(const std::exception& e) {
  std::string text = e.what();
  if (const auto* c10_error = dynamic_cast<const c10::Error*>(&e)) text = c10_error->what_without_backtrace();
  if (!text.empty() && text.front() == '[') {
    if (const auto end = text.find("] "); end != std::string::npos) text.erase(0, end + 2);
  }
  if (const auto newline = text.find('\n'); newline != std::string::npos) text.resize(newline);
  return text;
}

bool contains(const std::string& text, const char* part) { return text.find(part) != std::string::npos; }

// The exception in flight as a Failure, classified by what c10d and gloo say (they have no
// distinct exception types for a timeout or a lost peer).
Failure current_failure() {
  std::string text;
  try {
    throw;
  } catch (const Failure& f) {
    return f;
  } catch (const std::exception& e) {
    text = message_of(e);
  } catch (...) {
    text = "unknown exception";
  }
  auto kind = Failure::Kind::other;
  if (contains(text, "imed out") || contains(text, "imeout")) kind = Failure::Kind::timeout;
  else if (contains(text, "Connection closed") || contains(text, "Connection reset") || contains(text, "Broken pipe") ||
           contains(text, "Connection refused") || contains(text, "closed by peer"))
    kind = Failure::Kind::lost_peer;
  return Failure(kind, text);
}

template <class Fn>
auto translated(Fn&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (...) {
    throw current_failure();
  }
}

// torch 2.x's ProcessGroupGloo and ProcessGroupNCCL are c10d::Backends (ProcessGroup became a
// dispatcher over them); in 1.13 they are ProcessGroups. Both have the collectives used here.
using Collectives = std::conditional_t<std::is_base_of_v<c10d::Backend, c10d::ProcessGroupGloo>, c10d::Backend,
                                       c10d::ProcessGroup>;

bool is_loopback(const std::string& addr) {
  return addr == "localhost" || addr == "::1" || addr.rfind("127.", 0) == 0;
}

}  // namespace

struct Group::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<Collectives> pg;
  int rank = 0;
  int size = 1;
  std::chrono::milliseconds timeout{0};
  c10::Device device{c10::kCPU};

#if DCP_DIST_NCCL
  // torch 2.x's ProcessGroupNCCL wants shutdown() (Python's destroy_process_group) before it is
  // destroyed; without it, it warns and may leave its communicators behind.
  ~Impl() {
    if (!pg || !device.is_cuda()) return;
    try {
      pg->shutdown();
    } catch (...) {
    }
  }
#endif

  void wait(const c10::intrusive_ptr<c10d::Work>& work) const { work->wait(timeout); }

  // Tensors live on the group's device (the CPU for Gloo, cuda:local_rank for NCCL).
  at::Tensor bytes_tensor(const std::vector<std::byte>& bytes, std::int64_t padded) const {
    auto t = at::zeros({padded}, at::TensorOptions().dtype(at::kByte));
    if (!bytes.empty()) std::memcpy(t.data_ptr(), bytes.data(), bytes.size());
    return t.to(device);
  }
  static std::vector<std::byte> to_bytes(const at::Tensor& t, std::int64_t size) {
    const auto host = t.cpu();
    std::vector<std::byte> out(static_cast<std::size_t>(size));
    if (size > 0) std::memcpy(out.data(), host.data_ptr(), out.size());
    return out;
  }
  at::Tensor sizes_tensor(std::int64_t n) const {
    return at::zeros({n}, at::TensorOptions().dtype(at::kLong)).to(device);
  }

  // Every rank's byte count.
  std::vector<std::int64_t> allgather_size(std::size_t local) {
    std::vector<at::Tensor> in{sizes_tensor(1).fill_(static_cast<std::int64_t>(local))};
    std::vector<std::vector<at::Tensor>> out(1);
    for (int r = 0; r < size; ++r) out[0].push_back(sizes_tensor(1));
    wait(pg->allgather(out, in));
    std::vector<std::int64_t> sizes;
    for (const auto& t : out[0]) sizes.push_back(t.cpu().item<std::int64_t>());
    return sizes;
  }

  // `root`'s tensor of `n` int64 values on every rank.
  std::vector<std::int64_t> broadcast_sizes(std::vector<std::int64_t> values, std::int64_t n, int root) {
    auto host = at::zeros({n}, at::TensorOptions().dtype(at::kLong));
    if (rank == root) std::copy(values.begin(), values.end(), host.data_ptr<std::int64_t>());
    std::vector<at::Tensor> tensors{host.to(device)};
    c10d::BroadcastOptions options;
    options.rootRank = root;
    wait(pg->broadcast(tensors, options));
    const auto back = tensors[0].cpu();
    return std::vector<std::int64_t>(back.data_ptr<std::int64_t>(), back.data_ptr<std::int64_t>() + n);
  }
};

Group::Group(const Rendezvous& r) : impl_(std::make_unique<Impl>()) {
  impl_->rank = r.rank;
  impl_->size = r.size;
  impl_->timeout = r.timeout;
  translated([&] {
    c10d::TCPStoreOptions store_options;
    store_options.port = r.master_port;
    store_options.isServer = r.serve_store;
    if (r.serve_store) store_options.numWorkers = static_cast<std::size_t>(r.size);
    store_options.waitWorkers = false;  // the process group's own rendezvous waits for them
    store_options.timeout = r.timeout;
    c10::intrusive_ptr<c10d::Store> store = c10::make_intrusive<c10d::TCPStore>(r.master_addr, store_options);
    if (!r.store_prefix.empty()) store = c10::make_intrusive<c10d::PrefixStore>(r.store_prefix, store);
    store->setTimeout(r.timeout);
    impl_->store = store;
    if (r.nccl) {
#if DCP_DIST_NCCL
      // Said here, not as a CUDA error at the first collective: NCCL takes one device per
      // rank (cuda:LOCAL_RANK), and two ranks cannot share one.
      const auto gpus = at::getNumGPUs();
      if (static_cast<std::size_t>(r.local_rank) >= gpus)
        throw Failure(Failure::Kind::other, "LOCAL_RANK " + std::to_string(r.local_rank) + " has no CUDA device (" +
                                                std::to_string(gpus) + " visible); NCCL needs one GPU per rank");
      impl_->device = c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(r.local_rank));
      auto options = c10d::ProcessGroupNCCL::Options::create();
      options->timeout = r.timeout;
      // make_intrusive sizes ProcessGroupNCCL from this TU's view of the class, which depends on
      // the NCCL_HAS_* macros of nccl.h: it must be the nccl.h libtorch was built with
      // (subprojects/torch, tools/device).
      impl_->pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, r.rank, r.size, options);
#else
      throw Failure(Failure::Kind::other, "this build has no NCCL");
#endif
      return;
    }
    auto options = c10d::ProcessGroupGloo::Options::create(r.timeout);
    // Like torch's Python: the interface GLOO_SOCKET_IFNAME names, else the master's address
    // when it is local (one machine), else this host's own address.
    if (!r.socket_ifname.empty())
      options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(r.socket_ifname));
    else if (is_loopback(r.master_addr))
      options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(r.master_addr));
    else
      options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    impl_->pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, r.rank, r.size, options);
  });
}

Group::~Group() = default;

void Group::abandon() noexcept {
  if (!impl_) return;
  (void)impl_->pg.release();
  (void)impl_->store.release();
}

std::vector<std::vector<std::byte>> Group::gather(const std::vector<std::byte>& local, int root) {
  return translated([&] {
    auto& g = *impl_;
    const auto sizes = g.allgather_size(local.size());
    const auto padded = *std::max_element(sizes.begin(), sizes.end());
    std::vector<std::vector<std::byte>> out;
    if (g.rank == root) out.resize(static_cast<std::size_t>(g.size));
    if (padded == 0) return out;  // every rank knows: nothing to send
    std::vector<at::Tensor> in{g.bytes_tensor(local, padded)};
    std::vector<std::vector<at::Tensor>> received;
    if (g.rank == root) {
      received.resize(1);
      for (int r = 0; r < g.size; ++r) received[0].push_back(g.bytes_tensor({}, padded));
    }
    c10d::GatherOptions options;
    options.rootRank = root;
    g.wait(g.pg->gather(received, in, options));
    if (g.rank == root)
      for (int r = 0; r < g.size; ++r) out[static_cast<std::size_t>(r)] = Impl::to_bytes(received[0][static_cast<std::size_t>(r)], sizes[static_cast<std::size_t>(r)]);
    return out;
  });
}

std::vector<std::byte> Group::scatter(const std::vector<std::vector<std::byte>>& per_rank, int root) {
  return translated([&] {
    auto& g = *impl_;
    std::vector<std::int64_t> mine;
    if (g.rank == root) {
      if (per_rank.size() != static_cast<std::size_t>(g.size))
        throw Failure(Failure::Kind::other, "scatter needs one payload per rank on the root");
      for (const auto& p : per_rank) mine.push_back(static_cast<std::int64_t>(p.size()));
    }
    const auto sizes = g.broadcast_sizes(std::move(mine), g.size, root);
    const auto padded = *std::max_element(sizes.begin(), sizes.end());
    if (padded == 0) return std::vector<std::byte>{};
    std::vector<at::Tensor> out{g.bytes_tensor({}, padded)};
    std::vector<std::vector<at::Tensor>> in;
    if (g.rank == root) {
      in.resize(1);
      for (const auto& p : per_rank) in[0].push_back(g.bytes_tensor(p, padded));
    }
    c10d::ScatterOptions options;
    options.rootRank = root;
    g.wait(g.pg->scatter(out, in, options));
    return Impl::to_bytes(out[0], sizes[static_cast<std::size_t>(g.rank)]);
  });
}

std::vector<std::byte> Group::broadcast(std::vector<std::byte> bytes, int root) {
  return translated([&] {
    auto& g = *impl_;
    const auto n = g.broadcast_sizes({static_cast<std::int64_t>(bytes.size())}, 1, root)[0];
    if (n == 0) return std::vector<std::byte>{};
    c10d::BroadcastOptions options;
    options.rootRank = root;
    if (g.device.is_cpu()) {
      // Read-once sends whole batches of tensor bytes: on the CPU the collective works on the
      // vector's own memory, with no staging copies.
      std::vector<std::byte> out;
      if (g.rank != root) out.resize(static_cast<std::size_t>(n));
      auto& memory = g.rank == root ? bytes : out;
      std::vector<at::Tensor> tensors{at::from_blob(memory.data(), {n}, at::TensorOptions().dtype(at::kByte))};
      g.wait(g.pg->broadcast(tensors, options));
      return g.rank == root ? std::move(bytes) : out;
    }
    std::vector<at::Tensor> tensors{g.bytes_tensor(g.rank == root ? bytes : std::vector<std::byte>{}, n)};
    g.wait(g.pg->broadcast(tensors, options));
    if (g.rank == root) return std::move(bytes);
    return Impl::to_bytes(tensors[0], n);
  });
}

bool has_nccl() noexcept { return DCP_DIST_NCCL != 0; }

}  // namespace dcp_c10d_bridge
