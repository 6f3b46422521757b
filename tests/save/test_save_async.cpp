// Checkpointer::async_save: the caller may change its tensors as soon as the call returns;
// each checkpoint holds the values at its call. A failed write surfaces through the future and
// the next save works.
#include <boost/test/unit_test.hpp>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "../support/support.hpp"
#include "save_support.hpp"

using namespace save_test;

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
