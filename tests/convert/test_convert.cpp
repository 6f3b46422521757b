// Tests for dcp.checkpoint's converters (convert_to_torch_save, convert_to_safetensors) and
// `dcpp convert`, checked with real PyTorch 1.13 (tests/python/load_check.py, check_convert.py).
#define BOOST_TEST_MODULE dcp.convert
#include <boost/test/unit_test.hpp>

#include <cstdlib>
#include <filesystem>
#include <functional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unistd.h>
#include <vector>

#include "support.hpp"
import dcp.error;
import dcp.checkpoint;

namespace fs = std::filesystem;
using dcp::checkpoint::ConvertReport;
using dcp::checkpoint::LoadOptions;

namespace {

const std::vector<std::string> kCases = {"flat_dtypes", "optimizer", "sharded_4ranks", "single_file"};
const std::vector<std::string> kTorch2x = {"x2_flat_mixed", "x2_fsdp_4ranks"};

fs::path script(std::string_view relative) { return dcp_test::source_root() / relative; }

// Runs a checker script with real PyTorch; the test fails with its output line otherwise.
void check(const std::string& args) {
  int status = 0;
  const std::string out = dcp_test::run_capture(dcp_test::python() + " " + args + " 2>&1", &status);
  BOOST_TEST_MESSAGE(out);
  BOOST_TEST(status == 0, args << " -> " << out);
}

std::string load_check(const fs::path& ckpt, const fs::path& pt) {
  return dcp_test::quote(script("tests/python/load_check.py")) + " " + dcp_test::quote(ckpt) + " " +
         dcp_test::quote(pt);
}

std::string check_convert(const std::string& mode, const fs::path& a, const fs::path& b = {},
                          const std::string& keys = {}) {
  std::string args = dcp_test::quote(script("tests/convert/check_convert.py")) + " " + mode + " " + dcp_test::quote(a);
  if (!b.empty()) args += " " + dcp_test::quote(b);
  if (!keys.empty()) args += " --keys " + dcp_test::quote(keys);
  return args;
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

// The dcpp binary of this build: DCPP_EXE, else <build>/tools/dcpp/dcpp beside this test.
fs::path dcpp_exe() {
  if (const char* env = std::getenv("DCPP_EXE")) return env;
  std::error_code ec;
  const auto self = fs::read_symlink("/proc/self/exe", ec);
  return self.parent_path().parent_path().parent_path() / "tools" / "dcpp" / "dcpp";
}

struct Cli {
  int status = 0;
  std::string out, err;
};

Cli dcpp(const std::string& args, const fs::path& scratch) {
  Cli r;
  const auto err_file = scratch / "stderr.txt";
  r.out = dcp_test::run_capture(dcp_test::quote(dcpp_exe()) + " " + args + " 2>" + dcp_test::quote(err_file), &r.status);
  const auto bytes = dcp_test::read_bytes(err_file);
  r.err.assign(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  fs::remove(err_file);
  return r;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(interop)

BOOST_AUTO_TEST_CASE(torch_save_of_torch_1_13_checkpoints_matches_dcp_load) {
  for (const auto& name : kCases) {
    BOOST_TEST_CONTEXT("case " << name) {
      const auto& c = dcp_test::checkpoint_case(name);
      dcp_test::TempDir out;
      const auto pt = out.path() / "model.pt";
      const ConvertReport report = dcp::checkpoint::convert_to_torch_save(c / "ckpt", pt);
      const auto expected = dcp_test::read_json(c / "expected.json");
      BOOST_TEST(report.tensors == expected.at("tensors").as_object().size());
      BOOST_TEST(report.objects == expected.at("objects").as_object().size());
      BOOST_TEST(entries(out.path()) == 1u);  // no temp file left
      check(load_check(c / "ckpt", pt));
      check(check_convert("pt", c, pt));
    }
  }
}

BOOST_AUTO_TEST_CASE(torch_save_of_torch2x_fixtures_is_nested_along_planner_data) {
  for (const auto& name : kTorch2x) {
    BOOST_TEST_CONTEXT("fixture " << name) {
      const auto c = dcp_test::torch2x_fixtures() / name;
      dcp_test::TempDir out;
      const auto pt = out.path() / "model.pth";
      dcp::checkpoint::convert_to_torch_save(c / "ckpt", pt);
      check(check_convert("pt", c, pt));
      check(load_check(c / "ckpt", pt));
    }
  }
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
  const std::vector<Run> runs = {
      {dcp_test::checkpoint_case("flat_dtypes") / "ckpt", tensors_only, false},
      {dcp_test::checkpoint_case("sharded_4ranks") / "ckpt", keys_with_prefix({"meta."}, false), true},
      {dcp_test::torch2x_fixtures() / "x2_fsdp_4ranks" / "ckpt", keys_with_prefix({"model."}, true), true},
      {dcp_test::torch2x_fixtures() / "x2_fsdp_4ranks" / "ckpt", keys_with_prefix({"model.", "optim.state."}, true), false},
  };
  for (const auto& run : runs) {
    BOOST_TEST_CONTEXT(run.ckpt) {
      dcp_test::TempDir out;
      const auto pt = out.path() / "t.pt";
      const auto report = dcp::checkpoint::convert_to_torch_save(run.ckpt, pt, run.options);
      BOOST_TEST(report.objects == 0u);
      BOOST_TEST(report.tensors > 0u);
      check(check_convert("same-as-torch-save", pt) + (run.whole_file ? " --whole-file" : ""));
    }
  }
}

BOOST_AUTO_TEST_CASE(torch_save_keeps_only_selected_keys) {
  const auto& c = dcp_test::checkpoint_case("optimizer");
  dcp_test::TempDir out;
  const auto pt = out.path() / "model.pt";
  const auto report = dcp::checkpoint::convert_to_torch_save(c / "ckpt", pt, keys_with_prefix({"model."}, true));
  BOOST_TEST(report.tensors == 4u);  // fc1/fc2 weight and bias
  BOOST_TEST(report.objects == 0u);
  check(check_convert("pt", c, pt, "^model\\."));
}

BOOST_AUTO_TEST_CASE(safetensors_holds_every_tensor_and_objects_as_json) {
  struct Run {
    fs::path case_dir;
    std::string python_keys;  // the same selection as a Python regex
    LoadOptions options;
  };
  const auto no_complex = keys_with_prefix({"c."}, false);
  std::vector<Run> runs;
  for (const auto& name : kCases)
    runs.push_back({dcp_test::checkpoint_case(name), name == "flat_dtypes" ? "^(?!c\\.)" : "",
                    name == "flat_dtypes" ? no_complex : LoadOptions{}});
  runs.push_back({dcp_test::torch2x_fixtures() / "x2_flat_mixed", "^(?!c\\.)", no_complex});
  runs.push_back({dcp_test::torch2x_fixtures() / "x2_fsdp_4ranks", "", LoadOptions{}});
  for (const auto& run : runs) {
    BOOST_TEST_CONTEXT(run.case_dir) {
      dcp_test::TempDir out;
      const auto st = out.path() / "model.safetensors";
      const auto report = dcp::checkpoint::convert_to_safetensors(run.case_dir / "ckpt", st, run.options);
      BOOST_TEST(report.tensors > 0u);
      BOOST_TEST(entries(out.path()) == 1u);
      check(check_convert("safetensors", run.case_dir, st, run.python_keys));
    }
  }
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(unit)

BOOST_AUTO_TEST_CASE(safetensors_rejects_complex_naming_the_key) {
  const auto& c = dcp_test::checkpoint_case("flat_dtypes");
  dcp_test::TempDir out;
  const auto e = expect_error([&] { dcp::checkpoint::convert_to_safetensors(c / "ckpt", out.path() / "m.safetensors"); });
  BOOST_TEST(dcp::errc_name(e.code()) == "unimplemented");
  BOOST_TEST(e.context().key == "c.complex64");
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
      if (out.extension() == ".pt") dcp::checkpoint::convert_to_torch_save(dir.path() / "ckpt", out);
      else dcp::checkpoint::convert_to_safetensors(dir.path() / "ckpt", out, keys_with_prefix({"c."}, false));
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

BOOST_AUTO_TEST_CASE(existing_output_is_replaced_on_success) {
  const auto& c = dcp_test::checkpoint_case("single_file");
  dcp_test::TempDir dir;
  const auto out = dir.path() / "m.pt";
  dcp_test::write_bytes(out, {std::byte{'x'}});
  dcp::checkpoint::convert_to_torch_save(c / "ckpt", out);
  BOOST_TEST(fs::file_size(out) > 1u);
  BOOST_TEST(entries(dir.path()) == 1u);
}

BOOST_AUTO_TEST_CASE(objects_holding_tensors_are_unimplemented) {
  dcp_test::TempDir dir;
  const auto ckpt = dir.path() / "ckpt";
  const std::string code =
      "import sys; sys.path.insert(0, sys.argv[1]); import dcp113; from dcp113 import dcp, torch; "
      "dcp.save_state_dict({'w': torch.ones(2), 'opt': {'t': torch.zeros(3)}}, "
      "dcp.FileSystemWriter(sys.argv[2]), no_dist=True)";
  BOOST_REQUIRE(dcp_test::run(dcp_test::python() + " -c " + dcp_test::quote(code) + " " +
                              dcp_test::quote(script("tests/python")) + " " + dcp_test::quote(ckpt)) == 0);
  fs::create_directory(dir.path() / "out");
  auto e = expect_error([&] { dcp::checkpoint::convert_to_torch_save(ckpt, dir.path() / "out" / "m.pt"); });
  BOOST_TEST(dcp::errc_name(e.code()) == "unimplemented", e.what());
  BOOST_TEST(e.context().key == "opt");
  e = expect_error([&] { dcp::checkpoint::convert_to_safetensors(ckpt, dir.path() / "out" / "m.safetensors"); });
  BOOST_TEST(dcp::errc_name(e.code()) == "unimplemented", e.what());
  BOOST_TEST(e.context().key == "opt");
  BOOST_TEST(entries(dir.path() / "out") == 0u);
  // Without the object both work.
  const auto w_only = keys_with_prefix({"w"}, true);
  BOOST_TEST(dcp::checkpoint::convert_to_torch_save(ckpt, dir.path() / "out" / "m.pt", w_only).tensors == 1u);
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

BOOST_AUTO_TEST_CASE(convert_writes_pt_and_safetensors) {
  if (!fs::exists(dcpp_exe())) {
    BOOST_TEST_MESSAGE("no dcpp binary at " << dcpp_exe() << "; skipped");
    return;
  }
  const auto& c = dcp_test::checkpoint_case("single_file");
  dcp_test::TempDir dir;
  const auto ckpt = dcp_test::quote(c / "ckpt");
  auto r = dcpp("convert " + ckpt + " " + dcp_test::quote(dir.path() / "m.pt"), dir.path());
  BOOST_TEST(r.status == 0, r.err);
  BOOST_TEST(r.out.starts_with("converted 6 tensors (232 bytes) and 3 objects to "), r.out);
  BOOST_TEST(r.err.empty(), r.err);
  check(check_convert("pt", c, dir.path() / "m.pt"));

  r = dcpp("convert --quiet --threads 2 --keys '^(w|i)\\.' " + ckpt + " " +
               dcp_test::quote(dir.path() / "m.safetensors"),
           dir.path());
  BOOST_TEST(r.status == 0, r.err);
  BOOST_TEST(r.out.empty(), r.out);
  check(check_convert("safetensors", c, dir.path() / "m.safetensors", "^(w|i)\\."));
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
