// Helpers shared by the dcp.zip test files: byte builders and an error matcher.
#pragma once
#include <boost/test/unit_test.hpp>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>
import dcp.error;
import dcp.zip;

namespace ztest {

using Buffer = std::vector<std::byte>;

inline Buffer bytes(std::string_view text) {
  Buffer out;
  for (const char c : text) out.push_back(static_cast<std::byte>(c));
  return out;
}

inline std::string text(std::span<const std::byte> data) {
  return {reinterpret_cast<const char*>(data.data()), data.size()};
}

// Appends `value` little-endian in `width` bytes (zeros past the eighth).
inline void put(Buffer& out, std::uint64_t value, int width) {
  for (int i = 0; i < width; ++i) out.push_back(static_cast<std::byte>(i < 8 ? value >> (8 * i) : 0));
}

// Overwrites `width` bytes at `at` with `value` little-endian.
inline void patch(Buffer& out, std::size_t at, std::uint64_t value, int width) {
  for (int i = 0; i < width; ++i) out.at(at + i) = static_cast<std::byte>(value >> (8 * i));
}

inline std::uint64_t load(std::span<const std::byte> in, std::size_t at, int width) {
  std::uint64_t value = 0;
  for (int i = width - 1; i >= 0; --i) value = (value << 8) | std::to_integer<std::uint64_t>(in[at + i]);
  return value;
}

// A writer whose sink appends to `out`.
inline dcp::zip::ArchiveWriter writer_into(Buffer& out, std::string name = "archive") {
  return dcp::zip::ArchiveWriter(
      [&out](std::span<const std::byte> b) { out.insert(out.end(), b.begin(), b.end()); },
      std::move(name));
}

// A small torch.save-shaped archive: data.pkl, data/0 (40 bytes), version.
// Streams `size` zero bytes into the open record, `zeros.size()` bytes per write.
inline void stream_zeros(dcp::zip::ArchiveWriter& writer, std::uint64_t size, const Buffer& zeros) {
  for (std::uint64_t left = size; left > 0;) {
    const std::size_t n = std::min<std::uint64_t>(left, zeros.size());
    writer.write(std::span(zeros).first(n));
    left -= n;
  }
}

inline Buffer sample_archive() {
  Buffer out;
  auto writer = writer_into(out);
  writer.add_record("data.pkl", bytes("\x80\x02K*."));
  Buffer floats;
  for (int i = 0; i < 10; ++i) put(floats, 0x3f800000u + i, 4);
  writer.add_record("data/0", floats);
  writer.add_record("version", bytes("3\n"));
  writer.finish();
  return out;
}

// A central directory header (46 bytes) + name + extra, as APPNOTE lays it out.
inline Buffer central_entry(std::string_view name, std::uint32_t compressed, std::uint32_t size,
                            std::uint32_t header_offset, const Buffer& extra = {},
                            std::uint16_t method = 0) {
  Buffer out;
  put(out, 0x02014b50, 4);
  put(out, 0, 4);       // versions
  put(out, 0x0808, 2);  // flags
  put(out, method, 2);
  put(out, 0, 4);       // time, date
  put(out, 0x12345678, 4);
  put(out, compressed, 4);
  put(out, size, 4);
  put(out, name.size(), 2);
  put(out, extra.size(), 2);
  put(out, 0, 2 + 2 + 2 + 4);
  put(out, header_offset, 4);
  for (const char c : name) out.push_back(static_cast<std::byte>(c));
  out.insert(out.end(), extra.begin(), extra.end());
  return out;
}

// A zip64 extra field (id 1) holding `values` in order.
inline Buffer zip64_extra(std::initializer_list<std::uint64_t> values) {
  Buffer out;
  put(out, 1, 2);
  put(out, 8 * values.size(), 2);
  for (const std::uint64_t v : values) put(out, v, 8);
  return out;
}

// Runs `fn` and checks that it throws dcp::Error with `code`, byte offset `offset` (nullopt:
// none) and a message containing `fragment`.
inline void expect_error(const std::function<void()>& fn, dcp::Errc code,
                         std::optional<std::uint64_t> offset, std::string_view fragment) {
  try {
    fn();
    BOOST_ERROR("no dcp::Error thrown; expected one containing '" << fragment << "'");
  } catch (const dcp::Error& e) {
    BOOST_TEST_CONTEXT("error: " << e.what() << "; expected fragment: " << fragment) {
      BOOST_TEST(dcp::errc_name(e.code()) == dcp::errc_name(code));
      BOOST_TEST(e.context().byte_offset.value_or(UINT64_MAX) == offset.value_or(UINT64_MAX));
      BOOST_TEST(e.message().find(fragment) != std::string::npos);
      BOOST_TEST(std::string_view(e.what()).find('\n') == std::string_view::npos);
    }
  }
}

}  // namespace ztest
