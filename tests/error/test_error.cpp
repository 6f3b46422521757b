// Unit tests for dcp.error: context rendering and checked arithmetic.
#define BOOST_TEST_MODULE dcp.error
#include <boost/test/unit_test.hpp>
#include <cstdint>
#include <string>
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

BOOST_AUTO_TEST_SUITE_END()
