// Test support implementation.
#include "support.hpp"

#include <boost/test/unit_test.hpp>
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <sstream>

namespace dcp_test {

std::filesystem::path source_root() {
  const char* env = std::getenv("DCPP_SOURCE_ROOT");
  return env ? env : DCPP_SOURCE_ROOT_DEFAULT;
}

std::string python() {
  const char* env = std::getenv("DCPP_PYTHON");
  return env ? env : "/usr/bin/python3";
}

std::string python2x() {
  const char* env = std::getenv("DCPP_PYTHON2X");
  return env && *env ? std::string(env) : (source_root() / ".venv" / "bin" / "python").string();
}

namespace {
// Why python2x() cannot be used; empty when it can.
const std::string& python2x_problem() {
  static const std::string problem = [] () -> std::string {
    const auto exe = python2x();
    if (!std::filesystem::exists(exe))
      return exe + " does not exist (tools/install-deps creates the .venv with torch 2.13)";
    int status = 0;
    // Package versions without importing torch (that takes seconds).
    const auto out = run_capture(quote(exe) +
                                     " -c 'import importlib.metadata as m; m.version(\"safetensors\"); "
                                     "print(m.version(\"torch\"))' 2>&1",
                                 &status);
    if (status != 0) return exe + " has no torch or no safetensors: " + out;
    if (out.rfind("2.13.0", 0) != 0) return exe + " has torch " + out + ", not 2.13.0";
    return {};
  }();
  return problem;
}
}  // namespace

bool python2x_available() { return python2x_problem().empty(); }

boost::test_tools::assertion_result needs_python2x(boost::unit_test::test_unit_id) {
  boost::test_tools::assertion_result result(python2x_available());
  if (!result) {
    result.message() << "skipped: no torch 2.13 oracle: " << python2x_problem();
    // Boost reports a skip only at --log_level=test_suite; say it once in every log as well.
    static const bool said = [] {
      std::cerr << "dcp_test: SKIPPING the tests that need torch 2.13: " << python2x_problem() << std::endl;
      return true;
    }();
    (void)said;
  }
  return result;
}

TempDir::TempDir() {
  std::random_device rd;
  for (int attempt = 0; attempt < 100; ++attempt) {
    auto p = std::filesystem::temp_directory_path() / ("dcpp-test-" + std::to_string(rd()));
    if (std::filesystem::create_directory(p)) {
      path_ = p;
      return;
    }
  }
  throw std::runtime_error("cannot create a temp dir");
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::string quote(const std::filesystem::path& p) {
  std::string s = "'";
  for (char c : p.string()) s += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return s + "'";
}

int run(const std::string& command) {
  const int status = std::system(command.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

std::string run_capture(const std::string& command, int* status) {
  std::string out;
  FILE* pipe = ::popen(command.c_str(), "r");
  if (!pipe) throw std::runtime_error("popen failed");
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, pipe)) > 0) out.append(buf, n);
  const int st = ::pclose(pipe);
  if (status) *status = WIFEXITED(st) ? WEXITSTATUS(st) : 128;
  return out;
}

std::filesystem::path dcpp_exe() {
  if (const char* env = std::getenv("DCPP_EXE")) return env;
  std::error_code ec;
  const auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
  return self.parent_path().parent_path().parent_path() / "tools" / "dcpp" / "dcpp";
}

CliResult run_dcpp(const std::string& args, const std::filesystem::path& scratch) {
  CliResult r;
  const auto err_file = scratch / "stderr.txt";
  r.out = run_capture(quote(dcpp_exe()) + " " + args + " 2>" + quote(err_file), &r.status);
  const auto bytes = read_bytes(err_file);
  r.err.assign(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  std::filesystem::remove(err_file);
  return r;
}

void make_checkpoint(const std::string& case_name, const std::filesystem::path& out) {
  const std::string command = python() + " " + quote(source_root() / "tests/python/make_checkpoint.py") +
                              " --case " + case_name + " --out " + quote(out);
  const int status = run(command);
  if (status != 0) BOOST_FAIL("PyTorch failed to write case '" << case_name << "' (exit " << status << ")");
}

const std::vector<std::string>& torch2x_cases() {
  static const std::vector<std::string> cases = {"x2_flat",     "x2_dtypes_v3",   "x2_optim",    "x2_threads",
                                                 "x2_per_item", "x2_fsdp_4ranks", "x2_2d_4ranks"};
  return cases;
}

const std::filesystem::path& checkpoint_case(const std::string& case_name) {
  static TempDir root;
  static std::map<std::string, std::filesystem::path> made;
  auto it = made.find(case_name);
  if (it != made.end()) return it->second;
  if (case_name.rfind("x2_", 0) == 0) {
    // All torch 2.13 cases in one run: torch's import and the 4-rank spawn are paid once.
    BOOST_TEST_REQUIRE(python2x_available(), python2x_problem());
    const auto x2 = root.path() / "torch2x";
    const std::string command = quote(python2x()) + " " + quote(source_root() / "tests/python/make_checkpoint2x.py") +
                                " --out " + quote(x2);
    const int status = run(command);
    if (status != 0) BOOST_FAIL("PyTorch 2.13 failed to write its cases (exit " << status << ")");
    for (const auto& name : torch2x_cases()) made.emplace(name, x2 / name);
    it = made.find(case_name);
    if (it == made.end()) BOOST_FAIL("no torch 2.13 case '" << case_name << "'");
    return it->second;
  }
  auto dir = root.path() / case_name;
  make_checkpoint(case_name, dir);
  return made.emplace(case_name, dir).first->second;
}

const std::vector<std::string>& hf_cases() {
  static const std::vector<std::string> cases = {"st_file",   "st_repo",   "st_dir",         "hf_1proc",
                                                 "hf_2ranks", "hf_4ranks", "hf_4ranks_cons", "hf_4ranks_cons_sharded"};
  return cases;
}

const std::filesystem::path& hf_case(const std::string& case_name) {
  static TempDir root;
  static bool made = false;
  if (!made) {
    BOOST_TEST_REQUIRE(python2x_available(), python2x_problem());
    const int status = run(quote(python2x()) + " " + quote(source_root() / "tests/python/make_hf.py") + " --out " +
                           quote(root.path() / "hf"));
    if (status != 0) BOOST_FAIL("make_hf.py failed to write its cases (exit " << status << ")");
    made = true;
  }
  static std::map<std::string, std::filesystem::path> dirs;
  if (std::find(hf_cases().begin(), hf_cases().end(), case_name) == hf_cases().end())
    BOOST_FAIL("no safetensors case '" << case_name << "'");
  return dirs.try_emplace(case_name, root.path() / "hf" / case_name).first->second;
}

std::filesystem::path hf_case_path(const std::filesystem::path& case_dir) {
  const auto doc = read_json(case_dir / "expected.json");
  return (case_dir / std::string(doc.at("path").as_string())).lexically_normal();
}

std::vector<boost::json::value> torch_metadata_json(const std::string& interpreter,
                                                    const std::vector<std::filesystem::path>& ckpts) {
  std::string command = quote(interpreter) + " " + quote(source_root() / "tests/python/metadata_json.py");
  for (const auto& c : ckpts) command += " " + quote(c);
  int status = 0;
  const auto out = run_capture(command, &status);
  BOOST_TEST_REQUIRE(status == 0, "metadata_json.py failed: " << command);
  std::vector<boost::json::value> docs;
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) docs.push_back(boost::json::parse(line));
  BOOST_TEST_REQUIRE(docs.size() == ckpts.size(), "metadata_json.py printed " << docs.size() << " documents");
  return docs;
}

boost::json::value case_metadata_json(const std::filesystem::path& case_dir) {
  return read_json(case_dir / "metadata.json");
}

std::vector<std::string> list_names(const std::filesystem::path& dir) {
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

std::vector<std::byte> read_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path.string());
  std::vector<char> chars((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::byte> bytes(chars.size());
  std::memcpy(bytes.data(), chars.data(), chars.size());
  return bytes;
}

void write_bytes(const std::filesystem::path& path, const std::vector<std::byte>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("cannot write " + path.string());
}

boost::json::value read_json(const std::filesystem::path& path) {
  const auto bytes = read_bytes(path);
  return boost::json::parse(std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
}

void copy_checkpoint(const std::filesystem::path& from, const std::filesystem::path& to) {
  std::filesystem::create_directories(to);
  for (const auto& entry : std::filesystem::directory_iterator(from))
    if (entry.is_regular_file())
      std::filesystem::copy_file(entry.path(), to / entry.path().filename(),
                                 std::filesystem::copy_options::overwrite_existing);
}

}  // namespace dcp_test
