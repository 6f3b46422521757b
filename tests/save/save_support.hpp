// Shared by the dcp.save test files: deterministic tensors owned by the test, the expected
// values written independently of dcpp (row-major bytes gathered here, not by dcp.storage),
// and the manifests that tests/python/save_check*.py read.
#pragma once
#include <boost/json.hpp>
#include <boost/test/unit_test.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "../support/support.hpp"

import dcp.error;
import dcp.layout;
import dcp.pickle;
import dcp.metadata;
import dcp.planning;
import dcp.storage;
import dcp.checkpoint;

namespace save_test {

namespace fs = std::filesystem;
namespace pl = dcp::planning;
namespace md = dcp::metadata;
namespace st = dcp::storage;
namespace ck = dcp::checkpoint;
using dcp::DType;
using Path = std::vector<md::PathPart>;

inline std::uint64_t splitmix(std::uint64_t& s) {
  std::uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

inline std::uint64_t seed_of(const std::string& name) {
  std::uint64_t h = 1469598103934665603ull;
  for (unsigned char c : name) h = (h ^ c) * 1099511628211ull;
  return h;
}

/// `n` pseudo-random bytes from `seed` (every bit pattern: NaNs, infinities, subnormals);
/// bool elements are 0/1.
inline std::vector<std::byte> random_bytes(std::size_t n, std::uint64_t seed, DType dtype) {
  std::vector<std::byte> out(n);
  for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<std::byte>(splitmix(seed) & 0xFF);
  if (dtype == DType::boolean)
    for (auto& b : out) b = static_cast<std::byte>(std::to_integer<int>(b) & 1);
  return out;
}

inline std::uint64_t count(const md::Shape& s) {
  std::uint64_t n = 1;
  for (auto d : s) n *= static_cast<std::uint64_t>(d);
  return n;
}

/// The row-major bytes of the strided view (sizes, strides in elements) over `base`: an
/// odometer walk, independent of dcp.storage's copy code.
inline std::vector<std::byte> gather(const std::byte* base, std::size_t itemsize, const md::Shape& sizes,
                                     const md::Shape& strides) {
  const auto n = count(sizes);
  std::vector<std::byte> out(n * itemsize);
  md::Shape idx(sizes.size(), 0);
  for (std::uint64_t k = 0; k < n; ++k) {
    std::int64_t off = 0;
    for (std::size_t d = 0; d < sizes.size(); ++d) off += idx[d] * strides[d];
    std::memcpy(out.data() + k * itemsize, base + off * static_cast<std::int64_t>(itemsize), itemsize);
    for (std::size_t d = sizes.size(); d-- > 0;) {
      if (++idx[d] < sizes[d]) break;
      idx[d] = 0;
    }
  }
  return out;
}

inline std::string literal_path(const Path& path) {
  std::string s;
  for (const auto& p : path) {
    if (!s.empty()) s += '.';
    if (const auto* k = std::get_if<std::string>(&p)) s += *k;
    else s += std::to_string(std::get<std::int64_t>(p));
  }
  return s;
}

inline boost::json::array json_path(const Path& path) {
  boost::json::array a;
  for (const auto& p : path) {
    if (const auto* k = std::get_if<std::string>(&p)) a.emplace_back(boost::json::string(*k));
    else a.emplace_back(std::get<std::int64_t>(p));
  }
  return a;
}

inline std::string name_of(DType d) { return std::string(dcp::dtype_name(d)); }

/// A state dict under construction with its expected values: the tensors' memory is owned
/// here and never changes; each tensor's expected row-major bytes go to `bins/<n>.bin`.
class Case {
 public:
  explicit Case(fs::path bins) : bins_(std::move(bins)) { fs::create_directories(bins_); }

  /// A contiguous tensor of random bytes (seeded by its key).
  pl::TensorSlice tensor(const Path& path, DType dtype, md::Shape shape, bool add = true) {
    const auto key = literal_path(path);
    auto bytes = random_bytes(count(shape) * dcp::dtype_itemsize(dtype), seed_of(key) ^ salt, dtype);
    expect(path, dtype, shape, bytes);
    auto& mem = memory(std::move(bytes));
    auto slice = pl::contiguous_slice(mem.data(), dtype, shape);
    if (add) sd.add_tensor(path, slice);
    return slice;
  }

  /// A strided view (`sizes`, `strides`, element `offset`) over a random base of `base_elems`.
  pl::TensorSlice strided(const Path& path, DType dtype, md::Shape sizes, md::Shape strides, std::int64_t offset,
                          std::size_t base_elems) {
    const auto key = literal_path(path);
    const auto isz = dcp::dtype_itemsize(dtype);
    auto& mem = memory(random_bytes(base_elems * isz, seed_of(key) ^ salt, dtype));
    pl::TensorSlice slice{mem.data() + offset * static_cast<std::int64_t>(isz), dtype, sizes, strides};
    expect(path, dtype, sizes, gather(slice.data, isz, sizes, strides));
    sd.add_tensor(path, slice);
    return slice;
  }

  void object(const Path& path, pl::ObjectValue value, std::string literal) {
    sd.add_object(path, std::move(value));
    boost::json::object o;
    o["path"] = json_path(path);
    o["literal"] = literal;
    objects.push_back(std::move(o));
  }

  /// Records an expected tensor whose full bytes are `bytes` (for sharded tensors).
  void expect(const Path& path, DType dtype, const md::Shape& shape, const std::vector<std::byte>& bytes) {
    const auto bin = bins_ / (std::to_string(next_++) + ".bin");
    dcp_test::write_bytes(bin, bytes);
    boost::json::object t;
    t["path"] = json_path(path);
    t["dtype"] = name_of(dtype);
    boost::json::array s;
    for (auto d : shape) s.emplace_back(d);
    t["shape"] = std::move(s);
    t["bin"] = bin.string();
    tensors.push_back(std::move(t));
    expected[literal_path(path)] = bytes;
  }

  std::vector<std::byte>& memory(std::vector<std::byte> bytes) {
    owned_.push_back(std::make_unique<std::vector<std::byte>>(std::move(bytes)));
    if (owned_.back()->empty()) owned_.back()->resize(1);  // a valid pointer for empty tensors
    return *owned_.back();
  }

  boost::json::object check(const std::string& name, const fs::path& ckpt) const {
    boost::json::object c;
    c["name"] = name;
    c["ckpt"] = ckpt.string();
    c["tensors"] = tensors;
    c["objects"] = objects;
    c["exact_keys"] = true;
    return c;
  }

  pl::StateDict sd;
  boost::json::array tensors, objects;
  std::map<std::string, std::vector<std::byte>> expected;  // fqn → row-major bytes
  std::uint64_t salt = 0;

 private:
  fs::path bins_;
  int next_ = 0;
  std::vector<std::unique_ptr<std::vector<std::byte>>> owned_;
};

inline st::WriteOptions options(bool sync = false) {
  st::WriteOptions o;
  o.sync_files = sync;
  return o;
}

/// Saves `sd` alone (one rank) into `dir`.
inline md::Metadata save_one(const pl::StateDict& sd, const fs::path& dir, st::WriteOptions o = options(),
                             pl::SavePlannerOptions po = {}) {
  st::FileSystemWriter writer(dir, std::move(o));
  pl::DefaultSavePlanner planner(po);
  return ck::save(sd, writer, planner);
}

/// Saves rank r's `sds[r]` for every r, in one process.
inline md::Metadata save_many(const std::vector<pl::StateDict>& sds, const fs::path& dir, st::WriteOptions o = options(),
                              pl::SavePlannerOptions po = {}) {
  return ck::save_ranks(sds, dir, o, po);
}

/// Every full tensor of a checkpoint as dcpp loads it (for_each_tensor).
inline std::map<std::string, std::vector<std::byte>> dcpp_tensors(const fs::path& dir) {
  std::map<std::string, std::vector<std::byte>> out;
  const auto m = ck::inspect(dir);
  (void)ck::for_each_tensor(dir, m, {}, [&](const std::string& fqn, ck::TensorBuffer t) {
    out[fqn].assign(t.bytes().begin(), t.bytes().end());
  });
  return out;
}

/// Whether `dir` holds `.metadata` and exactly the data files it names, plus `extra` (names
/// that are not the checkpoint's, e.g. a user's file). Reports what else it holds.
inline boost::test_tools::predicate_result only_the_checkpoint(const fs::path& dir, std::set<std::string> extra = {}) {
  std::set<std::string> want = std::move(extra);
  want.insert(".metadata");
  const auto md = ck::inspect(dir);
  for (const auto& [index, info] : md->storage_data) want.insert(info.relative_path);
  const auto names = dcp_test::list_names(dir);
  const std::set<std::string> have(names.begin(), names.end());
  if (have == want) return true;
  boost::test_tools::predicate_result r(false);
  for (const auto& n : have)
    if (!want.contains(n)) r.message() << " unexpected '" << n << "'";
  for (const auto& n : want)
    if (!have.contains(n)) r.message() << " missing '" << n << "'";
  return r;
}

/// Runs a save_check script (`interpreter` + tests/python/SCRIPT ARGS) and checks that every
/// name in `names` has an `ok NAME` line and none a FAIL line. Returns the output.
inline std::string run_checks(const std::string& interpreter, const std::string& script, const std::string& args,
                              const std::vector<std::string>& names) {
  const auto cmd = interpreter + " " + dcp_test::quote(dcp_test::source_root() / "tests" / "python" / script) + " " +
                   args + " 2>&1";
  int status = 0;
  const auto out = dcp_test::run_capture(cmd, &status);
  BOOST_TEST_MESSAGE(script << " " << args << ":\n" << out);
  BOOST_TEST(status == 0, script << " failed:\n" << out);
  for (const auto& n : names) {
    const bool ok = out.find("ok " + n + "\n") != std::string::npos || out.find("ok " + n + " (") != std::string::npos;
    BOOST_TEST(ok, "no 'ok " << n << "' from " << script << ":\n" << out);
  }
  return out;
}

inline void write_manifest(const fs::path& file, const boost::json::array& checks, const boost::json::array& dist = {}) {
  boost::json::object m;
  m["checks"] = checks;
  m["dist"] = dist;
  const auto text = boost::json::serialize(m);
  dcp_test::write_bytes(file, std::vector<std::byte>(reinterpret_cast<const std::byte*>(text.data()),
                                                     reinterpret_cast<const std::byte*>(text.data()) + text.size()));
}

/// A document holding `{'lr': 0.5, 'betas': (0.9, 0.999), 'tags': ['a', None, True], 'n': -7}`.
inline pl::ObjectValue dict_object() {
  auto doc = std::make_shared<dcp::pickle::Document>();
  using dcp::pickle::NodeKind;
  auto s = [&](const char* t) { return doc->add_text(NodeKind::string, 0, t); };
  const dcp::pickle::NodeId betas_items[] = {doc->add_floating(0, 0.9), doc->add_floating(0, 0.999)};
  const auto betas = doc->add_container(NodeKind::tuple, 0, betas_items);
  const dcp::pickle::NodeId tag_items[] = {s("a"), dcp::pickle::Document::kNone, dcp::pickle::Document::kTrue};
  const auto tags = doc->add_container(NodeKind::list, 0, tag_items);
  const dcp::pickle::NodeId items[] = {s("lr"), doc->add_floating(0, 0.5), s("betas"), betas,
                                       s("tags"), tags, s("n"), doc->add_integer(0, -7)};
  const auto root = doc->add_container(NodeKind::dict, 0, items);
  doc->set_root(root);
  return pl::ObjectValue{doc, root};
}
inline const char* dict_object_literal() { return "{'lr': 0.5, 'betas': (0.9, 0.999), 'tags': ['a', None, True], 'n': -7}"; }

/// A tuple document `(1, 'two', 3.25, b'\x00\xff')`.
inline pl::ObjectValue tuple_object() {
  auto doc = std::make_shared<dcp::pickle::Document>();
  using dcp::pickle::NodeKind;
  const dcp::pickle::NodeId items[] = {doc->add_integer(0, 1), doc->add_text(NodeKind::string, 0, "two"),
                                       doc->add_floating(0, 3.25),
                                       doc->add_text(NodeKind::bytes, 0, std::string_view("\x00\xff", 2))};
  const auto root = doc->add_container(NodeKind::tuple, 0, items);
  doc->set_root(root);
  return pl::ObjectValue{doc, root};
}
inline const char* tuple_object_literal() { return "(1, 'two', 3.25, b'\\x00\\xff')"; }

/// Expects `fn` to throw a dcp::Error with `code` whose text contains every one of `parts`.
template <class Fn>
void expect_error(Fn&& fn, dcp::Errc code, std::vector<std::string> parts) {
  const auto e = dcp_test::thrown<dcp::Error>(std::forward<Fn>(fn));
  BOOST_TEST(static_cast<int>(e.code()) == static_cast<int>(code),
             "code " << dcp::errc_name(e.code()) << ", expected " << dcp::errc_name(code) << ": " << e.what());
  for (const auto& p : parts) BOOST_TEST(std::string(e.what()).find(p) != std::string::npos, "'" << p << "' not in: " << e.what());
}

// Write items as a local planner makes them: a plain tensor at offset 0, a shard of a
// `global` tensor, an object.
inline pl::WriteItem tensor_item(const std::string& fqn, md::Shape sizes, DType dtype = DType::float32) {
  pl::WriteItem item;
  item.index = md::MetadataIndex{fqn, md::Shape(sizes.size(), 0), std::nullopt};
  item.type = pl::WriteItemType::tensor;
  md::TensorProperties p;
  p.dtype = dtype;
  item.tensor_data = pl::TensorWriteData{dcp::layout::Box{md::Shape(sizes.size(), 0), sizes}, p, sizes};
  return item;
}

inline pl::WriteItem shard_item(const std::string& fqn, md::Shape offsets, md::Shape sizes, md::Shape global) {
  auto item = tensor_item(fqn, sizes);
  item.type = pl::WriteItemType::shard;
  item.index.offset = offsets;
  item.tensor_data->chunk.offsets = offsets;
  item.tensor_data->size = global;
  return item;
}

inline pl::WriteItem object_item(const std::string& fqn) {
  pl::WriteItem item;
  item.index = md::MetadataIndex{fqn, std::nullopt, std::nullopt};
  item.type = pl::WriteItemType::byte_io;
  return item;
}

}  // namespace save_test
