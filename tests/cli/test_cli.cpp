// The dcpp command line: inspect --json against PyTorch's own reading of .metadata (1.13 and
// 2.13), exit codes, one-line errors, load/verify on real checkpoints and damaged ones, and
// dcpp itself never loading libtorch (only dcpp-torch, for load --device cuda, does).
#define BOOST_TEST_MODULE dcp.cli
#include <boost/test/unit_test.hpp>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "support.hpp"

namespace json = boost::json;
using dcp_test::checkpoint_case;

namespace {

bool have_torch() {
  const char* flag = std::getenv("DCPP_HAVE_TORCH");
  BOOST_TEST_REQUIRE(flag != nullptr, "DCPP_HAVE_TORCH is not set");
  return std::string(flag) == "1";
}

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
// What the dynamic loader said (LD_DEBUG=libs) while running `dcpp ARGS`, in every process.
std::string libraries_loaded(const std::string& args) {
  dcp_test::TempDir tmp;
  const auto log = tmp.path() / "ld.log";
  (void)dcp_test::run_capture("LD_DEBUG=libs LD_DEBUG_OUTPUT=" + dcp_test::quote(log) + " " + dcpp() + " " + args +
                              " >/dev/null 2>&1");
  std::string text;
  for (const auto& entry : std::filesystem::directory_iterator(tmp.path())) {  // ld.log.<pid>, one per process
    const auto bytes = dcp_test::read_bytes(entry.path());
    text.append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  }
  BOOST_TEST_REQUIRE(text.find("calling init") != std::string::npos, "no LD_DEBUG output for dcpp " << args);
  return text;
}

bool mentions_libtorch(const std::string& text) {
  return text.find("libtorch") != std::string::npos || text.find("libc10") != std::string::npos;
}

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

// The table names each tensor's layout (docs/format.md, "Layouts") in its LAYOUT column.
BOOST_AUTO_TEST_CASE(inspect_table_shows_layouts, *boost::unit_test::precondition(dcp_test::needs_python2x)) {
  const auto r = run_dcpp("inspect " + dcp_test::quote(checkpoint_case("x2_2d_4ranks") / "ckpt"));
  BOOST_TEST_REQUIRE(r.status == 0, r.err);
  BOOST_TEST(r.out.find("CHUNKS  LAYOUT") != std::string::npos, r.out);
  for (const auto& [key, layout] : std::vector<std::pair<std::string, std::string>>{
           {"tp.s0s1 ", " grid(2x2) "}, {"tp.s1s0 ", " grid(2x2) "}, {"tp.s0s0 ", " rows(2x2 nested) "},
           {"tp.rs1 ", " cols(2) "}, {"tp.s0r ", " rows(2) "}, {"plain ", " whole "}, {"meta.mesh ", " - "}}) {
    const auto at = r.out.find("\n" + key);
    BOOST_TEST_REQUIRE(at != std::string::npos, key << "\n" << r.out);
    const auto line = r.out.substr(at + 1, r.out.find('\n', at + 1) - at - 1);
    BOOST_TEST(line.find(layout) != std::string::npos, line);
  }
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

// Every case, x2_dtypes_v3 too: dcpp loads into host buffers and needs no tensor type for
// uint16/32/64 or float8 (which Debian's libtorch 1.13 lacks).
BOOST_AUTO_TEST_CASE(load_and_verify_torch213_checkpoints, *boost::unit_test::precondition(dcp_test::needs_python2x)) {
  for (const auto& name : dcp_test::torch2x_cases())
    BOOST_TEST_CONTEXT(name) { check_load_and_verify(checkpoint_case(name)); }
}

// dcpp starts without libtorch: no NEEDED entry names it, and the loader opens none of its
// libraries for help, inspect, verify, convert or a CPU load.
BOOST_AUTO_TEST_CASE(dcpp_does_not_load_libtorch) {
  int status = 0;
  const auto dynamic = dcp_test::run_capture("readelf -d " + dcp_test::quote(dcpp()), &status);
  BOOST_TEST_REQUIRE(status == 0, "readelf -d failed");
  BOOST_TEST_REQUIRE(dynamic.find("(NEEDED)") != std::string::npos, dynamic);
  BOOST_TEST(!mentions_libtorch(dynamic), dynamic);
  dcp_test::TempDir out;
  const auto tiny = dcp_test::quote(dcp_test::source_root() / "examples/tiny/ckpt");
  for (const std::string& args : std::vector<std::string>{"--help", "inspect " + tiny, "inspect --json " + tiny, "verify " + tiny,
                                 "load --json " + tiny, "load --device cpu " + tiny,
                                 "convert " + tiny + " " + dcp_test::quote(out.path() / "m.safetensors")}) {
    const auto libs = libraries_loaded(args);
    BOOST_TEST(!mentions_libtorch(libs), "dcpp " << args << " loaded libtorch");
  }
}

// A load that needs tensors on a GPU runs dcpp-torch (which loads libtorch); a build without
// libtorch refuses it as bad usage, in one line.
BOOST_AUTO_TEST_CASE(load_to_a_gpu_needs_libtorch) {
  const auto tiny = dcp_test::quote(dcp_test::source_root() / "examples/tiny/ckpt");
  const auto bad = run_dcpp("load --device gpu " + tiny);
  BOOST_TEST(bad.status == 2, bad.err);
  const auto r = run_dcpp("load --json --device cuda:0 " + tiny);
  if (!have_torch()) {
    BOOST_TEST(r.status == 2, r.err);
    BOOST_TEST(r.err.find("built without it (-Dtorch=disabled)") != std::string::npos, r.err);
    BOOST_TEST(r.err.find('\n') == r.err.size() - 1, "one line: " << r.err);
    return;
  }
  BOOST_TEST(mentions_libtorch(libraries_loaded("load --device cuda:0 " + tiny)), "dcpp-torch did not run");
  if (r.status == 0) {  // a CUDA libtorch and a GPU
    BOOST_TEST(json::parse(r.out).at("device") == "cuda:0", r.out);
  } else {
    BOOST_TEST(r.status == 1, r.err);
    BOOST_TEST(r.err.find("this libtorch has no CUDA") != std::string::npos, r.err);
    BOOST_TEST(r.err.find('\n') == r.err.size() - 1, "one line: " << r.err);
  }
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
