// The pickle decoder: a stack machine over an arena that records values and never calls.
module;
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>
module dcp.pickle;
import dcp.error;

namespace dcp::pickle {
namespace {

// Opcodes by name (pickletools spelling, lowercased).
enum Op : std::uint8_t {
  kMark = '(', kStop = '.', kPop = '0', kPopMark = '1', kDup = '2', kBinInt = 'J',
  kBinInt1 = 'K', kBinInt2 = 'M', kNone = 'N', kBinPersId = 'Q', kReduce = 'R',
  kBinString = 'T', kShortBinString = 'U', kBinUnicode = 'X', kAppend = 'a', kBuild = 'b',
  kGlobal = 'c', kDict = 'd', kEmptyDict = '}', kAppends = 'e', kBinGet = 'h',
  kLongBinGet = 'j', kList = 'l', kEmptyList = ']', kBinPut = 'q', kLongBinPut = 'r',
  kSetItem = 's', kTuple = 't', kEmptyTuple = ')', kSetItems = 'u', kBinFloat = 'G',
  kBinBytes = 'B', kShortBinBytes = 'C', kProto = 0x80, kNewObj = 0x81, kTuple1 = 0x85,
  kTuple2 = 0x86, kTuple3 = 0x87, kNewTrue = 0x88, kNewFalse = 0x89, kLong1 = 0x8a,
  kLong4 = 0x8b, kShortBinUnicode = 0x8c, kBinUnicode8 = 0x8d, kBinBytes8 = 0x8e,
  kEmptySet = 0x8f, kAddItems = 0x90, kFrozenSet = 0x91, kNewObjEx = 0x92,
  kStackGlobal = 0x93, kMemoize = 0x94, kFrame = 0x95, kByteArray8 = 0x96,
};

std::string hex_byte(std::uint8_t b) {
  static constexpr char digits[] = "0123456789abcdef";
  return std::string("0x") + digits[b >> 4] + digits[b & 15];
}

// Python 2 module names that protocol-2 pickles use, as Python 3's fix_imports maps them.
std::string_view fix_module(std::string_view module) {
  if (module == "__builtin__") return "builtins";
  if (module == "copy_reg") return "copyreg";
  return module;
}

class Decoder {
 public:
  Decoder(std::span<const std::byte> in, const AllowList& allowed, const Limits& limits)
      : in_(in), allowed_(allowed), limits_(limits) {}

  Document run() {
    while (true) {
      op_start_ = pos_;
      if (pos_ >= in_.size())
        throw fail(Errc::data_loss, "pickle ends without a STOP opcode");
      op_start_ = pos_;
      const auto op = static_cast<std::uint8_t>(in_[pos_++]);
      if (op == kStop) {
        doc_.set_root(pop("STOP"));
        return std::move(doc_);
      }
      step(op);
    }
  }

 private:
  Error fail(Errc code, std::string message) const {
    Error e(code, std::move(message));
    e.at_offset(op_start_);
    return e;
  }

  std::span<const std::byte> take(std::uint64_t count, const char* what) {
    if (count > in_.size() - pos_)
      throw fail(Errc::data_loss, std::string(what) + " of " + std::to_string(count) +
                                      " bytes runs past the end of the pickle (" +
                                      std::to_string(in_.size() - pos_) + " bytes left)");
    auto out = in_.subspan(pos_, static_cast<std::size_t>(count));
    pos_ += static_cast<std::size_t>(count);
    return out;
  }

  std::uint64_t read_le(std::size_t width, const char* what) {
    auto b = take(width, what);
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < width; ++i) v |= std::uint64_t(std::uint8_t(b[i])) << (8 * i);
    return v;
  }

  std::string read_text(std::uint64_t length, const char* what) {
    auto b = take(length, what);
    return std::string(reinterpret_cast<const char*>(b.data()), b.size());
  }

  std::string read_line(const char* what) {
    const std::size_t limit = std::min<std::size_t>(in_.size() - pos_, 4096);
    for (std::size_t i = 0; i < limit; ++i) {
      if (in_[pos_ + i] == std::byte{'\n'}) {
        std::string line(reinterpret_cast<const char*>(in_.data() + pos_), i);
        pos_ += i + 1;
        return line;
      }
    }
    throw fail(Errc::data_loss, std::string(what) + " has no newline within 4096 bytes");
  }

  NodeId make(NodeKind kind) {
    if (doc_.size() >= limits_.max_nodes)
      throw fail(Errc::out_of_range,
                 "pickle builds more than " + std::to_string(limits_.max_nodes) + " values");
    Node n;
    n.kind = kind;
    n.offset = op_start_;
    return doc_.add(std::move(n));
  }

  void push(NodeId id) { stack_.push_back(id); }

  NodeId pop(const char* op_name) {
    const std::size_t floor = marks_.empty() ? 0 : marks_.back();
    if (stack_.size() <= floor)
      throw fail(Errc::data_loss, std::string(op_name) + " pops an empty stack");
    NodeId id = stack_.back();
    stack_.pop_back();
    return id;
  }

  NodeId& top(const char* op_name) {
    const std::size_t floor = marks_.empty() ? 0 : marks_.back();
    if (stack_.size() <= floor)
      throw fail(Errc::data_loss, std::string(op_name) + " needs a value on the stack");
    return stack_.back();
  }

  std::vector<NodeId> pop_mark(const char* op_name) {
    if (marks_.empty()) throw fail(Errc::data_loss, std::string(op_name) + " without a MARK");
    const std::size_t k = marks_.back();
    marks_.pop_back();
    std::vector<NodeId> items(stack_.begin() + static_cast<std::ptrdiff_t>(k), stack_.end());
    stack_.resize(k);
    return items;
  }

  NodeId container(NodeKind kind, std::vector<NodeId> items) {
    NodeId id = make(kind);
    doc_.mutable_at(id).items = std::move(items);
    return id;
  }

  void push_global(std::string module, std::string name) {
    module = std::string(fix_module(module));
    if (!allowed_.allows(module, name))
      throw fail(Errc::permission_denied, "global '" + module + "." + name +
                                              "' is not allowed here (nothing is executed)");
    NodeId id = make(NodeKind::global);
    Node& n = doc_.mutable_at(id);
    n.text = std::move(module);
    n.name = std::move(name);
    push(id);
  }

  void memo_put(std::uint64_t index) {
    if (memo_.size() >= limits_.max_memo && !memo_.contains(index))
      throw fail(Errc::out_of_range, "memo grows past " + std::to_string(limits_.max_memo));
    memo_[index] = top("PUT");
  }

  void memo_get(std::uint64_t index) {
    auto it = memo_.find(index);
    if (it == memo_.end())
      throw fail(Errc::data_loss, "memo slot " + std::to_string(index) + " was never set");
    push(it->second);
  }

  // The node that SETITEMS/APPENDS/BUILD may mutate: containers, or call/object results.
  Node& target(NodeId id, std::initializer_list<NodeKind> kinds, const char* op_name) {
    Node& n = doc_.mutable_at(id);
    for (NodeKind k : kinds)
      if (n.kind == k) return n;
    throw fail(Errc::data_loss, std::string(op_name) + " applied to " + doc_.describe(id));
  }

  void add_items(NodeId into, const std::vector<NodeId>& items, bool pairs, const char* name) {
    if (pairs && items.size() % 2 != 0)
      throw fail(Errc::data_loss, std::string(name) + " with an odd number of values");
    const auto kinds = pairs ? std::initializer_list<NodeKind>{NodeKind::dict, NodeKind::call,
                                                               NodeKind::object}
                             : std::initializer_list<NodeKind>{NodeKind::list, NodeKind::call,
                                                               NodeKind::object};
    Node& n = target(into, kinds, name);
    n.items.insert(n.items.end(), items.begin(), items.end());
  }

  void apply(bool is_newobj) {
    NodeId args = pop(is_newobj ? "NEWOBJ" : "REDUCE");
    NodeId callee = pop(is_newobj ? "NEWOBJ" : "REDUCE");
    if (doc_.at(callee).kind != NodeKind::global)
      throw fail(Errc::data_loss, "call of " + doc_.describe(callee) + ", not of a global");
    if (doc_.at(args).kind != NodeKind::tuple)
      throw fail(Errc::data_loss, "call arguments are " + doc_.describe(args) + ", not a tuple");
    NodeId id = make(is_newobj ? NodeKind::object : NodeKind::call);
    Node& n = doc_.mutable_at(id);
    n.callee = callee;
    n.args = args;
    push(id);
  }

  void push_int(std::int64_t v) {
    NodeId id = make(NodeKind::integer);
    doc_.mutable_at(id).integer = v;
    push(id);
  }

  void push_long(std::uint64_t length) {
    auto b = take(length, "LONG");
    if (length <= 8) {
      std::uint64_t v = 0;
      for (std::size_t i = 0; i < length; ++i) v |= std::uint64_t(std::uint8_t(b[i])) << (8 * i);
      if (length > 0 && length < 8 && (std::uint8_t(b[length - 1]) & 0x80))
        v |= ~std::uint64_t(0) << (8 * length);  // sign-extend
      push_int(static_cast<std::int64_t>(v));
      return;
    }
    NodeId id = make(NodeKind::big_integer);
    doc_.mutable_at(id).text.assign(reinterpret_cast<const char*>(b.data()), b.size());
    push(id);
  }

  void push_text(NodeKind kind, std::uint64_t length, const char* what) {
    std::string text = read_text(length, what);
    NodeId id = make(kind);
    doc_.mutable_at(id).text = std::move(text);
    push(id);
  }

  void step(std::uint8_t op) {
    switch (op) {
      case kProto: {
        const auto version = read_le(1, "PROTO");
        if (version < 2 || version > 5)
          throw fail(Errc::unimplemented, "pickle protocol " + std::to_string(version) +
                                              " is not supported (2 to 5 are)");
        return;
      }
      case kFrame: {
        const auto length = read_le(8, "FRAME");
        if (length > in_.size() - pos_)
          throw fail(Errc::data_loss, "frame of " + std::to_string(length) +
                                          " bytes runs past the end of the pickle");
        return;
      }
      case kMark:
        if (marks_.size() >= limits_.max_depth)
          throw fail(Errc::out_of_range,
                     "nesting deeper than " + std::to_string(limits_.max_depth));
        marks_.push_back(stack_.size());
        return;
      case kPop:
        if (!marks_.empty() && stack_.size() == marks_.back()) pop_mark("POP");
        else pop("POP");
        return;
      case kPopMark: pop_mark("POP_MARK"); return;
      case kDup: push(top("DUP")); return;
      case kNone: push(make(NodeKind::none)); return;
      case kNewTrue:
      case kNewFalse: {
        NodeId id = make(NodeKind::boolean);
        doc_.mutable_at(id).boolean = op == kNewTrue;
        push(id);
        return;
      }
      case kBinInt:
        push_int(static_cast<std::int32_t>(static_cast<std::uint32_t>(read_le(4, "BININT"))));
        return;
      case kBinInt1: push_int(static_cast<std::int64_t>(read_le(1, "BININT1"))); return;
      case kBinInt2: push_int(static_cast<std::int64_t>(read_le(2, "BININT2"))); return;
      case kLong1: push_long(read_le(1, "LONG1")); return;
      case kLong4: {
        const auto length = static_cast<std::int32_t>(static_cast<std::uint32_t>(read_le(4, "LONG4")));
        if (length < 0) throw fail(Errc::data_loss, "LONG4 with a negative length");
        push_long(static_cast<std::uint64_t>(length));
        return;
      }
      case kBinFloat: {
        auto b = take(8, "BINFLOAT");
        std::uint64_t bits = 0;
        for (int i = 0; i < 8; ++i) bits = (bits << 8) | std::uint8_t(b[i]);  // big-endian
        NodeId id = make(NodeKind::floating);
        std::memcpy(&doc_.mutable_at(id).floating, &bits, 8);
        push(id);
        return;
      }
      case kShortBinUnicode: push_text(NodeKind::string, read_le(1, "SHORT_BINUNICODE"), "string"); return;
      case kBinUnicode: push_text(NodeKind::string, read_le(4, "BINUNICODE"), "string"); return;
      case kBinUnicode8: push_text(NodeKind::string, read_le(8, "BINUNICODE8"), "string"); return;
      case kShortBinString: push_text(NodeKind::string, read_le(1, "SHORT_BINSTRING"), "string"); return;
      case kBinString: {
        const auto length = static_cast<std::int32_t>(static_cast<std::uint32_t>(read_le(4, "BINSTRING")));
        if (length < 0) throw fail(Errc::data_loss, "BINSTRING with a negative length");
        push_text(NodeKind::string, static_cast<std::uint64_t>(length), "string");
        return;
      }
      case kShortBinBytes: push_text(NodeKind::bytes, read_le(1, "SHORT_BINBYTES"), "bytes"); return;
      case kBinBytes: push_text(NodeKind::bytes, read_le(4, "BINBYTES"), "bytes"); return;
      case kBinBytes8: push_text(NodeKind::bytes, read_le(8, "BINBYTES8"), "bytes"); return;
      case kByteArray8: push_text(NodeKind::bytes, read_le(8, "BYTEARRAY8"), "bytearray"); return;
      case kEmptyTuple: push(container(NodeKind::tuple, {})); return;
      case kTuple1:
      case kTuple2:
      case kTuple3: {
        std::vector<NodeId> items(op - kTuple1 + 1);
        for (auto it = items.rbegin(); it != items.rend(); ++it) *it = pop("TUPLEn");
        push(container(NodeKind::tuple, std::move(items)));
        return;
      }
      case kTuple: push(container(NodeKind::tuple, pop_mark("TUPLE"))); return;
      case kEmptyList: push(container(NodeKind::list, {})); return;
      case kList: push(container(NodeKind::list, pop_mark("LIST"))); return;
      case kEmptyDict: push(container(NodeKind::dict, {})); return;
      case kDict: {
        auto items = pop_mark("DICT");
        if (items.size() % 2) throw fail(Errc::data_loss, "DICT with an odd number of values");
        push(container(NodeKind::dict, std::move(items)));
        return;
      }
      case kEmptySet: push(container(NodeKind::set, {})); return;
      case kFrozenSet: push(container(NodeKind::frozenset, pop_mark("FROZENSET"))); return;
      case kAppend: {
        NodeId value = pop("APPEND");
        add_items(top("APPEND"), {value}, false, "APPEND");
        return;
      }
      case kAppends: {
        auto items = pop_mark("APPENDS");
        add_items(top("APPENDS"), items, false, "APPENDS");
        return;
      }
      case kSetItem: {
        NodeId value = pop("SETITEM");
        NodeId key = pop("SETITEM");
        add_items(top("SETITEM"), {key, value}, true, "SETITEM");
        return;
      }
      case kSetItems: {
        auto items = pop_mark("SETITEMS");
        add_items(top("SETITEMS"), items, true, "SETITEMS");
        return;
      }
      case kAddItems: {
        auto items = pop_mark("ADDITEMS");
        Node& n = target(top("ADDITEMS"), {NodeKind::set}, "ADDITEMS");
        n.items.insert(n.items.end(), items.begin(), items.end());
        return;
      }
      case kBinPut: memo_put(read_le(1, "BINPUT")); return;
      case kLongBinPut: memo_put(read_le(4, "LONG_BINPUT")); return;
      case kMemoize: memo_put(memo_.size()); return;
      case kBinGet: memo_get(read_le(1, "BINGET")); return;
      case kLongBinGet: memo_get(read_le(4, "LONG_BINGET")); return;
      case kGlobal: {
        std::string module = read_line("GLOBAL module");
        std::string name = read_line("GLOBAL name");
        push_global(std::move(module), std::move(name));
        return;
      }
      case kStackGlobal: {
        NodeId name = pop("STACK_GLOBAL");
        NodeId module = pop("STACK_GLOBAL");
        if (doc_.at(name).kind != NodeKind::string || doc_.at(module).kind != NodeKind::string)
          throw fail(Errc::data_loss, "STACK_GLOBAL needs two strings");
        push_global(doc_.at(module).text, doc_.at(name).text);
        return;
      }
      case kReduce: apply(false); return;
      case kNewObj: apply(true); return;
      case kNewObjEx: {
        NodeId kwargs = pop("NEWOBJ_EX");
        if (doc_.at(kwargs).kind != NodeKind::dict || !doc_.at(kwargs).items.empty())
          throw fail(Errc::unimplemented, "NEWOBJ_EX with keyword arguments");
        apply(true);
        return;
      }
      case kBuild: {
        NodeId state = pop("BUILD");
        Node& n = target(top("BUILD"), {NodeKind::object, NodeKind::call}, "BUILD");
        n.state = state;
        return;
      }
      case kBinPersId: {
        if (!limits_.allow_persistent_ids)
          throw fail(Errc::permission_denied, "persistent id (BINPERSID) is not allowed here");
        NodeId pid = pop("BINPERSID");
        NodeId id = make(NodeKind::persistent);
        doc_.mutable_at(id).args = pid;
        push(id);
        return;
      }
      default:
        throw fail(Errc::unimplemented,
                   "opcode " + hex_byte(op) + " is not supported (DCP files never use it)");
    }
  }

  std::span<const std::byte> in_;
  const AllowList& allowed_;
  const Limits& limits_;
  std::size_t pos_ = 0;
  std::size_t op_start_ = 0;
  Document doc_;
  std::vector<NodeId> stack_;
  std::vector<std::size_t> marks_;
  std::unordered_map<std::uint64_t, NodeId> memo_;
};

}  // namespace

Document decode(std::span<const std::byte> bytes, const AllowList& allowed,
                const Limits& limits) {
  return Decoder(bytes, allowed, limits).run();
}

}  // namespace dcp::pickle
