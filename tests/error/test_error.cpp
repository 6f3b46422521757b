// Unit tests for dcp.error: context rendering, checked arithmetic and parallel_for.
#define BOOST_TEST_MODULE dcp.error
#include <boost/test/unit_test.hpp>
#include <atomic>
#include <cstdint>
#include <string>
#include <vector>
import dcp.error;

BOOST_AUTO_TEST_SUITE(unit)

BOOST_AUTO_TEST_CASE(renders_context_outer_first) {
  dcp::Error e(dcp::Errc::data_loss, "truncated record");
  e.at_offset(10).for_key("model.w").in_file("/ck/__0_0.distcp").add_offset(100);
  BOOST_TEST(std::string(e.what()) == "/ck/__0_0.distcp: key 'model.w': byte 110: truncated record");
  BOOST_TEST(e.message() == "truncated record");
  BOOST_TEST(dcp::errc_name(e.code()) == "data_loss");
}

BOOST_AUTO_TEST_CASE(inner_context_wins) {
  dcp::Error e(dcp::Errc::io, "boom");
  e.in_file("inner").in_file("outer").at_offset(1).at_offset(2);
  BOOST_TEST(e.context().file == "inner");
  BOOST_TEST(*e.context().byte_offset == 1u);
}

BOOST_AUTO_TEST_CASE(checked_arithmetic) {
  BOOST_TEST(!dcp::checked_add(UINT64_MAX, 1).has_value());
  BOOST_TEST(*dcp::checked_mul(1u << 20, 1u << 20) == (std::uint64_t{1} << 40));
  BOOST_CHECK_THROW(dcp::mul_or_throw(UINT64_MAX, 2, "numel"), dcp::Error);
}

BOOST_AUTO_TEST_CASE(result_carries_error) {
  auto r = dcp::capture([]() -> int { throw dcp::Error(dcp::Errc::not_found, "x"); });
  BOOST_TEST(!r.ok());
  BOOST_TEST((r.error().code() == dcp::Errc::not_found));
  auto ok = dcp::capture([] { return 7; });
  BOOST_TEST(ok.value() == 7);
}

// Small work runs in order on this thread; large work on several threads, every item once.
BOOST_AUTO_TEST_CASE(parallel_for_runs_every_item) {
  std::vector<std::size_t> order;
  dcp::parallel_for(5, 10, [&](std::size_t i) { order.push_back(i); });
  BOOST_TEST((order == std::vector<std::size_t>{0, 1, 2, 3, 4}));
  std::vector<std::atomic<int>> runs(10000);
  dcp::parallel_for(runs.size(), std::uint64_t{1} << 20, [&](std::size_t i) { ++runs[i]; });
  for (const auto& r : runs) BOOST_TEST(r.load() == 1);
  dcp::parallel_for(0, std::uint64_t{1} << 20, [](std::size_t) { throw dcp::Error(dcp::Errc::internal, "never"); });
}

// Whatever the threads do, the error is the one of the lowest item that fails, as in a loop.
BOOST_AUTO_TEST_CASE(parallel_for_reports_the_first_failing_item) {
  for (std::uint64_t work : {std::uint64_t{1}, std::uint64_t{1} << 20})
    for (int trial = 0; trial < 20; ++trial) {
      try {
        dcp::parallel_for(1000, work, [](std::size_t i) {
          if (i == 37 || i == 500 || i == 999) throw dcp::Error(dcp::Errc::data_loss, "item " + std::to_string(i));
        });
        BOOST_FAIL("no error");
      } catch (const dcp::Error& e) {
        BOOST_TEST(e.message() == "item 37");
        BOOST_TEST((e.code() == dcp::Errc::data_loss));
      }
    }
}

BOOST_AUTO_TEST_SUITE_END()
