// Whole item archives for the save path: a tensor chunk or an object, as torch.save writes them.
module;
#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
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
                                   const std::function<void(const StorageSink&)>& write_storage) {
  StateDictPickler pickler;
  pickler.tensor(dtype, sizes, "0");
  const auto data_pkl = pickler.finish();
  const auto bytes = metadata::byte_size(sizes, dtype);
  zip::ArchiveWriter writer(sink, "archive");
  writer.add_record("data.pkl", data_pkl);
  add_leading_records(writer, style);
  writer.begin_record("data/0", bytes);
  write_storage([&](std::span<const std::byte> piece) { writer.write(piece); });
  writer.end_record();  // checks the total
  add_trailing_records(writer, style);
  writer.finish();
  return writer.bytes_written();
}

// Objects holding storages (tensors) would need the storage records too. A hash set, not a
// vector over the document: one document may hold many objects (a whole imported .pt).
std::uint64_t check_object_savable(const pickle::Document& doc, pickle::NodeId id, std::uint64_t max_nodes) {
  std::unordered_set<pickle::NodeId> seen;
  std::vector<pickle::NodeId> stack{id};
  while (!stack.empty()) {
    const auto n = stack.back();
    stack.pop_back();
    if (n == pickle::kNoNode || n >= doc.size() || !seen.insert(n).second) continue;
    if (seen.size() > max_nodes)
      throw Error(Errc::resource_exhausted, "object has more than " + std::to_string(max_nodes) + " values");
    const auto node = doc.at(n);
    if (node.kind() == pickle::NodeKind::persistent) {
      Error e(Errc::unimplemented, "an object that holds a tensor cannot be saved as an object item");
      if (auto offset = node.offset()) e.at_offset(*offset);
      throw e;
    }
    for (auto child : node.items()) stack.push_back(child);
    stack.push_back(node.callee());
    stack.push_back(node.args());
    stack.push_back(node.state());
  }
  return seen.size();
}

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

  zip::ArchiveWriter writer(sink, "archive");
  writer.add_record("data.pkl", data_pkl);
  add_leading_records(writer, style);
  // torch.save writes the storages in sorted(key) order: "0", "1", "10", "11", ..., "2".
  std::vector<std::string> keys;
  for (std::size_t i = 0; i < renamed.size(); ++i) keys.push_back(std::to_string(i));
  std::sort(keys.begin(), keys.end());
  for (const auto& key : keys) writer.add_record("data/" + key, storages.at(renamed[std::stoul(key)]));
  add_trailing_records(writer, style);
  writer.finish();
  return writer.bytes_written();
}

std::vector<std::byte> object_archive(const pickle::Document& doc, pickle::NodeId id, ArchiveStyle style,
                                      const StorageMap& storages) {
  std::vector<std::byte> out;
  (void)write_object_archive([&](std::span<const std::byte> b) { out.insert(out.end(), b.begin(), b.end()); }, style, doc,
                             id, storages);
  return out;
}

}  // namespace dcp::record
