// dcpp on inputs that used to hang it, kill it or fill a disk: FIFOs where files should be
// (exit 1 at once, naming the file), an input truncated while `convert` reads it (exit 1 with
// nothing published, never SIGBUS), and small files that describe huge checkpoints (exit 1
// within a bounded memory, nothing written). Checkpoints read through symlinks, as a Hugging
// Face cache snapshot holds them, still load. The hostile files come from real torch
// (make_hostile_imports.py); every run has a time limit, and the conversions a file-size
// limit, so a regression fails instead of hanging or filling the disk.
#include <boost/test/unit_test.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include "measured.hpp"
#include "support.hpp"

namespace fs = std::filesystem;
using dcp_cli_test::env;
using dcp_cli_test::run_measured;
using dcp_test::quote;

namespace {

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// `dcpp ARGS`, killed after 60 s (status 137) should it wait on something forever.
dcp_test::CliResult run_limited(const std::string& args, const fs::path& scratch) {
  const auto err = scratch / "limited.stderr";
  dcp_test::CliResult r;
  r.out = dcp_test::run_capture("timeout -s KILL 60 " + quote(env("DCPP_EXE")) + " " + args + " 2>" + quote(err), &r.status);
  const auto bytes = dcp_test::read_bytes(err);
  r.err.assign(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  fs::remove(err);
  return r;
}

void expect_refused(const dcp_test::CliResult& r, const fs::path& file, const std::string& what) {
  BOOST_TEST(r.status == 1, "exit " << r.status << ": " << r.err);
  BOOST_TEST(r.err.starts_with("dcpp: error: " + file.string() + ": "), r.err);
  BOOST_TEST(contains(r.err, what), r.err << " lacks '" << what << "'");
}

void make_fifo(const fs::path& path) {
  fs::remove(path);
  BOOST_TEST_REQUIRE(::mkfifo(path.c_str(), 0644) == 0, path);
}

fs::path first_data_file(const fs::path& ckpt) {
  for (const auto& e : fs::directory_iterator(ckpt))
    if (e.path().extension() == ".distcp") return e.path();
  BOOST_FAIL("no data file in " << ckpt);
  return {};
}

// Entries of `dir` whose names start with `prefix` (a target's staging directories).
std::vector<fs::path> entries_starting(const fs::path& dir, const std::string& prefix) {
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().starts_with(prefix)) out.push_back(e.path());
  return out;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(inputs)

BOOST_AUTO_TEST_CASE(fifos_are_refused_without_waiting) {
  dcp_test::TempDir tmp;
  const auto& d = tmp.path();
  for (const std::string name : {"in.pt", "in.safetensors"}) {
    BOOST_TEST_CONTEXT(name) {
      make_fifo(d / name);
      expect_refused(run_limited("convert --quiet " + quote(d / name) + " " + quote(d / "out"), d), d / name, "a FIFO");
      BOOST_TEST(!fs::exists(d / "out"));
    }
  }
  const auto source = dcp_test::checkpoint_case("flat_dtypes") / "ckpt";
  const auto meta = d / "meta", data = d / "data";
  dcp_test::copy_checkpoint(source, meta);
  make_fifo(meta / ".metadata");
  for (const std::string command : {"inspect", "load", "verify"})
    BOOST_TEST_CONTEXT(command) {
      expect_refused(run_limited(command + " " + quote(meta), d), meta / ".metadata", "not a regular file: it is a FIFO");
    }
  dcp_test::copy_checkpoint(source, data);
  const auto fifo = first_data_file(data);
  make_fifo(fifo);
  for (const std::string args : {"load", "verify", "convert"})
    BOOST_TEST_CONTEXT(args) {
      const std::string out = args == "convert" ? " " + quote(d / "out.pt") : "";
      expect_refused(run_limited(args + " " + quote(data) + out, d), fifo, "not a regular file: it is a FIFO");
    }
  BOOST_TEST(!fs::exists(d / "out.pt"));
}

BOOST_AUTO_TEST_CASE(checkpoints_and_inputs_read_through_symlinks) {
  // A Hugging Face cache snapshot: every file a symlink into blobs/, the snapshot reached
  // through a symlinked directory too.
  dcp_test::TempDir tmp;
  const auto& d = tmp.path();
  const auto source = dcp_test::checkpoint_case("flat_dtypes") / "ckpt";
  fs::create_directories(d / "blobs");
  fs::create_directories(d / "snapshots" / "rev");
  int n = 0;
  for (const auto& e : fs::directory_iterator(source)) {
    const auto blob = "blob" + std::to_string(n++);
    fs::copy_file(e.path(), d / "blobs" / blob);
    fs::create_symlink(fs::path("../../blobs") / blob, d / "snapshots" / "rev" / e.path().filename());
  }
  fs::create_directory_symlink("snapshots/rev", d / "main");
  for (const std::string command : {"load", "verify"})
    BOOST_TEST_CONTEXT(command) {
      const auto r = run_limited(command + " --quiet " + quote(d / "main"), d);
      BOOST_TEST(r.status == 0, r.err);
    }
  // And a converted file given through a link: the checkpoint comes back the same.
  BOOST_TEST_REQUIRE(run_limited("convert --quiet " + quote(d / "main") + " " + quote(d / "blobs" / "x.pt"), d).status == 0);
  fs::create_symlink("blobs/x.pt", d / "x.pt");
  const auto r = run_limited("convert --quiet " + quote(d / "x.pt") + " " + quote(d / "ck"), d);
  BOOST_TEST(r.status == 0, r.err);
  BOOST_TEST(fs::exists(d / "ck" / ".metadata"));
}

// `dcpp convert IN OUT`, with IN truncated to 4 KiB as soon as the save has begun (the writer
// has made OUT, or its staging directory beside OUT): the writers then read pages that are gone.
void convert_while_truncating(const fs::path& in, const fs::path& out) {
  const auto err = out.parent_path() / "convert.stderr";
  const std::string exe = env("DCPP_EXE");
  const pid_t pid = ::fork();
  BOOST_TEST_REQUIRE(pid >= 0);
  if (pid == 0) {
    const int fd = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || ::dup2(fd, 2) < 0) ::_exit(126);
    ::execl(exe.c_str(), exe.c_str(), "convert", "--quiet", in.c_str(), out.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  const std::string staging = "." + out.filename().string();
  bool truncated = false, exited = false;
  int status = 0;
  // Polls every millisecond for at most a minute (a bound on a hang, not a timing assertion).
  for (int i = 0; i < 60000 && !truncated && !exited; ++i) {
    exited = ::waitpid(pid, &status, WNOHANG) == pid;
    if (!exited && (fs::exists(out) || !entries_starting(out.parent_path(), staging).empty())) {
      BOOST_TEST_REQUIRE(::truncate(in.c_str(), 4096) == 0);
      truncated = true;
    }
    ::usleep(1000);
  }
  if (!exited) {
    if (!truncated) ::kill(pid, SIGKILL);
    BOOST_TEST_REQUIRE(::waitpid(pid, &status, 0) == pid);
  }
  const auto bytes = dcp_test::read_bytes(err);
  const std::string text(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  BOOST_TEST(truncated, "the conversion ended before its save began: " << text);
  BOOST_TEST((WIFEXITED(status) && WEXITSTATUS(status) == 1),
             (WIFSIGNALED(status) ? "killed by signal " + std::to_string(WTERMSIG(status)) : "exit " + std::to_string(WEXITSTATUS(status)))
                 << ": " << text);
  BOOST_TEST(text.starts_with("dcpp: error: " + in.string() + ": "), text);
  BOOST_TEST(contains(text, "while it was read"), text);
  BOOST_TEST(!fs::exists(out));
  BOOST_TEST(entries_starting(out.parent_path(), staging).empty(), "a staging directory was left behind");
}

BOOST_AUTO_TEST_CASE(input_truncated_while_converting, *boost::unit_test::precondition(dcp_test::needs_python2x)) {
  dcp_test::TempDir tmp;
  const auto& d = tmp.path();
  BOOST_TEST_REQUIRE(dcp_test::run(quote(dcp_test::python2x()) + " " +
                                   quote(dcp_test::source_root() / "tests/cli/make_hostile_imports.py") + " " + quote(d) +
                                   " big_pt big_safetensors") == 0);
  for (const std::string name : {"big_pt.pt", "big_safetensors.safetensors"})
    BOOST_TEST_CONTEXT(name) { convert_while_truncating(d / name, d / ("out-" + name.substr(0, name.find('.')))); }
}

BOOST_AUTO_TEST_CASE(small_files_that_describe_huge_checkpoints, *boost::unit_test::precondition(dcp_test::needs_python2x)) {
  dcp_test::TempDir tmp;
  const auto& d = tmp.path();
  BOOST_TEST_REQUIRE(dcp_test::run(quote(dcp_test::python2x()) + " " +
                                   quote(dcp_test::source_root() / "tests/cli/make_hostile_imports.py") + " " + quote(d) +
                                   " stride0 broadcast shared_str objects empty_tensors") == 0);
  struct Case {
    std::string file, key;
  };
  // The keys where each stops: 4 TiB in one tensor; the 9th view of 128 MiB passes 1 GiB; the
  // shared string and the objects are charged per key; so are the empty tensors' items.
  for (const auto& c : std::vector<Case>{{"stride0.pt", "w"},
                                         {"broadcast.pt", "t"},
                                         {"shared_str.pt", "k"},
                                         {"objects.pt", "k"},
                                         {"empty_tensors.safetensors", "k"}}) {
    BOOST_TEST_CONTEXT(c.file) {
      const auto in = d / c.file, out = d / "out";
      // At most 2 GiB per file written: a budget that stopped working fails here, disk intact.
      const auto m = run_measured("convert --quiet " + quote(in) + " " + quote(out), "ulimit -f 2097152; ");
      dcp_cli_test::expect_one_line_error(m, in.string(), "", "the checkpoint would take more than", 384 * 1024);
      BOOST_TEST(contains(m.err, ": key '" + c.key), m.err);
      BOOST_TEST(!fs::exists(out));
      BOOST_TEST(entries_starting(d, ".out").empty());
    }
  }
  // A limit given is named as such: the first object alone passes 1 KiB.
  const auto small = run_measured("convert --quiet --max-output-bytes 1K " + quote(d / "objects.pt") + " " + quote(d / "o"));
  dcp_cli_test::expect_one_line_error(small, (d / "objects.pt").string(), "k0", "more than 1024 bytes (the limit given");
}

BOOST_AUTO_TEST_SUITE_END()
