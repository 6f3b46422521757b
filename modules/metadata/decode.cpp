// Maps the pickle value tree of a `.metadata` onto the Metadata structs.
module;
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>
module dcp.metadata;
import dcp.error;
import dcp.pickle;

namespace dcp::metadata {
namespace {

using pickle::Document;
using pickle::NodeId;
using pickle::NodeKind;

constexpr std::string_view kModule113 = "torch.distributed._shard.checkpoint.metadata";
constexpr std::string_view kModule2x = "torch.distributed.checkpoint.metadata";
constexpr std::string_view kShardedTensorModule = "torch.distributed._shard.sharded_tensor.metadata";

Error bad(const Document& doc, NodeId id, std::string message) {
  Error e(Errc::data_loss, std::move(message));
  if (id != pickle::kNoNode) e.at_offset(doc.at(id).offset);
  return e;
}

// Reads a DCP dataclass instance: NEWOBJ of `class_name` (any module), returns its state
// (kNoNode when there was no BUILD, e.g. BytesStorageMetadata).
NodeId object_state(const Document& doc, NodeId id, std::string_view class_name,
                    std::string* module_out = nullptr) {
  const auto& n = doc.at(id);
  if (n.kind != NodeKind::object || doc.at(n.callee).name != class_name)
    throw bad(doc, id, "expected a " + std::string(class_name) + ", found " + doc.describe(id));
  if (module_out) *module_out = doc.at(n.callee).text;
  return n.state;
}

NodeId field(const Document& doc, NodeId state, std::string_view key, std::string_view owner) {
  if (state == pickle::kNoNode || doc.at(state).kind != NodeKind::dict)
    throw bad(doc, state, std::string(owner) + " has no attribute dict");
  if (auto v = doc.find_key(state, key)) return *v;
  throw bad(doc, state, std::string(owner) + " lacks '" + std::string(key) + "'");
}

std::optional<NodeId> optional_field(const Document& doc, NodeId state, std::string_view key) {
  if (auto v = doc.find_key(state, key); v && doc.at(*v).kind != NodeKind::none) return v;
  return std::nullopt;
}

const std::string& as_string(const Document& doc, NodeId id, std::string_view what) {
  if (doc.at(id).kind != NodeKind::string)
    throw bad(doc, id, std::string(what) + " is " + doc.describe(id) + ", not a str");
  return doc.at(id).text;
}

std::int64_t as_int(const Document& doc, NodeId id, std::string_view what) {
  if (doc.at(id).kind != NodeKind::integer)
    throw bad(doc, id, std::string(what) + " is " + doc.describe(id) + ", not an int");
  return doc.at(id).integer;
}

std::uint64_t as_uint(const Document& doc, NodeId id, std::string_view what) {
  const std::int64_t v = as_int(doc, id, what);
  if (v < 0) throw bad(doc, id, std::string(what) + " is negative (" + std::to_string(v) + ")");
  return static_cast<std::uint64_t>(v);
}

bool as_bool(const Document& doc, NodeId id, std::string_view what) {
  const auto& n = doc.at(id);
  if (n.kind == NodeKind::boolean) return n.boolean;
  throw bad(doc, id, std::string(what) + " is " + doc.describe(id) + ", not a bool");
}

const std::vector<NodeId>& items_of(const Document& doc, NodeId id, NodeKind kind,
                                    std::string_view what) {
  if (doc.at(id).kind != kind)
    throw bad(doc, id, std::string(what) + " has the wrong type: " + doc.describe(id));
  return doc.at(id).items;
}

// A call of `global`(args): returns the args tuple's items.
const std::vector<NodeId>& call_args(const Document& doc, NodeId id, std::string_view module,
                                     std::string_view name) {
  const auto& n = doc.at(id);
  if (n.kind != NodeKind::call || !doc.is_global(n.callee, module, name))
    throw bad(doc, id, "expected " + std::string(module) + "." + std::string(name) + "(...), found " +
                           doc.describe(id));
  return doc.at(n.args).items;
}

MemoryFormat decode_memory_format(const Document& doc, NodeId id) {
  // Python 3.11.0–3.11.6 pickle enum members as getattr(cls, 'NAME'); others as cls(value).
  const auto& n = doc.at(id);
  if (n.kind != NodeKind::call) throw bad(doc, id, "memory format is " + doc.describe(id));
  const auto& args = doc.at(n.args).items;
  if (doc.is_global(n.callee, "builtins", "getattr") && args.size() == 2) {
    const auto& member = as_string(doc, args[1], "memory format member");
    if (member == "TORCH_CONTIGUOUS_FORMAT") return MemoryFormat::contiguous;
    if (member == "TORCH_CHANNELS_LAST") return MemoryFormat::channels_last;
    if (member == "TORCH_PRESERVE_FORMAT") return MemoryFormat::preserve;
    throw bad(doc, args[1], "unknown memory format '" + member + "'");
  }
  if (args.size() == 1 && doc.at(n.callee).name.find("MEM_FORMAT_ENCODING") != std::string::npos) {
    switch (as_int(doc, args[0], "memory format")) {
      case 0: return MemoryFormat::contiguous;
      case 1: return MemoryFormat::channels_last;
      case 2: return MemoryFormat::preserve;
      default: throw bad(doc, args[0], "unknown memory format value");
    }
  }
  throw bad(doc, id, "memory format is " + doc.describe(id));
}

TensorProperties decode_properties(const Document& doc, NodeId id) {
  const NodeId state = object_state(doc, id, "TensorProperties");
  if (state == pickle::kNoNode) throw bad(doc, id, "TensorProperties without state");
  TensorProperties p;
  if (doc.at(state).kind == NodeKind::tuple) {
    // __getstate__: (dtype, layout, requires_grad, memory_format, pin_memory[, extras...]).
    const auto& t = doc.at(state).items;
    if (t.size() < 5) throw bad(doc, state, "TensorProperties state has " + std::to_string(t.size()) + " fields, expected 5");
    p.dtype = decode_dtype(doc, t[0]);
    const auto& layout = call_args(doc, t[1], "torch.serialization", "_get_layout");
    if (layout.size() != 1 || as_string(doc, layout[0], "layout") != "torch.strided")
      throw Error(Errc::unimplemented, "only strided tensors are supported (layout " +
                                           doc.describe(layout.empty() ? t[1] : layout[0]) + ")")
          .at_offset(doc.at(t[1]).offset);
    p.requires_grad = as_bool(doc, t[2], "requires_grad");
    p.memory_format = decode_memory_format(doc, t[3]);
    p.pin_memory = as_bool(doc, t[4], "pin_memory");
    return p;
  }
  // Dict state (older writers): memory_format cannot be pickled there, so it is absent.
  p.dtype = decode_dtype(doc, field(doc, state, "dtype", "TensorProperties"));
  if (auto v = optional_field(doc, state, "requires_grad")) p.requires_grad = as_bool(doc, *v, "requires_grad");
  if (auto v = optional_field(doc, state, "pin_memory")) p.pin_memory = as_bool(doc, *v, "pin_memory");
  return p;
}

ChunkStorageMetadata decode_chunk(const Document& doc, NodeId id) {
  const NodeId state = object_state(doc, id, "ChunkStorageMetadata");
  return {decode_size(doc, field(doc, state, "offsets", "ChunkStorageMetadata")),
          decode_size(doc, field(doc, state, "sizes", "ChunkStorageMetadata")),
          doc.at(id).offset};
}

ItemMetadata decode_item(const Document& doc, NodeId key, NodeId value) {
  ItemMetadata item;
  item.fqn = as_string(doc, key, "state_dict_metadata key");
  item.pickle_offset = doc.at(value).offset;
  const auto& n = doc.at(value);
  if (n.kind == NodeKind::object && doc.at(n.callee).name == "BytesStorageMetadata") {
    item.storage = BytesStorageMetadata{};
    return item;
  }
  const NodeId state = object_state(doc, value, "TensorStorageMetadata");
  TensorStorageMetadata t;
  t.properties = decode_properties(doc, field(doc, state, "properties", "TensorStorageMetadata"));
  t.size = decode_size(doc, field(doc, state, "size", "TensorStorageMetadata"));
  for (NodeId c : items_of(doc, field(doc, state, "chunks", "TensorStorageMetadata"),
                           NodeKind::list, "chunks"))
    t.chunks.push_back(decode_chunk(doc, c));
  item.storage = std::move(t);
  return item;
}

MetadataIndex decode_index(const Document& doc, NodeId id) {
  const NodeId state = object_state(doc, id, "MetadataIndex");
  MetadataIndex index;
  index.fqn = as_string(doc, field(doc, state, "fqn", "MetadataIndex"), "MetadataIndex.fqn");
  if (auto v = optional_field(doc, state, "offset")) index.offset = decode_size(doc, *v);
  if (auto v = optional_field(doc, state, "index")) index.index = as_int(doc, *v, "MetadataIndex.index");
  return index;
}

StorageInfo decode_storage_info(const Document& doc, NodeId id) {
  const NodeId state = object_state(doc, id, "_StorageInfo");
  StorageInfo info;
  info.pickle_offset = doc.at(id).offset;
  info.relative_path = as_string(doc, field(doc, state, "relative_path", "_StorageInfo"), "relative_path");
  info.offset = as_uint(doc, field(doc, state, "offset", "_StorageInfo"), "_StorageInfo.offset");
  info.length = as_uint(doc, field(doc, state, "length", "_StorageInfo"), "_StorageInfo.length");
  if (auto v = optional_field(doc, state, "transform_descriptors"))
    for (NodeId d : items_of(doc, *v, NodeKind::list, "transform_descriptors"))
      info.transform_descriptors.push_back(as_string(doc, d, "transform descriptor"));
  return info;
}

// pathlib paths pickle as PosixPath(*parts) (≤3.12) or PosixPath(str) (3.13); join the parts.
std::string decode_path(const Document& doc, NodeId id) {
  const auto& n = doc.at(id);
  if (n.kind == NodeKind::string) return n.text;
  if (n.kind != NodeKind::call || doc.at(n.callee).kind != NodeKind::global ||
      doc.at(n.callee).text.rfind("pathlib", 0) != 0)
    throw bad(doc, id, "checkpoint_id is " + doc.describe(id));
  const bool windows = doc.at(n.callee).name.find("Windows") != std::string::npos;
  const char sep = windows ? '\\' : '/';
  std::string path;
  for (NodeId part : doc.at(n.args).items) {
    const auto& text = as_string(doc, part, "path part");
    if (!path.empty() && path.back() != sep && path.back() != '/') path.push_back(sep);
    path += text;
  }
  return path;
}

StorageMeta decode_storage_meta(const Document& doc, NodeId id) {
  const NodeId state = object_state(doc, id, "StorageMeta");
  StorageMeta meta;
  if (state == pickle::kNoNode) return meta;
  if (auto v = optional_field(doc, state, "checkpoint_id")) meta.checkpoint_id = decode_path(doc, *v);
  if (auto v = optional_field(doc, state, "save_id")) meta.save_id = as_string(doc, *v, "save_id");
  if (auto v = optional_field(doc, state, "load_id")) meta.load_id = as_string(doc, *v, "load_id");
  if (auto v = optional_field(doc, state, "modules"))
    for (NodeId m : items_of(doc, *v, NodeKind::list, "modules"))
      meta.modules.push_back(as_string(doc, m, "module"));
  return meta;
}

std::vector<std::pair<std::string, std::vector<PathPart>>> decode_planner_data(const Document& doc,
                                                                                NodeId id) {
  std::vector<std::pair<std::string, std::vector<PathPart>>> result;
  const auto& items = items_of(doc, id, NodeKind::dict, "planner_data");
  for (std::size_t i = 0; i + 1 < items.size(); i += 2) {
    std::vector<PathPart> path;
    const auto& value = doc.at(items[i + 1]);
    if (value.kind != NodeKind::tuple && value.kind != NodeKind::list)
      throw bad(doc, items[i + 1], "planner_data path is " + doc.describe(items[i + 1]));
    for (NodeId part : value.items) {
      const auto& p = doc.at(part);
      if (p.kind == NodeKind::string) path.emplace_back(p.text);
      else path.emplace_back(as_int(doc, part, "planner_data path part"));
    }
    result.emplace_back(as_string(doc, items[i], "planner_data key"), std::move(path));
  }
  return result;
}

}  // namespace

Shape decode_size(const Document& doc, NodeId id) {
  const auto& args = call_args(doc, id, "torch", "Size");
  if (args.size() != 1) throw bad(doc, id, "torch.Size takes one tuple");
  const auto& dims = doc.at(args[0]);
  if (dims.kind != NodeKind::tuple && dims.kind != NodeKind::list)
    throw bad(doc, args[0], "torch.Size of " + doc.describe(args[0]));
  Shape shape;
  shape.reserve(dims.items.size());
  for (NodeId d : dims.items) shape.push_back(as_int(doc, d, "dimension"));
  return shape;
}

DType decode_dtype(const Document& doc, NodeId id) {
  const auto& n = doc.at(id);
  if (n.kind == NodeKind::global && n.text == "torch")
    if (auto dtype = dtype_from_name(n.name)) return *dtype;
  throw bad(doc, id, "expected a torch dtype, found " + doc.describe(id));
}

const pickle::AllowList& metadata_allow_list() {
  static const pickle::AllowList list = [] {
    pickle::AllowList l;
    for (std::string_view module : {kModule113, kModule2x}) {
      for (std::string_view cls : {"Metadata", "TensorStorageMetadata", "ChunkStorageMetadata",
                                   "BytesStorageMetadata", "MetadataIndex", "TensorProperties",
                                   "StorageMeta", "_MEM_FORMAT_ENCODING", "MEM_FORMAT_ENCODING"})
        l.add(module, cls);
    }
    l.add(kShardedTensorModule, "TensorProperties").add(kShardedTensorModule, "MEM_FORMAT_ENCODING");
    l.add("torch.distributed._shard.checkpoint.filesystem", "_StorageInfo");
    l.add("torch.distributed.checkpoint.filesystem", "_StorageInfo");
    for (int i = 0; i <= static_cast<int>(DType::quint2x4); ++i)
      l.add("torch", dtype_name(static_cast<DType>(i)));
    l.add("torch", "Size").add("torch.serialization", "_get_layout").add("builtins", "getattr");
    for (std::string_view module : {"pathlib", "pathlib._local"})
      for (std::string_view cls : {"PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath", "Path"})
        l.add(module, cls);
    return l;
  }();
  return list;
}

Metadata decode_metadata(std::span<const std::byte> bytes) {
  const Document doc = pickle::decode(bytes, metadata_allow_list());
  Metadata md;
  std::string module;
  const NodeId state = object_state(doc, doc.root(), "Metadata", &module);
  md.flavor = module == kModule113 ? Flavor::torch_1_13 : Flavor::torch_2x;
  if (state == pickle::kNoNode || doc.at(state).kind != NodeKind::dict)
    throw bad(doc, doc.root(), "Metadata has no attribute dict");

  const auto& sdm = items_of(doc, field(doc, state, "state_dict_metadata", "Metadata"),
                             NodeKind::dict, "state_dict_metadata");
  for (std::size_t i = 0; i + 1 < sdm.size(); i += 2)
    md.items.push_back(decode_item(doc, sdm[i], sdm[i + 1]));

  if (auto v = optional_field(doc, state, "planner_data")) md.planner_data = decode_planner_data(doc, *v);
  if (auto v = optional_field(doc, state, "storage_data")) {
    const auto& sd = items_of(doc, *v, NodeKind::dict, "storage_data");
    md.storage_data.reserve(sd.size() / 2);
    for (std::size_t i = 0; i + 1 < sd.size(); i += 2)
      md.storage_data.emplace_back(decode_index(doc, sd[i]), decode_storage_info(doc, sd[i + 1]));
  }
  if (auto v = optional_field(doc, state, "storage_meta")) md.storage_meta = decode_storage_meta(doc, *v);
  if (auto v = optional_field(doc, state, "version")) md.version = as_string(doc, *v, "version");

  const auto& attrs = doc.at(state).items;
  for (std::size_t i = 0; i + 1 < attrs.size(); i += 2) {
    const auto& name = as_string(doc, attrs[i], "Metadata attribute");
    if (name != "state_dict_metadata" && name != "planner_data" && name != "storage_data" &&
        name != "storage_meta" && name != "version")
      md.extra_attributes.push_back(name);
  }
  md.reindex();
  return md;
}

}  // namespace dcp::metadata
