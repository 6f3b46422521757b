// The pickle encoder: protocol-2 opcodes, which every Python 3 unpickler reads.
module;
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>
module dcp.pickle;
import dcp.error;
import dcp.bytes;

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
  // Python 3 reads the Python 2 name `__builtin__` only below protocol 3 (fix_imports), so the
  // builtins module is spelled for the protocol written, whichever spelling the caller used.
  if (module == "builtins" || module == "__builtin__") module = protocol_ < 3 ? "__builtin__" : "builtins";
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

void Encoder::append() { op('a'); }
void Encoder::setitem() { op('s'); }
void Encoder::pop() { op('0'); }
void Encoder::pop_mark() { op('1'); }

// BINPUT/BINGET ('q'/'h', one-byte index) or LONG_BINPUT/LONG_BINGET ('r'/'j', four bytes).
void Encoder::memo_op(std::uint8_t short_op, std::uint8_t long_op, std::uint32_t index) {
  const bool small = index < 256;
  op(small ? short_op : long_op);
  append_le(out_, index, small ? 1 : 4);
}

std::uint32_t Encoder::put() {
  if (next_memo_ == UINT32_MAX) throw Error(Errc::out_of_range, "more than 2^32 memo entries");
  memo_op('q', 'r', next_memo_);
  return next_memo_++;
}

void Encoder::get(std::uint32_t index) { memo_op('h', 'j', index); }

void Encoder::long_integer(std::string_view le_bytes) {
  if (le_bytes.size() > 255) throw Error(Errc::unimplemented, "integer wider than 255 bytes");
  op(0x8a);
  append_le(out_, le_bytes.size(), 1);
  raw(le_bytes.data(), le_bytes.size());
}

namespace {

// Encoder::value's walk. A first pass over the nodes reachable from the root counts how often
// each is reached (saturating at 2) and finds the nodes that lie on a cycle (Tarjan's strongly
// connected components, iteratively); the second pass memoizes those nodes (PUT the first time,
// GET afterwards). Where the PUT goes follows Python's pickler: lists and dicts right after
// EMPTY_LIST/EMPTY_DICT, before their items (so they can hold themselves); tuples, sets,
// strings and globals once built; REDUCE/NEWOBJ results before BUILD state and SETITEMS (so the
// state can refer back). A tuple or call that a cycle reaches again while its parts are being
// written is written again inside, and the outer copy is then dropped (POP_MARK / POPs, or POP
// after REDUCE) and fetched with GET, as Python does. Every cycle the decoder can build passes
// through a list, dict, call or object (only those are filled after they exist), so it stops
// at one of them, except a cycle through sets and tuples alone, which ends at max_depth.
// The nodes reachable from the root are numbered locally first, so writing a value costs
// O(the value), not O(its document): one document may hold many values that are written one
// by one (an imported torch.save file's objects all live in its one data.pkl).
class ValueWriter {
 public:
  ValueWriter(Encoder& e, const Document& doc, std::size_t max_depth,
              const std::function<void(const Document&, NodeId)>& persistent_id)
      : e_(e), doc_(doc), max_depth_(max_depth), persistent_id_(persistent_id) {
    const std::uint64_t source = std::max<std::uint64_t>(doc.source_size(), doc.size());
    limit_ = e.size() + (source > (UINT64_MAX >> 6) ? UINT64_MAX >> 1 : source * 32 + (std::uint64_t{1} << 20));
  }

  void write(NodeId root) {
    number(root);
    analyse(root);
    emit(root, 0);
  }

 private:
  // The k-th edge of `id` (items, then callee, args, state); kNoNode past the last.
  NodeId child(NodeId id, std::size_t k) const {
    const Node n = doc_.at(id);
    const auto items = n.items();
    if (k < items.size()) return items[k];
    switch (k - items.size()) {
      case 0: return n.callee();
      case 1: return n.args();
      case 2: return n.state();
      default: return kNoNode;
    }
  }

  void number(NodeId root) {
    std::vector<NodeId> stack{root};
    while (!stack.empty()) {
      const NodeId id = stack.back();
      stack.pop_back();
      if (!local_.emplace(id, static_cast<std::uint32_t>(local_.size())).second) continue;
      const std::size_t edges = doc_.at(id).items().size() + 3;
      for (std::size_t k = 0; k < edges; ++k)
        if (const NodeId c = child(id, k); c != kNoNode) stack.push_back(c);
    }
    refs_.assign(local_.size(), 0);
    cyclic_.assign(local_.size(), false);
  }
  std::uint32_t at(NodeId id) const { return local_.find(id)->second; }

  void analyse(NodeId root) {
    constexpr std::uint32_t kUnvisited = 0xFFFFFFFFu;
    std::vector<std::uint32_t> index(local_.size(), kUnvisited), low(local_.size(), 0);
    std::vector<bool> on_stack(local_.size(), false);
    std::vector<NodeId> component;
    struct Frame {
      NodeId id;
      std::size_t next_edge;
    };
    std::vector<Frame> path;
    std::uint32_t counter = 0;
    auto visit = [&](NodeId id) {
      index[at(id)] = low[at(id)] = counter++;
      component.push_back(id);
      on_stack[at(id)] = true;
      path.push_back({id, 0});
    };
    refs_.at(at(root)) = 1;
    visit(root);
    while (!path.empty()) {
      const NodeId v = path.back().id;
      const std::size_t edges = doc_.at(v).items().size() + 3;
      NodeId c = kNoNode;
      while (c == kNoNode && path.back().next_edge < edges) c = child(v, path.back().next_edge++);
      const std::uint32_t lv = at(v);
      if (c != kNoNode) {
        const std::uint32_t lc = at(c);
        if (refs_[lc] < 2) ++refs_[lc];
        if (c == v) cyclic_[lv] = true;
        if (index[lc] == kUnvisited) visit(c);
        else if (on_stack[lc]) low[lv] = std::min(low[lv], index[lc]);
        continue;
      }
      path.pop_back();
      if (!path.empty()) low[at(path.back().id)] = std::min(low[at(path.back().id)], low[lv]);
      if (low[lv] != index[lv]) continue;
      // v roots a strongly connected component: pop it; more than one node is a cycle.
      const auto first = std::find(component.rbegin(), component.rend(), v).base() - 1;
      const bool cycle = component.end() - first > 1;
      for (auto it = first; it != component.end(); ++it) {
        on_stack[at(*it)] = false;
        if (cycle) cyclic_[at(*it)] = true;
      }
      component.erase(first, component.end());
    }
  }

  bool shared(NodeId id) const { return refs_[at(id)] >= 2 || cyclic_[at(id)]; }
  void remember(NodeId id) {
    if (shared(id)) memo_.emplace(id, e_.put());
  }
  // A cycle wrote and memoized `id` while its parts were written: drop this copy's parts
  // (`pops` values, or everything down to the MARK when pops < 0) and fetch the memoized one.
  bool fetched_instead(NodeId id, int pops) {
    const auto it = memo_.find(id);
    if (it == memo_.end()) return false;
    if (pops < 0) e_.pop_mark();
    for (int i = 0; i < pops; ++i) e_.pop();
    e_.get(it->second);
    return true;
  }

  void items(std::span<const NodeId> ids, std::size_t depth) {
    for (NodeId child : ids) emit(child, depth + 1);
  }

  // An error about the value at `id`, at the offset of its opcode in the document's source.
  Error at_node(Error e, NodeId id) const {
    if (const auto offset = doc_.at(id).offset()) e.at_offset(*offset);
    return e;
  }

  void emit(NodeId id, std::size_t depth) {
    if (depth > max_depth_)
      throw at_node(Error(Errc::out_of_range, "value nested more than " + std::to_string(max_depth_) +
                                                  " levels deep (or a cycle through tuples or sets only) cannot be "
                                                  "encoded"),
                    id);
    if (e_.size() > limit_)
      throw at_node(Error(Errc::resource_exhausted, "re-encoded value grows past " + std::to_string(limit_) +
                                                        " bytes, from a pickle of " + std::to_string(doc_.source_size()) +
                                                        " bytes"),
                    id);
    if (const auto it = memo_.find(id); it != memo_.end()) return e_.get(it->second);
    const Node n = doc_.at(id);
    const auto children = n.items();
    switch (n.kind()) {
      case NodeKind::none: return e_.none();
      case NodeKind::boolean: return e_.boolean(n.boolean());
      case NodeKind::integer: return e_.integer(n.integer());
      case NodeKind::big_integer: return e_.long_integer(n.text());
      case NodeKind::floating: return e_.floating(n.floating());
      case NodeKind::string:
        e_.string(n.text());
        return remember(id);
      case NodeKind::bytes:
        e_.bytes(std::span(reinterpret_cast<const std::byte*>(n.text().data()), n.text().size()));
        return remember(id);
      case NodeKind::tuple:
        if (children.empty()) return e_.empty_tuple();  // Python's () is never memoized
        if (children.size() <= 3) {
          items(children, depth);
          if (fetched_instead(id, static_cast<int>(children.size()))) return;
          e_.tuple(children.size());
        } else {
          e_.mark();
          items(children, depth);
          if (fetched_instead(id, -1)) return;
          e_.tuple_from_mark();
        }
        return remember(id);
      case NodeKind::list:
      case NodeKind::dict:
        n.kind() == NodeKind::list ? e_.empty_list() : e_.empty_dict();
        remember(id);
        if (children.empty()) return;
        e_.mark();
        items(children, depth);
        return n.kind() == NodeKind::list ? e_.appends_from_mark() : e_.setitems_from_mark();
      case NodeKind::set:
      case NodeKind::frozenset:
        // builtins.set([items]), as protocol 2 writes a set (EMPTY_SET needs protocol 4).
        e_.global("builtins", n.kind() == NodeKind::set ? "set" : "frozenset");
        e_.empty_list();
        if (!children.empty()) {
          e_.mark();
          items(children, depth);
          e_.appends_from_mark();
        }
        e_.tuple(1);
        e_.reduce();
        if (fetched_instead(id, 1)) return;
        return remember(id);
      case NodeKind::global:
        e_.global(n.text(), n.name());
        return remember(id);
      case NodeKind::call:
      case NodeKind::object:
        emit(n.callee(), depth + 1);
        emit(n.args(), depth + 1);
        n.kind() == NodeKind::call ? e_.reduce() : e_.newobj();
        if (fetched_instead(id, 1)) return;
        remember(id);
        if (n.state() != kNoNode) {
          emit(n.state(), depth + 1);
          e_.build();
        }
        if (!children.empty()) {
          // Python writes listitems (APPENDS) before dictitems (SETITEMS); the document keeps
          // them in one list, so an object with both cannot be split again.
          if (n.has_appended_items() && n.has_set_items())
            throw at_node(Error(Errc::unimplemented, "re-encoding an object with both list items and dict items"), id);
          e_.mark();
          items(children, depth);
          n.has_appended_items() ? e_.appends_from_mark() : e_.setitems_from_mark();
        }
        return;
      case NodeKind::persistent:
        if (persistent_id_) persistent_id_(doc_, n.args());
        else emit(n.args(), depth + 1);
        return e_.persistent_id();  // Python does not memoize persistent ids
      default: throw Error(Errc::internal, "unknown node kind in Encoder::value");
    }
  }

  Encoder& e_;
  const Document& doc_;
  std::size_t max_depth_;
  const std::function<void(const Document&, NodeId)>& persistent_id_;
  std::uint64_t limit_ = 0;
  std::unordered_map<NodeId, std::uint32_t> local_;  // reachable node → its local number
  std::vector<std::uint8_t> refs_;                  // by local number
  std::vector<bool> cyclic_;
  std::unordered_map<NodeId, std::uint32_t> memo_;
};

}  // namespace

void Encoder::value(const Document& doc, NodeId id, std::size_t max_depth,
                    const std::function<void(const Document&, NodeId)>& persistent_id) {
  ValueWriter(*this, doc, max_depth, persistent_id).write(id);
}

std::vector<std::byte> Encoder::finish() {
  op('.');
  std::vector<std::byte> result;
  result.swap(out_);
  return result;
}

}  // namespace dcp::pickle
