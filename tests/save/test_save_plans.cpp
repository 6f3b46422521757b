// De-duplication (torch's _dedup_save_plans semantics) and the save-plan codec, plus a
// replicated tensor on 3 ranks written once and loaded by torch.
#include <boost/test/unit_test.hpp>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "../support/support.hpp"
#include "save_support.hpp"

using namespace save_test;

namespace {

std::vector<std::string> keys(const pl::SavePlan& p) {
  std::vector<std::string> out;
  for (const auto& i : p.items) out.push_back(i.index.fqn);
  return out;
}

using Keys = std::vector<std::string>;

}  // namespace

BOOST_AUTO_TEST_SUITE(dedup)

// torch: for each key (first-seen order), the holder with the fewest planned bytes so far
// (ties: lowest rank) keeps it; objects count 1 byte.
BOOST_AUTO_TEST_CASE(fewest_bytes_rule) {
  std::vector<pl::SavePlan> plans(3);
  // rank 0 holds a big private tensor first, so the replicated ones drift to ranks 1 and 2.
  plans[0].items = {tensor_item("big0", {100}), tensor_item("a", {10}), tensor_item("b", {10}), object_item("o"),
                    tensor_item("c", {30})};
  plans[1].items = {tensor_item("a", {10}), tensor_item("b", {10}), object_item("o"), tensor_item("c", {30})};
  plans[2].items = {tensor_item("a", {10}), tensor_item("b", {10}), object_item("o"), tensor_item("c", {30})};
  const auto out = pl::dedup_save_plans(plans, false);
  // big0 → r0 (400 bytes); a → r1 (ties r1/r2 → lowest); b → r2; o → r1 (40 < 41? r1=40, r2=40 → r1);
  // c → r2 (r1=41, r2=40).
  BOOST_TEST((keys(out[0]) == Keys{"big0"}));
  BOOST_TEST((keys(out[1]) == Keys{"a", "o"}));
  BOOST_TEST((keys(out[2]) == Keys{"b", "c"}));
}

BOOST_AUTO_TEST_CASE(lowest_rank_rule) {
  std::vector<pl::SavePlan> plans(3);
  plans[0].items = {tensor_item("big0", {100})};
  plans[1].items = {tensor_item("a", {10}), object_item("o")};
  plans[2].items = {tensor_item("a", {10}), object_item("o"), tensor_item("z", {1})};
  const auto out = pl::dedup_save_plans(plans, true);
  BOOST_TEST((keys(out[0]) == Keys{"big0"}));
  BOOST_TEST((keys(out[1]) == Keys{"a", "o"}));
  BOOST_TEST((keys(out[2]) == Keys{"z"}));
}

// torch counts `tensor_storage_size() or 1`: an empty tensor weighs 1 byte, like an object, so
// the next replicated item goes to the other rank.
BOOST_AUTO_TEST_CASE(empty_tensor_counts_one_byte) {
  std::vector<pl::SavePlan> plans(2);
  plans[0].items = {tensor_item("e", {0, 4}), tensor_item("x", {10})};
  plans[1].items = {tensor_item("e", {0, 4}), tensor_item("x", {10})};
  const auto out = pl::dedup_save_plans(plans, false);
  BOOST_TEST((keys(out[0]) == Keys{"e"}));
  BOOST_TEST((keys(out[1]) == Keys{"x"}));
}

// Shards with distinct offsets are distinct items; the same (fqn, offsets) on two ranks is one.
BOOST_AUTO_TEST_CASE(shards_by_offsets) {
  auto shard = [](md::Shape off, md::Shape sizes) {
    auto i = tensor_item("w", sizes);
    i.type = pl::WriteItemType::shard;
    i.index.offset = off;
    i.tensor_data->chunk.offsets = off;
    i.tensor_data->size = {4, 4};
    return i;
  };
  std::vector<pl::SavePlan> plans(2);
  plans[0].items = {shard({0, 0}, {2, 4}), shard({2, 0}, {2, 4})};
  plans[1].items = {shard({2, 0}, {2, 4})};
  const auto out = pl::dedup_save_plans(plans, false);
  BOOST_TEST(out[0].items.size() + out[1].items.size() == 2u);
  BOOST_TEST(out[1].items.size() == 1u);  // r0 had 64 bytes planned when {2,0} came up (the whole tensor)
  const auto [global, m] = pl::create_global_save_plan(out);
  BOOST_TEST(m.items.size() == 1u);
  BOOST_TEST(m.items[0].tensor().chunks.size() == 2u);
}

// Small 1-D and 2-D offsets are compared as de-duplication keys themselves; 3-D ones, and
// offsets of 2^30 or more, by hash and then item by item. Both ways, equal offsets on two ranks
// are one item and different ones two, whether the plans list the same keys (read down
// columns) or not (grouped first).
BOOST_AUTO_TEST_CASE(offsets_compared_exactly_beyond_the_small_key) {
  constexpr std::int64_t kFar = std::int64_t{1} << 30;
  // Per kind of offsets, a key both ranks hold at the same offsets and one at different ones.
  auto plan_of = [&](int rank, bool regular) {
    const std::int64_t r = rank;
    pl::SavePlan plan;
    plan.items = {shard_item("far.same", {kFar + 6}, {2}, {2 * kFar}),
                  shard_item("far.other", {kFar + 2 * r}, {2}, {2 * kFar}),
                  shard_item("cube.same", {2, 0, 3}, {2, 4, 1}, {4, 4, 4}),
                  shard_item("cube.other", {2, 0, r}, {2, 4, 1}, {4, 4, 4}),
                  shard_item("small.same", {1, 2}, {1, 2}, {4, 4}),
                  shard_item("small.other", {1, 2 * r}, {1, 2}, {4, 4})};
    if (!regular) plan.items.insert(plan.items.begin(), tensor_item("only" + std::to_string(rank), {1}));
    return plan;
  };
  // The same keys in every plan (read down columns), or not (grouped first); the lowest rank
  // keeps what both hold.
  for (const bool regular : {true, false}) {
    const auto out = pl::dedup_save_plans({plan_of(0, regular), plan_of(1, regular)}, true);
    BOOST_TEST(out[0].items.size() == (regular ? 6u : 7u));
    const Keys others = regular ? Keys{"far.other", "cube.other", "small.other"}
                                : Keys{"only1", "far.other", "cube.other", "small.other"};
    BOOST_TEST(keys(out[1]) == others, (regular ? "regular plans" : "irregular plans"));
  }
}

// A plan keeps its planner_data and storage data through de-duplication.
BOOST_AUTO_TEST_CASE(keeps_plan_fields) {
  std::vector<pl::SavePlan> plans(2);
  plans[0].items = {object_item("o")};
  plans[1].items = {object_item("o")};
  plans[1].storage_data = "x";
  plans[1].planner_data = {{"o", {md::PathPart(std::string("o"))}}};
  const auto out = pl::dedup_save_plans(plans, false);
  BOOST_TEST(out[0].items.size() == 1u);
  BOOST_TEST(out[1].items.empty());
  BOOST_TEST(out[1].storage_data == "x");
  BOOST_TEST(out[1].planner_data.size() == 1u);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(codec)

pl::SavePlan sample_plan() {
  pl::SavePlan plan;
  plan.storage_data = ".ckpt.dcpp-123\n__2_";
  plan.usable = true;
  auto t = tensor_item("model.w", {3, 4}, DType::bfloat16);
  t.index.index = 5;
  t.tensor_data->properties.requires_grad = true;
  t.tensor_data->properties.memory_format = md::MemoryFormat::channels_last;
  auto s = tensor_item("model.s", {2, 2}, DType::float8_e5m2);
  s.type = pl::WriteItemType::shard;
  s.index.offset = md::Shape{2, 0};
  s.tensor_data->chunk.offsets = {2, 0};
  s.tensor_data->size = {4, 2};
  plan.items = {t, s, object_item("step"), tensor_item("scalar", {})};
  plan.planner_data = {{"model.w", {md::PathPart(std::string("model")), md::PathPart(std::string("w"))}},
                       {"layers.0", {md::PathPart(std::string("layers")), md::PathPart(std::int64_t{0})}}};
  return plan;
}

BOOST_AUTO_TEST_CASE(save_plan_round_trip) {
  const auto plan = sample_plan();
  const auto bytes = pl::encode_save_plan(plan);
  BOOST_TEST((pl::decode_save_plan(bytes) == plan));
  pl::SavePlan empty;
  empty.usable = false;
  BOOST_TEST((pl::decode_save_plan(pl::encode_save_plan(empty)) == empty));
}

BOOST_AUTO_TEST_CASE(write_results_round_trip) {
  std::vector<pl::WriteResult> results(2);
  results[0].index = md::MetadataIndex{"a", md::Shape{0, 3}, 1};
  results[0].size_in_bytes = 1234;
  results[0].storage_data = md::StorageInfo{"__0_1.distcp", 64, 1234, {"stream.zstd/1"}, 0};
  results[1].index = md::MetadataIndex{"o", std::nullopt, std::nullopt};
  results[1].storage_data = md::StorageInfo{"__1_0.distcp", 0, 7, {}, 0};
  const auto back = pl::decode_write_results(pl::encode_write_results(results));
  BOOST_TEST_REQUIRE(back.size() == 2u);
  for (std::size_t i = 0; i < 2; ++i) {
    BOOST_TEST(back[i].index.fqn == results[i].index.fqn);
    BOOST_TEST((back[i].index.offset == results[i].index.offset));
    BOOST_TEST((back[i].index.index == results[i].index.index));
    BOOST_TEST(back[i].size_in_bytes == results[i].size_in_bytes);
    BOOST_TEST(back[i].storage_data.relative_path == results[i].storage_data.relative_path);
    BOOST_TEST(back[i].storage_data.offset == results[i].storage_data.offset);
    BOOST_TEST(back[i].storage_data.length == results[i].storage_data.length);
    BOOST_TEST((back[i].storage_data.transform_descriptors == results[i].storage_data.transform_descriptors));
  }
}

// Every truncation of a valid encoding is refused with data_loss (never a crash, never a
// short plan); bad magic, trailing bytes and huge counts too.
BOOST_AUTO_TEST_CASE(corrupt_inputs) {
  const auto bytes = pl::encode_save_plan(sample_plan());
  for (std::size_t n = 0; n < bytes.size(); ++n)
    expect_error([&] { (void)pl::decode_save_plan(std::span(bytes.data(), n)); }, dcp::Errc::data_loss, {"save plan"});
  std::vector<pl::WriteResult> one(1);
  one[0].index.fqn = "k";
  const auto results = pl::encode_write_results(one);
  for (std::size_t n = 0; n < results.size(); ++n)
    expect_error([&] { (void)pl::decode_write_results(std::span(results.data(), n)); }, dcp::Errc::data_loss,
                 {"write results"});

  auto bad_magic = bytes;
  bad_magic[0] = std::byte{'X'};
  expect_error([&] { (void)pl::decode_save_plan(bad_magic); }, dcp::Errc::data_loss, {"magic"});
  expect_error([&] { (void)pl::decode_write_results(bytes); }, dcp::Errc::data_loss, {"magic"});  // a plan is no result
  expect_error([&] { (void)pl::decode_save_plan(results); }, dcp::Errc::data_loss, {"magic"});

  auto trailing = bytes;
  trailing.push_back(std::byte{0});
  expect_error([&] { (void)pl::decode_save_plan(trailing); }, dcp::Errc::data_loss, {"trailing"});

  // The item count sits after magic, storage data (u32 length + text) and `usable`.
  auto huge = pl::encode_save_plan(pl::SavePlan{});
  const std::size_t count_at = 4 + 4 + 0 + 1;
  for (int i = 0; i < 8; ++i) huge[count_at + static_cast<std::size_t>(i)] = std::byte{0xFF};
  expect_error([&] { (void)pl::decode_save_plan(huge); }, dcp::Errc::data_loss, {"exceeds"});
  auto huge_results = pl::encode_write_results({});
  for (int i = 0; i < 8; ++i) huge_results[4 + static_cast<std::size_t>(i)] = std::byte{0xFF};
  expect_error([&] { (void)pl::decode_write_results(huge_results); }, dcp::Errc::data_loss, {"exceeds"});
  // A huge string length.
  auto long_text = pl::encode_save_plan(pl::SavePlan{});
  for (int i = 0; i < 4; ++i) long_text[4 + static_cast<std::size_t>(i)] = std::byte{0xFF};
  expect_error([&] { (void)pl::decode_save_plan(long_text); }, dcp::Errc::data_loss, {"storage data"});

  // Every single-byte change either decodes or is refused with data_loss.
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    auto b = bytes;
    b[i] ^= std::byte{0xA5};
    try {
      (void)pl::decode_save_plan(b);
    } catch (const dcp::Error& e) {
      BOOST_TEST(static_cast<int>(e.code()) == static_cast<int>(dcp::Errc::data_loss), e.what());
    }
  }
}

// The coordinator decodes every rank's plan at once (on several threads); the error is the
// lowest bad rank's, as a loop over the ranks would meet it.
BOOST_AUTO_TEST_CASE(many_plans_at_once) {
  auto plan = sample_plan();  // a few MB in all, enough for several threads
  for (int copy = 0; copy < 8; ++copy) plan.items.insert(plan.items.end(), plan.items.begin(), plan.items.end());
  std::vector<pl::SavePlan> plans(64, plan);
  for (std::size_t r = 0; r < plans.size(); ++r) plans[r].storage_data = "rank " + std::to_string(r);
  auto encoded = pl::encode_save_plans(plans);
  BOOST_TEST_REQUIRE(encoded.size() == plans.size());
  BOOST_TEST((encoded[7] == pl::encode_save_plan(plans[7])));
  std::vector<std::span<const std::byte>> bodies(encoded.begin(), encoded.end());
  BOOST_TEST((pl::decode_save_plans(bodies) == plans));
  encoded[31].push_back(std::byte{0});                 // trailing bytes
  encoded[17].resize(encoded[17].size() - 1);          // truncated
  bodies.assign(encoded.begin(), encoded.end());
  const auto e = dcp_test::thrown<dcp::Error>([&] { (void)pl::decode_save_plans(bodies); });
  BOOST_TEST(std::string(e.what()).find("trailing") == std::string::npos, e.what());
}

BOOST_AUTO_TEST_SUITE_END()

// One plain tensor on 3 ranks is written once (one storage entry, in one rank's file); the
// objects every rank holds too; torch loads the result.
BOOST_AUTO_TEST_CASE(replicated_tensor_written_once, *boost::unit_test::precondition(dcp_test::needs_python2x)) {
  dcp_test::TempDir tmp;
  Case c(tmp.path() / "bins");
  const auto big = c.tensor({std::string("shared")}, DType::float32, {256, 256}, false);  // 256 KiB
  const auto own = c.tensor({std::string("own")}, DType::int64, {4}, false);
  std::vector<pl::StateDict> sds(3);
  for (auto& sd : sds) {
    sd.add_tensor({std::string("shared")}, big);
    sd.add_object({std::string("epoch")}, pl::ObjectValue::integer(3));
  }
  md::TensorProperties p;
  p.dtype = DType::int64;
  sds[2].add_sharded_tensor({std::string("own")}, {4}, p, {pl::SaveChunk{{0}, own}});
  for (int r = 0; r < 2; ++r) sds[static_cast<std::size_t>(r)].add_sharded_tensor({std::string("own")}, {4}, p, {});
  boost::json::object o;
  o["path"] = json_path({std::string("epoch")});
  o["literal"] = "3";
  c.objects.push_back(std::move(o));
  const auto dir = tmp.path() / "ckpt";
  auto opts = options();
  opts.files_per_rank = 1;
  const auto m = save_many(sds, dir, opts);
  BOOST_TEST(m.storage_data.size() == 3u);  // shared, own, epoch: once each
  std::uint64_t data_bytes = 0;
  std::size_t files = 0;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".distcp") {
      data_bytes += fs::file_size(e.path());
      ++files;
    }
  const std::uint64_t tensor = 256 * 256 * 4;
  BOOST_TEST(data_bytes > tensor);
  BOOST_TEST(data_bytes < 2 * tensor, "the replicated tensor was written more than once: " << data_bytes);
  // fewest bytes: rank 0 takes `shared`, rank 1 the object, rank 2 its own shard.
  const auto* shared = m.find_storage("shared", nullptr);
  BOOST_TEST_REQUIRE(m.storage_data.size() == 3u);
  for (const auto& [index, info] : m.storage_data) {
    if (index.fqn == "shared") BOOST_TEST(info.relative_path == "__0_0.distcp");
    if (index.fqn == "epoch") BOOST_TEST(info.relative_path == "__1_0.distcp");
    if (index.fqn == "own") BOOST_TEST(info.relative_path == "__2_0.distcp");
  }
  (void)shared;
  BOOST_TEST(files == 3u);
  boost::json::array checks;
  checks.push_back(c.check("replicated", dir));
  write_manifest(tmp.path() / "manifest.json", checks);
  run_checks(dcp_test::python2x(), "save_check.py", "load " + dcp_test::quote(tmp.path() / "manifest.json"),
             {"replicated"});
}

BOOST_AUTO_TEST_SUITE(global_plan)

// The coordinator checks in passes (kinds in parallel, order-dependent rules in plan order,
// comparisons in parallel); its error must still be the one a loop over the items in plan
// order, checking each item fully, meets first.
namespace {
void expect_global_error(std::vector<pl::SavePlan> plans, std::vector<std::string> parts) {
  expect_error([&] { (void)pl::create_global_save_plan(std::move(plans)); }, dcp::Errc::invalid_argument, parts);
}
}  // namespace

BOOST_AUTO_TEST_CASE(chunks_in_plan_order_with_their_index_hints) {
  std::vector<pl::SavePlan> plans(3);
  plans[0].items = {object_item("step"), shard_item("w", {4, 0}, {4, 2}, {8, 2})};
  plans[1].items = {shard_item("w", {0, 0}, {4, 2}, {8, 2}), tensor_item("b", {3})};
  plans[2].items = {shard_item("w", {8, 0}, {0, 2}, {8, 2})};
  const auto [global, m] = pl::create_global_save_plan(plans);
  BOOST_TEST(keys(global[1]) == (Keys{"w", "b"}));
  BOOST_TEST(m.items.size() == 3u);
  BOOST_TEST(m.items[0].fqn == "step");
  BOOST_TEST(!m.items[0].is_tensor());
  const auto& w = m.items[1].tensor();
  BOOST_TEST(w.chunks.size() == 3u);
  BOOST_TEST((w.chunks[0].offsets == md::Shape{4, 0}));
  BOOST_TEST((w.chunks[1].offsets == md::Shape{0, 0}));
  BOOST_TEST((w.chunks[2].sizes == md::Shape{0, 2}));
  BOOST_TEST(*global[2].items[0].index.index == 2);
  BOOST_TEST(*global[1].items[1].index.index == 0);
}

BOOST_AUTO_TEST_CASE(the_first_failing_item_in_plan_order_is_named) {
  const md::Shape g{8, 2};
  {  // a size disagreement (plan 1, first item) before a plain tensor saved twice (plan 1, second)
    std::vector<pl::SavePlan> plans(2);
    plans[0].items = {tensor_item("b", {3}), tensor_item("a", {2})};
    plans[1].items = {tensor_item("b", {5}), tensor_item("a", {2})};
    expect_global_error(plans, {"'b'", "global size"});
  }
  {  // one item failing both: its comparison comes before the plain-twice rule
    std::vector<pl::SavePlan> plans(2);
    plans[0].items = {tensor_item("a", {2})};
    plans[1].items = {tensor_item("a", {2}, DType::int64)};
    expect_global_error(plans, {"'a'", "properties"});
  }
  {  // an order rule in plan 1 before a disagreement in plan 3
    std::vector<pl::SavePlan> plans(4);
    plans[0].items = {object_item("o"), shard_item("w", {0, 0}, {4, 2}, g)};
    plans[1].items = {object_item("o")};
    plans[3].items = {shard_item("w", {4, 0}, {4, 2}, {9, 2})};
    expect_global_error(plans, {"'o'", "saved twice"});
  }
  {  // an object key saved as a tensor; a malformed item after it is not reached
    std::vector<pl::SavePlan> plans(2);
    plans[0].items = {object_item("o")};
    auto bad = shard_item("w", {4, 0}, {4, 2}, g);
    bad.index.offset = md::Shape{0, 0};
    plans[1].items = {tensor_item("o", {2}), bad};
    expect_global_error(plans, {"'o'", "as an object and as a tensor"});
    plans[1].items = {bad, tensor_item("o", {2})};
    expect_global_error(plans, {"'w'", "without matching chunk data"});
  }
  {  // shards after a plain tensor of the same key
    std::vector<pl::SavePlan> plans(2);
    plans[0].items = {tensor_item("w", {8, 2})};
    plans[1].items = {shard_item("w", {0, 0}, {4, 2}, g)};
    expect_global_error(plans, {"'w'", "also saved plain"});
  }
}

BOOST_AUTO_TEST_SUITE_END()
