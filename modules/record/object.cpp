// BYTE_IO items: Python objects saved with torch.save, decoded without running them.
module;
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>
module dcp.record;
import dcp.error;
import dcp.pickle;
import dcp.zip;
import dcp.metadata;
import dcp.json;

namespace dcp::record {
namespace {

using pickle::Document;
using pickle::Node;
using pickle::NodeId;
using pickle::NodeKind;

// latin-1 text (as _codecs.encode(text, 'latin1') carries bytes) back to raw bytes.
std::string latin1_to_bytes(std::string_view utf8) {
  std::string out;
  for (std::size_t i = 0; i < utf8.size(); ++i) {
    const auto c = static_cast<unsigned char>(utf8[i]);
    if (c >= 0xC2 && c <= 0xC3 && i + 1 < utf8.size()) {
      out.push_back(static_cast<char>(((c & 0x03) << 6) | (static_cast<unsigned char>(utf8[++i]) & 0x3F)));
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  return out;
}

// JSON holds no references, so a value the pickle shares is written out again each time it
// is reached: the output is bounded instead (kJsonPerByte per byte of data.pkl plus
// kJsonFloor). Without sharing, JSON is at most ~6 bytes per pickle byte (a NONE opcode is
// "null,", a control character in a string "\u0001"); the margin covers strings that an object
// really repeats by memo. A value that contains itself has no JSON form at all.
constexpr std::uint64_t kJsonPerByte = 16;
constexpr std::uint64_t kJsonFloor = std::uint64_t{1} << 20;

class JsonRenderer {
 public:
  explicit JsonRenderer(const Document& doc)
      : doc_(doc),
        limit_(checked_add(checked_mul(doc.source_size(), kJsonPerByte).value_or(UINT64_MAX), kJsonFloor)
                   .value_or(UINT64_MAX)),
        on_path_(doc.size(), false) {}

  std::string render(NodeId id) {
    value(id, 0);
    return w_.take();
  }

 private:
  [[noreturn]] void fail(Errc code, std::string message, NodeId id) const {
    Error e(code, std::move(message));
    if (auto offset = doc_.at(id).offset()) e.at_offset(*offset);
    throw e;
  }

  void array(std::span<const NodeId> items, int depth) {
    w_.begin_array();
    for (NodeId i : items) value(i, depth + 1);
    w_.end_array();
  }

  void mapping(std::span<const NodeId> items, int depth) {
    w_.begin_object();
    for (std::size_t i = 0; i + 1 < items.size(); i += 2) {
      const Node k = doc_.at(items[i]);
      if (k.kind() == NodeKind::string) w_.key(k.text());
      else if (k.kind() == NodeKind::integer) w_.key(std::to_string(k.integer()));
      else fail(Errc::unimplemented, "dict key " + doc_.describe(items[i]) + " has no JSON form", items[i]);
      value(items[i + 1], depth + 1);
    }
    w_.end_object();
  }

  void value(NodeId id, int depth) {
    if (depth > 100) fail(Errc::out_of_range, "object nested more than 100 levels deep", id);
    if (w_.str().size() > limit_)
      fail(Errc::resource_exhausted,
           "object's JSON passes " + std::to_string(limit_) + " bytes for a pickle of " +
               std::to_string(doc_.source_size()) + " bytes (shared values are written out each time)",
           id);
    if (on_path_[id]) fail(Errc::unimplemented, "object contains itself, which has no JSON form", id);
    on_path_[id] = true;
    write(id, depth);
    on_path_[id] = false;
  }

  void write(NodeId id, int depth) {
    const Node n = doc_.at(id);
    switch (n.kind()) {
      case NodeKind::none: w_.null(); return;
      case NodeKind::boolean: w_.value(n.boolean()); return;
      case NodeKind::integer: w_.value(n.integer()); return;
      case NodeKind::floating: w_.value(n.floating()); return;
      case NodeKind::string: w_.value(n.text()); return;
      case NodeKind::bytes: w_.value(n.text()); return;
      case NodeKind::tuple:
      case NodeKind::list:
      case NodeKind::set:
      case NodeKind::frozenset: array(n.items(), depth); return;
      case NodeKind::dict: mapping(n.items(), depth); return;
      case NodeKind::call: {
        const Node callee = doc_.at(n.callee());
        const auto args = doc_.at(n.args()).items();
        const std::string name = std::string(callee.text()) + "." + std::string(callee.name());
        if (name == "collections.OrderedDict") return mapping(n.items(), depth);
        if ((name == "builtins.set" || name == "builtins.frozenset") && args.size() <= 1)
          return args.empty() ? array({}, depth) : value(args[0], depth + 1);
        if (name == "_codecs.encode" && args.size() == 2 && doc_.at(args[0]).kind() == NodeKind::string) {
          w_.value(latin1_to_bytes(doc_.at(args[0]).text()));
          return;
        }
        if (name == "builtins.bytes" && args.empty()) {
          w_.value(std::string_view{});
          return;
        }
        if (name == "torch.Size" && args.size() == 1) return value(args[0], depth + 1);
        if (name == "torch.device" && !args.empty() && doc_.at(args[0]).kind() == NodeKind::string) {
          std::string text(doc_.at(args[0]).text());
          if (args.size() > 1 && doc_.at(args[1]).kind() == NodeKind::integer)
            text += ":" + std::to_string(doc_.at(args[1]).integer());
          w_.value(text);
          return;
        }
        fail(Errc::unimplemented, "object holds " + name + "(...), which has no JSON form", id);
      }
      case NodeKind::global:
        if (n.text() == "torch") {  // a dtype
          w_.value("torch." + std::string(n.name()));
          return;
        }
        [[fallthrough]];
      default: fail(Errc::unimplemented, "object holds " + doc_.describe(id) + ", which has no JSON form", id);
    }
  }

  const Document& doc_;
  std::uint64_t limit_;
  std::vector<bool> on_path_;
  json::JsonWriter w_;
};

}  // namespace

const pickle::AllowList& object_allow_list() {
  static const pickle::AllowList list = [] {
    pickle::AllowList l = tensor_allow_list();
    for (const auto& [module, name] :
         {std::pair{"builtins", "set"}, {"builtins", "frozenset"}, {"builtins", "bytes"}, {"builtins", "bytearray"},
          {"builtins", "complex"}, {"builtins", "slice"}, {"_codecs", "encode"}, {"torch", "Size"}, {"torch", "device"},
          {"torch._utils", "_rebuild_parameter"}})
      l.add(module, name);
    return l;
  }();
  return list;
}

TorchSave parse_torch_save(std::span<const std::byte> bytes) {
  if (!bytes.empty() && bytes[0] == std::byte{0x80})
    throw Error(Errc::unimplemented,
                "legacy (non-zip) torch.save format is not supported; re-save it with torch >= 1.6 "
                "(_use_new_zipfile_serialization=True)")
        .at_offset(0);
  if (bytes.size() < 4 || std::memcmp(bytes.data(), "PK\x03\x04", 4) != 0)
    throw Error(Errc::data_loss, "not a torch.save zip archive (no PK\\3\\4 signature)").at_offset(0);
  TorchSave out;
  out.archive = zip::parse_archive(bytes);
  if (const auto* order = zip::find(out.archive.entries, out.archive.prefix + "byteorder")) {
    const auto text = zip::record_data(out.archive, bytes, "byteorder");
    if (std::string_view(reinterpret_cast<const char*>(text.data()), text.size()) != "little")
      throw Error(Errc::unimplemented, "big-endian tensor data (byteorder record) is not supported")
          .at_offset(order->local_header_offset);
  }
  const auto pkl = zip::record_data(out.archive, bytes, "data.pkl");
  pickle::Limits limits;
  limits.allow_persistent_ids = true;
  limits.base_offset = static_cast<std::uint64_t>(pkl.data() - bytes.data());  // offsets in the archive
  out.document = pickle::decode(pkl, object_allow_list(), limits);
  return out;
}

pickle::Document parse_object(std::span<const std::byte> archive) { return parse_torch_save(archive).document; }

std::string object_to_json(const pickle::Document& doc, pickle::NodeId id) { return JsonRenderer(doc).render(id); }

namespace {

Error at_node(Error e, const Document& doc, NodeId id) {
  if (auto offset = doc.at(id).offset()) e.at_offset(*offset);
  return e;
}

}  // namespace

std::uint64_t for_each_object_tensor(const Document& doc, NodeId id, std::uint64_t max_nodes,
                                     const std::function<void(NodeId, const TensorRecord&, bool first_view)>& tensor) {
  struct Seen {  // a storage, as the first tensor that views it saw it
    DType dtype;
    std::uint64_t numel;
  };
  std::unordered_map<std::string, Seen> storages;
  std::unordered_set<NodeId> seen;
  std::vector<NodeId> stack{id};
  while (!stack.empty()) {
    const NodeId n = stack.back();
    stack.pop_back();
    if (n == pickle::kNoNode || n >= doc.size() || !seen.insert(n).second) continue;
    if (seen.size() > max_nodes)
      throw at_node(Error(Errc::resource_exhausted, "object has more than " + std::to_string(max_nodes) + " values"), doc, n);
    const Node node = doc.at(n);
    if (node.kind() == NodeKind::persistent)
      throw at_node(Error(Errc::unimplemented, "object holds a storage outside a tensor"), doc, n);
    if (!is_tensor_rebuild(doc, n)) {
      for (auto child : node.items()) stack.push_back(child);
      stack.push_back(node.callee());
      stack.push_back(node.args());
      stack.push_back(node.state());
      continue;
    }
    const TensorRecord r = tensor_record(doc, n);
    try {
      if (r.sizes.size() > metadata::kMaxRank)
        throw Error(Errc::unimplemented, "tensor of " + std::to_string(r.sizes.size()) + " dims (at most " +
                                             std::to_string(metadata::kMaxRank) + ")");
      if (dtype_info(r.dtype).rebuild == TensorRebuild::none)
        throw Error(Errc::unimplemented, std::string(dtype_name(r.dtype)) + " tensors are not supported");
      check_view(r);
      const auto [it, first] = storages.emplace(r.storage_key, Seen{r.dtype, r.storage_numel});
      if (!first && (it->second.dtype != r.dtype || it->second.numel != r.storage_numel))
        throw Error(Errc::data_loss, "two tensors view storage " + r.storage_key + " as different dtypes or sizes");
      tensor(n, r, first);
    } catch (Error& e) {
      throw at_node(std::move(e), doc, n);
    }
  }
  return seen.size();
}

StorageMap find_storages(const TorchSave& saved, std::span<const std::byte> bytes, pickle::NodeId id,
                         std::uint64_t max_nodes, std::uint64_t* visited) {
  StorageMap out;
  const auto count = for_each_object_tensor(saved.document, id, max_nodes, [&](NodeId, const TensorRecord& r, bool first_view) {
    if (!first_view) return;
    const zip::Entry* entry = zip::find(saved.archive.entries, saved.archive.prefix + "data/" + r.storage_key);
    if (!entry) throw Error(Errc::data_loss, "archive has no storage record data/" + r.storage_key);
    const auto index = static_cast<std::size_t>(entry - saved.archive.entries.data());
    const auto data = bytes.subspan(saved.archive.data_offsets[index], entry->size);
    try {
      check_storage_size(r, entry->size);
      zip::verify_crc32(*entry, data);
    } catch (Error& e) {
      throw e.at_offset(entry->local_header_offset);
    }
    out.emplace(r.storage_key, data);
  });
  if (visited) *visited += count;
  return out;
}

}  // namespace dcp::record
