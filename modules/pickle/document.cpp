// The compact Document: 16-byte node slots in fixed blocks, texts in an arena, container items
// in one pool (each container a range that grows by doubling), call parts in a side table.
module;
#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>
module dcp.pickle;
import dcp.error;

namespace dcp::pickle {
namespace {

constexpr std::uint64_t kOffsetMask = (std::uint64_t{1} << 48) - 1;
constexpr std::uint64_t kAppendedFlag = std::uint64_t{1} << 8;  // call/object items from APPEND(S)
constexpr std::uint64_t kSetItemsFlag = std::uint64_t{1} << 9;  // call/object items from SETITEM(S)
constexpr std::size_t kTextBlock = std::size_t{64} << 10;  // texts above a quarter get their own block

bool growable(NodeKind kind) {
  return kind == NodeKind::list || kind == NodeKind::dict || kind == NodeKind::set || kind == NodeKind::call ||
         kind == NodeKind::object;
}
bool is_container(NodeKind kind) {
  return kind == NodeKind::tuple || kind == NodeKind::list || kind == NodeKind::dict || kind == NodeKind::set ||
         kind == NodeKind::frozenset;
}
bool is_text(NodeKind kind) {
  return kind == NodeKind::string || kind == NodeKind::bytes || kind == NodeKind::big_integer;
}
// A growable range of `size` items owns bit_ceil(size) slots of the pool.
std::uint64_t capacity(std::uint64_t size) { return size == 0 ? 0 : std::bit_ceil(size); }

template <class T>
T from_bits(std::uint64_t bits) {
  T value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}
template <class T>
std::uint64_t to_bits(T value) {
  std::uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof value);
  return bits;
}

}  // namespace

// ---- Node ----

NodeKind Node::kind() const { return static_cast<NodeKind>(doc_->slot(id_).head & 0xFF); }

std::optional<std::uint64_t> Node::offset() const {
  const std::uint64_t stored = (doc_->slot(id_).head >> 16) & kOffsetMask;
  if (stored == 0) return std::nullopt;
  return stored - 1;
}

bool Node::boolean() const { return id_ == Document::kTrue; }

std::int64_t Node::integer() const {
  return kind() == NodeKind::integer ? from_bits<std::int64_t>(doc_->slot(id_).payload) : 0;
}

double Node::floating() const {
  return kind() == NodeKind::floating ? from_bits<double>(doc_->slot(id_).payload) : 0.0;
}

std::string_view Node::text() const {
  const auto k = kind();
  if (!is_text(k) && k != NodeKind::global) return {};
  return doc_->texts_[doc_->slot(id_).payload];
}

std::string_view Node::name() const {
  if (kind() != NodeKind::global) return {};
  return doc_->texts_[doc_->slot(id_).payload + 1];
}

std::span<const NodeId> Node::items() const {
  const auto k = kind();
  std::uint64_t begin = 0, size = 0;
  if (is_container(k)) {
    const auto payload = doc_->slot(id_).payload;
    begin = payload & 0xFFFFFFFFu;
    size = payload >> 32;
  } else if (k == NodeKind::call || k == NodeKind::object) {
    const auto& call = doc_->calls_[doc_->slot(id_).payload];
    begin = call.items_begin;
    size = call.items_size;
  }
  if (size == 0) return {};
  return std::span<const NodeId>(doc_->items_).subspan(begin, size);
}

bool Node::has_appended_items() const { return (doc_->slot(id_).head & kAppendedFlag) != 0; }
bool Node::has_set_items() const { return (doc_->slot(id_).head & kSetItemsFlag) != 0; }

NodeId Node::callee() const {
  const auto k = kind();
  return k == NodeKind::call || k == NodeKind::object ? doc_->calls_[doc_->slot(id_).payload].callee : kNoNode;
}

NodeId Node::args() const {
  const auto k = kind();
  if (k == NodeKind::persistent) return static_cast<NodeId>(doc_->slot(id_).payload);
  return k == NodeKind::call || k == NodeKind::object ? doc_->calls_[doc_->slot(id_).payload].args : kNoNode;
}

NodeId Node::state() const {
  const auto k = kind();
  return k == NodeKind::call || k == NodeKind::object ? doc_->calls_[doc_->slot(id_).payload].state : kNoNode;
}

// ---- Document: storage ----

Document::Document() {
  add_slot(NodeKind::none, 0, 0);
  add_slot(NodeKind::boolean, 0, 1);
  add_slot(NodeKind::boolean, 0, 0);
  add_slot(NodeKind::tuple, 0, 0);
  for (NodeId id = 0; id <= kEmptyTuple; ++id) slots_[0][id].head &= 0xFF;  // no offset
}
// A moved-from document holds no nodes (at() throws internal), not dangling block pointers.
Document::Document(Document&& other) noexcept { *this = std::move(other); }

Document& Document::operator=(Document&& other) noexcept {
  slots_ = std::move(other.slots_);
  slot_count_ = std::exchange(other.slot_count_, 0);
  texts_ = std::move(other.texts_);
  text_blocks_ = std::move(other.text_blocks_);
  text_bytes_ = std::exchange(other.text_bytes_, 0);
  text_block_ = std::exchange(other.text_block_, nullptr);
  text_block_left_ = std::exchange(other.text_block_left_, 0);
  items_ = std::move(other.items_);
  calls_ = std::move(other.calls_);
  root_ = std::exchange(other.root_, kNoNode);
  stop_offset_ = std::exchange(other.stop_offset_, 0);
  source_size_ = std::exchange(other.source_size_, 0);
  return *this;
}
Document::~Document() = default;

const Document::Slot& Document::slot(NodeId id) const {
  if (id >= slot_count_)
    throw Error(Errc::internal, "pickle node " + std::to_string(id) + " does not exist (" +
                                    std::to_string(slot_count_) + " nodes)");
  return slots_[id / kSlotBlock][id % kSlotBlock];
}

Node Document::at(NodeId id) const {
  (void)slot(id);
  return Node(this, id);
}

NodeId Document::add_slot(NodeKind kind, std::uint64_t offset, std::uint64_t payload) {
  if (slot_count_ >= kNoNode) throw Error(Errc::out_of_range, "more than 2^32 pickle values");
  if (slot_count_ % kSlotBlock == 0) slots_.push_back(std::make_unique_for_overwrite<Slot[]>(kSlotBlock));
  const auto stored = std::min<std::uint64_t>(offset, kOffsetMask - 1) + 1;
  slots_.back()[slot_count_ % kSlotBlock] = Slot{static_cast<std::uint64_t>(kind) | (stored << 16), payload};
  return static_cast<NodeId>(slot_count_++);
}

std::uint32_t Document::add_text_view(std::string_view text) {
  if (texts_.size() >= 0xFFFFFFFFu) throw Error(Errc::out_of_range, "more than 2^32 pickle strings");
  std::string_view stored;
  if (!text.empty()) {
    char* to = nullptr;
    if (text.size() > kTextBlock / 4) {
      text_blocks_.push_back(std::make_unique_for_overwrite<char[]>(text.size()));
      text_bytes_ += text.size();
      to = text_blocks_.back().get();
    } else {
      if (text_block_left_ < text.size()) {
        text_blocks_.push_back(std::make_unique_for_overwrite<char[]>(kTextBlock));
        text_bytes_ += kTextBlock;
        text_block_ = text_blocks_.back().get();
        text_block_left_ = kTextBlock;
      }
      to = text_block_ + (kTextBlock - text_block_left_);
      text_block_left_ -= text.size();
    }
    std::memcpy(to, text.data(), text.size());
    stored = std::string_view(to, text.size());
  }
  texts_.push_back(stored);
  return static_cast<std::uint32_t>(texts_.size() - 1);
}

std::uint64_t Document::store_items(std::span<const NodeId> items, bool can_grow) {
  if (items.empty()) return 0;
  const std::uint64_t reserve = can_grow ? capacity(items.size()) : items.size();
  const std::uint64_t begin = items_.size();
  if (begin + reserve > 0xFFFFFFFFu) throw Error(Errc::out_of_range, "more than 2^32 pickle container items");
  items_.resize(begin + reserve, kNoNode);
  std::copy(items.begin(), items.end(), items_.begin() + static_cast<std::ptrdiff_t>(begin));
  return begin | (std::uint64_t{items.size()} << 32);
}

void Document::grow_items(std::uint32_t& begin, std::uint32_t& size, std::span<const NodeId> items) {
  const std::uint64_t new_size = std::uint64_t{size} + items.size();
  const std::uint64_t old_capacity = capacity(size);
  if (new_size > old_capacity) {
    const std::uint64_t new_capacity = capacity(new_size);
    if (size > 0 && begin + old_capacity == items_.size()) {
      // The range ends the pool: widen it in place.
      if (begin + new_capacity > 0xFFFFFFFFu) throw Error(Errc::out_of_range, "more than 2^32 pickle container items");
      items_.resize(begin + new_capacity, kNoNode);
    } else {
      // Move the range to the end of the pool with room to double (the old slots stay
      // unused: at most as many as the final range, over a container's life).
      const std::uint64_t to = items_.size();
      if (to + new_capacity > 0xFFFFFFFFu) throw Error(Errc::out_of_range, "more than 2^32 pickle container items");
      items_.resize(to + new_capacity, kNoNode);
      std::copy_n(items_.begin() + begin, size, items_.begin() + static_cast<std::ptrdiff_t>(to));
      begin = static_cast<std::uint32_t>(to);
    }
  }
  std::copy(items.begin(), items.end(), items_.begin() + static_cast<std::ptrdiff_t>(begin + size));
  size = static_cast<std::uint32_t>(new_size);
}

std::size_t Document::memory_bytes() const {
  return slots_.size() * kSlotBlock * sizeof(Slot) + slots_.capacity() * sizeof(void*) +
         texts_.capacity() * sizeof(std::string_view) + text_blocks_.capacity() * sizeof(void*) + text_bytes_ +
         items_.capacity() * sizeof(NodeId) + calls_.capacity() * sizeof(Call);
}

// ---- Document: building ----

NodeId Document::add_integer(std::uint64_t offset, std::int64_t value) {
  return add_slot(NodeKind::integer, offset, to_bits(value));
}

NodeId Document::add_floating(std::uint64_t offset, double value) {
  return add_slot(NodeKind::floating, offset, to_bits(value));
}

NodeId Document::add_text(NodeKind kind, std::uint64_t offset, std::string_view text) {
  if (!is_text(kind)) throw Error(Errc::internal, "add_text of a non-text kind");
  return add_slot(kind, offset, add_text_view(text));
}

NodeId Document::add_global(std::uint64_t offset, std::string_view module, std::string_view name) {
  const auto index = add_text_view(module);
  (void)add_text_view(name);
  return add_slot(NodeKind::global, offset, index);
}

NodeId Document::add_container(NodeKind kind, std::uint64_t offset, std::span<const NodeId> items) {
  if (!is_container(kind)) throw Error(Errc::internal, "add_container of a non-container kind");
  if (kind == NodeKind::tuple && items.empty()) return kEmptyTuple;
  return add_slot(kind, offset, store_items(items, growable(kind)));
}

NodeId Document::add_call(NodeKind kind, std::uint64_t offset, NodeId callee, NodeId args) {
  if (kind != NodeKind::call && kind != NodeKind::object) throw Error(Errc::internal, "add_call of a non-call kind");
  calls_.push_back(Call{callee, args, kNoNode, 0, 0});
  return add_slot(kind, offset, calls_.size() - 1);
}

NodeId Document::add_persistent(std::uint64_t offset, NodeId pid) {
  return add_slot(NodeKind::persistent, offset, pid);
}

void Document::append_items(NodeId id, std::span<const NodeId> items, bool pairs) {
  (void)slot(id);
  auto& s = slots_[id / kSlotBlock][id % kSlotBlock];
  const auto kind = static_cast<NodeKind>(s.head & 0xFF);
  if (!growable(kind)) throw Error(Errc::internal, "append_items to " + describe(id));
  if (items.empty()) return;
  if (kind == NodeKind::call || kind == NodeKind::object) {
    s.head |= pairs ? kSetItemsFlag : kAppendedFlag;
    auto& call = calls_[s.payload];
    grow_items(call.items_begin, call.items_size, items);
    return;
  }
  auto begin = static_cast<std::uint32_t>(s.payload & 0xFFFFFFFFu);
  auto size = static_cast<std::uint32_t>(s.payload >> 32);
  grow_items(begin, size, items);
  s.payload = begin | (std::uint64_t{size} << 32);
}

void Document::set_state(NodeId id, NodeId state) {
  const auto kind = at(id).kind();
  if (kind != NodeKind::call && kind != NodeKind::object) throw Error(Errc::internal, "set_state on " + describe(id));
  calls_[slot(id).payload].state = state;
}

// ---- Document: queries ----

std::optional<NodeId> Document::find_key(NodeId id, std::string_view key) const {
  const Node n = at(id);
  if (n.kind() != NodeKind::dict && n.kind() != NodeKind::call && n.kind() != NodeKind::object)
    return std::nullopt;
  // Later keys win, as in a Python dict built by SETITEMS.
  const auto items = n.items();
  for (std::size_t i = items.size(); i >= 2; i -= 2) {
    const Node k = at(items[i - 2]);
    if (k.kind() == NodeKind::string && k.text() == key) return items[i - 1];
  }
  return std::nullopt;
}

bool Document::is_global(NodeId id, std::string_view module, std::string_view name) const {
  const Node n = at(id);
  return n.kind() == NodeKind::global && n.text() == module && n.name() == name;
}

std::string Document::describe(NodeId id) const {
  if (id == kNoNode) return "nothing";
  const Node n = at(id);
  auto count = [&](const char* what) { return std::string(what) + " of " + std::to_string(n.items().size()); };
  switch (n.kind()) {
    case NodeKind::none: return "None";
    case NodeKind::boolean: return n.boolean() ? "True" : "False";
    case NodeKind::integer: return "int " + std::to_string(n.integer());
    case NodeKind::big_integer: return "int of " + std::to_string(n.text().size()) + " bytes";
    case NodeKind::floating: return "float " + std::to_string(n.floating());
    case NodeKind::string:
      return "str '" + std::string(n.text().substr(0, 64)) + (n.text().size() > 64 ? "...'" : "'");
    case NodeKind::bytes: return "bytes of " + std::to_string(n.text().size());
    case NodeKind::tuple: return count("tuple");
    case NodeKind::list: return count("list");
    case NodeKind::dict: return "dict of " + std::to_string(n.items().size() / 2);
    case NodeKind::set: return count("set");
    case NodeKind::frozenset: return count("frozenset");
    case NodeKind::global:
      return "global " + std::string(n.text().substr(0, 128)) + "." + std::string(n.name().substr(0, 128));
    case NodeKind::call: return "call of " + describe(n.callee());
    case NodeKind::object: return "object of " + describe(n.callee());
    case NodeKind::persistent: return "persistent id";
    default: return "unknown value";
  }
}

AllowList::AllowList(std::initializer_list<std::pair<std::string_view, std::string_view>> entries) {
  for (auto [module, name] : entries) add(module, name);
}

AllowList& AllowList::add(std::string_view module, std::string_view name) {
  entries_.emplace_back(std::string(module), std::string(name));
  return *this;
}

bool AllowList::allows(std::string_view module, std::string_view name) const {
  for (const auto& [m, n] : entries_)
    if (m == module && (n == name || n == "*")) return true;
  return false;
}

}  // namespace dcp::pickle
