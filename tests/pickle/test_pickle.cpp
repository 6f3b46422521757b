// Unit tests for dcp.pickle: opcodes, allow-list, limits, encoder round trips.
#define BOOST_TEST_MODULE dcp.pickle
#include <boost/test/unit_test.hpp>
#include <cstddef>
#include <string>
#include <vector>
import dcp.error;
import dcp.pickle;

namespace pk = dcp::pickle;

namespace {
// String literals with embedded NULs.
template <std::size_t N>
std::string S(const char (&text)[N]) {
  return std::string(text, N - 1);
}

std::vector<std::byte> bytes(std::string_view s) {
  std::vector<std::byte> out(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) out[i] = std::byte(static_cast<unsigned char>(s[i]));
  return out;
}

pk::Document decode(std::string_view s, const pk::AllowList& allow = {}, pk::Limits limits = {}) {
  return pk::decode(bytes(s), allow, limits);
}

// Runs decode and returns the error it must throw.
dcp::Error decode_error(std::string_view s, const pk::AllowList& allow = {}, pk::Limits limits = {}) {
  try {
    (void)decode(s, allow, limits);
  } catch (const dcp::Error& e) {
    return e;
  }
  BOOST_FAIL("decode accepted bad input");
  throw;
}
}  // namespace

BOOST_AUTO_TEST_SUITE(unit)

BOOST_AUTO_TEST_CASE(integers_of_every_width) {
  // PROTO 2, MARK, BININT1 7, BININT2 0x1234, BININT -2, LONG1 8 bytes, LONG1 9 bytes, TUPLE, STOP
  const std::string s = std::string("\x80\x02(K\x07M\x34\x12J\xfe\xff\xff\xff", 13) +
                        std::string("\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x80", 10) +
                        std::string("\x8a\x09\x01\x00\x00\x00\x00\x00\x00\x00\x01", 11) + "t.";
  auto doc = decode(s);
  const auto& t = doc.at(doc.root());
  BOOST_TEST_REQUIRE(t.items().size() == 5u);
  BOOST_TEST(doc.at(t.items()[0]).integer() == 7);
  BOOST_TEST(doc.at(t.items()[1]).integer() == 0x1234);
  BOOST_TEST(doc.at(t.items()[2]).integer() == -2);
  BOOST_TEST(doc.at(t.items()[3]).integer() == INT64_MIN);
  BOOST_TEST((doc.at(t.items()[4]).kind() == pk::NodeKind::big_integer));
}

BOOST_AUTO_TEST_CASE(containers_memo_and_sharing) {
  // {'a': [1, 2], 'b': <same list via memo>} with protocol-4 opcodes.
  const std::string s = S("\x80\x04}\x94(\x8c\x01\x61\x94]\x94(K\x01K\x02""e\x8c\x01\x62h\x02u.");
  auto doc = decode(s);
  auto a = doc.find_key(doc.root(), "a");
  auto b = doc.find_key(doc.root(), "b");
  BOOST_TEST_REQUIRE((a && b));
  BOOST_TEST(*a == *b);
  BOOST_TEST(doc.at(*a).items().size() == 2u);
}

BOOST_AUTO_TEST_CASE(globals_are_refused_unless_allowed) {
  const std::string evil = S("\x80\x02" "cposix\nsystem\nX\x05\x00\x00\x00touch\x85R.");
  auto e = decode_error(evil);
  BOOST_TEST((e.code() == dcp::Errc::permission_denied));
  BOOST_TEST(e.message().find("posix.system") != std::string::npos);
  BOOST_TEST(*e.context().byte_offset == 2u);
  auto doc = decode(evil, pk::AllowList{{"posix", "system"}});
  BOOST_TEST((doc.at(doc.root()).kind() == pk::NodeKind::call));  // recorded, never called
}

BOOST_AUTO_TEST_CASE(protocol2_builtin_names_are_mapped) {
  auto doc = decode("\x80\x02" "c__builtin__\nset\n]\x85R.", pk::AllowList{{"builtins", "set"}});
  BOOST_TEST(doc.is_global(doc.at(doc.root()).callee(), "builtins", "set"));
}

BOOST_AUTO_TEST_CASE(rejections_name_the_offset) {
  struct Case { std::string bytes; dcp::Errc code; std::size_t offset; };
  const std::vector<Case> cases = {
      {"", dcp::Errc::data_loss, 0},
      {"\x80\x02K", dcp::Errc::data_loss, 2},                       // truncated BININT1
      {"\x80\x09N.", dcp::Errc::unimplemented, 0},                   // protocol 9
      {"\x80\x02h\x05.", dcp::Errc::data_loss, 2},                   // BINGET of an unset slot
      {"\x80\x02u.", dcp::Errc::data_loss, 2},                       // SETITEMS without MARK
      {"\x80\x02.", dcp::Errc::data_loss, 2},                        // STOP on an empty stack
      {std::string("\x80\x04\x8d\xff\xff\xff\xff\xff\xff\xff\x7f", 11), dcp::Errc::data_loss, 2},  // huge BINUNICODE8
      {std::string("\x80\x02\x95\xff\xff\x00\x00\x00\x00\x00\x00N.", 13), dcp::Errc::data_loss, 2},  // frame past end
      {"\x80\x02i", dcp::Errc::unimplemented, 2},                    // INST
      {"\x80\x02N", dcp::Errc::data_loss, 3},                        // no STOP
      {"\x80\x02NQ.", dcp::Errc::permission_denied, 3},              // persistent id not allowed
  };
  for (const auto& c : cases) {
    auto e = decode_error(c.bytes);
    BOOST_TEST((e.code() == c.code), "case bytes size " << c.bytes.size() << ": " << e.what());
    BOOST_TEST(e.context().byte_offset.value_or(999) == c.offset, e.what());
  }
}

BOOST_AUTO_TEST_CASE(limits_bound_depth_and_nodes) {
  auto e = decode_error(std::string(1000, '(') + ".");
  BOOST_TEST((e.code() == dcp::Errc::out_of_range));
  pk::Limits small;
  small.max_nodes = 10;
  std::string ints;  // None is a shared node: ints make one node each
  for (int i = 0; i < 20; ++i) ints += "K\x01";
  auto e2 = decode_error(ints + ".", {}, small);
  BOOST_TEST((e2.code() == dcp::Errc::out_of_range));
}

BOOST_AUTO_TEST_CASE(self_referencing_list_decodes_without_hanging) {
  auto doc = decode(S("\x80\x02]q\x00h\x00" "a."));
  const auto& list = doc.at(doc.root());
  BOOST_TEST(list.items().size() == 1u);
  BOOST_TEST(list.items()[0] == doc.root());
  pk::Encoder enc(2);
  enc.value(doc, doc.root(), 64);  // written as Python writes it: EMPTY_LIST, PUT, GET, APPENDS
  const auto again = pk::decode(enc.finish(), {});
  BOOST_TEST(again.at(again.root()).items().size() == 1u);
  BOOST_TEST(again.at(again.root()).items()[0] == again.root());
}

BOOST_AUTO_TEST_CASE(encoder_round_trip) {
  pk::Encoder enc(2);
  enc.empty_dict();
  enc.mark();
  enc.string("n");
  enc.integer(-5000000000LL);
  enc.string("f");
  enc.floating(-0.5);
  enc.string("t");
  enc.mark();
  for (int i = 0; i < 5; ++i) enc.integer(i * 1000);
  enc.tuple_from_mark();
  enc.string("b");
  const std::byte raw[] = {std::byte{0}, std::byte{0xff}, std::byte{'a'}};
  enc.bytes(raw);
  enc.setitems_from_mark();
  const auto out = enc.finish();
  auto doc = pk::decode(out, pk::AllowList{{"_codecs", "encode"}});
  BOOST_TEST(doc.at(*doc.find_key(doc.root(), "n")).integer() == -5000000000LL);
  BOOST_TEST(doc.at(*doc.find_key(doc.root(), "f")).floating() == -0.5);
  BOOST_TEST(doc.at(*doc.find_key(doc.root(), "t")).items().size() == 5u);
  // Re-encoding the decoded tree gives the same bytes.
  pk::Encoder again(2);
  again.value(doc, doc.root());
  BOOST_TEST((again.finish() == out));
}

BOOST_AUTO_TEST_SUITE_END()
