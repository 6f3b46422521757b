// BYTE_IO items: Python objects saved with torch.save, decoded without running them.
module;
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
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

void write_value(json::JsonWriter& w, const Document& doc, NodeId id, int depth) {
  if (depth > 100) throw Error(Errc::out_of_range, "object nested more than 100 levels deep");
  const auto& n = doc.at(id);
  auto array = [&](const std::vector<NodeId>& items) {
    w.begin_array();
    for (NodeId i : items) write_value(w, doc, i, depth + 1);
    w.end_array();
  };
  auto mapping = [&](const std::vector<NodeId>& items) {
    w.begin_object();
    for (std::size_t i = 0; i + 1 < items.size(); i += 2) {
      const auto& k = doc.at(items[i]);
      if (k.kind == NodeKind::string) w.key(k.text);
      else if (k.kind == NodeKind::integer) w.key(std::to_string(k.integer));
      else throw Error(Errc::unimplemented, "dict key " + doc.describe(items[i]) + " has no JSON form").at_offset(k.offset);
      write_value(w, doc, items[i + 1], depth + 1);
    }
    w.end_object();
  };
  switch (n.kind) {
    case NodeKind::none: w.null(); return;
    case NodeKind::boolean: w.value(n.boolean); return;
    case NodeKind::integer: w.value(n.integer); return;
    case NodeKind::floating: w.value(n.floating); return;
    case NodeKind::string: w.value(n.text); return;
    case NodeKind::bytes: w.value(n.text); return;
    case NodeKind::tuple:
    case NodeKind::list:
    case NodeKind::set:
    case NodeKind::frozenset: array(n.items); return;
    case NodeKind::dict: mapping(n.items); return;
    case NodeKind::call: {
      const auto& callee = doc.at(n.callee);
      const auto& args = doc.at(n.args).items;
      const std::string name = callee.text + "." + callee.name;
      if (name == "collections.OrderedDict") return mapping(n.items);
      if ((name == "builtins.set" || name == "builtins.frozenset") && args.size() <= 1)
        return args.empty() ? array({}) : write_value(w, doc, args[0], depth + 1);
      if (name == "_codecs.encode" && args.size() == 2 && doc.at(args[0]).kind == NodeKind::string) {
        w.value(latin1_to_bytes(doc.at(args[0]).text));
        return;
      }
      if (name == "builtins.bytes" && args.empty()) {
        w.value(std::string_view{});
        return;
      }
      if (name == "torch.Size" && args.size() == 1) return write_value(w, doc, args[0], depth + 1);
      if (name == "torch.device" && !args.empty() && doc.at(args[0]).kind == NodeKind::string) {
        std::string text = doc.at(args[0]).text;
        if (args.size() > 1 && doc.at(args[1]).kind == NodeKind::integer) text += ":" + std::to_string(doc.at(args[1]).integer);
        w.value(text);
        return;
      }
      throw Error(Errc::unimplemented, "object holds " + name + "(...), which has no JSON form").at_offset(n.offset);
    }
    case NodeKind::global:
      if (n.text == "torch") {  // a dtype
        w.value("torch." + n.name);
        return;
      }
      [[fallthrough]];
    default:
      throw Error(Errc::unimplemented, "object holds " + doc.describe(id) + ", which has no JSON form").at_offset(n.offset);
  }
}

}  // namespace

const pickle::AllowList& object_allow_list() {
  static const pickle::AllowList list = [] {
    pickle::AllowList l{{"collections", "OrderedDict"}, {"builtins", "set"}, {"builtins", "frozenset"},
                        {"builtins", "bytes"}, {"builtins", "bytearray"}, {"builtins", "complex"},
                        {"builtins", "slice"}, {"_codecs", "encode"}, {"torch", "Size"},
                        {"torch", "device"}, {"torch._utils", "_rebuild_tensor_v2"},
                        {"torch._utils", "_rebuild_tensor_v3"}, {"torch._utils", "_rebuild_parameter"},
                        {"torch", "UntypedStorage"}, {"torch.storage", "UntypedStorage"}};
    for (std::string_view s : {"DoubleStorage", "FloatStorage", "HalfStorage", "BFloat16Storage", "LongStorage",
                               "IntStorage", "ShortStorage", "CharStorage", "ByteStorage", "BoolStorage",
                               "ComplexFloatStorage", "ComplexDoubleStorage"})
      l.add("torch", s);
    for (int i = 0; i <= static_cast<int>(DType::quint2x4); ++i) l.add("torch", dtype_name(static_cast<DType>(i)));
    return l;
  }();
  return list;
}

pickle::Document parse_object(std::span<const std::byte> archive) {
  const auto parsed = zip::parse_archive(archive);
  const auto pkl = zip::record_data(parsed, archive, "data.pkl");
  pickle::Limits limits;
  limits.allow_persistent_ids = true;
  try {
    return pickle::decode(pkl, object_allow_list(), limits);
  } catch (Error& e) {
    e.add_offset(static_cast<std::uint64_t>(pkl.data() - archive.data()));
    throw;
  }
}

std::string object_to_json(const pickle::Document& doc, pickle::NodeId id) {
  json::JsonWriter w;
  write_value(w, doc, id, 0);
  return w.take();
}

}  // namespace dcp::record
