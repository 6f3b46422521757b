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
using pickle::Node;
using pickle::NodeId;
using pickle::NodeKind;

constexpr std::string_view kModule113 = "torch.distributed._shard.checkpoint.metadata";
constexpr std::string_view kModule2x = "torch.distributed.checkpoint.metadata";
constexpr std::string_view kShardedTensorModule = "torch.distributed._shard.sharded_tensor.metadata";

// The pickle decode's own memory budget (bytes per input byte): torch's `.metadata` files
// decode to 5–9 (memoized strings and small objects), a flood of one-byte container opcodes
// to 20–24.
constexpr std::size_t kPickleMemoryPerByte = 16;


// The decoded Metadata may take kBudgetPerByte bytes per byte of `.metadata` plus
// kBudgetFloor. Memo sharing is normal (a MetadataIndex.offset is the chunk's offsets object,
// a relative path or fqn is one string fetched for every chunk), so the model is bigger than
// the pickle: 2.6–3.3× for the files torch 1.13 and 2.x wrote for the tests, about 12× for
// the most a writer reaches without hostile sharing (1000-character keys fetched by every
// chunk's MetadataIndex, ~120 pickle bytes a chunk). A hostile file fetches one 64-dim Size
// or a long string thousands of times with 2-byte BINGETs (up to 256× and more per byte).
constexpr std::uint64_t kBudgetPerByte = 32;
constexpr std::uint64_t kBudgetFloor = std::uint64_t{16} << 20;

Error bad(const Document& doc, NodeId id, std::string message) {
  Error e(Errc::data_loss, std::move(message));
  if (id != pickle::kNoNode)
    if (auto offset = doc.at(id).offset()) e.at_offset(*offset);
  return e;
}

// A torch.Size value (call of torch.Size with a tuple of ints), at most kMaxRank dims.
Shape read_size(const Document& doc, NodeId id);

// Maps the value tree of one `.metadata` onto Metadata, charging every copy it makes (shapes,
// strings, entries) against the budget: memo sharing lets one pickled value be read many
// times, and the budget keeps the whole decode proportional to the file.
class MetadataDecoder {
 public:
  // `build_indexes`: the Metadata's lookups, which validate builds again for itself.
  MetadataDecoder(const Document& doc, std::uint64_t input_bytes, bool build_indexes)
      : doc_(doc),
        budget_(checked_add(checked_mul(input_bytes, kBudgetPerByte).value_or(UINT64_MAX), kBudgetFloor)
                    .value_or(UINT64_MAX)),
        input_bytes_(input_bytes),
        build_indexes_(build_indexes) {}

  Metadata run();

 private:
  Metadata run_unchecked();
  // Runs `fn`; an error from inside without a byte offset (a shared None/True/False/() has
  // none) gets the offset of `id`, the enclosing value.
  template <class Fn>
  auto within(NodeId id, Fn&& fn) -> decltype(fn()) {
    try {
      return fn();
    } catch (Error& e) {
      if (auto offset = doc_.at(id).offset()) e.at_offset(*offset);
      throw;
    }
  }

  void charge(std::uint64_t bytes, NodeId id, std::string_view what) {
    used_ += bytes;
    if (used_ <= budget_) return;
    Error e(Errc::resource_exhausted, "decoded model passes its budget of " + std::to_string(budget_) + " bytes for " +
                                          std::to_string(input_bytes_) +
                                          " bytes of .metadata (memo references repeat a shared value): " +
                                          std::string(what));
    if (auto offset = doc_.at(id).offset()) e.at_offset(*offset);
    throw e;
  }

  // A budget error moved to the repeated entry that ran out (a chunk of a list, a storage
  // entry): its offset and index, the shared value it reached in the message.
  Error at_entry(const Error& e, NodeId entry, std::string_view what, std::size_t i, std::size_t n) const {
    Error moved(e.code(), e.message() + " at " + std::string(what) + " " + std::to_string(i) + " of " + std::to_string(n));
    if (auto offset = doc_.at(entry).offset()) moved.at_offset(*offset);
    if (!e.context().key.empty()) moved.for_key(e.context().key);
    return moved;
  }

  Shape size(NodeId id, std::string_view what) {
    Shape shape = read_size(doc_, id);
    charge(sizeof(Shape) + (shape.size() > Shape::kInline ? shape.size() * sizeof(std::int64_t) : 0), id, what);
    return shape;
  }

  std::string_view text(NodeId id, std::string_view what) {
    if (doc_.at(id).kind() != NodeKind::string)
      throw bad(doc_, id, std::string(what) + " is " + doc_.describe(id) + ", not a str");
    return doc_.at(id).text();
  }

  std::string string(NodeId id, std::string_view what) {
    const auto t = text(id, what);
    charge(sizeof(std::string) + t.size(), id, what);
    return std::string(t);
  }

  // NEWOBJ of `class_name` (any module): returns its state (kNoNode when there was no BUILD,
  // e.g. BytesStorageMetadata).
  NodeId object_state(NodeId id, std::string_view class_name, std::string* module_out = nullptr) {
    const Node n = doc_.at(id);
    if (n.kind() != NodeKind::object || doc_.at(n.callee()).name() != class_name)
      throw bad(doc_, id, "expected a " + std::string(class_name) + ", found " + doc_.describe(id));
    if (module_out) *module_out = doc_.at(n.callee()).text();
    // Attribute names are strings: a key of another kind is corruption (Python itself fails
    // on the unhashable ones, and would drop the attribute the key replaced).
    if (n.state() != pickle::kNoNode && doc_.at(n.state()).kind() == NodeKind::dict) {
      const auto items = doc_.at(n.state()).items();
      for (std::size_t i = 0; i < items.size(); i += 2)
        if (doc_.at(items[i]).kind() != NodeKind::string)
          throw bad(doc_, items[i], std::string(class_name) + " attribute name is " + doc_.describe(items[i]) + ", not a str");
    }
    return n.state();
  }

  NodeId field(NodeId state, std::string_view key, std::string_view owner) {
    if (state == pickle::kNoNode || doc_.at(state).kind() != NodeKind::dict)
      throw bad(doc_, state, std::string(owner) + " has no attribute dict");
    if (auto v = doc_.find_key(state, key)) return *v;
    throw bad(doc_, state, std::string(owner) + " lacks '" + std::string(key) + "'");
  }

  std::optional<NodeId> optional_field(NodeId state, std::string_view key) {
    if (auto v = doc_.find_key(state, key); v && doc_.at(*v).kind() != NodeKind::none) return v;
    return std::nullopt;
  }

  std::int64_t as_int(NodeId id, std::string_view what) {
    if (doc_.at(id).kind() != NodeKind::integer)
      throw bad(doc_, id, std::string(what) + " is " + doc_.describe(id) + ", not an int");
    return doc_.at(id).integer();
  }

  std::uint64_t as_uint(NodeId id, std::string_view what) {
    const std::int64_t v = as_int(id, what);
    if (v < 0) throw bad(doc_, id, std::string(what) + " is negative (" + std::to_string(v) + ")");
    return static_cast<std::uint64_t>(v);
  }

  bool as_bool(NodeId id, std::string_view what) {
    if (doc_.at(id).kind() == NodeKind::boolean) return doc_.at(id).boolean();
    throw bad(doc_, id, std::string(what) + " is " + doc_.describe(id) + ", not a bool");
  }

  std::span<const NodeId> items_of(NodeId id, NodeKind kind, std::string_view what) {
    if (doc_.at(id).kind() != kind)
      throw bad(doc_, id, std::string(what) + " has the wrong type: " + doc_.describe(id));
    return doc_.at(id).items();
  }

  // A call of module.name(args): returns the args tuple's items.
  std::span<const NodeId> call_args(NodeId id, std::string_view module, std::string_view name) {
    const Node n = doc_.at(id);
    if (n.kind() != NodeKind::call || !doc_.is_global(n.callee(), module, name))
      throw bad(doc_, id, "expected " + std::string(module) + "." + std::string(name) + "(...), found " +
                              doc_.describe(id));
    return doc_.at(n.args()).items();
  }

  MemoryFormat memory_format(NodeId id);
  TensorProperties properties(NodeId id);
  ChunkStorageMetadata chunk(NodeId id);
  ItemMetadata item(NodeId key, NodeId value);
  MetadataIndex index(NodeId id);
  StorageInfo storage_info(NodeId id);
  std::string path(NodeId id);
  StorageMeta storage_meta(NodeId id);
  std::vector<std::pair<std::string, std::vector<PathPart>>> planner_data(NodeId id);

  const Document& doc_;
  std::uint64_t budget_;
  std::uint64_t input_bytes_;
  bool build_indexes_;
  std::uint64_t used_ = 0;
};

MemoryFormat MetadataDecoder::memory_format(NodeId id) {
  // Python 3.11.0–3.11.6 pickle enum members as getattr(cls, 'NAME'); others as cls(value).
  const Node n = doc_.at(id);
  if (n.kind() != NodeKind::call) throw bad(doc_, id, "memory format is " + doc_.describe(id));
  const auto args = doc_.at(n.args()).items();
  if (doc_.is_global(n.callee(), "builtins", "getattr") && args.size() == 2) {
    const auto member = text(args[1], "memory format member");
    if (member == "TORCH_CONTIGUOUS_FORMAT") return MemoryFormat::contiguous;
    if (member == "TORCH_CHANNELS_LAST") return MemoryFormat::channels_last;
    if (member == "TORCH_PRESERVE_FORMAT") return MemoryFormat::preserve;
    throw bad(doc_, args[1], "unknown memory format '" + std::string(member.substr(0, 64)) + "'");
  }
  if (args.size() == 1 && doc_.at(n.callee()).name().find("MEM_FORMAT_ENCODING") != std::string_view::npos) {
    switch (as_int(args[0], "memory format")) {
      case 0: return MemoryFormat::contiguous;
      case 1: return MemoryFormat::channels_last;
      case 2: return MemoryFormat::preserve;
      default: throw bad(doc_, args[0], "unknown memory format value");
    }
  }
  throw bad(doc_, id, "memory format is " + doc_.describe(id));
}

TensorProperties MetadataDecoder::properties(NodeId id) {
  return within(id, [&] {
    const NodeId state = object_state(id, "TensorProperties");
    if (state == pickle::kNoNode) throw bad(doc_, id, "TensorProperties without state");
    TensorProperties p;
    if (doc_.at(state).kind() == NodeKind::tuple) {
      // __getstate__: (dtype, layout, requires_grad, memory_format, pin_memory[, extras...]).
      const auto t = doc_.at(state).items();
      if (t.size() < 5)
        throw bad(doc_, state, "TensorProperties state has " + std::to_string(t.size()) + " fields, expected 5");
      p.dtype = decode_dtype(doc_, t[0]);
      const auto layout = call_args(t[1], "torch.serialization", "_get_layout");
      if (layout.size() != 1 || text(layout[0], "layout") != "torch.strided") {
        Error e(Errc::unimplemented, "only strided tensors are supported (layout " +
                                         doc_.describe(layout.empty() ? t[1] : layout[0]) + ")");
        if (auto offset = doc_.at(t[1]).offset()) e.at_offset(*offset);
        throw e;
      }
      p.requires_grad = as_bool(t[2], "requires_grad");
      p.memory_format = memory_format(t[3]);
      p.pin_memory = as_bool(t[4], "pin_memory");
      return p;
    }
    // Dict state (older writers): memory_format cannot be pickled there, so it is absent.
    p.dtype = decode_dtype(doc_, field(state, "dtype", "TensorProperties"));
    if (auto v = optional_field(state, "requires_grad")) p.requires_grad = as_bool(*v, "requires_grad");
    if (auto v = optional_field(state, "pin_memory")) p.pin_memory = as_bool(*v, "pin_memory");
    return p;
  });
}

ChunkStorageMetadata MetadataDecoder::chunk(NodeId id) {
  return within(id, [&] {
    const NodeId state = object_state(id, "ChunkStorageMetadata");
    charge(sizeof(ChunkStorageMetadata), id, "a chunk");
    ChunkStorageMetadata c;
    c.offsets = size(field(state, "offsets", "ChunkStorageMetadata"), "chunk offsets");
    c.sizes = size(field(state, "sizes", "ChunkStorageMetadata"), "chunk sizes");
    c.pickle_offset = doc_.at(id).offset().value_or(0);
    return c;
  });
}

ItemMetadata MetadataDecoder::item(NodeId key, NodeId value) {
  ItemMetadata item;
  item.fqn = string(key, "state_dict_metadata key");
  try {
    return within(value, [&] {
      charge(sizeof(ItemMetadata), value, "an item");
      item.pickle_offset = doc_.at(value).offset().value_or(0);
      const Node n = doc_.at(value);
      if (n.kind() == NodeKind::object && doc_.at(n.callee()).name() == "BytesStorageMetadata") {
        item.storage = BytesStorageMetadata{};
        return std::move(item);
      }
      const NodeId state = object_state(value, "TensorStorageMetadata");
      TensorStorageMetadata t;
      t.properties = properties(field(state, "properties", "TensorStorageMetadata"));
      t.size = size(field(state, "size", "TensorStorageMetadata"), "tensor size");
      const auto chunks = items_of(field(state, "chunks", "TensorStorageMetadata"), NodeKind::list, "chunks");
      for (std::size_t i = 0; i < chunks.size(); ++i) {
        try {
          t.chunks.push_back(chunk(chunks[i]));
        } catch (Error& e) {
          if (e.code() == Errc::resource_exhausted) throw at_entry(e, chunks[i], "chunk", i, chunks.size());
          throw;
        }
      }
      item.storage = std::move(t);
      return std::move(item);
    });
  } catch (Error& e) {
    e.for_key(item.fqn);
    if (auto offset = doc_.at(key).offset()) e.at_offset(*offset);  // e.g. the value is a shared None
    throw;
  }
}

MetadataIndex MetadataDecoder::index(NodeId id) {
  return within(id, [&] {
    const NodeId state = object_state(id, "MetadataIndex");
    MetadataIndex index;
    index.fqn = string(field(state, "fqn", "MetadataIndex"), "MetadataIndex.fqn");
    try {
      if (auto v = optional_field(state, "offset")) index.offset = size(*v, "MetadataIndex.offset");
      if (auto v = optional_field(state, "index")) index.index = as_int(*v, "MetadataIndex.index");
    } catch (Error& e) {
      e.for_key(index.fqn);
      throw;
    }
    return index;
  });
}

StorageInfo MetadataDecoder::storage_info(NodeId id) {
  return within(id, [&] {
    const NodeId state = object_state(id, "_StorageInfo");
    StorageInfo info;
    info.pickle_offset = doc_.at(id).offset().value_or(0);
    info.relative_path = string(field(state, "relative_path", "_StorageInfo"), "relative_path");
    info.offset = as_uint(field(state, "offset", "_StorageInfo"), "_StorageInfo.offset");
    info.length = as_uint(field(state, "length", "_StorageInfo"), "_StorageInfo.length");
    if (auto v = optional_field(state, "transform_descriptors"))
      for (NodeId d : items_of(*v, NodeKind::list, "transform_descriptors"))
        info.transform_descriptors.push_back(string(d, "transform descriptor"));
    return info;
  });
}

// pathlib paths pickle as PosixPath(*parts) (≤3.12) or PosixPath(str) (3.13); join the parts.
std::string MetadataDecoder::path(NodeId id) {
  const Node n = doc_.at(id);
  if (n.kind() == NodeKind::string) return string(id, "checkpoint_id");
  if (n.kind() != NodeKind::call || doc_.at(n.callee()).kind() != NodeKind::global ||
      !doc_.at(n.callee()).text().starts_with("pathlib"))
    throw bad(doc_, id, "checkpoint_id is " + doc_.describe(id));
  const bool windows = doc_.at(n.callee()).name().find("Windows") != std::string_view::npos;
  const char sep = windows ? '\\' : '/';
  std::string path;
  for (NodeId part : doc_.at(n.args()).items()) {
    const auto text = string(part, "path part");
    if (!path.empty() && path.back() != sep && path.back() != '/') path.push_back(sep);
    path += text;
  }
  return path;
}

StorageMeta MetadataDecoder::storage_meta(NodeId id) {
  return within(id, [&] {
    const NodeId state = object_state(id, "StorageMeta");
    StorageMeta meta;
    if (state == pickle::kNoNode) return meta;
    if (auto v = optional_field(state, "checkpoint_id")) meta.checkpoint_id = path(*v);
    if (auto v = optional_field(state, "save_id")) meta.save_id = string(*v, "save_id");
    if (auto v = optional_field(state, "load_id")) meta.load_id = string(*v, "load_id");
    if (auto v = optional_field(state, "modules"))
      for (NodeId m : items_of(*v, NodeKind::list, "modules")) meta.modules.push_back(string(m, "module"));
    return meta;
  });
}

std::vector<std::pair<std::string, std::vector<PathPart>>> MetadataDecoder::planner_data(NodeId id) {
  std::vector<std::pair<std::string, std::vector<PathPart>>> result;
  const auto items = items_of(id, NodeKind::dict, "planner_data");
  for (std::size_t i = 0; i + 1 < items.size(); i += 2) {
    within(items[i + 1], [&] {
      std::vector<PathPart> path;
      const Node value = doc_.at(items[i + 1]);
      if (value.kind() != NodeKind::tuple && value.kind() != NodeKind::list)
        throw bad(doc_, items[i + 1], "planner_data path is " + doc_.describe(items[i + 1]));
      for (NodeId part : value.items()) {
        if (doc_.at(part).kind() == NodeKind::string) {
          path.emplace_back(string(part, "planner_data path part"));
        } else {
          charge(sizeof(PathPart), items[i + 1], "planner_data");
          path.emplace_back(as_int(part, "planner_data path part"));
        }
      }
      result.emplace_back(string(items[i], "planner_data key"), std::move(path));
    });
  }
  return result;
}

Metadata MetadataDecoder::run() {
  try {
    return run_unchecked();
  } catch (Error& e) {
    e.at_offset(doc_.stop_offset());  // only if nothing nearer was known (a shared root)
    throw;
  }
}

Metadata MetadataDecoder::run_unchecked() {
  Metadata md;
  std::string module;
  const NodeId state = object_state(doc_.root(), "Metadata", &module);
  md.flavor = module == kModule113 ? Flavor::torch_1_13 : Flavor::torch_2x;
  if (state == pickle::kNoNode || doc_.at(state).kind() != NodeKind::dict)
    throw bad(doc_, doc_.root(), "Metadata has no attribute dict");

  const auto sdm = items_of(field(state, "state_dict_metadata", "Metadata"), NodeKind::dict, "state_dict_metadata");
  for (std::size_t i = 0; i + 1 < sdm.size(); i += 2) md.items.push_back(item(sdm[i], sdm[i + 1]));

  if (auto v = optional_field(state, "planner_data")) md.planner_data = planner_data(*v);
  if (auto v = optional_field(state, "storage_data")) {
    const auto sd = items_of(*v, NodeKind::dict, "storage_data");
    for (std::size_t i = 0; i + 1 < sd.size(); i += 2) {
      try {
        charge(sizeof(std::pair<MetadataIndex, StorageInfo>), sd[i], "storage_data");
        auto key = index(sd[i]);
        try {
          md.storage_data.emplace_back(std::move(key), storage_info(sd[i + 1]));
        } catch (Error& e) {
          e.for_key(key.fqn);
          throw;
        }
      } catch (Error& e) {
        if (e.code() != Errc::resource_exhausted) throw;
        Error moved = at_entry(e, sd[i], "storage_data entry", i / 2, sd.size() / 2);
        // The budget ran out inside the key itself: name its fqn, read without copying it.
        const auto& key = doc_.at(sd[i]);
        if (key.kind() == NodeKind::object && key.state() != pickle::kNoNode)
          if (auto fqn = doc_.find_key(key.state(), "fqn"); fqn && doc_.at(*fqn).kind() == NodeKind::string)
            moved.for_key(doc_.at(*fqn).text());
        throw moved;
      }
    }
  }
  if (auto v = optional_field(state, "storage_meta")) md.storage_meta = storage_meta(*v);
  if (auto v = optional_field(state, "version")) md.version = string(*v, "version");

  const auto attrs = doc_.at(state).items();
  for (std::size_t i = 0; i + 1 < attrs.size(); i += 2) {
    const auto name = text(attrs[i], "Metadata attribute");
    if (name != "state_dict_metadata" && name != "planner_data" && name != "storage_data" &&
        name != "storage_meta" && name != "version")
      md.extra_attributes.push_back(string(attrs[i], "Metadata attribute"));
  }
  if (build_indexes_) md.reindex();
  return md;
}

Shape read_size(const Document& doc, NodeId id) {
  const Node n = doc.at(id);
  if (n.kind() != NodeKind::call || !doc.is_global(n.callee(), "torch", "Size"))
    throw bad(doc, id, "expected torch.Size(...), found " + doc.describe(id));
  const auto args = doc.at(n.args()).items();
  if (args.size() != 1) throw bad(doc, id, "torch.Size takes one tuple");
  const Node dims = doc.at(args[0]);
  if (dims.kind() != NodeKind::tuple && dims.kind() != NodeKind::list)
    throw bad(doc, args[0], "torch.Size of " + doc.describe(args[0]));
  if (dims.items().size() > kMaxRank) {
    Error e(Errc::resource_exhausted, "torch.Size of " + std::to_string(dims.items().size()) +
                                          " dims; dcpp reads tensors of at most " + std::to_string(kMaxRank));
    if (auto offset = n.offset()) e.at_offset(*offset);
    throw e;
  }
  Shape shape;
  shape.reserve(dims.items().size());
  for (NodeId d : dims.items()) {
    if (doc.at(d).kind() != NodeKind::integer)
      throw bad(doc, d, "dimension is " + doc.describe(d) + ", not an int");
    shape.push_back(doc.at(d).integer());
  }
  return shape;
}

}  // namespace

DType decode_dtype(const Document& doc, NodeId id) {
  const Node n = doc.at(id);
  if (n.kind() == NodeKind::global && n.text() == "torch")
    if (auto dtype = dtype_from_name(n.name())) return *dtype;
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
    for (const auto& info : dtype_table()) l.add("torch", info.name);
    l.add("torch", "Size").add("torch.serialization", "_get_layout").add("builtins", "getattr");
    for (std::string_view module : {"pathlib", "pathlib._local"})
      for (std::string_view cls : {"PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath", "Path"})
        l.add(module, cls);
    return l;
  }();
  return list;
}

namespace {
Metadata decode(std::span<const std::byte> bytes, bool build_indexes) {
  pickle::Limits limits;
  limits.memory_per_byte = kPickleMemoryPerByte;
  const Document doc = pickle::decode(bytes, metadata_allow_list(), limits);
  return MetadataDecoder(doc, bytes.size(), build_indexes).run();
}
}  // namespace

Metadata decode_metadata(std::span<const std::byte> bytes) { return decode(bytes, true); }

ValidatedMetadata decode_validated(std::span<const std::byte> bytes) { return validate(decode(bytes, false)); }

}  // namespace dcp::metadata
