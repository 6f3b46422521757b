// Converting a checkpoint whose one tensor is 4.3 GiB in every direction stays under 512 MiB
// of peak RSS (GNU time's %M): a safetensors file to a DCP checkpoint, and that checkpoint to
// .pt, .safetensors and a Hugging Face model directory. The input is a sparse file with three
// marker rows (tests/python/huge_hf.py); torch 2.13 and the safetensors library read the
// marker rows and zero rows of every output back.
#define BOOST_TEST_MODULE dcp.convert_memory
#include <boost/test/unit_test.hpp>

#include <cstdint>
#include <filesystem>
#include <string>

#include "../support/support.hpp"

namespace fs = std::filesystem;
using dcp_test::needs_python2x;
using dcp_test::quote;

namespace {

constexpr std::int64_t kRows = 35'000, kCols = 33'000;  // float32: 4.62e9 bytes, 4.30 GiB
constexpr std::uint64_t kMaxRssKiB = 512 * 1024;

// Peak RSS in KiB of `dcpp ARGS` (which must succeed).
std::uint64_t peak_rss_kib(const std::string& args, const fs::path& scratch) {
  const auto rss_file = scratch / "rss";
  int status = 0;
  const auto out = dcp_test::run_capture("/usr/bin/time -o " + quote(rss_file) + " -f %M " + quote(dcp_test::dcpp_exe()) + " " +
                                             args + " 2>&1",
                                         &status);
  BOOST_TEST_REQUIRE(status == 0, args << ": " << out);
  return std::stoull(dcp_test::run_capture("tail -n 1 " + quote(rss_file)));
}

void check_output(const std::string& kind, const fs::path& path) {
  int status = 0;
  const auto out = dcp_test::run_capture(quote(dcp_test::python2x()) + " " +
                                             quote(dcp_test::source_root() / "tests/python/huge_hf.py") + " check " + kind +
                                             " " + quote(path) + " " + std::to_string(kRows) + " " + std::to_string(kCols) +
                                             " 2>&1",
                                         &status);
  BOOST_TEST(status == 0, kind << ": " << out);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(bounded_memory, *boost::unit_test::precondition(needs_python2x))

BOOST_AUTO_TEST_CASE(a_4_3_gib_tensor_converts_in_bounded_memory, *boost::unit_test::timeout(300)) {
  if (!fs::exists("/usr/bin/time")) {
    BOOST_TEST_MESSAGE("skipped: /usr/bin/time (GNU time) is missing");
    return;
  }
  dcp_test::TempDir tmp;
  const auto input = tmp.path() / "big.safetensors", ckpt = tmp.path() / "ckpt";
  BOOST_TEST_REQUIRE(dcp_test::run(quote(dcp_test::python2x()) + " " + quote(dcp_test::source_root() / "tests/python/huge_hf.py") +
                                   " make " + quote(input) + " " + std::to_string(kRows) + " " + std::to_string(kCols)) == 0);
  const auto import_rss = peak_rss_kib("convert --quiet " + quote(input) + " " + quote(ckpt), tmp.path());
  BOOST_TEST(import_rss < kMaxRssKiB, "safetensors -> DCP: peak RSS " << import_rss << " KiB");
  check_output("dcp", ckpt);
  fs::remove(input);
  struct Direction {
    std::string kind, name, flags;
  };
  for (const auto& d : {Direction{"pt", "out.pt", ""}, Direction{"safetensors", "out.safetensors", ""},
                        Direction{"hf", "model", "--format hf "}}) {
    const auto out = tmp.path() / d.name;
    const auto rss = peak_rss_kib("convert --quiet " + d.flags + quote(ckpt) + " " + quote(out), tmp.path());
    BOOST_TEST(rss < kMaxRssKiB, "DCP -> " << d.kind << ": peak RSS " << rss << " KiB");
    check_output(d.kind, out);
    fs::remove_all(out);
  }
}

BOOST_AUTO_TEST_SUITE_END()
