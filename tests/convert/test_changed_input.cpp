// An input that changes while dcpp reads it: storage::MappedFile reads zeros instead of dying
// of SIGBUS when its file shrinks (and says so), SIGBUS anywhere else still kills as it would
// have, a save from an imported file that shrank or was rewritten meanwhile publishes nothing
// and names the input, and a conversion's temporary output never follows a planted link. The
// file is changed from the save's own progress callback, so the change always lands between
// two items: no timing is involved.
#include <boost/test/unit_test.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "import_files.hpp"
#include "support.hpp"
import dcp.error;
import dcp.storage;
import dcp.checkpoint;

namespace fs = std::filesystem;
using namespace dcp_import_files;

namespace {

bool contains(std::string_view text, std::string_view part) { return text.find(part) != std::string_view::npos; }

void write_zeros(const fs::path& path, std::size_t size) { dcp_test::write_bytes(path, std::vector<std::byte>(size)); }

// Sets the file's modification time to 2001, so that a write now changes it whatever the file
// system's timestamp granularity.
void age(const fs::path& path) {
  const timespec times[2] = {{1'000'000'000, 0}, {1'000'000'000, 0}};
  BOOST_TEST_REQUIRE(::utimensat(AT_FDCWD, path.c_str(), times, 0) == 0);
}

// Four float32 tensors of 1 MiB each.
void write_four_tensors(const fs::path& path) {
  std::string header = "{";
  for (int i = 0; i < 4; ++i)
    header += (i ? "," : "") + std::string("\"t") + std::to_string(i) + "\":{\"dtype\":\"F32\",\"shape\":[262144]," +
              "\"data_offsets\":[" + std::to_string(i << 20) + "," + std::to_string((i + 1) << 20) + "]}";
  write_safetensors(path, header + "}", 4u << 20);
}

// save_as_checkpoint of `in` into `out` while `change` alters `in` after the first item is
// written: the error it ends with.
dcp::Error save_while_changing(const fs::path& in, const fs::path& out, int ranks, const std::function<void()>& change) {
  dcp::checkpoint::ImportOptions import;
  import.ranks = ranks;
  const auto imported = dcp::checkpoint::import_file(in, import);
  dcp::storage::WriteOptions options;
  options.files_per_rank = 1;
  bool changed = false;
  options.progress = [&](std::uint64_t) {
    if (!changed) change();
    changed = true;
  };
  return dcp_test::thrown<dcp::Error>([&] { (void)dcp::checkpoint::save_as_checkpoint(imported, out, options); });
}

void expect_changed_error(const dcp::Error& e, const fs::path& in, const fs::path& out, std::string_view how) {
  BOOST_TEST((e.code() == dcp::Errc::data_loss), e.what());
  BOOST_TEST(e.context().file == in.string(), e.what());
  BOOST_TEST(contains(e.message(), how), e.what());
  BOOST_TEST(contains(e.message(), "while it was read"), e.what());
  BOOST_TEST(!fs::exists(out), "published from a changed input");
  for (const auto& entry : fs::directory_iterator(out.parent_path()))
    BOOST_TEST(!entry.path().filename().string().starts_with("." + out.filename().string()), entry.path());
}

// In a child whose SIGBUS handler is `previous` (SIG_DFL or a function): with dcpp's guard
// installed (a MappedFile exists), a fault in a mapping of the child's own. Returns the
// child's wait status.
int fault_outside_the_guard(const fs::path& guarded, const fs::path& other, void (*previous)(int)) {
  const pid_t pid = ::fork();
  BOOST_TEST_REQUIRE(pid >= 0);
  if (pid == 0) {
    ::signal(SIGBUS, previous);  // not Boost.Test's handler: the child's own
    ::alarm(60);                  // a fault swallowed and retried forever ends here
    dcp::storage::MappedFile file(guarded);
    const int fd = ::open(other.c_str(), O_RDWR);
    auto* p = static_cast<volatile char*>(::mmap(nullptr, 1 << 16, PROT_READ, MAP_SHARED, fd, 0));
    if (p == MAP_FAILED || ::ftruncate(fd, 0) != 0) ::_exit(3);
    const char c = p[(1 << 16) - 1];
    ::_exit(c == 0 ? 4 : 5);  // reached only when the fault was swallowed
  }
  int status = 0;
  BOOST_TEST_REQUIRE(::waitpid(pid, &status, 0) == pid);
  return status;
}

std::string describe(int status) {
  return WIFSIGNALED(status) ? "killed by signal " + std::to_string(WTERMSIG(status))
                             : "exited " + std::to_string(WEXITSTATUS(status));
}

}  // namespace

BOOST_AUTO_TEST_SUITE(changed_input)

BOOST_AUTO_TEST_CASE(a_mapping_reads_zeros_where_its_file_shrank) {
  dcp_test::TempDir tmp;
  const auto path = tmp.path() / "f";
  std::vector<std::byte> bytes(1 << 20, std::byte{0x5a});
  dcp_test::write_bytes(path, bytes);
  dcp::storage::MappedFile file(path);
  BOOST_TEST(!file.changed());
  BOOST_TEST_REQUIRE(::truncate(path.c_str(), 8192) == 0);
  const auto view = file.bytes();
  BOOST_TEST(static_cast<int>(view[100]) == 0x5a);
  // Past the new end: without the guard, SIGBUS. Zeros, and the change is reported from there.
  BOOST_TEST(static_cast<int>(view[view.size() - 1]) == 0);
  BOOST_TEST(static_cast<int>(view[500'000]) == 0);
  const auto why = file.changed();
  BOOST_TEST_REQUIRE(why.has_value());
  BOOST_TEST(contains(*why, "shrank"), *why);
  const auto e = dcp_test::thrown<dcp::Error>([&] { file.check_unchanged(); });
  BOOST_TEST((e.code() == dcp::Errc::data_loss));
  BOOST_TEST(e.context().file == path.string());
}

BOOST_AUTO_TEST_CASE(a_rewritten_file_is_reported) {
  dcp_test::TempDir tmp;
  const auto path = tmp.path() / "f";
  write_zeros(path, 4096);
  age(path);
  dcp::storage::MappedFile file(path);
  BOOST_TEST(!file.changed());
  {
    const int fd = ::open(path.c_str(), O_WRONLY);
    BOOST_TEST_REQUIRE(fd >= 0);
    BOOST_TEST_REQUIRE(::pwrite(fd, "x", 1, 10) == 1);
    ::close(fd);
  }
  const auto why = file.changed();
  BOOST_TEST_REQUIRE(why.has_value());
  BOOST_TEST(contains(*why, "modified"), *why);
}

BOOST_AUTO_TEST_CASE(sigbus_outside_a_mapping_goes_where_it_went) {
  dcp_test::TempDir tmp;
  const auto guarded = tmp.path() / "guarded", other = tmp.path() / "other";
  write_zeros(guarded, 4096);
  write_zeros(other, 1 << 16);
  // No handler before ours: the process dies of SIGBUS, as it would have.
  const int by_default = fault_outside_the_guard(guarded, other, SIG_DFL);
  BOOST_TEST((WIFSIGNALED(by_default) && WTERMSIG(by_default) == SIGBUS), describe(by_default));
  // A handler before ours gets the signal.
  const int handled = fault_outside_the_guard(guarded, other, [](int) { ::_exit(42); });
  BOOST_TEST((WIFEXITED(handled) && WEXITSTATUS(handled) == 42), describe(handled));
}

BOOST_AUTO_TEST_CASE(a_save_from_a_shrunk_input_publishes_nothing) {
  dcp_test::TempDir tmp;
  const auto st = tmp.path() / "four.safetensors", pt = tmp.path() / "w.pt";
  write_four_tensors(st);
  write_pt(pt, tensor_dict_pickle(1 << 20, 0, 1 << 20, 1), 4u << 20);  // 4 MiB, 4 items on 4 ranks
  for (const auto& [in, ranks] : {std::pair{st, 1}, std::pair{pt, 4}}) {
    BOOST_TEST_CONTEXT(in.filename()) {
      const auto out = tmp.path() / "out";
      const auto e = save_while_changing(in, out, ranks, [&] { BOOST_TEST_REQUIRE(::truncate(in.c_str(), 100) == 0); });
      expect_changed_error(e, in, out, "");
    }
  }
}

BOOST_AUTO_TEST_CASE(a_save_from_a_rewritten_input_publishes_nothing) {
  dcp_test::TempDir tmp;
  const auto in = tmp.path() / "four.safetensors", out = tmp.path() / "out";
  write_four_tensors(in);
  age(in);
  const auto e = save_while_changing(in, out, 1, [&] {
    const int fd = ::open(in.c_str(), O_WRONLY);
    BOOST_TEST_REQUIRE(fd >= 0);
    BOOST_TEST_REQUIRE(::pwrite(fd, "xxxx", 4, 4000) == 4);
    ::close(fd);
  });
  expect_changed_error(e, in, out, "modified");
  // Unchanged, the same file converts.
  write_four_tensors(in);
  const auto imported = dcp::checkpoint::import_file(in);
  BOOST_TEST(dcp::checkpoint::save_as_checkpoint(imported, out, {}).tensors == 4u);
}

BOOST_AUTO_TEST_CASE(a_conversion_never_follows_a_planted_temporary_link) {
  // A conversion's temporary file gets a random name created O_EXCL|O_NOFOLLOW: links planted
  // at names one could guess (an older writer's OUT.tmp-<pid>) are neither followed nor
  // removed, and a link where the file is created makes the creation fail, its target intact.
  dcp_test::TempDir tmp;
  const auto in = tmp.path() / "in.pt", ckpt = tmp.path() / "ckpt", out = tmp.path() / "out.pt";
  write_good_pt(in);
  (void)dcp::checkpoint::save_as_checkpoint(dcp::checkpoint::import_file(in), ckpt, {});
  const auto victim = tmp.path() / "victim";
  const std::vector<std::byte> precious(100, std::byte{1});
  dcp_test::write_bytes(victim, precious);
  const auto guessed = fs::path(out.string() + ".tmp-" + std::to_string(::getpid()));
  fs::create_symlink(victim, guessed);
  (void)dcp::checkpoint::convert_to_torch_save(ckpt, out);
  BOOST_TEST(fs::is_regular_file(out));
  BOOST_TEST(fs::is_symlink(guessed), "the planted link is not ours to remove");
  BOOST_TEST(dcp_test::read_bytes(victim) == precious);
  const auto linked = tmp.path() / "linked";
  fs::create_symlink(victim, linked);
  for (const bool exclusive : {true, false}) {
    const auto e = dcp_test::thrown<dcp::Error>([&] { dcp::storage::OutputFile file(linked, exclusive); });
    BOOST_TEST(e.context().file == linked.string(), e.what());
    BOOST_TEST(dcp_test::read_bytes(victim) == precious);
  }
}

BOOST_AUTO_TEST_SUITE_END()
