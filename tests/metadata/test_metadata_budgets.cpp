// dcp.metadata's decode budget: a torch.Size of more than 64 dims and memo
// sharing that would multiply one chunk or storage entry are refused with resource_exhausted,
// naming the key and the byte offset of the shared value; pickle floods stop at the pickle
// budget. Time and peak RSS through dcpp are measured with make_hostile, not here.
#include <boost/test/unit_test.hpp>
#include <cstddef>
#include <span>
#include <string>
#include <vector>

#include "hostile.hpp"
import dcp.error;
import dcp.metadata;

namespace md = dcp::metadata;

namespace {

dcp::Error decode_error(const std::vector<std::byte>& bytes) {
  try {
    (void)md::decode_metadata(bytes);
  } catch (const dcp::Error& e) {
    return e;
  }
  BOOST_FAIL("decode_metadata accepted the input");
  throw;
}

bool mentions(const dcp::Error& e, std::string_view text) { return e.message().find(text) != std::string::npos; }

}  // namespace

BOOST_AUTO_TEST_SUITE(budgets)

BOOST_AUTO_TEST_CASE(a_tensor_of_65_dims_is_refused_at_its_size) {
  dcp_hostile::SharedChunkLayout at;
  const auto e = decode_error(dcp_hostile::shared_chunk_metadata(1, 65, &at));
  BOOST_TEST((e.code() == dcp::Errc::resource_exhausted), e.what());
  BOOST_TEST(e.context().key == "w");
  BOOST_TEST(e.context().byte_offset.value_or(0) == at.tensor_size, e.what());
  BOOST_TEST(mentions(e, "65 dims"), e.what());
  // 64 dims decode.
  const auto m = md::decode_metadata(dcp_hostile::shared_chunk_metadata(1, 64));
  BOOST_TEST(m.items.at(0).tensor().size.size() == 64u);
}

BOOST_AUTO_TEST_CASE(sharing_within_the_budget_decodes) {
  // 1000 references to one 64-dim chunk: ~1.1 MB of shapes from 3 KB, inside the floor.
  const auto m = md::decode_metadata(dcp_hostile::shared_chunk_metadata(1000, 64, nullptr, 1000));
  BOOST_TEST(m.items.at(0).tensor().chunks.size() == 1000u);
  BOOST_TEST(m.storage_data.size() == 1000u);
}

BOOST_AUTO_TEST_CASE(a_chunk_referenced_40000_times_exhausts_the_budget) {
  dcp_hostile::SharedChunkLayout at;
  const auto bytes = dcp_hostile::shared_chunk_metadata(40000, 64, &at);
  const auto e = decode_error(bytes);
  BOOST_TEST((e.code() == dcp::Errc::resource_exhausted), e.what());
  BOOST_TEST(e.context().key == "w");
  // The offset of the shared chunk, the reference that ran out in the message.
  BOOST_TEST(e.context().byte_offset.value_or(0) == at.chunk, e.what());
  BOOST_TEST(mentions(e, "at chunk "), e.what());
  BOOST_TEST(mentions(e, " of 40000"), e.what());
}

BOOST_AUTO_TEST_CASE(a_storage_entry_referenced_40000_times_exhausts_the_budget) {
  dcp_hostile::SharedChunkLayout at;
  const auto e = decode_error(dcp_hostile::shared_chunk_metadata(2, 64, &at, 40000));
  BOOST_TEST((e.code() == dcp::Errc::resource_exhausted), e.what());
  BOOST_TEST(e.context().key == "w");  // the MetadataIndex's fqn
  BOOST_TEST(e.context().byte_offset.value_or(0) == at.index, e.what());
  BOOST_TEST(mentions(e, "at storage_data entry "), e.what());
  BOOST_TEST(mentions(e, " of 40000"), e.what());
}

BOOST_AUTO_TEST_CASE(pickle_floods_stop_within_the_pickle_budget) {
  const std::size_t n = std::size_t{1} << 21;
  const auto none = decode_error(dcp_hostile::none_flood(n));  // no nodes: decodes to None
  BOOST_TEST((none.code() == dcp::Errc::data_loss), none.what());
  BOOST_TEST(none.context().byte_offset.value_or(0) == n + 2, none.what());  // the STOP that returned it

  const auto lists = dcp_hostile::empty_list_flood(n);
  const auto e = decode_error(lists);
  BOOST_TEST((e.code() == dcp::Errc::resource_exhausted), e.what());
  const auto at = e.context().byte_offset.value_or(0);
  BOOST_TEST_REQUIRE(at < lists.size());
  BOOST_TEST((lists[at] == std::byte{']'}));
}

BOOST_AUTO_TEST_SUITE_END()
