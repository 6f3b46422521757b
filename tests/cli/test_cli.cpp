// The dcpp command line: inspect --json against PyTorch's own reading of .metadata (1.13 and
// 2.13), exit codes, one-line errors, load/verify on real checkpoints and damaged ones.
#define BOOST_TEST_MODULE dcp.cli
#include <boost/test/unit_test.hpp>
#include <cstdlib>
#include <string>

#include "support.hpp"

namespace json = boost::json;
using dcp_test::checkpoint_case;

namespace {

std::string dcpp() {
  const char* exe = std::getenv("DCPP_EXE");
  BOOST_TEST_REQUIRE(exe != nullptr, "DCPP_EXE is not set");
  return exe;
}

struct Outcome {
  int status;
  std::string out;
  std::string err;
};

Outcome run_dcpp(const std::string& args) {
  dcp_test::TempDir tmp;
  int status = 0;
  const auto err_file = tmp.path() / "stderr";
  auto out = dcp_test::run_capture(dcpp() + " " + args + " 2>" + dcp_test::quote(err_file), &status);
  const auto err = dcp_test::read_bytes(err_file);
  return {status, out, std::string(reinterpret_cast<const char*>(err.data()), err.size())};
}

// dcpp inspect --json must say exactly what PyTorch's own unpickling of .metadata says: the
// whole document, computed independently by tests/python/metadata_json.py with the torch that
// wrote the case (stored beside it as metadata.json).
void check_inspect_json(const std::filesystem::path& dir) {
  const auto r = run_dcpp("inspect --json " + dcp_test::quote(dir / "ckpt"));
  BOOST_TEST_REQUIRE(r.status == 0, r.err);
  const auto ours = json::parse(r.out);
  const auto torch = dcp_test::case_metadata_json(dir);
  BOOST_TEST((ours == torch), dir << ":\n dcpp:  " << ours << "\n torch: " << torch);
  // And the values PyTorch recorded while writing the case agree with it.
  const auto expected = dcp_test::read_json(dir / "expected.json").as_object();
  BOOST_TEST(ours.at("format") == expected.at("format"));
  BOOST_TEST(ours.at("version") == expected.at("metadata_version"));
  const auto& items = ours.at("items").as_array();
  BOOST_TEST(items.size() == expected.at("tensors").as_object().size() + expected.at("objects").as_object().size());
}

void check_load_and_verify(const std::filesystem::path& dir) {
  const auto ckpt = dcp_test::quote(dir / "ckpt");
  const auto load = run_dcpp("load --json " + ckpt);
  BOOST_TEST_REQUIRE(load.status == 0, load.err);
  const auto doc = json::parse(load.out).as_object();
  const auto expected = dcp_test::read_json(dir / "expected.json").as_object();
  std::int64_t bytes = 0;
  for (const auto& [k, v] : expected.at("tensors").as_object()) bytes += v.as_object().at("nbytes").as_int64();
  BOOST_TEST(doc.at("bytes").to_number<std::int64_t>() == bytes);
  BOOST_TEST(doc.at("tensors").to_number<std::size_t>() == expected.at("tensors").as_object().size());
  BOOST_TEST(doc.at("objects").to_number<std::size_t>() == expected.at("objects").as_object().size());
  const auto verify = run_dcpp("verify " + ckpt);
  BOOST_TEST(verify.status == 0, verify.err);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(cli)

BOOST_AUTO_TEST_CASE(inspect_json_matches_pytorch_113) {
  for (const char* name : {"flat_dtypes", "single_file", "sharded_4ranks", "optimizer"})
    BOOST_TEST_CONTEXT(name) { check_inspect_json(checkpoint_case(name)); }
}

BOOST_AUTO_TEST_CASE(inspect_json_matches_pytorch_213, *boost::unit_test::precondition(dcp_test::needs_python2x)) {
  for (const auto& name : dcp_test::torch2x_cases())
    BOOST_TEST_CONTEXT(name) { check_inspect_json(checkpoint_case(name)); }
}

BOOST_AUTO_TEST_CASE(exit_codes_and_messages) {
  const auto ok = run_dcpp("inspect " + dcp_test::quote(dcp_test::source_root() / "examples/tiny/ckpt"));
  BOOST_TEST(ok.status == 0);
  BOOST_TEST(ok.out.find("torch-1.13 checkpoint") != std::string::npos, ok.out);

  const auto usage = run_dcpp("inspect --bogus x");
  BOOST_TEST(usage.status == 2);
  BOOST_TEST(usage.err.rfind("dcpp: error: ", 0) == 0, usage.err);
  BOOST_TEST(run_dcpp("").status == 2);
  BOOST_TEST(run_dcpp("frobnicate x").status == 2);
  BOOST_TEST(run_dcpp("load --threads 0 x").status == 2);
  BOOST_TEST(run_dcpp("--help").status == 0);
  BOOST_TEST(run_dcpp("load --help").out.find("--threads") != std::string::npos);
  BOOST_TEST(run_dcpp("--version").out.find("dcpp") != std::string::npos);

  dcp_test::TempDir tmp;
  const auto bad = run_dcpp("inspect " + dcp_test::quote(tmp.path()));
  BOOST_TEST(bad.status == 1);
  BOOST_TEST(bad.err.find(".metadata") != std::string::npos, bad.err);
  BOOST_TEST(bad.err.find('\n') == bad.err.size() - 1, "one line: " << bad.err);
}

BOOST_AUTO_TEST_CASE(load_and_verify_real_checkpoints) {
  for (const char* name : {"flat_dtypes", "sharded_4ranks"})
    BOOST_TEST_CONTEXT(name) { check_load_and_verify(checkpoint_case(name)); }
}

// x2_dtypes_v3 is left out: Debian's libtorch 1.13 has no uint16/uint32/uint64 or float8 tensors.
BOOST_AUTO_TEST_CASE(load_and_verify_torch213_checkpoints, *boost::unit_test::precondition(dcp_test::needs_python2x)) {
  for (const auto& name : dcp_test::torch2x_cases())
    if (name != "x2_dtypes_v3") BOOST_TEST_CONTEXT(name) { check_load_and_verify(checkpoint_case(name)); }
}

BOOST_AUTO_TEST_CASE(verify_reports_damage) {
  dcp_test::TempDir tmp;
  dcp_test::copy_checkpoint(checkpoint_case("flat_dtypes") / "ckpt", tmp.path());
  // Flip a byte in the middle of every data file: CRCs (or headers) must catch each one.
  int files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(tmp.path())) {
    if (entry.path().extension() != ".distcp") continue;
    auto bytes = dcp_test::read_bytes(entry.path());
    if (bytes.size() < 2000) continue;
    bytes[bytes.size() / 2] ^= std::byte{0x10};
    dcp_test::write_bytes(entry.path(), bytes);
    ++files;
  }
  BOOST_TEST_REQUIRE(files > 0);
  const auto first = run_dcpp("verify " + dcp_test::quote(tmp.path()));
  BOOST_TEST(first.status == 1);
  BOOST_TEST(first.err.find(".distcp") != std::string::npos, first.err);
  const auto all = run_dcpp("verify --all " + dcp_test::quote(tmp.path()));
  BOOST_TEST(all.status == 1);
  std::size_t lines = 0;
  for (char c : all.err) lines += c == '\n';
  BOOST_TEST(lines >= 2u, all.err);
}

BOOST_AUTO_TEST_SUITE_END()
