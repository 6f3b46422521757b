// Whole item archives for the save path: a tensor chunk or an object, as torch.save writes them.
module;
#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>
module dcp.record;
import dcp.error;
import dcp.pickle;
import dcp.zip;
import dcp.metadata;

namespace dcp::record {
namespace {

std::span<const std::byte> text_bytes(std::string_view text) { return std::as_bytes(std::span(text.data(), text.size())); }

// torch 2.x adds these before the storages (after data.pkl); both versions end with
// "version". The values are what torch 2.13 writes.
void add_leading_records(zip::ArchiveWriter& writer, ArchiveStyle style) {
  if (style != ArchiveStyle::torch_2x) return;
  writer.add_record(".format_version", text_bytes("1"));
  writer.add_record(".storage_alignment", text_bytes("64"));
  writer.add_record("byteorder", text_bytes("little"));
}

// torch 2.x's serialization id: 40 decimal digits, unique per archive. Loaders ignore it.
std::string serialization_id() {
  thread_local std::mt19937_64 random(std::random_device{}());
  std::string id;
  while (id.size() < 40) id += std::to_string(random() % 10);
  return id;
}

void add_trailing_records(zip::ArchiveWriter& writer, ArchiveStyle style) {
  writer.add_record("version", text_bytes("3\n"));
  if (style == ArchiveStyle::torch_2x) writer.add_record(".data/serialization_id", text_bytes(serialization_id()));
}

}  // namespace

std::uint64_t write_tensor_archive(const std::function<void(std::span<const std::byte>)>& sink, ArchiveStyle style,
                                   DType dtype, const metadata::Shape& sizes,
                                   const std::function<void(const StorageSink&)>& write_storage,
                                   std::uint64_t file_offset) {
  StateDictPickler pickler;
  pickler.tensor(dtype, sizes, "0");
  const auto data_pkl = pickler.finish();
  const auto bytes = metadata::byte_size(sizes, dtype);
  zip::ArchiveWriter writer(sink, "archive", file_offset);
  writer.add_record("data.pkl", data_pkl);
  add_leading_records(writer, style);
  writer.begin_record("data/0", bytes,
                      bytes >= kLargeRecordBytes ? kLargeRecordAlignment : zip::ArchiveWriter::kRecordAlignment);
  write_storage([&](std::span<const std::byte> piece) { writer.write(piece); });
  writer.end_record();  // checks the total
  add_trailing_records(writer, style);
  writer.finish();
  return writer.bytes_written();
}

// What the pickle encoder writes for one value at most besides its text: the opcode with an
// 8-byte length (BINUNICODE8, LONG4), its memo PUT (LONG_BINPUT), MARK and one SETITEMS or
// APPENDS per batch; and for each reference to a child, a memo GET when it was written before.
constexpr std::uint64_t kPickleBytesPerValue = 32;
constexpr std::uint64_t kPickleBytesPerReference = 8;

// Objects holding storages (tensors) would need the storage records too. A hash set, not a
// vector over the document: one document may hold many objects (a whole imported .pt).
ObjectExtent check_object_savable(const pickle::Document& doc, pickle::NodeId id, std::uint64_t max_nodes,
                                  bool with_storages) {
  std::unordered_set<pickle::NodeId> seen;
  std::vector<pickle::NodeId> stack{id};
  ObjectExtent extent{0, 16};  // PROTO and STOP
  while (!stack.empty()) {
    const auto n = stack.back();
    stack.pop_back();
    if (n == pickle::kNoNode || n >= doc.size() || !seen.insert(n).second) continue;
    if (seen.size() > max_nodes)
      throw Error(Errc::resource_exhausted, "object has more than " + std::to_string(max_nodes) + " values");
    const auto node = doc.at(n);
    if (node.kind() == pickle::NodeKind::persistent && !with_storages) {
      Error e(Errc::unimplemented, "an object that holds a tensor cannot be saved as an object item");
      if (auto offset = node.offset()) e.at_offset(*offset);
      throw e;
    }
    // Texts are short of 2^64 (they are in memory), so the sum cannot wrap before the caller's
    // budget, far below it, stops it.
    extent.pickle_bytes += kPickleBytesPerValue + node.text().size() + node.name().size() +
                           kPickleBytesPerReference * (node.items().size() + 3);
    for (auto child : node.items()) stack.push_back(child);
    stack.push_back(node.callee());
    stack.push_back(node.args());
    stack.push_back(node.state());
  }
  extent.nodes = seen.size();
  return extent;
}

namespace {

// The zip of one object item, as torch.save writes it: data.pkl, the style's records, then the
// storages ("0", "1", ... by `storage(i)`) in torch.save's sorted(key) order: "0", "1", "10", ...
std::uint64_t write_archive(const std::function<void(std::span<const std::byte>)>& sink, ArchiveStyle style,
                            std::span<const std::byte> data_pkl, std::size_t storages,
                            const std::function<std::span<const std::byte>(std::size_t)>& storage) {
  zip::ArchiveWriter writer(sink, "archive");
  writer.add_record("data.pkl", data_pkl);
  add_leading_records(writer, style);
  std::vector<std::string> keys;
  for (std::size_t i = 0; i < storages; ++i) keys.push_back(std::to_string(i));
  std::sort(keys.begin(), keys.end());
  for (const auto& key : keys) writer.add_record("data/" + key, storage(std::stoul(key)));
  add_trailing_records(writer, style);
  writer.finish();
  return writer.bytes_written();
}

// Slack over a measured archive: a longer data.pkl moves the records after it by up to 63
// more bytes of alignment, and records past 4 GiB carry zip64 extra fields.
constexpr std::uint64_t kAlignmentAndZip64Bytes = 64 + 128;
// What a dim adds to a tensor's data.pkl at most: an int in sizes and one in strides, each at
// most 10 bytes (LONG1 of 8), where the measured archive has 2-byte zeros; and the storage's
// numel, once.
constexpr std::uint64_t kPickleBytesPerDim = 2 * 10;
constexpr std::uint64_t kPickleBytesForNumel = 10;

}  // namespace

std::uint64_t write_object_archive(const std::function<void(std::span<const std::byte>)>& sink, ArchiveStyle style,
                                   const pickle::Document& doc, pickle::NodeId id, const StorageMap& storages) {
  // Every tensor checked against the storage it views before a byte is written. The
  // document's offsets say nothing about the output: errors leave them out.
  try {
    for_each_object_tensor(doc, id, UINT64_MAX, [&](pickle::NodeId, const TensorRecord& r, bool first_view) {
      if (!first_view) return;
      const auto it = storages.find(r.storage_key);
      if (it == storages.end())
        throw Error(Errc::invalid_argument, "the object's tensors view storage '" + r.storage_key +
                                                "', which the object value does not carry");
      check_storage_size(r, it->second.size());
    });
  } catch (const Error& e) {
    throw Error(e.code() == Errc::data_loss ? Errc::invalid_argument : e.code(), e.message());
  }
  std::vector<std::string> renamed;  // document keys, by archive key
  std::unordered_map<std::string, std::string> new_keys;
  StateDictPickler pickler;
  pickler.object(doc, id, [&](std::string_view key) {
    const auto [it, added] = new_keys.emplace(std::string(key), std::to_string(new_keys.size()));
    if (added) renamed.emplace_back(key);
    return it->second;
  });
  const auto data_pkl = pickler.finish();
  return write_archive(sink, style, data_pkl, renamed.size(), [&](std::size_t i) { return storages.at(renamed[i]); });
}

std::vector<std::byte> object_archive(const pickle::Document& doc, pickle::NodeId id, ArchiveStyle style,
                                      const StorageMap& storages) {
  std::vector<std::byte> out;
  (void)write_object_archive([&](std::span<const std::byte> b) { out.insert(out.end(), b.begin(), b.end()); }, style, doc,
                             id, storages);
  return out;
}

std::uint64_t tensor_archive_overhead(ArchiveStyle style, DType dtype, std::size_t dims) {
  // Measured once per style and dtype on an empty tensor of shape (0,): the archive's fixed
  // part, with the smallest data.pkl.
  static std::mutex mutex;
  static std::unordered_map<std::uint32_t, std::uint64_t> measured;
  const auto key = static_cast<std::uint32_t>(style) << 8 | static_cast<std::uint32_t>(dtype);
  std::uint64_t base = 0;
  {
    std::lock_guard lock(mutex);
    auto it = measured.find(key);
    if (it == measured.end())
      it = measured.emplace(key, write_tensor_archive([](std::span<const std::byte>) {}, style, dtype, {0},
                                                      [](const StorageSink&) {}))
               .first;
    base = it->second;
  }
  return base + kAlignmentAndZip64Bytes + kPickleBytesForNumel + kPickleBytesPerDim * dims;
}

std::uint64_t object_archive_overhead(ArchiveStyle style) {
  auto measure = [](ArchiveStyle s) {
    return write_archive([](std::span<const std::byte>) {}, s, {}, 0, [](std::size_t) { return std::span<const std::byte>{}; });
  };
  static const std::uint64_t measured[2] = {measure(ArchiveStyle::torch_1_13), measure(ArchiveStyle::torch_2x)};
  return measured[style == ArchiveStyle::torch_2x ? 1 : 0] + kAlignmentAndZip64Bytes;
}

}  // namespace dcp::record
