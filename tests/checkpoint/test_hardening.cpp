// The reader under hostile or unusual input: validation before any I/O on the library path,
// exact error context, budgets (object size, open files, bounce buffers), plans from other
// ranks, and dtype conversion against torch's own `Tensor.to`.
#include <boost/test/unit_test.hpp>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "support.hpp"
import dcp.error;
import dcp.metadata;
import dcp.planning;
import dcp.layout;
import dcp.storage;
import dcp.checkpoint;

namespace md = dcp::metadata;
namespace pl = dcp::planning;
using dcp_test::checkpoint_case;

namespace {

// A copy of a test case's checkpoint whose .metadata `edit` rewrites (in the writer's flavor);
// returns the re-encoded Metadata as decoded from the new file (its pickle offsets are real).
md::Metadata edited_copy(const std::string& case_name, const std::filesystem::path& to,
                         const std::function<void(md::Metadata&)>& edit) {
  dcp_test::copy_checkpoint(checkpoint_case(case_name) / "ckpt", to);
  md::Metadata m = md::decode_metadata(dcp_test::read_bytes(to / ".metadata"));
  edit(m);
  dcp_test::write_bytes(to / ".metadata", md::encode_metadata(m, m.flavor));
  return md::decode_metadata(dcp_test::read_bytes(to / ".metadata"));
}

// Every element of a tensor item, loaded through the library path into `dtype` memory.
struct Loaded {
  std::vector<std::byte> memory;
  pl::Destination destination;
};

void add_full(Loaded& l, const std::string& fqn, const md::Shape& size, dcp::DType dtype, std::size_t at) {
  l.destination.add_tensor(fqn, pl::TensorDestination{size, dtype, {{md::Shape(size.size(), 0), size,
                                                                       pl::contiguous_slice(l.memory.data() + at, dtype, size)}}});
}

template <class Fn>
dcp::Error error_of(Fn&& fn) {
  return dcp_test::thrown<dcp::Error>(std::forward<Fn>(fn));
}

const md::ItemMetadata& first_object(const md::Metadata& m) {
  for (const auto& item : m.items)
    if (!item.is_tensor()) return item;
  throw std::runtime_error("no object");
}

// The full tensor `fqn` loaded with `options`, compared with PyTorch's bytes.
void check_tensor_loads_exactly(const std::filesystem::path& case_dir, const dcp::checkpoint::LoadOptions& options) {
  const auto expected = dcp_test::read_json(case_dir / "expected.json").as_object();
  const auto validated = dcp::checkpoint::inspect(case_dir / "ckpt");
  std::size_t seen = 0;
  (void)dcp::checkpoint::for_each_tensor(case_dir / "ckpt", validated, options,
                                         [&](const std::string& fqn, dcp::checkpoint::TensorBuffer t) {
    const auto& want = expected.at("tensors").as_object().at(fqn).as_object();
    const auto bytes = dcp_test::read_bytes(case_dir / std::string(want.at("file").as_string()));
    BOOST_TEST((std::vector<std::byte>(t.bytes().begin(), t.bytes().end()) == bytes), fqn);
    ++seen;
  });
  BOOST_TEST(seen == expected.at("tensors").as_object().size());
}

// Equal bytes, except that where torch made a NaN we only ask for a NaN: torch's NaN bit
// patterns differ between versions and between its vectorised and scalar loops (2.13 turns a
// float16 NaN into 0x7fffffff in a 3-element tensor and 0x7fc02000 in a 4-element one).
bool same_values(const std::vector<std::byte>& got, const std::vector<std::byte>& want, dcp::DType dtype) {
  if (got.size() != want.size()) return false;
  auto bits = [](const std::vector<std::byte>& v, std::size_t i, std::size_t n) {
    std::uint64_t b = 0;
    std::memcpy(&b, v.data() + i * n, n);
    return b;
  };
  // (exponent mask, mantissa mask) of the floating dtypes.
  std::uint64_t exp = 0, man = 0;
  switch (dtype) {
    case dcp::DType::float16: exp = 0x7c00, man = 0x3ff; break;
    case dcp::DType::bfloat16: exp = 0x7f80, man = 0x7f; break;
    case dcp::DType::float32: exp = 0x7f800000, man = 0x7fffff; break;
    case dcp::DType::float64: exp = 0x7ff0000000000000, man = 0xfffffffffffff; break;
    default: return got == want;
  }
  auto is_nan = [&](std::uint64_t b) { return (b & exp) == exp && (b & man) != 0; };
  const std::size_t n = dcp::dtype_itemsize(dtype);
  for (std::size_t i = 0; i < got.size() / n; ++i) {
    const auto g = bits(got, i, n), w = bits(want, i, n);
    if (g != w && !(is_nan(g) && is_nan(w))) return false;
  }
  return true;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(hardening)

BOOST_AUTO_TEST_CASE(library_load_refuses_a_path_outside_the_checkpoint_before_any_read) {
  dcp_test::TempDir tmp;
  const auto m = edited_copy("flat_dtypes", tmp.path(), [](md::Metadata& m) {
    m.storage_data[3].second.relative_path = "/etc/passwd";
  });
  Loaded l;
  pl::DefaultLoadPlanner planner;
  dcp::storage::FileSystemReader reader(tmp.path());
  const auto e = error_of([&] { (void)dcp::checkpoint::load(l.destination, reader, planner); });
  BOOST_TEST((e.code() == dcp::Errc::data_loss), e.what());
  BOOST_TEST(e.context().file == (tmp.path() / ".metadata").string());
  BOOST_TEST(e.context().key == m.storage_data[3].first.fqn);
  BOOST_TEST(e.context().byte_offset.value_or(~0ull) == m.storage_data[3].second.pickle_offset, e.what());
  BOOST_TEST(std::string(e.what()).find("unsafe file name '/etc/passwd'") != std::string::npos, e.what());
}

BOOST_AUTO_TEST_CASE(library_load_refuses_overlapping_chunks) {
  dcp_test::TempDir tmp;
  std::string fqn;
  const auto m = edited_copy("sharded_4ranks", tmp.path(), [&](md::Metadata& m) {
    for (auto& item : m.items)
      if (item.is_tensor() && item.tensor().chunks.size() == 4 && item.tensor().size.size() == 2 &&
          item.tensor().chunks[1].offsets[0] > 0) {
        auto& t = std::get<md::TensorStorageMetadata>(item.storage);
        t.chunks[0].sizes[0] += 1;  // now meets chunk 1
        fqn = item.fqn;
        return;
      }
  });
  BOOST_REQUIRE(!fqn.empty());
  const auto* item = m.find_item(fqn);
  const auto e = error_of([&] { (void)dcp::checkpoint::inspect(tmp.path()); });
  BOOST_TEST((e.code() == dcp::Errc::data_loss), e.what());
  BOOST_TEST(e.context().key == fqn);
  BOOST_TEST(e.context().byte_offset.value_or(~0ull) == item->tensor().chunks[1].pickle_offset, e.what());
  BOOST_TEST(std::string(e.what()).find("overlap") != std::string::npos, e.what());
}

BOOST_AUTO_TEST_CASE(object_past_the_end_of_its_file_names_the_exact_offset) {
  dcp_test::TempDir tmp;
  dcp_test::copy_checkpoint(checkpoint_case("single_file") / "ckpt", tmp.path());
  const auto validated = dcp::checkpoint::inspect(tmp.path());  // bounds checked while intact
  const auto& object = first_object(*validated);
  const auto& info = *validated->find_storage(object.fqn, nullptr);
  const auto path = tmp.path() / info.relative_path;
  const std::uint64_t cut = info.offset + info.length / 2;
  std::filesystem::resize_file(path, cut);
  dcp::checkpoint::LoadOptions options;
  options.select = [&](std::string_view k) { return k == object.fqn; };
  const auto e = error_of([&] { (void)dcp::checkpoint::load_objects(tmp.path(), validated, options); });
  BOOST_TEST((e.code() == dcp::Errc::data_loss), e.what());
  BOOST_TEST(e.context().file == path.string());
  BOOST_TEST(e.context().key == object.fqn);
  BOOST_TEST(e.context().byte_offset.value_or(~0ull) == cut, e.what());  // where the file ended, counted once
  // And read_metadata's own bound check, on a fresh look, names the item's first byte.
  const auto e2 = error_of([&] { (void)dcp::checkpoint::inspect(tmp.path()); });
  BOOST_TEST((e2.code() == dcp::Errc::data_loss), e2.what());
  BOOST_TEST(e2.context().file == path.string());
  BOOST_TEST(e2.context().byte_offset.value_or(~0ull) == info.offset, e2.what());
}

BOOST_AUTO_TEST_CASE(huge_object_is_refused_before_allocation) {
  dcp_test::TempDir tmp;
  const std::uint64_t huge = std::uint64_t{60} << 30;
  std::string fqn, file;
  std::uint64_t offset = 0;
  (void)edited_copy("single_file", tmp.path(), [&](md::Metadata& m) {
    for (auto& [index, info] : m.storage_data)
      if (!index.offset) {
        info.length = huge;
        fqn = index.fqn;
        file = info.relative_path;
        offset = info.offset;
        return;
      }
  });
  std::filesystem::resize_file(tmp.path() / file, offset + huge);  // sparse: costs no disk
  const auto validated = dcp::checkpoint::inspect(tmp.path());
  dcp::checkpoint::LoadOptions options;
  options.select = [&](std::string_view k) { return k == fqn; };
  const auto e = error_of([&] { (void)dcp::checkpoint::load_objects(tmp.path(), validated, options); });
  BOOST_TEST((e.code() == dcp::Errc::resource_exhausted), e.what());
  BOOST_TEST(e.context().key == fqn);
  BOOST_TEST(e.context().file == (tmp.path() / file).string());
  BOOST_TEST(e.context().byte_offset.value_or(~0ull) == offset, e.what());
}

BOOST_AUTO_TEST_CASE(metadata_over_the_size_limit_is_refused_before_reading) {
  dcp_test::TempDir tmp;
  {
    std::ofstream(tmp.path() / ".metadata").put('\x80');
  }
  std::filesystem::resize_file(tmp.path() / ".metadata", dcp::storage::kMaxMetadataBytes + 1);  // sparse: no disk used
  const auto e = error_of([&] { (void)dcp::checkpoint::inspect(tmp.path()); });
  BOOST_TEST((e.code() == dcp::Errc::out_of_range), e.what());
  BOOST_TEST(e.context().file == (tmp.path() / ".metadata").string());
  BOOST_TEST(std::string(e.what()).find("exceeds the limit") != std::string::npos, e.what());
}

BOOST_AUTO_TEST_CASE(item_too_short_for_its_chunk_is_refused_before_allocation) {
  // A tensor's destination is sized from the metadata; the data on disk must be able to fill it.
  dcp_test::TempDir tmp;
  std::size_t entry = 0;
  const auto m = edited_copy("single_file", tmp.path(), [&](md::Metadata& m) {
    for (entry = 0; !m.storage_data[entry].first.offset || m.storage_data[entry].second.length < 256; ++entry) {
    }
    m.storage_data[entry].second.length = 100;
  });
  const auto& [index, info] = m.storage_data[entry];
  const auto e = error_of([&] { (void)dcp::checkpoint::inspect(tmp.path()); });
  BOOST_TEST((e.code() == dcp::Errc::data_loss), e.what());
  BOOST_TEST(e.context().file == (tmp.path() / ".metadata").string());
  BOOST_TEST(e.context().key == index.fqn);
  BOOST_TEST(e.context().byte_offset.value_or(~0ull) == info.pickle_offset, e.what());
  BOOST_TEST(std::string(e.what()).find("cannot hold the chunk") != std::string::npos, e.what());
}

BOOST_AUTO_TEST_CASE(one_open_file_at_a_time_still_loads_exactly) {
  dcp::checkpoint::LoadOptions options;
  options.read.max_open_files = 1;
  options.read.threads = 3;
  for (const char* name : {"flat_dtypes", "sharded_4ranks"})
    BOOST_TEST_CONTEXT(name) { check_tensor_loads_exactly(checkpoint_case(name), options); }
  options.read.backend = dcp::storage::ReadBackend::io_uring;
  check_tensor_loads_exactly(checkpoint_case("sharded_4ranks"), options);
}

BOOST_AUTO_TEST_CASE(tiny_bounce_buffers_still_load_strided_items_exactly) {
  // n.transposed and n.channels_last are saved strided: every element goes through a bounce.
  dcp::checkpoint::LoadOptions options;
  options.read.bounce_bytes = 8;
  check_tensor_loads_exactly(checkpoint_case("flat_dtypes"), options);
}

BOOST_AUTO_TEST_CASE(plan_item_outside_the_saved_chunk_is_refused) {
  // A plan decoded from another rank: the destination side is fine, the storage side is not.
  const auto dir = checkpoint_case("sharded_4ranks") / "ckpt";
  const auto validated = dcp::checkpoint::inspect(dir);
  const md::ItemMetadata* item = nullptr;
  for (const auto& i : validated->items)
    if (i.is_tensor() && i.tensor().chunks.size() > 1 && i.tensor().size.size() == 2) item = &i;
  BOOST_REQUIRE(item);
  const auto& t = item->tensor();
  Loaded l;
  l.memory.resize(md::byte_size(t.size, t.properties.dtype));
  add_full(l, item->fqn, t.size, t.properties.dtype, 0);
  pl::DefaultLoadPlanner planner;
  planner.set_up_planner(l.destination, validated, true);
  pl::LoadPlan plan = planner.create_local_plan();
  BOOST_REQUIRE(!plan.items.empty());
  auto& bad = plan.items.front();
  bad.storage_offsets[1] += 1;  // one column past the chunk's end
  dcp::storage::FileSystemReader reader(dir);
  reader.set_up_storage_reader(validated, true);
  const auto e = error_of([&] { (void)reader.read_data(plan, planner); });
  BOOST_TEST((e.code() == dcp::Errc::invalid_argument), e.what());
  BOOST_TEST(e.context().key == item->fqn);
  BOOST_TEST(std::string(e.what()).find("outside the saved chunk") != std::string::npos, e.what());
}

BOOST_AUTO_TEST_CASE(dtype_conversion_matches_torch) {
  // torch converts when loading into another dtype (its reader copy_s); the oracle is torch's
  // own Tensor.to on the saved values.
  const auto case_dir = checkpoint_case("flat_dtypes");
  dcp_test::TempDir oracle;
  BOOST_TEST_REQUIRE(dcp_test::run(dcp_test::python() + " " +
                                   dcp_test::quote(dcp_test::source_root() / "tests/python/convert_oracle.py") + " " +
                                   dcp_test::quote(case_dir) + " " + dcp_test::quote(oracle.path())) == 0);
  const auto manifest = dcp_test::read_json(oracle.path() / "manifest.json").as_array();
  BOOST_TEST_REQUIRE(manifest.size() > 100u);
  const auto validated = dcp::checkpoint::inspect(case_dir / "ckpt");
  std::size_t checked = 0;
  for (const auto& entry_value : manifest) {
    const auto& entry = entry_value.as_object();
    const std::string fqn(entry.at("key").as_string());
    const auto to = *dcp::dtype_from_name(std::string(entry.at("to").as_string()));
    const auto& size = validated->find_item(fqn)->tensor().size;
    Loaded l;
    l.memory.resize(md::byte_size(size, to) + 1);
    add_full(l, fqn, size, to, 0);
    pl::DefaultLoadPlanner planner({.allow_partial_load = false, .allow_dtype_conversion = true});
    dcp::storage::FileSystemReader reader(case_dir / "ckpt");
    (void)dcp::checkpoint::load(l.destination, reader, planner);
    l.memory.pop_back();
    const auto want = dcp_test::read_bytes(std::string(entry.at("file").as_string()));
    BOOST_TEST(same_values(l.memory, want, to), fqn << " " << entry.at("from").as_string() << " -> " << entry.at("to").as_string());
    ++checked;
  }
  BOOST_TEST(checked == manifest.size());
}

BOOST_AUTO_TEST_CASE(conversions_torch_cannot_make_are_refused_before_reading) {
  const auto dir = checkpoint_case("flat_dtypes") / "ckpt";
  const auto validated = dcp::checkpoint::inspect(dir);
  const auto& size = validated->find_item("c.complex64")->tensor().size;
  Loaded l;
  l.memory.resize(md::byte_size(size, dcp::DType::float32));
  add_full(l, "c.complex64", size, dcp::DType::float32, 0);
  pl::DefaultLoadPlanner planner({.allow_partial_load = false, .allow_dtype_conversion = true});
  dcp::storage::FileSystemReader reader(dir);
  const auto e = error_of([&] { (void)dcp::checkpoint::load(l.destination, reader, planner); });
  BOOST_TEST((e.code() == dcp::Errc::unimplemented), e.what());
  BOOST_TEST(e.context().key == "c.complex64");
}

BOOST_AUTO_TEST_SUITE_END()
