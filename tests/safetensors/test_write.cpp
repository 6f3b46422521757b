// Hugging Face model directories that dcpp writes (`dcpp convert --format hf`), judged by the
// libraries that define them: huggingface_hub's split_torch_state_dict_into_shards for the
// file names, the split and the index; safetensors.torch.load_file for every shard; torch
// 2.13's HuggingFaceStorageReader for the whole model (tests/python/check_hf_write.py).
#include <boost/test/unit_test.hpp>

#include <filesystem>
#include <string>

#include "../support/support.hpp"

namespace fs = std::filesystem;
using dcp_test::needs_python2x;
using dcp_test::quote;

BOOST_AUTO_TEST_SUITE(hf_write, *boost::unit_test::precondition(needs_python2x))

// A torch 2.13 checkpoint of many dtypes and sizes at shard limits that give one file, a few
// shards, tensors larger than the limit, and one tensor per shard.
BOOST_AUTO_TEST_CASE(shards_and_index_as_huggingface_hub_writes_them) {
  dcp_test::TempDir tmp;
  const auto script = quote(dcp_test::source_root() / "tests/python/check_hf_write.py");
  const auto ckpt = tmp.path() / "ckpt";
  BOOST_TEST_REQUIRE(dcp_test::run(quote(dcp_test::python2x()) + " " + script + " make " + quote(ckpt) + " 2>/dev/null") == 0);
  for (const std::string max : {"5000000000", "100000", "70000", "60000", "1"}) {
    BOOST_TEST_CONTEXT("--max-shard-size " << max) {
      const auto out = tmp.path() / ("out" + max);
      const auto r = dcp_test::run_dcpp("convert --quiet --format hf --max-shard-size " + max + " " + quote(ckpt) + " " + quote(out),
                                        tmp.path());
      BOOST_TEST_REQUIRE(r.status == 0, r.err);
      int status = 0;
      const auto check = dcp_test::run_capture(quote(dcp_test::python2x()) + " " + script + " check " + quote(ckpt) + " " +
                                                   quote(out) + " " + max + " 2>&1",
                                               &status);
      BOOST_TEST(status == 0, check);
      BOOST_TEST(check.find("FAIL") == std::string::npos, check);
    }
  }
  // The default limit is huggingface_hub's "5GB": one file here.
  const auto r = dcp_test::run_dcpp("convert --quiet --format hf " + quote(ckpt) + " " + quote(tmp.path() / "default"), tmp.path());
  BOOST_TEST_REQUIRE(r.status == 0, r.err);
  BOOST_TEST(dcp_test::list_names(tmp.path() / "default") == std::vector<std::string>{"model.safetensors"});
}

// torch's per-rank files (save_distributed, 2 and 4 ranks, with and without its own
// consolidation) consolidated by dcpp into a model directory hold exactly what torch's
// consolidate_safetensors_files makes of them.
BOOST_AUTO_TEST_CASE(consolidation_equals_torch_consolidate_safetensors_files) {
  dcp_test::TempDir tmp;
  const auto script = quote(dcp_test::source_root() / "tests/python/check_hf_write.py");
  for (const std::string name : {"hf_2ranks", "hf_4ranks", "hf_4ranks_cons_sharded"}) {
    BOOST_TEST_CONTEXT(name) {
      const auto in = dcp_test::hf_case_path(dcp_test::hf_case(name));
      const auto out = tmp.path() / name;
      const auto r = dcp_test::run_dcpp("convert --quiet --format hf --max-shard-size 20KB " + quote(in) + " " + quote(out), tmp.path());
      BOOST_TEST_REQUIRE(r.status == 0, r.err);
      int status = 0;
      const auto check = dcp_test::run_capture(
          quote(dcp_test::python2x()) + " " + script + " consolidated " + quote(in) + " " + quote(out) + " 2>&1", &status);
      BOOST_TEST(status == 0, check);
      BOOST_TEST(check.find("FAIL") == std::string::npos, check);
    }
  }
}

// Sizes as Hugging Face spells them, and nonsense refused as a usage error.
BOOST_AUTO_TEST_CASE(max_shard_size_units) {
  dcp_test::TempDir tmp;
  const auto& dir = dcp_test::hf_case("st_repo");
  const auto in = quote(dcp_test::hf_case_path(dir));
  for (const std::string bad : {"0", "5XB", "GB", "-1", "5 GB"}) {
    const auto r = dcp_test::run_dcpp("convert --format hf --max-shard-size '" + bad + "' " + in + " " + quote(tmp.path() / "x"), tmp.path());
    BOOST_TEST(r.status == 2, bad << ": " << r.err);
  }
  for (const std::string good : {"5GB", "1KB", "1KiB", "3mb", "1000"}) {
    const auto out = tmp.path() / ("ok" + good);
    const auto r = dcp_test::run_dcpp("convert --quiet --format hf --max-shard-size " + good + " " + in + " " + quote(out), tmp.path());
    BOOST_TEST(r.status == 0, good << ": " << r.err);
  }
}

BOOST_AUTO_TEST_SUITE_END()
