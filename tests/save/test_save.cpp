// dcp.checkpoint's save path: planner, filesystem writer and save sequence, checked by loading
// the result back through dcpp and through real PyTorch.
#define BOOST_TEST_MODULE dcp.save
#include <boost/test/unit_test.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <numeric>
#include <string>
#include <variant>
#include <vector>

#include "../support/support.hpp"
#include "save_support.hpp"

import dcp.error;
import dcp.metadata;
import dcp.planning;
import dcp.memory;
import dcp.storage;
import dcp.checkpoint;

using namespace save_test;

namespace {

// A tensor whose bytes are 0, 1, 2, ... (mod 251), owned by the test.
struct OwnedTensor {
  std::vector<std::byte> bytes;
  pl::TensorSlice slice;
};

OwnedTensor make_tensor(DType dtype, md::Shape sizes, int seed = 0) {
  OwnedTensor t;
  t.bytes.resize(static_cast<std::size_t>(md::byte_size(sizes, dtype)) + 1);
  for (std::size_t i = 0; i < t.bytes.size(); ++i) t.bytes[i] = static_cast<std::byte>((i * 7 + seed) % 251);
  if (dtype == DType::boolean)
    for (auto& b : t.bytes) b = static_cast<std::byte>(std::to_integer<int>(b) & 1);
  t.slice = pl::contiguous_slice(t.bytes.data(), dtype, std::move(sizes));
  return t;
}

st::WriteOptions fast(st::WriteOptions o = {}) {
  o.sync_files = false;
  return o;
}

std::vector<std::byte> load_full(const std::filesystem::path& dir, const std::string& fqn) {
  std::vector<std::byte> out;
  ck::LoadOptions options;
  options.select = [&](std::string_view k) { return k == fqn; };
  const auto md = ck::inspect(dir);
  (void)ck::for_each_tensor(dir, md, options, [&](const std::string&, ck::TensorBuffer t) {
    out.assign(t.bytes().begin(), t.bytes().end());
  });
  return out;
}


}  // namespace

BOOST_AUTO_TEST_CASE(round_trip_through_dcpp) {
  dcp_test::TempDir tmp;
  auto a = make_tensor(DType::float32, {4, 3});
  auto b = make_tensor(DType::int64, {});
  auto c = make_tensor(DType::bfloat16, {0, 5});
  pl::StateDict sd;
  sd.add_tensor({std::string("model"), std::string("a")}, a.slice);
  sd.add_tensor({std::string("step")}, b.slice);
  sd.add_tensor({std::string("empty")}, c.slice);
  sd.add_object({std::string("meta"), std::string("name")}, pl::ObjectValue::string("hello"));
  st::FileSystemWriter writer(tmp.path() / "ckpt", fast());
  pl::DefaultSavePlanner planner;
  const auto saved = ck::save(sd, writer, planner);
  BOOST_TEST(saved.items.size() == 4u);
  const auto md = ck::inspect(tmp.path() / "ckpt");
  BOOST_TEST(md->planner_data.has_value());
  BOOST_TEST((load_full(tmp.path() / "ckpt", "model.a") == std::vector<std::byte>(a.bytes.begin(), a.bytes.end() - 1)));
  BOOST_TEST((load_full(tmp.path() / "ckpt", "step") == std::vector<std::byte>(b.bytes.begin(), b.bytes.end() - 1)));
  const auto objects = ck::load_objects(tmp.path() / "ckpt", md, {});
  BOOST_TEST(objects.size() == 1u);
  BOOST_TEST(objects[0].first == "meta.name");
  BOOST_TEST(std::string(objects[0].second.at(objects[0].second.root()).text()) == "hello");
}

// Keeps a checkpoint for a manual look when DCPP_KEEP is set.
BOOST_AUTO_TEST_CASE(torch213_loads_a_dcpp_checkpoint, *boost::unit_test::precondition(dcp_test::needs_python2x)) {
  dcp_test::TempDir tmp;
  auto a = make_tensor(DType::float32, {4, 3});
  auto b = make_tensor(DType::int64, {});
  pl::StateDict sd;
  sd.add_tensor({std::string("model"), std::string("a")}, a.slice);
  sd.add_tensor({std::string("step")}, b.slice);
  sd.add_object({std::string("meta"), std::string("name")}, pl::ObjectValue::string("hello"));
  st::FileSystemWriter writer(tmp.path() / "ckpt", fast());
  pl::DefaultSavePlanner planner;
  (void)ck::save(sd, writer, planner);
  const std::string script =
      "import sys, torch, torch.distributed.checkpoint as dcp\n"
      "sd = {'model': {'a': torch.zeros(4, 3)}, 'step': torch.zeros((), dtype=torch.int64), 'meta': {'name': None}}\n"
      "dcp.load(sd, checkpoint_id=sys.argv[1])\n"
      "exp = (torch.arange(49, dtype=torch.int64) * 7 % 251).to(torch.uint8)[:48].view(torch.float32).reshape(4, 3)\n"
      "assert torch.equal(sd['model']['a'].view(torch.int32), exp.view(torch.int32)), sd\n"
      "assert sd['meta']['name'] == 'hello', sd\n"
      "print('ok')\n";
  const auto out = dcp_test::run_capture(dcp_test::python2x() + " -c " + dcp_test::quote(script) + " " +
                                         dcp_test::quote(tmp.path() / "ckpt") + " 2>&1");
  BOOST_TEST(out.find("ok") != std::string::npos, out);
}

// ---------------------------------------------------------------------------------------------
// Every kind of value, checked by real PyTorch (tests/python/save_check*.py) against expected
// bytes written here.

namespace {

Path P(std::initializer_list<md::PathPart> parts) { return Path(parts); }

bool savable(DType d) { return dcp::dtype_info(d).rebuild != dcp::TensorRebuild::none; }

// One tensor of every dtype the format saves, as {3, 5}, 0-dim and {2, 0}.
void add_dtypes(Case& c, bool torch113) {
  for (const auto& info : dcp::dtype_table()) {
    if (!savable(info.dtype)) continue;
    if (torch113 && info.rebuild != dcp::TensorRebuild::v2) continue;
    const std::string n(info.name);
    c.tensor(P({"dtypes", n}), info.dtype, {3, 5});
    c.tensor(P({"scalar", n}), info.dtype, {});
    c.tensor(P({"empty", n}), info.dtype, {2, 0});
  }
}

// Shapes, strided views, nesting with list indices, dotted keys, objects of every kind.
void add_shapes_and_objects(Case& c) {
  c.tensor(P({"shape", "zero_dim"}), DType::float32, {});
  c.tensor(P({"shape", "empty0"}), DType::float32, {0});
  c.tensor(P({"shape", "empty_mid"}), DType::int16, {3, 0, 2});
  c.tensor(P({"shape", "ones"}), DType::float64, {1, 1, 1, 1});
  c.tensor(P({"shape", "big"}), DType::float32, {257, 300});
  c.strided(P({"view", "transposed"}), DType::float32, {4, 6}, {1, 4}, 0, 24);
  c.strided(P({"view", "columns"}), DType::bfloat16, {5, 3}, {8, 1}, 2, 40);
  c.strided(P({"view", "step"}), DType::int64, {3, 4}, {16, 2}, 1, 48);
  c.strided(P({"view", "permuted"}), DType::complex64, {2, 3, 4}, {1, 8, 2}, 0, 24);
  c.strided(P({"view", "expanded"}), DType::float16, {3, 4}, {0, 1}, 0, 4);
  c.strided(P({"view", "big_transposed"}), DType::float32, {300, 200}, {1, 300}, 0, 60000);
  c.tensor(P({"model", "layers", std::int64_t{0}, "w"}), DType::float32, {2, 3});
  c.tensor(P({"model", "layers", std::int64_t{1}, "w"}), DType::float32, {3, 3});
  c.tensor(P({"model", "layers", std::int64_t{1}, "b"}), DType::bfloat16, {3});
  c.tensor(P({"opt", "state", std::int64_t{0}, "exp_avg"}), DType::float32, {2, 3});
  c.tensor(P({"dotted.key", "x"}), DType::uint8, {4});
  c.object(P({"obj", "int"}), pl::ObjectValue::integer(-123456789012345), "-123456789012345");
  c.object(P({"obj", "float"}), pl::ObjectValue::floating(0.1), "0.1");
  c.object(P({"obj", "string"}), pl::ObjectValue::string("h\xc3\xa9llo \xe2\x9c\x93"), "'h\\xe9llo \\u2713'");
  c.object(P({"obj", "true"}), pl::ObjectValue::boolean(true), "True");
  c.object(P({"obj", "false"}), pl::ObjectValue::boolean(false), "False");
  c.object(P({"obj", "none"}), pl::ObjectValue::none(), "None");
  c.object(P({"obj", "dict"}), dict_object(), dict_object_literal());
  c.object(P({"obj", "tuple"}), tuple_object(), tuple_object_literal());
  c.object(P({"opt", "param_groups", std::int64_t{0}, "lr"}), pl::ObjectValue::floating(1e-3), "0.001");
}

pl::SaveChunk block(const pl::TensorSlice& full, md::Shape offsets, md::Shape sizes) {
  return pl::SaveChunk{offsets, pl::narrow(full, offsets, sizes)};
}

// 4 ranks: hand-made 2-D blocks (strided views of the full tensors), a rank with two blocks and
// one with none, a replicated plain tensor and an object on every rank.
std::vector<pl::StateDict> make_blocks(Case& c) {
  const auto m = c.tensor(P({"blocks", "m"}), DType::float32, {6, 8}, false);
  const auto u = c.tensor(P({"blocks", "uneven"}), DType::int32, {5, 5}, false);
  const auto rep = c.tensor(P({"rep"}), DType::float64, {3, 2}, false);
  std::vector<pl::StateDict> sds(4);
  md::TensorProperties fp;
  fp.dtype = DType::float32;
  md::TensorProperties ip;
  ip.dtype = DType::int32;
  const md::Shape r0{0, 0}, r1{0, 3}, r2{4, 0}, r3{4, 3};
  sds[0].add_sharded_tensor(P({"blocks", "m"}), {6, 8}, fp, {block(m, {0, 0}, {4, 3})});
  sds[1].add_sharded_tensor(P({"blocks", "m"}), {6, 8}, fp, {block(m, {0, 3}, {4, 5})});
  sds[2].add_sharded_tensor(P({"blocks", "m"}), {6, 8}, fp, {block(m, {4, 0}, {2, 3})});
  sds[3].add_sharded_tensor(P({"blocks", "m"}), {6, 8}, fp, {block(m, {4, 3}, {2, 5})});
  sds[0].add_sharded_tensor(P({"blocks", "uneven"}), {5, 5}, ip, {block(u, {0, 0}, {2, 5}), block(u, {2, 0}, {3, 2})});
  sds[1].add_sharded_tensor(P({"blocks", "uneven"}), {5, 5}, ip, {block(u, {2, 2}, {3, 3})});
  sds[2].add_sharded_tensor(P({"blocks", "uneven"}), {5, 5}, ip, {});
  sds[3].add_sharded_tensor(P({"blocks", "uneven"}), {5, 5}, ip, {});
  for (auto& sd : sds) {
    sd.add_tensor(P({"rep"}), rep);
    sd.add_object(P({"meta", "epoch"}), pl::ObjectValue::integer(9));
  }
  boost::json::object o;
  o["path"] = json_path(P({"meta", "epoch"}));
  o["literal"] = "9";
  c.objects.push_back(std::move(o));
  return sds;
}

// Whole tensors of several row counts, to be split over ranks with split_rows.
void add_rows(Case& c, bool torch113) {
  c.tensor(P({"s", "rows10"}), DType::float32, {10, 4});
  c.tensor(P({"s", "rows2"}), DType::bfloat16, {2, 3});  // rank 2 of 3 holds none
  c.tensor(P({"s", "vec"}), DType::int64, {7});
  c.tensor(P({"s", "scalar"}), DType::float64, {});
  c.tensor(P({"s", "empty"}), DType::float32, {0, 4});
  c.tensor(P({"s", "flags"}), DType::boolean, {5, 2});
  c.tensor(P({"s", "c"}), DType::complex128, {4, 1});
  c.tensor(P({"s", "h"}), DType::float16, {9, 3, 2});
  c.object(P({"s", "step"}), pl::ObjectValue::integer(5), "5");
  c.object(P({"s", "conf"}), dict_object(), dict_object_literal());
  if (!torch113) c.tensor(P({"s", "u16"}), DType::uint16, {6});
}

void check_dcpp_values(const fs::path& dir, const Case& c) {
  const auto got = dcpp_tensors(dir);
  BOOST_TEST(got.size() == c.expected.size(), dir);
  for (const auto& [fqn, bytes] : c.expected) {
    auto it = got.find(fqn);
    BOOST_TEST_REQUIRE((it != got.end()), fqn << " missing in " << dir);
    BOOST_TEST((it->second == bytes), fqn << " differs in " << dir);
  }
}

std::vector<std::string> names_of(const boost::json::array& checks) {
  std::vector<std::string> out;
  for (const auto& c : checks) out.emplace_back(c.at("name").as_string());
  return out;
}

st::WriteOptions with(int files, bool single, md::Flavor format = md::Flavor::torch_2x) {
  auto o = options();
  o.files_per_rank = files;
  o.single_file_per_rank = single;
  o.format = format;
  return o;
}

}  // namespace

BOOST_AUTO_TEST_CASE(torch213_loads_every_kind_of_value, *boost::unit_test::precondition(dcp_test::needs_python2x)) {
  dcp_test::TempDir tmp;
  boost::json::array checks;
  auto add = [&](const std::string& name, const Case& c, const fs::path& dir) {
    check_dcpp_values(dir, c);
    checks.push_back(c.check(name, dir));
  };

  Case dtypes(tmp.path() / "bins-dtypes");
  add_dtypes(dtypes, false);
  for (auto [name, files, single] : {std::tuple{"dtypes_1file", 1, true}, std::tuple{"dtypes_per_item", 0, false},
                                     std::tuple{"dtypes_4files", 4, true}}) {
    save_one(dtypes.sd, tmp.path() / name, with(files, single));
    add(name, dtypes, tmp.path() / name);
  }
  // files_per_rank: that many data files (fewer only when there are fewer items).
  std::size_t distcp = 0;
  for (const auto& e : fs::directory_iterator(tmp.path() / "dtypes_4files")) distcp += e.path().extension() == ".distcp";
  BOOST_TEST(distcp == 4u);

  Case shapes(tmp.path() / "bins-shapes");
  add_shapes_and_objects(shapes);
  save_one(shapes.sd, tmp.path() / "shapes", with(2, true));
  add("shapes", shapes, tmp.path() / "shapes");
  save_one(shapes.sd, tmp.path() / "shapes_per_item", with(0, false));
  add("shapes_per_item", shapes, tmp.path() / "shapes_per_item");

  Case rows(tmp.path() / "bins-rows");
  add_rows(rows, false);
  save_many(ck::split_rows(rows.sd, 3), tmp.path() / "rows_3ranks", with(2, true));
  add("rows_3ranks", rows, tmp.path() / "rows_3ranks");
  save_many(ck::split_rows(rows.sd, 3), tmp.path() / "rows_3ranks_per_item", with(0, false));
  add("rows_3ranks_per_item", rows, tmp.path() / "rows_3ranks_per_item");

  Case blocks(tmp.path() / "bins-blocks");
  const auto block_sds = make_blocks(blocks);
  for (auto [name, files, single] : {std::tuple{"blocks_1file", 1, true}, std::tuple{"blocks_per_item", 0, false},
                                     std::tuple{"blocks_3files", 3, true}}) {
    save_many(block_sds, tmp.path() / name, with(files, single));
    add(name, blocks, tmp.path() / name);
  }
  // Every rank wrote its own files: rank 3 holds only a share of the replicated items.
  BOOST_TEST(fs::exists(tmp.path() / "blocks_1file" / "__3_0.distcp"));

  // An empty state dict, and one of objects only (no data file holds a tensor).
  Case empty(tmp.path() / "bins-empty");
  save_one(empty.sd, tmp.path() / "empty");
  add("empty", empty, tmp.path() / "empty");
  Case objects(tmp.path() / "bins-objects");
  objects.object(P({"only", "epoch"}), pl::ObjectValue::integer(4), "4");
  objects.object(P({"only", "conf"}), tuple_object(), tuple_object_literal());
  save_many(ck::split_rows(objects.sd, 2), tmp.path() / "objects_only", with(3, true));
  add("objects_only", objects, tmp.path() / "objects_only");

  write_manifest(tmp.path() / "manifest.json", checks);
  run_checks(dcp_test::python2x(), "save_check.py", "load " + dcp_test::quote(tmp.path() / "manifest.json"),
             names_of(checks));
}

BOOST_AUTO_TEST_CASE(torch213_loads_on_other_rank_counts, *boost::unit_test::precondition(dcp_test::needs_python2x)) {
  dcp_test::TempDir tmp;
  Case rows(tmp.path() / "bins-rows");
  add_rows(rows, false);
  save_many(ck::split_rows(rows.sd, 3), tmp.path() / "rows", with(2, true));
  Case blocks(tmp.path() / "bins-blocks");
  const auto block_sds = make_blocks(blocks);
  save_many(block_sds, tmp.path() / "blocks", with(1, true));
  boost::json::array dist;
  for (int world : {4, 2}) {
    auto a = rows.check("rows_on_" + std::to_string(world), tmp.path() / "rows");
    a["world"] = world;
    dist.push_back(a);
    auto b = blocks.check("blocks_on_" + std::to_string(world), tmp.path() / "blocks");
    b["world"] = world;
    dist.push_back(b);
  }
  write_manifest(tmp.path() / "manifest.json", {}, dist);
  run_checks(dcp_test::python2x(), "save_check.py", "dist " + dcp_test::quote(tmp.path() / "manifest.json"),
             names_of(dist));
}

BOOST_AUTO_TEST_CASE(torch113_loads_torch113_format) {
  dcp_test::TempDir tmp;
  boost::json::array checks, dist;
  Case dtypes(tmp.path() / "bins-dtypes");
  add_dtypes(dtypes, true);
  add_shapes_and_objects(dtypes);
  save_one(dtypes.sd, tmp.path() / "dtypes", with(1, true, md::Flavor::torch_1_13));
  check_dcpp_values(tmp.path() / "dtypes", dtypes);
  checks.push_back(dtypes.check("t113_dtypes", tmp.path() / "dtypes"));
  save_one(dtypes.sd, tmp.path() / "dtypes_per_item", with(0, false, md::Flavor::torch_1_13));
  checks.push_back(dtypes.check("t113_dtypes_per_item", tmp.path() / "dtypes_per_item"));

  Case rows(tmp.path() / "bins-rows");
  add_rows(rows, true);
  save_many(ck::split_rows(rows.sd, 3), tmp.path() / "rows", with(2, true, md::Flavor::torch_1_13));
  check_dcpp_values(tmp.path() / "rows", rows);
  checks.push_back(rows.check("t113_rows", tmp.path() / "rows"));
  auto d = rows.check("t113_rows_on_4", tmp.path() / "rows");
  d["world"] = 4;
  dist.push_back(d);
  BOOST_TEST(!ck::inspect(tmp.path() / "rows")->planner_data.has_value());

  write_manifest(tmp.path() / "manifest.json", checks, dist);
  run_checks(dcp_test::python(), "save_check113.py", "load " + dcp_test::quote(tmp.path() / "manifest.json"),
             names_of(checks));
  run_checks(dcp_test::python(), "save_check113.py", "dist " + dcp_test::quote(tmp.path() / "manifest.json"),
             names_of(dist));
}

// dcpp save → dcpp load: checkpoint::load into another layout (2 row shards) and objects.
BOOST_AUTO_TEST_CASE(round_trip_into_other_layouts) {
  dcp_test::TempDir tmp;
  Case rows(tmp.path() / "bins");
  add_rows(rows, false);
  save_many(ck::split_rows(rows.sd, 3), tmp.path() / "ckpt", with(2, true));
  for (int rank = 0; rank < 2; ++rank) {
    pl::Destination dest;
    std::map<std::string, std::vector<std::byte>> memory;
    for (const auto& e : rows.sd.entries()) {
      if (const auto* t = std::get_if<pl::SaveTensor>(&e.value)) {
        auto& mem = memory[e.fqn];
        mem.resize(md::byte_size(t->global_size, t->properties.dtype) + 1);
        dest.add_tensor(e.fqn, pl::TensorDestination{t->global_size, t->properties.dtype,
                                                     pl::row_chunks(t->global_size, t->properties.dtype, rank, 2, mem.data())});
      } else {
        dest.add_object(e.fqn);
      }
    }
    st::FileSystemReader reader(tmp.path() / "ckpt");
    pl::DefaultLoadPlanner planner;
    (void)ck::load(dest, reader, planner);
    for (const auto& e : rows.sd.entries()) {
      if (!std::holds_alternative<pl::SaveTensor>(e.value)) {
        BOOST_TEST(planner.loaded_bytes(e.fqn) != nullptr, e.fqn);
        continue;
      }
      const auto& t = std::get<pl::SaveTensor>(e.value);
      const auto& full = rows.expected.at(e.fqn);
      // The rows rank `rank` of 2 holds, as torch.chunk(tensor, 2) cuts them: pieces of
      // ceil(rows / 2), the last one shorter or absent (computed here, not by row_chunks).
      const std::int64_t n_rows = t.global_size.empty() ? 1 : t.global_size[0];
      const std::int64_t piece = (n_rows + 1) / 2;
      const std::int64_t first = std::min<std::int64_t>(n_rows, rank * piece);
      const std::int64_t count = std::min<std::int64_t>(piece, n_rows - first);
      if (full.empty() || count <= 0) continue;
      const auto row_bytes = full.size() / static_cast<std::size_t>(n_rows);
      const auto begin = static_cast<std::size_t>(first) * row_bytes;
      const auto n = static_cast<std::size_t>(count) * row_bytes;
      BOOST_TEST((std::vector<std::byte>(full.begin() + begin, full.begin() + begin + n) ==
                  std::vector<std::byte>(memory[e.fqn].begin(), memory[e.fqn].begin() + n)),
                 e.fqn << " rank " << rank);
    }
  }
  // The objects come back as they were saved: step = 5, conf = dict_object()'s dict.
  const auto m = ck::inspect(tmp.path() / "ckpt");
  const auto objects = ck::load_objects(tmp.path() / "ckpt", m, {});
  BOOST_TEST_REQUIRE(objects.size() == 2u);
  for (const auto& [fqn, doc] : objects) {
    const auto root = doc.at(doc.root());
    if (fqn == "s.step") {
      BOOST_TEST((root.kind() == dcp::pickle::NodeKind::integer && root.integer() == 5), doc.describe(doc.root()));
      continue;
    }
    BOOST_TEST_REQUIRE(fqn == "s.conf");
    BOOST_TEST_REQUIRE((root.kind() == dcp::pickle::NodeKind::dict), doc.describe(doc.root()));
    const auto lr = doc.find_key(doc.root(), "lr");
    const auto n = doc.find_key(doc.root(), "n");
    BOOST_TEST_REQUIRE((lr && n));
    BOOST_TEST(doc.at(*lr).floating() == 0.5);
    BOOST_TEST(doc.at(*n).integer() == -7);
    BOOST_TEST(root.items().size() == 8u);  // lr, betas, tags, n: key and value each
  }
}

// torch 2.13 saves, dcpp loads everything and saves it again, torch compares the copy with its
// original (and with the values it saved).
BOOST_AUTO_TEST_CASE(torch213_to_dcpp_to_torch213, *boost::unit_test::precondition(dcp_test::needs_python2x)) {
  dcp_test::TempDir tmp;
  const auto orig = tmp.path() / "orig";
  const auto copy = tmp.path() / "copy";
  run_checks(dcp_test::python2x(), "save_check.py", "torch_save " + dcp_test::quote(orig), {"torch_save"});
  const auto m = ck::inspect(orig);
  std::map<std::string, ck::TensorBuffer> tensors;
  (void)ck::for_each_tensor(orig, m, {}, [&](const std::string& fqn, ck::TensorBuffer t) { tensors.emplace(fqn, std::move(t)); });
  std::map<std::string, std::shared_ptr<dcp::pickle::Document>> objects;
  for (auto& [fqn, doc] : ck::load_objects(orig, m, {})) objects[fqn] = std::make_shared<dcp::pickle::Document>(std::move(doc));
  pl::StateDict sd;
  for (const auto& item : m->items) {
    const auto* path = m->find_path(item.fqn);
    BOOST_TEST_REQUIRE(path != nullptr, item.fqn);
    if (item.is_tensor()) {
      sd.add_tensor(*path, tensors.at(item.fqn).slice(), item.tensor().properties.requires_grad);
    } else {
      const auto& doc = objects.at(item.fqn);
      sd.add_object(*path, pl::ObjectValue{doc, doc->root()});
    }
  }
  save_one(sd, copy, with(3, true));
  run_checks(dcp_test::python2x(), "save_check.py", "compare " + dcp_test::quote(orig) + " " + dcp_test::quote(copy),
             {"compare"});
}
