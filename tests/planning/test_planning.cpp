// Unit tests for dcp.planning: read items for resharded loads (executed against simulated
// saved data), strict-mode rejections, slices, plan bytes and unflattening.
#define BOOST_TEST_MODULE dcp.planning
#include "planning_test.hpp"


BOOST_AUTO_TEST_SUITE(unit)

BOOST_AUTO_TEST_CASE(torch_worked_example) {
  // 120 elements saved by 4 ranks, loaded on 3: rank 1 reads [10,30) of chunk [30,60) into
  // [0,20) and [0,20) of chunk [60,90) into [20,40).
  const LoadPlan plan = load_and_check({120}, layout::chunk_split({120}, 0, 4), {Box{{40}, {40}}});
  const std::vector<ReadItem> expected{
      {LoadItemType::tensor, MetadataIndex{"w", Shape{40}, 0}, {0}, MetadataIndex{"w", Shape{30}, 1}, {10}, {20}},
      {LoadItemType::tensor, MetadataIndex{"w", Shape{40}, 0}, {20}, MetadataIndex{"w", Shape{60}, 2}, {0}, {20}},
  };
  BOOST_TEST(plan.items == expected, boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(reshard_along_dim0) {
  reshard_rows({120}, 4, 3);
  reshard_rows({120, 3}, 8, 4);
  reshard_rows({120}, 4, 8);
  reshard_rows({17, 2}, 1, 5);   // 1 → N
  reshard_rows({17, 2}, 7, 1);   // N → 1
  reshard_rows({10, 7}, 4, 3);   // uneven: 3, 3, 3, 1 saved
  reshard_rows({10}, 3, 4);
  reshard_rows({2, 3}, 4, 3);    // saved with empty shards (sizes 1, 1, 0, 0)
  reshard_rows({2, 3}, 3, 4);    // destination with empty shards
}

BOOST_AUTO_TEST_CASE(saved_along_dim1_loaded_along_dim0) {
  const Shape global{6, 8};
  const auto saved = layout::chunk_split(global, 1, 4);
  for (const Box& mine : layout::chunk_split(global, 0, 3)) {
    const LoadPlan plan = load_and_check(global, saved, {mine});
    BOOST_TEST(plan.items.size() == 4u);  // each row band meets every column chunk
  }
  // Both: 2-D tiles to other 2-D tiles, several local chunks on one rank.
  std::vector<Box> tiles, mine;
  for (const Box& r : layout::chunk_split(global, 0, 4))
    for (const Box& c : layout::chunk_split(global, 1, 3)) tiles.push_back(Box{{r.offsets[0], c.offsets[1]}, {r.sizes[0], c.sizes[1]}});
  for (const Box& r : layout::chunk_split(global, 0, 5))
    for (const Box& c : layout::chunk_split(global, 1, 2)) mine.push_back(Box{{r.offsets[0], c.offsets[1]}, {r.sizes[0], c.sizes[1]}});
  load_and_check(global, tiles, mine);
}

BOOST_AUTO_TEST_CASE(zero_dim_tensor) {
  const LoadPlan plan = load_and_check({}, {Box{}}, {Box{}});
  BOOST_REQUIRE(plan.items.size() == 1u);
  BOOST_TEST(plan.items[0].lengths.empty());
  BOOST_TEST(plan.items[0].dest_offsets.empty());
  BOOST_TEST(plan.items[0].storage_offsets.empty());
}

BOOST_AUTO_TEST_CASE(rank_without_chunks_reads_nothing) {
  Checkpoint ck;
  ck.tensor("w", {4}, {Box{{0}, {4}}});
  Destination dest;
  dest.add_tensor("w", chunks_of({4}, {}));
  BOOST_TEST(plan_for(ck.md, dest).items.empty());
}

BOOST_AUTO_TEST_CASE(missing_key_strict_and_partial) {
  Checkpoint ck;
  ck.tensor("a", {4}, {Box{{0}, {4}}});
  Destination dest;
  dest.add_tensor("a", chunks_of({4}, {Box{{0}, {4}}}));
  dest.add_tensor("b", chunks_of({4}, {Box{{0}, {4}}}));
  expect_error([&] { plan_for(ck.md, dest); }, Errc::not_found, "b", "missing key in checkpoint");
  const LoadPlan plan = plan_for(ck.md, dest, {.allow_partial_load = true});
  BOOST_REQUIRE(plan.items.size() == 1u);
  BOOST_TEST(plan.items[0].dest_index.fqn == "a");
}

BOOST_AUTO_TEST_CASE(checkpoint_keys_absent_from_destination_are_ignored) {
  Checkpoint ck;
  ck.tensor("a", {4}, {Box{{0}, {4}}}).tensor("extra", {2}, {Box{{0}, {2}}}).object("extra_obj");
  Destination dest;
  dest.add_tensor("a", chunks_of({4}, {Box{{0}, {4}}}));
  BOOST_TEST(plan_for(ck.md, dest).items.size() == 1u);
}

BOOST_AUTO_TEST_CASE(shape_mismatch) {
  Checkpoint ck;
  ck.tensor("w", {4, 2}, {Box{{0, 0}, {4, 2}}});
  Destination dest;
  dest.add_tensor("w", chunks_of({2, 4}, {Box{{0, 0}, {2, 4}}}));
  expect_error([&] { plan_for(ck.md, dest); }, Errc::failed_precondition, "w", "saved (4, 2), destination (2, 4)");
}

BOOST_AUTO_TEST_CASE(kind_mismatch_both_ways) {
  Checkpoint ck;
  ck.tensor("t", {1}, {Box{{0}, {1}}}).object("o");
  Destination as_object;
  as_object.add_object("t");
  expect_error([&] { plan_for(ck.md, as_object); }, Errc::failed_precondition, "t", "holds a tensor");
  Destination as_tensor;
  as_tensor.add_tensor("o", chunks_of({1}, {Box{{0}, {1}}}));
  expect_error([&] { plan_for(ck.md, as_tensor); }, Errc::failed_precondition, "o", "holds an object");
}

BOOST_AUTO_TEST_CASE(dtype_mismatch_both_modes) {
  Checkpoint ck;
  ck.tensor("w", {4}, {Box{{0}, {4}}}, DType::bfloat16).tensor("same", {4}, {Box{{0}, {4}}}, DType::float32);
  Destination dest;
  dest.add_tensor("w", chunks_of({4}, {Box{{0}, {4}}}, DType::float32));
  dest.add_tensor("same", chunks_of({4}, {Box{{0}, {4}}}, DType::float32));
  expect_error([&] { plan_for(ck.md, dest); }, Errc::failed_precondition, "w", "saved bfloat16, destination float32");

  DefaultLoadPlanner planner({.allow_dtype_conversion = true});
  planner.set_up_planner(dest, md::validate(ck.md), true);
  BOOST_TEST(planner.create_local_plan().items.size() == 2u);
}

// Holes, overlaps and chunks outside the tensor never reach the planner: validate refuses them
// (the planner takes only ValidatedMetadata), before any I/O.
BOOST_AUTO_TEST_CASE(coverage_hole_is_refused_by_validation) {
  Checkpoint ck;
  auto parts = layout::chunk_split({120, 2}, 0, 4);
  parts.erase(parts.begin() + 2);  // nobody saved rows [60, 90)
  ck.tensor("w", {120, 2}, parts);
  expect_error([&] { (void)md::validate(ck.md); }, Errc::data_loss, "w", "chunks cover 180 of 240 elements");
}

BOOST_AUTO_TEST_CASE(overlapping_saved_chunks_are_refused_by_validation) {
  // Overlapping chunks would fool a volume sum: [0,60) + [30,90) sums to 120 for [0,120).
  Checkpoint ck;
  ck.tensor("w", {120}, {Box{{0}, {60}}, Box{{30}, {60}}});
  expect_error([&] { (void)md::validate(ck.md); }, Errc::data_loss, "w", "chunks at (0,) and (30,) overlap");
}

BOOST_AUTO_TEST_CASE(saved_chunk_outside_tensor_is_refused_by_validation) {
  Checkpoint ck;
  ck.tensor("w", {10}, {Box{{0}, {6}}, Box{{6}, {6}}});
  expect_error([&] { (void)md::validate(ck.md); }, Errc::data_loss, "w", "chunk at (6,) with sizes (6,) lies outside");
}

BOOST_AUTO_TEST_CASE(inconsistent_destination_is_rejected) {
  Checkpoint ck;
  ck.tensor("w", {10}, {Box{{0}, {10}}});
  Destination outside;
  outside.add_tensor("w", chunks_of({10}, {Box{{8}, {4}}}));
  DefaultLoadPlanner planner;
  expect_error([&] { planner.set_up_planner(outside, md::validate(ck.md), true); }, Errc::invalid_argument, "w", "outside");
  Destination wrong_memory;
  auto t = chunks_of({10}, {Box{{0}, {10}}});
  t.chunks[0].memory.sizes = {5};
  wrong_memory.add_tensor("w", std::move(t));
  expect_error([&] { planner.set_up_planner(wrong_memory, md::validate(ck.md), true); }, Errc::invalid_argument, "w", "memory");
  Destination twice;
  twice.add_object("x");
  expect_error([&] { twice.add_object("x"); }, Errc::invalid_argument, "x", "twice");
}

BOOST_AUTO_TEST_CASE(bytes_items_and_loaded_bytes) {
  Checkpoint ck;
  ck.object("opt.param_groups");
  Destination dest;
  dest.add_object("opt.param_groups");
  DefaultLoadPlanner planner;
  planner.set_up_planner(dest, md::validate(ck.md), true);
  const LoadPlan plan = planner.finish_plan(planner.create_global_plan({planner.create_local_plan()}).at(0));
  BOOST_REQUIRE(plan.items.size() == 1u);
  const ReadItem& item = plan.items[0];
  BOOST_TEST((item.type == LoadItemType::byte_io));
  BOOST_TEST(item.storage_index.fqn == "opt.param_groups");
  BOOST_TEST(!item.storage_index.offset.has_value());
  BOOST_TEST(planner.loaded_bytes("opt.param_groups") == nullptr);
  planner.load_bytes(item, bytes_of("PK\x03\x04"));
  BOOST_REQUIRE(planner.loaded_bytes("opt.param_groups") != nullptr);
  BOOST_TEST(planner.loaded_bytes("opt.param_groups")->size() == 4u);
  const auto taken = planner.take_bytes("opt.param_groups");
  BOOST_TEST((taken && *taken == bytes_of("PK\x03\x04")));
  BOOST_TEST(planner.loaded_bytes("opt.param_groups") == nullptr);
  ReadItem wrong = item;
  wrong.dest_index.fqn = "nope";
  expect_error([&] { planner.load_bytes(wrong, {}); }, Errc::invalid_argument, "nope");
}

BOOST_AUTO_TEST_CASE(resolve_tensor_rechecks_items) {
  Checkpoint ck;
  ck.tensor("w", {8}, {Box{{0}, {8}}});
  std::vector<std::int64_t> buffer(8);
  Destination dest;
  dest.add_tensor("w", planning::TensorDestination{
                           {8}, DType::int64, planning::row_chunks({8}, DType::int64, 0, 1, reinterpret_cast<std::byte*>(buffer.data()))});
  DefaultLoadPlanner planner;
  planner.set_up_planner(dest, md::validate(ck.md), true);
  const ReadItem good = planner.create_local_plan().items.at(0);
  BOOST_TEST(planner.resolve_tensor(good).data == reinterpret_cast<std::byte*>(buffer.data()));
  ReadItem bad_chunk = good;
  bad_chunk.dest_index.index = 1;
  expect_error([&] { (void)planner.resolve_tensor(bad_chunk); }, Errc::invalid_argument, "w", "no local chunk");
  ReadItem too_long = good;
  too_long.lengths = {9};
  expect_error([&] { (void)planner.resolve_tensor(too_long); }, Errc::invalid_argument, "w", "outside");
  ReadItem bytes = good;
  bytes.type = LoadItemType::byte_io;
  expect_error([&] { (void)planner.resolve_tensor(bytes); }, Errc::invalid_argument, "w");
}

BOOST_AUTO_TEST_CASE(narrow_on_a_strided_slice) {
  // Every other column of a 4 × 6 int32 buffer: sizes (4, 3), strides (6, 2).
  std::vector<std::int32_t> buffer(24);
  auto* base = reinterpret_cast<std::byte*>(buffer.data());
  const TensorSlice cols{base, DType::int32, {4, 3}, {6, 2}};
  BOOST_TEST(!planning::is_contiguous(cols));
  const TensorSlice sub = planning::narrow(cols, {1, 1}, {2, 2});
  BOOST_TEST(sub.data == base + (1 * 6 + 1 * 2) * 4);
  BOOST_TEST(sub.sizes == (Shape{2, 2}));
  BOOST_TEST(sub.strides == (Shape{6, 2}));
  // Narrowing twice adds up, like torch's chained narrow.
  BOOST_TEST(planning::narrow(sub, {1, 1}, {1, 1}).data == base + (2 * 6 + 2 * 2) * 4);
  BOOST_TEST(planning::numel(sub) == 4u);
  expect_error([&] { (void)planning::narrow(cols, {3, 0}, {2, 1}); }, Errc::invalid_argument, "", "outside");
  expect_error([&] { (void)planning::narrow(cols, {0}, {1}); }, Errc::invalid_argument, "", "rank");
  // An empty result keeps the pointer: it is never dereferenced.
  BOOST_TEST(planning::narrow(cols, {4, 0}, {0, 3}).data == base);
}

BOOST_AUTO_TEST_CASE(contiguity) {
  std::vector<float> buffer(12);
  auto* base = reinterpret_cast<std::byte*>(buffer.data());
  const TensorSlice whole = planning::contiguous_slice(base, DType::float32, {3, 4});
  BOOST_TEST(whole.strides == (Shape{4, 1}));
  BOOST_TEST(planning::is_contiguous(whole));
  BOOST_TEST(planning::is_contiguous(planning::narrow(whole, {1, 0}, {2, 4})));   // whole rows
  BOOST_TEST(!planning::is_contiguous(planning::narrow(whole, {0, 1}, {2, 2})));  // a column band
  BOOST_TEST(planning::is_contiguous(planning::narrow(whole, {1, 1}, {1, 2})));   // size-1 dim ignored
  BOOST_TEST(planning::is_contiguous(planning::narrow(whole, {0, 0}, {0, 2})));   // empty
  BOOST_TEST(planning::is_contiguous(planning::contiguous_slice(base, DType::float32, {})));
}

BOOST_AUTO_TEST_CASE(row_chunks_follow_chunk_sharding_spec) {
  std::vector<std::int64_t> buffer(7);
  auto* data = reinterpret_cast<std::byte*>(buffer.data());
  const auto last = planning::row_chunks({10, 7}, DType::int64, 3, 4, data);
  BOOST_REQUIRE(last.size() == 1u);
  BOOST_TEST(last[0].offsets == (Shape{9, 0}));
  BOOST_TEST(last[0].sizes == (Shape{1, 7}));
  BOOST_TEST(last[0].memory.data == data);
  BOOST_TEST(planning::row_chunks({2, 3}, DType::int64, 3, 4, data).empty());
  BOOST_TEST(planning::row_chunks({}, DType::int64, 2, 4, data).size() == 1u);
  expect_error([&] { (void)planning::row_chunks({4}, DType::int64, 4, 4, data); }, Errc::invalid_argument, "", "outside");
}

BOOST_AUTO_TEST_CASE(plan_bytes_round_trip) {
  LoadPlan plan;
  plan.items.push_back({LoadItemType::tensor, MetadataIndex{"model.layers.0.weight", Shape{40, 0}, 3}, {0, 5},
                        MetadataIndex{"model.layers.0.weight", Shape{30, 0}, 1}, {10, 0}, {20, 7}});
  plan.items.push_back({LoadItemType::byte_io, MetadataIndex{"optim.param_groups", {}, {}}, {0},
                        MetadataIndex{"optim.param_groups", {}, {}}, {0}, {0}});
  plan.items.push_back({LoadItemType::tensor, MetadataIndex{"", Shape{}, {}}, {}, MetadataIndex{"s", {}, -1}, {}, {}});
  const auto bytes = planning::encode_plan(plan);
  BOOST_TEST((planning::decode_plan(bytes) == plan));
  BOOST_TEST(planning::decode_plan(planning::encode_plan(LoadPlan{})).items.empty());
}

BOOST_AUTO_TEST_CASE(plan_bytes_rejects_malformed_input) {
  LoadPlan plan;
  plan.items.push_back({LoadItemType::tensor, MetadataIndex{"w", Shape{40}, 0}, {0}, MetadataIndex{"w", Shape{30}, 1}, {10}, {20}});
  plan.items.push_back({LoadItemType::byte_io, MetadataIndex{"o", {}, {}}, {0}, MetadataIndex{"o", {}, {}}, {0}, {0}});
  const auto bytes = planning::encode_plan(plan);
  for (std::size_t n = 0; n < bytes.size(); ++n)
    expect_error([&] { (void)planning::decode_plan(std::span(bytes).first(n)); }, Errc::data_loss, "");
  auto trailing = bytes;
  trailing.push_back(std::byte{0});
  expect_error([&] { (void)planning::decode_plan(trailing); }, Errc::data_loss, "", "trailing");
  auto bad_magic = bytes;
  bad_magic[0] = std::byte{'X'};
  expect_error([&] { (void)planning::decode_plan(bad_magic); }, Errc::data_loss, "", "magic");
  auto bad_type = bytes;
  bad_type[12] = std::byte{7};  // first item's type byte, after magic and count
  expect_error([&] { (void)planning::decode_plan(bad_type); }, Errc::data_loss, "", "item type");
  auto huge_count = bytes;
  huge_count[11] = std::byte{0x7f};
  expect_error([&] { (void)planning::decode_plan(huge_count); }, Errc::data_loss, "", "item count");
}

BOOST_AUTO_TEST_CASE(unflatten_keeps_dotted_keys) {
  Metadata metadata;
  metadata.planner_data.emplace();
  metadata.planner_data->push_back({"model.layers.0.weight", {std::string("model"), std::string("layers.0.weight")}});
  metadata.planner_data->push_back({"model.bias", {std::string("model"), std::string("bias")}});
  metadata.reindex();
  const auto root = planning::unflatten(metadata, {"model.layers.0.weight", "model.bias"});
  BOOST_TEST((root.kind == planning::NestedNode::Kind::dict));
  BOOST_TEST(root.keys == (std::vector<std::string>{"model"}));
  const auto* model = root.find("model");
  BOOST_REQUIRE(model);
  BOOST_TEST(model->keys == (std::vector<std::string>{"layers.0.weight", "bias"}));
  BOOST_TEST(model->find("layers.0.weight")->fqn == "model.layers.0.weight");
  BOOST_TEST(!root.find("model.layers"));
}

BOOST_AUTO_TEST_CASE(unflatten_lists_with_holes) {
  using P = md::PathPart;
  Metadata metadata;
  metadata.planner_data.emplace();
  metadata.planner_data->push_back({"optim.param_groups.2.lr", {P{"optim"}, P{"param_groups"}, P{std::int64_t{2}}, P{"lr"}}});
  metadata.planner_data->push_back({"optim.param_groups.0.lr", {P{"optim"}, P{"param_groups"}, P{std::int64_t{0}}, P{"lr"}}});
  metadata.planner_data->push_back({"m.3.1", {P{"m"}, P{std::int64_t{3}}, P{std::int64_t{1}}}});
  metadata.reindex();
  const auto root = planning::unflatten(metadata, {"optim.param_groups.2.lr", "optim.param_groups.0.lr", "m.3.1"});
  const auto* groups = root.find("optim")->find("param_groups");
  BOOST_REQUIRE(groups);
  BOOST_TEST((groups->kind == planning::NestedNode::Kind::list));
  BOOST_REQUIRE(groups->children.size() == 3u);
  BOOST_TEST((groups->children[1].kind == planning::NestedNode::Kind::none));
  BOOST_TEST(groups->children[0].find("lr")->fqn == "optim.param_groups.0.lr");
  BOOST_TEST(groups->children[2].find("lr")->fqn == "optim.param_groups.2.lr");
  const auto& m = *root.find("m");
  BOOST_REQUIRE(m.children.size() == 4u);
  BOOST_TEST((m.children[3].kind == planning::NestedNode::Kind::list));
  BOOST_TEST(m.children[3].children[1].fqn == "m.3.1");
  BOOST_TEST((m.children[3].children[0].kind == planning::NestedNode::Kind::none));
}

BOOST_AUTO_TEST_CASE(unflatten_without_planner_data_is_flat) {
  Metadata metadata;  // torch 1.13: planner_data is None
  const auto root = planning::unflatten(metadata, {"model.layers.0.weight", "optim.state.0.exp_avg"});
  BOOST_TEST(root.keys == (std::vector<std::string>{"model.layers.0.weight", "optim.state.0.exp_avg"}));
  BOOST_TEST(root.children[1].fqn == "optim.state.0.exp_avg");
}

BOOST_AUTO_TEST_CASE(unflatten_rejects_bad_paths) {
  using P = md::PathPart;
  Metadata metadata;
  metadata.planner_data.emplace();
  metadata.planner_data->push_back({"a.b", {P{"a"}, P{"b"}}});
  metadata.planner_data->push_back({"a", {P{"a"}}});
  metadata.planner_data->push_back({"a.0", {P{"a"}, P{std::int64_t{0}}}});
  metadata.planner_data->push_back({"far", {P{"far"}, P{std::int64_t{1} << 40}}});
  metadata.planner_data->push_back({"neg", {P{"neg"}, P{std::int64_t{-1}}}});
  metadata.planner_data->push_back({"empty", {}});
  metadata.reindex();
  expect_error([&] { planning::unflatten(metadata, {"a.b", "a"}); }, Errc::data_loss, "a", "already holds a dict");
  expect_error([&] { planning::unflatten(metadata, {"a", "a.b"}); }, Errc::data_loss, "a.b", "needs a dict");
  expect_error([&] { planning::unflatten(metadata, {"a.b", "a.0"}); }, Errc::data_loss, "a.0", "needs a list");
  expect_error([&] { planning::unflatten(metadata, {"far"}); }, Errc::out_of_range, "far");
  expect_error([&] { planning::unflatten(metadata, {"neg"}); }, Errc::data_loss, "neg", "negative");
  expect_error([&] { planning::unflatten(metadata, {"empty"}); }, Errc::data_loss, "empty", "empty");
  expect_error([&] { planning::unflatten(metadata, {"unknown"}); }, Errc::not_found, "unknown");
  BOOST_TEST(planning::unflatten(metadata, {"a.b", "a.b"}).find("a")->find("b")->fqn == "a.b");
}

BOOST_AUTO_TEST_SUITE_END()
