// libFuzzer target: dcp.zip's parsers on arbitrary bytes. The input is an archive held whole
// (parse_archive, then every record's CRC), the same archive walked with the step API the
// storage layer uses, and, shifted by one byte, a bare central directory. Parsers must return
// or throw dcp::Error; an archive that parses must rebuild with ArchiveWriter into one that
// parses to the same records.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>
import dcp.error;
import dcp.zip;

namespace zip = dcp::zip;

namespace {

template <class Fn>
void guarded(Fn&& fn) {
  try {
    fn();
  } catch (const dcp::Error&) {
  }
}

// Rewrites a parsed archive (when its names fit the writer) and checks the result parses to
// the same names and data.
void check_rebuild(const zip::Archive& archive, std::span<const std::byte> whole) {
  std::vector<std::byte> out;
  const std::string_view prefix = archive.prefix;
  zip::ArchiveWriter writer([&](std::span<const std::byte> b) { out.insert(out.end(), b.begin(), b.end()); },
                            std::string(prefix.substr(0, prefix.size() - 1)));
  for (std::size_t i = 0; i < archive.entries.size(); ++i) {
    const zip::Entry& entry = archive.entries[i];
    if (!entry.name.starts_with(prefix)) return;
    writer.add_record(std::string_view(entry.name).substr(prefix.size()),
                      whole.subspan(archive.data_offsets[i], entry.size));
  }
  writer.finish();
  const zip::Archive again = zip::parse_archive(out);
  if (again.entries.size() != archive.entries.size()) __builtin_trap();
  for (std::size_t i = 0; i < again.entries.size(); ++i) {
    const auto a = whole.subspan(archive.data_offsets[i], archive.entries[i].size);
    const auto b = std::span<const std::byte>(out).subspan(again.data_offsets[i], again.entries[i].size);
    if (again.entries[i].name != archive.entries[i].name || !std::ranges::equal(a, b)) __builtin_trap();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> whole(reinterpret_cast<const std::byte*>(data), size);
  (void)zip::crc32(whole);

  guarded([&] {
    const zip::Archive archive = zip::parse_archive(whole);
    for (std::size_t i = 0; i < archive.entries.size(); ++i)
      guarded([&] {
        zip::verify_crc32(archive.entries[i],
                          whole.subspan(archive.data_offsets[i], archive.entries[i].size));
      });
    guarded([&] { (void)zip::record_data(archive, whole, "data.pkl"); });
    guarded([&] { check_rebuild(archive, whole); });
  });

  guarded([&] {
    const zip::EndRecords end =
        zip::parse_end_records(whole.last(std::min(size, zip::kEndRecordsTail)), size);
    const auto entries = zip::parse_central_directory(
        whole.subspan(end.central_directory_offset, end.central_directory_size), end, size);
    for (const zip::Entry& entry : entries)
      guarded([&] {
        const auto header = whole.subspan(entry.local_header_offset);
        const std::uint64_t length = zip::local_header_length(header, entry);
        (void)zip::data_offset(header.first(std::min<std::uint64_t>(length, header.size())), entry, size);
      });
    (void)zip::archive_prefix(entries);
  });

  if (size > 0) {
    guarded([&] {
      const auto directory = whole.subspan(1);
      const zip::EndRecords end{.central_directory_offset = std::uint64_t{1} << 40,
                                .central_directory_size = directory.size(),
                                .entry_count = data[0]};
      (void)zip::parse_central_directory(directory, end, end.central_directory_offset + directory.size());
    });
  }
  return 0;
}
