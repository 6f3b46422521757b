// One rank of the dcp.optimizer interop runs (test_optimizer_torch.cpp launches 2-4 of them
// with torch's environment; they form a Gloo group through dcp.dist):
//
//   optim_rank CASE_DIR oracle|full [--2d] [--key K] [--bad-shape-on R] [--extra-param]
//
// loads CASE_DIR/ckpt's optimizer state under "optim" (or K) with
// dcp::optimizer_torch::load_sharded_optimizer_state_dict, its model described from the
// checkpoint's own "model" entries: every parameter's shape, and with --2d the TP slice that
// CASE_DIR/layout.json names (torch.chunk into 2 along its dim, rank % 2) and the DP group
// {rank % 2, rank % 2 + 2}. Then compares, bytes for bytes:
//   oracle  with CASE_DIR/oracle/rank<R>.json (torch's own result on this rank; optim_oracle.py):
//           the same keys, placements, shard boxes and bytes, objects equal as JSON;
//   full    with the full state (CASE_DIR/full.json of optim_oracle.py, or a torch 1.13 case's
//           expected.json): each tensor's shard equals the slice of the full tensor at its box
//           (gathered here, row by row), objects equal as JSON.
// --bad-shape-on R: rank R describes its first parameter with one row more. --extra-param: the
// model has a parameter "extra.weight" without state, and every parameter must have state.
// Prints "ok ..." and exits 0, or "optim_rank: error: <code>: key '<key>': ..." and exits 1.
#include <algorithm>
#include <boost/json.hpp>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include "support.hpp"
import dcp.error;
import dcp.pickle;
import dcp.layout;
import dcp.metadata;
import dcp.planning;
import dcp.record;
import dcp.storage;
import dcp.alloc;
import dcp.checkpoint;
import dcp.dist;
import dcp.optimizer;
import dcp.optimizer_torch;

namespace {

namespace fs = std::filesystem;
namespace opt = dcp::optimizer;
namespace json = boost::json;
using Shape = dcp::metadata::Shape;

[[noreturn]] void fail(const std::string& what) { throw dcp::Error(dcp::Errc::internal, what); }

struct Args {
  fs::path case_dir;
  std::string mode;
  bool two_d = false;
  std::string key = "optim";
  int bad_shape_on = -1;
  bool extra_param = false;
};

Shape shape_of(const json::value& v) {
  Shape s;
  for (const auto& d : v.as_array()) s.push_back(d.to_number<std::int64_t>());
  return s;
}

// The model as its state dict would describe it: the checkpoint's "model" entries.
opt::ModelLayout model_layout(const dcp::metadata::Metadata& md, const Args& args, int rank) {
  opt::ModelLayout m;
  for (const auto& item : md.items) {
    if (!item.is_tensor()) continue;
    std::string name;
    if (const auto* path = md.find_path(item.fqn); path && path->size() == 2 &&
                                                   std::get_if<std::string>(&(*path)[0]) &&
                                                   std::get<std::string>((*path)[0]) == "model")
      name = std::get<std::string>((*path)[1]);
    else if (!md.planner_data && item.fqn.rfind("model.", 0) == 0)
      name = item.fqn.substr(6);
    if (name.empty()) continue;
    m.params.emplace_back(name, opt::ParamLayout{item.tensor().size, std::nullopt});
  }
  if (m.params.empty()) fail("the checkpoint has no model entries");
  if (rank == args.bad_shape_on) m.params[0].second.size[0] += 1;
  if (args.two_d) {
    const auto dims = dcp_test::read_json(args.case_dir / "layout.json").as_object();
    for (auto& [name, p] : m.params)
      p.tp_slice = dcp::layout::chunk_split(p.size, static_cast<int>(dims.at(name).to_number<std::int64_t>()), 2)
          [static_cast<std::size_t>(rank % 2)];
    m.dp_group = opt::DataParallelGroup{rank / 2, {rank % 2, rank % 2 + 2}};
  }
  if (args.extra_param) m.params.emplace_back("extra.weight", opt::ParamLayout{{4, 4}, std::nullopt});
  return m;
}

std::vector<std::byte> bytes_of(const at::Tensor& t) {
  const auto slice = dcp::alloc::slice_of(t.contiguous());
  const auto n = dcp::planning::numel(slice) * dcp::dtype_itemsize(slice.dtype);
  return {slice.data, slice.data + n};
}

json::value object_json(const dcp::pickle::Document& doc) { return json::parse(dcp::record::object_to_json(doc, doc.root())); }

// One full state tensor (row-major bytes) and its shape.
struct Full {
  Shape shape;
  std::vector<std::byte> bytes;
};

// The slice `box` of `full`, gathered row by row here (not through dcpp's copy code).
std::vector<std::byte> slice_bytes(const Full& full, const dcp::layout::Box& box, std::size_t itemsize) {
  if (full.shape.empty()) return full.bytes;
  std::vector<std::byte> out;
  if (dcp::layout::volume(box) == 0) return out;
  const auto strides = dcp::layout::contiguous_strides(full.shape);
  const std::size_t last = box.sizes.size() - 1;
  std::vector<std::int64_t> idx(last, 0);  // position in the leading dims
  while (true) {
    std::int64_t at = box.offsets[last];
    for (std::size_t d = 0; d < last; ++d) at += (box.offsets[d] + idx[d]) * strides[d];
    const auto* p = full.bytes.data() + static_cast<std::size_t>(at) * itemsize;
    out.insert(out.end(), p, p + static_cast<std::size_t>(box.sizes[last]) * itemsize);
    std::size_t d = last;
    while (d > 0 && ++idx[d - 1] == box.sizes[d - 1]) idx[--d] = 0;
    if (d == 0) return out;
  }
}

int compare_oracle(const dcp::optimizer_torch::LoadedState& got, const Args& args, int rank) {
  const auto oracle = dcp_test::read_json(args.case_dir / "oracle" / ("rank" + std::to_string(rank) + ".json")).as_object();
  const auto dir = args.case_dir / "oracle";
  int checks = 0;
  if (oracle.size() != got.plan.tensors.size() + got.plan.objects.size())
    fail("torch has " + std::to_string(oracle.size()) + " entries, dcpp " +
         std::to_string(got.plan.tensors.size() + got.plan.objects.size()));
  for (std::size_t i = 0; i < got.plan.tensors.size(); ++i) {
    const auto& t = got.plan.tensors[i];
    const auto* want = oracle.if_contains(t.fqn);
    if (!want) fail("torch has no entry '" + t.fqn + "'");
    const auto& w = want->as_object();
    const auto mine = bytes_of(got.tensors[i]);
    if (w.at("kind").as_string() == "tensor") {
      if (!t.replicated || shape_of(w.at("shape")) != t.global_size) fail(t.fqn + ": torch has a whole tensor");
      if (mine != dcp_test::read_bytes(dir / std::string(w.at("bin").as_string()))) fail(t.fqn + ": bytes differ");
      ++checks;
      continue;
    }
    if (t.replicated || shape_of(w.at("size")) != t.sharded_size) fail(t.fqn + ": torch's sharded size differs");
    std::vector<std::string> placements;
    for (const auto& p : w.at("placements").as_array()) placements.emplace_back(p.as_string());
    if (placements != t.placements) fail(t.fqn + ": placements differ");
    if (const auto* tp = w.if_contains("tp_offsets"); tp && shape_of(*tp) != t.tp_offsets) fail(t.fqn + ": TP offsets differ");
    // torch's non-empty shards must be exactly this one; an empty shard is "owns nothing".
    std::vector<const json::object*> shards;
    for (const auto& s : w.at("shards").as_array())
      if (dcp::metadata::numel(shape_of(s.as_object().at("sizes"))) > 0) shards.push_back(&s.as_object());
    if (t.numel() == 0) {
      if (!shards.empty() || !mine.empty()) fail(t.fqn + ": torch holds rows here, dcpp none");
    } else {
      if (shards.size() != 1) fail(t.fqn + ": torch holds " + std::to_string(shards.size()) + " shards here");
      if (shape_of(shards[0]->at("offsets")) != t.shard.offsets || shape_of(shards[0]->at("sizes")) != t.shard.sizes)
        fail(t.fqn + ": shard box differs from torch's");
      if (mine != dcp_test::read_bytes(dir / std::string(shards[0]->at("bin").as_string()))) fail(t.fqn + ": bytes differ");
    }
    ++checks;
  }
  for (std::size_t i = 0; i < got.plan.objects.size(); ++i) {
    const auto& o = got.plan.objects[i];
    const auto* want = oracle.if_contains(o.fqn);
    if (!want || want->as_object().at("kind").as_string() != "object") fail("torch has no object '" + o.fqn + "'");
    if (object_json(got.objects[i]) != want->as_object().at("json")) fail(o.fqn + ": object differs");
    ++checks;
  }
  return checks;
}

int compare_full(const dcp::optimizer_torch::LoadedState& got, const Args& args) {
  // optim_oracle.py's full.json, or a torch 1.13 case's expected.json ("tensors" / "objects").
  std::map<std::string, Full> tensors;
  std::map<std::string, json::value> objects;
  if (fs::exists(args.case_dir / "full.json")) {
    const auto full = dcp_test::read_json(args.case_dir / "full.json");
    for (const auto& [k, v] : full.as_object()) {
      const auto& e = v.as_object();
      if (e.at("kind").as_string() == "tensor")
        tensors[k] = {shape_of(e.at("shape")), dcp_test::read_bytes(args.case_dir / "full" / std::string(e.at("bin").as_string()))};
      else
        objects[k] = e.at("json");
    }
  } else {
    const auto expected = dcp_test::read_json(args.case_dir / "expected.json").as_object();
    for (const auto& [k, v] : expected.at("tensors").as_object())
      tensors[k] = {shape_of(v.at("shape")), dcp_test::read_bytes(args.case_dir / std::string(v.at("file").as_string()))};
    for (const auto& [k, v] : expected.at("objects").as_object()) objects[k] = v.at("json");
  }
  int checks = 0;
  for (std::size_t i = 0; i < got.plan.tensors.size(); ++i) {
    const auto& t = got.plan.tensors[i];
    const auto it = tensors.find(t.fqn);
    if (it == tensors.end() || it->second.shape != t.global_size) fail(t.fqn + ": no full tensor of that shape");
    if (bytes_of(got.tensors[i]) != slice_bytes(it->second, t.global_box(), dcp::dtype_itemsize(t.properties.dtype)))
      fail(t.fqn + ": bytes differ from the full tensor's slice " + dcp::layout::format_box(t.global_box()));
    ++checks;
  }
  for (std::size_t i = 0; i < got.plan.objects.size(); ++i) {
    const auto it = objects.find(got.plan.objects[i].fqn);
    if (it == objects.end() || object_json(got.objects[i]) != it->second) fail(got.plan.objects[i].fqn + ": object differs");
    ++checks;
  }
  std::size_t optim_entries = 0;
  for (const auto& [k, _] : tensors) optim_entries += k.rfind(args.key + ".", 0) == 0;
  for (const auto& [k, _] : objects) optim_entries += k.rfind(args.key + ".", 0) == 0;
  if (optim_entries != got.plan.tensors.size() + got.plan.objects.size()) fail("the full state has other entries");
  return checks;
}

Args parse(int argc, char** argv) {
  std::vector<std::string> a(argv + 1, argv + argc);
  if (a.size() < 2) fail("usage: optim_rank CASE_DIR oracle|full [--2d] [--key K] [--bad-shape-on R] [--extra-param]");
  Args args{a[0], a[1]};
  for (std::size_t i = 2; i < a.size(); ++i) {
    if (a[i] == "--2d") args.two_d = true;
    else if (a[i] == "--extra-param") args.extra_param = true;
    else if (a[i] == "--key" && i + 1 < a.size()) args.key = a[++i];
    else if (a[i] == "--bad-shape-on" && i + 1 < a.size()) args.bad_shape_on = std::stoi(a[++i]);
    else fail("unknown argument '" + a[i] + "'");
  }
  return args;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const auto args = parse(argc, argv);
    auto group = dcp::dist::from_environment({.timeout = std::chrono::seconds(30)});
    const int rank = group->rank();
    dcp::storage::FileSystemReader reader(args.case_dir / "ckpt");
    const auto model = model_layout(*reader.read_metadata(), args, rank);
    const auto got = dcp::optimizer_torch::load_sharded_optimizer_state_dict(
        model, args.key, reader, group.get(), {}, {.require_state_for_every_param = args.extra_param});
    const int checks = args.mode == "oracle" ? compare_oracle(got, args, rank) : compare_full(got, args);
    std::printf("ok rank %d of %d: %d entries equal\n", rank, group->size(), checks);
    std::fflush(stdout);
    std::_Exit(0);
  } catch (const dcp::Error& e) {
    std::fprintf(stderr, "optim_rank: error: %s: key '%s': %s\n", std::string(dcp::errc_name(e.code())).c_str(),
                 e.context().key.c_str(), e.what());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "optim_rank: error: %s\n", e.what());
  }
  std::fflush(stderr);
  std::_Exit(1);  // never wait in c10d's destructors for a peer that is gone
}
