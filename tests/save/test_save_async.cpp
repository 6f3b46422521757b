// Checkpointer::async_save: the caller may change its tensors as soon as the call returns;
// each checkpoint holds the values at its call. A failed write surfaces through the future and
// the next save works. Over a group, the background save has a group of its own.
#include <boost/test/unit_test.hpp>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
#include <optional>
#include <thread>
#include <chrono>
#include <filesystem>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "../support/support.hpp"
#include "save_support.hpp"
import dcp.memory;
import dcp.collective;

using namespace save_test;
namespace co = dcp::collective;

namespace {

// The source a training loop would hold: a big tensor, a small one and a transposed view,
// refilled for each step.
struct Source {
  std::vector<float> big = std::vector<float>(1 << 20);  // 4 MiB
  std::vector<std::int64_t> step = std::vector<std::int64_t>(3);
  std::vector<std::uint16_t> base = std::vector<std::uint16_t>(6 * 5);  // bfloat16 bits
  pl::StateDict sd;
  Source() {
    sd.add_tensor({std::string("model"), std::string("big")},
                  pl::contiguous_slice(reinterpret_cast<std::byte*>(big.data()), DType::float32, {1024, 1024}));
    sd.add_tensor({std::string("step")}, pl::contiguous_slice(reinterpret_cast<std::byte*>(step.data()), DType::int64, {3}));
    sd.add_tensor({std::string("model"), std::string("t")},
                  pl::TensorSlice{reinterpret_cast<std::byte*>(base.data()), DType::bfloat16, {5, 6}, {1, 5}});
    sd.add_object({std::string("tag")}, pl::ObjectValue::string("async"));
  }
  void fill(int k) {
    for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<float>(k * 1000003 + static_cast<int>(i));
    for (std::size_t i = 0; i < step.size(); ++i) step[i] = k * 10 + static_cast<std::int64_t>(i);
    for (std::size_t i = 0; i < base.size(); ++i) base[i] = static_cast<std::uint16_t>(k * 64 + static_cast<int>(i));
  }
  // The values at fill(k), row-major, per fqn.
  static std::map<std::string, std::vector<std::byte>> expected(int k) {
    Source s;
    s.fill(k);
    std::map<std::string, std::vector<std::byte>> out;
    auto bytes = [](const void* p, std::size_t n) {
      const auto* b = static_cast<const std::byte*>(p);
      return std::vector<std::byte>(b, b + n);
    };
    out["model.big"] = bytes(s.big.data(), s.big.size() * 4);
    out["step"] = bytes(s.step.data(), 24);
    out["model.t"] = gather(reinterpret_cast<const std::byte*>(s.base.data()), 2, {5, 6}, {1, 5});
    return out;
  }
};

void check_dir(const fs::path& dir, int k) {
  const auto got = dcpp_tensors(dir);
  const auto want = Source::expected(k);
  for (const auto& [fqn, bytes] : want) BOOST_TEST((got.at(fqn) == bytes), fqn << " in " << dir << " is not step " << k);
}

}  // namespace

// Six Checkpointers, one per directory, saving concurrently while the source changes.
BOOST_AUTO_TEST_CASE(async_saves_keep_the_values_of_their_call) {
  dcp_test::TempDir tmp;
  Source src;
  std::vector<std::unique_ptr<ck::Checkpointer>> cps;
  std::vector<std::future<md::Metadata>> futures;
  constexpr int kSaves = 6;
  for (int k = 0; k < kSaves; ++k) {
    src.fill(k);
    auto writer = std::make_shared<st::FileSystemWriter>(tmp.path() / ("step" + std::to_string(k)), options(true));
    cps.push_back(std::make_unique<ck::Checkpointer>(writer, nullptr));
    futures.push_back(cps.back()->async_save(src.sd));
    src.fill(1000 + k);  // overwrite right after the call returns
  }
  for (auto& f : futures) BOOST_TEST(f.get().items.size() == 4u);
  for (int k = 0; k < kSaves; ++k) check_dir(tmp.path() / ("step" + std::to_string(k)), k);

  // torch 2.13 loads one of them.
  if (dcp_test::python2x_available()) {
    Case c(tmp.path() / "bins");
    const auto want = Source::expected(3);
    c.expect({std::string("model"), std::string("big")}, DType::float32, {1024, 1024}, want.at("model.big"));
    c.expect({std::string("step")}, DType::int64, {3}, want.at("step"));
    c.expect({std::string("model"), std::string("t")}, DType::bfloat16, {5, 6}, want.at("model.t"));
    boost::json::object o;
    o["path"] = json_path({std::string("tag")});
    o["literal"] = "'async'";
    c.objects.push_back(std::move(o));
    boost::json::array checks;
    checks.push_back(c.check("async_step3", tmp.path() / "step3"));
    write_manifest(tmp.path() / "manifest.json", checks);
    run_checks(dcp_test::python2x(), "save_check.py", "load " + dcp_test::quote(tmp.path() / "manifest.json"),
               {"async_step3"});
  }
}

// One Checkpointer, saving into one directory again and again (overwrite), its staging
// buffers reused; after each save its own load sees that call's values.
BOOST_AUTO_TEST_CASE(one_checkpointer_reuses_its_staging) {
  dcp_test::TempDir tmp;
  Source src;
  auto o = options();
  o.overwrite = true;
  const auto dir = tmp.path() / "ckpt";
  auto writer = std::make_shared<st::FileSystemWriter>(dir, o);
  auto reader = std::make_shared<st::FileSystemReader>(dir);
  ck::Checkpointer cp(writer, reader);
  std::uint64_t staged = 0;
  for (int k = 0; k < 5; ++k) {
    src.fill(k);
    auto f = cp.async_save(src.sd);
    src.fill(-1);
    BOOST_TEST(f.get().items.size() == 4u);
    // Checkpointer::load: the big tensor as 2 row shards, into fresh memory.
    std::vector<float> rows(1 << 20, -1.0f);
    pl::Destination dest;
    pl::TensorDestination td{{1024, 1024}, DType::float32, {}};
    for (int r = 0; r < 2; ++r) {
      auto chunks = pl::row_chunks({1024, 1024}, DType::float32, r, 2, reinterpret_cast<std::byte*>(rows.data() + r * 512 * 1024));
      td.chunks.insert(td.chunks.end(), chunks.begin(), chunks.end());
    }
    dest.add_tensor("model.big", td);
    (void)cp.load(dest);
    const auto want = Source::expected(k).at("model.big");
    BOOST_TEST(std::memcmp(rows.data(), want.data(), want.size()) == 0, "step " << k);
    check_dir(dir, k);
    BOOST_TEST(st::save_leftovers(dir).empty());
    BOOST_TEST(dcp_test::list_names(dir).size() <= 2u + 1u, "files of earlier saves left in " << dir);
  }
  (void)staged;
}

// The caller keeps writing its tensors from the moment async_save returns until the save is
// done, as a training step does: the first call of a fresh Checkpointer (its staging memory
// new, or made resident by prepare_async_save) and later calls (reused) each hold the values
// at their call, as dcpp and torch 2.13 read them back.
BOOST_AUTO_TEST_CASE(the_caller_writing_during_the_save_changes_nothing_saved) {
  dcp_test::TempDir tmp;
  constexpr int kCalls = 3;
  auto dir = [&](bool prepared, int k) { return tmp.path() / ((prepared ? "prepared" : "fresh") + std::to_string(k)); };
  for (const bool prepared : {false, true}) {
    Source src;
    auto writer = std::make_shared<st::FileSystemWriter>(dir(prepared, 0), options(true));
    ck::Checkpointer cp(writer, nullptr);
    src.fill(-7);
    if (prepared) cp.prepare_async_save(src.sd);
    for (int k = 0; k < kCalls; ++k) {
      writer->reset(dir(prepared, k));
      src.fill(k);
      auto saved = cp.async_save(src.sd);
      std::atomic<bool> done = false;
      int writes = 0;
      std::thread training([&] {
        for (int step = 1; !done.load() || writes == 0; ++step, ++writes) src.fill(100 * (k + 1) + step);
      });
      const auto metadata = saved.get();
      done = true;
      training.join();
      BOOST_TEST(metadata.items.size() == 4u);
    }
    for (int k = 0; k < kCalls; ++k) check_dir(dir(prepared, k), k);
  }
  if (!dcp_test::python2x_available()) return;
  boost::json::array checks;
  std::vector<std::string> names;
  for (const bool prepared : {false, true})
    for (const int k : {0, kCalls - 1}) {
      const auto want = Source::expected(k);
      Case one(tmp.path() / ("bins" + std::to_string(names.size())));
      one.expect({std::string("model"), std::string("big")}, DType::float32, {1024, 1024}, want.at("model.big"));
      one.expect({std::string("step")}, DType::int64, {3}, want.at("step"));
      one.expect({std::string("model"), std::string("t")}, DType::bfloat16, {5, 6}, want.at("model.t"));
      boost::json::object tag;
      tag["path"] = json_path({std::string("tag")});
      tag["literal"] = "'async'";
      one.objects.push_back(std::move(tag));
      names.push_back(dir(prepared, k).filename().string());
      checks.push_back(one.check(names.back(), dir(prepared, k)));
    }
  write_manifest(tmp.path() / "manifest.json", checks);
  run_checks(dcp_test::python2x(), "save_check.py", "load " + dcp_test::quote(tmp.path() / "manifest.json"), names);
}

// prepare_async_save's reserve makes every buffer a stage of the same state dict uses: the
// stage takes nothing more and copies the values.
BOOST_AUTO_TEST_CASE(reserved_staging_is_the_staging_a_stage_uses) {
  Source src;
  src.fill(3);
  std::uint64_t allocations = 0, allocated = 0;
  ck::StagingArea staging([&](std::uint64_t bytes) {
    ++allocations;
    allocated += bytes;
    return dcp::memory::allocate(bytes);
  });
  staging.reserve(src.sd);
  const auto reserved = allocations;
  BOOST_TEST(allocated == 4u * (1 << 20) + 24u + 60u);  // the tensors' bytes, each buffer once
  BOOST_TEST(staging.bytes() == allocated);
  const auto staged = staging.stage(src.sd);
  BOOST_TEST(allocations == reserved);
  src.fill(4);
  dcp_test::TempDir tmp;
  (void)save_one(staged, tmp.path() / "ckpt");
  check_dir(tmp.path() / "ckpt", 3);
}

// A write that fails (the target already holds a checkpoint, and overwrite is off) delivers its
// error through the future; the next save, elsewhere, works.
BOOST_AUTO_TEST_CASE(async_failure_through_the_future) {
  dcp_test::TempDir tmp;
  Source src;
  const auto bad = tmp.path() / "bad";
  fs::create_directories(bad);
  dcp_test::write_bytes(bad / ".metadata", {std::byte{'x'}});
  auto writer = std::make_shared<st::FileSystemWriter>(bad, options());
  ck::Checkpointer cp(writer, nullptr);
  src.fill(1);
  auto f = cp.async_save(src.sd);
  src.fill(2);
  expect_error([&] { (void)f.get(); }, dcp::Errc::failed_precondition, {bad.string(), "already holds a checkpoint"});
  BOOST_TEST((dcp_test::list_names(bad) == std::vector<std::string>{".metadata"}));
  // The same Checkpointer, pointed elsewhere, saves the values of its next call.
  writer->reset(tmp.path() / "good");
  src.fill(3);
  auto g = cp.async_save(src.sd);
  src.fill(4);
  BOOST_TEST(g.get().items.size() == 4u);
  check_dir(tmp.path() / "good", 3);
  // A failure after staging (an object that cannot be encoded) too.
  auto doc = std::make_shared<dcp::pickle::Document>();
  const auto pid = doc->add_persistent(0, doc->add_text(dcp::pickle::NodeKind::string, 0, "storage"));
  doc->set_root(pid);
  Source src2;
  src2.sd.add_object({std::string("bad_object")}, pl::ObjectValue{doc, pid});
  writer->reset(tmp.path() / "third");
  auto h = cp.async_save(src2.sd);
  expect_error([&] { (void)h.get(); }, dcp::Errc::unimplemented, {"bad_object"});
  BOOST_TEST(!fs::exists(tmp.path() / "third" / ".metadata"));
  BOOST_TEST(!fs::exists(tmp.path() / "third"), "the directory the failed save created is still there");
}

namespace {

// Each of `world` ranks (threads over an in-process group) runs `body`; each rank's error.
std::vector<std::optional<dcp::Error>> on_ranks(int world, const std::function<void(int, co::ProcessGroup&)>& body) {
  auto groups = co::make_in_process_group(world, {.timeout = std::chrono::seconds(60)});
  std::vector<std::optional<dcp::Error>> errors(static_cast<std::size_t>(world));
  {
    std::vector<std::jthread> threads;
    for (int r = 0; r < world; ++r)
      threads.emplace_back([&, r] {
        try {
          body(r, *groups[static_cast<std::size_t>(r)]);
        } catch (const dcp::Error& e) {
          errors[static_cast<std::size_t>(r)] = e;
        }
      });
  }
  return errors;
}

}  // namespace

// Three ranks: each starts an async save over the group, then runs its own collectives on the
// same group while the save is in flight (the background save has a group of its own). Every
// step of both sees its own payloads, and the checkpoint holds the values of the call.
BOOST_AUTO_TEST_CASE(async_save_beside_the_callers_collectives) {
  dcp_test::TempDir tmp;
  const auto dir = tmp.path() / "ckpt";
  constexpr int kWorld = 3, kSteps = 100;
  std::vector<Source> sources(kWorld);
  const auto errors = on_ranks(kWorld, [&](int rank, co::ProcessGroup& group) {
    auto& src = sources[static_cast<std::size_t>(rank)];
    src.fill(5);
    const auto mine = ck::split_rows(src.sd, kWorld)[static_cast<std::size_t>(rank)];
    ck::Checkpointer cp(std::make_shared<st::FileSystemWriter>(dir, options()), nullptr, &group);
    auto saved = cp.async_save(mine);
    src.fill(6);
    co::Collectives ranks(&group);
    for (int i = 0; i < kSteps; ++i) {
      const auto got = ranks.all_reduce(
          "caller", [&] { return std::vector<std::byte>(static_cast<std::size_t>(rank + i), std::byte{1}); },
          [&](co::Collectives::Results all) {
            std::size_t total = 0;
            for (const auto& b : all) total += b.size();
            return std::vector<std::byte>(total, std::byte{2});
          });
      if (got.size() != static_cast<std::size_t>(3 * i + 3)) throw dcp::Error(dcp::Errc::internal, "caller's step mixed up");
    }
    (void)saved.get();
  });
  for (const auto& e : errors) BOOST_TEST(!e.has_value(), (e ? e->what() : ""));
  check_dir(dir, 5);
}

// Staging fails on rank 1 (its allocator refuses): every rank's async_save throws that error,
// naming rank 1, instead of the others starting a background save that waits for it.
BOOST_AUTO_TEST_CASE(a_rank_that_cannot_stage_fails_every_ranks_async_save) {
  dcp_test::TempDir tmp;
  const auto dir = tmp.path() / "ckpt";
  std::vector<Source> sources(3);
  const auto errors = on_ranks(3, [&](int rank, co::ProcessGroup& group) {
    std::function<dcp::memory::Buffer(std::uint64_t)> allocate;
    if (rank == 1)
      allocate = [](std::uint64_t bytes) -> dcp::memory::Buffer {
        throw dcp::Error(dcp::Errc::resource_exhausted, "allocating " + std::to_string(bytes) + " bytes: out of memory");
      };
    const auto mine = ck::split_rows(sources[static_cast<std::size_t>(rank)].sd, 3)[static_cast<std::size_t>(rank)];
    ck::Checkpointer cp(std::make_shared<st::FileSystemWriter>(dir, options()), nullptr, &group, 0, false, nullptr,
                        nullptr, allocate);
    (void)cp.async_save(mine).get();
  });
  for (const auto& e : errors) {
    BOOST_REQUIRE(e.has_value());
    BOOST_TEST((e->code() == dcp::Errc::resource_exhausted), e->what());
    BOOST_TEST(std::string(e->what()).rfind("rank 1: ", 0) == 0, e->what());
  }
  BOOST_TEST(!fs::exists(dir / ".metadata"));
}
