// dcp.safetensors through the dcpp command line: inspect, load and verify of every case, its
// conversion to .pt and .safetensors read back by torch 2.13 and the safetensors library, every
// dtype through a DCP checkpoint that torch 2.13's dcp.load reads, and hostile model directories
// failing with one line naming the file, the key and the byte.
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "../support/support.hpp"

namespace json = boost::json;
namespace fs = std::filesystem;
using dcp_test::needs_python2x;
using dcp_test::quote;

namespace {

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

json::object expected_of(const fs::path& case_dir) { return dcp_test::read_json(case_dir / "expected.json").as_object(); }

// Runs a torch 2.13 script over a JSON file of jobs; every line must say OK / ok.
void run_oracle(const std::string& script_and_mode, const fs::path& jobs) {
  int status = 0;
  const auto out = dcp_test::run_capture(quote(dcp_test::python2x()) + " " + script_and_mode + " " + quote(jobs) + " 2>&1", &status);
  BOOST_TEST(status == 0, out);
  BOOST_TEST(!contains(out, "FAIL"), out);
}

void write_text(const fs::path& path, const std::string& text) { std::ofstream(path) << text; }

}  // namespace

BOOST_AUTO_TEST_SUITE(cli, *boost::unit_test::precondition(needs_python2x))

// inspect names the layout it read, load reads every byte, verify checks every record.
BOOST_AUTO_TEST_CASE(inspect_load_and_verify_every_case) {
  dcp_test::TempDir tmp;
  for (const auto& name : dcp_test::hf_cases())
    BOOST_TEST_CONTEXT(name) {
      const auto& dir = dcp_test::hf_case(name);
      const auto expected = expected_of(dir);
      const auto path = quote(dcp_test::hf_case_path(dir));
      const std::string source(expected.at("source").as_string());
      const auto inspect = dcp_test::run_dcpp("inspect --json " + path, tmp.path());
      BOOST_TEST_REQUIRE(inspect.status == 0, inspect.err);
      const auto doc = json::parse(inspect.out).as_object();
      BOOST_TEST(doc.at("source").as_string() == source);
      BOOST_TEST(doc.at("items").as_array().size() == expected.at("tensors").as_object().size());
      const auto table = dcp_test::run_dcpp("inspect " + path, tmp.path());
      BOOST_TEST(contains(table.out, "\n" + source + " checkpoint: "), table.out);

      const auto load = dcp_test::run_dcpp("load --json " + path, tmp.path());
      BOOST_TEST_REQUIRE(load.status == 0, load.err);
      std::uint64_t bytes = 0;
      for (const auto& [key, t] : expected.at("tensors").as_object()) bytes += t.at("nbytes").to_number<std::uint64_t>();
      const auto loaded = json::parse(load.out).as_object();
      BOOST_TEST(loaded.at("bytes").to_number<std::uint64_t>() == bytes);
      BOOST_TEST(loaded.at("tensors").to_number<std::size_t>() == expected.at("tensors").as_object().size());

      const auto verify = dcp_test::run_dcpp("verify --quiet " + path, tmp.path());
      BOOST_TEST(verify.status == 0, verify.err);
    }
}

// A model directory, torch's rank files and one file, converted to .pt and .safetensors: torch
// 2.13's torch.load and the safetensors library read exactly the values written.
BOOST_AUTO_TEST_CASE(convert_to_a_file_reads_back_in_torch_and_safetensors) {
  dcp_test::TempDir tmp;
  json::array jobs;
  int n = 0;
  for (const std::string name : {"st_file", "st_repo", "hf_4ranks", "hf_4ranks_cons_sharded"}) {
    const auto& dir = dcp_test::hf_case(name);
    for (const std::string ext : {".pt", ".safetensors"}) {
      const auto out = tmp.path() / ("out" + std::to_string(n++) + ext);
      // The library's torch binding cannot read F8_E8M0 (its float8_e8m0fnu has no code there):
      // the .safetensors of every dtype leaves that one out.
      const std::string keys = ext == ".safetensors" && name == "st_file" ? "^(?!f8e8m0$)" : "";
      const auto r = dcp_test::run_dcpp("convert --quiet " + (keys.empty() ? "" : "--keys " + quote(keys) + " ") +
                                            quote(dcp_test::hf_case_path(dir)) + " " + quote(out),
                                        tmp.path());
      BOOST_TEST_REQUIRE(r.status == 0, name << ext << ": " << r.err);
      json::array job{ext == ".pt" ? "pt" : "safetensors", dir.string(), out.string()};
      if (!keys.empty()) job.insert(job.end(), {"--keys", keys});
      jobs.push_back(job);
    }
  }
  write_text(tmp.path() / "jobs.json", json::serialize(jobs));
  run_oracle(quote(dcp_test::source_root() / "tests/convert/check_convert.py") + " batch", tmp.path() / "jobs.json");
}

// Every dtype the list has (and torch with it): the one-file model, resharded by dcpp into a
// DCP checkpoint (one rank, no launcher) and imported as one (convert FILE DIR), loads in torch
// 2.13's dcp.load to exactly the bytes the safetensors library wrote.
BOOST_AUTO_TEST_CASE(every_dtype_reaches_torch_through_dcpp) {
  dcp_test::TempDir tmp;
  const auto& dir = dcp_test::hf_case("st_file");
  const auto file = dcp_test::hf_case_path(dir);
  const auto expected = expected_of(dir);
  const auto resharded = tmp.path() / "resharded", imported = tmp.path() / "imported";
  auto r = dcp_test::run_dcpp("reshard --quiet " + quote(file) + " " + quote(resharded), tmp.path());
  BOOST_TEST_REQUIRE(r.status == 0, r.err);
  r = dcp_test::run_dcpp("convert --quiet --ranks 3 " + quote(file) + " " + quote(imported), tmp.path());
  BOOST_TEST_REQUIRE(r.status == 0, r.err);
  json::array checks;
  for (const auto& ckpt : {resharded, imported}) {
    json::array tensors;
    for (const auto& [key, t] : expected.at("tensors").as_object())
      tensors.push_back(json::object{{"path", t.at("path")},
                                     {"dtype", t.at("dtype")},
                                     {"shape", t.at("shape")},
                                     {"bin", (dir / std::string(t.at("file").as_string())).string()}});
    checks.push_back(json::object{
        {"name", ckpt.filename().string()}, {"ckpt", ckpt.string()}, {"exact_keys", true}, {"tensors", tensors}, {"objects", json::array{}}});
  }
  write_text(tmp.path() / "manifest.json", json::serialize(json::object{{"checks", checks}, {"dist", json::array{}}}));
  run_oracle(quote(dcp_test::source_root() / "tests/python/save_check.py") + " load", tmp.path() / "manifest.json");
}

// Index files naming missing files or paths outside the directory, keys in two files or not
// where the index says, DCP_SHARDING_INFO that overlaps, leaves holes or lacks a key, and the
// header faults of one file: exit 1, one line naming the file, the key and the byte.
BOOST_AUTO_TEST_CASE(hostile_model_directories_name_file_key_and_byte) {
  dcp_test::TempDir tmp;
  const auto root = tmp.path() / "hostile";
  BOOST_TEST_REQUIRE(dcp_test::run(quote(dcp_test::python2x()) + " " + quote(dcp_test::source_root() / "tests/python/make_hf.py") +
                                   " --hostile " + quote(root)) == 0);
  const auto cases = dcp_test::read_json(root / "hostile.json").as_array();
  BOOST_TEST(cases.size() >= 14u);
  for (const auto& c : cases) {
    const auto& o = c.as_object();
    BOOST_TEST_CONTEXT(o.at("name").as_string()) {
      for (const std::string command : {"inspect", "load"}) {
        const auto r = dcp_test::run_dcpp(command + " " + quote(root / std::string(o.at("path").as_string())), tmp.path());
        BOOST_TEST(r.status == 1, r.err);
        BOOST_TEST(r.out.empty(), r.out);
        BOOST_TEST(std::count(r.err.begin(), r.err.end(), '\n') == 1, r.err);
        BOOST_TEST(contains(r.err, std::string(o.at("file").as_string()) + ": "), r.err);
        if (!o.at("key").is_null()) BOOST_TEST(contains(r.err, "key '" + std::string(o.at("key").as_string()) + "'"), r.err);
        BOOST_TEST(contains(r.err, "byte " + std::to_string(o.at("byte").to_number<std::uint64_t>()) + ":"), r.err);
        BOOST_TEST(contains(r.err, std::string(o.at("words").as_string())), r.err);
      }
    }
  }
  // Nothing outside the directory was read as part of it.
  const auto r = dcp_test::run_dcpp("inspect " + quote(root / "index_traversal"), tmp.path());
  BOOST_TEST(!contains(r.out, "outside"), r.out);
}

BOOST_AUTO_TEST_SUITE_END()
