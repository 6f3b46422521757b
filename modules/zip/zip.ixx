// dcp.zip does torch.save's zip container: it parses and writes the archives that
// PyTorch's stream writer (caffe2 inline_container.cc over miniz) produces. Every DCP tensor
// item and BYTE_IO item is one such archive, stored at some offset/length in a .distcp file.
//
// Reading works on byte spans the caller supplies, never on files, because the storage layer
// reads only the parts it needs: the tail (`parse_end_records`), the central directory
// (`parse_central_directory`), one local header per record (`local_header_length`,
// `data_offset`), then the record data itself. `parse_archive` chains those steps for small
// archives held whole in memory. `ArchiveWriter` emits archives byte-identical to torch.save's
// (stored entries, data descriptors, 64-byte aligned data, zip64 end records), streaming
// multi-GiB records through a sink. `crc32` is zlib's CRC-32 (PCLMUL folding on x86-64).
//
// Imports dcp.error only. Untrusted input validated here: every signature, count, offset and
// size read from the archive, with checked 64-bit arithmetic, before anything is indexed or
// allocated; errors are dcp::Error (data_loss for corrupt/truncated archives, unimplemented for
// compression, encryption and multi-disk archives, out_of_range for 64-bit overflow) with
// `byte_offset` = the archive offset of the record that holds the bad value. Not done here:
// decompression, CRC verification unless asked (`verify_crc32`), archives with data before
// the first local header (self-extracting prefixes), and any file I/O.
module;
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_set>
#include <vector>
export module dcp.zip;
import dcp.error;

// Format constants shared by the reader and the writer (module linkage, not exported).
namespace dcp::zip {
inline constexpr std::uint32_t kLocalHeaderSignature = 0x04034b50;      // PK\3\4
inline constexpr std::uint32_t kDataDescriptorSignature = 0x08074b50;   // PK\7\8
inline constexpr std::uint32_t kCentralHeaderSignature = 0x02014b50;    // PK\1\2
inline constexpr std::uint32_t kZip64EndSignature = 0x06064b50;         // PK\6\6
inline constexpr std::uint32_t kZip64LocatorSignature = 0x07064b50;     // PK\6\7
inline constexpr std::uint32_t kEndSignature = 0x06054b50;              // PK\5\6
inline constexpr std::size_t kCentralHeaderSize = 46;
inline constexpr std::size_t kZip64EndSize = 56;
inline constexpr std::size_t kZip64LocatorSize = 20;
inline constexpr std::size_t kEndSize = 22;
inline constexpr std::uint16_t kZip64ExtraId = 0x0001;
inline constexpr std::uint16_t kFlagEncrypted = 0x0001;
inline constexpr std::uint16_t kFlagDataDescriptor = 0x0008;
inline constexpr std::uint16_t kFlagUtf8 = 0x0800;
inline constexpr std::uint32_t kMarker32 = 0xFFFFFFFF;  // "the value is in the zip64 record"
inline constexpr std::uint16_t kMarker16 = 0xFFFF;

// Joins message parts; integers print in decimal.
template <class... Parts>
std::string cat(const Parts&... parts) {
  std::string text;
  ([&] {
    if constexpr (std::is_integral_v<Parts>) text += std::to_string(parts);
    else text += parts;
  }(), ...);
  return text;
}
// A name read from an archive, made fit for a one-line message: in quotes, escaped as
// dcp::escape_text escapes a name, cut after 200 characters.
std::string quoted(std::string_view name);
}  // namespace dcp::zip

export namespace dcp::zip {

/// One central directory entry, with zip64 values already substituted for 0xFFFFFFFF markers.
struct Entry {
  std::string name;                   ///< full name, prefix included ("archive/data/0")
  std::uint64_t local_header_offset;  ///< archive offset of the entry's PK\3\4 header
  std::uint64_t compressed_size;      ///< bytes of data in the archive
  std::uint64_t size;                 ///< uncompressed size (== compressed_size when stored)
  std::uint32_t crc32;                ///< CRC-32 of the uncompressed data (0 may mean unset)
  std::uint16_t method;               ///< 0 = stored; anything else is rejected by data_offset
  std::uint16_t flags;                ///< general purpose bit flags (torch: 0x0808 or 0x0800)
};

/// Where the central directory is, from the (zip64) end of central directory records.
struct EndRecords {
  std::uint64_t central_directory_offset;  ///< archive offset of the first PK\1\2 entry
  std::uint64_t central_directory_size;    ///< bytes of the directory
  std::uint64_t entry_count;               ///< entries in the directory
};

/// Bytes from the end of a comment-free archive that always hold its end records: zip64 end
/// of central directory (56) + zip64 locator (20) + end of central directory (22).
inline constexpr std::size_t kEndRecordsTail = 56 + 20 + 22;
/// Bytes from the end that hold the end records even with the longest (65535-byte) comment.
inline constexpr std::size_t kEndRecordsTailWithComment = kEndRecordsTail + 65535;
/// Size of a local file header before its name and extra field.
inline constexpr std::size_t kLocalHeaderFixedSize = 30;

/// Parses the end records from `tail`, the last tail.size() bytes of an archive of
/// `archive_size` bytes (pass min(archive_size, kEndRecordsTail) bytes, or
/// kEndRecordsTailWithComment when the archive may have a comment). The end of central
/// directory record must end exactly at the archive end, after its comment. With a zip64
/// locator the zip64 end record must lie inside `tail` (else out_of_range naming how many
/// bytes are needed). Checks that the directory lies before the end records and is large
/// enough for entry_count headers.
EndRecords parse_end_records(std::span<const std::byte> tail, std::uint64_t archive_size);

/// Parses exactly `end.entry_count` entries from `directory`, the
/// `end.central_directory_size` bytes at `end.central_directory_offset`. Substitutes zip64
/// extra field values (id 0x0001: only the overflowing fields, in APPNOTE order) and checks
/// that each local header starts at least 30 bytes before the directory.
std::vector<Entry> parse_central_directory(std::span<const std::byte> directory,
                                           const EndRecords& end, std::uint64_t archive_size);

/// Length of the local header of `entry` (30 + name length + extra length) from its first
/// kLocalHeaderFixedSize bytes `fixed30`; checks the PK\3\4 signature.
std::uint64_t local_header_length(std::span<const std::byte> fixed30, const Entry& entry);

/// Archive offset of the first data byte of `entry`, from its whole local header
/// (local_header_length bytes at entry.local_header_offset). Checks the signature, that the
/// name matches the central directory, that the entry is stored (method 0, else
/// unimplemented) and unencrypted, and that its data ends inside the archive.
std::uint64_t data_offset(std::span<const std::byte> local_header, const Entry& entry,
                          std::uint64_t archive_size);

/// The entry named `name` (full name, prefix included), or nullptr.
const Entry* find(const std::vector<Entry>& entries, std::string_view name);

/// The archive prefix, "archive/" style: the first entry's name up to and including its
/// first '/'. Throws data_loss when there is no entry or the first name has no '/'.
std::string_view archive_prefix(const std::vector<Entry>& entries);

/// Standard (zlib, reflected 0xEDB88320) CRC-32 of `data`, continuing from `crc`: chunks can
/// be fed in order, crc32(b, crc32(a)) == crc32(a + b).
std::uint32_t crc32(std::span<const std::byte> data, std::uint32_t crc = 0);

/// Throws data_loss when entry.crc32 is non-zero and differs from crc32(data); `data` is the
/// entry's whole data. A zero CRC is accepted (newer torch can skip computing it).
void verify_crc32(const Entry& entry, std::span<const std::byte> data);

/// A whole archive parsed at once, for small archives held in memory.
struct Archive {
  std::vector<Entry> entries;               ///< central directory order
  std::string prefix;                       ///< e.g. "archive/"
  std::vector<std::uint64_t> data_offsets;  ///< data start of entries[i], resolved
};

/// Parses the end records, the directory and every local header of `whole`, and checks that
/// no record's data runs into the next local header or the directory. Requires every entry
/// to be stored. Does not verify CRCs.
Archive parse_archive(std::span<const std::byte> whole);

/// The data of record `prefix + name_without_prefix` ("data.pkl", "data/0"), a subspan of
/// `whole` (the bytes `archive` was parsed from). Throws not_found when there is no such
/// record.
std::span<const std::byte> record_data(const Archive& archive, std::span<const std::byte> whole,
                                       std::string_view name_without_prefix);

/// Writes an archive byte-identical to torch.save's (PyTorchStreamWriter over miniz) for the
/// same records in the same order. The caller adds "data.pkl", "data/<key>", "version", ...
/// itself: nothing is added implicitly. Records are stored with a data descriptor, CRC-32 and
/// an "FB" padding extra that puts their data at a multiple of 64 from the archive start;
/// zip64 fields appear where sizes or offsets reach 0xFFFFFFFF; end records are always zip64.
/// Misuse (duplicate name, size mismatch, calls out of order) throws invalid_argument or
/// failed_precondition; exceptions from the sink pass through.
class ArchiveWriter {
 public:
  /// Receives the archive bytes in order; spans are valid only during the call.
  using Sink = std::function<void(std::span<const std::byte>)>;

  /// `archive_name` is the prefix without its '/' ("archive" for torch.save to a stream).
  /// `base_offset` is where the archive starts in the file it is written into: records are
  /// aligned in that file (a reader finds them by their local headers wherever they lie).
  explicit ArchiveWriter(Sink sink, std::string archive_name = "archive", std::uint64_t base_offset = 0);

  /// torch.save's alignment of record data (caffe2's kFieldAlignment).
  static constexpr std::uint64_t kRecordAlignment = 64;

  /// Adds a whole record; `name` is without the prefix, e.g. "data.pkl".
  void add_record(std::string_view name, std::span<const std::byte> data);

  /// Starts a record of exactly `size` bytes, to be fed by write() and closed by end_record().
  /// Its data starts at a multiple of `alignment` (a power of two from 64 to 32768) of the file.
  /// After this call bytes_written() is the archive offset of the record's data.
  void begin_record(std::string_view name, std::uint64_t size, std::uint64_t alignment = kRecordAlignment);
  /// Appends data to the open record; the CRC is computed on the fly.
  void write(std::span<const std::byte> data);
  /// Closes the open record (checks its size) and writes its data descriptor.
  void end_record();

  /// Writes the central directory, zip64 end record, zip64 locator and end record.
  void finish();

  /// Archive bytes passed to the sink so far.
  std::uint64_t bytes_written() const noexcept { return offset_; }

 private:
  struct OpenRecord {
    std::string name;
    std::uint64_t size;
    std::uint64_t written;
    std::uint64_t header_offset;
    std::uint32_t crc;
  };
  void emit(std::span<const std::byte> bytes);
  void check_writable(std::string_view what) const;

  Sink sink_;
  std::string prefix_;
  std::uint64_t base_offset_ = 0;
  std::uint64_t offset_ = 0;
  std::uint64_t entry_count_ = 0;
  std::vector<std::byte> directory_;
  std::unordered_set<std::string> names_;
  std::optional<OpenRecord> open_;
  bool finished_ = false;
  bool broken_ = false;
};

}  // namespace dcp::zip
