// dcpp convert on hostile BYTE_IO objects: a DAG of shared lists and cycles keep
// their sharing in torch.save output (checked with real torch.load), the safetensors side
// stops at its JSON budget naming file, key and offset, and a record that claims more bytes
// than the archive holds is refused before anything is allocated for it.
#include <boost/test/unit_test.hpp>
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "hostile.hpp"
#include "support.hpp"
import dcp.error;
import dcp.pickle;
import dcp.record;
import dcp.zip;
import dcp.checkpoint;

namespace fs = std::filesystem;
namespace pk = dcp::pickle;

namespace {

template <class Fn>
dcp::Error error_of(Fn&& fn) {
  try {
    fn();
  } catch (const dcp::Error& e) {
    return e;
  }
  BOOST_FAIL("no dcp::Error was thrown");
  throw;
}

// torch.load(pt)['obj'] checked by `check` (Python code over `o`, which must print "ok").
void check_with_torch(const fs::path& pt, const std::string& check) {
  dcp_test::TempDir tmp;
  const auto script = tmp.path() / "check.py";
  std::ofstream(script) << "import sys, torch\no = torch.load(sys.argv[1])['obj']\n" << check << "\nprint('ok')\n";
  int status = 0;
  const auto out = dcp_test::run_capture(dcp_test::python() + " " + dcp_test::quote(script) + " " +
                                             dcp_test::quote(pt) + " 2>&1",
                                         &status);
  BOOST_TEST((status == 0 && out.find("ok") != std::string::npos), pt << ": " << out);
}

// A checkpoint directory holding one BYTE_IO item 'obj' with `data_pkl`.
fs::path object_checkpoint(const dcp_test::TempDir& tmp, const std::vector<std::byte>& data_pkl) {
  const auto dir = tmp.path() / "ckpt";
  dcp_hostile::write_object_checkpoint(dir, "obj", dcp_hostile::torch_save_archive(data_pkl));
  return dir;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(hostile_objects)

BOOST_AUTO_TEST_CASE(json_of_a_dag_stops_at_its_budget) {
  const auto archive = dcp_hostile::torch_save_archive(dcp_hostile::dag_list_pickle(40));
  const auto doc = dcp::record::parse_object(archive);
  const auto e = error_of([&] { (void)dcp::record::object_to_json(doc, doc.root()); });
  BOOST_TEST((e.code() == dcp::Errc::resource_exhausted), e.what());
  // An archive offset inside data.pkl (which starts after the 64-byte aligned local header).
  BOOST_TEST(e.context().byte_offset.value_or(0) >= 64u, e.what());
  BOOST_TEST(e.context().byte_offset.value_or(0) < 64u + doc.source_size(), e.what());
  // A DAG that expands to 2^10 leaves is rendered.
  const auto small = dcp::record::parse_object(dcp_hostile::torch_save_archive(dcp_hostile::dag_list_pickle(10)));
  BOOST_TEST(dcp::record::object_to_json(small, small.root()).size() > 1000u);
}

BOOST_AUTO_TEST_CASE(json_of_a_cycle_is_refused) {
  const auto doc = dcp::record::parse_object(dcp_hostile::torch_save_archive(dcp_hostile::dag_list_pickle(2, true)));
  const auto e = error_of([&] { (void)dcp::record::object_to_json(doc, doc.root()); });
  BOOST_TEST((e.code() == dcp::Errc::unimplemented), e.what());
  BOOST_TEST(e.message().find("contains itself") != std::string::npos, e.what());
  BOOST_TEST(e.context().byte_offset.value_or(0) == *doc.at(doc.root()).offset(), e.what());
}

BOOST_AUTO_TEST_CASE(state_dict_pickler_keeps_object_sharing) {
  const auto doc = dcp::record::parse_object(dcp_hostile::torch_save_archive(dcp_hostile::dag_list_pickle(40)));
  dcp::record::StateDictPickler pickler;
  pickler.begin_dict();
  pickler.dict_items(1, [&](std::size_t) {
    pickler.key("obj");
    pickler.object(doc);
  });
  const auto data_pkl = pickler.finish();
  BOOST_TEST(data_pkl.size() < 2 * doc.source_size());
  const auto back = pk::decode(data_pkl, dcp::record::object_allow_list());
  pk::NodeId level = *back.find_key(back.root(), "obj");
  for (int i = 0; i < 40; ++i) {
    const auto items = back.at(level).items();
    BOOST_TEST_REQUIRE(items.size() == 2u);
    BOOST_TEST_REQUIRE(items[0] == items[1]);
    level = items[0];
  }
}

BOOST_AUTO_TEST_CASE(a_record_larger_than_its_archive_is_refused_before_allocation) {
  // data.pkl's central directory sizes say 2 GiB in a 500-byte archive.
  auto archive = dcp_hostile::torch_save_archive(dcp_hostile::dag_list_pickle(3));
  const std::byte central[] = {std::byte{'P'}, std::byte{'K'}, std::byte{1}, std::byte{2}};
  const auto at = std::search(archive.begin(), archive.end(), std::begin(central), std::end(central));
  BOOST_TEST_REQUIRE((at != archive.end()));
  for (int field : {20, 24})  // compressed and uncompressed size
    for (int i = 0; i < 4; ++i) *(at + field + i) = std::byte{static_cast<unsigned char>(i == 3 ? 0x7f : 0xff)};
  const auto e = error_of([&] { (void)dcp::record::parse_object(archive); });
  BOOST_TEST((e.code() == dcp::Errc::data_loss || e.code() == dcp::Errc::out_of_range), e.what());
}

BOOST_AUTO_TEST_CASE(torch_save_output_of_a_dag_is_a_dag) {
  dcp_test::TempDir tmp;
  const auto dir = object_checkpoint(tmp, dcp_hostile::dag_list_pickle(40));
  const auto pt = tmp.path() / "dag.pt";
  const auto report = dcp::checkpoint::convert_to_torch_save(dir, pt);
  BOOST_TEST(report.objects == 1u);
  BOOST_TEST(fs::file_size(pt) < 4096u);  // 2^40 leaves as a tree
  check_with_torch(pt,
                   "for level in range(40):\n"
                   "    assert len(o) == 2 and o[0] is o[1], level\n"
                   "    o = o[0]\n"
                   "assert o == []");
}

BOOST_AUTO_TEST_CASE(torch_save_output_of_cycles_loads_as_the_same_cycles) {
  dcp_test::TempDir tmp;
  const auto list_pt = tmp.path() / "list.pt";
  (void)dcp::checkpoint::convert_to_torch_save(object_checkpoint(tmp, dcp_hostile::dag_list_pickle(3, true)), list_pt);
  check_with_torch(list_pt, "assert len(o) == 3 and o[2] is o and o[0] is o[1]");

  dcp_test::TempDir tmp2;
  const auto tuple_pt = tmp2.path() / "tuple.pt";
  (void)dcp::checkpoint::convert_to_torch_save(object_checkpoint(tmp2, dcp_hostile::tuple_cycle_pickle()), tuple_pt);
  check_with_torch(tuple_pt, "assert type(o) is tuple and type(o[0]) is list and o[0][0] is o");
}

BOOST_AUTO_TEST_CASE(safetensors_output_of_a_dag_stops_naming_file_key_and_offset) {
  dcp_test::TempDir tmp;
  const auto dir = object_checkpoint(tmp, dcp_hostile::dag_list_pickle(40));
  const auto out = tmp.path() / "dag.safetensors";
  const auto e = error_of([&] { (void)dcp::checkpoint::convert_to_safetensors(dir, out); });
  BOOST_TEST((e.code() == dcp::Errc::resource_exhausted), e.what());
  BOOST_TEST(e.context().key == "obj");
  BOOST_TEST(e.context().file.ends_with("__0_0.distcp"), e.what());
  BOOST_TEST(e.context().byte_offset.value_or(0) >= 64u, e.what());  // inside data.pkl, in the data file
  BOOST_TEST(e.context().byte_offset.value_or(0) < fs::file_size(dir / "__0_0.distcp"), e.what());
  BOOST_TEST(!fs::exists(out));
  for (const auto& entry : fs::directory_iterator(tmp.path()))  // no temp file left behind
    BOOST_TEST(entry.path().filename().string().find(".tmp-") == std::string::npos, entry.path());

  const auto cyclic = object_checkpoint(tmp, dcp_hostile::dag_list_pickle(2, true));
  const auto e2 = error_of([&] { (void)dcp::checkpoint::convert_to_safetensors(cyclic, out); });
  BOOST_TEST((e2.code() == dcp::Errc::unimplemented), e2.what());
  BOOST_TEST(e2.context().key == "obj");
}

BOOST_AUTO_TEST_SUITE_END()
