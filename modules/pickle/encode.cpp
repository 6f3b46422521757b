// The pickle encoder: protocol-2 opcodes, which every Python 3 unpickler reads.
module;
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>
module dcp.pickle;
import dcp.error;

namespace dcp::pickle {

Encoder::Encoder(int protocol) {
  if (protocol < 2 || protocol > 5)
    throw Error(Errc::invalid_argument, "pickle protocol " + std::to_string(protocol) + " (2 to 5)");
  op(0x80);
  op(static_cast<std::uint8_t>(protocol));
  protocol_ = protocol;
}

void Encoder::op(std::uint8_t opcode) { out_.push_back(std::byte{opcode}); }

void Encoder::raw(const void* data, std::size_t size) {
  const auto* p = static_cast<const std::byte*>(data);
  out_.insert(out_.end(), p, p + size);
}

namespace {
template <class T>
void append_le(std::vector<std::byte>& out, T value, std::size_t width) {
  for (std::size_t i = 0; i < width; ++i)
    out.push_back(std::byte(static_cast<std::uint8_t>(static_cast<std::uint64_t>(value) >> (8 * i))));
}
}  // namespace

void Encoder::none() { op('N'); }
void Encoder::boolean(bool value) { op(value ? 0x88 : 0x89); }

void Encoder::integer(std::int64_t value) {
  if (value >= 0 && value < 256) {
    op('K');
    append_le(out_, value, 1);
  } else if (value >= 0 && value < 65536) {
    op('M');
    append_le(out_, value, 2);
  } else if (value >= INT32_MIN && value <= INT32_MAX) {
    op('J');
    append_le(out_, value, 4);
  } else {
    // LONG1 with the shortest two's complement encoding.
    std::size_t width = 8;
    while (width > 1) {
      const std::int64_t shifted = value >> (8 * (width - 1) - 1);
      if (shifted != 0 && shifted != -1) break;
      --width;
    }
    op(0x8a);
    append_le(out_, width, 1);
    append_le(out_, value, width);
  }
}

void Encoder::floating(double value) {
  std::uint64_t bits;
  std::memcpy(&bits, &value, 8);
  op('G');
  for (int i = 7; i >= 0; --i) out_.push_back(std::byte(static_cast<std::uint8_t>(bits >> (8 * i))));
}

void Encoder::string(std::string_view utf8) {
  op('X');
  if (utf8.size() > UINT32_MAX) throw Error(Errc::out_of_range, "string longer than 4 GiB");
  append_le(out_, utf8.size(), 4);
  raw(utf8.data(), utf8.size());
}

void Encoder::bytes(std::span<const std::byte> data) {
  if (protocol_ >= 3) {
    op('B');
    if (data.size() > UINT32_MAX) throw Error(Errc::out_of_range, "bytes longer than 4 GiB");
    append_le(out_, data.size(), 4);
    raw(data.data(), data.size());
    return;
  }
  // Protocol 2 has no bytes opcode; Python writes _codecs.encode(latin-1 text, 'latin1').
  std::string latin1;
  for (std::byte b : data) {
    const auto c = static_cast<std::uint8_t>(b);
    if (c < 0x80) {
      latin1.push_back(static_cast<char>(c));
    } else {
      latin1.push_back(static_cast<char>(0xC0 | (c >> 6)));
      latin1.push_back(static_cast<char>(0x80 | (c & 0x3F)));
    }
  }
  global("_codecs", "encode");
  string(latin1);
  string("latin1");
  tuple(2);
  reduce();
}

void Encoder::global(std::string_view module, std::string_view name) {
  op('c');
  raw(module.data(), module.size());
  op('\n');
  raw(name.data(), name.size());
  op('\n');
}

void Encoder::mark() { op('('); }
void Encoder::empty_tuple() { op(')'); }
void Encoder::tuple_from_mark() { op('t'); }

void Encoder::tuple(std::size_t count) {
  if (count == 0) return empty_tuple();
  if (count <= 3) return op(static_cast<std::uint8_t>(0x85 + count - 1));
  throw Error(Errc::internal, "Encoder::tuple(n > 3): use mark() and tuple_from_mark()");
}

void Encoder::empty_list() { op(']'); }
void Encoder::appends_from_mark() { op('e'); }
void Encoder::empty_dict() { op('}'); }
void Encoder::setitems_from_mark() { op('u'); }
void Encoder::reduce() { op('R'); }
void Encoder::newobj() { op(0x81); }
void Encoder::build() { op('b'); }
void Encoder::persistent_id() { op('Q'); }

void Encoder::value(const Document& doc, NodeId id, std::size_t max_depth) {
  if (max_depth == 0) throw Error(Errc::out_of_range, "value nested too deeply to encode");
  const Node& n = doc.at(id);
  auto items = [&](std::size_t begin = 0) {
    for (std::size_t i = begin; i < n.items.size(); ++i) value(doc, n.items[i], max_depth - 1);
  };
  switch (n.kind) {
    case NodeKind::none: return none();
    case NodeKind::boolean: return boolean(n.boolean);
    case NodeKind::integer: return integer(n.integer);
    case NodeKind::big_integer:
      if (n.text.size() > 255) throw Error(Errc::unimplemented, "integer wider than 255 bytes");
      op(0x8a);
      append_le(out_, n.text.size(), 1);
      raw(n.text.data(), n.text.size());
      return;
    case NodeKind::floating: return floating(n.floating);
    case NodeKind::string: return string(n.text);
    case NodeKind::bytes:
      return bytes(std::span(reinterpret_cast<const std::byte*>(n.text.data()), n.text.size()));
    case NodeKind::tuple:
      if (n.items.size() <= 3) {
        items();
        return tuple(n.items.size());
      }
      mark();
      items();
      return tuple_from_mark();
    case NodeKind::list:
    case NodeKind::dict:
      n.kind == NodeKind::list ? empty_list() : empty_dict();
      if (n.items.empty()) return;
      mark();
      items();
      return n.kind == NodeKind::list ? appends_from_mark() : setitems_from_mark();
    case NodeKind::set:
    case NodeKind::frozenset:
      // Protocol 2 spelling: builtins.set([items]).
      global("__builtin__", n.kind == NodeKind::set ? "set" : "frozenset");
      empty_list();
      if (!n.items.empty()) {
        mark();
        items();
        appends_from_mark();
      }
      tuple(1);
      return reduce();
    case NodeKind::global: return global(n.text == "builtins" ? "__builtin__" : n.text, n.name);
    case NodeKind::call:
    case NodeKind::object:
      value(doc, n.callee, max_depth - 1);
      value(doc, n.args, max_depth - 1);
      n.kind == NodeKind::call ? reduce() : newobj();
      if (n.state != kNoNode) {
        value(doc, n.state, max_depth - 1);
        build();
      }
      if (!n.items.empty()) {
        mark();
        items();
        // Items on a call/object came from SETITEMS (pairs) or APPENDS; pairs of string keys
        // are the common case (OrderedDict), so re-emit them as SETITEMS.
        setitems_from_mark();
      }
      return;
    case NodeKind::persistent:
      value(doc, n.args, max_depth - 1);
      return persistent_id();
    default: throw Error(Errc::internal, "unknown node kind in Encoder::value");
  }
}

std::vector<std::byte> Encoder::finish() {
  op('.');
  std::vector<std::byte> result;
  result.swap(out_);
  return result;
}

}  // namespace dcp::pickle
