// What importing a file may cost: the bytes of the checkpoint it becomes, bounded by the
// input's size and charged entry by entry, so that a few hundred bytes that describe a
// terabyte (a stride-0 view), or a million empty tensors, stop the import early instead of
// filling a disk or the memory of the save that follows. And the errors of an input that
// changed while it was read.
module;
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
module dcp.checkpoint;
import dcp.error;
import dcp.layout;
import dcp.metadata;
import dcp.record;
import dcp.storage;

namespace dcp::checkpoint {
namespace {

// `.metadata`, as dcpp's encoder writes it for torch 2.x (1.13's is no larger), rounded up
// from what it measured: about 335 bytes whatever it holds (the Metadata object, its dicts and
// classes); per entry, an empty float32 tensor with an 8-character key 750 bytes with one chunk
// and 1,860 with four (a tensor entry about 360 bytes plus 3 per key byte, a chunk with its
// storage entry about 365 plus 1 per key byte and 8 per dim); an object about 290 plus 4 per
// key byte.
constexpr std::uint64_t kMetadataBytes = 512;
constexpr std::uint64_t kTensorEntryBytes = 384, kTensorEntryBytesPerKeyByte = 3;
constexpr std::uint64_t kChunkBytes = 384, kChunkBytesPerKeyByte = 1, kChunkBytesPerDim = 16;
constexpr std::uint64_t kObjectEntryBytes = 320, kObjectEntryBytesPerKeyByte = 4;
// The item archives of the larger layout: a conversion to 1.13's writes fewer records.
constexpr auto kArchiveStyle = record::ArchiveStyle::torch_2x;

std::uint64_t add(std::uint64_t a, std::uint64_t b) noexcept { return checked_add(a, b).value_or(UINT64_MAX); }
std::uint64_t mul(std::uint64_t a, std::uint64_t b) noexcept { return checked_mul(a, b).value_or(UINT64_MAX); }

}  // namespace

std::uint64_t default_max_output_bytes(std::uint64_t input_bytes) noexcept {
  return add(mul(input_bytes, 2), std::uint64_t{1} << 30);
}

namespace detail {

OutputBudget::OutputBudget(const ImportOptions& options, std::uint64_t input_bytes)
    : options_(options), input_bytes_(input_bytes), charged_(kMetadataBytes) {
  if (options_.ranks < 1) throw Error(Errc::invalid_argument, "an import needs at least one rank");
  if (options_.max_output_bytes == 0) options_.max_output_bytes = default_max_output_bytes(input_bytes);
}

void OutputBudget::charge(std::uint64_t bytes, std::string_view fqn) {
  const auto total = add(charged_, bytes);
  if (total > options_.max_output_bytes)
    throw Error(Errc::resource_exhausted,
                "the checkpoint would take more than " + std::to_string(options_.max_output_bytes) + " bytes (" +
                    (options_.max_output_bytes == default_max_output_bytes(input_bytes_)
                         ? "2 x the input's " + std::to_string(input_bytes_) + " bytes + 1 GiB"
                         : std::string("the limit given")) +
                    "; every tensor is written at its dense size, every entry as an item of its own; "
                    "raise it with --max-output-bytes)")
        .for_key(fqn);
  charged_ = total;
}

void OutputBudget::tensor(std::string_view fqn, DType dtype, const metadata::Shape& sizes) {
  // Overflowing counts saturate: such a tensor passes any limit.
  std::uint64_t count = 1;
  for (const auto d : sizes) count = d < 0 ? UINT64_MAX : mul(count, static_cast<std::uint64_t>(d));
  const std::uint64_t bytes = mul(count, dtype_itemsize(dtype));
  // save_as_checkpoint's split: rows over the ranks, 0-dim and empty tensors whole on rank 0.
  const std::uint64_t items =
      sizes.empty() || count == 0 ? 1 : static_cast<std::uint64_t>(layout::nonempty_parts(sizes[0], options_.ranks));
  std::uint64_t per_item = add(record::tensor_archive_overhead(kArchiveStyle, dtype, sizes.size()),
                               kChunkBytes + kChunkBytesPerKeyByte * fqn.size() + kChunkBytesPerDim * sizes.size());
  // An item's parts differ by one row at most: one that may be large pads its record to the
  // large records' alignment.
  if (bytes != 0 && !sizes.empty() && sizes[0] > 0) {
    const std::uint64_t row = bytes / static_cast<std::uint64_t>(sizes[0]);
    if (add(bytes / items, row) >= record::kLargeRecordBytes) per_item = add(per_item, record::kLargeRecordAlignment);
  }
  charge(add(add(bytes, mul(items, per_item)), kTensorEntryBytes + kTensorEntryBytesPerKeyByte * fqn.size()), fqn);
}

void OutputBudget::object(std::string_view fqn, std::uint64_t pickle_bytes) {
  charge(add(add(pickle_bytes, record::object_archive_overhead(kArchiveStyle)),
             kObjectEntryBytes + kObjectEntryBytesPerKeyByte * fqn.size()),
         fqn);
}

void throw_import_error(Error e, const std::filesystem::path& path, const storage::MappedFile* file) {
  const bool says_so = e.code() == Errc::data_loss && e.message().ends_with(" while it was read");  // check_unchanged's
  if (auto why = file && !says_so ? file->changed() : std::nullopt) {
    // The error's own key and offset stay (where the change was noticed); its file was the
    // input, or an output the save was writing from the input's pages.
    Error changed(Errc::data_loss, *why + " (" + (e.context().file.empty() || e.context().file == path.string()
                                                       ? e.message()
                                                       : std::string(e.what())) +
                                       ")");
    if (e.context().file.empty() || e.context().file == path.string()) {
      changed.for_key(e.context().key);
      if (e.context().byte_offset) changed.at_offset(*e.context().byte_offset);
    }
    throw changed.in_file(path.string());
  }
  throw e.in_file(path.string());
}

}  // namespace detail
}  // namespace dcp::checkpoint
