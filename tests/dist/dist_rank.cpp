// One rank of the dcp.dist suite's multi-process runs (tests/dist/test_dist.cpp launches 2-4
// of them with RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT and LOCAL_RANK set):
//
//   dist_rank collectives              collective::Collectives' steps (reduce_scatter,
//                                      all_reduce, broadcast) with payloads of many sizes
//                                      (empty included), every rank the root in turn, checked;
//                                      then a split group, used beside the first
//   dist_rank load CKPT CASE_DIR [--die-on-rank R]
//                                      checkpoint::load over the group of this rank's rows
//                                      (planning::row_chunks) of every tensor and every object;
//                                      each tensor's rows compared with CASE_DIR/expected.json's
//                                      bytes. --die-on-rank: rank R kills itself (SIGKILL) in
//                                      the middle of its reads.
//   dist_rank async_save OUT           Checkpointer::async_save of this rank's rows of a 64 x 1024
//                                      float tensor into OUT, while this thread runs 50 steps on
//                                      the group; then every rank loads the tensor whole over the
//                                      group and compares it with the values of the call.
//   --backend nccl                     collectives or load over NCCL on cuda:LOCAL_RANK (default gloo)
//
// Prints "ok ..." and exits 0, or "dist_rank: error: ..." on stderr and exits 1.
#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "support.hpp"
import dcp.error;
import dcp.layout;
import dcp.metadata;
import dcp.planning;
import dcp.storage;
import dcp.collective;
import dcp.checkpoint;
import dcp.dist;

namespace {

using Bytes = std::vector<std::byte>;

[[noreturn]] void fail(const std::string& what) { throw dcp::Error(dcp::Errc::internal, what); }

// A payload whose bytes say who sent it, for which step, to whom.
Bytes payload(std::size_t size, int from, int step, int to) {
  Bytes b(size);
  for (std::size_t i = 0; i < size; ++i) b[i] = static_cast<std::byte>((i * 31 + from * 7 + step * 13 + to * 3) & 0xff);
  return b;
}

// Sizes by (step, rank): empty, tiny, large and unequal, so padding and trimming are exercised.
std::size_t size_of(int step, int rank) {
  static constexpr std::size_t kSizes[] = {0, 1, 5, 4096, 100003, 7, 0, 65536};
  return kSizes[static_cast<std::size_t>(step * 3 + rank * 5) % std::size(kSizes)];
}

// Every check of a step runs inside it (the coordinator's reduction, or the rank's step after
// it): a wrong payload fails every rank, naming the rank that saw it.
int collectives(dcp::collective::ProcessGroup& pg) {
  using dcp::collective::Collectives;
  const int me = pg.rank();
  const int n = pg.size();
  int checks = 0;
  auto expect = [](bool ok, const std::string& what) {
    if (!ok) fail(what);
  };
  for (int step = 0; step < 3 * n; ++step) {
    const int root = step % n;
    const bool all_empty = step == n;  // one round where every payload is empty
    auto size = [&](int r) { return all_empty ? 0 : size_of(step, r); };
    const auto tag = " step " + std::to_string(step);
    Collectives ranks(&pg, root);
    const auto mine = ranks.reduce_scatter(
        "test: reduce_scatter", [&] { return payload(size(me), me, step, root); },
        [&](Collectives::Results all) {
          expect(all.size() == static_cast<std::size_t>(n), "reduce_scatter:" + tag + ": " + std::to_string(all.size()) + " payloads");
          for (int r = 0; r < n; ++r) {
            const auto want = payload(size(r), r, step, root);
            const auto& got = all[static_cast<std::size_t>(r)];
            expect(Bytes(got.begin(), got.end()) == want, "reduce_scatter" + tag + ": wrong payload from rank " + std::to_string(r));
          }
          std::vector<Bytes> per_rank;
          for (int r = 0; r < n; ++r) per_rank.push_back(payload(size(r + 1), root, step, r));
          return per_rank;
        });
    expect(mine == payload(size(me + 1), root, step, me), "reduce_scatter" + tag + ": wrong result");
    const auto reduced = ranks.all_reduce(
        "test: all_reduce", [&] { return payload(size(me + 3), me, step, root); },
        [&](Collectives::Results all) {
          for (int r = 0; r < n; ++r) {
            const auto& got = all[static_cast<std::size_t>(r)];
            expect(Bytes(got.begin(), got.end()) == payload(size(r + 3), r, step, root),
                   "all_reduce" + tag + ": wrong payload from rank " + std::to_string(r));
          }
          return payload(size(root + 4), root, step, -2);
        });
    expect(reduced == payload(size(root + 4), root, step, -2), "all_reduce" + tag + ": wrong result");
    const auto b = ranks.broadcast("test: broadcast", [&] { return payload(size(root + 2), root, step, -1); });
    expect(b == payload(size(root + 2), root, step, -1), "broadcast" + tag + ": wrong payload");
    checks += 3;
  }
  // A split group runs its own sequence: each step on the split group between two of the
  // first's, as a background thread would.
  auto split = Collectives(&pg).split("test: split");
  Collectives first(&pg), second(split.get(), n - 1);
  for (int step = 0; step < 4; ++step) {
    const auto a = first.broadcast("test: first", [&] { return payload(size_of(step, 0), 0, step, 7); });
    const auto b = second.broadcast("test: second", [&] { return payload(size_of(step, 1), n - 1, step, 8); });
    expect(a == payload(size_of(step, 0), 0, step, 7) && b == payload(size_of(step, 1), n - 1, step, 8),
           "split step " + std::to_string(step) + ": wrong payload");
    checks += 2;
  }
  std::printf("ok collectives: rank %d of %d, %d checks\n", me, n, checks);
  return 0;
}

// DefaultLoadPlanner that, on rank `die`, kills its own process at the first tensor it commits.
class DyingPlanner final : public dcp::planning::DefaultLoadPlanner {
 public:
  explicit DyingPlanner(bool die) : die_(die) {}
  void commit_tensor(const dcp::planning::ReadItem& item, const dcp::planning::TensorSlice& slice) override {
    if (die_) std::raise(SIGKILL);
    DefaultLoadPlanner::commit_tensor(item, slice);
  }

 private:
  bool die_;
};

int load(dcp::collective::ProcessGroup& pg, const std::filesystem::path& ckpt, const std::filesystem::path& case_dir,
         int die_on_rank) {
  const int me = pg.rank();
  const int n = pg.size();
  const auto expected = dcp_test::read_json(case_dir / "expected.json").as_object();
  dcp::storage::FileSystemReader reader(ckpt);
  // Every rank learns the checkpoint from the coordinator's bytes (what load does inside).
  const auto md = dcp::checkpoint::read_metadata(reader, &pg, 0);

  dcp::planning::Destination destination;
  std::map<std::string, std::vector<std::byte>> memory;
  for (const auto& item : md->items) {
    if (!item.is_tensor()) {
      destination.add_object(item.fqn);
      continue;
    }
    const auto& t = item.tensor();
    const auto share = dcp::layout::chunk_split(t.size.empty() ? dcp::layout::Shape{1} : t.size, 0, n)[static_cast<std::size_t>(me)];
    const auto elements = t.size.empty() ? 1 : dcp::layout::volume(share);
    auto& bytes = memory[item.fqn];
    bytes.resize(elements * dcp::dtype_itemsize(t.properties.dtype));
    destination.add_tensor(item.fqn, {t.size, t.properties.dtype,
                                      dcp::planning::row_chunks(t.size, t.properties.dtype, me, n, bytes.data())});
  }
  DyingPlanner planner(me == die_on_rank);
  const auto report = dcp::checkpoint::load(destination, reader, planner, md, &pg, 0);

  const auto& tensors = expected.at("tensors").as_object();
  std::uint64_t compared = 0;
  for (const auto& [fqn, bytes] : memory) {
    const auto* want = tensors.if_contains(fqn);
    if (!want) fail("expected.json has no tensor '" + fqn + "'");
    const auto full = dcp_test::read_bytes(case_dir / std::string(want->as_object().at("file").as_string()));
    const auto* item = md->find_item(fqn);
    const auto& size = item->tensor().size;
    std::size_t begin = 0;
    if (!size.empty() && size[0] > 0) {
      const auto row_bytes = full.size() / static_cast<std::size_t>(size[0]);
      const auto share = dcp::layout::chunk_split(size, 0, n)[static_cast<std::size_t>(me)];
      begin = static_cast<std::size_t>(share.offsets[0]) * row_bytes;
    }
    if (begin + bytes.size() > full.size() || std::memcmp(full.data() + begin, bytes.data(), bytes.size()) != 0)
      fail("tensor '" + fqn + "': rank " + std::to_string(me) + "'s rows differ from torch's");
    compared += bytes.size();
  }
  for (const auto& [fqn, entry] : destination.entries())
    if (std::holds_alternative<dcp::planning::ObjectDestination>(entry) && !planner.loaded_bytes(fqn))
      fail("object '" + fqn + "' was not loaded");
  std::printf("ok load: rank %d of %d, %zu tensors, %llu bytes compared, %llu bytes read\n", me, n, memory.size(),
              static_cast<unsigned long long>(compared), static_cast<unsigned long long>(report.bytes_read));
  return 0;
}

int async_save(dcp::collective::ProcessGroup& pg, const std::filesystem::path& out) {
  using dcp::collective::Collectives;
  const int me = pg.rank();
  const int n = pg.size();
  constexpr std::int64_t kRows = 64, kCols = 1024;
  auto value = [](std::int64_t i) { return static_cast<float>(i % 100003) * 0.5f; };
  std::vector<float> values(static_cast<std::size_t>(kRows * kCols));
  for (std::size_t i = 0; i < values.size(); ++i) values[i] = value(static_cast<std::int64_t>(i));
  dcp::planning::StateDict whole;
  whole.add_tensor({std::string("w")}, dcp::planning::contiguous_slice(reinterpret_cast<std::byte*>(values.data()),
                                                                       dcp::DType::float32, {kRows, kCols}));
  const auto mine = dcp::checkpoint::split_rows(whole, n)[static_cast<std::size_t>(me)];
  dcp::checkpoint::Checkpointer cp(std::make_shared<dcp::storage::FileSystemWriter>(out), nullptr, &pg);
  auto saved = cp.async_save(mine);
  std::fill(values.begin(), values.end(), -1.0f);  // the checkpoint holds the values of the call
  Collectives ranks(&pg);
  for (int i = 0; i < 50; ++i) {
    const auto got = ranks.all_reduce(
        "test: caller", [&] { return Bytes(static_cast<std::size_t>(me + i), std::byte{1}); },
        [&](Collectives::Results all) {
          std::size_t total = 0;
          for (const auto& b : all) total += b.size();
          return Bytes(total, std::byte{2});
        });
    if (got.size() != static_cast<std::size_t>(n * i + n * (n - 1) / 2)) fail("the caller's step mixed up");
  }
  (void)saved.get();

  dcp::storage::FileSystemReader reader(out);
  const auto md = dcp::checkpoint::read_metadata(reader, &pg, 0);
  std::vector<float> loaded(values.size());
  dcp::planning::Destination destination;
  destination.add_tensor("w", {{kRows, kCols}, dcp::DType::float32,
                               {{{0, 0}, {kRows, kCols},
                                 dcp::planning::contiguous_slice(reinterpret_cast<std::byte*>(loaded.data()),
                                                                 dcp::DType::float32, {kRows, kCols})}}});
  dcp::planning::DefaultLoadPlanner planner;
  (void)dcp::checkpoint::load(destination, reader, planner, md, &pg, 0);
  for (std::size_t i = 0; i < loaded.size(); ++i)
    if (loaded[i] != value(static_cast<std::int64_t>(i))) fail("element " + std::to_string(i) + " differs");
  std::printf("ok async_save: rank %d of %d\n", me, n);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    std::vector<std::string> args(argv + 1, argv + argc);
    // "--name value" taken out of args; nullopt when absent.
    auto take = [&](const std::string& name) -> std::optional<std::string> {
      for (std::size_t i = 0; i + 1 < args.size(); ++i)
        if (args[i] == name) {
          auto value = args[i + 1];
          args.erase(args.begin() + static_cast<std::ptrdiff_t>(i), args.begin() + static_cast<std::ptrdiff_t>(i) + 2);
          return value;
        }
      return std::nullopt;
    };
    const int die_on_rank = std::stoi(take("--die-on-rank").value_or("-1"));
    const auto backend = take("--backend").value_or("gloo");
    const char* usage =
        "usage: dist_rank collectives | load CKPT CASE_DIR [--die-on-rank R] | async_save OUT [--backend gloo|nccl]";
    if (args.empty() || (backend != "gloo" && backend != "nccl")) fail(usage);
    auto group = dcp::dist::from_environment(
        {.timeout = std::chrono::seconds(30), .backend = backend == "nccl" ? dcp::dist::Backend::nccl : dcp::dist::Backend::gloo});
    if (args[0] == "collectives") return collectives(*group);
    if (args[0] == "load" && args.size() == 3) return load(*group, args[1], args[2], die_on_rank);
    if (args[0] == "async_save" && args.size() == 2) return async_save(*group, args[1]);
    fail(usage);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dist_rank: error: %s\n", e.what());
    std::fflush(stderr);
    std::_Exit(1);  // never wait in c10d's destructors for a peer that is gone
  }
}
