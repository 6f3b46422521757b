// What dcpp prints for keys and paths that a terminal would act on (ESC sequences, newlines,
// tabs, DEL, C1 controls, bytes that are not UTF-8), written by real torch 2.13
// (control_keys.py): tables, summary lines and error lines stay one line each of text a
// terminal shows as it is, spelled as README documents (tests/python/terminal_text.py, which
// Python's strict UTF-8 decoder drives); --json keeps the keys exactly; conversions keep
// them both ways. And errors as documented: usage errors (empty paths) exit 2 before any I/O,
// running out of memory is resource_exhausted, a value of an import that cannot be saved is
// named at its input file, key and byte.
#include <boost/test/unit_test.hpp>
#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "support.hpp"

namespace fs = std::filesystem;
namespace json = boost::json;
using dcp_test::needs_python2x;
using dcp_test::quote;

namespace {

bool contains(std::string_view text, std::string_view part) { return text.find(part) != std::string_view::npos; }

std::size_t count(std::string_view text, std::string_view part) {
  std::size_t n = 0;
  for (auto at = text.find(part); at != std::string_view::npos; at = text.find(part, at + 1)) ++n;
  return n;
}

// control_keys.py MODE ARGS with `interpreter`; the test fails unless it says OK.
void oracle(const std::string& interpreter, const std::string& args) {
  int status = 0;
  const auto out = dcp_test::run_capture(
      quote(interpreter) + " " + quote(dcp_test::source_root() / "tests/cli/control_keys.py") + " " + args + " 2>&1", &status);
  BOOST_TEST_MESSAGE(out);
  BOOST_TEST(status == 0, args << " -> " << out);
}

// `text` is UTF-8 without C0 (but the newline ending each line), DEL or C1 characters, in
// `lines` lines when given (the torch-less interpreter suffices).
void check_text(const std::string& text, const fs::path& scratch, std::optional<std::size_t> lines = std::nullopt) {
  const auto file = scratch / "printed.txt";
  dcp_test::write_bytes(file, std::vector<std::byte>(reinterpret_cast<const std::byte*>(text.data()),
                                                      reinterpret_cast<const std::byte*>(text.data() + text.size())));
  oracle(dcp_test::python(), "text " + quote(file) + (lines ? " " + std::to_string(*lines) : ""));
}

// The keys torch 2.13 wrote (control_keys.py make), once per test binary.
struct ControlCase {
  fs::path dir;
  std::vector<std::string> shown;  // each key of the checkpoint as README spells it, tensors first
  std::size_t tensors = 0;
  std::string deep_key;            // deep.pt's object key, spelled
  std::uint64_t pkl_begin = 0, pkl_end = 0;  // where deep.pt's data.pkl lies
};

const ControlCase& control_case() {
  static std::unique_ptr<dcp_test::TempDir> tmp;
  static std::optional<ControlCase> made;
  if (!made) {
    tmp = std::make_unique<dcp_test::TempDir>();
    oracle(dcp_test::python2x(), "make " + quote(tmp->path()));
    const auto doc = dcp_test::read_json(tmp->path() / "shown.json").as_object();
    ControlCase c;
    c.dir = tmp->path();
    for (const auto& k : doc.at("keys").as_array()) c.shown.emplace_back(k.as_string());
    c.tensors = doc.at("tensors").to_number<std::size_t>();
    c.deep_key = doc.at("deep_key").as_string();
    c.pkl_begin = doc.at("deep_pkl").as_array().at(0).to_number<std::uint64_t>();
    c.pkl_end = doc.at("deep_pkl").as_array().at(1).to_number<std::uint64_t>();
    made = std::move(c);
  }
  return *made;
}

dcp_test::CliResult dcpp(const std::string& args, const fs::path& scratch) { return dcp_test::run_dcpp(args, scratch); }

// dcpp ARGS with at most `kib` KiB of address space (ulimit -v), stopped after 60 s (a hang
// is status 124), stderr captured.
dcp_test::CliResult dcpp_limited(std::uint64_t kib, const std::string& args, const fs::path& scratch) {
  dcp_test::CliResult r;
  const auto err = scratch / "limited.err";
  const auto command = "ulimit -v " + std::to_string(kib) + "; exec timeout 60 " + quote(dcp_test::dcpp_exe()) + " " + args;
  r.out = dcp_test::run_capture("bash -c " + quote(command) + " 2>" + quote(err), &r.status);
  const auto bytes = dcp_test::read_bytes(err);
  r.err.assign(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  return r;
}

// One error line: "dcpp: error: ... [code]".
void check_error_line(const dcp_test::CliResult& r, std::string_view code) {
  BOOST_TEST(r.status == 1, r.err);
  BOOST_TEST(r.err.starts_with("dcpp: error: "), r.err);
  BOOST_TEST(r.err.find('\n') == r.err.size() - 1, "not one line: " << r.err);
  BOOST_TEST(r.err.ends_with(" [" + std::string(code) + "]\n"), r.err);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(output)

// The table: every key on a row of its own, spelled as documented, the columns aligned.
BOOST_AUTO_TEST_CASE(inspect_table_escapes_keys, *boost::unit_test::precondition(needs_python2x)) {
  const auto& c = control_case();
  dcp_test::TempDir tmp;
  const auto r = dcpp("inspect " + quote(c.dir / "ckpt"), tmp.path());
  BOOST_TEST_REQUIRE(r.status == 0, r.err);
  check_text(r.out, tmp.path(), c.shown.size() + 3);  // header, a row per key, a blank line, the summary
  for (const auto& key : c.shown) BOOST_TEST(count(r.out, "\n" + key + "  ") == 1u, key << " in\n" << r.out);
  const auto table = tmp.path() / "table.txt";
  dcp_test::write_bytes(table, std::vector<std::byte>(reinterpret_cast<const std::byte*>(r.out.data()),
                                                       reinterpret_cast<const std::byte*>(r.out.data() + r.out.size())));
  oracle(dcp_test::python(), "table " + quote(table));
}

// --json: Python's json reads exactly the keys torch reads from .metadata, and the document
// itself holds no control character.
BOOST_AUTO_TEST_CASE(inspect_json_keeps_keys_exactly, *boost::unit_test::precondition(needs_python2x)) {
  const auto& c = control_case();
  dcp_test::TempDir tmp;
  const auto r = dcpp("inspect --json " + quote(c.dir / "ckpt"), tmp.path());
  BOOST_TEST_REQUIRE(r.status == 0, r.err);
  check_text(r.out, tmp.path());
  const auto doc = tmp.path() / "inspect.json";
  dcp_test::write_bytes(doc, std::vector<std::byte>(reinterpret_cast<const std::byte*>(r.out.data()),
                                                     reinterpret_cast<const std::byte*>(r.out.data() + r.out.size())));
  oracle(dcp_test::python2x(), "json-keys " + quote(doc) + " " + quote(c.dir / "ckpt"));
}

// Every tensor's record damaged: verify --all prints one line per tensor, each naming its key
// as spelled.
BOOST_AUTO_TEST_CASE(error_lines_are_one_escaped_line_each, *boost::unit_test::precondition(needs_python2x)) {
  const auto& c = control_case();
  dcp_test::TempDir tmp;
  const auto ckpt = tmp.path() / "ckpt";
  dcp_test::copy_checkpoint(c.dir / "ckpt", ckpt);
  oracle(dcp_test::python2x(), "damage " + quote(ckpt));
  const auto all = dcpp("verify --all " + quote(ckpt), tmp.path());
  BOOST_TEST(all.status == 1, all.err);
  check_text(all.err, tmp.path(), c.tensors);
  for (std::size_t i = 0; i < c.tensors; ++i)
    BOOST_TEST(count(all.err, "key '" + c.shown[i] + "': ") == 1u, c.shown[i] << " in\n" << all.err);
  BOOST_TEST(count(all.err, "dcpp: error: " + ckpt.string() + "/") == c.tensors, all.err);
  BOOST_TEST(count(all.err, " [data_loss]\n") == c.tensors, all.err);
}

// A path holding ESC sequences and a newline, in an error line and in convert's summary line.
BOOST_AUTO_TEST_CASE(paths_are_escaped) {
  dcp_test::TempDir tmp;
  const auto dir = tmp.path() / "ck\x1b[31m\nred\x7f";
  fs::create_directory(dir);
  const auto missing = dcpp("inspect " + quote(dir), tmp.path());
  check_error_line(missing, "not_found");
  check_text(missing.err, tmp.path(), 1);
  BOOST_TEST(contains(missing.err, "/ck\\x1b[31m\\nred\\x7f/.metadata: "), missing.err);

  const auto out = tmp.path() / "out\x1b]0;title\x07.safetensors";
  const auto tiny = dcp_test::source_root() / "examples/tiny/ckpt";
  const auto converted = dcpp("convert " + quote(tiny) + " " + quote(out), tmp.path());
  BOOST_TEST_REQUIRE(converted.status == 0, converted.err);
  check_text(converted.out, tmp.path(), 1);
  BOOST_TEST(contains(converted.out, "out\\x1b]0;title\\x07.safetensors (safetensors)"), converted.out);

  const auto usage = dcpp("inspect " + quote("--bad\x1b[2J"), tmp.path());
  BOOST_TEST(usage.status == 2, usage.err);
  check_text(usage.err, tmp.path(), 1);
}

// Conversions keep the keys, both ways, as torch and the safetensors library read them.
BOOST_AUTO_TEST_CASE(convert_keeps_keys_both_ways, *boost::unit_test::precondition(needs_python2x)) {
  const auto& c = control_case();
  dcp_test::TempDir tmp;
  const auto check_import = [&](const std::string& args) {
    int status = 0;
    const auto out = dcp_test::run_capture(quote(dcp_test::python2x()) + " " +
                                               quote(dcp_test::source_root() / "tests/convert/check_import.py") + " " + args +
                                               " 2>&1",
                                           &status);
    BOOST_TEST(status == 0, args << " -> " << out);
  };
  const auto pt = tmp.path() / "out.pt";
  const auto to_pt = dcpp("convert " + quote(c.dir / "ckpt") + " " + quote(pt), tmp.path());
  BOOST_TEST_REQUIRE(to_pt.status == 0, to_pt.err);
  check_text(to_pt.out, tmp.path(), 1);
  check_import("same " + quote(c.dir / "keys.pt") + " " + quote(pt));

  // safetensors headers are UTF-8 JSON: a key with a lone surrogate is refused (the library
  // would refuse the file), the others convert.
  const auto st = tmp.path() / "out.safetensors";
  const auto refused = dcpp("convert " + quote(c.dir / "ckpt") + " " + quote(st), tmp.path());
  check_error_line(refused, "unimplemented");
  check_text(refused.err, tmp.path(), 1);
  const auto low = std::find_if(c.shown.begin(), c.shown.end(), [](const auto& k) { return k.starts_with("low"); });
  BOOST_TEST_REQUIRE((low != c.shown.end()));
  BOOST_TEST(contains(refused.err, "key '" + *low + "': "), refused.err);
  BOOST_TEST(!fs::exists(st));
  const auto to_st = dcpp("convert --keys '^(?!low|high)' " + quote(c.dir / "ckpt") + " " + quote(st), tmp.path());
  BOOST_TEST_REQUIRE(to_st.status == 0, to_st.err);
  oracle(dcp_test::python2x(), "safetensors " + quote(c.dir / "keys.pt") + " " + quote(st));

  for (const char* input : {"keys.pt", "keys.safetensors"}) {
    BOOST_TEST_CONTEXT(input) {
      const auto ckpt = tmp.path() / (std::string(input) + ".ckpt");
      const auto r = dcpp("convert " + quote(c.dir / input) + " " + quote(ckpt), tmp.path());
      BOOST_TEST_REQUIRE(r.status == 0, r.err);
      check_text(r.out, tmp.path(), 1);
      check_import("load " + quote(c.dir / input) + " " + quote(ckpt));
    }
  }
}

// An object of the input that torch.save wrote but dcpp's encoder cannot (nested deeper than
// it goes), found while the checkpoint is written: the error names the input file, the key
// and a byte inside the input's data.pkl, not the output; nothing is left behind.
BOOST_AUTO_TEST_CASE(write_time_error_of_an_import_names_the_input, *boost::unit_test::precondition(needs_python2x)) {
  const auto& c = control_case();
  dcp_test::TempDir tmp;
  const auto in = c.dir / "deep.pt";
  const auto out = tmp.path() / "out";
  const auto r = dcpp("convert --quiet " + quote(in) + " " + quote(out), tmp.path());
  check_error_line(r, "out_of_range");
  check_text(r.err, tmp.path(), 1);
  const std::string prefix = "dcpp: error: " + in.string() + ": key '" + c.deep_key + "': byte ";
  BOOST_TEST_REQUIRE(r.err.starts_with(prefix), r.err << " does not start with " << prefix);
  const auto byte = std::stoull(r.err.substr(prefix.size()));
  BOOST_TEST(byte >= c.pkl_begin);
  BOOST_TEST(byte < c.pkl_end);
  BOOST_TEST(!fs::exists(out));
  for (const auto& entry : fs::directory_iterator(tmp.path())) BOOST_TEST(!contains(entry.path().filename().string(), "out"));
}

// Empty paths and malformed flags are usage errors (exit 2) found before any I/O: a missing
// input would otherwise be exit 1.
BOOST_AUTO_TEST_CASE(empty_paths_are_usage_errors) {
  dcp_test::TempDir tmp;
  const auto missing = quote(tmp.path() / "missing.pt");
  const auto tiny = quote(dcp_test::source_root() / "examples/tiny/ckpt");
  for (const std::string& args : std::vector<std::string>{"convert " + missing + " ''", "convert '' " + quote(tmp.path() / "o.pt"),
                                 "convert " + tiny + " ''", "inspect ''", "verify ''", "load ''", "reshard " + tiny + " ''",
                                 "reshard '' " + quote(tmp.path() / "o"), "load --layout '' " + tiny}) {
    BOOST_TEST_CONTEXT(args) {
      const auto r = dcpp(args, tmp.path());
      BOOST_TEST(r.status == 2, r.err);
      BOOST_TEST(r.err.starts_with("dcpp: error: "), r.err);
      BOOST_TEST(r.err.find('\n') == r.err.size() - 1, r.err);
    }
  }
  std::size_t left = 0;
  for ([[maybe_unused]] const auto& entry : fs::directory_iterator(tmp.path())) ++left;
  BOOST_TEST(left == 0u, "usage errors wrote files");
}

// A .metadata larger than the address space dcpp may use (a sparse file: no disk): out of
// memory is resource_exhausted, naming the file, in one line, exit 1.
BOOST_AUTO_TEST_CASE(out_of_memory_is_resource_exhausted) {
  dcp_test::TempDir tmp;
  const auto dir = tmp.path() / "huge";
  fs::create_directory(dir);
  {
    dcp_test::write_bytes(dir / ".metadata", {});
    fs::resize_file(dir / ".metadata", std::uint64_t{4} << 30);
  }
  const auto r = dcpp_limited(1u << 20, "inspect " + quote(dir), tmp.path());
  check_error_line(r, "resource_exhausted");
  BOOST_TEST(r.err.starts_with("dcpp: error: " + (dir / ".metadata").string() + ": "), r.err);
}

// Under address-space limits too small for dcpp's threads (their stacks, malloc's per-thread
// arenas), verify finishes: its reads run on the threads that started (on the main one when
// none did), and what no memory was left for is resource_exhausted. Never a hang, an abort, or
// an internal error.
BOOST_AUTO_TEST_CASE(tight_address_space_ends_in_a_result) {
  dcp_test::TempDir tmp;
  const auto tiny = quote(dcp_test::source_root() / "examples/tiny/ckpt");
  for (int mib = 16; mib <= 64; mib += 4) {
    BOOST_TEST_CONTEXT(mib << " MiB") {
      const auto r = dcpp_limited(static_cast<std::uint64_t>(mib) * 1024, "verify " + tiny, tmp.path());
      BOOST_TEST_MESSAGE(mib << " MiB: exit " << r.status << " " << r.out << r.err);
      if (r.status == 127 && contains(r.err, "error while loading shared libraries")) continue;  // too tight to start
      if (r.status == 0) BOOST_TEST(r.out.starts_with("ok: "), r.out);
      else check_error_line(r, "resource_exhausted");
    }
  }
}

BOOST_AUTO_TEST_SUITE_END()
