// Read-once loading over a process group: which saved items one rank reads for all
// (planning::plan_read_once), and checkpoint::load on ranks played by threads — every rank's
// values against the saved bytes, the bytes read from storage against one copy, and a reader
// rank's failure reaching every rank.
#include <boost/test/unit_test.hpp>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "../support/support.hpp"

import dcp.error;
import dcp.metadata;
import dcp.layout;
import dcp.planning;
import dcp.storage;
import dcp.collective;
import dcp.checkpoint;

namespace md = dcp::metadata;
namespace pl = dcp::planning;
namespace st = dcp::storage;
namespace ck = dcp::checkpoint;
namespace ly = dcp::layout;
using dcp::DType;

namespace {

constexpr std::int64_t kRows = 64, kCols = 48;

std::vector<std::byte> pattern(std::size_t n, int seed) {
  std::vector<std::byte> bytes(n);
  for (std::size_t i = 0; i < n; ++i) bytes[i] = static_cast<std::byte>((i * 13 + static_cast<std::size_t>(seed)) % 251);
  return bytes;
}

// A 2-rank checkpoint: "w" (64×48 float32) by rows, "bias" (48 float32) on both ranks (saved
// once), and the object "meta" on rank 0.
struct Saved {
  dcp_test::TempDir tmp;
  std::filesystem::path dir;
  std::vector<std::byte> w = pattern(kRows * kCols * 4, 1), bias = pattern(kCols * 4, 2);
  Saved() : dir(tmp.path() / "ckpt") {
    pl::StateDict whole;
    whole.add_tensor({std::string("w")}, pl::contiguous_slice(w.data(), DType::float32, {kRows, kCols}));
    auto ranks = ck::split_rows(whole, 2);
    for (auto& sd : ranks) sd.add_tensor({std::string("bias")}, pl::contiguous_slice(bias.data(), DType::float32, {kCols}));
    ranks[0].add_object({std::string("meta")}, pl::ObjectValue::string("read me once"));
    st::WriteOptions options;
    options.sync_files = false;
    (void)ck::save_ranks(ranks, dir, options);
  }
  const std::vector<std::byte>& full(const std::string& fqn) const { return fqn == "w" ? w : bias; }
};

// The bytes of `box` of a row-major float32 tensor of `sizes`.
std::vector<std::byte> slice_of(const std::vector<std::byte>& full, const md::Shape& sizes, const ly::Box& box) {
  std::vector<std::byte> out;
  if (sizes.size() == 1) return {full.begin() + box.offsets[0] * 4, full.begin() + (box.offsets[0] + box.sizes[0]) * 4};
  for (std::int64_t r = 0; r < box.sizes[0]; ++r) {
    const auto row = full.begin() + ((box.offsets[0] + r) * sizes[1] + box.offsets[1]) * 4;
    out.insert(out.end(), row, row + box.sizes[1] * 4);
  }
  return out;
}

struct RankOutcome {
  st::ReadReport report;
  std::map<std::string, std::vector<std::byte>> tensors;
  std::optional<std::vector<std::byte>> meta;
  std::optional<dcp::Error> error;
};

using BoxOf = std::function<ly::Box(const md::Shape& global, int rank)>;

// A step of one rank's load that fails: its local plan, taking its part of the global plan
// (with read-once, where the shared reads are decoded too), its own reads, or its use of bytes
// another rank broadcast.
enum class Fault { none, local_plan, central_plan, own_read, shared_bytes };

dcp::Error injected(const char* where) { return dcp::Error(dcp::Errc::io, std::string("injected failure in ") + where); }

class FaultyPlanner final : public pl::DefaultLoadPlanner {
 public:
  explicit FaultyPlanner(Fault fault) : fault_(fault) {}
  pl::LoadPlan create_local_plan() override {
    if (fault_ == Fault::local_plan) throw injected("the local plan");
    return DefaultLoadPlanner::create_local_plan();
  }
  pl::LoadPlan finish_plan(pl::LoadPlan central) override {
    if (fault_ == Fault::central_plan) throw injected("the central plan");
    return DefaultLoadPlanner::finish_plan(std::move(central));
  }
  void commit_tensor(const pl::ReadItem& item, const pl::TensorSlice& slice) override {
    if (fault_ == Fault::shared_bytes) throw injected("the shared bytes");
    DefaultLoadPlanner::commit_tensor(item, slice);
  }

 private:
  Fault fault_;
};

// The saved records each played host's ranks read from storage (file, offset, length): on a
// host the page cache fetches each of them once, whichever of its ranks reads it.
struct StorageLog {
  std::mutex mutex;
  std::map<std::string, std::set<std::tuple<std::string, std::uint64_t, std::uint64_t>>> by_host;
  std::uint64_t bytes_on(const std::string& host) {
    std::uint64_t total = 0;
    for (const auto& [file, offset, length] : by_host[host]) total += length;
    return total;
  }
  std::uint64_t bytes_on_every_host() {
    std::uint64_t total = 0;
    for (const auto& [host, records] : by_host) total += bytes_on(host);
    return total;
  }
};

class FaultyReader final : public st::FileSystemReader {
 public:
  FaultyReader(const std::filesystem::path& dir, Fault fault, StorageLog* log = nullptr, std::string host = {})
      : FileSystemReader(dir), fault_(fault), log_(log), host_(std::move(host)) {}
  using FileSystemReader::read_data;
  void set_up_storage_reader(md::ValidatedMetadata metadata, bool is_coordinator) override {
    metadata_ = metadata;
    FileSystemReader::set_up_storage_reader(std::move(metadata), is_coordinator);
  }
  st::ReadReport read_data(const pl::LoadPlan& plan, pl::LoadPlanner& planner) override {
    if (fault_ == Fault::own_read) throw injected("the reads");
    for (const auto& item : plan.items) record(item.storage_index);
    return FileSystemReader::read_data(plan, planner);
  }
  void read_item(const md::MetadataIndex& item, std::span<std::byte> out, st::ReadReport& report) override {
    record(item);
    FileSystemReader::read_item(item, out, report);
  }

 private:
  void record(const md::MetadataIndex& index) {
    if (!log_ || !metadata_) return;
    const auto* info = (*metadata_)->find_storage(index.fqn, index.offset ? &*index.offset : nullptr);
    if (!info) return;
    std::lock_guard lock(log_->mutex);
    log_->by_host[host_].emplace(info->relative_path, info->offset, info->length);
  }
  Fault fault_;
  StorageLog* log_;
  std::string host_;
  std::optional<md::ValidatedMetadata> metadata_;
};

// Read-once as it was before hosts counted: every rank a host of its own, the storage the
// slowest link, so every item that several ranks need is read by one and broadcast.
ck::ReadOnce broadcasting() { return {.slowest_link = pl::ReadTopology::Link::storage}; }

// How the ranks of one load are played: `read_once` on rank 0 (the coordinator) and `others`
// (the same when unset) elsewhere; `hosts[r]` rank r's host (each rank its own when empty);
// `metadata` skips the metadata step (each rank uses it as given); rank `faulty_rank` fails at
// `fault`; `log` records what each host reads from storage.
struct Play {
  ck::ReadOnce read_once = broadcasting();
  std::optional<md::ValidatedMetadata> metadata = std::nullopt;
  std::optional<ck::ReadOnce> others = std::nullopt;
  int faulty_rank = -1;
  Fault fault = Fault::none;
  std::vector<std::string> hosts = {};
  StorageLog* log = nullptr;
};

// Loads every tensor (the box `box_of` gives each rank) and, with `objects`, "meta", on `world`
// ranks played by threads.
std::vector<RankOutcome> load_on_ranks(const std::filesystem::path& dir, int world, const BoxOf& box_of, bool objects,
                                       const Play& play = {}) {
  auto groups = dcp::collective::make_in_process_group(world);
  std::vector<RankOutcome> outcomes(static_cast<std::size_t>(world));
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r)
    threads.emplace_back([&, r] {
      auto& out = outcomes[static_cast<std::size_t>(r)];
      try {
        const auto mine = r == play.faulty_rank ? play.fault : Fault::none;
        auto read_once = r == 0 ? play.read_once : play.others.value_or(play.read_once);
        read_once.host = play.hosts.empty() ? "rank " + std::to_string(r) : play.hosts[static_cast<std::size_t>(r)];
        FaultyReader reader(dir, mine, play.log, read_once.host);
        const auto md = play.metadata ? *play.metadata : ck::read_metadata(reader, groups[static_cast<std::size_t>(r)].get());
        pl::Destination destination;
        for (const auto& item : md->items) {
          if (!item.is_tensor()) {
            if (objects) destination.add_object(item.fqn);
            continue;
          }
          const auto box = box_of(item.tensor().size, r);
          auto& memory = out.tensors[item.fqn];
          memory.resize(static_cast<std::size_t>(ly::volume(box)) * 4);
          pl::TensorDestination dest{item.tensor().size, DType::float32, {}};
          dest.chunks.push_back({box.offsets, box.sizes, pl::contiguous_slice(memory.data(), DType::float32, box.sizes)});
          destination.add_tensor(item.fqn, std::move(dest));
        }
        FaultyPlanner planner(mine);
        out.report = ck::load(destination, reader, planner, md, groups[static_cast<std::size_t>(r)].get(), 0, read_once);
        if (const auto* bytes = planner.loaded_bytes("meta")) out.meta = *bytes;
      } catch (...) {
        // Whatever a rank's thread throws fails its rank here, never the whole suite.
        out.error = dcp::current_exception_as_error();
      }
    });
  for (auto& t : threads) t.join();
  return outcomes;
}

BoxOf whole() {
  return [](const md::Shape& global, int) { return ly::full_box(global); };
}
BoxOf by(const std::string& layout, int world) {
  return [layout, world](const md::Shape& global, int rank) {
    return ly::local_box(global, ly::parse_layout(layout, world), rank);
  };
}

void check_values(const Saved& saved, const std::vector<RankOutcome>& outcomes, const BoxOf& box_of) {
  for (std::size_t r = 0; r < outcomes.size(); ++r) {
    BOOST_TEST_CONTEXT("rank " << r) {
      BOOST_REQUIRE_MESSAGE(!outcomes[r].error, (outcomes[r].error ? outcomes[r].error->what() : ""));
      for (const auto& [fqn, bytes] : outcomes[r].tensors) {
        const md::Shape sizes = fqn == "w" ? md::Shape{kRows, kCols} : md::Shape{kCols};
        BOOST_TEST((bytes == slice_of(saved.full(fqn), sizes, box_of(sizes, static_cast<int>(r)))), fqn);
      }
    }
  }
}

std::uint64_t stored_bytes(const std::filesystem::path& dir) {
  std::uint64_t total = 0;
  const auto md = ck::inspect(dir);  // a range-for over a temporary's member would not keep it alive
  for (const auto& [index, info] : md->storage_data) total += info.length;
  return total;
}

template <class F>
std::uint64_t sum(const std::vector<RankOutcome>& outcomes, F field) {
  std::uint64_t total = 0;
  for (const auto& o : outcomes) total += field(o.report);
  return total;
}

pl::ReadItem read_of(const std::string& fqn, md::Shape chunk_offsets, md::Shape offsets, md::Shape lengths) {
  pl::ReadItem item;
  item.dest_index = {fqn, md::Shape(offsets.size(), 0), 0};
  item.dest_offsets = md::Shape(offsets.size(), 0);
  item.storage_index = {fqn, std::move(chunk_offsets), std::nullopt};
  item.storage_offsets = std::move(offsets);
  item.lengths = std::move(lengths);
  return item;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(read_once)

BOOST_AUTO_TEST_CASE(plan_read_once_shares_what_ranks_read_more_than_once) {
  Saved saved;
  const auto md = ck::inspect(saved.dir);
  // Saved chunks of w: rows [0, 32) and [32, 64).
  std::vector<pl::LoadPlan> plans(3);
  // bias whole on ranks 0 and 2: shared. w chunk 0: disjoint rows on ranks 0 and 1: not shared.
  plans[0].items.push_back(read_of("bias", {0}, {0}, {kCols}));
  plans[2].items.push_back(read_of("bias", {0}, {0}, {kCols}));
  plans[0].items.push_back(read_of("w", {0, 0}, {0, 0}, {16, kCols}));
  plans[1].items.push_back(read_of("w", {0, 0}, {16, 0}, {16, kCols}));
  // w chunk 1: column bands on ranks 1 and 2 (each read spans nearly the chunk): shared.
  plans[1].items.push_back(read_of("w", {32, 0}, {0, 0}, {32, 24}));
  plans[2].items.push_back(read_of("w", {32, 0}, {0, 24}, {32, 24}));
  // Names nothing saved, an empty box: ignored.
  plans[1].items.push_back(read_of("nope", {0}, {0}, {1}));
  plans[2].items.push_back(read_of("w", {0, 0}, {0, 0}, {0, kCols}));
  plans[0].items.push_back(read_of("w", {0, 0}, {0, 0}, {0, kCols}));

  const auto shared = pl::plan_read_once(plans, md, {{}, pl::ReadTopology::Link::storage});
  BOOST_REQUIRE_EQUAL(shared.size(), 2u);
  // Assigned in metadata order (w before bias, as saved) to the reader with the fewest shared
  // bytes, then the lowest rank; listed by reader.
  BOOST_TEST(shared[1].item.fqn == "w");
  BOOST_TEST((shared[1].item.offset == md::Shape{32, 0}));
  BOOST_TEST(shared[1].reader == 1);
  BOOST_TEST(shared[0].item.fqn == "bias");
  BOOST_TEST(shared[0].reader == 0);
  BOOST_TEST(shared[0].stored_bytes == md->find_storage("bias", &*shared[0].item.offset)->length);

  const auto bytes = pl::encode_shared_reads(shared);
  BOOST_TEST((pl::decode_shared_reads(bytes) == shared));
  for (std::size_t cut = 0; cut < bytes.size(); ++cut)
    BOOST_CHECK_EXCEPTION(pl::decode_shared_reads(std::span(bytes).first(cut)), dcp::Error,
                          [](const dcp::Error& e) { return e.code() == dcp::Errc::data_loss; });
}

BOOST_AUTO_TEST_CASE(four_ranks_loading_everything_read_one_copy) {
  Saved saved;
  const auto outcomes = load_on_ranks(saved.dir, 4, whole(), true);
  check_values(saved, outcomes, whole());
  const auto stored = stored_bytes(saved.dir);
  // Every item is needed by all four ranks: read from storage once, received by the three others.
  BOOST_TEST(sum(outcomes, [](const st::ReadReport& r) { return r.storage_bytes; }) == stored);
  BOOST_TEST(sum(outcomes, [](const st::ReadReport& r) { return r.received_bytes; }) == 3 * stored);
  int readers = 0;
  for (const auto& o : outcomes) {
    readers += o.report.storage_bytes > 0;
    BOOST_REQUIRE(o.meta.has_value());
    BOOST_TEST((*o.meta == *outcomes[0].meta));
  }
  BOOST_TEST(readers >= 2);  // the reads are spread over the ranks

  // Turned off, every rank reads every tensor itself.
  const auto alone = load_on_ranks(saved.dir, 4, whole(), true, {.read_once = {.enabled = false}});
  check_values(saved, alone, whole());
  BOOST_TEST(sum(alone, [](const st::ReadReport& r) { return r.received_bytes; }) == 0u);
  BOOST_TEST(sum(alone, [](const st::ReadReport& r) { return r.storage_bytes; }) >= 4 * (saved.w.size() + saved.bias.size()));
  BOOST_TEST((*alone[3].meta == *outcomes[3].meta));
}

BOOST_AUTO_TEST_CASE(one_item_per_broadcast_gives_the_same_values) {
  Saved saved;
  const auto outcomes = load_on_ranks(saved.dir, 3, whole(), true, {.read_once = [] {
    auto one_item = broadcasting();
    one_item.batch_bytes = 1;
    return one_item;
  }()});
  check_values(saved, outcomes, whole());
  BOOST_TEST(sum(outcomes, [](const st::ReadReport& r) { return r.storage_bytes; }) == stored_bytes(saved.dir));
}

// The ranks cut their broadcasts by the coordinator's batch size, whatever their own says (a
// rank cutting its own would wait for a broadcast the others never make).
BOOST_AUTO_TEST_CASE(the_coordinators_batch_size_holds_for_every_rank) {
  Saved saved;
  for (const auto& [coordinator, others] : {std::pair<std::uint64_t, std::uint64_t>{1, 1u << 30}, {1u << 30, 1}}) {
    auto mine = broadcasting(), theirs = broadcasting();
    mine.batch_bytes = coordinator;
    theirs.batch_bytes = others;
    const auto outcomes = load_on_ranks(saved.dir, 3, whole(), true, {.read_once = mine, .others = theirs});
    check_values(saved, outcomes, whole());
    BOOST_TEST(sum(outcomes, [](const st::ReadReport& r) { return r.storage_bytes; }) == stored_bytes(saved.dir));
  }
}

// The Checkpointer's load over a group: read-once by default (on this one host, every rank
// reads for itself), broadcasting across played hosts when set so, off when set so.
BOOST_AUTO_TEST_CASE(checkpointer_load_reads_as_set_read_once_says) {
  Saved saved;
  enum Setting { by_default, across_hosts, off };
  for (const Setting setting : {by_default, across_hosts, off}) {
    auto groups = dcp::collective::make_in_process_group(2);
    std::vector<st::ReadReport> reports(2);
    std::vector<std::vector<std::byte>> loaded(2);
    std::vector<std::string> errors(2);
    std::vector<std::thread> threads;
    for (int r = 0; r < 2; ++r)
      threads.emplace_back([&, r] {
        try {
          ck::Checkpointer checkpointer(nullptr, std::make_shared<st::FileSystemReader>(saved.dir),
                                        groups[static_cast<std::size_t>(r)].get());
          if (setting == off) checkpointer.set_read_once({.enabled = false});
          if (setting == across_hosts) {
            auto read_once = broadcasting();
            read_once.host = "host " + std::to_string(r);
            checkpointer.set_read_once(read_once);
          }
          auto& memory = loaded[static_cast<std::size_t>(r)];
          memory.resize(saved.bias.size());
          pl::Destination destination;
          pl::TensorDestination dest{{kCols}, DType::float32, {}};
          dest.chunks.push_back({{0}, {kCols}, pl::contiguous_slice(memory.data(), DType::float32, {kCols})});
          destination.add_tensor("bias", std::move(dest));
          reports[static_cast<std::size_t>(r)] = checkpointer.load(destination);
        } catch (const std::exception& e) {
          errors[static_cast<std::size_t>(r)] = e.what();
        }
      });
    for (auto& t : threads) t.join();
    BOOST_TEST_CONTEXT("setting " << setting) {
      for (int r = 0; r < 2; ++r) {
        BOOST_TEST(errors[static_cast<std::size_t>(r)].empty(), errors[static_cast<std::size_t>(r)]);
        BOOST_TEST((loaded[static_cast<std::size_t>(r)] == saved.bias));
      }
      const auto received = reports[0].received_bytes + reports[1].received_bytes;
      BOOST_TEST((setting == across_hosts ? received > 0 : received == 0));
    }
  }
}

BOOST_AUTO_TEST_CASE(disjoint_rows_are_read_by_their_ranks) {
  Saved saved;
  const auto layout = by("rows", 4);
  const auto outcomes = load_on_ranks(saved.dir, 4, layout, false);
  check_values(saved, outcomes, layout);
  BOOST_TEST(sum(outcomes, [](const st::ReadReport& r) { return r.received_bytes; }) == 0u);
}

// Ranks on one host never broadcast to each other (copying from the page cache is faster than
// any loopback transfer), whichever link is the slowest: each reads what it needs itself, and
// the host reads each saved record once.
BOOST_AUTO_TEST_CASE(ranks_on_one_host_read_for_themselves) {
  Saved saved;
  for (const auto link : {pl::ReadTopology::Link::host, pl::ReadTopology::Link::storage}) {
    BOOST_TEST_CONTEXT("slowest link " << (link == pl::ReadTopology::Link::host ? "host" : "storage")) {
      StorageLog log;
      const auto outcomes = load_on_ranks(saved.dir, 4, whole(), true,
                                          {.read_once = {.slowest_link = link}, .hosts = {"node", "node", "node", "node"}, .log = &log});
      check_values(saved, outcomes, whole());
      BOOST_TEST(sum(outcomes, [](const st::ReadReport& r) { return r.received_bytes; }) == 0u);
      BOOST_TEST(log.bytes_on("node") == stored_bytes(saved.dir));
      for (const auto& o : outcomes) BOOST_TEST((o.meta && *o.meta == *outcomes[0].meta));
    }
  }
}

// Two played hosts of two ranks, every rank loading everything whole. With each host's link the
// slowest (the default), each host reads every saved record once and nothing is broadcast;
// with the storage the slowest, each record is read once in all and broadcast.
BOOST_AUTO_TEST_CASE(two_hosts_read_once_per_host_or_once_in_all) {
  Saved saved;
  const std::vector<std::string> hosts{"a", "a", "b", "b"};
  const auto stored = stored_bytes(saved.dir);

  StorageLog per_host;
  auto outcomes = load_on_ranks(saved.dir, 4, whole(), true, {.read_once = {}, .hosts = hosts, .log = &per_host});
  check_values(saved, outcomes, whole());
  BOOST_TEST(sum(outcomes, [](const st::ReadReport& r) { return r.received_bytes; }) == 0u);
  BOOST_TEST(per_host.bytes_on("a") == stored);
  BOOST_TEST(per_host.bytes_on("b") == stored);

  StorageLog once;
  outcomes = load_on_ranks(saved.dir, 4, whole(), true, {.hosts = hosts, .log = &once});
  check_values(saved, outcomes, whole());
  BOOST_TEST(once.bytes_on_every_host() == stored);
  BOOST_TEST(sum(outcomes, [](const st::ReadReport& r) { return r.storage_bytes; }) == stored);
  BOOST_TEST(sum(outcomes, [](const st::ReadReport& r) { return r.received_bytes; }) == 3 * stored);
  for (const auto& o : outcomes) BOOST_TEST((o.meta && *o.meta == *outcomes[0].meta));
}

// With the storage the slowest link, an item that only one host's ranks need is still read by
// each of them (never broadcast); only what both hosts need travels.
BOOST_AUTO_TEST_CASE(what_one_host_needs_stays_on_that_host) {
  Saved saved;
  // Host a (ranks 0, 1) holds rows [0, 32) of w, host b (ranks 2, 3) rows [32, 64): each a saved
  // chunk whole, replicated over its host's two ranks. bias is whole on every rank.
  const BoxOf layout = [](const md::Shape& global, int rank) {
    if (global.size() == 1) return ly::full_box(global);
    return ly::Box{{rank / 2 * (kRows / 2), 0}, {kRows / 2, kCols}};
  };
  StorageLog log;
  const auto outcomes = load_on_ranks(saved.dir, 4, layout, false, {.hosts = {"a", "a", "b", "b"}, .log = &log});
  check_values(saved, outcomes, layout);
  const auto md = ck::inspect(saved.dir);
  const auto bias = md->find_storage("bias", &md->find_item("bias")->tensor().chunks[0].offsets)->length;
  BOOST_TEST(sum(outcomes, [](const st::ReadReport& r) { return r.received_bytes; }) == 3 * bias);
  // Each record read once in all, but "meta", which no rank loads here.
  const auto meta = md->find_storage("meta", nullptr)->length;
  BOOST_TEST(log.bytes_on_every_host() == stored_bytes(saved.dir) - meta);
}

// The rule alone: which candidates are broadcast, by host and link.
BOOST_AUTO_TEST_CASE(plan_read_once_broadcasts_only_across_hosts_over_slow_storage) {
  Saved saved;
  const auto md = ck::inspect(saved.dir);
  std::vector<pl::LoadPlan> plans(3);
  for (auto& plan : plans) plan.items.push_back(read_of("bias", {0}, {0}, {kCols}));
  using Link = pl::ReadTopology::Link;
  BOOST_TEST(pl::plan_read_once(plans, md, {{0, 0, 0}, Link::storage}).empty());
  BOOST_TEST(pl::plan_read_once(plans, md, {{0, 1, 2}, Link::host}).empty());
  BOOST_TEST(pl::plan_read_once(plans, md, {{}, Link::host}).empty());
  const auto across = pl::plan_read_once(plans, md, {{5, 5, 9}, Link::storage});
  BOOST_REQUIRE_EQUAL(across.size(), 1u);
  BOOST_TEST(across[0].item.fqn == "bias");
  // Only ranks 0 and 1 (one host) need w's first chunk whole: read by both.
  plans[0].items.push_back(read_of("w", {0, 0}, {0, 0}, {32, kCols}));
  plans[1].items.push_back(read_of("w", {0, 0}, {0, 0}, {32, kCols}));
  BOOST_TEST(pl::plan_read_once(plans, md, {{5, 5, 9}, Link::storage}).size() == 1u);
  BOOST_TEST(pl::plan_read_once(plans, md, {{5, 7, 9}, Link::storage}).size() == 2u);
  BOOST_CHECK_THROW(pl::plan_read_once(plans, md, {{5, 7}, Link::storage}), dcp::Error);
}

BOOST_AUTO_TEST_CASE(column_bands_of_row_chunks_are_read_once) {
  Saved saved;
  const BoxOf layout = [cols = by("cols", 3)](const md::Shape& global, int rank) {
    return global.size() == 2 ? cols(global, rank) : ly::full_box(global);  // bias whole everywhere
  };
  const auto outcomes = load_on_ranks(saved.dir, 3, layout, false);
  check_values(saved, outcomes, layout);
  // Each saved row chunk of w, read in column bands by every rank, and bias, read whole by
  // every rank, is read from storage once.
  BOOST_TEST(sum(outcomes, [](const st::ReadReport& r) { return r.storage_bytes; }) <= stored_bytes(saved.dir));
  BOOST_TEST(sum(outcomes, [](const st::ReadReport& r) { return r.received_bytes; }) > 0u);
}

BOOST_AUTO_TEST_CASE(a_reader_that_fails_fails_every_rank_naming_it) {
  Saved saved;
  const auto md = ck::inspect(saved.dir);
  // Cut the file holding bias after the metadata is read: its reader's read comes up short.
  const auto* info = md->find_storage("bias", &md->find_item("bias")->tensor().chunks[0].offsets);
  std::filesystem::resize_file(saved.dir / info->relative_path, info->offset + 3);
  const auto outcomes = load_on_ranks(saved.dir, 4, whole(), true, {.metadata = md});
  std::optional<int> named;
  for (std::size_t r = 0; r < outcomes.size(); ++r) {
    BOOST_TEST_CONTEXT("rank " << r) {
      BOOST_REQUIRE(outcomes[r].error.has_value());
      const auto& e = *outcomes[r].error;
      BOOST_TEST((e.code() == dcp::Errc::data_loss), e.what());
      BOOST_TEST(e.context().file.find(info->relative_path) != std::string::npos, e.what());
      BOOST_REQUIRE(e.context().rank.has_value());
      if (!named) named = e.context().rank;
      BOOST_TEST(*e.context().rank == *named);  // every rank names the same failed rank
    }
  }
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(ranks_agree)

// One rank fails in one step of its load: every rank throws that rank's error, naming it, with
// read-once (every rank loading everything whole) and without (each rank its rows).
BOOST_AUTO_TEST_CASE(a_rank_failing_in_any_load_step_fails_every_rank_naming_it) {
  Saved saved;
  const std::tuple<Fault, int, const char*, bool> cases[] = {
      {Fault::local_plan, 2, "the local plan", false}, {Fault::central_plan, 2, "the central plan", false},
      {Fault::own_read, 1, "the reads", false},       {Fault::local_plan, 0, "the local plan", true},
      {Fault::central_plan, 2, "the central plan", true}, {Fault::central_plan, 0, "the central plan", true},
      {Fault::shared_bytes, 3, "the shared bytes", true}, {Fault::own_read, 3, "the reads", true}};
  for (const auto& [fault, rank, where, whole_tensors] : cases) {
    BOOST_TEST_CONTEXT(where << " on rank " << rank << (whole_tensors ? ", read-once" : ", rows")) {
      const auto outcomes =
          load_on_ranks(saved.dir, 4, whole_tensors ? whole() : by("rows", 4), true, {.faulty_rank = rank, .fault = fault});
      for (std::size_t r = 0; r < outcomes.size(); ++r) {
        BOOST_TEST_CONTEXT("rank " << r) {
          BOOST_REQUIRE(outcomes[r].error.has_value());
          BOOST_TEST(outcomes[r].error->what() == "rank " + std::to_string(rank) + ": injected failure in " + where);
        }
      }
    }
  }
}

BOOST_AUTO_TEST_SUITE_END()
