// Test support shared by the suites: paths, temp dirs, running real PyTorch, expected.json.
#pragma once
#include <boost/json.hpp>
#include <cstddef>
#include <filesystem>
#include <string>
#include <vector>

namespace dcp_test {

std::filesystem::path source_root();
/// shared/fixtures/torch2x (checkpoints in torch 2.x's layout with expected values).
std::filesystem::path torch2x_fixtures();
/// The interpreter with python3-torch 1.13 (DCPP_PYTHON, default /usr/bin/python3).
std::string python();

/// A fresh directory under /tmp, removed with its contents on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

/// Runs a shell command; returns its exit status (stdout/stderr pass through).
int run(const std::string& command);
/// Runs a command and returns its stdout; `status` receives the exit status.
std::string run_capture(const std::string& command, int* status = nullptr);
std::string quote(const std::filesystem::path& p);

/// Writes a checkpoint with real PyTorch 1.13 (tests/python/make_checkpoint.py --case NAME)
/// into `out` (out/ckpt, out/expected.json, out/expected/*.bin); fails the test on error.
void make_checkpoint(const std::string& case_name, const std::filesystem::path& out);

/// A cached checkpoint per case for the whole test binary (made once, under one TempDir).
const std::filesystem::path& checkpoint_case(const std::string& case_name);

boost::json::value read_json(const std::filesystem::path& path);
std::vector<std::byte> read_bytes(const std::filesystem::path& path);
void write_bytes(const std::filesystem::path& path, const std::vector<std::byte>& bytes);

/// Copies a checkpoint directory (files only) to `to`.
void copy_checkpoint(const std::filesystem::path& from, const std::filesystem::path& to);

}  // namespace dcp_test
