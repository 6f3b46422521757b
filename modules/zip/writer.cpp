// ArchiveWriter: the bytes of caffe2's PyTorchStreamWriter::writeRecord (getPadding) over
// miniz 2.1's mz_zip_writer_add_mem_ex_v2 and mz_zip_writer_finalize_archive, as torch 1.13
// writes them with MZ_ZIP_FLAG_WRITE_ZIP64 and no timestamps.
module;
#include <algorithm>
#include <cstddef>
#include <cstdint>
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

constexpr std::uint16_t kPaddingExtraId = 0x4246;  // "FB"

void put(std::vector<std::byte>& out, std::uint64_t value, int width) { append_le(out, value, static_cast<std::size_t>(width)); }
void zeros(std::vector<std::byte>& out, std::size_t count) { out.insert(out.end(), count, std::byte{0}); }
void put(std::vector<std::byte>& out, std::string_view text) {
  for (const char c : text) out.push_back(static_cast<std::byte>(c));
}
std::uint64_t clamp32(std::uint64_t value) { return std::min<std::uint64_t>(value, kMarker32); }

// miniz's zip64 extra field: the size (twice: size, compressed size) when it reaches
// 0xFFFFFFFF and the local header offset when it does. The local header's copy is written
// before the data, so its compressed size is still 0.
void put_zip64_extra(std::vector<std::byte>& out, std::uint64_t size, std::uint64_t compressed,
                     std::uint64_t header_at) {
  const bool big_size = size >= kMarker32;
  const bool big_offset = header_at >= kMarker32;
  if (!big_size && !big_offset) return;
  put(out, kZip64ExtraId, 2);
  put(out, (big_size ? 16 : 0) + (big_offset ? 8 : 0), 2);
  if (big_size) {
    put(out, size, 8);
    put(out, compressed, 8);
  }
  if (big_offset) put(out, header_at, 8);
}

}  // namespace

ArchiveWriter::ArchiveWriter(Sink sink, std::string archive_name, std::uint64_t base_offset)
    : sink_(std::move(sink)), prefix_(std::move(archive_name)), base_offset_(base_offset) {
  if (!sink_) throw Error(Errc::invalid_argument, "archive writer needs a sink");
  if (prefix_.empty() || prefix_.find('/') != std::string::npos)
    throw Error(Errc::invalid_argument,
                cat("archive name ", quoted(prefix_), " must be non-empty and contain no '/'"));
  prefix_ += '/';
}

void ArchiveWriter::emit(std::span<const std::byte> bytes) {
  // A sink that throws leaves a partial archive behind: the writer refuses further calls.
  broken_ = true;
  sink_(bytes);
  broken_ = false;
  offset_ += bytes.size();
}

void ArchiveWriter::check_writable(std::string_view what) const {
  if (finished_ || broken_)
    throw Error(Errc::failed_precondition,
                cat(what, " after the archive was ", finished_ ? "finished" : "broken by a sink error"));
}

void ArchiveWriter::add_record(std::string_view name, std::span<const std::byte> data) {
  begin_record(name, data.size());
  write(data);
  end_record();
}

void ArchiveWriter::begin_record(std::string_view name, std::uint64_t size, std::uint64_t alignment) {
  check_writable("begin_record");
  if (open_)
    throw Error(Errc::failed_precondition,
                cat("begin_record(", quoted(name), ") while record ", quoted(open_->name), " is open"));
  std::string full = prefix_ + std::string(name);
  if (name.empty() || full.size() > 0xFFFF)
    throw Error(Errc::invalid_argument,
                cat("record name ", quoted(name), " must have 1 to ", 0xFFFF - prefix_.size(), " bytes"));
  if (names_.contains(full))
    throw Error(Errc::invalid_argument, cat("record ", quoted(full), " written twice"));

  const std::uint64_t header_at = offset_;
  std::vector<std::byte> zip64;
  put_zip64_extra(zip64, size, 0, header_at);
  // getPadding: data starts after the header, the name, the zip64 extra and the 4-byte "FB"
  // extra header, plus just enough 'Z's to reach a multiple of the alignment (64 in torch).
  if (alignment < kRecordAlignment || alignment > 32768 || (alignment & (alignment - 1)) != 0)
    throw Error(Errc::invalid_argument, cat("record alignment ", alignment, " is not a power of two from 64 to 32768"));
  const std::uint64_t unpadded = base_offset_ + header_at + kLocalHeaderFixedSize + full.size() + zip64.size() + 4;
  const std::uint64_t padding = (alignment - unpadded % alignment) % alignment;

  std::vector<std::byte> header;
  header.reserve(kLocalHeaderFixedSize + full.size() + zip64.size() + 4 + padding);
  put(header, kLocalHeaderSignature, 4);
  zeros(header, 2);  // version needed: miniz writes 20 only for deflate
  put(header, size > 0 ? kFlagUtf8 | kFlagDataDescriptor : kFlagUtf8, 2);
  zeros(header, 2 + 2 + 2 + 4 + 4 + 4);  // method, time, date, crc, sizes: in the descriptor
  put(header, full.size(), 2);
  put(header, zip64.size() + 4 + padding, 2);
  put(header, full);
  header.insert(header.end(), zip64.begin(), zip64.end());
  put(header, kPaddingExtraId, 2);
  put(header, padding, 2);
  header.insert(header.end(), padding, std::byte{'Z'});
  emit(header);
  names_.insert(full);
  open_ = OpenRecord{.name = std::move(full), .size = size, .written = 0, .header_offset = header_at, .crc = 0};
}

void ArchiveWriter::write(std::span<const std::byte> data) {
  check_writable("write");
  if (!open_) throw Error(Errc::failed_precondition, "write without an open record");
  if (data.size() > open_->size - open_->written)
    throw Error(Errc::invalid_argument,
                cat("record ", quoted(open_->name), ": ", data.size(), " more bytes after ",
                    open_->written, " exceed its declared size ", open_->size));
  open_->crc = crc32(data, open_->crc);
  emit(data);
  open_->written += data.size();
}

void ArchiveWriter::end_record() {
  check_writable("end_record");
  if (!open_) throw Error(Errc::failed_precondition, "end_record without an open record");
  const OpenRecord& record = *open_;
  if (record.written != record.size)
    throw Error(Errc::failed_precondition,
                cat("record ", quoted(record.name), ": ", record.written, " of its ", record.size,
                    " bytes were written"));
  const bool zip64 = record.size >= kMarker32 || record.header_offset >= kMarker32;
  if (record.size > 0) {  // miniz writes no descriptor for an empty record
    std::vector<std::byte> descriptor;
    put(descriptor, kDataDescriptorSignature, 4);
    put(descriptor, record.crc, 4);
    put(descriptor, record.size, zip64 ? 8 : 4);  // compressed size
    put(descriptor, record.size, zip64 ? 8 : 4);
    emit(descriptor);
  }

  std::vector<std::byte> extra;
  put_zip64_extra(extra, record.size, record.size, record.header_offset);
  put(directory_, kCentralHeaderSignature, 4);
  zeros(directory_, 2 + 2);  // version made by, version needed
  put(directory_, record.size > 0 ? kFlagUtf8 | kFlagDataDescriptor : kFlagUtf8, 2);
  zeros(directory_, 2 + 2 + 2);  // method, time, date
  put(directory_, record.crc, 4);
  put(directory_, clamp32(record.size), 4);
  put(directory_, clamp32(record.size), 4);
  put(directory_, record.name.size(), 2);
  put(directory_, extra.size(), 2);
  zeros(directory_, 2 + 2 + 2 + 4);  // comment length, disk, internal and external attributes
  put(directory_, clamp32(record.header_offset), 4);
  put(directory_, record.name);
  directory_.insert(directory_.end(), extra.begin(), extra.end());
  ++entry_count_;
  open_.reset();
}

void ArchiveWriter::finish() {
  check_writable("finish");
  if (open_)
    throw Error(Errc::failed_precondition, cat("finish while record ", quoted(open_->name), " is open"));
  // miniz puts the directory offset at 0 when there are no entries.
  const std::uint64_t directory_at = entry_count_ > 0 ? offset_ : 0;
  const std::uint64_t directory_size = directory_.size();
  const std::uint64_t zip64_end_at = offset_ + directory_size;
  std::vector<std::byte> out = std::move(directory_);
  directory_.clear();

  put(out, kZip64EndSignature, 4);
  put(out, kZip64EndSize - 12, 8);  // size of the rest of the record
  put(out, 0x031E, 2);              // version made by: miniz's fixed "Unix, 3.0"
  put(out, 0x002D, 2);              // version needed: 4.5, zip64
  zeros(out, 4 + 4);               // this disk, directory disk
  put(out, entry_count_, 8);
  put(out, entry_count_, 8);
  put(out, directory_size, 8);
  put(out, directory_at, 8);

  put(out, kZip64LocatorSignature, 4);
  zeros(out, 4);
  put(out, zip64_end_at, 8);
  put(out, 1, 4);  // total disks

  put(out, kEndSignature, 4);
  zeros(out, 2 + 2);
  put(out, std::min<std::uint64_t>(entry_count_, kMarker16), 2);
  put(out, std::min<std::uint64_t>(entry_count_, kMarker16), 2);
  put(out, clamp32(directory_size), 4);
  put(out, clamp32(directory_at), 4);
  zeros(out, 2);  // comment length
  emit(out);
  finished_ = true;
}

}  // namespace dcp::zip
