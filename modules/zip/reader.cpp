// Parsing of torch.save zip archives from caller-supplied byte spans; nothing here trusts a
// value read from the archive before it is checked against the span and the archive size.
module;
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>
module dcp.zip;
import dcp.error;
import dcp.bytes;

namespace dcp::zip {
namespace {

using Bytes = std::span<const std::byte>;

// Little-endian loads; callers have checked that [at, at + width) is inside `b`.
std::uint64_t load(Bytes b, std::size_t at, int width) { return load_le(b.subspan(at), static_cast<std::size_t>(width)); }
std::uint16_t u16(Bytes b, std::size_t at) { return static_cast<std::uint16_t>(load(b, at, 2)); }
std::uint32_t u32(Bytes b, std::size_t at) { return static_cast<std::uint32_t>(load(b, at, 4)); }
std::uint64_t u64(Bytes b, std::size_t at) { return load(b, at, 8); }

std::string hex(std::uint32_t value) {
  char text[16];
  std::snprintf(text, sizeof text, "0x%08x", value);
  return text;
}

[[noreturn]] void fail(Errc code, std::uint64_t at, std::string message) {
  Error error(code, std::move(message));
  error.at_offset(at);
  throw error;
}

// a + b for offsets read from the archive; overflow is reported at `at`.
std::uint64_t add(std::uint64_t a, std::uint64_t b, std::uint64_t at, std::string_view what) {
  if (auto sum = checked_add(a, b)) return *sum;
  fail(Errc::out_of_range, at, cat(what, " overflows 64 bits (", a, " + ", b, ")"));
}

std::string_view as_chars(Bytes b) {
  return {reinterpret_cast<const char*>(b.data()), b.size()};
}

// Returns the position of the end of central directory record in `tail`: the last PK\5\6
// whose comment ends exactly at the end of the tail.
std::optional<std::size_t> find_end_record(Bytes tail) {
  const std::size_t last = tail.size() - kEndSize;
  const std::size_t first = last > 0xFFFF ? last - 0xFFFF : 0;
  for (std::size_t pos = last + 1; pos-- > first;) {
    if (u32(tail, pos) == kEndSignature && pos + kEndSize + u16(tail, pos + 20) == tail.size())
      return pos;
  }
  return std::nullopt;
}

// Reads the zip64 end record that the locator at tail[loc] points to. Sets `records_at` to
// its archive offset (the directory must end before it).
EndRecords read_zip64_end(Bytes tail, std::uint64_t base, std::size_t loc,
                          std::uint64_t archive_size, std::uint64_t& records_at) {
  const std::uint64_t loc_at = base + loc;
  if (u32(tail, loc + 4) != 0 || u32(tail, loc + 16) > 1)
    fail(Errc::unimplemented, loc_at,
         cat("multi-disk archives are not supported (zip64 locator: disk ", u32(tail, loc + 4),
             " of ", u32(tail, loc + 16), ")"));
  const std::uint64_t at = u64(tail, loc + 8);
  if (at > loc_at || loc_at - at < kZip64EndSize)
    fail(Errc::data_loss, loc_at,
         cat("zip64 locator points at ", at, ", leaving no room for the 56-byte zip64 end ",
             "record before the locator at ", loc_at));
  if (at < base)
    fail(Errc::out_of_range, at,
         cat("zip64 end record at ", at, " is outside the last ", tail.size(),
             " bytes given; pass the last ", archive_size - at, " bytes"));
  const std::size_t z = at - base;
  if (u32(tail, z) != kZip64EndSignature)
    fail(Errc::data_loss, at,
         cat("bad zip64 end of central directory signature ", hex(u32(tail, z)), ", expected ",
             hex(kZip64EndSignature)));
  if (u64(tail, z + 4) < kZip64EndSize - 12)
    fail(Errc::data_loss, at,
         cat("zip64 end record claims ", u64(tail, z + 4), " bytes, less than its 44 fixed bytes"));
  if (u32(tail, z + 16) != 0 || u32(tail, z + 20) != 0 || u64(tail, z + 24) != u64(tail, z + 32))
    fail(Errc::unimplemented, at, "multi-disk archives are not supported (zip64 end record)");
  records_at = at;
  return {.central_directory_offset = u64(tail, z + 48),
          .central_directory_size = u64(tail, z + 40),
          .entry_count = u64(tail, z + 32)};
}

// Substitutes the zip64 extra field's values for the 0xFFFFFFFF fields of `entry`. APPNOTE
// order: size, compressed size, local header offset, each present only when overflowing.
void apply_zip64_extra(Bytes extra, Entry& entry, std::uint64_t at, std::string_view where) {
  const bool need_size = entry.size == kMarker32;
  const bool need_compressed = entry.compressed_size == kMarker32;
  const bool need_offset = entry.local_header_offset == kMarker32;
  if (!need_size && !need_compressed && !need_offset) return;
  for (std::size_t pos = 0; extra.size() - pos >= 4;) {
    const std::uint16_t id = u16(extra, pos);
    const std::uint16_t length = u16(extra, pos + 2);
    pos += 4;
    if (extra.size() - pos < length)
      fail(Errc::data_loss, at,
           cat(where, ": extra field ", id, " of ", length, " bytes runs past the ",
               extra.size(), "-byte extra area"));
    if (id != kZip64ExtraId) {
      pos += length;
      continue;
    }
    std::size_t used = 0;
    const auto take = [&](std::uint64_t& value, std::string_view what) {
      if (length - used < 8)
        fail(Errc::data_loss, at,
             cat(where, ": zip64 extra field of ", length, " bytes has no room for the ", what));
      value = u64(extra, pos + used);
      used += 8;
    };
    if (need_size) take(entry.size, "size");
    if (need_compressed) take(entry.compressed_size, "compressed size");
    if (need_offset) take(entry.local_header_offset, "local header offset");
    return;
  }
  fail(Errc::data_loss, at, cat(where, ": a size or offset is 0xffffffff but there is no zip64 extra field"));
}

// Sorted by local header offset, each record's data must end before the next local header,
// and the last one before the central directory.
void check_no_overlap(const Archive& archive, std::uint64_t directory_at) {
  const std::vector<Entry>& entries = archive.entries;
  std::vector<std::size_t> order(entries.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return entries[a].local_header_offset < entries[b].local_header_offset;
  });
  for (std::size_t k = 0; k < order.size(); ++k) {
    const Entry& entry = entries[order[k]];
    const std::uint64_t data_end = archive.data_offsets[order[k]] + entry.compressed_size;  // checked
    const bool last = k + 1 == order.size();
    const std::uint64_t limit = last ? directory_at : entries[order[k + 1]].local_header_offset;
    if (data_end > limit)
      fail(Errc::data_loss, entry.local_header_offset,
           cat("entry ", quoted(entry.name), ": data ends at ", data_end, ", past ",
               last ? std::string("the central directory")
                    : "the local header of " + quoted(entries[order[k + 1]].name),
               " at ", limit));
  }
}

}  // namespace

std::string quoted(std::string_view name) {
  std::string text = "'";
  append_escaped(text, name, Escape::name, 200);
  return text + "'";
}

EndRecords parse_end_records(Bytes tail, std::uint64_t archive_size) {
  if (tail.size() > archive_size)
    throw Error(Errc::invalid_argument,
                cat("tail of ", tail.size(), " bytes is longer than the ", archive_size, "-byte archive"));
  if (archive_size < kEndSize)
    fail(Errc::data_loss, 0,
         cat("archive of ", archive_size, " bytes is shorter than the 22-byte end of central directory record"));
  if (tail.size() < kEndSize)
    throw Error(Errc::invalid_argument,
                cat("tail of ", tail.size(), " bytes cannot hold the 22-byte end of central directory record"));
  const std::uint64_t base = archive_size - tail.size();
  const std::optional<std::size_t> found = find_end_record(tail);
  if (!found)
    fail(Errc::data_loss, archive_size - kEndSize,
         cat("no end of central directory record in the last ", tail.size(), " bytes of the ",
             archive_size, "-byte archive"));
  const std::size_t pos = *found;
  const std::uint64_t eocd_at = base + pos;
  const std::uint16_t entries16 = u16(tail, pos + 10);
  const std::uint32_t size32 = u32(tail, pos + 12);
  const std::uint32_t offset32 = u32(tail, pos + 16);

  EndRecords end{.central_directory_offset = offset32, .central_directory_size = size32,
                 .entry_count = entries16};
  std::uint64_t records_at = eocd_at;  // the directory must end before the end records
  if (pos >= kZip64LocatorSize && u32(tail, pos - kZip64LocatorSize) == kZip64LocatorSignature) {
    end = read_zip64_end(tail, base, pos - kZip64LocatorSize, archive_size, records_at);
    // The classic record holds the same values or the "see zip64" markers.
    if ((entries16 != kMarker16 && entries16 != end.entry_count) ||
        (size32 != kMarker32 && size32 != end.central_directory_size) ||
        (offset32 != kMarker32 && offset32 != end.central_directory_offset))
      fail(Errc::data_loss, eocd_at,
           cat("end of central directory (", entries16, " entries, ", size32, " bytes at ",
               offset32, ") disagrees with the zip64 end record (", end.entry_count,
               " entries, ", end.central_directory_size, " bytes at ",
               end.central_directory_offset, ")"));
  } else {
    if (entries16 == kMarker16 || size32 == kMarker32 || offset32 == kMarker32) {
      if (pos < kZip64LocatorSize && base > 0)  // the locator may be just before the tail
        fail(Errc::out_of_range, eocd_at,
             cat("end of central directory has zip64 markers and its locator is outside the last ",
                 tail.size(), " bytes given; pass at least the last ", tail.size() - pos + kZip64LocatorSize + kZip64EndSize, " bytes"));
      fail(Errc::data_loss, eocd_at,
           "end of central directory has zip64 markers but no zip64 locator before it");
    }
    if (u16(tail, pos + 4) != 0 || u16(tail, pos + 6) != 0 || u16(tail, pos + 8) != entries16)
      fail(Errc::unimplemented, eocd_at, "multi-disk archives are not supported");
  }
  const std::uint64_t directory_end =
      add(end.central_directory_offset, end.central_directory_size, records_at, "central directory end");
  if (directory_end > records_at)
    fail(Errc::data_loss, records_at,
         cat("central directory [", end.central_directory_offset, ", ", directory_end,
             ") runs past the end records at ", records_at));
  if (end.entry_count > end.central_directory_size / kCentralHeaderSize)
    fail(Errc::data_loss, records_at,
         cat(end.entry_count, " entries of at least 46 bytes do not fit in the ",
             end.central_directory_size, "-byte central directory"));
  return end;
}

std::vector<Entry> parse_central_directory(Bytes directory, const EndRecords& end,
                                           std::uint64_t archive_size) {
  const std::uint64_t start = end.central_directory_offset;
  if (directory.size() != end.central_directory_size)
    throw Error(Errc::invalid_argument,
                cat("central directory span has ", directory.size(), " bytes, the end records say ",
                    end.central_directory_size));
  const std::uint64_t finish = add(start, directory.size(), start, "central directory end");
  if (finish > archive_size)
    fail(Errc::data_loss, start,
         cat("central directory [", start, ", ", finish, ") runs past the archive end ", archive_size));
  // Cap the count by what the bytes can hold before reserving anything.
  if (end.entry_count > directory.size() / kCentralHeaderSize)
    fail(Errc::data_loss, start,
         cat(end.entry_count, " entries of at least 46 bytes do not fit in the ",
             directory.size(), "-byte central directory"));

  std::vector<Entry> entries;
  entries.reserve(end.entry_count);
  std::size_t pos = 0;
  for (std::uint64_t i = 0; i < end.entry_count; ++i) {
    const std::uint64_t at = start + pos;
    std::string where = cat("central directory entry ", i);
    if (directory.size() - pos < kCentralHeaderSize)
      fail(Errc::data_loss, at,
           cat(where, ": only ", directory.size() - pos, " of its 46 header bytes are left"));
    if (u32(directory, pos) != kCentralHeaderSignature)
      fail(Errc::data_loss, at,
           cat(where, ": bad signature ", hex(u32(directory, pos)), ", expected ",
               hex(kCentralHeaderSignature)));
    const std::size_t name_length = u16(directory, pos + 28);
    const std::size_t extra_length = u16(directory, pos + 30);
    const std::size_t variable = name_length + extra_length + u16(directory, pos + 32);
    if (directory.size() - pos - kCentralHeaderSize < variable)
      fail(Errc::data_loss, at,
           cat(where, ": name, extra field and comment (", variable,
               " bytes) run past the directory end at ", finish));
    const Bytes tail = directory.subspan(pos + kCentralHeaderSize);
    Entry entry{.name = std::string(as_chars(tail.first(name_length))),
                .local_header_offset = u32(directory, pos + 42),
                .compressed_size = u32(directory, pos + 20),
                .size = u32(directory, pos + 24),
                .crc32 = u32(directory, pos + 16),
                .method = u16(directory, pos + 10),
                .flags = u16(directory, pos + 8)};
    where += " " + quoted(entry.name);
    apply_zip64_extra(tail.subspan(name_length, extra_length), entry, at, where);
    // Local headers precede the directory in every archive this module accepts.
    const std::uint64_t header_end =
        add(entry.local_header_offset, kLocalHeaderFixedSize, at, where + ": local header end");
    if (header_end > start)
      fail(Errc::data_loss, at,
           cat(where, ": local header [", entry.local_header_offset, ", ", header_end,
               ") overlaps the central directory at ", start));
    entries.push_back(std::move(entry));
    pos += kCentralHeaderSize + variable;
  }
  if (pos != directory.size())
    fail(Errc::data_loss, start + pos,
         cat("central directory has ", directory.size() - pos, " bytes after its ",
             end.entry_count, " entries"));
  return entries;
}

std::uint64_t local_header_length(Bytes fixed30, const Entry& entry) {
  if (fixed30.size() < kLocalHeaderFixedSize)
    throw Error(Errc::invalid_argument,
                cat("local header span of ", fixed30.size(), " bytes is shorter than 30"));
  if (u32(fixed30, 0) != kLocalHeaderSignature)
    fail(Errc::data_loss, entry.local_header_offset,
         cat("entry ", quoted(entry.name), ": bad local header signature ", hex(u32(fixed30, 0)),
             ", expected ", hex(kLocalHeaderSignature)));
  return kLocalHeaderFixedSize + u16(fixed30, 26) + u16(fixed30, 28);
}

std::uint64_t data_offset(Bytes local_header, const Entry& entry, std::uint64_t archive_size) {
  const std::uint64_t at = entry.local_header_offset;
  const std::uint64_t length =
      local_header_length(local_header.first(std::min(local_header.size(), kLocalHeaderFixedSize)), entry);
  const std::uint64_t data = add(at, length, at, "data offset");
  if (data > archive_size)
    fail(Errc::data_loss, at,
         cat("entry ", quoted(entry.name), ": local header [", at, ", ", data,
             ") runs past the archive end ", archive_size));
  if (local_header.size() < length)
    throw Error(Errc::invalid_argument,
                cat("local header span of ", local_header.size(), " bytes is shorter than the ",
                    length, "-byte header"));
  const std::string_view local_name = as_chars(local_header.subspan(kLocalHeaderFixedSize, u16(local_header, 26)));
  if (local_name != entry.name)
    fail(Errc::data_loss, at,
         cat("entry ", quoted(entry.name), ": local header names ", quoted(local_name)));
  if (entry.flags & kFlagEncrypted)
    fail(Errc::unimplemented, at, cat("entry ", quoted(entry.name), " is encrypted"));
  if (entry.method != 0)
    fail(Errc::unimplemented, at,
         cat("entry ", quoted(entry.name), " uses compression method ", entry.method,
             "; only stored (0) entries are supported"));
  if (entry.compressed_size != entry.size)
    fail(Errc::data_loss, at,
         cat("stored entry ", quoted(entry.name), " has compressed size ", entry.compressed_size,
             " but size ", entry.size));
  const std::uint64_t data_end = add(data, entry.compressed_size, at, "data end");
  if (data_end > archive_size)
    fail(Errc::data_loss, at,
         cat("entry ", quoted(entry.name), ": data ends at ", data_end,
             ", past the archive end ", archive_size));
  return data;
}

const Entry* find(const std::vector<Entry>& entries, std::string_view name) {
  const auto it = std::find_if(entries.begin(), entries.end(),
                               [&](const Entry& entry) { return entry.name == name; });
  return it == entries.end() ? nullptr : &*it;
}

std::string_view archive_prefix(const std::vector<Entry>& entries) {
  if (entries.empty()) throw Error(Errc::data_loss, "archive has no entries, so no prefix");
  const std::string_view first = entries.front().name;
  const std::size_t slash = first.find('/');
  if (slash == std::string_view::npos)
    fail(Errc::data_loss, entries.front().local_header_offset,
         cat("first entry ", quoted(first), " has no '/', so no archive prefix"));
  return first.substr(0, slash + 1);
}

void verify_crc32(const Entry& entry, Bytes data) {
  if (data.size() != entry.size)
    throw Error(Errc::invalid_argument,
                cat("entry ", quoted(entry.name), ": ", data.size(), " bytes given for a ",
                    entry.size, "-byte record"));
  if (entry.crc32 == 0) return;
  const std::uint32_t actual = crc32(data);
  if (actual != entry.crc32)
    fail(Errc::data_loss, entry.local_header_offset,
         cat("entry ", quoted(entry.name), ": crc32 of the data is ", hex(actual),
             ", the central directory says ", hex(entry.crc32)));
}

Archive parse_archive(Bytes whole) {
  const std::uint64_t size = whole.size();
  const EndRecords end =
      parse_end_records(whole.last(std::min(whole.size(), kEndRecordsTailWithComment)), size);
  // parse_end_records put the directory inside `whole`.
  Archive archive;
  archive.entries = parse_central_directory(
      whole.subspan(end.central_directory_offset, end.central_directory_size), end, size);
  archive.prefix = archive_prefix(archive.entries);
  archive.data_offsets.reserve(archive.entries.size());
  for (const Entry& entry : archive.entries) {
    // parse_central_directory put 30 header bytes before the directory.
    const Bytes header = whole.subspan(entry.local_header_offset);
    const std::uint64_t length = local_header_length(header, entry);
    archive.data_offsets.push_back(
        data_offset(header.first(std::min<std::uint64_t>(length, header.size())), entry, size));
  }
  check_no_overlap(archive, end.central_directory_offset);
  return archive;
}

Bytes record_data(const Archive& archive, Bytes whole, std::string_view name_without_prefix) {
  const std::string name = archive.prefix + std::string(name_without_prefix);
  for (std::size_t i = 0; i < archive.entries.size() && i < archive.data_offsets.size(); ++i) {
    if (archive.entries[i].name != name) continue;
    const std::uint64_t offset = archive.data_offsets[i];
    const std::uint64_t length = archive.entries[i].compressed_size;
    if (offset > whole.size() || whole.size() - offset < length)
      throw Error(Errc::invalid_argument,
                  cat("record ", quoted(name), " [", offset, ", +", length, ") is outside the ",
                      whole.size(), " bytes given"));
    return whole.subspan(offset, length);
  }
  throw Error(Errc::not_found,
              cat("no record ", quoted(name), " in the archive (", archive.entries.size(), " entries)"));
}

}  // namespace dcp::zip
