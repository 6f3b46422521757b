// The pickle decoder: a stack machine over an arena that records values and never calls.
module;
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>
module dcp.pickle;
import dcp.error;
import dcp.bytes;

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
      : in_(in), allowed_(allowed), limits_(limits) {
    const auto scaled = checked_mul(limits.memory_per_byte, in.size());
    const auto budget = scaled ? checked_add(*scaled, limits.memory_floor) : std::nullopt;
    memory_budget_ = budget.value_or(UINT64_MAX);
    doc_.set_source_size(in.size());
  }

  Document run() {
    while (true) {
      op_start_ = pos_;
      if (pos_ >= in_.size())
        throw fail(Errc::data_loss, "pickle ends without a STOP opcode");
      const auto op = static_cast<std::uint8_t>(in_[pos_++]);
      if (op == kStop) {
        doc_.set_root(pop("STOP"), here());
        return std::move(doc_);
      }
      step(op);
      check_memory();
    }
  }

 private:
  // The current opcode's offset as the document records it.
  std::uint64_t here() const { return limits_.base_offset + op_start_; }

  Error fail(Errc code, std::string message) const {
    Error e(code, std::move(message));
    e.at_offset(here());
    return e;
  }

  // Everything this decode holds, against the budget: checked after every opcode, so a
  // hostile input stops within one opcode's growth of it.
  void check_memory() {
    const std::uint64_t used = doc_.memory_bytes() + stack_.capacity() * sizeof(NodeId) +
                               marks_.capacity() * sizeof(std::size_t) + memo_.capacity() * sizeof(NodeId) +
                               sparse_memo_.size() * 32;
    if (used > memory_budget_)
      throw fail(Errc::resource_exhausted, "decoding needs more than " + std::to_string(memory_budget_) +
                                               " bytes of memory for a pickle of " + std::to_string(in_.size()) +
                                               " bytes");
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
    return load_le(take(width, what), width);
  }

  static std::string_view as_text(std::span<const std::byte> b) {
    return {reinterpret_cast<const char*>(b.data()), b.size()};
  }

  std::string_view read_line(const char* what) {
    const std::size_t limit = std::min<std::size_t>(in_.size() - pos_, 4096);
    for (std::size_t i = 0; i < limit; ++i) {
      if (in_[pos_ + i] == std::byte{'\n'}) {
        const auto line = as_text(in_.subspan(pos_, i));
        pos_ += i + 1;
        return line;
      }
    }
    throw fail(Errc::data_loss, std::string(what) + " has no newline within 4096 bytes");
  }

  // Every node made counts against max_nodes (the four shared nodes do not).
  void count_node() {
    if (++nodes_ > limits_.max_nodes)
      throw fail(Errc::out_of_range,
                 "pickle builds more than " + std::to_string(limits_.max_nodes) + " values");
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

  NodeId top(const char* op_name) {
    const std::size_t floor = marks_.empty() ? 0 : marks_.back();
    if (stack_.size() <= floor)
      throw fail(Errc::data_loss, std::string(op_name) + " needs a value on the stack");
    return stack_.back();
  }

  // The values above the topmost MARK (valid until the stack changes); drop_mark() pops them.
  std::span<const NodeId> above_mark(const char* op_name) {
    if (marks_.empty()) throw fail(Errc::data_loss, std::string(op_name) + " without a MARK");
    return std::span<const NodeId>(stack_).subspan(marks_.back());
  }
  void drop_mark() {
    stack_.resize(marks_.back());
    marks_.pop_back();
  }

  void container_from_mark(NodeKind kind, const char* op_name, bool pairs = false) {
    const auto items = above_mark(op_name);
    if (pairs && items.size() % 2)
      throw fail(Errc::data_loss, std::string(op_name) + " with an odd number of values");
    if (!items.empty() || kind != NodeKind::tuple) count_node();
    const NodeId id = doc_.add_container(kind, here(), items);
    drop_mark();
    push(id);
  }

  void push_container(NodeKind kind, std::span<const NodeId> items) {
    if (!items.empty() || kind != NodeKind::tuple) count_node();
    push(doc_.add_container(kind, here(), items));
  }

  void push_global(std::string_view module, std::string_view name) {
    module = fix_module(module);
    if (!allowed_.allows(module, name))
      throw fail(Errc::permission_denied, "global '" + std::string(module) + "." + std::string(name) +
                                              "' is not allowed here (nothing is executed)");
    count_node();
    push(doc_.add_global(here(), module, name));
  }

  // Python numbers the memo 0, 1, 2, ... (MEMOIZE is len(memo)), so a dense vector holds it;
  // an index past the input size (which no sequential numbering reaches) goes to a map.
  void memo_put(std::uint64_t index) {
    const NodeId value = top("PUT");
    if (index < in_.size()) {
      if (index >= memo_.size()) memo_.resize(index + 1, kNoNode);
      if (memo_[index] == kNoNode) new_memo_entry();
      memo_[index] = value;
      return;
    }
    auto [it, inserted] = sparse_memo_.try_emplace(index, value);
    if (inserted) new_memo_entry();
    else it->second = value;
  }

  void new_memo_entry() {
    if (memo_count_ >= limits_.max_memo)
      throw fail(Errc::out_of_range, "memo grows past " + std::to_string(limits_.max_memo));
    ++memo_count_;
  }

  void memo_get(std::uint64_t index) {
    NodeId value = kNoNode;
    if (index < memo_.size()) {
      value = memo_[index];
    } else if (auto it = sparse_memo_.find(index); it != sparse_memo_.end()) {
      value = it->second;
    }
    if (value == kNoNode)
      throw fail(Errc::data_loss, "memo slot " + std::to_string(index) + " was never set");
    push(value);
  }

  // The node that SETITEMS/APPENDS/ADDITEMS/BUILD may mutate: containers, or call/object results.
  NodeId target(NodeId id, std::initializer_list<NodeKind> kinds, const char* op_name) {
    const NodeKind kind = doc_.at(id).kind();
    for (NodeKind k : kinds)
      if (kind == k) return id;
    throw fail(Errc::data_loss, std::string(op_name) + " applied to " + doc_.describe(id));
  }

  void add_items(NodeId into, std::span<const NodeId> items, bool pairs, const char* name) {
    if (pairs && items.size() % 2 != 0)
      throw fail(Errc::data_loss, std::string(name) + " with an odd number of values");
    const auto kinds = pairs ? std::initializer_list<NodeKind>{NodeKind::dict, NodeKind::call,
                                                               NodeKind::object}
                             : std::initializer_list<NodeKind>{NodeKind::list, NodeKind::call,
                                                               NodeKind::object};
    doc_.append_items(target(into, kinds, name), items, pairs);
  }

  // APPENDS / SETITEMS / ADDITEMS: the values above the MARK go into the value below it.
  void add_items_from_mark(const char* name, bool pairs, bool set) {
    const auto items = above_mark(name);
    if (marks_.back() <= (marks_.size() >= 2 ? marks_[marks_.size() - 2] : 0))
      throw fail(Errc::data_loss, std::string(name) + " needs a value below its MARK");
    const NodeId into = stack_[marks_.back() - 1];
    if (set) doc_.append_items(target(into, {NodeKind::set}, name), items, false);
    else add_items(into, items, pairs, name);
    drop_mark();
  }

  void apply(bool is_newobj) {
    NodeId args = pop(is_newobj ? "NEWOBJ" : "REDUCE");
    NodeId callee = pop(is_newobj ? "NEWOBJ" : "REDUCE");
    if (doc_.at(callee).kind() != NodeKind::global)
      throw fail(Errc::data_loss, "call of " + doc_.describe(callee) + ", not of a global");
    if (doc_.at(args).kind() != NodeKind::tuple)
      throw fail(Errc::data_loss, "call arguments are " + doc_.describe(args) + ", not a tuple");
    count_node();
    push(doc_.add_call(is_newobj ? NodeKind::object : NodeKind::call, here(), callee, args));
  }

  void push_int(std::int64_t v) {
    count_node();
    push(doc_.add_integer(here(), v));
  }

  void push_long(std::uint64_t length) {
    auto b = take(length, "LONG");
    if (length <= 8) {
      std::uint64_t v = load_le(b, length);
      if (length > 0 && length < 8 && (std::uint8_t(b[length - 1]) & 0x80))
        v |= ~std::uint64_t(0) << (8 * length);  // sign-extend
      push_int(static_cast<std::int64_t>(v));
      return;
    }
    count_node();
    push(doc_.add_text(NodeKind::big_integer, here(), as_text(b)));
  }

  // `utf8`: the text of a *UNICODE opcode, which Python decodes as UTF-8 with surrogatepass
  // (a file torch cannot unpickle is refused here rather than read differently).
  void push_text(NodeKind kind, std::uint64_t length, const char* what, bool utf8 = false) {
    const auto text = as_text(take(length, what));
    if (utf8) check_utf8(text);
    count_node();
    push(doc_.add_text(kind, here(), text));
  }

  void check_utf8(std::string_view text) {
    for (std::size_t i = 0; i < text.size();) {
      if (static_cast<unsigned char>(text[i]) < 0x80) {
        ++i;
        continue;
      }
      char32_t code;
      const std::size_t n = decode_utf8(text, i, code);
      if (n == 0) throw fail(Errc::data_loss, "string is not UTF-8 (at byte " + std::to_string(i) + " of it)");
      i += n;
    }
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
        if (!marks_.empty() && stack_.size() == marks_.back()) marks_.pop_back();
        else pop("POP");
        return;
      case kPopMark:
        (void)above_mark("POP_MARK");
        drop_mark();
        return;
      case kDup: push(top("DUP")); return;
      case kNone: push(Document::kNone); return;
      case kNewTrue: push(Document::kTrue); return;
      case kNewFalse: push(Document::kFalse); return;
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
        double value;
        std::memcpy(&value, &bits, 8);
        count_node();
        push(doc_.add_floating(here(), value));
        return;
      }
      case kShortBinUnicode: push_text(NodeKind::string, read_le(1, "SHORT_BINUNICODE"), "string", true); return;
      case kBinUnicode: push_text(NodeKind::string, read_le(4, "BINUNICODE"), "string", true); return;
      case kBinUnicode8: push_text(NodeKind::string, read_le(8, "BINUNICODE8"), "string", true); return;
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
      case kEmptyTuple: push(Document::kEmptyTuple); return;
      case kTuple1:
      case kTuple2:
      case kTuple3: {
        const std::size_t n = op - kTuple1 + 1;
        const std::size_t floor = marks_.empty() ? 0 : marks_.back();
        if (stack_.size() < floor + n) throw fail(Errc::data_loss, "TUPLEn pops an empty stack");
        const std::size_t first = stack_.size() - n;
        count_node();
        const NodeId id = doc_.add_container(NodeKind::tuple, here(), std::span<const NodeId>(stack_).subspan(first));
        stack_.resize(first);
        push(id);
        return;
      }
      case kTuple: container_from_mark(NodeKind::tuple, "TUPLE"); return;
      case kEmptyList: push_container(NodeKind::list, {}); return;
      case kList: container_from_mark(NodeKind::list, "LIST"); return;
      case kEmptyDict: push_container(NodeKind::dict, {}); return;
      case kDict: container_from_mark(NodeKind::dict, "DICT", true); return;
      case kEmptySet: push_container(NodeKind::set, {}); return;
      case kFrozenSet: container_from_mark(NodeKind::frozenset, "FROZENSET"); return;
      case kAppend: {
        const NodeId value = pop("APPEND");
        add_items(top("APPEND"), std::span(&value, 1), false, "APPEND");
        return;
      }
      case kAppends: add_items_from_mark("APPENDS", false, false); return;
      case kSetItem: {
        const NodeId value = pop("SETITEM");
        const NodeId key = pop("SETITEM");
        const NodeId pair[2] = {key, value};
        add_items(top("SETITEM"), pair, true, "SETITEM");
        return;
      }
      case kSetItems: add_items_from_mark("SETITEMS", true, false); return;
      case kAddItems: add_items_from_mark("ADDITEMS", false, true); return;
      case kBinPut: memo_put(read_le(1, "BINPUT")); return;
      case kLongBinPut: memo_put(read_le(4, "LONG_BINPUT")); return;
      case kMemoize: memo_put(memo_count_); return;
      case kBinGet: memo_get(read_le(1, "BINGET")); return;
      case kLongBinGet: memo_get(read_le(4, "LONG_BINGET")); return;
      case kGlobal: {
        const auto module = read_line("GLOBAL module");
        const auto name = read_line("GLOBAL name");
        push_global(module, name);
        return;
      }
      case kStackGlobal: {
        const NodeId name = pop("STACK_GLOBAL");
        const NodeId module = pop("STACK_GLOBAL");
        if (doc_.at(name).kind() != NodeKind::string || doc_.at(module).kind() != NodeKind::string)
          throw fail(Errc::data_loss, "STACK_GLOBAL needs two strings");
        push_global(doc_.at(module).text(), doc_.at(name).text());
        return;
      }
      case kReduce: apply(false); return;
      case kNewObj: apply(true); return;
      case kNewObjEx: {
        const NodeId kwargs = pop("NEWOBJ_EX");
        if (doc_.at(kwargs).kind() != NodeKind::dict || !doc_.at(kwargs).items().empty())
          throw fail(Errc::unimplemented, "NEWOBJ_EX with keyword arguments");
        apply(true);
        return;
      }
      case kBuild: {
        const NodeId state = pop("BUILD");
        doc_.set_state(target(top("BUILD"), {NodeKind::object, NodeKind::call}, "BUILD"), state);
        return;
      }
      case kBinPersId: {
        if (!limits_.allow_persistent_ids)
          throw fail(Errc::permission_denied, "persistent id (BINPERSID) is not allowed here");
        const NodeId pid = pop("BINPERSID");
        count_node();
        push(doc_.add_persistent(here(), pid));
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
  std::uint64_t memory_budget_ = 0;
  std::size_t pos_ = 0;
  std::size_t op_start_ = 0;
  std::size_t nodes_ = 0;
  Document doc_;
  std::vector<NodeId> stack_;
  std::vector<std::size_t> marks_;
  std::vector<NodeId> memo_;  // dense part, kNoNode where unset
  std::unordered_map<std::uint64_t, NodeId> sparse_memo_;
  std::uint64_t memo_count_ = 0;  // distinct indices set
};

}  // namespace

Document decode(std::span<const std::byte> bytes, const AllowList& allowed,
                const Limits& limits) {
  return Decoder(bytes, allowed, limits).run();
}

}  // namespace dcp::pickle
