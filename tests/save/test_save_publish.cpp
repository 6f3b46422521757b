// The publish protocol under the surroundings a user's machine gives it. save_child (and dcpp
// itself) run under crash_shim, which kills them with SIGKILL at the k-th fsync, rename or
// unlink they make, before or after the call, for every k the save makes: afterwards the target
// holds the previous complete checkpoint or the new complete one, and whatever else is in it is
// provably the killed save's (st::save_leftovers). A save that then fails loses neither, and the
// next good save leaves exactly its checkpoint. torch 2.13 loads every survivor. Also: a
// target that is a mount point, a target below a read-only parent saved by an unprivileged
// user, a user creating files during the save, links planted where the writer works.
#include <boost/test/unit_test.hpp>

#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cstdint>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "../support/support.hpp"
#include "child_support.hpp"
#include "save_support.hpp"

using namespace save_test;

namespace {

constexpr double kMb = 1;

struct ChildRun {
  int status = 0;  // as run_capture reports it: the exit code, 128 + signal through the shell
  std::string out;
  bool killed() const { return status == 128 + SIGKILL || status == 128; }
  int exit_code() const { return status; }
};

// save_child DIR GEN under `env` (words such as "CRASH_SHIM_AT=3"; with any, under the shim).
ChildRun save_child(const fs::path& dir, std::int64_t gen, const std::string& env = {}, const std::string& args = {}) {
  std::string command = "env ";
  if (!env.empty()) command += "LD_PRELOAD=" + dcp_test::quote(CRASH_SHIM) + " " + env + " ";
  command += dcp_test::quote(SAVE_CHILD) + " " + dcp_test::quote(dir) + " " + std::to_string(gen) + " --mb " +
             std::to_string(kMb) + " " + args + " 2>&1";
  ChildRun r;
  r.out = dcp_test::run_capture(command, &r.status);
  return r;
}

// How many calls of each kind a run makes (the shim's count-only mode).
std::map<std::string, long> count_calls(const std::string& what, const fs::path& counts_file) {
  (void)what;
  std::map<std::string, long> counts;
  std::istringstream in(dcp_test::run_capture("cat " + dcp_test::quote(counts_file)));
  std::string name;
  long n = 0;
  while (in >> name >> n) counts[name] = n;
  return counts;
}

void copy_tree(const fs::path& from, const fs::path& to) {
  fs::remove_all(to);
  if (fs::exists(from)) fs::copy(from, to, fs::copy_options::recursive | fs::copy_options::copy_symlinks);
}

// Everything in `dir` besides the checkpoint `.metadata` names (and `keep`) must be provably
// the killed save's.
void only_provable_leftovers(const fs::path& dir, const std::set<std::string>& keep, const std::string& trial) {
  if (!fs::exists(dir)) return;
  std::set<std::string> named(keep.begin(), keep.end());
  if (fs::exists(dir / ".metadata")) {
    named.insert(".metadata");
    const auto md = ck::inspect(dir);
    for (const auto& [index, info] : md->storage_data) named.insert(info.relative_path);
  }
  const auto leftovers = st::save_leftovers(dir);
  const std::set<std::string> provable(leftovers.begin(), leftovers.end());
  for (const auto& name : dcp_test::list_names(dir))
    if (!named.contains(name) && !provable.contains(name))
      BOOST_ERROR(trial << ": '" << name << "' is in the target, and no record proves it the killed save's");
}

struct Survivor {
  std::string name;
  fs::path dir;
  std::int64_t gen;
};

// Kills a save of generation 2 into a copy of `base` (a missing directory when empty) at every
// fsync, rename and unlink it makes, before and after the call; checks each survivor, then a
// save that fails (no overwrite, then a file size limit), then a good save.
void kill_at_every_step(const std::string& scenario, const fs::path& base, const fs::path& work, const std::string& env,
                        std::vector<Survivor>& survivors) {
  const std::int64_t old_gen = fs::exists(base / ".metadata") ? generation_in(base, kMb, true) : -1;
  const auto counts_file = work / (scenario + ".counts");
  {
    const auto probe = work / (scenario + "-probe");
    copy_tree(base, probe);
    const auto r = save_child(probe, 2, env + " CRASH_SHIM_COUNTS=" + dcp_test::quote(counts_file));
    BOOST_TEST_REQUIRE(r.exit_code() == 0, scenario << ": the save itself fails: " << r.out);
    BOOST_TEST(generation_in(probe, kMb, true) == 2);
  }
  const auto counts = count_calls(scenario, counts_file);
  BOOST_TEST_MESSAGE(scenario << ": fsync " << counts.at("fsync") << ", rename " << counts.at("rename") << ", unlink "
                              << counts.at("unlink"));
  BOOST_TEST(counts.at("rename") >= 1);
  BOOST_TEST(counts.at("fsync") >= 4);
  int kept_old = 0, got_new = 0;
  for (const std::string op : {"fsync", "rename", "unlink"}) {
    for (long k = 1; k <= counts.at(op); ++k) {
      for (const std::string when : {"before", "after"}) {
        const auto trial = scenario + "-" + op + std::to_string(k) + "-" + when;
        const auto dir = work / trial;
        copy_tree(base, dir);
        const auto r = save_child(dir, 2, env + " CRASH_SHIM_OP=" + op + " CRASH_SHIM_AT=" + std::to_string(k) +
                                              " CRASH_SHIM_WHEN=" + when);
        BOOST_TEST(r.killed(), trial << ": not killed (status " << r.status << "): " << r.out);
        const auto gen = generation_in(dir, kMb, true);
        BOOST_TEST((gen == old_gen || gen == 2), trial << ": generation " << gen << ", expected " << old_gen << " or 2");
        (gen == 2 ? got_new : kept_old) += 1;
        only_provable_leftovers(dir, {}, trial);
        if (gen >= 0) {
          const auto copy = work / "survivors" / trial;
          fs::create_directories(copy);
          dcp_test::copy_checkpoint(dir, copy);
          survivors.push_back({trial, copy, gen});
        }
        // Saves that fail lose nothing: one refused (no overwrite), one failing mid-write.
        if (gen >= 0) {
          const auto refused = save_child(dir, 3, {}, "--no-overwrite");
          BOOST_TEST(refused.exit_code() == 3, trial << ": " << refused.out);
          BOOST_TEST(refused.out.find("already holds a checkpoint") != std::string::npos, refused.out);
          BOOST_TEST(generation_in(dir, kMb) == gen, trial << " after a refused save");
        }
        const auto failed = save_child(dir, 4, {}, "--fsize 200000");
        BOOST_TEST(failed.exit_code() == 3, trial << ": " << failed.out);
        BOOST_TEST(generation_in(dir, kMb) == gen, trial << " after a failed save");
        const auto good = save_child(dir, 5);
        BOOST_TEST(good.exit_code() == 0, trial << ": " << good.out);
        BOOST_TEST(generation_in(dir, kMb, true) == 5, trial);
        BOOST_TEST(only_the_checkpoint(dir), trial);
        fs::remove_all(dir);
      }
    }
  }
  BOOST_TEST_MESSAGE(scenario << ": " << kept_old << " kills kept the previous checkpoint, " << got_new
                              << " left the new one");
  BOOST_TEST(got_new > 0);
  BOOST_TEST(kept_old > 0);
}

}  // namespace

BOOST_AUTO_TEST_CASE(killed_at_every_step_of_publishing, *boost::unit_test::timeout(900)) {
  dcp_test::TempDir tmp;
  std::vector<Survivor> survivors;
  // A new directory; a dcpp checkpoint replaced; the same on a file system without flock and
  // renameat2 (as some NFS and FUSE mounts are); a torch 2.13 checkpoint replaced (torch's own
  // file names).
  kill_at_every_step("new", tmp.path() / "none", tmp.path(), "", survivors);
  const auto dcpp_base = tmp.path() / "dcpp-base";
  BOOST_TEST_REQUIRE(save_child(dcpp_base, 1).exit_code() == 0);
  kill_at_every_step("replace", dcpp_base, tmp.path(), "", survivors);
  kill_at_every_step("nfs", dcpp_base, tmp.path(), "CRASH_SHIM_NO_FLOCK=1 CRASH_SHIM_NO_RENAMEAT2=1", survivors);
  if (!dcp_test::python2x_available()) {
    BOOST_TEST_MESSAGE("skipping the torch-written base and the torch 2.13 load of survivors: " << dcp_test::python2x()
                                                                                               << " is missing");
    return;
  }
  const auto torch_base = tmp.path() / "torch-base";
  const auto made = dcp_test::run_capture(dcp_test::python2x() + " " +
                                          dcp_test::quote(dcp_test::source_root() / "tests/python/child_generation.py") +
                                          " " + dcp_test::quote(torch_base) + " 1 " + std::to_string(kMb) + " 2>&1");
  BOOST_TEST_REQUIRE(fs::exists(torch_base / ".metadata"), made);
  BOOST_TEST(generation_in(torch_base, kMb, true) == 1);
  kill_at_every_step("torch", torch_base, tmp.path(), "", survivors);

  boost::json::array checks;
  std::vector<std::string> names;
  std::map<std::int64_t, fs::path> bins;
  for (const auto& s : survivors) {
    checks.push_back(generation_check(s.name, s.dir, s.gen, kMb, tmp.path() / "bins" / s.name));
    names.push_back(s.name);
  }
  write_manifest(tmp.path() / "manifest.json", checks);
  run_checks(dcp_test::python2x(), "save_check.py", "load " + dcp_test::quote(tmp.path() / "manifest.json"), names);
}

// Another user creates files in the target while the save runs (at each of its fsyncs, renames
// and unlinks): every one of them is still there afterwards, and the checkpoint is complete.
BOOST_AUTO_TEST_CASE(files_created_during_an_overwrite_survive) {
  dcp_test::TempDir tmp;
  const auto dir = tmp.path() / "ckpt";
  BOOST_TEST_REQUIRE(save_child(dir, 1).exit_code() == 0);
  std::set<std::string> users;
  for (long k = 1; k <= 16; ++k) {
    const auto name = "user" + std::to_string(k) + ".txt";
    const auto r = save_child(dir, 1 + k, "CRASH_SHIM_AT=" + std::to_string(k) + " CRASH_SHIM_TOUCH=" +
                                              dcp_test::quote(dir / name));
    BOOST_TEST(r.exit_code() == 0, r.out);
    if (fs::exists(dir / name)) users.insert(name);
    BOOST_TEST(generation_in(dir, kMb, true) == 1 + k);
    BOOST_TEST(only_the_checkpoint(dir, users), "after the save with a file made at call " << k);
  }
  BOOST_TEST(users.size() >= 8u, "the shim made " << users.size() << " files");
}

// A target that is a mount point (tmpfs in a private mount namespace): saved into and replaced
// in place, its owner and mode kept. Torch's save works there; a directory swap cannot.
BOOST_AUTO_TEST_CASE(a_mount_point_target) {
  dcp_test::TempDir tmp;
  const auto mnt = tmp.path() / "mnt";
  fs::create_directories(mnt);
  const std::string child = std::string(SAVE_CHILD) + " " + mnt.string();
  int status = 0;
  const auto out = dcp_test::run_capture(
      "unshare -m sh -c " +
          dcp_test::quote("mount -t tmpfs -o size=64m none " + mnt.string() + " || exit 77; chown nobody:nogroup " +
                          mnt.string() + " && chmod 0750 " + mnt.string() + " && " + child + " 1 --mb 1 && " + child +
                          " 2 --mb 1 && stat -c 'owner=%U mode=%a' " + mnt.string() + " && ls -A " + mnt.string()) +
          " 2>&1",
      &status);
  if (WIFEXITED(status) && WEXITSTATUS(status) == 77) {
    BOOST_TEST_MESSAGE("skipping: cannot mount a tmpfs here: " << out);
    return;
  }
  BOOST_TEST(status == 0, out);
  BOOST_TEST(out.find("owner=nobody mode=750") != std::string::npos, out);
  // Generation 1's files are gone, generation 2's there: .metadata and marked names.
  BOOST_TEST(out.find(".metadata") != std::string::npos, out);
  BOOST_TEST(out.find("__0_g1_0.distcp") != std::string::npos, out);
  BOOST_TEST(out.find("__0_0.distcp") == std::string::npos, out);
}

// A target whose parent the saving user cannot write: an unprivileged user (nobody) saves into
// and replaces its own directory below a root-owned read-only parent; the directory keeps its
// owner, mode and inode.
BOOST_AUTO_TEST_CASE(a_read_only_parent) {
  dcp_test::TempDir tmp;
  ::chmod(tmp.path().c_str(), 0755);
  const auto parent = tmp.path() / "parent";
  const auto dir = parent / "ckpt";
  fs::create_directories(dir);
  BOOST_TEST_REQUIRE(dcp_test::run("chown nobody:nogroup " + dcp_test::quote(dir)) == 0);
  ::chmod(dir.c_str(), 0751);
  ::chmod(parent.c_str(), 0555);
  struct stat before {};
  BOOST_TEST_REQUIRE(::stat(dir.c_str(), &before) == 0);
  if (::geteuid() != 0) {
    BOOST_TEST_MESSAGE("skipping: becoming nobody needs root");
    return;
  }
  const std::string as_nobody = "setpriv --reuid nobody --regid nogroup --clear-groups ";
  for (int gen = 1; gen <= 3; ++gen) {
    int status = 0;
    const auto out = dcp_test::run_capture(as_nobody + dcp_test::quote(SAVE_CHILD) + " " + dcp_test::quote(dir) + " " +
                                               std::to_string(gen) + " --mb 1 2>&1",
                                           &status);
    BOOST_TEST(status == 0, "generation " << gen << ": " << out);
    BOOST_TEST(generation_in(dir, kMb, true) == gen);
    BOOST_TEST(only_the_checkpoint(dir));
  }
  struct stat after {};
  BOOST_TEST_REQUIRE(::stat(dir.c_str(), &after) == 0);
  BOOST_TEST(after.st_ino == before.st_ino);
  BOOST_TEST(after.st_uid == before.st_uid);
  BOOST_TEST((after.st_mode & 07777) == 0751u);
  ::chmod(parent.c_str(), 0755);
}

// Links and other entries planted where the writer works: never followed, never removed,
// their targets unchanged.
BOOST_AUTO_TEST_CASE(planted_links) {
  dcp_test::TempDir tmp;
  const auto victim = tmp.path() / "victim";
  const std::vector<std::byte> precious{std::byte{'p'}, std::byte{'r'}};
  dcp_test::write_bytes(victim, precious);

  // `.metadata` a link to an unrelated file: not a checkpoint to replace.
  const auto linked = tmp.path() / "linked";
  fs::create_directories(linked);
  fs::create_symlink(victim, linked / ".metadata");
  auto r = save_child(linked, 1);
  BOOST_TEST(r.exit_code() == 3, r.out);
  BOOST_TEST(r.out.find("not a regular file") != std::string::npos, r.out);
  BOOST_TEST(fs::is_symlink(linked / ".metadata"));
  BOOST_TEST((dcp_test::read_bytes(victim) == precious));

  // A FIFO as `.metadata`: refused at once, never opened (an open would wait for a writer).
  const auto fifo = tmp.path() / "fifo";
  fs::create_directories(fifo);
  BOOST_TEST_REQUIRE(::mkfifo((fifo / ".metadata").c_str(), 0644) == 0);
  r = save_child(fifo, 1);
  BOOST_TEST(r.exit_code() == 3, r.out);

  // `__0_0.distcp` a link in an empty target: the save picks other names and leaves it.
  const auto planted = tmp.path() / "planted";
  fs::create_directories(planted);
  fs::create_symlink(victim, planted / "__0_0.distcp");
  BOOST_TEST(save_child(planted, 1).exit_code() == 0);
  BOOST_TEST(generation_in(planted, kMb, true) == 1);
  BOOST_TEST(fs::is_symlink(planted / "__0_0.distcp"));
  BOOST_TEST((dcp_test::read_bytes(victim) == precious));

  // A data file of the replaced checkpoint swapped for a link: the link stays, its target too.
  const auto swapped = tmp.path() / "swapped";
  BOOST_TEST_REQUIRE(save_child(swapped, 1).exit_code() == 0);
  const auto old_files = dcp_test::list_names(swapped);
  std::string data_file;
  for (const auto& n : old_files)
    if (n.ends_with(".distcp")) data_file = n;
  fs::remove(swapped / data_file);
  fs::create_symlink(victim, swapped / data_file);
  BOOST_TEST(save_child(swapped, 2).exit_code() == 0);
  BOOST_TEST(generation_in(swapped, kMb, true) == 2);
  BOOST_TEST(fs::is_symlink(swapped / data_file));
  BOOST_TEST((dcp_test::read_bytes(victim) == precious));
}

// A record no save wrote (forged, or another program's) proves nothing: names outside the
// directory and files `.metadata` names are never removed.
BOOST_AUTO_TEST_CASE(records_prove_only_what_they_may) {
  dcp_test::TempDir tmp;
  const auto dir = tmp.path() / "ckpt";
  BOOST_TEST_REQUIRE(save_child(dir, 1).exit_code() == 0);
  const auto before = dcp_test::list_names(dir);
  dcp_test::write_bytes(tmp.path() / "outside", {std::byte{'o'}});
  const std::string id = "0123abcd-0123-4567-89ab-0123456789ab";
  auto write_text = [](const fs::path& p, const std::string& t) {
    dcp_test::write_bytes(p, std::vector<std::byte>(reinterpret_cast<const std::byte*>(t.data()),
                                                    reinterpret_cast<const std::byte*>(t.data()) + t.size()));
  };
  // Traversal in a replaced name: the whole record is refused.
  write_text(dir / (".dcpp-" + id + ".save"),
             "dcpp save record 1\nid " + id + "\nranks 1\nmarker -\nreplaces ../outside\nend\n");
  // A record naming files .metadata names: they are referenced, so they stay.
  const std::string id2 = "0123abcd-0123-4567-89ab-0123456789ac";
  std::string text2 = "dcpp save record 1\nid " + id2 + "\nranks 4\nmarker -\n";
  for (const auto& n : before) text2 += "replaces " + n + "\n";
  write_text(dir / (".dcpp-" + id2 + ".save"), text2 + "end\n");
  BOOST_TEST(save_child(dir, 2).exit_code() == 0);
  BOOST_TEST(fs::exists(tmp.path() / "outside"));
  BOOST_TEST(generation_in(dir, kMb, true) == 2);
}

namespace {

// `dcpp ARGS` under `env` (with any, under the shim); the output of both streams.
ChildRun dcpp(const std::string& args, const std::string& env = {}) {
  std::string command = "env ";
  if (!env.empty()) command += "LD_PRELOAD=" + dcp_test::quote(CRASH_SHIM) + " " + env + " ";
  ChildRun r;
  r.out = dcp_test::run_capture(command + dcp_test::quote(dcp_test::dcpp_exe()) + " " + args + " 2>&1", &r.status);
  return r;
}

// Temporary files of exports to `out` in its directory.
std::vector<fs::path> export_temps(const fs::path& out) {
  std::vector<fs::path> found;
  for (const auto& name : dcp_test::list_names(out.parent_path()))
    if (name.starts_with("." + out.filename().string() + ".dcpp-")) found.push_back(out.parent_path() / name);
  return found;
}

}  // namespace

// Exporting over an existing file, killed at every fsync, rename and unlink: the output is the
// old complete file or the new one; the next export removes what the killed one left. Without
// --overwrite (and on a file system without renameat2) an existing file is never replaced.
BOOST_AUTO_TEST_CASE(killed_exports_leave_old_or_new, *boost::unit_test::timeout(600)) {
  dcp_test::TempDir tmp;
  const auto g1 = tmp.path() / "g1", g2 = tmp.path() / "g2";
  BOOST_TEST_REQUIRE(save_child(g1, 1).exit_code() == 0);
  BOOST_TEST_REQUIRE(save_child(g2, 2).exit_code() == 0);
  for (const std::string ext : {".pt", ".safetensors"}) {
    const auto ref1 = tmp.path() / ("ref1" + ext), ref2 = tmp.path() / ("ref2" + ext);
    BOOST_TEST_REQUIRE(dcpp("convert --quiet " + dcp_test::quote(g1) + " " + dcp_test::quote(ref1)).exit_code() == 0);
    BOOST_TEST_REQUIRE(dcpp("convert --quiet " + dcp_test::quote(g2) + " " + dcp_test::quote(ref2)).exit_code() == 0);
    const auto old_bytes = dcp_test::read_bytes(ref1), new_bytes = dcp_test::read_bytes(ref2);
    const auto out = tmp.path() / "out" / ("model" + ext);
    fs::create_directories(out.parent_path());
    const auto convert = "convert --quiet --overwrite " + dcp_test::quote(g2) + " " + dcp_test::quote(out);
    const auto counts_file = tmp.path() / "export.counts";
    fs::copy_file(ref1, out, fs::copy_options::overwrite_existing);
    BOOST_TEST_REQUIRE(dcpp(convert, "CRASH_SHIM_COUNTS=" + dcp_test::quote(counts_file)).exit_code() == 0);
    const auto counts = count_calls("export", counts_file);
    int trials = 0;
    for (const std::string op : {"fsync", "rename", "unlink"})
      for (long k = 1; k <= counts.at(op); ++k)
        for (const std::string when : {"before", "after"}) {
          const auto trial = ext + " " + op + std::to_string(k) + " " + when;
          fs::copy_file(ref1, out, fs::copy_options::overwrite_existing);
          const auto r = dcpp(convert, "CRASH_SHIM_OP=" + op + " CRASH_SHIM_AT=" + std::to_string(k) +
                                           " CRASH_SHIM_WHEN=" + when);
          BOOST_TEST(r.killed(), trial << ": " << r.out);
          const auto got = dcp_test::read_bytes(out);
          BOOST_TEST((got == old_bytes || got == new_bytes), trial << ": neither the old nor the new file");
          ++trials;
          // What the killed export left is removed by the next one once it is a minute old.
          for (const auto& temp : export_temps(out)) dcp_test::run("touch -d '2 minutes ago' " + dcp_test::quote(temp));
          BOOST_TEST(dcpp(convert).exit_code() == 0);
          BOOST_TEST((dcp_test::read_bytes(out) == new_bytes), trial);
          BOOST_TEST(export_temps(out).empty(), trial << ": temporary files left");
        }
    BOOST_TEST(trials >= 4);

    // No --overwrite, on a file system without renameat2: killed or not, an existing file stays.
    fs::copy_file(ref1, out, fs::copy_options::overwrite_existing);
    const auto keep = "convert --quiet " + dcp_test::quote(g2) + " " + dcp_test::quote(out);
    auto r = dcpp(keep, "CRASH_SHIM_NO_RENAMEAT2=1");
    BOOST_TEST(r.exit_code() == 1, r.out);
    BOOST_TEST(r.out.find("exists already") != std::string::npos, r.out);
    BOOST_TEST((dcp_test::read_bytes(out) == old_bytes));
    fs::remove(out);
    r = dcpp(keep, "CRASH_SHIM_NO_RENAMEAT2=1");
    BOOST_TEST(r.exit_code() == 0, r.out);
    BOOST_TEST((dcp_test::read_bytes(out) == new_bytes));
    BOOST_TEST(export_temps(out).empty());
  }
}

// A link planted as the output: refused without --overwrite, replaced (not followed) with it.
BOOST_AUTO_TEST_CASE(exports_never_follow_a_planted_link) {
  dcp_test::TempDir tmp;
  const auto g1 = tmp.path() / "g1";
  BOOST_TEST_REQUIRE(save_child(g1, 1).exit_code() == 0);
  const auto victim = tmp.path() / "victim";
  const std::vector<std::byte> precious{std::byte{'v'}};
  dcp_test::write_bytes(victim, precious);
  const auto out = tmp.path() / "model.pt";
  fs::create_symlink(victim, out);
  auto r = dcpp("convert --quiet " + dcp_test::quote(g1) + " " + dcp_test::quote(out));
  BOOST_TEST(r.exit_code() == 1, r.out);
  BOOST_TEST(fs::is_symlink(out));
  r = dcpp("convert --quiet --overwrite " + dcp_test::quote(g1) + " " + dcp_test::quote(out));
  BOOST_TEST(r.exit_code() == 0, r.out);
  BOOST_TEST(!fs::is_symlink(out));
  BOOST_TEST((dcp_test::read_bytes(victim) == precious));
  // A directory as the output is refused even with --overwrite.
  fs::create_directories(tmp.path() / "dir.pt");
  r = dcpp("convert --quiet --overwrite " + dcp_test::quote(g1) + " " + dcp_test::quote(tmp.path() / "dir.pt"));
  BOOST_TEST(r.exit_code() == 1, r.out);
  BOOST_TEST(r.out.find("is a directory") != std::string::npos, r.out);
}
