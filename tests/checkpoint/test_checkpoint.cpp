// The core loader (no libtorch) against real PyTorch: every tensor and object of checkpoints
// written at test time by torch 1.13 and by torch 2.13, loads into other layouts
// (resharding), and damaged data files. dcp.torch's at::Tensor API is tests/torch.
#define BOOST_TEST_MODULE dcp.checkpoint
#include <boost/test/unit_test.hpp>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "support.hpp"
import dcp.error;
import dcp.pickle;
import dcp.metadata;
import dcp.planning;
import dcp.layout;
import dcp.memory;
import dcp.record;
import dcp.storage;
import dcp.checkpoint;

namespace md = dcp::metadata;
namespace pl = dcp::planning;
namespace json = boost::json;
using dcp_test::checkpoint_case;
using dcp_test::needs_python2x;

namespace {

std::vector<std::byte> tensor_bytes(const dcp::checkpoint::TensorBuffer& t) {
  return std::vector<std::byte>(t.bytes().begin(), t.bytes().end());
}

// Every selected tensor as a full tensor in host buffers, and every object.
struct Loaded {
  std::vector<std::pair<std::string, dcp::checkpoint::TensorBuffer>> tensors;
  std::vector<std::pair<std::string, dcp::pickle::Document>> objects;
};
Loaded load_everything(const std::filesystem::path& ckpt, const dcp::checkpoint::LoadOptions& options = {}) {
  Loaded loaded;
  const auto md = dcp::checkpoint::inspect(ckpt);
  (void)dcp::checkpoint::for_each_tensor(ckpt, md, options, [&](const std::string& fqn, dcp::checkpoint::TensorBuffer t) {
    loaded.tensors.emplace_back(fqn, std::move(t));
  });
  loaded.objects = dcp::checkpoint::load_objects(ckpt, md, options);
  return loaded;
}

// Every tensor byte and every object value equals what PyTorch saved, for every dtype (the
// core needs no tensor type for a dtype).
void check_full_load(const std::filesystem::path& dir,
                     dcp::storage::ReadBackend backend = dcp::storage::ReadBackend::automatic) {
  const auto expected = dcp_test::read_json(dir / "expected.json").as_object();
  dcp::checkpoint::LoadOptions options;
  options.read.backend = backend;
  options.batch_bytes = 4096;  // many batches: exercises the bounded-memory path
  const auto& tensors = expected.at("tensors").as_object();
  const auto loaded = load_everything(dir / "ckpt", options);
  BOOST_TEST(loaded.tensors.size() == tensors.size());
  for (const auto& [fqn, tensor] : loaded.tensors) {
    const auto& want = tensors.at(fqn).as_object();
    BOOST_TEST(dcp::dtype_name(tensor.dtype) == std::string(want.at("dtype").as_string()), fqn);
    BOOST_TEST(reinterpret_cast<std::uintptr_t>(tensor.memory.data()) % dcp::memory::kMinAlignment == 0u, fqn);
    const auto bytes = dcp_test::read_bytes(dir / std::string(want.at("file").as_string()));
    BOOST_TEST((tensor_bytes(tensor) == bytes), fqn << ": loaded bytes differ from PyTorch's");
  }
  const auto& objects = expected.at("objects").as_object();
  BOOST_TEST(loaded.objects.size() == objects.size());
  for (const auto& [fqn, doc] : loaded.objects) {
    const auto got = json::parse(dcp::record::object_to_json(doc, doc.root()));
    BOOST_TEST((got == objects.at(fqn).as_object().at("json")), fqn << ": " << got << " vs " << objects.at(fqn).as_object().at("json"));
  }
}

// Every tensor loaded into caller-owned memory through a Destination and the default planner, each tensor as one full chunk; the bytes must equal what PyTorch saved.
void check_raw_load(const std::filesystem::path& dir) {
  const auto expected = dcp_test::read_json(dir / "expected.json").as_object();
  const auto m = dcp::checkpoint::inspect(dir / "ckpt");
  pl::Destination dest;
  std::vector<std::pair<std::string, std::vector<std::byte>>> memory;
  memory.reserve(m->items.size());
  for (const auto& item : m->items) {
    if (!item.is_tensor()) continue;
    const auto& t = item.tensor();
    auto& [fqn, bytes] = memory.emplace_back(item.fqn, std::vector<std::byte>(md::byte_size(t.size, t.properties.dtype), std::byte{0xa5}));
    pl::TensorDestination td{t.size, t.properties.dtype, {}};
    td.chunks.push_back({md::Shape(t.size.size(), 0), t.size, pl::contiguous_slice(bytes.data(), t.properties.dtype, t.size)});
    dest.add_tensor(item.fqn, std::move(td));
  }
  dcp::storage::FileSystemReader reader(dir / "ckpt");
  pl::DefaultLoadPlanner planner;
  (void)dcp::checkpoint::load(dest, reader, planner);
  const auto& tensors = expected.at("tensors").as_object();
  BOOST_TEST(memory.size() == tensors.size());
  for (const auto& [fqn, bytes] : memory) {
    const auto& want = tensors.at(fqn).as_object();
    BOOST_TEST((bytes == dcp_test::read_bytes(dir / std::string(want.at("file").as_string()))), fqn << ": bytes differ from PyTorch's");
  }
}

dcp::Error load_error(const std::filesystem::path& dir) {
  try {
    (void)load_everything(dir);
  } catch (const dcp::Error& e) {
    return e;
  }
  BOOST_FAIL("load accepted a damaged checkpoint " << dir);
  throw;
}

std::string damage(const std::string& args) {
  const int status = dcp_test::run(dcp_test::python() + " " +
                                   dcp_test::quote(dcp_test::source_root() / "tests/python/damage.py") + " " + args);
  BOOST_TEST_REQUIRE(status == 0);
  return {};
}

// The storage entry of the first chunk of the first tensor with at least `min_bytes` bytes.
std::pair<std::string, md::StorageInfo> some_tensor_item(const md::Metadata& m, std::uint64_t min_bytes = 16) {
  for (const auto& item : m.items)
    if (item.is_tensor() && md::byte_size(item.tensor().size, item.tensor().properties.dtype) >= min_bytes)
      return {item.fqn, *m.find_storage(item.fqn, &item.tensor().chunks[0].offsets)};
  throw std::runtime_error("no tensor");
}

}  // namespace

BOOST_AUTO_TEST_SUITE(interop)

BOOST_AUTO_TEST_CASE(torch213_cases_load_exactly, *boost::unit_test::precondition(needs_python2x)) {
  for (const auto& name : dcp_test::torch2x_cases())
    BOOST_TEST_CONTEXT(name) { check_full_load(checkpoint_case(name)); }
}

BOOST_AUTO_TEST_CASE(torch213_cases_load_exactly_into_caller_memory, *boost::unit_test::precondition(needs_python2x)) {
  for (const auto& name : dcp_test::torch2x_cases())
    BOOST_TEST_CONTEXT(name) { check_raw_load(checkpoint_case(name)); }
}

BOOST_AUTO_TEST_CASE(torch113_cases_load_exactly) {
  for (const char* name : {"flat_dtypes", "single_file", "sharded_4ranks", "optimizer"})
    BOOST_TEST_CONTEXT(name) { check_full_load(checkpoint_case(name)); }
}

BOOST_AUTO_TEST_CASE(io_uring_backend_loads_exactly) {
  // Falls back to pread where the build or the kernel has no io_uring; the values must match.
  for (const char* name : {"flat_dtypes", "sharded_4ranks"})
    BOOST_TEST_CONTEXT(name) { check_full_load(checkpoint_case(name), dcp::storage::ReadBackend::io_uring); }
  if (dcp_test::python2x_available())
    for (const char* name : {"x2_fsdp_4ranks", "x2_threads"})
      BOOST_TEST_CONTEXT(name) { check_full_load(checkpoint_case(name), dcp::storage::ReadBackend::io_uring); }
}

// Every 2-D tensor of a case loaded as 3 row shards, as 3 column shards and as 2x2 tiles.
void check_resharding(const std::filesystem::path& dir) {
  const auto expected = dcp_test::read_json(dir / "expected.json").as_object();
  const auto validated = dcp::checkpoint::inspect(dir / "ckpt");
  const dcp::metadata::Metadata& m = *validated;
  int checked = 0;
  for (const auto& item : m.items) {
    if (!item.is_tensor() || item.tensor().size.size() != 2) continue;
    const auto& t = item.tensor();
    const auto itemsize = dcp::dtype_itemsize(t.properties.dtype);
    const auto full = dcp_test::read_bytes(dir / std::string(expected.at("tensors").at(item.fqn).at("file").as_string()));
    std::vector<std::vector<dcp::layout::Box>> layouts = {
        dcp::layout::chunk_split(t.size, 0, 3), dcp::layout::chunk_split(t.size, 1, 3)};
    std::vector<dcp::layout::Box> tiles;
    for (const auto& rows : dcp::layout::chunk_split(t.size, 0, 2))
      for (const auto& cols : dcp::layout::chunk_split(t.size, 1, 2))
        tiles.push_back({{rows.offsets[0], cols.offsets[1]}, {rows.sizes[0], cols.sizes[1]}});
    layouts.push_back(tiles);
    for (const auto& boxes : layouts) {
      // One destination per "rank", each with its own memory, as on a real job.
      for (const auto& box : boxes) {
        std::vector<std::byte> memory(md::numel(box.sizes) * itemsize, std::byte{0x5a});
        pl::Destination dest;
        pl::TensorDestination td{t.size, t.properties.dtype, {}};
        if (md::numel(box.sizes) > 0)
          td.chunks.push_back({box.offsets, box.sizes, pl::contiguous_slice(memory.data(), t.properties.dtype, box.sizes)});
        dest.add_tensor(item.fqn, std::move(td));
        dcp::storage::FileSystemReader reader(dir / "ckpt");
        pl::DefaultLoadPlanner planner;
        (void)dcp::checkpoint::load(dest, reader, planner);
        for (std::int64_t r = 0; r < box.sizes[0]; ++r) {
          const auto row_bytes = static_cast<std::size_t>(box.sizes[1]) * itemsize;
          const auto src = ((box.offsets[0] + r) * t.size[1] + box.offsets[1]) * static_cast<std::int64_t>(itemsize);
          BOOST_TEST_REQUIRE(std::memcmp(memory.data() + r * row_bytes, full.data() + src, row_bytes) == 0,
                             item.fqn << " box " << dcp::layout::format_box(box) << " row " << r);
        }
        ++checked;
      }
    }
  }
  BOOST_TEST(checked > 10);
}

// Saved 4-way by rows (1.13 ShardedTensors).
BOOST_AUTO_TEST_CASE(resharding_into_other_layouts) { check_resharding(checkpoint_case("sharded_4ranks")); }

// Saved as 2.13 DTensors: FSDP2 rows on 4 ranks, and 2x2 tiles on a 2-D mesh.
BOOST_AUTO_TEST_CASE(resharding_torch213_dtensors, *boost::unit_test::precondition(needs_python2x)) {
  for (const char* name : {"x2_fsdp_4ranks", "x2_2d_4ranks"})
    BOOST_TEST_CONTEXT(name) { check_resharding(checkpoint_case(name)); }
}

BOOST_AUTO_TEST_CASE(strict_planner_rejects_mismatches) {
  const auto dir = checkpoint_case("flat_dtypes") / "ckpt";
  const auto validated = dcp::checkpoint::inspect(dir);
  const dcp::metadata::Metadata& m = *validated;
  const auto [fqn, info] = some_tensor_item(m);
  const auto& t = m.find_item(fqn)->tensor();
  auto try_load = [&](md::Shape size, dcp::DType dtype) -> dcp::Error {
    pl::Destination dest;
    dest.add_tensor(fqn, pl::TensorDestination{size, dtype, {}});
    dcp::storage::FileSystemReader reader(dir);
    pl::DefaultLoadPlanner planner;
    try {
      (void)dcp::checkpoint::load(dest, reader, planner);
    } catch (const dcp::Error& e) {
      return e;
    }
    BOOST_FAIL("mismatch accepted");
    throw;
  };
  auto bigger = t.size;
  bigger[0] += 1;
  auto e1 = try_load(bigger, t.properties.dtype);
  BOOST_TEST((e1.code() == dcp::Errc::failed_precondition), e1.what());
  BOOST_TEST(e1.context().key == fqn);
  auto e2 = try_load(t.size, t.properties.dtype == dcp::DType::float64 ? dcp::DType::float32 : dcp::DType::float64);
  BOOST_TEST((e2.code() == dcp::Errc::failed_precondition), e2.what());
  // With allow_dtype_conversion the load converts: test_hardening.cpp checks it against torch.
  pl::Destination missing;
  missing.add_tensor("no.such.key", pl::TensorDestination{{1}, dcp::DType::float32, {}});
  dcp::storage::FileSystemReader reader(dir);
  pl::DefaultLoadPlanner planner;
  BOOST_CHECK_THROW((void)dcp::checkpoint::load(missing, reader, planner), dcp::Error);
}

BOOST_AUTO_TEST_CASE(verify_reads_every_record) {
  const auto dir = checkpoint_case("flat_dtypes");
  const auto expected = dcp_test::read_json(dir / "expected.json").as_object();
  std::uint64_t bytes = 0, progress = 0;
  for (const auto& [fqn, t] : expected.at("tensors").as_object()) bytes += t.at("nbytes").to_number<std::uint64_t>();
  const auto report = dcp::checkpoint::verify(dir / "ckpt", {}, [&](std::uint64_t n) { progress += n; });
  BOOST_TEST(report.tensors == expected.at("tensors").as_object().size());
  BOOST_TEST(report.objects == expected.at("objects").as_object().size());
  BOOST_TEST(report.bytes == bytes);
  BOOST_TEST(progress == bytes);
  BOOST_TEST(report.errors.empty());
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(bad_input)

BOOST_AUTO_TEST_CASE(truncated_data_file_names_file_key_and_offset) {
  dcp_test::TempDir tmp;
  dcp_test::copy_checkpoint(checkpoint_case("single_file") / "ckpt", tmp.path());
  const auto validated = dcp::checkpoint::inspect(tmp.path());
  const dcp::metadata::Metadata& m = *validated;
  const auto [fqn, info] = some_tensor_item(m);
  // Cut the file inside this item: inspect's bound check reports it before any read.
  damage("truncate " + dcp_test::quote(tmp.path() / info.relative_path) + " " + std::to_string(info.offset + info.length / 2));
  auto e = load_error(tmp.path());
  BOOST_TEST(e.context().file.find(info.relative_path) != std::string::npos, e.what());
  BOOST_TEST(e.context().byte_offset.has_value(), e.what());
  BOOST_TEST((e.code() == dcp::Errc::data_loss), e.what());
}

BOOST_AUTO_TEST_CASE(every_byte_flip_in_an_item_is_caught_or_harmless) {
  const auto case_dir = checkpoint_case("flat_dtypes");
  dcp_test::TempDir tmp;
  dcp_test::copy_checkpoint(case_dir / "ckpt", tmp.path());
  const auto validated = dcp::checkpoint::inspect(tmp.path());
  const dcp::metadata::Metadata& m = *validated;
  const auto [fqn, info] = some_tensor_item(m, 64);
  const auto expected = dcp_test::read_json(case_dir / "expected.json").as_object();
  const auto want = dcp_test::read_bytes(
      case_dir / std::string(expected.at("tensors").as_object().at(fqn).as_object().at("file").as_string()));
  const auto path = tmp.path() / info.relative_path;
  const auto original = dcp_test::read_bytes(path);
  dcp::checkpoint::LoadOptions options;
  options.read.verify_crc = true;
  options.select = [&, key = fqn](std::string_view k) { return k == key; };
  int caught = 0, harmless = 0;
  for (std::uint64_t pos = info.offset; pos < info.offset + info.length; ++pos) {
    auto copy = original;
    copy[pos] ^= std::byte{0x40};
    dcp_test::write_bytes(path, copy);
    try {
      (void)dcp::checkpoint::for_each_tensor(tmp.path(), validated, options, [&](const std::string&, dcp::checkpoint::TensorBuffer t) {
        // Not caught: then it must not matter, the value is exactly PyTorch's.
        BOOST_TEST_REQUIRE((tensor_bytes(t) == want), "flip at byte " << pos << " loaded a wrong tensor");
        ++harmless;
      });
    } catch (const dcp::Error& e) {
      ++caught;
      BOOST_TEST_REQUIRE(e.context().key == fqn, e.what());
      BOOST_TEST_REQUIRE(e.context().file == path.string(), e.what());
      BOOST_TEST_REQUIRE(e.context().byte_offset.has_value(), e.what());
      BOOST_TEST_REQUIRE(*e.context().byte_offset >= info.offset, e.what());
      BOOST_TEST_REQUIRE(*e.context().byte_offset < info.offset + info.length, e.what());
    }
  }
  BOOST_TEST(caught + harmless == static_cast<int>(info.length));
  // Padding and unused header fields may flip harmlessly; data bytes are caught by the CRC.
  BOOST_TEST(caught > static_cast<int>(info.length / 3));
}

BOOST_AUTO_TEST_CASE(record_lying_about_its_size) {
  dcp_test::TempDir tmp;
  dcp_test::copy_checkpoint(checkpoint_case("flat_dtypes") / "ckpt", tmp.path());
  const auto validated = dcp::checkpoint::inspect(tmp.path());
  const dcp::metadata::Metadata& m = *validated;
  const auto [fqn, info] = some_tensor_item(m, 64);
  const auto path = tmp.path() / info.relative_path;
  auto bytes = dcp_test::read_bytes(path);
  // The central directory entry of the storage record: its name is the last occurrence.
  const std::string name = "/data/0";
  std::size_t at = std::string::npos;
  for (std::size_t i = info.offset; i + name.size() <= info.offset + info.length; ++i)
    if (std::memcmp(bytes.data() + i, name.data(), name.size()) == 0) at = i;
  BOOST_TEST_REQUIRE(at != std::string::npos);
  // Find the PK\1\2 signature that starts this entry, then add 4 to both 32-bit sizes.
  std::size_t entry = at;
  while (entry > info.offset && !(bytes[entry] == std::byte{'P'} && bytes[entry + 1] == std::byte{'K'} &&
                                  bytes[entry + 2] == std::byte{1} && bytes[entry + 3] == std::byte{2}))
    --entry;
  for (std::size_t field : {20u, 24u}) bytes[entry + field] = std::byte(static_cast<unsigned char>(bytes[entry + field]) + 4);
  dcp_test::write_bytes(path, bytes);
  auto e = load_error(tmp.path());
  BOOST_TEST((e.code() == dcp::Errc::data_loss), e.what());
  BOOST_TEST(e.context().key == fqn, e.what());
  BOOST_TEST(e.context().file == path.string(), e.what());
}

BOOST_AUTO_TEST_CASE(missing_data_file) {
  dcp_test::TempDir tmp;
  dcp_test::copy_checkpoint(checkpoint_case("sharded_4ranks") / "ckpt", tmp.path());
  const auto validated = dcp::checkpoint::inspect(tmp.path());
  const dcp::metadata::Metadata& m = *validated;
  const auto [fqn, info] = some_tensor_item(m);
  std::filesystem::remove(tmp.path() / info.relative_path);
  auto e = load_error(tmp.path());
  BOOST_TEST((e.code() == dcp::Errc::not_found), e.what());
  BOOST_TEST(std::string(e.what()).find(info.relative_path) != std::string::npos, e.what());
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(memory)

BOOST_AUTO_TEST_CASE(buffers_are_aligned_by_size) {
  namespace mem = dcp::memory;
  auto address = [](const mem::Buffer& b) { return reinterpret_cast<std::uintptr_t>(b.data()); };
  const auto empty = mem::allocate(0);
  BOOST_TEST(empty.data() != nullptr);
  BOOST_TEST(address(empty) % mem::kMinAlignment == 0u);
  for (std::uint64_t size : {1ull, 63ull, 100ull, 4095ull}) {
    const auto b = mem::allocate(size);
    BOOST_TEST(b.size() == size);
    BOOST_TEST(address(b) % mem::kMinAlignment == 0u, size);
  }
  for (std::uint64_t size : {4096ull, 5000ull, (2ull << 20) - 1})
    BOOST_TEST(address(mem::allocate(size)) % mem::kPageBytes == 0u, size);
  for (std::uint64_t size : {2ull << 20, (3ull << 20) + 17}) {
    auto b = mem::allocate(size);
    BOOST_TEST(address(b) % mem::kHugePageBytes == 0u, size);
    b.data()[size - 1] = std::byte{7};  // the whole size is mapped
    mem::Buffer moved = std::move(b);
    BOOST_TEST(b.data() == nullptr);
    BOOST_TEST((moved.data()[size - 1] == std::byte{7}));
  }
  const auto e = dcp_test::thrown<dcp::Error>([] { (void)mem::allocate(~0ull); });
  BOOST_TEST(dcp::errc_name(e.code()) == "resource_exhausted", e.what());
}

BOOST_AUTO_TEST_CASE(device_names) {
  using dcp::memory::Device;
  BOOST_TEST(Device::parse("cpu").to_string() == "cpu");
  BOOST_TEST(Device::parse("cuda").to_string() == "cuda:0");
  BOOST_TEST(Device::parse("cuda:12").to_string() == "cuda:12");
  for (const char* bad : {"", "gpu", "cuda:", "cuda:x", "cuda:12345", "CPU"})
    BOOST_CHECK_THROW((void)Device::parse(bad), dcp::Error);
}

BOOST_AUTO_TEST_CASE(for_each_tensor_reads_into_the_callers_allocator) {
  // An engine's arena: one block, tensors at 256-byte offsets; the buffers do not own it.
  const auto dir = checkpoint_case("flat_dtypes");
  std::vector<std::byte> arena(std::size_t{1} << 20);
  std::size_t used = 0, calls = 0;
  dcp::checkpoint::LoadOptions options;
  options.allocate = [&](std::uint64_t bytes) {
    ++calls;
    auto* at = arena.data() + used;
    used += (bytes + 255) / 256 * 256;
    BOOST_TEST_REQUIRE(used <= arena.size());
    return dcp::memory::Buffer(at, bytes, nullptr, nullptr);
  };
  const auto loaded = load_everything(dir / "ckpt", options);
  BOOST_TEST(calls == loaded.tensors.size());
  const auto expected = dcp_test::read_json(dir / "expected.json").as_object();
  for (const auto& [fqn, t] : loaded.tensors) {
    BOOST_TEST((t.memory.data() >= arena.data() && t.memory.data() < arena.data() + used), fqn);
    const auto& want = expected.at("tensors").at(fqn).as_object();
    BOOST_TEST((tensor_bytes(t) == dcp_test::read_bytes(dir / std::string(want.at("file").as_string()))), fqn);
  }
  // An allocator that gives too little is a bug, reported with the key before any read.
  options.allocate = [](std::uint64_t bytes) { return dcp::memory::allocate(bytes / 2); };
  options.select = [](std::string_view fqn) { return fqn == "w.fp32"; };
  const auto short_buffer = dcp_test::thrown<dcp::Error>([&] { (void)load_everything(dir / "ckpt", options); });
  BOOST_TEST(dcp::errc_name(short_buffer.code()) == "internal", short_buffer.what());
  BOOST_TEST(short_buffer.context().key == "w.fp32", short_buffer.what());
}

BOOST_AUTO_TEST_SUITE_END()
