// dcp.metadata against real PyTorch: every field of .metadata written at test time by torch
// 1.13 and by torch 2.13, to_json against a document computed from torch's own unpickling of
// .metadata (tests/python/metadata_json.py), the encoder read back by torch, and bad input.
#define BOOST_TEST_MODULE dcp.metadata
#include <boost/test/unit_test.hpp>

#include <chrono>
#include <cstddef>
#include <random>
#include <span>
#include <set>
#include <string>
#include <variant>
#include <vector>

#include "support.hpp"
import dcp.error;
import dcp.metadata;
import dcp.checkpoint;

namespace md = dcp::metadata;
namespace json = boost::json;
using dcp_test::checkpoint_case;
using dcp_test::needs_python2x;

namespace {

std::vector<std::int64_t> ints(const json::value& v) {
  std::vector<std::int64_t> out;
  for (const auto& x : v.as_array()) out.push_back(x.as_int64());
  return out;
}

void check_storage(const md::StorageInfo* info, const json::object& expected, const std::string& fqn) {
  BOOST_TEST_REQUIRE(info != nullptr, fqn << ": no storage entry");
  BOOST_TEST(info->relative_path == std::string(expected.at("file").as_string()), fqn);
  BOOST_TEST(info->offset == static_cast<std::uint64_t>(expected.at("byte_offset").as_int64()), fqn);
  BOOST_TEST(info->length == static_cast<std::uint64_t>(expected.at("byte_length").as_int64()), fqn);
}

void check_path(const md::Metadata& m, const std::string& fqn, const json::value& expected) {
  std::vector<md::PathPart> want;
  for (const auto& p : expected.as_array()) {
    if (p.is_string()) want.emplace_back(std::string(p.as_string()));
    else want.emplace_back(p.as_int64());
  }
  if (!m.planner_data) {
    BOOST_TEST((want == std::vector<md::PathPart>{fqn}), fqn);
    return;
  }
  const auto* path = m.find_path(fqn);
  BOOST_TEST_REQUIRE(path != nullptr, fqn << ": not in planner_data");
  BOOST_TEST((*path == want), fqn);
}

// Compares every field dcpp decodes with what PyTorch recorded in expected.json.
void check_against_expected(const md::Metadata& m, const json::object& expected) {
  const auto& tensors = expected.at("tensors").as_object();
  const auto& objects = expected.at("objects").as_object();
  BOOST_TEST(m.items.size() == tensors.size() + objects.size());
  for (const auto& item : m.items) {
    if (item.is_tensor()) {
      BOOST_TEST_REQUIRE(tensors.contains(item.fqn), item.fqn << " is not a tensor in expected.json");
      const auto& want = tensors.at(item.fqn).as_object();
      const auto& t = item.tensor();
      BOOST_TEST(dcp::dtype_name(t.properties.dtype) == std::string(want.at("dtype").as_string()), item.fqn);
      BOOST_TEST((t.size == ints(want.at("shape"))), item.fqn);
      BOOST_TEST(t.properties.requires_grad == want.at("requires_grad").as_bool(), item.fqn);
      const auto& chunks = want.at("chunks").as_array();
      BOOST_TEST_REQUIRE(t.chunks.size() == chunks.size(), item.fqn);
      for (std::size_t i = 0; i < chunks.size(); ++i) {
        const auto& c = chunks[i].as_object();
        BOOST_TEST((t.chunks[i].offsets == ints(c.at("offsets"))), item.fqn << " chunk " << i);
        BOOST_TEST((t.chunks[i].sizes == ints(c.at("sizes"))), item.fqn << " chunk " << i);
        check_storage(m.find_storage(item.fqn, &t.chunks[i].offsets), c, item.fqn);
      }
      check_path(m, item.fqn, want.at("path"));
    } else {
      BOOST_TEST_REQUIRE(objects.contains(item.fqn), item.fqn << " is not an object in expected.json");
      const auto& want = objects.at(item.fqn).as_object();
      check_storage(m.find_storage(item.fqn, nullptr), want.at("storage").as_array()[0].as_object(), item.fqn);
      check_path(m, item.fqn, want.at("path"));
    }
  }
  auto optional_text = [](const json::value& v) {
    return v.is_null() ? std::optional<std::string>() : std::optional<std::string>(std::string(v.as_string()));
  };
  BOOST_TEST((m.version == optional_text(expected.at("metadata_version"))));
  const auto want_id = optional_text(expected.at("checkpoint_id"));
  BOOST_TEST(((m.storage_meta ? m.storage_meta->checkpoint_id : std::nullopt) == want_id));
  const auto want_save = optional_text(expected.at("save_id"));
  BOOST_TEST(((m.storage_meta ? m.storage_meta->save_id : std::nullopt) == want_save));
  if (expected.contains("format"))
    BOOST_TEST(md::flavor_name(m.flavor) == std::string(expected.at("format").as_string()));
}

void check_case_dir(const std::filesystem::path& dir) {
  const auto validated = dcp::checkpoint::inspect(dir / "ckpt");
  const dcp::metadata::Metadata& m = *validated;
  check_against_expected(m, dcp_test::read_json(dir / "expected.json").as_object());
}

// to_json of what dcpp decodes must equal `oracle`, the document computed from torch's own
// unpickling of the same .metadata (tests/python/metadata_json.py).
void check_to_json(const std::filesystem::path& ckpt, const json::value& oracle) {
  const auto ours = json::parse(md::to_json(*dcp::checkpoint::inspect(ckpt)));
  BOOST_TEST((ours == oracle), ckpt << ":\n dcpp:  " << ours << "\n torch: " << oracle);
}

md::Metadata decode_file(const std::filesystem::path& path) {
  return md::decode_metadata(dcp_test::read_bytes(path));
}

dcp::Error inspect_error(const std::filesystem::path& dir) {
  try {
    (void)dcp::checkpoint::inspect(dir);
  } catch (const dcp::Error& e) {
    return e;
  }
  BOOST_FAIL("inspect accepted a bad checkpoint: " << dir);
  throw;
}

// Copies a 1.13 case, lets `edit` change its Metadata, re-encodes it, and returns inspect's error.
template <class Edit>
dcp::Error error_after_edit(const std::string& case_name, Edit edit) {
  dcp_test::TempDir tmp;
  dcp_test::copy_checkpoint(checkpoint_case(case_name) / "ckpt", tmp.path());
  auto m = decode_file(tmp.path() / ".metadata");
  edit(m);
  m.reindex();
  dcp_test::write_bytes(tmp.path() / ".metadata", md::encode_metadata(m, m.flavor));
  return inspect_error(tmp.path());
}

}  // namespace

BOOST_AUTO_TEST_SUITE(interop)

BOOST_AUTO_TEST_CASE(torch213_cases_match_expected, *boost::unit_test::precondition(needs_python2x)) {
  for (const auto& name : dcp_test::torch2x_cases()) {
    BOOST_TEST_CONTEXT(name) { check_case_dir(checkpoint_case(name)); }
  }
}

BOOST_AUTO_TEST_CASE(torch113_flat_dtypes) { check_case_dir(checkpoint_case("flat_dtypes")); }
BOOST_AUTO_TEST_CASE(torch113_single_file) { check_case_dir(checkpoint_case("single_file")); }
BOOST_AUTO_TEST_CASE(torch113_sharded_4ranks) { check_case_dir(checkpoint_case("sharded_4ranks")); }
BOOST_AUTO_TEST_CASE(torch113_optimizer) { check_case_dir(checkpoint_case("optimizer")); }

BOOST_AUTO_TEST_CASE(to_json_equals_torch113s_metadata) {
  for (const char* name : {"flat_dtypes", "single_file", "sharded_4ranks", "optimizer"})
    BOOST_TEST_CONTEXT(name) {
      check_to_json(checkpoint_case(name) / "ckpt", dcp_test::case_metadata_json(checkpoint_case(name)));
    }
}

BOOST_AUTO_TEST_CASE(to_json_equals_torch213s_metadata, *boost::unit_test::precondition(needs_python2x)) {
  for (const auto& name : dcp_test::torch2x_cases())
    BOOST_TEST_CONTEXT(name) {
      check_to_json(checkpoint_case(name) / "ckpt", dcp_test::case_metadata_json(checkpoint_case(name)));
    }
}

BOOST_AUTO_TEST_CASE(encoder_output_is_read_by_torch113) {
  for (const char* name : {"flat_dtypes", "sharded_4ranks"}) {
    dcp_test::TempDir tmp;
    const auto original = checkpoint_case(name) / "ckpt";
    dcp_test::copy_checkpoint(original, tmp.path());
    const auto m = decode_file(original / ".metadata");
    dcp_test::write_bytes(tmp.path() / ".metadata", md::encode_metadata(m, md::Flavor::torch_1_13));
    // torch unpickles both files with its own classes; dataclass equality compares every field.
    const std::string script =
        "import sys; sys.path.insert(0, sys.argv[1]); import dcp113; from dcp113 import dcp; "
        "a = dcp.FileSystemReader(sys.argv[2]).read_metadata(); "
        "b = dcp.FileSystemReader(sys.argv[3]).read_metadata(); "
        "assert a.state_dict_metadata == b.state_dict_metadata, 'state_dict_metadata differs'; "
        "assert a.storage_data == b.storage_data, 'storage_data differs'; "
        "assert list(a.storage_data) == list(b.storage_data); assert a.planner_data == b.planner_data";
    const int status = dcp_test::run(dcp_test::python() + " -c " + dcp_test::quote(script) + " " +
                                     dcp_test::quote(dcp_test::source_root() / "tests/python") + " " +
                                     dcp_test::quote(original) + " " + dcp_test::quote(tmp.path()));
    BOOST_TEST(status == 0, name);
    // And our decoder reads the re-encoded file as torch does.
    check_to_json(tmp.path(), dcp_test::torch_metadata_json(dcp_test::python(), {tmp.path()}).at(0));
  }
}

// Our torch-2.x encoding of a 2.13 .metadata, unpickled by torch 2.13 itself, equals torch's
// reading of the original in every field. Two differences are by design and compared
// accordingly: StorageMeta.checkpoint_id is written as a str (the original holds a PosixPath),
// and TensorProperties is the torch.distributed._shard.sharded_tensor.metadata class (which
// every torch 2.x unpickles; 2.13 writes torch.distributed.checkpoint.metadata's), so its
// fields are compared instead of the dataclass.
BOOST_AUTO_TEST_CASE(encoder_output_is_read_by_torch213, *boost::unit_test::precondition(needs_python2x)) {
  // All cases in one run of each script (a torch 2.13 start costs seconds).
  dcp_test::TempDir tmp;
  std::vector<std::filesystem::path> encoded;
  std::string pairs;
  for (const auto& name : dcp_test::torch2x_cases()) {
    const auto original = checkpoint_case(name) / "ckpt";
    const auto& dir = encoded.emplace_back(tmp.path() / name);
    dcp_test::copy_checkpoint(original, dir);
    dcp_test::write_bytes(dir / ".metadata", md::encode_metadata(decode_file(original / ".metadata"), md::Flavor::torch_2x));
    pairs += " " + dcp_test::quote(original) + " " + dcp_test::quote(dir);
  }
  const std::string script =
      "import os, pickle, sys\n"
      "args = sys.argv[1:]\n"
      "for da, db in zip(args[::2], args[1::2]):\n"
      "  a, b = (pickle.load(open(os.path.join(d, '.metadata'), 'rb')) for d in (da, db))\n"
      "  assert type(a) is type(b), (db, type(a), type(b))\n"
      "  assert list(a.state_dict_metadata) == list(b.state_dict_metadata), db\n"
      "  for k, x in a.state_dict_metadata.items():\n"
      "    y = b.state_dict_metadata[k]\n"
      "    assert type(x) is type(y) and vars(x).keys() == vars(y).keys(), (db, k)\n"
      "    if hasattr(x, 'properties'):\n"
      "      assert (x.size, x.chunks) == (y.size, y.chunks), (db, k)\n"
      "      assert vars(x.properties) == vars(y.properties), (db, k, vars(x.properties), vars(y.properties))\n"
      "  assert a.storage_data == b.storage_data and list(a.storage_data) == list(b.storage_data), db\n"
      "  assert [vars(v) for v in a.storage_data.values()] == [vars(v) for v in b.storage_data.values()], db\n"
      "  assert a.planner_data == b.planner_data and a.version == b.version, db\n"
      "  sa, sb = vars(a.storage_meta), vars(b.storage_meta)\n"
      "  assert os.fspath(sa.pop('checkpoint_id')) == sb.pop('checkpoint_id') and sa == sb, (db, sa, sb)\n"
      "  assert list(vars(a)) == list(vars(b)), (db, list(vars(a)), list(vars(b)))\n";
  BOOST_TEST(dcp_test::run(dcp_test::quote(dcp_test::python2x()) + " -c " + dcp_test::quote(script) + pairs) == 0);
  // And our decoder reads the re-encoded files as torch does.
  const auto oracle = dcp_test::torch_metadata_json(dcp_test::python2x(), encoded);
  for (std::size_t i = 0; i < encoded.size(); ++i) check_to_json(encoded[i], oracle[i]);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(bad_input)

void check_every_truncation(const std::filesystem::path& metadata) {
  const auto bytes = dcp_test::read_bytes(metadata);
  for (std::size_t cut = 0; cut < bytes.size(); ++cut) {
    try {
      (void)md::decode_metadata(std::span(bytes.data(), cut));
      BOOST_FAIL("truncation at " << cut << " decoded");
    } catch (const dcp::Error& e) {
      BOOST_TEST_REQUIRE(e.context().byte_offset.has_value());
      BOOST_TEST_REQUIRE(*e.context().byte_offset <= cut);
    }
  }
}

BOOST_AUTO_TEST_CASE(every_truncation_is_a_clean_error) {
  check_every_truncation(checkpoint_case("sharded_4ranks") / "ckpt/.metadata");
}

BOOST_AUTO_TEST_CASE(every_truncation_of_a_torch213_file_is_a_clean_error,
                     *boost::unit_test::precondition(needs_python2x)) {
  check_every_truncation(checkpoint_case("x2_fsdp_4ranks") / "ckpt/.metadata");
}

// Thousands of bit-flipped copies of a real file never crash: each is refused with an Error or
// accepted, and every accepted copy whose bits changed means to dcpp what it means to torch
// (torch 1.13's own unpickling of the same bytes, tests/python/metadata_json.py).
BOOST_AUTO_TEST_CASE(bit_flips_never_crash) {
  const auto bytes = dcp_test::read_bytes(checkpoint_case("sharded_4ranks") / "ckpt/.metadata");
  dcp_test::TempDir tmp;
  std::mt19937 rng(1234);
  int rejected = 0;
  std::vector<std::filesystem::path> accepted;
  std::vector<json::value> ours;
  std::set<std::vector<std::byte>> seen{bytes};
  for (int trial = 0; trial < 3000; ++trial) {
    auto copy = bytes;
    const auto pos = rng() % copy.size();
    copy[pos] ^= std::byte(1u << (rng() % 8));
    try {
      const auto m = md::decode_validated(copy);
      // Flips of the pickle's framing (a FRAME length, a memo index) can leave the value as it
      // was; copies that decode the same as one already compared need no second look.
      if (accepted.size() >= 400 || !seen.insert(copy).second) continue;
      const auto dir = tmp.path() / std::to_string(trial);
      std::filesystem::create_directories(dir);
      dcp_test::write_bytes(dir / ".metadata", copy);
      accepted.push_back(dir);
      ours.push_back(json::parse(md::to_json(*m)));
    } catch (const dcp::Error& e) {
      ++rejected;
    }
  }
  BOOST_TEST(rejected > 0);
  BOOST_TEST_REQUIRE(!accepted.empty());
  const auto torch = dcp_test::torch_metadata_json(dcp_test::python(), accepted);
  BOOST_TEST_REQUIRE(torch.size() == accepted.size());
  for (std::size_t i = 0; i < accepted.size(); ++i)
    BOOST_TEST((ours[i] == torch[i]), accepted[i] << ":\n dcpp:  " << ours[i] << "\n torch: " << torch[i]);
  BOOST_TEST_MESSAGE(rejected << " flipped copies refused, " << accepted.size() << " accepted and compared with torch");
}

BOOST_AUTO_TEST_CASE(malicious_metadata_is_refused_and_not_executed) {
  dcp_test::TempDir tmp;
  const auto marker = tmp.path() / "pwned";
  for (const char* variant : {"global", "stack_global"}) {
    const auto dir = tmp.path() / variant;
    std::filesystem::create_directories(dir);
    const int status = dcp_test::run(dcp_test::python() + " " +
                                     dcp_test::quote(dcp_test::source_root() / "tests/python/damage.py") +
                                     " malicious " + dcp_test::quote(dir / ".metadata") + " " +
                                     dcp_test::quote(marker) + (std::string(variant) == "stack_global" ? " --form stack_global" : " --form global"));
    BOOST_TEST_REQUIRE(status == 0);
    auto e = inspect_error(dir);
    BOOST_TEST((e.code() == dcp::Errc::permission_denied), e.what());
    BOOST_TEST(std::string(e.what()).find("system") != std::string::npos, e.what());
    BOOST_TEST(e.context().file.find(".metadata") != std::string::npos);
    BOOST_TEST(e.context().byte_offset.has_value());
    BOOST_TEST(!std::filesystem::exists(marker));
  }
}

BOOST_AUTO_TEST_CASE(empty_garbage_and_foreign_pickles) {
  dcp_test::TempDir tmp;
  auto write_and_inspect = [&](std::string_view content) {
    dcp_test::write_bytes(tmp.path() / ".metadata",
                          std::vector<std::byte>(reinterpret_cast<const std::byte*>(content.data()),
                                                 reinterpret_cast<const std::byte*>(content.data()) + content.size()));
    return inspect_error(tmp.path());
  };
  BOOST_TEST((write_and_inspect("").code() == dcp::Errc::data_loss));
  BOOST_TEST((write_and_inspect("PK\x03\x04 not a pickle at all").code() == dcp::Errc::unimplemented));
  BOOST_TEST((write_and_inspect("\x80\x04K\x2a.").code() == dcp::Errc::data_loss));  // the int 42
  BOOST_TEST((write_and_inspect("\x80\x09.").code() == dcp::Errc::unimplemented));   // wrong version
}

BOOST_AUTO_TEST_CASE(missing_and_interrupted_checkpoints) {
  dcp_test::TempDir tmp;
  BOOST_TEST((inspect_error(tmp.path()).code() == dcp::Errc::not_found));
  dcp_test::write_bytes(tmp.path() / ".metadata.tmp", {});
  auto e = inspect_error(tmp.path());
  BOOST_TEST(std::string(e.what()).find("incomplete checkpoint") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(semantic_checks_name_the_key) {
  auto first_tensor = [](md::Metadata& m) -> md::ItemMetadata& {
    for (auto& item : m.items)
      if (item.is_tensor() && !item.tensor().size.empty() && item.tensor().size[0] > 1) return item;
    throw std::runtime_error("no tensor");
  };
  std::string fqn;
  auto e1 = error_after_edit("sharded_4ranks", [&](md::Metadata& m) {
    auto& item = first_tensor(m);
    fqn = item.fqn;
    std::get<0>(item.storage).chunks[0].sizes[0] += 100;  // out of bounds
  });
  BOOST_TEST((e1.code() == dcp::Errc::data_loss));
  BOOST_TEST(e1.context().key == fqn);
  BOOST_TEST(std::string(e1.what()).find("outside") != std::string::npos, e1.what());

  auto e2 = error_after_edit("sharded_4ranks", [&](md::Metadata& m) {
    auto& t = std::get<0>(first_tensor(m).storage);
    if (t.chunks.size() > 1) t.chunks[1].offsets = t.chunks[0].offsets;  // overlap
  });
  BOOST_TEST(std::string(e2.what()).find("overlap") != std::string::npos, e2.what());

  auto e3 = error_after_edit("flat_dtypes", [&](md::Metadata& m) { m.storage_data[0].second.relative_path = "../etc/passwd"; });
  BOOST_TEST(std::string(e3.what()).find("unsafe file name") != std::string::npos, e3.what());

  auto e4 = error_after_edit("flat_dtypes", [&](md::Metadata& m) { m.storage_data.pop_back(); });
  BOOST_TEST(std::string(e4.what()).find("no storage_data entry") != std::string::npos, e4.what());

  auto e5 = error_after_edit("flat_dtypes", [&](md::Metadata& m) { m.storage_data[0].second.offset += 1u << 30; });
  BOOST_TEST(std::string(e5.what()).find("past the end") != std::string::npos, e5.what());
  BOOST_TEST(e5.context().file.find(".distcp") != std::string::npos);

  auto e6 = error_after_edit("flat_dtypes", [&](md::Metadata& m) { m.storage_data[0].second.relative_path = "__9_9.distcp"; });
  BOOST_TEST((e6.code() == dcp::Errc::not_found), e6.what());
}

// A tensor without any chunk (fuzz_metadata found validate reading chunk 0 of an empty list
// for its error message): a clean data_loss naming the key.
BOOST_AUTO_TEST_CASE(a_tensor_without_chunks) {
  md::Metadata m;
  md::TensorStorageMetadata t;
  t.size = {3, 2};
  m.items.push_back(md::ItemMetadata{"w", t, 77});
  const auto e = dcp_test::thrown<dcp::Error>([&] { (void)md::validate(m); });
  BOOST_TEST((e.code() == dcp::Errc::data_loss), e.what());
  BOOST_TEST(std::string(e.what()).find("cover 0 of 6") != std::string::npos, e.what());
  BOOST_TEST(e.context().key == "w");
  BOOST_TEST(*e.context().byte_offset == 77u);
}

// Keys and objects: a key listed twice is refused at its second item; an object needs exactly
// one storage entry.
BOOST_AUTO_TEST_CASE(keys_twice_and_objects_without_one_entry) {
  md::Metadata m;
  md::TensorStorageMetadata t;
  t.size = {2};
  t.chunks.push_back(md::ChunkStorageMetadata{{0}, {2}, 0});
  m.items.push_back(md::ItemMetadata{"w", t, 10});
  m.items.push_back(md::ItemMetadata{"step", md::BytesStorageMetadata{}, 20});
  m.storage_data.emplace_back(md::MetadataIndex{"w", md::Shape{0}, 0}, md::StorageInfo{"__0_0.distcp", 0, 8, {}, 30});
  m.storage_data.emplace_back(md::MetadataIndex{"step", std::nullopt, std::nullopt},
                              md::StorageInfo{"__0_0.distcp", 8, 5, {}, 40});
  BOOST_TEST(md::validate(m)->items.size() == 2u);
  auto error_of = [](md::Metadata edited) {
    return dcp_test::thrown<dcp::Error>([&] { (void)md::validate(std::move(edited)); });
  };
  auto twice = m;
  twice.items.push_back(md::ItemMetadata{"w", t, 50});
  auto e = error_of(twice);
  BOOST_TEST(std::string(e.what()).find("key appears twice") != std::string::npos, e.what());
  BOOST_TEST(*e.context().byte_offset == 50u);
  auto stored_twice = m;
  stored_twice.storage_data.push_back(m.storage_data[1]);
  stored_twice.storage_data.back().second.pickle_offset = 60;
  e = error_of(stored_twice);
  BOOST_TEST(std::string(e.what()).find("entry appears twice") != std::string::npos, e.what());
  BOOST_TEST(e.context().key == "step");
  BOOST_TEST(*e.context().byte_offset == 60u);
  auto unstored = m;
  unstored.storage_data.pop_back();
  e = error_of(unstored);
  BOOST_TEST(std::string(e.what()).find("no storage_data entry for this object") != std::string::npos, e.what());
  BOOST_TEST(*e.context().byte_offset == 20u);
}

// Chunk offsets a hostile file picks to collide in validate's tables: 200,000 row chunks of
// 2^44 rows each, starting at multiples of 2^44, so that their offsets differ only in high bits
// (with the hashes multiplicative, as they were, every table went quadratic). Validation must
// accept them (they tile) and stay linear: the time is printed, as for the other hostile inputs.
BOOST_AUTO_TEST_CASE(offsets_chosen_to_collide) {
  constexpr std::int64_t n = 200000, step = std::int64_t{1} << 44;
  md::Metadata m;
  md::TensorStorageMetadata t;
  t.properties.dtype = dcp::DType::uint8;
  t.size = {n * step};
  for (std::int64_t i = 0; i < n; ++i) t.chunks.push_back(md::ChunkStorageMetadata{{i * step}, {step}, 0});
  m.items.push_back(md::ItemMetadata{"w", t, 0});
  for (std::int64_t i = 0; i < n; ++i)
    m.storage_data.emplace_back(md::MetadataIndex{"w", md::Shape{i * step}, std::nullopt},  // no hints: found by hash
                                md::StorageInfo{"__0_0.distcp", static_cast<std::uint64_t>(i), 1, {}, 0});
  const auto start = std::chrono::steady_clock::now();
  const auto validated = md::validate(std::move(m));
  BOOST_TEST(validated->storage_data.size() == static_cast<std::size_t>(n));
  BOOST_TEST((validated.chunk_position("w", md::Shape{(n - 1) * step}) == std::optional<std::size_t>(n - 1)));
  BOOST_TEST_MESSAGE("validate of 200,000 colliding-by-design offsets: "
                     << std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() << " s");
}

// Storage entries are resolved on several threads in blocks (100,000 entries pass
// parallel_for's threshold) and claimed after, in order: the error must still be the first
// failing entry's, whichever check it fails.
BOOST_AUTO_TEST_CASE(many_storage_entries_fail_at_the_first_bad_one) {
  constexpr std::int64_t n = 100000;
  md::Metadata m;
  md::TensorStorageMetadata t;
  t.properties.dtype = dcp::DType::float32;
  t.size = {n};
  for (std::int64_t i = 0; i < n; ++i) t.chunks.push_back(md::ChunkStorageMetadata{{i}, {1}, 0});
  m.items.push_back(md::ItemMetadata{"w", t, 0});
  for (std::int64_t i = 0; i < n; ++i)
    m.storage_data.emplace_back(md::MetadataIndex{"w", md::Shape{i}, (i * 7) % n},  // hints mostly wrong
                                md::StorageInfo{"__0_0.distcp", static_cast<std::uint64_t>(4 * i), 4, {}, 1000 + static_cast<std::uint64_t>(i)});
  BOOST_TEST(md::validate(m)->storage_data.size() == static_cast<std::size_t>(n));
  auto error_of = [](md::Metadata edited) {
    return dcp_test::thrown<dcp::Error>([&] { (void)md::validate(std::move(edited)); });
  };
  auto twice = m;
  twice.storage_data[70000].first.offset = md::Shape{3};  // a second entry for chunk 3
  twice.storage_data[90000].second.relative_path = "../x";
  auto e = error_of(twice);
  BOOST_TEST(std::string(e.what()).find("entry appears twice") != std::string::npos, e.what());
  BOOST_TEST(*e.context().byte_offset == 71000u);
  twice.storage_data[50000].second.relative_path = "a/b";
  e = error_of(twice);
  BOOST_TEST(std::string(e.what()).find("unsafe file name") != std::string::npos, e.what());
  BOOST_TEST(*e.context().byte_offset == 51000u);
  auto stranger = m;
  stranger.storage_data[99999].first.fqn = "v";
  e = error_of(stranger);
  BOOST_TEST(std::string(e.what()).find("not in state_dict_metadata") != std::string::npos, e.what());
  BOOST_TEST(e.context().key == "v");
  auto missing = m;
  missing.storage_data[123].first.offset = md::Shape{n + 5};
  e = error_of(missing);
  BOOST_TEST(std::string(e.what()).find("no chunk starts at") != std::string::npos, e.what());
}

BOOST_AUTO_TEST_SUITE_END()
