// Unit tests for dcp.zip: CRC-32, the writer's torch.save layout, parsing, zip64.
// Rejections live in test_zip_reject.cpp, PyTorch interop in test_zip_interop.cpp.
#define BOOST_TEST_MODULE dcp.zip
#include "zip_test_util.hpp"

#include <algorithm>
#include <chrono>
#include <map>
#include <random>
#include <stdexcept>

using namespace ztest;
namespace zip = dcp::zip;
using dcp::Errc;

namespace {

std::uint32_t crc_bitwise(std::span<const std::byte> data) {
  std::uint32_t c = 0xFFFFFFFF;
  for (const std::byte b : data) {
    c ^= std::to_integer<std::uint32_t>(b);
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
  }
  return ~c;
}

Buffer random_bytes(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  Buffer out(n);
  for (auto& b : out) b = static_cast<std::byte>(rng());
  return out;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(unit)

BOOST_AUTO_TEST_CASE(crc32_known_values) {
  BOOST_TEST(zip::crc32(bytes("123456789")) == 0xCBF43926u);
  BOOST_TEST(zip::crc32({}) == 0u);
  BOOST_TEST(zip::crc32(bytes("3\n")) == 0x55679ed1u);  // torch's "version" record
}

BOOST_AUTO_TEST_CASE(crc32_matches_bitwise_reference) {
  // Every length up to 300 at four alignments covers the folding path (>= 64 bytes), its
  // 16-byte remainder loop and the table tail.
  const Buffer data = random_bytes(4096 + 8, 7);
  const std::span<const std::byte> all(data);
  for (std::size_t length = 0; length <= 300; ++length)
    for (std::size_t shift = 0; shift < 4; ++shift)
      BOOST_TEST(zip::crc32(all.subspan(shift, length)) == crc_bitwise(all.subspan(shift, length)));
  std::uint32_t chained = 0;
  for (std::size_t pos = 0; pos < all.size(); pos += 333)
    chained = zip::crc32(all.subspan(pos, std::min<std::size_t>(333, all.size() - pos)), chained);
  BOOST_TEST(chained == crc_bitwise(all));
}

BOOST_AUTO_TEST_CASE(writer_layout_is_torch_save_layout) {
  const Buffer archive = sample_archive();
  const zip::Archive parsed = zip::parse_archive(archive);
  BOOST_TEST(parsed.prefix == "archive/");
  BOOST_REQUIRE(parsed.entries.size() == 3u);
  BOOST_TEST(parsed.entries[0].name == "archive/data.pkl");
  BOOST_TEST(parsed.entries[1].name == "archive/data/0");
  BOOST_TEST(parsed.entries[2].name == "archive/version");
  BOOST_TEST(parsed.data_offsets[0] == 64u);  // as torch: 30 + 16 + "FB" 4 + 14 'Z'
  for (std::size_t i = 0; i < 3; ++i) {
    const zip::Entry& e = parsed.entries[i];
    BOOST_TEST(parsed.data_offsets[i] % 64 == 0u);
    BOOST_TEST(e.flags == 0x0808u);
    BOOST_TEST(e.method == 0u);
    BOOST_TEST(e.compressed_size == e.size);
    const auto data = std::span<const std::byte>(archive).subspan(parsed.data_offsets[i], e.size);
    BOOST_CHECK_NO_THROW(zip::verify_crc32(e, data));
    BOOST_TEST(e.crc32 == crc_bitwise(data));
  }
  BOOST_TEST(zip::record_data(parsed, archive, "data/0").size() == 40u);
  BOOST_TEST(text(zip::record_data(parsed, archive, "version")) == "3\n");

  // Local header: versions, method, time and date 0; CRC and sizes 0; then the "FB" extra.
  BOOST_TEST(load(archive, 4, 2) == 0u);
  BOOST_TEST(load(archive, 6, 2) == 0x0808u);
  BOOST_TEST(load(archive, 8, 4) == 0u);
  BOOST_TEST(load(archive, 14, 8) == 0u);
  BOOST_TEST(load(archive, 22, 4) == 0u);
  BOOST_TEST(text(std::span(archive).subspan(46, 2)) == "FB");
  BOOST_TEST(load(archive, 48, 2) == 14u);
  BOOST_TEST(text(std::span(archive).subspan(50, 14)) == std::string(14, 'Z'));
  // Data descriptor with 4-byte sizes after each record's data.
  const std::size_t descriptor = 64 + 5;
  BOOST_TEST(load(archive, descriptor, 4) == 0x08074b50u);
  BOOST_TEST(load(archive, descriptor + 4, 4) == parsed.entries[0].crc32);
  BOOST_TEST(load(archive, descriptor + 8, 4) == 5u);
  BOOST_TEST(load(archive, descriptor + 12, 4) == 5u);
  BOOST_TEST(parsed.entries[1].local_header_offset == descriptor + 16);
  // End records: zip64 end (version made by 0x031e, needed 45), locator, classic end.
  const std::size_t n = archive.size();
  BOOST_TEST(load(archive, n - 98, 4) == 0x06064b50u);
  BOOST_TEST(load(archive, n - 98 + 12, 2) == 0x031Eu);
  BOOST_TEST(load(archive, n - 98 + 14, 2) == 0x2Du);
  BOOST_TEST(load(archive, n - 42, 4) == 0x07064b50u);
  BOOST_TEST(load(archive, n - 42 + 8, 8) == n - 98);
  BOOST_TEST(load(archive, n - 22, 4) == 0x06054b50u);
}

BOOST_AUTO_TEST_CASE(empty_record_has_utf8_flag_only_and_no_descriptor) {
  Buffer out;
  auto writer = writer_into(out);
  writer.add_record("data/0", {});
  writer.add_record("version", bytes("3\n"));
  writer.finish();
  const zip::Archive parsed = zip::parse_archive(out);
  BOOST_TEST(parsed.entries[0].flags == 0x0800u);
  BOOST_TEST(parsed.entries[0].crc32 == 0u);
  BOOST_TEST(parsed.entries[0].size == 0u);
  BOOST_TEST(parsed.entries[1].local_header_offset == parsed.data_offsets[0]);
  BOOST_TEST(zip::record_data(parsed, out, "data/0").empty());
}

BOOST_AUTO_TEST_CASE(streaming_equals_whole_record) {
  const Buffer payload = random_bytes(1000, 3);
  Buffer whole, streamed;
  {
    auto writer = writer_into(whole);
    writer.add_record("data/0", payload);
    writer.finish();
  }
  auto writer = writer_into(streamed);
  writer.begin_record("data/0", payload.size());
  BOOST_TEST(writer.bytes_written() == 64u);  // the data offset
  for (std::size_t pos = 0; pos < payload.size(); pos += 77)
    writer.write(std::span(payload).subspan(pos, std::min<std::size_t>(77, payload.size() - pos)));
  writer.end_record();
  writer.finish();
  BOOST_TEST(writer.bytes_written() == streamed.size());
  BOOST_TEST((streamed == whole));
}

BOOST_AUTO_TEST_CASE(writer_rejects_misuse) {
  Buffer out;
  auto writer = writer_into(out);
  writer.add_record("data.pkl", bytes("x"));
  expect_error([&] { writer.add_record("data.pkl", bytes("y")); }, Errc::invalid_argument,
               std::nullopt, "'archive/data.pkl' written twice");
  expect_error([&] { writer.add_record("", bytes("y")); }, Errc::invalid_argument, std::nullopt,
               "must have 1 to");
  writer.begin_record("data/0", 4);
  expect_error([&] { writer.write(bytes("12345")); }, Errc::invalid_argument, std::nullopt,
               "exceed its declared size 4");
  expect_error([&] { writer.begin_record("x", 1); }, Errc::failed_precondition, std::nullopt,
               "while record 'archive/data/0' is open");
  expect_error([&] { writer.end_record(); }, Errc::failed_precondition, std::nullopt,
               "0 of its 4 bytes");
  expect_error([&] { writer.finish(); }, Errc::failed_precondition, std::nullopt, "is open");
  writer.write(bytes("1234"));
  writer.end_record();
  writer.finish();
  expect_error([&] { writer.add_record("y", {}); }, Errc::failed_precondition, std::nullopt,
               "finished");
  expect_error([] { zip::ArchiveWriter([](std::span<const std::byte>) {}, "a/b"); },
               Errc::invalid_argument, std::nullopt, "no '/'");

  zip::ArchiveWriter broken([](std::span<const std::byte>) { throw std::runtime_error("disk full"); });
  BOOST_CHECK_THROW(broken.add_record("data.pkl", bytes("x")), std::runtime_error);
  expect_error([&] { broken.finish(); }, Errc::failed_precondition, std::nullopt, "sink error");
}

BOOST_AUTO_TEST_CASE(find_and_prefix) {
  Buffer out;
  auto writer = writer_into(out, "model");
  writer.add_record("data.pkl", bytes("x"));
  writer.finish();
  const zip::Archive parsed = zip::parse_archive(out);
  BOOST_TEST(parsed.prefix == "model/");
  BOOST_TEST(zip::find(parsed.entries, "model/data.pkl") == &parsed.entries[0]);
  BOOST_TEST(zip::find(parsed.entries, "data.pkl") == nullptr);
  expect_error([] { (void)zip::archive_prefix({}); }, Errc::data_loss, std::nullopt, "no entries");
  const std::vector<zip::Entry> flat{{.name = "flat", .local_header_offset = 7, .compressed_size = 0,
                                      .size = 0, .crc32 = 0, .method = 0, .flags = 0}};
  expect_error([&] { (void)zip::archive_prefix(flat); }, Errc::data_loss, 7, "'flat' has no '/'");
}

BOOST_AUTO_TEST_CASE(archive_without_records) {
  Buffer out;
  auto writer = writer_into(out);
  writer.finish();
  BOOST_TEST(out.size() == zip::kEndRecordsTail);
  const zip::EndRecords end = zip::parse_end_records(out, out.size());
  BOOST_TEST(end.entry_count == 0u);
  BOOST_TEST(end.central_directory_offset == 0u);  // miniz writes 0, not the archive offset
  BOOST_TEST(zip::parse_central_directory({}, end, out.size()).empty());
  expect_error([&] { (void)zip::parse_archive(out); }, Errc::data_loss, std::nullopt, "no entries");
}

BOOST_AUTO_TEST_CASE(end_records_after_a_comment) {
  for (const std::size_t comment : {std::size_t{10}, std::size_t{1000}, std::size_t{65535}}) {
    Buffer archive = sample_archive();
    const std::uint64_t zip64_end_at = archive.size() - 98;
    patch(archive, archive.size() - 2, comment, 2);
    archive.insert(archive.end(), comment, std::byte{'c'});
    const std::span<const std::byte> all(archive);
    const auto tail = [&](std::size_t n) { return all.last(std::min(n, all.size())); };
    const zip::EndRecords end = zip::parse_end_records(tail(zip::kEndRecordsTailWithComment), all.size());
    BOOST_TEST(end.entry_count == 3u);
    BOOST_TEST(zip::parse_archive(all).entries.size() == 3u);
    if (comment == 10) {  // the classic record is in the small tail, the zip64 one is not
      expect_error([&] { (void)zip::parse_end_records(tail(zip::kEndRecordsTail), all.size()); },
                   Errc::out_of_range, zip64_end_at, "pass the last " + std::to_string(all.size() - zip64_end_at) + " bytes");
    } else {
      expect_error([&] { (void)zip::parse_end_records(tail(zip::kEndRecordsTail), all.size()); },
                   Errc::data_loss, all.size() - 22, "no end of central directory record");
    }
  }
}

BOOST_AUTO_TEST_CASE(zip64_records_built_by_hand) {
  // An archive larger than 4 GiB described only by its directory and end records.
  constexpr std::uint64_t kGiB = std::uint64_t{1} << 30;
  const std::uint64_t big = 5 * kGiB + 123;
  const std::uint64_t after_at = 64 + big + 24;
  Buffer directory = central_entry("archive/big", 0xFFFFFFFF, 0xFFFFFFFF, 0, zip64_extra({big, big}));
  const Buffer after = central_entry("archive/after", 2, 2, 0xFFFFFFFF, zip64_extra({after_at}));
  directory.insert(directory.end(), after.begin(), after.end());
  // Only the compressed size and the offset overflow: the extra holds those two, in order,
  // after an unrelated extra field that must be skipped.
  Buffer extra;
  put(extra, 0x4246, 2);
  put(extra, 3, 2);
  put(extra, 0x5A5A5A, 3);
  const Buffer wide = zip64_extra({big + 1, after_at + 100});
  extra.insert(extra.end(), wide.begin(), wide.end());
  const Buffer mixed = central_entry("archive/mixed", 0xFFFFFFFF, 9, 0xFFFFFFFF, extra);
  directory.insert(directory.end(), mixed.begin(), mixed.end());
  const std::uint64_t directory_at = after_at + 4096;

  Buffer tail;
  put(tail, 0x06064b50, 4);
  put(tail, 44, 8);
  put(tail, 0x002D031E, 4);
  put(tail, 0, 8);
  put(tail, 3, 8);
  put(tail, 3, 8);
  put(tail, directory.size(), 8);
  put(tail, directory_at, 8);
  put(tail, 0x07064b50, 4);
  put(tail, 0, 4);
  put(tail, directory_at + directory.size(), 8);
  put(tail, 1, 4);
  put(tail, 0x06054b50, 4);
  put(tail, 0, 4);
  put(tail, 0x00030003, 4);
  put(tail, directory.size(), 4);
  put(tail, 0xFFFFFFFF, 4);
  put(tail, 0, 2);
  BOOST_REQUIRE(tail.size() == zip::kEndRecordsTail);
  const std::uint64_t archive_size = directory_at + directory.size() + tail.size();

  const zip::EndRecords end = zip::parse_end_records(tail, archive_size);
  BOOST_TEST(end.central_directory_offset == directory_at);
  BOOST_TEST(end.central_directory_size == directory.size());
  BOOST_TEST(end.entry_count == 3u);
  const std::vector<zip::Entry> entries = zip::parse_central_directory(directory, end, archive_size);
  BOOST_REQUIRE(entries.size() == 3u);
  BOOST_TEST(entries[0].size == big);
  BOOST_TEST(entries[0].compressed_size == big);
  BOOST_TEST(entries[0].local_header_offset == 0u);
  BOOST_TEST(entries[1].size == 2u);
  BOOST_TEST(entries[1].local_header_offset == after_at);
  BOOST_TEST(entries[2].size == 9u);
  BOOST_TEST(entries[2].compressed_size == big + 1);
  BOOST_TEST(entries[2].local_header_offset == after_at + 100);
  BOOST_TEST(entries[1].crc32 == 0x12345678u);

  // The local header of "after", beyond 4 GiB: data right after its name.
  Buffer local;
  put(local, 0x04034b50, 4);
  put(local, 0, 22);
  put(local, 13, 2);
  put(local, 0, 2);
  for (const char c : std::string_view("archive/after")) local.push_back(static_cast<std::byte>(c));
  BOOST_TEST(zip::local_header_length(local, entries[1]) == 43u);
  BOOST_TEST(zip::data_offset(local, entries[1], archive_size) == after_at + 43);
}

BOOST_AUTO_TEST_CASE(writer_zip64_streamed) {
  // 4.3 GB of zeros through begin_record/write/end_record; the sink keeps only the small
  // writes (headers, descriptors, directory and end records) by archive offset.
  constexpr std::uint64_t kBig = 4'300'000'000;
  std::map<std::uint64_t, Buffer> kept;
  std::uint64_t offset = 0;
  zip::ArchiveWriter writer([&](std::span<const std::byte> b) {
    if (b.size() < (1u << 20)) kept[offset].assign(b.begin(), b.end());
    offset += b.size();
  });
  const auto started = std::chrono::steady_clock::now();
  writer.add_record("data.pkl", bytes("pickle"));
  writer.begin_record("data/0", kBig);
  const std::uint64_t big_data = writer.bytes_written();
  const Buffer zeros(64u << 20);
  stream_zeros(writer, kBig, zeros);
  writer.end_record();
  const std::uint64_t after_at = writer.bytes_written();
  writer.add_record("version", bytes("3\n"));
  writer.finish();
  const std::chrono::duration<double> took = std::chrono::steady_clock::now() - started;
  BOOST_TEST_MESSAGE("streamed " << kBig << " bytes in " << took.count() << " s");
  BOOST_TEST(after_at > 0xFFFFFFFFu);

  const std::uint64_t size = writer.bytes_written();
  const Buffer& last = kept.rbegin()->second;  // directory + end records, one write
  const std::span<const std::byte> tail = std::span(last).last(zip::kEndRecordsTail);
  const zip::EndRecords end = zip::parse_end_records(tail, size);
  BOOST_TEST(end.central_directory_offset == kept.rbegin()->first);
  BOOST_TEST(load(tail, 98 - 22 + 12, 4) == end.central_directory_size);  // fits: no marker
  BOOST_TEST(load(tail, 98 - 22 + 16, 4) == 0xFFFFFFFFu);                 // offset marker
  const auto entries =
      zip::parse_central_directory(std::span(last).first(end.central_directory_size), end, size);
  BOOST_REQUIRE(entries.size() == 3u);
  BOOST_TEST(entries[1].size == kBig);
  BOOST_TEST(entries[1].compressed_size == kBig);
  BOOST_TEST(entries[2].local_header_offset == after_at);
  // Central extras: {size, compressed size} for the big record, {offset} for the one after.
  const std::size_t big_central = 46 + 16;
  BOOST_TEST(load(last, big_central + 28, 2) == 14u);
  BOOST_TEST(load(last, big_central + 30, 2) == 20u);
  BOOST_TEST(load(last, big_central + 20, 4) == 0xFFFFFFFFu);

  // Local zip64 extras come before "FB": {size, 0} for the big record, {offset} after it.
  const Buffer& big_header = kept.at(entries[1].local_header_offset);
  BOOST_TEST(load(big_header, 30 + 14, 2) == 1u);
  BOOST_TEST(load(big_header, 30 + 14 + 2, 2) == 16u);
  BOOST_TEST(load(big_header, 30 + 14 + 4, 8) == kBig);
  BOOST_TEST(load(big_header, 30 + 14 + 12, 8) == 0u);
  BOOST_TEST(text(std::span(big_header).subspan(30 + 14 + 20, 2)) == "FB");
  BOOST_TEST(zip::data_offset(big_header, entries[1], size) == big_data);
  BOOST_TEST(big_data % 64 == 0u);
  const Buffer& after_header = kept.at(after_at);
  BOOST_TEST(load(after_header, 30 + 15, 2) == 1u);
  BOOST_TEST(load(after_header, 30 + 15 + 2, 2) == 8u);
  BOOST_TEST(load(after_header, 30 + 15 + 4, 8) == after_at);
  const std::uint64_t after_data = zip::data_offset(after_header, entries[2], size);
  BOOST_TEST(after_data % 64 == 0u);
  // 24-byte descriptors: for the big record, and for the small one at a zip64 offset.
  const Buffer& big_descriptor = kept.at(big_data + kBig);
  BOOST_TEST(big_descriptor.size() == 24u);
  BOOST_TEST(load(big_descriptor, 8, 8) == kBig);
  BOOST_TEST(load(big_descriptor, 16, 8) == kBig);
  const Buffer& after_descriptor = kept.at(after_data + 2);
  BOOST_TEST(after_descriptor.size() == 24u);
  BOOST_TEST(load(after_descriptor, 16, 8) == 2u);
  BOOST_TEST(entries[1].crc32 == load(big_descriptor, 4, 4));
}

BOOST_AUTO_TEST_SUITE_END()
