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

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
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

// "[host]:port" as gloo's tcp::Address::str() prints an address, with the port (given in host
// order) in either byte order: which one gloo prints has changed between its versions.
std::vector<std::string> address_texts(const std::string& host, std::uint16_t port) {
  const std::string head = "[" + host + "]:";
  return {head + std::to_string(port), head + std::to_string(htons(port))};
}

std::vector<std::string> address_texts(const sockaddr_storage& ss) {
  char host[INET6_ADDRSTRLEN] = {};
  if (ss.ss_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&ss);
    if (!inet_ntop(AF_INET, &in->sin_addr, host, sizeof host)) return {};
    return address_texts(host, ntohs(in->sin_port));
  }
  if (ss.ss_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&ss);
    if (!inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host)) return {};
    return address_texts(host, ntohs(in6->sin6_port));
  }
  return {};
}

// The local "host port" of every TCP socket this process holds (its descriptors' inodes looked
// up in /proc/self/net/tcp and tcp6, which list the whole network namespace's sockets).
std::vector<std::string> own_tcp_endpoints() {
  std::set<unsigned long> inodes;
  if (DIR* fds = ::opendir("/proc/self/fd")) {
    while (const dirent* entry = ::readdir(fds)) {
      char target[64] = {};
      const auto link = std::string("/proc/self/fd/") + entry->d_name;
      const auto n = ::readlink(link.c_str(), target, sizeof target - 1);
      unsigned long inode = 0;
      if (n > 0 && std::sscanf(target, "socket:[%lu]", &inode) == 1) inodes.insert(inode);
    }
    ::closedir(fds);
  }
  std::vector<std::string> out;
  for (const char* table : {"/proc/self/net/tcp", "/proc/self/net/tcp6"}) {
    std::ifstream in(table);
    std::string line;
    std::getline(in, line);  // the header
    while (std::getline(in, line)) {
      std::istringstream fields(line);
      std::string slot, local, remote, state, queues, timer, retransmits, uid, timeout;
      unsigned long inode = 0;
      if (!(fields >> slot >> local >> remote >> state >> queues >> timer >> retransmits >> uid >> timeout >> inode) ||
          !inodes.count(inode))
        continue;
      const auto colon = local.find(':');
      if (colon != 8 && colon != 32) continue;
      // The kernel prints the address as the 32-bit words it stores, each with %08X.
      unsigned char raw[16] = {};
      for (std::size_t w = 0; w < colon / 8; ++w) {
        const auto word = static_cast<std::uint32_t>(std::stoul(local.substr(w * 8, 8), nullptr, 16));
        std::memcpy(raw + 4 * w, &word, 4);
      }
      char host[INET6_ADDRSTRLEN] = {};
      if (!inet_ntop(colon == 8 ? AF_INET : AF_INET6, raw, host, sizeof host)) continue;
      out.push_back(std::string(host) + " " + std::to_string(std::stoul(local.substr(colon + 1), nullptr, 16)));
    }
  }
  return out;
}

// The "[addr]:port" a gloo message names, empty when it names none.
std::string named_address(const std::string& message) {
  const auto open = message.rfind('[');
  const auto close = open == std::string::npos ? std::string::npos : message.find("]:", open);
  if (close == std::string::npos) return {};
  auto end = close + 2;
  while (end < message.size() && message[end] >= '0' && message[end] <= '9') ++end;
  return end == close + 2 ? std::string() : message.substr(open, end - open);
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
  Rendezvous rendezvous;  // how this group formed (its splits form alike)
  int rank = 0;
  int size = 1;
  std::chrono::milliseconds timeout{0};
  c10::Device device{c10::kCPU};
  std::map<std::string, int> peers;  // "[addr]:port" of each rank's gloo sockets -> the rank

  template <class Fn>
  auto translated(Fn&& fn) const -> decltype(fn()) {
    try {
      return fn();
    } catch (...) {
      auto failure = current_failure();
      if (failure.kind == Failure::Kind::lost_peer) {
        const auto it = peers.find(named_address(failure.what()));
        if (it != peers.end()) failure.peer_rank = it->second;
      }
      throw failure;
    }
  }

  // Forms the process group over `over` (every rank of the group calls it with the same store).
  void form(c10::intrusive_ptr<c10d::Store> over);

  // A lost peer's address, as gloo prints it, is the one that peer listened on for this pair
  // (gloo's full-mesh rendezvous leaves each rank's pair addresses in the store under
  // "0/<rank>", ProcessGroupGloo's first device: a record per peer, a sockaddr_storage first),
  // or, on the side that accepted the connection, the peer's end of it: so every rank also
  // publishes the local endpoints of its TCP sockets once the group has formed. Best effort: a
  // layout this code does not recognise leaves the messages as gloo wrote them.
  void learn_peers() noexcept {
    if (size < 2) return;
    try {
      std::string mine;
      for (const auto& endpoint : own_tcp_endpoints()) mine += endpoint + "\n";
      store->set("dcpp/sockets/" + std::to_string(rank), std::vector<std::uint8_t>(mine.begin(), mine.end()));
      for (int r = 0; r < size; ++r) {
        if (r == rank) continue;
        const auto key = "0/" + std::to_string(r);
        if (store->check({key})) {
          const auto bytes = store->get(key);
          const auto count = static_cast<std::size_t>(size - 1);
          if (!bytes.empty() && bytes.size() % count == 0 && bytes.size() / count >= sizeof(sockaddr_storage))
            for (std::size_t i = 0; i < count; ++i) {
              sockaddr_storage ss{};
              std::memcpy(&ss, bytes.data() + i * (bytes.size() / count), sizeof ss);
              for (auto& text : address_texts(ss)) peers.emplace(std::move(text), r);
            }
        }
        const auto theirs = store->get("dcpp/sockets/" + std::to_string(r));  // waits for rank r's
        std::istringstream lines(std::string(theirs.begin(), theirs.end()));
        std::string host;
        unsigned long port = 0;
        while (lines >> host >> port)
          for (auto& text : address_texts(host, static_cast<std::uint16_t>(port))) peers[text] = r;  // live: wins
      }
    } catch (...) {
    }
  }

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

Group::Group(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Group::Group(const Rendezvous& r) : impl_(std::make_unique<Impl>()) {
  impl_->rendezvous = r;
  impl_->rank = r.rank;
  impl_->size = r.size;
  impl_->timeout = r.timeout;
  impl_->translated([&] {
    c10d::TCPStoreOptions store_options;
    store_options.port = r.master_port;
    store_options.isServer = r.serve_store;
    if (r.serve_store) store_options.numWorkers = static_cast<std::size_t>(r.size);
    store_options.waitWorkers = false;  // the process group's own rendezvous waits for them
    store_options.timeout = r.timeout;
    c10::intrusive_ptr<c10d::Store> store = c10::make_intrusive<c10d::TCPStore>(r.master_addr, store_options);
    if (!r.store_prefix.empty()) store = c10::make_intrusive<c10d::PrefixStore>(r.store_prefix, store);
    store->setTimeout(r.timeout);
    impl_->form(std::move(store));
  });
}

void Group::Impl::form(c10::intrusive_ptr<c10d::Store> over) {
  const auto& r = rendezvous;
  store = std::move(over);
  if (r.nccl) {
#if DCP_DIST_NCCL
    // Said here, not as a CUDA error at the first collective: NCCL takes one device per
    // rank (cuda:LOCAL_RANK), and two ranks cannot share one.
    const auto gpus = at::getNumGPUs();
    if (static_cast<std::size_t>(r.local_rank) >= gpus)
      throw Failure(Failure::Kind::other, "LOCAL_RANK " + std::to_string(r.local_rank) + " has no CUDA device (" +
                                              std::to_string(gpus) + " visible); NCCL needs one GPU per rank");
    device = c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(r.local_rank));
    auto options = c10d::ProcessGroupNCCL::Options::create();
    options->timeout = r.timeout;
    // make_intrusive sizes ProcessGroupNCCL from this TU's view of the class, which depends on
    // the NCCL_HAS_* macros of nccl.h: it must be the nccl.h libtorch was built with
    // (subprojects/torch, tools/device).
    pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, r.rank, r.size, options);
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
  pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, r.rank, r.size, options);
  learn_peers();
}

std::unique_ptr<Group> Group::split(const std::string& prefix) {
  auto child = std::make_unique<Impl>();
  child->rendezvous = impl_->rendezvous;
  child->rank = impl_->rank;
  child->size = impl_->size;
  child->timeout = impl_->timeout;
  impl_->translated([&] { child->form(c10::make_intrusive<c10d::PrefixStore>(prefix, impl_->store)); });
  return std::unique_ptr<Group>(new Group(std::move(child)));
}

Group::~Group() = default;

void Group::abandon() noexcept {
  if (!impl_) return;
  (void)impl_->pg.release();
  (void)impl_->store.release();
}

std::vector<std::vector<std::byte>> Group::gather(const std::vector<std::byte>& local, int root) {
  return impl_->translated([&] {
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
  return impl_->translated([&] {
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
  return impl_->translated([&] {
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
