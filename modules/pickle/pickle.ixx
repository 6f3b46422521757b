// dcp.pickle — a pickle decoder that never imports or calls anything, and an encoder.
//
// `decode` turns pickle bytes (protocols 2–5) into a `Document`: an arena of `Node`s where a
// GLOBAL is just a (module, name) pair, REDUCE a `call` node, NEWOBJ an `object` node and
// BUILD a `state` attached to it. Nothing is executed; interpreting the tree is the job of the
// caller (dcp.metadata for `.metadata`, dcp.record for torch.save's data.pkl). Globals outside
// the caller's `AllowList` are refused with Errc::permission_denied, naming the global and the
// byte offset. The document is compact (a 16-byte node per value; None, True, False and ()
// are shared nodes) and `Limits` bound nesting depth, node count, memo size and memory per
// input byte, so a hostile file costs at most O(its size) memory. `Encoder` writes the opcode
// subset that `.metadata` and torch.save need (protocol 2 opcodes, optionally under a
// protocol 4 header) and re-encodes decoded values keeping their sharing.
//
// Untrusted input: all of `decode`'s argument. Imports: dcp.error.
module;
#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>
export module dcp.pickle;
import dcp.error;

export namespace dcp::pickle {

/// How deep values may nest wherever dcpp walks a pickle (decoding, encoding, unflattening a
/// state dict): far past any real state dict, and short enough that recursion over it cannot
/// exhaust a thread's stack.
inline constexpr std::size_t kMaxDepth = 256;

/// Index of a node in its Document.
using NodeId = std::uint32_t;
inline constexpr NodeId kNoNode = 0xFFFFFFFFu;

enum class NodeKind : std::uint8_t {
  none,
  boolean,      ///< `boolean()`
  integer,      ///< `integer()` (fits int64)
  big_integer,  ///< `text()` holds the little-endian two's complement bytes (LONG1/LONG4)
  floating,     ///< `floating()`
  string,       ///< `text()` holds the bytes as stored: UTF-8 for the *UNICODE opcodes (checked as
                ///< Python decodes them, surrogates passing), unchecked for BINSTRING
  bytes,        ///< `text()` holds the raw bytes
  tuple,        ///< `items()`
  list,         ///< `items()`
  dict,         ///< `items()` = key0, value0, key1, value1, ... in insertion order
  set,          ///< `items()`
  frozenset,    ///< `items()`
  global,       ///< `text()` = module, `name()` = name (already checked against the AllowList)
  call,         ///< REDUCE: `callee()`(`args()`); `state()` from BUILD; `items()` from SETITEMS/APPENDS
  object,       ///< NEWOBJ/NEWOBJ_EX: `callee()` = class, `args()`; `state()`; `items()` likewise
  persistent,   ///< BINPERSID: `args()` = the persistent id value
};

class Document;

/// A read-only view of one decoded value: cheap to copy, valid while its Document lives and
/// is not modified. Containers refer to children by NodeId (the memo makes sharing and even
/// cycles possible: walkers must be share-aware or bounded). Accessors that do not apply to
/// the node's kind return empty values ("", no items, 0, kNoNode).
class Node {
 public:
  NodeKind kind() const;
  /// Byte offset of the opcode that created the node; nullopt for the shared None, True,
  /// False and () nodes, which every NONE/NEWTRUE/NEWFALSE/EMPTY_TUPLE opcode reuses.
  std::optional<std::uint64_t> offset() const;
  bool boolean() const;
  std::int64_t integer() const;
  double floating() const;
  std::string_view text() const;
  std::string_view name() const;
  std::span<const NodeId> items() const;
  NodeId callee() const;
  NodeId args() const;
  NodeId state() const;
  /// For a call or object: whether its items came from APPEND(S) (values) and/or from
  /// SETITEM(S) (key/value pairs), as Python's listitems and dictitems.
  bool has_appended_items() const;
  bool has_set_items() const;
  NodeId id() const { return id_; }

 private:
  friend class Document;
  Node(const Document* doc, NodeId id) : doc_(doc), id_(id) {}
  const Document* doc_;
  NodeId id_;
};

/// A decoded pickle: a compact node arena (16 bytes a node; texts, container items and call
/// parts in side pools) and the value STOP returned. Move-only.
class Document {
 public:
  /// The shared immutable nodes (Python's singletons): no node is made per opcode for them.
  static constexpr NodeId kNone = 0, kTrue = 1, kFalse = 2, kEmptyTuple = 3;

  Document();
  Document(Document&&) noexcept;
  Document& operator=(Document&&) noexcept;
  Document(const Document&) = delete;
  Document& operator=(const Document&) = delete;
  ~Document();

  /// The node `id`; throws Error(internal) for an id this document does not hold.
  Node at(NodeId id) const;
  NodeId root() const { return root_; }
  /// Byte offset of the STOP opcode that returned root() (where a shared root node, which
  /// has no offset of its own, was returned).
  std::uint64_t stop_offset() const { return stop_offset_; }
  /// Number of node ids (the shared nodes included).
  std::size_t size() const { return slot_count_; }
  /// Bytes of pickle the document was decoded from (0 when built by hand).
  std::uint64_t source_size() const { return source_size_; }
  /// Heap bytes the document holds.
  std::size_t memory_bytes() const;

  /// Value stored under string key `key` in a dict node (or in the SETITEMS items of a
  /// call/object node); nullopt if absent or `id` holds no mapping.
  std::optional<NodeId> find_key(NodeId id, std::string_view key) const;
  /// True if `id` is a global with this module and name.
  bool is_global(NodeId id, std::string_view module, std::string_view name) const;
  /// Short description for error messages: "tuple of 3", "global torch.Size", "int 7".
  std::string describe(NodeId id) const;

  // Building (the decoder, and tests that construct documents). `offset` is the opcode's.
  NodeId add_integer(std::uint64_t offset, std::int64_t value);
  NodeId add_floating(std::uint64_t offset, double value);
  /// string, bytes or big_integer.
  NodeId add_text(NodeKind kind, std::uint64_t offset, std::string_view text);
  NodeId add_global(std::uint64_t offset, std::string_view module, std::string_view name);
  /// tuple, list, dict, set or frozenset holding `items` (an empty tuple is kEmptyTuple).
  NodeId add_container(NodeKind kind, std::uint64_t offset, std::span<const NodeId> items);
  /// call or object.
  NodeId add_call(NodeKind kind, std::uint64_t offset, NodeId callee, NodeId args);
  NodeId add_persistent(std::uint64_t offset, NodeId pid);
  /// Appends to a list, dict, set, call or object (throws internal for other kinds); `pairs`:
  /// key/value pairs (SETITEM/SETITEMS), else values (APPEND/APPENDS/ADDITEMS). `items` must
  /// not point into this document.
  void append_items(NodeId id, std::span<const NodeId> items, bool pairs);
  /// BUILD's state of a call or object.
  void set_state(NodeId id, NodeId state);
  void set_root(NodeId id, std::uint64_t stop_offset = 0) {
    root_ = id;
    stop_offset_ = stop_offset;
  }
  void set_source_size(std::uint64_t bytes) { source_size_ = bytes; }

 private:
  friend class Node;
  struct Slot {
    std::uint64_t head;     // kind (8 bits) | flags (8) | offset + 1 (48 bits) << 16; 0 offset = none
    std::uint64_t payload;  // value bits, a text index, items (begin | size << 32) or a call index
  };
  struct Call {
    NodeId callee, args, state;
    std::uint32_t items_begin, items_size;
  };
  static constexpr std::size_t kSlotBlock = 4096;
  const Slot& slot(NodeId id) const;
  NodeId add_slot(NodeKind kind, std::uint64_t offset, std::uint64_t payload);
  std::uint32_t add_text_view(std::string_view text);
  std::uint64_t store_items(std::span<const NodeId> items, bool growable);
  void grow_items(std::uint32_t& begin, std::uint32_t& size, std::span<const NodeId> items);

  std::vector<std::unique_ptr<Slot[]>> slots_;
  std::size_t slot_count_ = 0;
  std::vector<std::string_view> texts_;            // views into text_blocks_
  std::vector<std::unique_ptr<char[]>> text_blocks_;
  std::size_t text_bytes_ = 0;                     // allocated in text_blocks_
  char* text_block_ = nullptr;                     // the block small texts fill
  std::size_t text_block_left_ = 0;
  std::vector<NodeId> items_;                      // container items, each a range
  std::vector<Call> calls_;
  NodeId root_ = kNoNode;
  std::uint64_t stop_offset_ = 0;
  std::uint64_t source_size_ = 0;
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
  std::size_t max_depth = kMaxDepth;    ///< nesting of MARKs and containers on the stack
  /// Values and memo entries: each costs at least one byte of input, so the input's size
  /// bounds them first (a `.metadata` of 6.5M chunks, 8,192 ranks' worth, holds over 2^26 of
  /// each); these defaults keep NodeId in range.
  std::size_t max_nodes = (std::size_t{1} << 32) - 16;
  std::size_t max_memo = (std::size_t{1} << 32) - 16;
  /// Memory budget of a decode (document, stack and memo): memory_per_byte × input bytes +
  /// memory_floor. A flood of one-byte container opcodes costs 20–24 bytes a byte (a 16-byte
  /// node, its stack slot); torch's `.metadata` files take 5–9, a long list of protocol-4
  /// memoized containers or small ints up to ~16.
  std::size_t memory_per_byte = 32;
  std::size_t memory_floor = std::size_t{1} << 20;
  bool allow_persistent_ids = false;    ///< BINPERSID (torch.save's storages)
  /// Where the pickle starts in its file (or archive): added to every offset the document
  /// records and every error names.
  std::uint64_t base_offset = 0;
};

/// Decodes `bytes`. Throws dcp::Error: data_loss for malformed or truncated input,
/// permission_denied for a global outside `allowed`, out_of_range for a count limit,
/// resource_exhausted past the memory budget, unimplemented for opcodes DCP never produces
/// (INST, OBJ, EXT*, out-of-band buffers). The error's byte offset is the offending opcode's
/// offset in `bytes`.
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
  /// LONG1 of up to 255 little-endian two's complement bytes (a big_integer node's text).
  void long_integer(std::string_view le_bytes);
  void floating(double value);
  void string(std::string_view utf8);
  void bytes(std::span<const std::byte> data);
  /// GLOBAL module.name; the builtins module is spelled `__builtin__` below protocol 3 and
  /// `builtins` from 3 on, as CPython's unpickler expects.
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
  void append();         ///< APPEND
  void setitem();        ///< SETITEM
  void pop();
  void pop_mark();
  /// Memoizes the top of the stack under the next memo index (BINPUT / LONG_BINPUT, numbered
  /// 0, 1, 2, ... as Python does); returns the index.
  std::uint32_t put();
  /// Pushes memo entry `index` (BINGET / LONG_BINGET).
  void get(std::uint32_t index);
  /// Re-emits a decoded value (containers, scalars, globals, calls, objects), sharing what
  /// the document shares: a node reached more than once is memoized (PUT) the first time and
  /// fetched (GET) after, exactly where Python's pickler memoizes the same objects, so the
  /// unpickled value is the same DAG, and a container that holds itself is written as Python
  /// writes it. Memo indices continue this encoder's numbering. Throws out_of_range past
  /// `max_depth` levels (what a cycle through tuples or sets alone, which Python cannot pickle
  /// either, runs into) and resource_exhausted when the output would pass 32 bytes per byte
  /// of the document's source (plus 1 MiB); errors carry the byte offset, in the document's
  /// source, of the value where writing stopped. `persistent_id`, when given, writes each
  /// persistent id's value (it must push exactly one) instead of the decoded one: torch.save's
  /// storage keys are numbered per archive, so a value moved into another archive needs new ones.
  void value(const Document& doc, NodeId id, std::size_t max_depth = kMaxDepth,
             const std::function<void(const Document& doc, NodeId pid)>& persistent_id = {});
  /// Bytes written so far.
  std::size_t size() const { return out_.size(); }
  /// Appends STOP and returns the bytes; the encoder is empty afterwards.
  std::vector<std::byte> finish();

 private:
  void op(std::uint8_t opcode);
  void memo_op(std::uint8_t short_op, std::uint8_t long_op, std::uint32_t index);
  void raw(const void* data, std::size_t size);
  std::vector<std::byte> out_;
  int protocol_ = 2;
  std::uint32_t next_memo_ = 0;
};

}  // namespace dcp::pickle
