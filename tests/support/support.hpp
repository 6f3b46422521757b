// Test support shared by the suites: paths, temp dirs, running real PyTorch, expected.json.
#pragma once
#include <boost/json.hpp>
#include <boost/test/unit_test.hpp>
#include <boost/test/tree/test_unit.hpp>
#include <boost/test/tools/assertion_result.hpp>
#include <cstddef>
#include <filesystem>
#include <string>
#include <vector>

namespace dcp_test {

std::filesystem::path source_root();
/// The interpreter with python3-torch 1.13 (DCPP_PYTHON, default /usr/bin/python3).
std::string python();
/// The interpreter with torch 2.13 and safetensors: the repository's virtualenv that
/// tools/install-deps makes (DCPP_PYTHON2X, default <source root>/.venv/bin/python).
std::string python2x();
/// Whether python2x() exists and imports torch and safetensors (checked once per binary).
bool python2x_available();
/// For Boost.Test's `precondition` decorator: a test that needs torch 2.13 is skipped, with
/// the reason in the log, when python2x() is missing.
boost::test_tools::assertion_result needs_python2x(boost::unit_test::test_unit_id);

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

/// The dcpp binary of this build: DCPP_EXE, else <build>/tools/dcpp/dcpp (found from the test
/// binary's own path, <build>/tests/<suite>/<binary>).
std::filesystem::path dcpp_exe();
/// What one run of dcpp printed.
struct CliResult {
  int status = 0;
  std::string out, err;
};
/// Runs `dcpp ARGS` (ARGS already quoted for the shell), capturing stdout and stderr (through
/// a file in `scratch`, removed afterwards).
CliResult run_dcpp(const std::string& args, const std::filesystem::path& scratch);

/// Writes a checkpoint with real PyTorch 1.13 (tests/python/make_checkpoint.py --case NAME)
/// into `out` (out/ckpt, out/expected.json, out/expected/*.bin); fails the test on error.
void make_checkpoint(const std::string& case_name, const std::filesystem::path& out);

/// The torch 2.13 cases of tests/python/make_checkpoint2x.py (names start with "x2_").
const std::vector<std::string>& torch2x_cases();

/// A cached checkpoint per case for the whole test binary (made once, under one TempDir).
/// Names starting with "x2_" are torch 2.13 cases: the first request writes all of them with
/// one run of make_checkpoint2x.py (one 4-rank spawn for the distributed ones); the test
/// fails when python2x() is missing (guard such tests with `needs_python2x`).
const std::filesystem::path& checkpoint_case(const std::string& case_name);

/// The safetensors cases of tests/python/make_hf.py (st_file, st_repo, st_dir, hf_1proc,
/// hf_2ranks, hf_4ranks, hf_4ranks_cons, hf_4ranks_cons_sharded), written by one run of it the
/// first time one is asked for: the case directory (expected.json, expected/*.bin; its "path"
/// is what dcpp is given). Needs python2x() (guard with `needs_python2x`).
const std::vector<std::string>& hf_cases();
const std::filesystem::path& hf_case(const std::string& case_name);
/// `case_dir`'s expected.json "path": the checkpoint path to hand to dcpp.
std::filesystem::path hf_case_path(const std::filesystem::path& case_dir);

/// `tests/python/metadata_json.py CKPT_DIR...` run once with `interpreter`: for each checkpoint
/// the `dcpp inspect --json` document computed from PyTorch's own unpickling of .metadata;
/// fails the test on error.
std::vector<boost::json::value> torch_metadata_json(const std::string& interpreter,
                                                    const std::vector<std::filesystem::path>& ckpts);
/// The same document for a generated case, written by the torch that wrote it
/// (case_dir/metadata.json).
boost::json::value case_metadata_json(const std::filesystem::path& case_dir);

boost::json::value read_json(const std::filesystem::path& path);
std::vector<std::byte> read_bytes(const std::filesystem::path& path);
void write_bytes(const std::filesystem::path& path, const std::vector<std::byte>& bytes);

/// The names in a directory, sorted (hidden ones included).
std::vector<std::string> list_names(const std::filesystem::path& dir);

/// Copies a checkpoint directory (files only) to `to`.
void copy_checkpoint(const std::filesystem::path& from, const std::filesystem::path& to);

/// The exception of type E that `fn()` throws; fails the test when it throws none.
template <class E, class Fn>
E thrown(Fn&& fn) {
  try {
    fn();
  } catch (const E& e) {
    return e;
  }
  BOOST_FAIL("no exception was thrown");
  throw;
}

}  // namespace dcp_test
