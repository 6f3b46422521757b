// Tests for dcp.checkpoint's converters (convert_to_torch_save, convert_to_safetensors) and
// `dcpp convert`, on checkpoints written by torch 1.13 and torch 2.13: outputs are read by
// torch 2.13's torch.load and the safetensors library (check_convert.py), and by torch 1.13's
// DCP load for 1.13 checkpoints (load_check.py).
#define BOOST_TEST_MODULE dcp.convert
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unistd.h>
#include <vector>

#include "support.hpp"
import dcp.error;
import dcp.metadata;
import dcp.checkpoint;

namespace fs = std::filesystem;
using dcp::checkpoint::ConvertReport;
using dcp::checkpoint::LoadOptions;

namespace {

const std::vector<std::string> kCases = {"flat_dtypes", "optimizer", "sharded_4ranks", "single_file"};
using dcp_test::needs_python2x;

fs::path script(std::string_view relative) { return dcp_test::source_root() / relative; }

// Runs a checker script with `interpreter`; the test fails with its output line otherwise.
void check_with(const std::string& interpreter, const std::string& args) {
  int status = 0;
  const std::string out = dcp_test::run_capture(dcp_test::quote(interpreter) + " " + args + " 2>&1", &status);
  BOOST_TEST_MESSAGE(out);
  BOOST_TEST(status == 0, args << " -> " << out);
}
// Scripts that need torch 1.13 (load_check.py).
void check113(const std::string& args) { check_with(dcp_test::python(), args); }

// check_convert.py jobs collected during a test and run in one interpreter start (torch's
// import costs seconds): pt and safetensors with torch 2.13 and the safetensors library,
// same-as-torch-save with the torch whose torch.save is the reference. Outputs live in
// directories the batch keeps until it has run.
class ConvertChecks {
 public:
  explicit ConvertChecks(std::string interpreter) : interpreter_(std::move(interpreter)) {}
  ~ConvertChecks() { BOOST_TEST(jobs_.empty(), "ConvertChecks::run() was not called"); }

  fs::path out_dir() { return dirs_.emplace_back(std::make_unique<dcp_test::TempDir>())->path(); }

  void add(std::string label, const std::string& mode, const fs::path& a, const fs::path& b = {},
           const std::string& keys = {}, bool whole_file = false) {
    boost::json::array argv{mode, a.string()};
    if (!b.empty()) argv.emplace_back(b.string());
    if (!keys.empty()) argv.insert(argv.end(), {"--keys", keys});
    if (whole_file) argv.emplace_back("--whole-file");
    jobs_.push_back(std::move(argv));
    labels_.push_back(std::move(label));
  }

  void run() {
    dcp_test::TempDir tmp;
    const auto file = tmp.path() / "jobs.json";
    const auto text = boost::json::serialize(jobs_);
    dcp_test::write_bytes(file, std::vector<std::byte>(reinterpret_cast<const std::byte*>(text.data()),
                                                        reinterpret_cast<const std::byte*>(text.data() + text.size())));
    int status = 0;
    const auto out = dcp_test::run_capture(dcp_test::quote(interpreter_) + " " +
                                               dcp_test::quote(script("tests/convert/check_convert.py")) + " batch " +
                                               dcp_test::quote(file) + " 2>&1",
                                           &status);
    std::vector<std::string> lines;
    std::istringstream in(out);
    for (std::string line; std::getline(in, line);)
      if (line.rfind("check_convert: ", 0) == 0) lines.push_back(line);
    BOOST_TEST_REQUIRE(lines.size() == labels_.size(), "check_convert.py batch printed:\n" << out);
    for (std::size_t i = 0; i < lines.size(); ++i) {
      BOOST_TEST_MESSAGE(labels_[i] << ": " << lines[i]);
      BOOST_TEST(lines[i].find(": OK: ") != std::string::npos, labels_[i] << ": " << lines[i]);
    }
    BOOST_TEST((status == 0) == (out.find(": FAIL: ") == std::string::npos), out);
    jobs_.clear();
    labels_.clear();
  }

 private:
  std::string interpreter_;
  std::vector<std::unique_ptr<dcp_test::TempDir>> dirs_;
  boost::json::array jobs_;
  std::vector<std::string> labels_;
};

// The keys of a case whose tensors the output format can store: torch.save all but quantized
// dtypes, safetensors those it has a code for (no complex, no float8 but e4m3fn and e5m2).
// The converters need no libtorch, so dtypes Debian's libtorch 1.13 lacks (uint16/32/64,
// float8) convert too.
LoadOptions convertible(const fs::path& case_dir, bool safetensors) {
  const auto m = dcp::checkpoint::inspect(case_dir / "ckpt");
  std::vector<std::string> skip;
  for (const auto& item : m->items) {
    if (!item.is_tensor()) continue;
    const auto& info = dcp::dtype_info(item.tensor().properties.dtype);
    if (safetensors ? info.safetensors.empty() : info.rebuild == dcp::TensorRebuild::none) skip.push_back(item.fqn);
  }
  LoadOptions options;
  options.select = [skip](std::string_view fqn) { return std::find(skip.begin(), skip.end(), fqn) == skip.end(); };
  return options;
}

// The same selection as a Python regex for check_convert.py.
std::string python_keys(const fs::path& case_dir, const LoadOptions& options) {
  const auto m = dcp::checkpoint::inspect(case_dir / "ckpt");
  std::string alternatives;
  for (const auto& item : m->items) {
    if (options.select(item.fqn)) continue;
    std::string escaped;
    for (char c : item.fqn) {
      if (std::string_view(".^$*+?()[]{}|\\").find(c) != std::string_view::npos) escaped += '\\';
      escaped += c;
    }
    alternatives += (alternatives.empty() ? "" : "|") + escaped;
  }
  return alternatives.empty() ? "" : "^(?!(" + alternatives + ")$)";
}

std::string load_check(const fs::path& ckpt, const fs::path& pt) {
  return dcp_test::quote(script("tests/python/load_check.py")) + " " + dcp_test::quote(ckpt) + " " +
         dcp_test::quote(pt);
}

LoadOptions keys_with_prefix(std::vector<std::string> prefixes, bool keep) {
  LoadOptions options;
  options.select = [prefixes = std::move(prefixes), keep](std::string_view fqn) {
    for (const auto& p : prefixes)
      if (fqn.starts_with(p)) return keep;
    return !keep;
  };
  return options;
}

std::size_t entries(const fs::path& dir) {
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir)) ++n;
  return n;
}

dcp::Error expect_error(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const dcp::Error& e) {
    return e;
  }
  BOOST_FAIL("expected a dcp::Error");
  throw std::logic_error("unreachable");
}

bool contains(std::string_view text, std::string_view part) { return text.find(part) != std::string_view::npos; }

using dcp_test::dcpp_exe;
using Cli = dcp_test::CliResult;
Cli dcpp(const std::string& args, const fs::path& scratch) { return dcp_test::run_dcpp(args, scratch); }

}  // namespace

BOOST_AUTO_TEST_SUITE(interop)

BOOST_AUTO_TEST_CASE(torch_save_of_torch_1_13_checkpoints_matches_dcp_load, *boost::unit_test::precondition(needs_python2x)) {
  ConvertChecks checks(dcp_test::python2x());
  for (const auto& name : kCases) {
    BOOST_TEST_CONTEXT("case " << name) {
      const auto& c = dcp_test::checkpoint_case(name);
      const auto out = checks.out_dir();
      const auto pt = out / "model.pt";
      const ConvertReport report = dcp::checkpoint::convert_to_torch_save(c / "ckpt", pt);
      const auto expected = dcp_test::read_json(c / "expected.json");
      BOOST_TEST(report.tensors == expected.at("tensors").as_object().size());
      BOOST_TEST(report.objects == expected.at("objects").as_object().size());
      BOOST_TEST(entries(out) == 1u);         // no temp file left
      check113(load_check(c / "ckpt", pt));   // torch 1.13's own DCP load gives the same values
      checks.add(name, "pt", c, pt);          // torch 2.13's torch.load reads it
    }
  }
  checks.run();
}

BOOST_AUTO_TEST_CASE(torch_save_of_torch_2_13_checkpoints_is_nested_along_planner_data,
                     *boost::unit_test::precondition(needs_python2x)) {
  ConvertChecks checks(dcp_test::python2x());
  for (const auto& name : dcp_test::torch2x_cases()) {
    BOOST_TEST_CONTEXT("case " << name) {
      const auto& c = dcp_test::checkpoint_case(name);
      const auto options = convertible(c, false);
      const auto pt = checks.out_dir() / "model.pth";
      const auto report = dcp::checkpoint::convert_to_torch_save(c / "ckpt", pt, options);
      BOOST_TEST(report.tensors > 0u);
      checks.add(name, "pt", c, pt, python_keys(c, options));
    }
  }
  checks.run();
}

BOOST_AUTO_TEST_CASE(data_pkl_is_what_torch_save_writes) {
  // torch.save(torch.load(ours)) must reproduce our data.pkl byte for byte (objects are
  // left out: they are re-encoded without pickle's memo). With at most 10 tensors in
  // metadata order, torch's record order is ours too, so the whole file is identical.
  struct Run {
    fs::path ckpt;
    LoadOptions options;
    bool whole_file;
  };
  const auto tensors_only = keys_with_prefix({"obj."}, false);
  std::vector<Run> runs = {
      {dcp_test::checkpoint_case("flat_dtypes") / "ckpt", tensors_only, false},
      {dcp_test::checkpoint_case("sharded_4ranks") / "ckpt", keys_with_prefix({"meta."}, false), true},
  };
  if (dcp_test::python2x_available()) {
    runs.push_back({dcp_test::checkpoint_case("x2_fsdp_4ranks") / "ckpt", keys_with_prefix({"model."}, true), true});
    runs.push_back({dcp_test::checkpoint_case("x2_fsdp_4ranks") / "ckpt", keys_with_prefix({"model.", "dt."}, true), false});
  }
  ConvertChecks checks(dcp_test::python());  // torch 1.13's torch.save is the reference
  for (const auto& run : runs) {
    BOOST_TEST_CONTEXT(run.ckpt) {
      const auto pt = checks.out_dir() / "t.pt";
      const auto report = dcp::checkpoint::convert_to_torch_save(run.ckpt, pt, run.options);
      BOOST_TEST(report.objects == 0u);
      BOOST_TEST(report.tensors > 0u);
      checks.add(run.ckpt.parent_path().filename().string(), "same-as-torch-save", pt, {}, {}, run.whole_file);
    }
  }
  checks.run();
}

BOOST_AUTO_TEST_CASE(torch_save_keeps_only_selected_keys) {
  const auto& c = dcp_test::checkpoint_case("optimizer");
  ConvertChecks checks(dcp_test::python());  // check_convert.py's pt mode runs on torch 1.13 too
  const auto pt = checks.out_dir() / "model.pt";
  const auto report = dcp::checkpoint::convert_to_torch_save(c / "ckpt", pt, keys_with_prefix({"model."}, true));
  BOOST_TEST(report.tensors == 4u);  // fc1/fc2 weight and bias
  BOOST_TEST(report.objects == 0u);
  checks.add("optimizer", "pt", c, pt, "^model\\.");
  checks.run();
}

BOOST_AUTO_TEST_CASE(safetensors_holds_every_tensor_and_objects_as_json, *boost::unit_test::precondition(needs_python2x)) {
  std::vector<fs::path> dirs;
  for (const auto& name : kCases) dirs.push_back(dcp_test::checkpoint_case(name));
  for (const auto& name : dcp_test::torch2x_cases()) dirs.push_back(dcp_test::checkpoint_case(name));
  ConvertChecks checks(dcp_test::python2x());
  for (const auto& dir : dirs) {
    BOOST_TEST_CONTEXT(dir.filename()) {
      const auto options = convertible(dir, true);
      const auto out = checks.out_dir();
      const auto st = out / "model.safetensors";
      const auto report = dcp::checkpoint::convert_to_safetensors(dir / "ckpt", st, options);
      BOOST_TEST(report.tensors > 0u);
      BOOST_TEST(entries(out) == 1u);
      checks.add(dir.filename().string(), "safetensors", dir, st, python_keys(dir, options));
    }
  }
  checks.run();
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(unit)

BOOST_AUTO_TEST_CASE(safetensors_rejects_complex_naming_the_key) {
  const auto& c = dcp_test::checkpoint_case("flat_dtypes");
  dcp_test::TempDir out;
  const auto e = expect_error([&] { dcp::checkpoint::convert_to_safetensors(c / "ckpt", out.path() / "m.safetensors"); });
  BOOST_TEST(dcp::errc_name(e.code()) == "unimplemented");
  BOOST_TEST(e.context().key == "c.complex128");  // safetensors has C64, no complex128
  BOOST_TEST(entries(out.path()) == 0u);
}

BOOST_AUTO_TEST_CASE(missing_data_file_names_it_and_writes_nothing) {
  dcp_test::TempDir dir;
  dcp_test::copy_checkpoint(dcp_test::checkpoint_case("flat_dtypes") / "ckpt", dir.path() / "ckpt");
  fs::remove(dir.path() / "ckpt" / "__0_7.distcp");
  fs::create_directory(dir.path() / "out");
  for (const char* name : {"m.pt", "m.safetensors"}) {
    const auto out = dir.path() / "out" / name;
    LoadOptions options = keys_with_prefix({"c."}, false);
    const auto e = expect_error([&] {
      if (out.extension() == ".pt") dcp::checkpoint::convert_to_torch_save(dir.path() / "ckpt", out, options);
      else dcp::checkpoint::convert_to_safetensors(dir.path() / "ckpt", out, options);
    });
    BOOST_TEST(contains(e.what(), "__0_7.distcp"), e.what());
    BOOST_TEST(entries(dir.path() / "out") == 0u);
  }
}

BOOST_AUTO_TEST_CASE(truncated_data_file_names_it_and_writes_nothing) {
  dcp_test::TempDir dir;
  dcp_test::copy_checkpoint(dcp_test::checkpoint_case("single_file") / "ckpt", dir.path() / "ckpt");
  const auto file = dir.path() / "ckpt" / "__0_0.distcp";
  fs::resize_file(file, fs::file_size(file) - 100);
  fs::create_directory(dir.path() / "out");
  const auto e = expect_error([&] { dcp::checkpoint::convert_to_torch_save(dir.path() / "ckpt", dir.path() / "out" / "m.pt"); });
  BOOST_TEST(e.context().file == file.string(), e.what());
  BOOST_TEST(entries(dir.path() / "out") == 0u);
}

BOOST_AUTO_TEST_CASE(corrupt_item_found_while_streaming_removes_the_temp_file) {
  // The last tensor item's end-of-central-directory signature is damaged: the converters
  // have created their temp file and written part of the output when its read fails.
  const auto& c = dcp_test::checkpoint_case("flat_dtypes");
  const auto expected = dcp_test::read_json(c / "expected.json");
  std::string last_file;
  std::uint64_t end = 0;
  for (const auto& [key, entry] : expected.at("tensors").as_object()) {
    const auto& chunk = entry.at("chunks").as_array().at(0).as_object();
    last_file = chunk.at("file").as_string().c_str();
    end = chunk.at("byte_offset").to_number<std::uint64_t>() + chunk.at("byte_length").to_number<std::uint64_t>();
  }
  dcp_test::TempDir dir;
  dcp_test::copy_checkpoint(c / "ckpt", dir.path() / "ckpt");
  const auto file = dir.path() / "ckpt" / last_file;
  auto bytes = dcp_test::read_bytes(file);
  bytes.at(end - 22) ^= std::byte{0xFF};
  dcp_test::write_bytes(file, bytes);
  fs::create_directory(dir.path() / "out");
  for (const char* name : {"m.pt", "m.safetensors"}) {
    const auto out = dir.path() / "out" / name;
    dcp_test::write_bytes(out, {std::byte{'x'}});  // an older output stays as it was
    const auto e = expect_error([&] {
      if (out.extension() == ".pt") dcp::checkpoint::convert_to_torch_save(dir.path() / "ckpt", out, {}, {}, true);
      else dcp::checkpoint::convert_to_safetensors(dir.path() / "ckpt", out, keys_with_prefix({"c."}, false), {}, true);
    });
    BOOST_TEST(dcp::errc_name(e.code()) == "data_loss", e.what());
    BOOST_TEST(contains(e.context().file, last_file), e.what());
    BOOST_TEST(fs::file_size(out) == 1u);
  }
  BOOST_TEST(entries(dir.path() / "out") == 2u);  // no temp file
}

BOOST_AUTO_TEST_CASE(unwritable_output_is_an_io_error) {
  const auto& c = dcp_test::checkpoint_case("single_file");
  dcp_test::TempDir dir;
  const auto e = expect_error([&] { dcp::checkpoint::convert_to_torch_save(c / "ckpt", dir.path() / "no" / "m.pt"); });
  BOOST_TEST(dcp::errc_name(e.code()) == "io");
  BOOST_TEST(contains(e.context().file, "m.pt"), e.what());
  BOOST_TEST(entries(dir.path()) == 0u);
}

// An existing output is replaced only when asked (overwrite), and then only on success.
BOOST_AUTO_TEST_CASE(existing_output_is_replaced_only_with_overwrite) {
  const auto& c = dcp_test::checkpoint_case("single_file");
  dcp_test::TempDir dir;
  const auto out = dir.path() / "m.pt";
  dcp_test::write_bytes(out, {std::byte{'x'}});
  const auto e = expect_error([&] { dcp::checkpoint::convert_to_torch_save(c / "ckpt", out); });
  BOOST_TEST(dcp::errc_name(e.code()) == "failed_precondition", e.what());
  BOOST_TEST(fs::file_size(out) == 1u);
  dcp::checkpoint::convert_to_torch_save(c / "ckpt", out, {}, {}, true);
  BOOST_TEST(fs::file_size(out) > 1u);
  BOOST_TEST(entries(dir.path()) == 1u);
}

// torch 1.13 saves a dict of tensors under one key as one object: torch.save output holds it
// with its tensors (torch 1.13 reads it back); safetensors has no form for it.
BOOST_AUTO_TEST_CASE(objects_holding_tensors_convert_to_torch_save_but_not_safetensors) {
  dcp_test::TempDir dir;
  const auto ckpt = dir.path() / "ckpt";
  const std::string code =
      "import sys; sys.path.insert(0, sys.argv[1]); import dcp113; from dcp113 import dcp, torch; "
      "dcp.save_state_dict({'w': torch.ones(2), 'opt': {'t': torch.arange(3.0)}}, "
      "dcp.FileSystemWriter(sys.argv[2]), no_dist=True)";
  BOOST_REQUIRE(dcp_test::run(dcp_test::python() + " -c " + dcp_test::quote(code) + " " +
                              dcp_test::quote(script("tests/python")) + " " + dcp_test::quote(ckpt)) == 0);
  fs::create_directory(dir.path() / "out");
  const auto report = dcp::checkpoint::convert_to_torch_save(ckpt, dir.path() / "out" / "m.pt");
  BOOST_TEST(report.tensors == 1u);
  BOOST_TEST(report.objects == 1u);
  const std::string check =
      "import sys, torch; sd = torch.load(sys.argv[1]); "
      "assert list(sd) == ['w', 'opt'] and list(sd['opt']) == ['t'], sd; "
      "assert torch.equal(sd['w'], torch.ones(2)) and torch.equal(sd['opt']['t'], torch.arange(3.0)), sd";
  BOOST_TEST(dcp_test::run(dcp_test::python() + " -c " + dcp_test::quote(check) + " " +
                           dcp_test::quote(dir.path() / "out" / "m.pt")) == 0);
  const auto e = expect_error([&] { dcp::checkpoint::convert_to_safetensors(ckpt, dir.path() / "out" / "m.safetensors"); });
  BOOST_TEST(dcp::errc_name(e.code()) == "unimplemented", e.what());
  BOOST_TEST(e.context().key == "opt");
  BOOST_TEST(entries(dir.path() / "out") == 1u);
  // Without the object safetensors works.
  const auto w_only = keys_with_prefix({"w"}, true);
  BOOST_TEST(dcp::checkpoint::convert_to_safetensors(ckpt, dir.path() / "out" / "m.safetensors", w_only).tensors == 1u);
}

BOOST_AUTO_TEST_CASE(progress_reports_every_tensor) {
  const auto& c = dcp_test::checkpoint_case("single_file");
  dcp_test::TempDir dir;
  std::uint64_t calls = 0, bytes = 0;
  const auto report = dcp::checkpoint::convert_to_safetensors(c / "ckpt", dir.path() / "m.safetensors", {},
                                                              [&](std::uint64_t n) {
                                                                ++calls;
                                                                bytes += n;
                                                              });
  BOOST_TEST(calls == report.tensors);
  BOOST_TEST(bytes == report.bytes);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(cli)

BOOST_AUTO_TEST_CASE(convert_writes_pt_and_safetensors, *boost::unit_test::precondition(needs_python2x)) {
  if (!fs::exists(dcpp_exe())) {
    BOOST_TEST_MESSAGE("no dcpp binary at " << dcpp_exe() << "; skipped");
    return;
  }
  const auto& c = dcp_test::checkpoint_case("single_file");
  ConvertChecks checks(dcp_test::python2x());
  const auto dir = checks.out_dir();
  const auto ckpt = dcp_test::quote(c / "ckpt");
  auto r = dcpp("convert " + ckpt + " " + dcp_test::quote(dir / "m.pt"), dir);
  BOOST_TEST(r.status == 0, r.err);
  BOOST_TEST(r.out.starts_with("converted 6 tensors (232 bytes) and 3 objects to "), r.out);
  BOOST_TEST(r.err.empty(), r.err);
  checks.add("m.pt", "pt", c, dir / "m.pt");

  r = dcpp("convert --quiet --threads 2 --keys '^(w|i)\\.' " + ckpt + " " + dcp_test::quote(dir / "m.safetensors"), dir);
  BOOST_TEST(r.status == 0, r.err);
  BOOST_TEST(r.out.empty(), r.out);
  checks.add("m.safetensors", "safetensors", c, dir / "m.safetensors", "^(w|i)\\.");
  checks.run();
}

BOOST_AUTO_TEST_CASE(convert_usage_errors_exit_2_before_any_io) {
  if (!fs::exists(dcpp_exe())) return;
  dcp_test::TempDir dir;
  const auto missing = dcp_test::quote(dir.path() / "missing");
  for (const std::string& args :
       {"convert " + missing + " " + dcp_test::quote(dir.path() / "m.bin"),
        "convert " + missing + " " + dcp_test::quote(dir.path() / "m"),
        "convert " + missing,
        "convert --threads 0 " + missing + " " + dcp_test::quote(dir.path() / "m.pt"),
        "convert --keys '(' " + missing + " " + dcp_test::quote(dir.path() / "m.pt"),
        "convert --json " + missing + " " + dcp_test::quote(dir.path() / "m.pt")}) {
    const auto r = dcpp(args, dir.path());
    BOOST_TEST(r.status == 2, args);
    BOOST_TEST(r.out.empty());
    BOOST_TEST(r.err.starts_with("dcpp: error: "), r.err);
    BOOST_TEST(r.err.find('\n') == r.err.size() - 1, r.err);
  }
  BOOST_TEST(entries(dir.path()) == 0u);
}

BOOST_AUTO_TEST_CASE(convert_of_a_bad_checkpoint_exits_1) {
  if (!fs::exists(dcpp_exe())) return;
  dcp_test::TempDir dir;
  dcp_test::copy_checkpoint(dcp_test::checkpoint_case("single_file") / "ckpt", dir.path() / "ckpt");
  fs::resize_file(dir.path() / "ckpt" / "__0_0.distcp", 1000);
  fs::create_directory(dir.path() / "out");
  const auto r = dcpp("convert " + dcp_test::quote(dir.path() / "ckpt") + " " +
                          dcp_test::quote(dir.path() / "out" / "m.safetensors"),
                      dir.path());
  BOOST_TEST(r.status == 1);
  BOOST_TEST(r.out.empty());
  BOOST_TEST(r.err.starts_with("dcpp: error: "), r.err);
  BOOST_TEST(contains(r.err, "__0_0.distcp"), r.err);
  BOOST_TEST(entries(dir.path() / "out") == 0u);
}

BOOST_AUTO_TEST_CASE(help_lists_convert) {
  if (!fs::exists(dcpp_exe())) return;
  dcp_test::TempDir dir;
  auto r = dcpp("--help", dir.path());
  BOOST_TEST(r.status == 0);
  BOOST_TEST(contains(r.out, "convert"), r.out);
  r = dcpp("convert --help", dir.path());
  BOOST_TEST(r.status == 0);
  BOOST_TEST(contains(r.out, "--keys REGEX"), r.out);
  BOOST_TEST(contains(r.out, "--threads N"), r.out);
  BOOST_TEST(contains(r.out, "--quiet"), r.out);
}

BOOST_AUTO_TEST_SUITE_END()
