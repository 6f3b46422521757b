// Whole item archives for the save path: a tensor chunk or an object, as torch.save writes them.
module;
#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <random>
#include <span>
#include <string>
#include <string_view>
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

// Objects holding storages (tensors) would need the storage records too.
void refuse_storages(const pickle::Document& doc, pickle::NodeId root) {
  std::vector<bool> seen(doc.size(), false);
  std::vector<pickle::NodeId> stack{root};
  while (!stack.empty()) {
    const auto id = stack.back();
    stack.pop_back();
    if (id == pickle::kNoNode || id >= seen.size() || seen[id]) continue;
    seen[id] = true;
    const auto node = doc.at(id);
    if (node.kind() == pickle::NodeKind::persistent)
      throw Error(Errc::unimplemented, "an object that holds a tensor cannot be saved as an object item");
    for (auto child : node.items()) stack.push_back(child);
    stack.push_back(node.callee());
    stack.push_back(node.args());
    stack.push_back(node.state());
  }
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

std::vector<std::byte> object_archive(const pickle::Document& doc, pickle::NodeId id, ArchiveStyle style) {
  refuse_storages(doc, id);
  StateDictPickler pickler;
  pickler.object(doc, id);
  const auto data_pkl = pickler.finish();
  std::vector<std::byte> out;
  zip::ArchiveWriter writer([&](std::span<const std::byte> b) { out.insert(out.end(), b.begin(), b.end()); }, "archive");
  writer.add_record("data.pkl", data_pkl);
  add_leading_records(writer, style);
  add_trailing_records(writer, style);
  writer.finish();
  return out;
}

}  // namespace dcp::record
