// Crash trials: save_child is killed with SIGKILL at a random moment of its save. The target
// must then hold the previous complete checkpoint or the new complete one (or, for a new
// directory, none at all), never a `.metadata` that points at missing or short data; the next
// save into the target succeeds and removes exactly what the killed ones left. The kills at
// each step of the publish sequence are in test_save_publish.cpp.
#include <boost/test/unit_test.hpp>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "../support/support.hpp"
#include "child_values.hpp"
#include "child_support.hpp"
#include "save_support.hpp"

extern char** environ;

using namespace save_test;

namespace {

constexpr double kMb = 8;

pid_t start_child(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  std::string exe = SAVE_CHILD;
  argv.push_back(exe.data());
  std::vector<std::string> copy = args;
  for (auto& a : copy) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, exe.c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  BOOST_TEST_REQUIRE(rc == 0, "posix_spawn: " << std::strerror(rc));
  return pid;
}

int wait_child(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return status;
}

std::vector<std::string> child_args(const fs::path& dir, std::int64_t gen) {
  return {dir.string(), std::to_string(gen), "--mb", std::to_string(kMb)};
}

// Runs a child to completion; true when it saved.
bool save_generation(const fs::path& dir, std::int64_t gen) {
  const int status = wait_child(start_child(child_args(dir, gen)));
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

std::int64_t generation_in(const fs::path& dir, bool check_all_data = false) {
  return save_test::generation_in(dir, kMb, check_all_data);
}

}  // namespace

BOOST_AUTO_TEST_CASE(killed_saves_leave_old_or_new, *boost::unit_test::timeout(600)) {
  dcp_test::TempDir tmp;
  // The typical save time (a complete run, sync on) bounds the kill delays.
  const auto ow = tmp.path() / "overwritten";
  auto t0 = std::chrono::steady_clock::now();
  BOOST_TEST_REQUIRE(save_generation(ow, 1));
  BOOST_TEST_REQUIRE(save_generation(ow, 2));
  const auto typical =
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0).count() / 2;
  BOOST_TEST_MESSAGE("a save of " << kMb << " MB takes about " << typical / 1000 << " ms");
  BOOST_TEST(generation_in(ow, true) == 2);

  std::mt19937 random(12345);
  std::uniform_int_distribution<std::int64_t> delay(0, typical * 11 / 10);
  int trials = 0, old_kept = 0, new_done = 0, none = 0, finished = 0;
  std::int64_t gen = 2;
  std::vector<fs::path> new_dirs;
  for (int i = 0; i < 60; ++i) {
    const bool overwrite = i % 2 == 0;
    const auto dir = overwrite ? ow : tmp.path() / ("new" + std::to_string(i));
    if (!overwrite) new_dirs.push_back(dir);
    const auto target_gen = overwrite ? gen + 1 : 100 + i;
    const pid_t pid = start_child(child_args(dir, target_gen));
    std::this_thread::sleep_for(std::chrono::microseconds(delay(random)));
    ::kill(pid, SIGKILL);
    const int status = wait_child(pid);
    if (WIFEXITED(status)) {
      BOOST_TEST(WEXITSTATUS(status) == 0, "the child failed on its own in trial " << i);
      ++finished;
    }
    ++trials;
    const auto found = generation_in(dir);
    if (overwrite) {
      BOOST_TEST((found == gen || found == gen + 1), "trial " << i << ": generation " << found << ", expected "
                                                              << gen << " or " << gen + 1);
      if (found == gen + 1) {
        ++new_done;
        gen = found;
      } else {
        ++old_kept;
      }
    } else {
      BOOST_TEST((found == -1 || found == target_gen), "trial " << i << ": generation " << found);
      if (found == -1) {
        ++none;
        // Nothing a loader would take for a checkpoint, and whatever is there is provably the
        // killed save's.
        if (fs::exists(dir)) {
          const auto leftovers = st::save_leftovers(dir);
          for (const auto& name : dcp_test::list_names(dir))
            if (std::find(leftovers.begin(), leftovers.end(), name) == leftovers.end())
              BOOST_ERROR("leftover " << name << " in " << dir << " that no record proves to be the save's");
        }
      } else {
        ++new_done;
      }
    }
  }
  BOOST_TEST_MESSAGE(trials << " killed saves: previous kept " << old_kept << ", new complete " << new_done
                            << ", no checkpoint " << none << " (children that finished before the kill: " << finished
                            << ")");
  // The kills must have hit saves in progress, not only finished ones.
  BOOST_TEST(old_kept + none > 0);

  // A later save succeeds and removes what the killed ones left in the target: afterwards the
  // directory holds exactly its checkpoint.
  std::size_t stale = st::save_leftovers(ow).size();
  for (const auto& d : new_dirs) stale += st::save_leftovers(d).size();
  BOOST_TEST_MESSAGE(stale << " files left by killed saves");
  BOOST_TEST_REQUIRE(save_generation(ow, gen + 1));
  BOOST_TEST(generation_in(ow, true) == gen + 1);
  BOOST_TEST(only_the_checkpoint(ow));
  for (std::size_t k = 0; k < new_dirs.size(); ++k) {
    BOOST_TEST_REQUIRE(save_generation(new_dirs[k], 500 + static_cast<std::int64_t>(k)));
    BOOST_TEST(only_the_checkpoint(new_dirs[k]), new_dirs[k]);
  }
  BOOST_TEST(generation_in(new_dirs[0], true) == 500);

  // torch 2.13 loads a few survivors.
  BOOST_TEST_REQUIRE(dcp_test::python2x_available(), "torch 2.13 checks the survivors: " << dcp_test::python2x() << " is missing");
  boost::json::array checks;
  for (std::size_t k = 0; k < 3; ++k) {
    const auto& dir = k == 0 ? ow : new_dirs[k];
    checks.push_back(generation_check("survivor" + std::to_string(k), dir, generation_in(dir), kMb,
                                      tmp.path() / ("bins" + std::to_string(k))));
  }
  write_manifest(tmp.path() / "manifest.json", checks);
  run_checks(dcp_test::python2x(), "save_check.py", "load " + dcp_test::quote(tmp.path() / "manifest.json"),
             {"survivor0", "survivor1", "survivor2"});
}
