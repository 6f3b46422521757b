// Publishing a Hugging Face model directory (`dcpp convert --format hf`) under the shim: killed
// at every fsync, rename and unlink while it replaces a model of the same shards, of one file,
// or by one file, the directory reads as the old complete model or the new one; the next export
// succeeds and leaves exactly the new model's files. What is not provably the replaced model's
// (a DCP checkpoint, a link, a file in the way) is refused and left as it was.
#include <boost/test/unit_test.hpp>

#include <signal.h>
#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "../support/support.hpp"

namespace fs = std::filesystem;

namespace {

struct Run {
  int status = 0;
  std::string out;
  bool killed() const { return status == 128 + SIGKILL || status == 128; }
};

// `PROGRAM ARGS` under `env` (with any, under the shim); both streams.
Run run_under(const std::string& program, const std::string& args, const std::string& env = {}) {
  std::string command = "env ";
  if (!env.empty()) command += "LD_PRELOAD=" + dcp_test::quote(CRASH_SHIM) + " " + env + " ";
  Run r;
  r.out = dcp_test::run_capture(command + dcp_test::quote(program) + " " + args + " 2>&1", &r.status);
  return r;
}
Run dcpp(const std::string& args, const std::string& env = {}) { return run_under(dcp_test::dcpp_exe(), args, env); }

// The model a directory holds as dcpp reads it: its tensors as one safetensors file's bytes.
std::vector<std::byte> model_bytes(const fs::path& dir, const fs::path& scratch) {
  const auto file = scratch / "model-bytes.safetensors";
  const auto r = dcpp("convert --quiet --overwrite " + dcp_test::quote(dir) + " " + dcp_test::quote(file));
  if (r.status != 0) return {};
  return dcp_test::read_bytes(file);
}

std::vector<std::string> names_in(const fs::path& dir) {
  auto names = dcp_test::list_names(dir);
  std::sort(names.begin(), names.end());
  return names;
}

void copy_model(const fs::path& from, const fs::path& to) {
  fs::remove_all(to);
  fs::copy(from, to);
}

std::map<std::string, long> count_calls(const fs::path& counts_file) {
  std::map<std::string, long> counts;
  std::istringstream in(dcp_test::run_capture("cat " + dcp_test::quote(counts_file)));
  std::string name;
  long n = 0;
  while (in >> name >> n) counts[name] = n;
  return counts;
}

std::string export_hf(const fs::path& ckpt, const fs::path& out, const std::string& max_shard) {
  return "convert --quiet --overwrite --format hf --max-shard-size " + max_shard + " " + dcp_test::quote(ckpt) + " " +
         dcp_test::quote(out);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(hf_publish)

BOOST_AUTO_TEST_CASE(killed_hf_exports_leave_old_or_new, *boost::unit_test::timeout(900)) {
  dcp_test::TempDir tmp;
  const auto g1 = tmp.path() / "g1", g2 = tmp.path() / "g2";
  // Four 512 KiB tensors and a marker: 1100000-byte shards hold two tensors each.
  BOOST_TEST_REQUIRE(run_under(SAVE_CHILD, dcp_test::quote(g1) + " 1 --mb 2").status == 0);
  BOOST_TEST_REQUIRE(run_under(SAVE_CHILD, dcp_test::quote(g2) + " 2 --mb 2").status == 0);
  struct Scenario {
    std::string name, old_shard, new_shard;
  };
  for (const auto& s : {Scenario{"shards over shards", "1100000", "1100000"}, Scenario{"shards over one file", "5GB", "1100000"},
                        Scenario{"one file over shards", "1100000", "5GB"}, Scenario{"one file over one file", "5GB", "5GB"}}) {
    const auto ref_old = tmp.path() / "ref_old", ref_new = tmp.path() / "ref_new", out = tmp.path() / "out";
    fs::remove_all(ref_old);
    fs::remove_all(ref_new);
    BOOST_TEST_REQUIRE(dcpp(export_hf(g1, ref_old, s.old_shard)).status == 0);
    BOOST_TEST_REQUIRE(dcpp(export_hf(g2, ref_new, s.new_shard)).status == 0);
    const auto old_bytes = model_bytes(ref_old, tmp.path()), new_bytes = model_bytes(ref_new, tmp.path());
    BOOST_TEST_REQUIRE(!old_bytes.empty());
    BOOST_TEST_REQUIRE((old_bytes != new_bytes));
    const auto new_names = names_in(ref_new);
    const auto convert = export_hf(g2, out, s.new_shard);
    const auto counts_file = tmp.path() / "hf.counts";
    copy_model(ref_old, out);
    BOOST_TEST_REQUIRE(dcpp(convert, "CRASH_SHIM_COUNTS=" + dcp_test::quote(counts_file)).status == 0);
    const auto counts = count_calls(counts_file);
    int trials = 0;
    for (const std::string op : {"fsync", "rename", "unlink"})
      for (long k = 1; k <= counts.at(op); ++k)
        for (const std::string when : {"before", "after"}) {
          const auto trial = s.name + ": " + op + std::to_string(k) + " " + when;
          copy_model(ref_old, out);
          const auto r = dcpp(convert, "CRASH_SHIM_OP=" + op + " CRASH_SHIM_AT=" + std::to_string(k) + " CRASH_SHIM_WHEN=" + when);
          BOOST_TEST(r.killed(), trial << ": " << r.out);
          const auto got = model_bytes(out, tmp.path());
          BOOST_TEST((got == old_bytes || got == new_bytes), trial << ": neither the old nor the new model");
          ++trials;
          const auto again = dcpp(convert);
          BOOST_TEST(again.status == 0, trial << ": " << again.out);
          BOOST_TEST((model_bytes(out, tmp.path()) == new_bytes), trial);
          BOOST_TEST((names_in(out) == new_names), trial << ": files other than the new model's are left");
        }
    BOOST_TEST(trials >= 8);
  }
}

BOOST_AUTO_TEST_CASE(what_is_not_the_replaced_model_is_refused) {
  dcp_test::TempDir tmp;
  const auto g1 = tmp.path() / "g1";
  BOOST_TEST_REQUIRE(run_under(SAVE_CHILD, dcp_test::quote(g1) + " 1 --mb 2").status == 0);
  const auto out = tmp.path() / "out";
  BOOST_TEST_REQUIRE(dcpp(export_hf(g1, out, "1100000")).status == 0);
  const auto names = names_in(out);
  const auto bytes = model_bytes(out, tmp.path());

  // Without --overwrite an existing model stays.
  auto r = dcpp("convert --quiet --format hf " + dcp_test::quote(g1) + " " + dcp_test::quote(out));
  BOOST_TEST(r.status == 1, r.out);
  BOOST_TEST(r.out.find("already holds a checkpoint") != std::string::npos, r.out);
  BOOST_TEST((names_in(out) == names));

  // A DCP checkpoint is never replaced by a model directory.
  r = dcpp(export_hf(g1, g1, "1100000"));
  BOOST_TEST(r.status == 1, r.out);
  BOOST_TEST(r.out.find("holds a DCP checkpoint") != std::string::npos, r.out);

  // A shard name in the way that the index does not name, and a link where the file goes.
  const auto other = tmp.path() / "other";
  BOOST_TEST_REQUIRE(dcpp(export_hf(g1, other, "1100000")).status == 0);
  BOOST_TEST_REQUIRE(fs::exists(other / "model.safetensors.index.json"));
  dcp_test::write_bytes(other / "model-00001-of-00004.safetensors", std::vector<std::byte>(10, std::byte{120}));
  r = dcpp(export_hf(g1, other, "600000"));  // four shards
  BOOST_TEST(r.status == 1, r.out);
  BOOST_TEST(r.out.find("model-00001-of-00004.safetensors") != std::string::npos, r.out);
  BOOST_TEST(fs::file_size(other / "model-00001-of-00004.safetensors") == 10u);
  fs::remove_all(other);
  BOOST_TEST_REQUIRE(dcpp(export_hf(g1, other, "5GB")).status == 0);
  fs::rename(other / "model.safetensors", tmp.path() / "target.safetensors");
  fs::create_symlink(tmp.path() / "target.safetensors", other / "model.safetensors");
  r = dcpp(export_hf(g1, other, "5GB"));
  BOOST_TEST(r.status == 1, r.out);
  BOOST_TEST(r.out.find("not a regular file") != std::string::npos, r.out);
  BOOST_TEST(fs::is_symlink(other / "model.safetensors"));
  BOOST_TEST((names_in(out) == names));
  BOOST_TEST((model_bytes(out, tmp.path()) == bytes));
}

BOOST_AUTO_TEST_SUITE_END()
