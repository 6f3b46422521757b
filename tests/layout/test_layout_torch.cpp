// dcp.layout against torch: every rank's box of many DTensor layouts as torch 2.13 computes it
// (tests/python/dtensor_boxes.py); describe_layout / local_box on the chunk lists that real
// torch 2.13 (DTensor, FSDP2) and torch 1.13 (ShardedTensor, ChunkShardingSpec) saved; and
// the "layout" that `dcpp inspect --json` prints for random chunk lists against
// metadata_json.py's brute-force oracle over torch.chunk.
#include <boost/json.hpp>
#include <boost/test/unit_test.hpp>
#include <algorithm>
#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "support.hpp"
import dcp.error;
import dcp.layout;
import dcp.metadata;

#include "layout_test.hpp"

namespace json = boost::json;
namespace layout = dcp::layout;
namespace md = dcp::metadata;
using dcp_layout_test::sorted;
using dcp_layout_test::unique_boxes;
using layout::Box;
using layout::Layout;
using layout::LayoutDescription;
using layout::LayoutKind;
using layout::Placement;
using layout::Shape;

namespace {

Shape shape_of(const json::value& v) {
  Shape out;
  for (const auto& x : v.as_array()) out.push_back(x.to_number<std::int64_t>());
  return out;
}

Placement placement_of(const json::value& v) {
  const std::string name(v.as_string());
  return name == "R" ? Placement::replicate() : Placement::shard(std::stoi(name.substr(1)));
}

// The saved chunk lists of a case's tensors, fqn → (global shape, chunks).
std::map<std::string, std::pair<Shape, std::vector<Box>>> saved_chunks(const std::string& case_name) {
  const auto m = md::decode_metadata(dcp_test::read_bytes(dcp_test::checkpoint_case(case_name) / "ckpt" / ".metadata"));
  std::map<std::string, std::pair<Shape, std::vector<Box>>> out;
  for (const auto& item : m.items) {
    if (!item.is_tensor()) continue;
    std::vector<Box> boxes;
    for (const auto& c : item.tensor().chunks) boxes.push_back(c.box());
    out[item.fqn] = {item.tensor().size, std::move(boxes)};
  }
  return out;
}

const LayoutDescription whole{LayoutKind::whole, {}, {}};
LayoutDescription split(int dim, std::int64_t n) { return {LayoutKind::split, {dim}, {n}}; }

// For a DTensor case: the saved chunks are exactly the distinct boxes of `l`'s ranks (DCP
// de-duplicates replicas, empty shards included), and describe_layout names `want`.
void check_saved(const std::pair<Shape, std::vector<Box>>& saved, const Layout& l, const LayoutDescription& want) {
  const auto& [global, chunks] = saved;
  BOOST_TEST((sorted(chunks) == unique_boxes(global, l, true)));
  BOOST_TEST(layout::describe_layout(global, chunks) == want);
}

// Random chunk lists: what DTensor layouts save (empty shards included), and tilings that are
// mostly not torch's (random cuts along one or two dims, brick walls).
std::vector<std::pair<Shape, std::vector<Box>>> random_chunk_lists(int count) {
  std::mt19937 rng(7);
  const auto pick = [&](std::int64_t lo, std::int64_t hi) { return std::uniform_int_distribution<std::int64_t>(lo, hi)(rng); };
  const auto cuts = [&](std::int64_t n) {  // random (start, size) pieces tiling [0, n)
    std::vector<std::pair<std::int64_t, std::int64_t>> out;
    for (std::int64_t at = 0; at < n;) {
      const std::int64_t s = std::min(n - at, pick(1, std::max<std::int64_t>(1, n / 2)));
      out.emplace_back(at, s);
      at += s;
    }
    return out;
  };
  std::vector<std::pair<Shape, std::vector<Box>>> out;
  while (static_cast<int>(out.size()) < count) {
    Shape global(static_cast<std::size_t>(pick(1, 3)));
    for (auto& s : global) s = pick(0, 8) == 0 ? 0 : pick(1, 24);
    const int rank = static_cast<int>(global.size());
    std::vector<Box> chunks;
    switch (pick(0, 3)) {
      case 0: {  // a DTensor layout
        const auto place = [&] { return pick(0, 3) == 0 ? Placement::replicate() : Placement::shard(static_cast<int>(pick(0, rank - 1))); };
        const Layout l = pick(0, 1) ? Layout({static_cast<int>(pick(1, 8))}, {place()})
                                    : Layout({static_cast<int>(pick(1, 4)), static_cast<int>(pick(1, 4))}, {place(), place()});
        chunks = unique_boxes(global, l, true);
        break;
      }
      case 1: {  // random cuts along one dim
        const auto d = static_cast<std::size_t>(pick(0, rank - 1));
        for (const auto& [at, s] : cuts(global[d])) {
          Box b = layout::full_box(global);
          b.offsets[d] = at;
          b.sizes[d] = s;
          chunks.push_back(b);
        }
        break;
      }
      default: {  // random cuts along two dims: a grid, or a brick wall (new column cuts per row)
        if (rank < 2) continue;
        const bool wall = pick(0, 1);
        auto cols = cuts(global[1]);
        for (const auto& [r0, rs] : cuts(global[0])) {
          if (wall) cols = cuts(global[1]);
          for (const auto& [c0, cs] : cols) {
            Box b = layout::full_box(global);
            b.offsets[0] = r0, b.sizes[0] = rs, b.offsets[1] = c0, b.sizes[1] = cs;
            chunks.push_back(b);
          }
        }
      }
    }
    if (chunks.empty() || chunks.size() > 40) continue;
    std::shuffle(chunks.begin(), chunks.end(), rng);
    out.emplace_back(std::move(global), std::move(chunks));
  }
  return out;
}

}  // namespace

// chunk_extent and chunk_split are torch.chunk: the pieces torch 1.13 itself cuts n rows into
// (torch.empty(n, 0).chunk(parts)), the empty trailing parts torch drops included as size 0 at
// offset n.
BOOST_AUTO_TEST_CASE(chunk_extent_is_torch_chunk) {
  const std::string script =
      "import json, torch\n"
      "out = []\n"
      "for n in range(41):\n"
      "    for parts in range(1, 13):\n"
      "        pieces, start = [], 0\n"
      "        for p in torch.empty((n, 0)).chunk(parts, 0):\n"
      "            pieces.append([start, p.size(0)])\n"
      "            start += p.size(0)\n"
      "        out.append([n, parts, pieces])\n"
      "print(json.dumps(out))\n";
  int status = 0;
  const auto text = dcp_test::run_capture(dcp_test::python() + " -c " + dcp_test::quote(script), &status);
  BOOST_TEST_REQUIRE(status == 0, text);
  const auto cases = json::parse(text).as_array();
  BOOST_TEST_REQUIRE(cases.size() == 41u * 12u);
  for (const auto& c : cases) {
    const auto n = c.at(0).to_number<std::int64_t>();
    const auto parts = c.at(1).to_number<int>();
    const auto& pieces = c.at(2).as_array();
    const auto boxes = layout::chunk_split({n}, 0, parts);
    BOOST_TEST_REQUIRE(boxes.size() == static_cast<std::size_t>(parts));
    for (int i = 0; i < parts; ++i) {
      const bool torch_has = static_cast<std::size_t>(i) < pieces.size();
      const std::int64_t start = torch_has ? pieces[i].at(0).to_number<std::int64_t>() : n;
      const std::int64_t size = torch_has ? pieces[i].at(1).to_number<std::int64_t>() : 0;
      const auto e = layout::chunk_extent(n, parts, i);
      BOOST_TEST((e.size == size && (size == 0 || e.start == start)), n << " / " << parts << " part " << i);
      BOOST_TEST((boxes[i].sizes[0] == size && (size == 0 || boxes[i].offsets[0] == start)), n << " / " << parts);
    }
  }
}

BOOST_AUTO_TEST_SUITE(torch)

// to_json's "layout" (describe_layout) equals metadata_json.py's `layout()`, computed by brute
// force over torch.chunk (torch 1.13, the interpreter every build has).
BOOST_AUTO_TEST_CASE(inspect_json_layout_equals_the_python_oracle) {
  const auto lists = random_chunk_lists(600);
  md::Metadata m;
  json::array input;
  for (std::size_t i = 0; i < lists.size(); ++i) {
    const auto& [global, chunks] = lists[i];
    md::TensorStorageMetadata t;
    t.size = global;
    json::array boxes;
    for (const Box& b : chunks) {
      t.chunks.push_back(md::ChunkStorageMetadata{b.offsets, b.sizes});
      boxes.push_back(json::array{json::value_from(b.offsets), json::value_from(b.sizes)});
    }
    m.items.push_back(md::ItemMetadata{"t" + std::to_string(i), std::move(t)});
    input.push_back(json::object{{"size", json::value_from(global)}, {"chunks", std::move(boxes)}});
  }
  m.reindex();
  dcp_test::TempDir tmp;
  const auto path = tmp.path() / "chunks.json";
  const std::string text = json::serialize(input);
  dcp_test::write_bytes(path, std::vector<std::byte>(reinterpret_cast<const std::byte*>(text.data()),
                                                     reinterpret_cast<const std::byte*>(text.data() + text.size())));
  const std::string script =
      "import json, sys, types; sys.path.insert(0, sys.argv[1]); import metadata_json as m\n"
      "C = lambda o, s: types.SimpleNamespace(offsets=o, sizes=s)\n"
      "print(json.dumps([m.layout(t['size'], [C(*c) for c in t['chunks']]) for t in json.load(open(sys.argv[2]))]))\n";
  int status = 0;
  const auto out = dcp_test::run_capture(dcp_test::python() + " -c " + dcp_test::quote(script) + " " +
                                             dcp_test::quote(dcp_test::source_root() / "tests/python") + " " +
                                             dcp_test::quote(path),
                                         &status);
  BOOST_TEST_REQUIRE(status == 0);
  const auto oracle = json::parse(out).as_array();
  const auto ours = json::parse(md::to_json(m)).at("items").as_array();
  BOOST_TEST_REQUIRE(oracle.size() == lists.size());
  std::map<std::string, int> kinds;
  for (std::size_t i = 0; i < lists.size(); ++i) {
    const auto& layout = ours[i].at("layout");
    BOOST_TEST((layout == oracle[i]), json::serialize(input[i]) << "\n dcpp:  " << layout << "\n torch: " << oracle[i]);
    ++kinds[std::string(layout.at("kind").as_string())];
  }
  for (const char* kind : {"whole", "rows", "cols", "dim", "nested", "grid", "irregular"})
    BOOST_TEST(kinds[kind] > 0, kind << " never met");
}

BOOST_AUTO_TEST_CASE(local_box_equals_torchs_compute_local_shape_and_global_offset,
                     *boost::unit_test::precondition(dcp_test::needs_python2x)) {
  int status = 0;
  const auto out = dcp_test::run_capture(dcp_test::quote(dcp_test::python2x()) + " " +
                                             dcp_test::quote(dcp_test::source_root() / "tests/python/dtensor_boxes.py"),
                                         &status);
  BOOST_TEST_REQUIRE(status == 0);
  const auto cases = json::parse(out).as_array();
  BOOST_TEST(cases.size() > 1000u);
  for (const auto& v : cases) {
    const auto& c = v.as_object();
    const Shape global = shape_of(c.at("shape"));
    std::vector<int> mesh;
    for (const auto& x : c.at("mesh").as_array()) mesh.push_back(static_cast<int>(x.as_int64()));
    std::vector<Placement> placements;
    for (const auto& p : c.at("placements").as_array()) placements.push_back(placement_of(p));
    const Layout l(mesh, placements);
    const auto& boxes = c.at("boxes").as_array();
    BOOST_TEST_CONTEXT(json::serialize(c.at("shape")) << " mesh " << json::serialize(c.at("mesh")) << " "
                                                      << json::serialize(c.at("placements"))) {
      BOOST_TEST_REQUIRE(boxes.size() == static_cast<std::size_t>(l.world_size()));
      std::vector<Box> torch_boxes;
      for (const auto& b : boxes) torch_boxes.push_back(Box{shape_of(b.as_array()[0]), shape_of(b.as_array()[1])});
      for (int r = 0; r < l.world_size(); ++r) {
        BOOST_TEST(layout::local_box(global, l, r) == torch_boxes[static_cast<std::size_t>(r)], "rank " << r);
      }
      // Backward: what these ranks would save is recognised and named back exactly.
      const auto saved = unique_boxes(global, l, false);
      const auto d = layout::describe_layout(global, saved);
      BOOST_TEST((d.kind != LayoutKind::irregular));
      if (d.kind != LayoutKind::irregular && layout::volume(layout::full_box(global)) != 0)
        BOOST_TEST((layout::layout_boxes(global, d) == saved));
    }
  }
}

BOOST_AUTO_TEST_CASE(torch213_fsdp_and_dtensor_1d, *boost::unit_test::precondition(dcp_test::needs_python2x)) {
  const auto saved = saved_chunks("x2_fsdp_4ranks");
  const auto rows = layout::parse_layout("rows", 4);
  const Layout replicated({4}, {Placement::replicate()});
  const std::map<std::string, LayoutDescription> want{
      {"dt.rows", split(0, 4)}, {"dt.few", split(0, 2)},  {"dt.cols", split(1, 4)}, {"dt.bf16", split(0, 3)},
      {"dt.vec", split(0, 4)},  {"dt.repl", whole},       {"dt.int", split(0, 4)},  {"model.fc1.weight", split(0, 4)},
      {"model.fc2.weight", split(0, 2)}, {"plain.bias", whole}, {"plain.step", whole}};
  for (const auto& [fqn, item] : saved)
    BOOST_TEST_CONTEXT(fqn) {
      // FSDP2 shards every parameter and its optimizer state Shard(0) on the 1-D mesh.
      const Layout& l = fqn == "dt.cols" ? layout::parse_layout("cols", 4)
                        : fqn == "dt.repl" || fqn.starts_with("plain.") ? replicated
                                                                          : rows;
      const auto& global = item.first;
      const auto it = want.find(fqn);
      check_saved(item, l, it != want.end() ? it->second : layout::describe_layout(global, unique_boxes(global, l, false)));
    }
  for (const auto& [fqn, d] : want) BOOST_TEST(saved.contains(fqn), fqn);
}

BOOST_AUTO_TEST_CASE(torch213_dtensor_2d, *boost::unit_test::precondition(dcp_test::needs_python2x)) {
  const auto saved = saved_chunks("x2_2d_4ranks");
  const auto S0 = Placement::shard(0), S1 = Placement::shard(1), R = Placement::replicate();
  const std::map<std::string, std::pair<Layout, LayoutDescription>> want{
      {"tp.s0s1", {Layout({2, 2}, {S0, S1}), {LayoutKind::grid, {0, 1}, {2, 2}}}},
      {"tp.s1s0", {Layout({2, 2}, {S1, S0}), {LayoutKind::grid, {0, 1}, {2, 2}}}},
      {"tp.s0s0", {Layout({2, 2}, {S0, S0}), {LayoutKind::nested, {0}, {2, 2}}}},
      {"tp.rs1", {Layout({2, 2}, {R, S1}), split(1, 2)}},
      {"tp.s0r", {Layout({2, 2}, {S0, R}), split(0, 2)}},
      {"plain", {Layout({2, 2}, {R, R}), whole}}};
  BOOST_TEST(saved.size() == want.size());
  for (const auto& [fqn, w] : want)
    BOOST_TEST_CONTEXT(fqn) {
      BOOST_TEST_REQUIRE(saved.contains(fqn));
      check_saved(saved.at(fqn), w.first, w.second);
    }
}

// torch 1.13's ChunkShardingSpec gives ranks past the end no shard (and the zero.shards case
// explicit empty ones), so only the non-empty chunks are compared with the forward layout.
BOOST_AUTO_TEST_CASE(torch113_sharded_tensors) {
  const auto saved = saved_chunks("sharded_4ranks");
  const std::map<std::string, std::pair<const char*, LayoutDescription>> want{
      {"rows.uneven", {"rows", split(0, 4)}}, {"cols.even", {"cols", split(1, 4)}},
      {"tiny.sparse", {"rows", split(0, 2)}}, {"vec.120", {"rows", split(0, 4)}},
      {"bf16.rows", {"rows", split(0, 3)}},   {"zero.shards", {"rows", split(0, 2)}},
      {"replicated.bias", {nullptr, whole}}};
  BOOST_TEST(saved.size() == want.size());
  for (const auto& [fqn, w] : want)
    BOOST_TEST_CONTEXT(fqn) {
      BOOST_TEST_REQUIRE(saved.contains(fqn));
      const auto& [global, chunks] = saved.at(fqn);
      BOOST_TEST(layout::describe_layout(global, chunks) == w.second);
      std::vector<Box> nonempty;
      for (const Box& b : chunks)
        if (!layout::is_empty(b)) nonempty.push_back(b);
      const Layout l = w.first ? layout::parse_layout(w.first, 4) : Layout({4}, {Placement::replicate()});
      BOOST_TEST((sorted(nonempty) == unique_boxes(global, l, false)));
    }
}

BOOST_AUTO_TEST_SUITE_END()
