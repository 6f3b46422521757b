// dcp.pickle — a pickle decoder that never imports or calls anything, and an encoder.
//
// `decode` turns pickle bytes (protocols 2–5) into a `Document`: an arena of `Node`s where a
// GLOBAL is just a (module, name) pair, REDUCE a `call` node, NEWOBJ an `object` node and
// BUILD a `state` attached to it. Nothing is executed; interpreting the tree is the job of the
// caller (dcp.metadata for `.metadata`, dcp.record for torch.save's data.pkl). Globals outside
// the caller's `AllowList` are refused with Errc::permission_denied, naming the global and the
// byte offset. `Limits` bound nesting depth, node count and memo size, so a hostile file costs
// at most O(its size) memory. `Encoder` writes the opcode subset that `.metadata` and
// torch.save need (protocol 2 opcodes, optionally under a protocol 4 header).
//
// Untrusted input: all of `decode`'s argument. Imports: dcp.error.
module;
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>
export module dcp.pickle;
import dcp.error;

export namespace dcp::pickle {

/// Index of a node in its Document.
using NodeId = std::uint32_t;
inline constexpr NodeId kNoNode = 0xFFFFFFFFu;

enum class NodeKind : std::uint8_t {
  none,
  boolean,      ///< `boolean`
  integer,      ///< `integer` (fits int64)
  big_integer,  ///< `text` holds the little-endian two's complement bytes (LONG1/LONG4)
  floating,     ///< `floating`
  string,       ///< `text` holds the UTF-8 bytes as stored (surrogates not checked)
  bytes,        ///< `text` holds the raw bytes
  tuple,        ///< `items`
  list,         ///< `items`
  dict,         ///< `items` = key0, value0, key1, value1, ... in insertion order
  set,          ///< `items`
  frozenset,    ///< `items`
  global,       ///< `text` = module, `name` = name (already checked against the AllowList)
  call,         ///< REDUCE: `callee`(`args`); `state` from BUILD; `items` from SETITEMS/APPENDS
  object,       ///< NEWOBJ/NEWOBJ_EX: `callee` = class, `args`; `state`; `items` likewise
  persistent,   ///< BINPERSID: `args` = the persistent id value
};

/// One decoded value. Containers refer to children by NodeId (the memo makes sharing and
/// even cycles possible: walkers must bound their depth).
struct Node {
  NodeKind kind = NodeKind::none;
  bool boolean = false;
  std::int64_t integer = 0;
  double floating = 0.0;
  std::string text;
  std::string name;
  std::vector<NodeId> items;
  NodeId callee = kNoNode;
  NodeId args = kNoNode;
  NodeId state = kNoNode;
  std::uint64_t offset = 0;  ///< byte offset of the opcode that created the node
};

/// A decoded pickle: the node arena and the value STOP returned.
class Document {
 public:
  const Node& at(NodeId id) const { return nodes_.at(id); }
  NodeId root() const { return root_; }
  std::size_t size() const { return nodes_.size(); }

  /// Value stored under string key `key` in a dict node (or in the SETITEMS items of a
  /// call/object node); nullopt if absent or `id` holds no mapping.
  std::optional<NodeId> find_key(NodeId id, std::string_view key) const;
  /// True if `id` is a global with this module and name.
  bool is_global(NodeId id, std::string_view module, std::string_view name) const;
  /// Short description for error messages: "tuple of 3", "global torch.Size", "int 7".
  std::string describe(NodeId id) const;

  // Building (used by the decoder and by tests that construct documents).
  NodeId add(Node node);
  Node& mutable_at(NodeId id) { return nodes_.at(id); }
  void set_root(NodeId id) { root_ = id; }

 private:
  std::vector<Node> nodes_;
  NodeId root_ = kNoNode;
};

/// The globals a decode may mention. Each entry is "module" + "name" exactly; a name of "*"
/// admits every name of that module (used only for torch dtypes and storage classes).
class AllowList {
 public:
  AllowList() = default;
  AllowList(std::initializer_list<std::pair<std::string_view, std::string_view>> entries);
  AllowList& add(std::string_view module, std::string_view name);
  bool allows(std::string_view module, std::string_view name) const;

 private:
  std::vector<std::pair<std::string, std::string>> entries_;
};

/// Bounds on what a decode may build.
struct Limits {
  std::size_t max_depth = 256;          ///< nesting of MARKs and containers on the stack
  std::size_t max_nodes = 1u << 26;     ///< also bounded by the input size
  std::size_t max_memo = 1u << 26;      ///< memo entries
  bool allow_persistent_ids = false;    ///< BINPERSID (torch.save's storages)
};

/// Decodes `bytes`. Throws dcp::Error: data_loss for malformed or truncated input,
/// permission_denied for a global outside `allowed`, out_of_range for a limit, unimplemented
/// for opcodes DCP never produces (INST, OBJ, EXT*, out-of-band buffers). The error's
/// byte offset is the offending opcode's offset in `bytes`.
Document decode(std::span<const std::byte> bytes, const AllowList& allowed,
                const Limits& limits = {});

/// Writes pickle opcodes. Values are pushed in pickle's stack order; the caller composes them
/// (e.g. `global`, args..., `tuple(n)`, `reduce`). Only protocol-2 opcodes are emitted, under
/// a PROTO header of `protocol` (2 for torch.save's data.pkl, 2–4 for .metadata); protocol 3+
/// also enables BINBYTES for `bytes`.
class Encoder {
 public:
  explicit Encoder(int protocol = 2);

  void none();
  void boolean(bool value);
  void integer(std::int64_t value);
  void floating(double value);
  void string(std::string_view utf8);
  void bytes(std::span<const std::byte> data);
  void global(std::string_view module, std::string_view name);
  void mark();
  void empty_tuple();
  void tuple_from_mark();
  /// Pops the top `count` values (0–3 use TUPLEn opcodes) into a tuple.
  void tuple(std::size_t count);
  void empty_list();
  void appends_from_mark();
  void empty_dict();
  void setitems_from_mark();
  void reduce();
  void newobj();
  void build();
  void persistent_id();  ///< BINPERSID: pops the id
  /// Re-emits a decoded value (containers, scalars, globals, calls, objects). Cycles and
  /// shared nodes are written as copies, up to `max_depth`.
  void value(const Document& doc, NodeId id, std::size_t max_depth = 256);
  /// Appends STOP and returns the bytes; the encoder is empty afterwards.
  std::vector<std::byte> finish();

 private:
  void op(std::uint8_t opcode);
  void raw(const void* data, std::size_t size);
  std::vector<std::byte> out_;
  int protocol_ = 2;
};

}  // namespace dcp::pickle
