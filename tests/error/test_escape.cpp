// dcp::escape_text and dcp::append_escaped against the spelling README documents, as
// tests/python/terminal_text.py writes it from the documentation (Python's strict UTF-8
// decoder says what is valid UTF-8): byte strings built from controls, C1 characters, stray
// and truncated sequences, overlong forms, surrogates, code points past U+10FFFF and text
// that must stay as it is; each also clamped at every length.
#include <boost/test/unit_test.hpp>
#include <cstddef>
#include <cstdio>
#include <random>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "support.hpp"
import dcp.error;

using namespace std::string_view_literals;

namespace {

std::string hex(std::string_view bytes) {
  std::string out;
  char two[3];
  for (const char c : bytes) {
    std::snprintf(two, sizeof two, "%02x", static_cast<unsigned>(static_cast<unsigned char>(c)));
    out += two;
  }
  return out;
}

std::string unhex(std::string_view text) {
  std::string out;
  for (std::size_t i = 0; i + 1 < text.size(); i += 2) out += static_cast<char>(std::stoi(std::string(text.substr(i, 2)), nullptr, 16));
  return out;
}

// "u1,u2,..." (each unit in hex) as its units.
std::vector<std::string> units_of(const std::string& field) {
  std::vector<std::string> units;
  std::istringstream in(field);
  for (std::string unit; std::getline(in, unit, ',');) units.push_back(unhex(unit));
  return units;
}

std::vector<std::string> inputs() {
  const std::vector<std::string_view> pieces = {
      "a"sv,        "\\"sv,           "'"sv,           "\0"sv,           "\x1b"sv,         "["sv,            "\n"sv,
      "\r"sv,       "\t"sv,           "\x7f"sv,        "\x01"sv,         "\x1f"sv,         "\xc2\x80"sv,     "\xc2\x9b"sv,
      "\xc2\x9f"sv, "\xc2\xa0"sv,     "\xc3\xbc"sv,    "\x9b"sv,         "\x80"sv,         "\xff"sv,         "\xfe"sv,
      "\xc0\xaf"sv, "\xc1\xbf"sv,     "\xe0\x80\xaf"sv, "\xe0\xa0\x80"sv, "\xed\xa0\x80"sv, "\xed\xb3\xbf"sv, "\xed\x9f\xbf"sv,
      "\xee\x80\x80"sv, "\xef\xbf\xbf"sv, "\xe2\x9c\x93"sv, "\xe2\x9c"sv, "\xf0\x9f\x98\x80"sv, "\xf0\x9f\x98"sv,
      "\xf4\x8f\xbf\xbf"sv, "\xf4\x90\x80\x80"sv, "\xf5\x80\x80\x80"sv, "\xf0\x80\x80\x80"sv, "\xe2\x80\xae"sv};
  std::vector<std::string> out;
  for (const auto p : pieces) out.emplace_back(p);
  std::mt19937 rng(20240601);
  for (int i = 0; i < 3000; ++i) {
    std::string s;
    const int n = 1 + static_cast<int>(rng() % 8);
    for (int k = 0; k < n; ++k) {
      if (rng() % 4 == 0) s += static_cast<char>(rng() % 256);  // any byte at all
      else s += pieces[rng() % pieces.size()];
    }
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(escape)

BOOST_AUTO_TEST_CASE(spells_what_readme_documents) {
  dcp_test::TempDir tmp;
  const auto cases = inputs();
  std::string lines;
  for (const auto& s : cases) lines += hex(s) + "\n";
  const auto file = tmp.path() / "inputs.hex";
  dcp_test::write_bytes(file, std::vector<std::byte>(reinterpret_cast<const std::byte*>(lines.data()),
                                                      reinterpret_cast<const std::byte*>(lines.data() + lines.size())));
  int status = 0;
  const auto expected = dcp_test::run_capture(
      dcp_test::python() + " " + dcp_test::quote(dcp_test::source_root() / "tests/python/terminal_text.py") + " " +
          dcp_test::quote(file),
      &status);
  BOOST_TEST_REQUIRE(status == 0);
  std::istringstream in(expected);
  std::size_t checked = 0;
  for (const auto& s : cases) {
    std::string line;
    BOOST_TEST_REQUIRE(static_cast<bool>(std::getline(in, line)), "the oracle gave " << checked << " lines");
    const auto tab = line.find('\t');
    BOOST_TEST_REQUIRE(tab != std::string::npos);
    const auto name_units = units_of(line.substr(0, tab));
    const auto message_units = units_of(line.substr(tab + 1));
    std::string name, message;
    for (const auto& u : name_units) name += u;
    for (const auto& u : message_units) message += u;
    BOOST_TEST(dcp::escape_text(s) == name, hex(s));
    BOOST_TEST(dcp::escape_text(s, dcp::Escape::message) == message, hex(s));
    // Clamped at every length: whole units that fit, then "..." when something was left out.
    for (std::size_t max = 0; max <= name.size(); ++max) {
      std::string want;
      std::size_t taken = 0;
      while (taken < name_units.size() && want.size() + name_units[taken].size() <= max) want += name_units[taken++];
      if (taken < name_units.size()) want += "...";
      std::string got = "prefix:";
      dcp::append_escaped(got, s, dcp::Escape::name, max);
      BOOST_TEST(got == "prefix:" + want, hex(s) << " at " << max);
    }
    ++checked;
  }
  BOOST_TEST(checked == cases.size());
}

// The one-line error: each part escaped, the message keeping its backslashes.
BOOST_AUTO_TEST_CASE(error_lines_escape_every_part) {
  dcp::Error e(dcp::Errc::data_loss, "bad \\x41 \x1b[2J\nend");
  e.for_key("k\x1b]0;t\x07\\").in_file("/d\n/f\xff").at_offset(3);
  BOOST_TEST(std::string(e.what()) == "/d\\n/f\\xff: key 'k\\x1b]0;t\\x07\\\\': byte 3: bad \\x41 \\x1b[2J\\nend");
  BOOST_TEST(e.context().key == "k\x1b]0;t\x07\\");  // the context keeps the bytes
}

BOOST_AUTO_TEST_SUITE_END()
