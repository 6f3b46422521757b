// dcpp on hostile input: every class of input that once cost minutes, gigabytes or an abort
// ends in exit status 1 and one short stderr line naming the file (and the key and byte offset
// where there is one). Peak memory is a budget, so it is asserted; time is only printed (the
// suite's timeout bounds it). The inputs come from tests/pickle/make_hostile.
#include <boost/test/unit_test.hpp>
#include <string>

#include "measured.hpp"
#include "support.hpp"

namespace {

using dcp_cli_test::env;
using dcp_cli_test::expect_one_line_error;
using dcp_cli_test::run_measured;

void make_hostile(const std::string& args) {
  BOOST_TEST_REQUIRE(dcp_test::run(env("DCPP_MAKE_HOSTILE") + " " + args) == 0, "make_hostile " << args);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(hostile)

BOOST_AUTO_TEST_CASE(floods_of_cheap_opcodes_stay_in_budget) {
  dcp_test::TempDir tmp;
  const auto none = tmp.path() / "none", lists = tmp.path() / "lists";
  make_hostile("none 8388608 " + dcp_test::quote(none));
  make_hostile("empty_list 8388608 " + dcp_test::quote(lists));
  expect_one_line_error(run_measured("inspect " + dcp_test::quote(none)), (none / ".metadata").string(), "",
                        "expected a Metadata");
  expect_one_line_error(run_measured("inspect " + dcp_test::quote(lists)), (lists / ".metadata").string(), "",
                        "bytes of memory for a pickle of");
}

BOOST_AUTO_TEST_CASE(one_chunk_shared_by_the_memo_many_times) {
  dcp_test::TempDir tmp;
  const auto wide = tmp.path() / "wide", deep = tmp.path() / "deep", stored = tmp.path() / "stored";
  make_hostile("shared_chunk 150000 1000 " + dcp_test::quote(wide));        // a torch.Size of 1000 dims
  make_hostile("shared_chunk 150000 64 " + dcp_test::quote(deep));          // the most dims allowed
  make_hostile("shared_chunk 150000 8 " + dcp_test::quote(stored) + " 300000");  // storage entries too
  expect_one_line_error(run_measured("inspect " + dcp_test::quote(wide)), (wide / ".metadata").string(), "w",
                        "torch.Size of 1000 dims");
  expect_one_line_error(run_measured("inspect " + dcp_test::quote(deep)), (deep / ".metadata").string(), "w", "budget");
  expect_one_line_error(run_measured("inspect " + dcp_test::quote(stored)), (stored / ".metadata").string(), "w",
                        "storage_data entry");
}

BOOST_AUTO_TEST_CASE(objects_that_share_or_contain_themselves) {
  dcp_test::TempDir tmp;
  const auto dag = tmp.path() / "dag", cycle = tmp.path() / "cycle";
  make_hostile("dag 40 " + dcp_test::quote(dag));
  make_hostile("tuple_cycle " + dcp_test::quote(cycle));
  // torch.save keeps the sharing (memo), so the output stays as small as the input.
  const auto pt = tmp.path() / "dag.pt";
  const auto ok = run_measured("convert " + dcp_test::quote(dag) + " " + dcp_test::quote(pt));
  BOOST_TEST(ok.status == 0, ok.err);
  BOOST_TEST(std::filesystem::file_size(pt) < 64u * 1024u);
  // JSON cannot share: a budget proportional to the object stops it, and a cycle has no JSON.
  const auto data = [](const std::filesystem::path& dir) { return (dir / "__0_0.distcp").string(); };
  expect_one_line_error(run_measured("convert " + dcp_test::quote(dag) + " " + dcp_test::quote(tmp.path() / "d.safetensors")),
                        data(dag), "obj", "JSON passes");
  expect_one_line_error(run_measured("convert " + dcp_test::quote(cycle) + " " + dcp_test::quote(tmp.path() / "c.safetensors")),
                        data(cycle), "obj", "contains itself");
  BOOST_TEST(!std::filesystem::exists(tmp.path() / "d.safetensors"));
}

BOOST_AUTO_TEST_CASE(object_declared_60_gib_long_is_refused_not_allocated) {
  dcp_test::TempDir tmp;
  const auto dir = tmp.path() / "huge";
  make_hostile("huge_object 60 " + dcp_test::quote(dir));
  for (const std::string command : {"load", "verify", "convert"}) {
    BOOST_TEST_CONTEXT(command) {
      const std::string out = command == "convert" ? " " + dcp_test::quote(tmp.path() / "out.pt") : "";
      expect_one_line_error(run_measured(command + " " + dcp_test::quote(dir) + out), (dir / "__0_0.distcp").string(),
                            "obj", "exceeds the limit");
    }
  }
}

BOOST_AUTO_TEST_CASE(more_files_than_descriptors_load) {
  // torch 1.13 writes a file per item: 30-odd files, under a limit of 16 descriptors.
  const auto ckpt = dcp_test::checkpoint_case("flat_dtypes") / "ckpt";
  for (const std::string command : {"load", "verify"}) {
    const auto m = run_measured(command + " " + dcp_test::quote(ckpt), "ulimit -n 16; ");
    BOOST_TEST(m.status == 0, command << ": " << m.err);
  }
}

BOOST_AUTO_TEST_SUITE_END()
