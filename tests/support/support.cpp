// Test support implementation.
#include "support.hpp"

#include <boost/test/unit_test.hpp>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <sstream>

namespace dcp_test {

std::filesystem::path source_root() {
  const char* env = std::getenv("DCPP_SOURCE_ROOT");
  return env ? env : DCPP_SOURCE_ROOT_DEFAULT;
}

std::filesystem::path torch2x_fixtures() {
  if (const char* env = std::getenv("DCPP_SHARED_FIXTURES")) return std::filesystem::path(env) / "torch2x";
  return source_root() / ".." / "shared" / "fixtures" / "torch2x";
}

std::string python() {
  const char* env = std::getenv("DCPP_PYTHON");
  return env ? env : "/usr/bin/python3";
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

void make_checkpoint(const std::string& case_name, const std::filesystem::path& out) {
  const std::string command = python() + " " + quote(source_root() / "tests/python/make_checkpoint.py") +
                              " --case " + case_name + " --out " + quote(out);
  const int status = run(command);
  if (status != 0) BOOST_FAIL("PyTorch failed to write case '" << case_name << "' (exit " << status << ")");
}

const std::filesystem::path& checkpoint_case(const std::string& case_name) {
  static TempDir root;
  static std::map<std::string, std::filesystem::path> made;
  auto it = made.find(case_name);
  if (it != made.end()) return it->second;
  auto dir = root.path() / case_name;
  make_checkpoint(case_name, dir);
  return made.emplace(case_name, dir).first->second;
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
