// Nested state dicts in torch 1.13 checkpoints: torch 1.13's save_state_dict keeps the top-level
// keys and saves every non-tensor value as one BYTE_IO item, tensors inside included. Real torch
// 1.13 writes and reads them (tests/python/nested113.py): what dcpp writes must hold exactly the
// keys and item kinds 1.13 writes for the same state dict and load to exactly the same values;
// what 1.13 writes, dcpp must read, verify, convert and rewrite.
#include <boost/test/unit_test.hpp>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "support.hpp"
import dcp.error;
import dcp.pickle;
import dcp.zip;
import dcp.metadata;
import dcp.planning;
import dcp.record;
import dcp.storage;
import dcp.checkpoint;

namespace fs = std::filesystem;
using dcp_test::needs_python2x;
using dcp_test::quote;

namespace {

bool contains(std::string_view text, std::string_view part) { return text.find(part) != std::string_view::npos; }

void oracle(const std::string& interpreter, const std::string& args) {
  int status = 0;
  const auto out = dcp_test::run_capture(
      quote(interpreter) + " " + quote(dcp_test::source_root() / "tests/python/nested113.py") + " " + args + " 2>&1", &status);
  BOOST_TEST_MESSAGE(out);
  BOOST_TEST(status == 0, args << " -> " << out);
  BOOST_TEST(!contains(out, "FAIL"), out);
}

void dcpp_ok(const std::string& args, const fs::path& scratch) {
  const auto r = dcp_test::run_dcpp(args, scratch);
  BOOST_TEST_REQUIRE(r.status == 0, args << ": " << r.err);
}

// The state dict (nested113.py's) written by torch 1.13 as sd.pt and as a checkpoint, once.
const fs::path& made113() {
  static dcp_test::TempDir dir;
  static const bool made = [] {
    oracle(dcp_test::python(), "make " + quote(dir.path()));
    return true;
  }();
  (void)made;
  return dir.path();
}

}  // namespace

BOOST_AUTO_TEST_SUITE(nested113)

BOOST_AUTO_TEST_CASE(torch_save_file_to_torch_1_13_checkpoint_as_1_13_saves_it) {
  const auto& d = made113();
  dcp_test::TempDir out;
  const auto& o = out.path();
  dcpp_ok("convert --quiet --format torch1.13 " + quote(d / "sd.pt") + " " + quote(o / "ck1"), o);
  dcpp_ok("convert --quiet --format torch1.13 --ranks 3 " + quote(d / "sd.pt") + " " + quote(o / "ck3"), o);
  const auto md = dcp::checkpoint::inspect(o / "ck1");
  BOOST_TEST((md->flavor == dcp::metadata::Flavor::torch_1_13));
  BOOST_TEST_REQUIRE(md->find_item("obj.dict"));
  BOOST_TEST(!md->find_item("obj.dict")->is_tensor());  // one object, its tensors inside
  BOOST_TEST(!md->find_item("model.fc.weight"));
  BOOST_TEST(md->find_item("weight")->is_tensor());
  // torch 1.13's own checkpoint first: the oracle agrees with itself.
  oracle(dcp_test::python(), "check " + quote(d) + " " + quote(d / "ckpt113") + " " + quote(o / "ck1") + " " + quote(o / "ck3"));
}

BOOST_AUTO_TEST_CASE(torch_1_13_checkpoint_read_verified_converted_and_rewritten) {
  const auto& d = made113();
  dcp_test::TempDir out;
  const auto& o = out.path();
  const auto ckpt = d / "ckpt113";
  auto r = dcp_test::run_dcpp("verify " + quote(ckpt), o);
  BOOST_TEST(r.status == 0, r.err);
  BOOST_TEST(contains(r.out, "2 tensors"), r.out);
  BOOST_TEST(contains(r.out, "and 16 objects"), r.out);
  r = dcp_test::run_dcpp("load --json " + quote(ckpt), o);
  BOOST_TEST(r.status == 0, r.err);
  BOOST_TEST(contains(r.out, "\"objects\":16"), r.out);

  dcpp_ok("reshard --quiet --format torch1.13 " + quote(ckpt) + " " + quote(o / "again"), o);
  dcpp_ok("reshard --quiet --format torch1.13 " + quote(o / "again") + " " + quote(o / "twice"), o);
  oracle(dcp_test::python(), "check " + quote(d) + " " + quote(o / "again") + " " + quote(o / "twice"));

  dcpp_ok("convert --quiet " + quote(ckpt) + " " + quote(o / "x.pt"), o);
  // torch 2.x's layout keeps such an object as one object, its tensors inside.
  dcpp_ok("reshard --quiet --format torch2 " + quote(ckpt) + " " + quote(o / "two"), o);
  dcpp_ok("convert --quiet " + quote(o / "two") + " " + quote(o / "y.pt"), o);
  oracle(dcp_test::python(), "same " + quote(d) + " " + quote(o / "x.pt"));
  oracle(dcp_test::python(), "same " + quote(d) + " " + quote(o / "y.pt"));

  // The library: each object's value with the storages of its tensors.
  const auto md = dcp::checkpoint::inspect(ckpt);
  const auto objects = dcp::checkpoint::load_object_values(ckpt, md, {});
  BOOST_TEST(objects.size() == 16u);
  for (const auto& object : objects) {
    if (object.fqn == "views") BOOST_TEST(object.value.storages.size() == 1u);  // three views of one storage
    if (object.fqn == "optim") BOOST_TEST(object.value.storages.size() == 4u);
    if (object.fqn == "step") BOOST_TEST(object.value.storages.empty());
  }
}

BOOST_AUTO_TEST_CASE(torch_2x_nested_checkpoint_regrouped_under_top_level_keys, *boost::unit_test::precondition(needs_python2x)) {
  dcp_test::TempDir dir;
  const auto& d = dir.path();
  oracle(dcp_test::python2x(), "make2x " + quote(d));
  dcpp_ok("reshard --quiet --format torch1.13 " + quote(d / "ckpt2x") + " " + quote(d / "r"), d);
  oracle(dcp_test::python(), "check2x " + quote(d) + " " + quote(d / "r"));
}

BOOST_AUTO_TEST_CASE(damaged_storage_inside_an_object_is_found) {
  const auto& d = made113();
  dcp_test::TempDir out;
  const auto& o = out.path();
  const auto ckpt = o / "ckpt";
  dcp_test::copy_checkpoint(d / "ckpt113", ckpt);
  // Flip one byte of the storage of obj.dict's tensor 'a' (ones), inside its BYTE_IO item.
  const auto md = dcp::checkpoint::inspect(ckpt);
  const auto* info = md->find_storage("obj.dict", nullptr);
  BOOST_TEST_REQUIRE(info);
  auto bytes = dcp_test::read_bytes(ckpt / info->relative_path);
  const std::span<const std::byte> item(bytes.data() + info->offset, info->length);
  const auto archive = dcp::zip::parse_archive(item);
  const auto data = dcp::zip::record_data(archive, item, "data/0");
  const auto at = static_cast<std::size_t>(data.data() - bytes.data()) + 1;
  bytes[at] ^= std::byte{0x10};
  dcp_test::write_bytes(ckpt / info->relative_path, bytes);

  for (const std::string command : {"verify ", "load --quiet ", "convert --quiet ", "reshard --quiet --format torch1.13 "}) {
    const bool to_file = command.starts_with("convert"), one_arg = command.starts_with("verify") || command.starts_with("load");
    const auto r = dcp_test::run_dcpp(command + quote(ckpt) + (one_arg ? "" : " " + quote(o / (to_file ? "x.pt" : "re"))), o);
    BOOST_TEST(r.status == 1, command << r.err);
    BOOST_TEST(contains(r.err, "key 'obj.dict'"), r.err);
    BOOST_TEST(contains(r.err, "crc32"), r.err);
    BOOST_TEST(contains(r.err, (ckpt / info->relative_path).string()), r.err);
  }
  BOOST_TEST(!fs::exists(o / "x.pt"));
  BOOST_TEST(!fs::exists(o / "re"));
}

BOOST_AUTO_TEST_CASE(refusals_name_the_key) {
  dcp_test::TempDir dir;
  const auto& d = dir.path();
  // {3: 'x'}: torch 1.13 would keep the int key, which dcpp's checkpoints cannot hold.
  dcp::pickle::Encoder e(2);
  e.empty_dict();
  e.integer(3);
  e.string("x");
  e.setitem();
  std::vector<std::byte> out;
  dcp::zip::ArchiveWriter w([&](std::span<const std::byte> b) { out.insert(out.end(), b.begin(), b.end()); }, "archive");
  w.add_record("data.pkl", e.finish());
  w.add_record("version", std::as_bytes(std::span("3\n", 2)));
  w.finish();
  dcp_test::write_bytes(d / "int_key.pt", out);
  const auto r = dcp_test::run_dcpp("convert --format torch1.13 " + quote(d / "int_key.pt") + " " + quote(d / "ck"), d);
  BOOST_TEST(r.status == 1, r.err);
  BOOST_TEST(contains(r.err, "int_key.pt: byte "), r.err);
  BOOST_TEST(contains(r.err, "top-level key int 3"), r.err);
  BOOST_TEST(!fs::exists(d / "ck"));

  // An object value whose tensors view a storage it does not carry, or carries short.
  dcp::record::StateDictPickler pickler;
  pickler.begin_dict();
  pickler.dict_items(1, [&](std::size_t) {
    pickler.key("t");
    pickler.tensor(dcp::DType::float32, {4}, "0");
  });
  const auto data_pkl = pickler.finish();
  dcp::pickle::Limits limits;
  limits.allow_persistent_ids = true;
  auto doc = std::make_shared<const dcp::pickle::Document>(dcp::pickle::decode(data_pkl, dcp::record::object_allow_list(), limits));
  std::vector<std::byte> storage(12);
  for (const auto& storages : {std::unordered_map<std::string, std::span<const std::byte>>{},
                               std::unordered_map<std::string, std::span<const std::byte>>{{"0", storage}}}) {
    dcp::planning::StateDict sd;
    sd.add_object({"o"}, dcp::planning::ObjectValue{doc, doc->root(), storages});
    dcp::storage::WriteOptions options;
    options.format = dcp::metadata::Flavor::torch_1_13;
    dcp::storage::FileSystemWriter writer(d / "lib", options);
    dcp::planning::DefaultSavePlanner planner;
    const auto err = dcp_test::thrown<dcp::Error>([&] { (void)dcp::checkpoint::save(sd, writer, planner); });
    BOOST_TEST((err.code() == dcp::Errc::invalid_argument), err.what());
    BOOST_TEST(err.context().key == "o");
    BOOST_TEST(contains(err.what(), storages.empty() ? "does not carry" : "holds 12 bytes"), err.what());
    BOOST_TEST(!fs::exists(d / "lib"));
  }
}

// async_save stages the storages of an object's tensors too: the caller may change them as
// soon as the call returns, and torch 1.13 loads the values of the call.
BOOST_AUTO_TEST_CASE(async_save_keeps_the_tensors_inside_objects) {
  dcp_test::TempDir dir;
  dcp::record::StateDictPickler pickler;
  pickler.begin_dict();
  pickler.dict_items(1, [&](std::size_t) {
    pickler.key("t");
    pickler.tensor(dcp::DType::float32, {4}, "0");
  });
  const auto data_pkl = pickler.finish();
  dcp::pickle::Limits limits;
  limits.allow_persistent_ids = true;
  auto doc = std::make_shared<const dcp::pickle::Document>(dcp::pickle::decode(data_pkl, dcp::record::object_allow_list(), limits));
  std::vector<float> values = {1.5f, -2.0f, 3.25f, 1e-3f};
  dcp::planning::StateDict sd;
  sd.add_object({"model"}, dcp::planning::ObjectValue{doc, doc->root(), {{"0", std::as_bytes(std::span(values))}}});
  dcp::storage::WriteOptions options;
  options.format = dcp::metadata::Flavor::torch_1_13;
  auto writer = std::make_shared<dcp::storage::FileSystemWriter>(dir.path() / "ck", options);
  dcp::checkpoint::Checkpointer checkpointer(writer, nullptr);
  auto saved = checkpointer.async_save(sd);
  values.assign(values.size(), 0.0f);
  (void)saved.get();
  int status = 0;
  const auto out = dcp_test::run_capture(
      quote(dcp_test::python()) + " -c " +
          quote("import sys; sys.path.insert(0, '" + (dcp_test::source_root() / "tests/python").string() +
                "'); from dcp113 import dcp, torch; sd = {'model': None}; "
                "dcp.load_state_dict(sd, dcp.FileSystemReader(sys.argv[1]), no_dist=True); "
                "t = sd['model']['t']; assert list(sd['model']) == ['t'] and t.dtype == torch.float32, sd; "
                "assert t.tolist() == [1.5, -2.0, 3.25, torch.tensor(1e-3).item()], t; print('loaded', t.tolist())") +
          " " + quote(dir.path() / "ck") + " 2>&1",
      &status);
  BOOST_TEST(status == 0, out);
  BOOST_TEST(contains(out, "loaded [1.5, -2.0, 3.25"), out);
}

BOOST_AUTO_TEST_SUITE_END()
