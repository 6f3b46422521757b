// dcp.pickle under hostile input: memory proportional to the input whatever the
// memo shares, the memory budget, and an encoder that keeps sharing instead of expanding it.
// Time and peak RSS of the same inputs through dcpp are measured with make_hostile, not here.
#include <boost/test/unit_test.hpp>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "hostile.hpp"
import dcp.error;
import dcp.pickle;

namespace pk = dcp::pickle;

namespace {

std::vector<std::byte> bytes(std::string_view s) {
  std::vector<std::byte> out(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) out[i] = std::byte(static_cast<unsigned char>(s[i]));
  return out;
}
// A string literal with embedded NULs.
template <std::size_t N>
std::vector<std::byte> lit(const char (&text)[N]) {
  return bytes(std::string_view(text, N - 1));
}

dcp::Error decode_error(const std::vector<std::byte>& in, const pk::Limits& limits = {}) {
  try {
    (void)pk::decode(in, {}, limits);
  } catch (const dcp::Error& e) {
    return e;
  }
  BOOST_FAIL("decode accepted the input");
  throw;
}

dcp::Error encode_error(const pk::Document& doc, std::size_t max_depth = 256) {
  pk::Encoder e(2);
  try {
    e.value(doc, doc.root(), max_depth);
  } catch (const dcp::Error& err) {
    return err;
  }
  BOOST_FAIL("the encoder accepted the document");
  throw;
}

pk::Document round_trip(const pk::Document& doc) {
  pk::Encoder e(2);
  e.value(doc, doc.root());
  return pk::decode(e.finish(), {});
}

constexpr std::size_t kSlotBlockBytes = 4096 * 16;  // one block of node slots

}  // namespace

BOOST_AUTO_TEST_SUITE(budgets)

BOOST_AUTO_TEST_CASE(none_true_false_and_empty_tuple_are_shared_nodes) {
  const auto doc = pk::decode(lit("\x80\x02(N\x88\x89)NN)t."), {});
  const auto items = doc.at(doc.root()).items();
  BOOST_TEST_REQUIRE(items.size() == 7u);
  BOOST_TEST(items[0] == pk::Document::kNone);
  BOOST_TEST(items[1] == pk::Document::kTrue);
  BOOST_TEST(items[2] == pk::Document::kFalse);
  BOOST_TEST(items[3] == pk::Document::kEmptyTuple);
  BOOST_TEST((items[4] == items[0] && items[5] == items[0] && items[6] == items[3]));
  BOOST_TEST(doc.at(items[1]).boolean());
  BOOST_TEST(!doc.at(items[2]).boolean());
  BOOST_TEST(!doc.at(items[0]).offset().has_value());  // shared: no offset of its own
  BOOST_TEST(doc.at(doc.root()).offset().value() == 10u);  // the TUPLE opcode
  BOOST_TEST(doc.size() == 5u);  // the four shared nodes and the tuple
  BOOST_TEST(doc.stop_offset() == 11u);
}

BOOST_AUTO_TEST_CASE(a_flood_of_none_makes_no_nodes) {
  const auto in = dcp_hostile::none_flood(std::size_t{1} << 20);
  const auto doc = pk::decode(in, {});
  BOOST_TEST(doc.size() == 4u);
  BOOST_TEST(doc.root() == pk::Document::kNone);
  BOOST_TEST(doc.memory_bytes() < 2 * kSlotBlockBytes);
  BOOST_TEST(doc.stop_offset() == in.size() - 1);
}

BOOST_AUTO_TEST_CASE(a_flood_of_empty_lists_costs_16_bytes_a_list) {
  const std::size_t n = std::size_t{1} << 20;
  const auto doc = pk::decode(dcp_hostile::empty_list_flood(n), {});
  BOOST_TEST(doc.size() == n + 4);
  BOOST_TEST(doc.memory_bytes() <= 16 * n + 2 * kSlotBlockBytes + 8 * (n / 4096 + 64));
  BOOST_TEST(doc.at(doc.root()).offset().value() == n + 1);  // the last EMPTY_LIST
}

// The input's size bounds the values, not a fixed count: a `.metadata` of 8,192 ranks holds
// more than 2^26 of them (the old cap; 1 GiB of document here).
BOOST_AUTO_TEST_CASE(values_are_bounded_by_the_input_not_a_fixed_count) {
  const std::size_t n = (std::size_t{1} << 26) + 1;
  const auto doc = pk::decode(dcp_hostile::empty_list_flood(n), {});
  BOOST_TEST(doc.size() == n + 4);  // (an explicit cap still holds: limits_bound_depth_and_nodes)
}

BOOST_AUTO_TEST_CASE(memory_budget_is_resource_exhausted_at_the_opcode) {
  // One BINUNICODE of 1 MiB under a budget of one byte per input byte: the opcode that
  // crosses it is named.
  const std::size_t len = std::size_t{1} << 20;
  std::string s("\x80\x02N\x8c\x01xX", 7);
  for (int i = 0; i < 4; ++i) s.push_back(static_cast<char>((len >> (8 * i)) & 0xFF));
  s += std::string(len, 'a') + "\x87.";
  pk::Limits limits;
  limits.memory_per_byte = 1;
  limits.memory_floor = 0;
  const auto e = decode_error(bytes(s), limits);
  BOOST_TEST((e.code() == dcp::Errc::resource_exhausted), e.what());
  BOOST_TEST(e.context().byte_offset.value_or(0) == 6u, e.what());
  // The same input within the default budget decodes.
  BOOST_TEST((pk::decode(bytes(s), {}).at(0).kind() == pk::NodeKind::none));

  // A flood of EMPTY_LIST crosses a budget of 8 bytes a byte at an EMPTY_LIST, between the
  // first list that cannot fit and the last that could.
  limits.memory_per_byte = 8;
  const auto flood = dcp_hostile::empty_list_flood(std::size_t{1} << 20);
  const auto e2 = decode_error(flood, limits);
  BOOST_TEST((e2.code() == dcp::Errc::resource_exhausted), e2.what());
  const auto at = e2.context().byte_offset.value_or(0);
  BOOST_TEST_REQUIRE(at < flood.size());
  BOOST_TEST((flood[at] == std::byte{']'}));
  BOOST_TEST(at + 8192 >= 8 * flood.size() / 24);  // at most ~24 bytes a list (node, stack, blocks)
  BOOST_TEST(at <= 8 * flood.size() / 16 + 2);
}

BOOST_AUTO_TEST_CASE(base_offset_shifts_every_offset) {
  pk::Limits limits;
  limits.base_offset = 1000;
  const auto doc = pk::decode(lit("\x80\x02]K\x05" "a."), {}, limits);
  BOOST_TEST(doc.at(doc.root()).offset().value() == 1002u);
  BOOST_TEST(doc.stop_offset() == 1006u);
  const auto e = decode_error(lit("\x80\x02K"), limits);
  BOOST_TEST(e.context().byte_offset.value_or(0) == 1002u);
}

BOOST_AUTO_TEST_CASE(memo_indices_far_apart_cost_nothing) {
  // LONG_BINPUT 0x7fffffff and LONG_BINGET of it: no dense memo of 2^31 slots.
  const auto doc = pk::decode(lit("\x80\x02K\x07r\xff\xff\xff\x7fj\xff\xff\xff\x7f\x86."), {});
  const auto items = doc.at(doc.root()).items();
  BOOST_TEST_REQUIRE(items.size() == 2u);
  BOOST_TEST(items[0] == items[1]);
  // MEMOIZE numbers the memo by its size, dense or not.
  const auto doc2 = pk::decode(lit("\x80\x04K\x01\x94K\x02\x94" "0h\x01h\x00\x86."), {});
  const auto items2 = doc2.at(doc2.root()).items();
  BOOST_TEST(doc2.at(items2[0]).integer() == 2);
  BOOST_TEST(doc2.at(items2[1]).integer() == 1);
}

BOOST_AUTO_TEST_CASE(encoder_keeps_a_dag_a_dag) {
  // 40 levels of [L, L]: 2^40 leaves as a tree; the DAG re-encodes in about its own size.
  const auto in = dcp_hostile::dag_list_pickle(40);
  const auto doc = pk::decode(in, {});
  pk::Encoder e(2);
  e.value(doc, doc.root());
  const auto out = e.finish();
  BOOST_TEST(out.size() <= 2 * in.size());
  const auto again = pk::decode(out, {});
  pk::NodeId level = again.root();
  int depth = 0;
  while (!again.at(level).items().empty()) {
    const auto items = again.at(level).items();
    BOOST_TEST_REQUIRE(items.size() == 2u);
    BOOST_TEST_REQUIRE(items[0] == items[1]);
    level = items[0];
    ++depth;
  }
  BOOST_TEST(depth == 40);
}

BOOST_AUTO_TEST_CASE(encoder_writes_cycles_as_python_does) {
  // A list that holds itself (after 3 DAG levels).
  const auto cyclic = pk::decode(dcp_hostile::dag_list_pickle(3, true), {});
  const auto again = round_trip(cyclic);
  const auto top = again.at(again.root()).items();
  BOOST_TEST_REQUIRE(top.size() == 3u);
  BOOST_TEST(top[2] == again.root());
  BOOST_TEST(top[0] == top[1]);

  // T = (L,), L = [T]: the tuple is written inside L first, the outer copy dropped (POP) and
  // fetched by GET.
  const auto tuple_cycle = pk::decode(dcp_hostile::tuple_cycle_pickle(), {});
  pk::Encoder e(2);
  e.value(tuple_cycle, tuple_cycle.root());
  const auto out = e.finish();
  const std::string text(reinterpret_cast<const char*>(out.data()), out.size());
  BOOST_TEST(text.find("0h") != std::string::npos, "POP then BINGET of the tuple");
  const auto t = pk::decode(out, {});
  const auto root = t.at(t.root());
  BOOST_TEST_REQUIRE((root.kind() == pk::NodeKind::tuple && root.items().size() == 1u));
  const auto list = t.at(root.items()[0]);
  BOOST_TEST_REQUIRE((list.kind() == pk::NodeKind::list && list.items().size() == 1u));
  BOOST_TEST(list.items()[0] == t.root());
}

BOOST_AUTO_TEST_CASE(encoder_refuses_a_cycle_through_sets_and_tuples_only) {
  // S = set(); T = (S,); S |= {T}: Python cannot pickle it with protocol 2 either.
  const auto doc = pk::decode(lit("\x80\x04\x8fq\x00h\x00\x85q\x01" "0(h\x01\x90."), {});
  const auto err = encode_error(doc, 64);
  BOOST_TEST((err.code() == dcp::Errc::out_of_range), err.what());
}

BOOST_AUTO_TEST_CASE(encoder_output_is_bounded) {
  // A hand-built document (no source size: its node count stands in) of three 600 KB
  // strings: the output budget (32 bytes a node + 1 MiB) stops the third.
  pk::Document doc;
  const std::string big(600 << 10, 'x');
  std::vector<pk::NodeId> items;
  for (int i = 0; i < 3; ++i) items.push_back(doc.add_text(pk::NodeKind::string, 0, big));
  doc.set_root(doc.add_container(pk::NodeKind::list, 0, items));
  const auto err = encode_error(doc);  // 1.8 MB from 8 nodes
  BOOST_TEST((err.code() == dcp::Errc::resource_exhausted), err.what());
}

BOOST_AUTO_TEST_CASE(encoder_keeps_appended_and_set_items_of_objects_apart) {
  const pk::AllowList allow{{"collections", "OrderedDict"}};
  // OrderedDict() with APPENDS (as a list subclass would have) and with SETITEMS.
  const auto appended = pk::decode(lit("\x80\x02" "ccollections\nOrderedDict\n)R(K\x01K\x02K\x03" "e."), allow);
  pk::Encoder e(2);
  e.value(appended, appended.root());
  const auto again = pk::decode(e.finish(), allow);
  BOOST_TEST(again.at(again.root()).has_appended_items());
  BOOST_TEST(!again.at(again.root()).has_set_items());
  BOOST_TEST(again.at(again.root()).items().size() == 3u);
  // Both kinds cannot be told apart again: refused, not written as odd SETITEMS.
  const auto both = pk::decode(lit("\x80\x02" "ccollections\nOrderedDict\n)R(K\x01" "e(K\x02K\x03u."), allow);
  const auto err = encode_error(both);
  BOOST_TEST((err.code() == dcp::Errc::unimplemented), err.what());
}

BOOST_AUTO_TEST_CASE(encoding_one_value_costs_that_value_not_its_document) {
  // One document of a million values, 3000 of them written one by one (as dcpp convert
  // FILE.pt CKPT_DIR re-encodes each object of a file's data.pkl): the walk must not touch
  // per-document arrays for each value (that was 3000 × 1M slots, tens of seconds).
  pk::Document doc;
  std::vector<pk::NodeId> items;
  for (int i = 0; i < 1'000'000; ++i) items.push_back(doc.add_integer(static_cast<std::uint64_t>(i), i));
  doc.set_root(doc.add_container(pk::NodeKind::list, 0, items));
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < 3000; ++i) {
    pk::Encoder e(2);
    e.value(doc, items[static_cast<std::size_t>(i) * 300]);
    BOOST_TEST_REQUIRE(e.finish().size() < 16u);
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  BOOST_TEST(seconds < 2.0, seconds << " s for 3000 small values");
}

BOOST_AUTO_TEST_SUITE_END()
