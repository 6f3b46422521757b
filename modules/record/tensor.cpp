// Tensor items: data.pkl decoding and locating the storage bytes inside the archive.
module;
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
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

using pickle::Document;
using pickle::NodeId;
using pickle::NodeKind;

constexpr std::uint64_t kMaxPickleBytes = 16u << 20;  // a tensor's data.pkl is ~100s of bytes
// A tensor item's central directory has 4–6 entries of ~100 bytes; 1 MiB is far beyond any.
constexpr std::uint64_t kMaxDirectoryBytes = 1u << 20;

Error bad(const Document& doc, NodeId id, std::string message) {
  Error e(Errc::data_loss, "data.pkl: " + std::move(message));
  // A shared None/True/False/() has no offset of its own: name the tensor's.
  if (id != pickle::kNoNode) e.at_offset(doc.at(id).offset().value_or(doc.at(doc.root()).offset().value_or(doc.stop_offset())));
  return e;
}

std::int64_t int_of(const Document& doc, NodeId id, const char* what) {
  if (doc.at(id).kind() != NodeKind::integer) throw bad(doc, id, std::string(what) + " is " + doc.describe(id));
  return doc.at(id).integer();
}

metadata::Shape int_tuple(const Document& doc, NodeId id, const char* what) {
  if (doc.at(id).kind() != NodeKind::tuple) throw bad(doc, id, std::string(what) + " is " + doc.describe(id));
  metadata::Shape out;
  for (NodeId d : doc.at(id).items()) {
    const auto v = int_of(doc, d, what);
    if (v < 0) throw bad(doc, d, std::string(what) + " has a negative entry");
    out.push_back(v);
  }
  return out;
}

// Serves reads of one archive from a cached head and tail where it can.
class ArchiveReader {
 public:
  ArchiveReader(std::uint64_t size, const ReadAt& read_at) : size_(size), read_at_(read_at) {
    const std::uint64_t window = std::min<std::uint64_t>(size, 4096);
    head_.resize(window);
    read_at_(0, head_);
    tail_offset_ = size - window;
    if (tail_offset_ == 0) return;  // the head is the whole archive
    tail_.resize(window);
    read_at_(tail_offset_, tail_);
  }

  std::vector<std::byte> read(std::uint64_t offset, std::uint64_t length) {
    if (offset > size_ || length > size_ - offset)
      throw Error(Errc::data_loss, "read of " + std::to_string(length) + " bytes at " + std::to_string(offset) +
                                       " runs past the item end (" + std::to_string(size_) + " bytes)")
          .at_offset(offset);
    std::vector<std::byte> out(length);
    if (length == 0) return out;  // memcpy from/to a null pointer is undefined even for 0 bytes
    if (offset + length <= head_.size()) {
      std::memcpy(out.data(), head_.data() + offset, length);
    } else if (!tail_.empty() && offset >= tail_offset_) {
      std::memcpy(out.data(), tail_.data() + (offset - tail_offset_), length);
    } else {
      read_at_(offset, out);
    }
    return out;
  }

  std::span<const std::byte> tail() const { return tail_.empty() ? std::span(head_) : std::span(tail_); }

 private:
  std::uint64_t size_;
  const ReadAt& read_at_;
  std::vector<std::byte> head_, tail_;
  std::uint64_t tail_offset_ = 0;
};

std::uint64_t entry_data_offset(ArchiveReader& reader, const zip::Entry& entry, std::uint64_t archive_size) {
  const auto fixed = reader.read(entry.local_header_offset, zip::kLocalHeaderFixedSize);
  const auto length = zip::local_header_length(fixed, entry);
  const auto header = reader.read(entry.local_header_offset, length);
  return zip::data_offset(header, entry, archive_size);
}

// A tensor item's data.pkl: one tensor rebuild. Offsets are inside data.pkl.
TensorRecord parse_tensor_pickle(std::span<const std::byte> data_pkl) {
  pickle::Limits limits;
  limits.allow_persistent_ids = true;
  const Document doc = pickle::decode(data_pkl, tensor_allow_list(), limits);
  return tensor_record(doc, doc.root());
}

}  // namespace

const pickle::AllowList& tensor_allow_list() {
  static const pickle::AllowList list = [] {
    pickle::AllowList l{{"torch._utils", "_rebuild_tensor_v2"}, {"torch._utils", "_rebuild_tensor_v3"},
                        {"torch", "UntypedStorage"}, {"torch.storage", "UntypedStorage"},
                        {"collections", "OrderedDict"}};
    for (const auto& info : dtype_table()) {
      l.add("torch", info.name);
      if (!info.storage_class.empty()) l.add("torch", info.storage_class);
    }
    return l;
  }();
  return list;
}

bool is_tensor_rebuild(const Document& doc, NodeId id) {
  const auto node = doc.at(id);
  if (node.kind() != NodeKind::call) return false;
  return doc.is_global(node.callee(), "torch._utils", "_rebuild_tensor_v2") ||
         doc.is_global(node.callee(), "torch._utils", "_rebuild_tensor_v3") ||
         doc.is_global(node.callee(), "torch._utils", "_rebuild_parameter");
}

TensorRecord tensor_record(const Document& doc, NodeId id) {
  const auto& root = doc.at(id);
  if (root.kind() == NodeKind::call && doc.is_global(root.callee(), "torch._utils", "_rebuild_parameter")) {
    // nn.Parameter: _rebuild_parameter(tensor, requires_grad, backward_hooks).
    const auto& args = doc.at(root.args()).items();
    if (args.size() < 2 || doc.at(args[0]).kind() != NodeKind::call ||
        doc.is_global(doc.at(args[0]).callee(), "torch._utils", "_rebuild_parameter"))
      throw bad(doc, id, "malformed parameter (_rebuild_parameter)");
    TensorRecord r = tensor_record(doc, args[0]);
    if (doc.at(args[1]).kind() == NodeKind::boolean) r.requires_grad = doc.at(args[1]).boolean();
    return r;
  }
  const bool v3 = root.kind() == NodeKind::call && doc.is_global(root.callee(), "torch._utils", "_rebuild_tensor_v3");
  if (root.kind() != NodeKind::call ||
      !(v3 || doc.is_global(root.callee(), "torch._utils", "_rebuild_tensor_v2")))
    throw bad(doc, id, "expected a tensor (_rebuild_tensor_v2/_v3), found " + doc.describe(id));
  const auto& args = doc.at(root.args()).items();
  if (args.size() < (v3 ? 7u : 6u)) throw bad(doc, root.args(), "too few tensor arguments");
  const std::size_t flags_at = v3 ? 7 : 6;
  if (args.size() > flags_at && !(doc.at(args[flags_at]).kind() == NodeKind::dict && doc.at(args[flags_at]).items().empty()) &&
      doc.at(args[flags_at]).kind() != NodeKind::none)
    throw Error(Errc::unimplemented, "data.pkl: tensor flags (conj/neg) are not supported")
        .at_offset(doc.at(args[flags_at]).offset().value_or(doc.stop_offset()));

  TensorRecord r;
  // Persistent id: ('storage', storage class, key, location, numel).
  const auto& storage = doc.at(args[0]);
  if (storage.kind() != NodeKind::persistent || doc.at(storage.args()).kind() != NodeKind::tuple)
    throw bad(doc, args[0], "tensor storage is " + doc.describe(args[0]));
  const auto& pid = doc.at(storage.args()).items();
  if (pid.size() != 5 || doc.at(pid[0]).text() != "storage" || doc.at(pid[2]).kind() != NodeKind::string)
    throw bad(doc, storage.args(), "malformed storage persistent id");
  const auto& cls = doc.at(pid[1]);
  r.storage_key = doc.at(pid[2]).text();
  const auto numel = int_of(doc, pid[4], "storage size");
  if (numel < 0) throw bad(doc, pid[4], "negative storage size");
  r.storage_numel = static_cast<std::uint64_t>(numel);
  if (v3) {
    if (cls.kind() != NodeKind::global || cls.name() != "UntypedStorage") throw bad(doc, pid[1], "v3 tensor without UntypedStorage");
    r.dtype = metadata::decode_dtype(doc, args[6]);
    const auto itemsize = dtype_itemsize(r.dtype);
    if (r.storage_numel % itemsize) throw bad(doc, pid[4], "untyped storage is not a whole number of elements");
    r.storage_numel /= itemsize;  // v3 counts bytes
  } else {
    const auto dtype = cls.kind() == NodeKind::global ? dtype_from_storage_class(cls.name()) : std::nullopt;
    if (!dtype) {
      Error e = bad(doc, pid[1], "storage class " + doc.describe(pid[1]) + " is not supported");
      throw Error(Errc::unimplemented, e.message()).at_offset(e.context().byte_offset.value_or(0));
    }
    r.dtype = *dtype;
  }
  const auto storage_offset = int_of(doc, args[1], "storage offset");
  if (storage_offset < 0) throw bad(doc, args[1], "negative storage offset");
  r.storage_offset = static_cast<std::uint64_t>(storage_offset);
  r.sizes = int_tuple(doc, args[2], "size");
  r.strides = int_tuple(doc, args[3], "stride");
  if (r.sizes.size() != r.strides.size()) throw bad(doc, args[3], "size and stride have different ranks");
  if (doc.at(args[4]).kind() == NodeKind::boolean) r.requires_grad = doc.at(args[4]).boolean();
  return r;
}

void check_storage_size(const TensorRecord& r, std::uint64_t storage_bytes) {
  const auto itemsize = dtype_itemsize(r.dtype);
  if (mul_or_throw(r.storage_numel, itemsize, "storage size") != storage_bytes)
    throw Error(Errc::data_loss, "storage record data/" + r.storage_key + " holds " + std::to_string(storage_bytes) +
                                     " bytes, data.pkl promises " + std::to_string(r.storage_numel) + " elements of " +
                                     std::to_string(itemsize) + " bytes");
}

void check_view(const TensorRecord& r) {
  // The furthest element the strided view touches must lie inside the storage.
  std::uint64_t last = r.storage_offset;
  bool empty = false;
  for (std::size_t d = 0; d < r.sizes.size(); ++d) {
    if (r.sizes[d] == 0) empty = true;
    else last = add_or_throw(last, mul_or_throw(static_cast<std::uint64_t>(r.sizes[d] - 1), static_cast<std::uint64_t>(r.strides[d]), "stride extent"), "stride extent");
  }
  if (!empty && last >= r.storage_numel)
    throw Error(Errc::data_loss, "tensor view reaches element " + std::to_string(last) + " of a storage of " +
                                     std::to_string(r.storage_numel) + " elements");
}

TensorLocation locate_tensor(std::uint64_t archive_size, const ReadAt& read_at) {
  if (archive_size < zip::kEndRecordsTail)
    throw Error(Errc::data_loss, "item of " + std::to_string(archive_size) + " bytes is too small for a torch.save archive")
        .at_offset(0);
  ArchiveReader reader(archive_size, read_at);
  const auto end = zip::parse_end_records(reader.tail(), archive_size);
  if (end.central_directory_size > kMaxDirectoryBytes)
    throw Error(Errc::resource_exhausted, "central directory of " + std::to_string(end.central_directory_size) +
                                              " bytes is too large for a tensor item")
        .at_offset(end.central_directory_offset);
  const auto directory = reader.read(end.central_directory_offset, end.central_directory_size);
  const auto entries = zip::parse_central_directory(directory, end, archive_size);
  const std::string prefix(zip::archive_prefix(entries));

  const auto* pkl = zip::find(entries, prefix + "data.pkl");
  if (!pkl) throw Error(Errc::data_loss, "archive has no " + prefix + "data.pkl record").at_offset(end.central_directory_offset);
  if (pkl->size > kMaxPickleBytes)
    throw Error(Errc::out_of_range, "data.pkl of " + std::to_string(pkl->size) + " bytes is too large for a tensor")
        .at_offset(pkl->local_header_offset);
  const auto pkl_offset = entry_data_offset(reader, *pkl, archive_size);
  const auto pkl_bytes = reader.read(pkl_offset, pkl->size);
  TensorLocation loc;
  try {
    loc.record = parse_tensor_pickle(pkl_bytes);
  } catch (Error& e) {
    e.add_offset(pkl_offset);
    throw;
  }
  if (const auto* order = zip::find(entries, prefix + "byteorder")) {
    const auto text = reader.read(entry_data_offset(reader, *order, archive_size), std::min<std::uint64_t>(order->size, 16));
    if (std::string_view(reinterpret_cast<const char*>(text.data()), text.size()) != "little")
      throw Error(Errc::unimplemented, "big-endian tensor data (byteorder record) is not supported")
          .at_offset(order->local_header_offset);
  }
  const auto* data = zip::find(entries, prefix + "data/" + loc.record.storage_key);
  if (!data)
    throw Error(Errc::data_loss, "archive has no storage record data/" + loc.record.storage_key)
        .at_offset(end.central_directory_offset);
  loc.data_offset = entry_data_offset(reader, *data, archive_size);
  loc.data_size = data->size;
  loc.crc32 = data->crc32;

  try {
    check_storage_size(loc.record, loc.data_size);
  } catch (Error& e) {
    e.at_offset(data->local_header_offset);
    throw;
  }
  try {
    check_view(loc.record);
  } catch (Error& e) {
    e.at_offset(pkl_offset);
    throw;
  }
  return loc;
}

void check_against_chunk(const TensorLocation& location, DType dtype, const metadata::Shape& sizes) {
  if (location.record.dtype != dtype)
    throw Error(Errc::data_loss, "item holds " + std::string(dtype_name(location.record.dtype)) +
                                     " but .metadata says " + std::string(dtype_name(dtype)));
  if (location.record.sizes != sizes)
    throw Error(Errc::data_loss, "item holds a tensor of size " + format_shape(location.record.sizes) +
                                     " but .metadata promises a chunk of size " + format_shape(sizes));
}

}  // namespace dcp::record
