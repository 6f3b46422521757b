// Document queries and the allow-list.
module;
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>
module dcp.pickle;
import dcp.error;

namespace dcp::pickle {

NodeId Document::add(Node node) {
  nodes_.push_back(std::move(node));
  return static_cast<NodeId>(nodes_.size() - 1);
}

std::optional<NodeId> Document::find_key(NodeId id, std::string_view key) const {
  const Node& n = at(id);
  if (n.kind != NodeKind::dict && n.kind != NodeKind::call && n.kind != NodeKind::object)
    return std::nullopt;
  // Later keys win, as in a Python dict built by SETITEMS.
  for (std::size_t i = n.items.size(); i >= 2; i -= 2) {
    const Node& k = at(n.items[i - 2]);
    if (k.kind == NodeKind::string && k.text == key) return n.items[i - 1];
  }
  return std::nullopt;
}

bool Document::is_global(NodeId id, std::string_view module, std::string_view name) const {
  const Node& n = at(id);
  return n.kind == NodeKind::global && n.text == module && n.name == name;
}

std::string Document::describe(NodeId id) const {
  if (id == kNoNode) return "nothing";
  const Node& n = at(id);
  auto count = [&](const char* what) { return std::string(what) + " of " + std::to_string(n.items.size()); };
  switch (n.kind) {
    case NodeKind::none: return "None";
    case NodeKind::boolean: return n.boolean ? "True" : "False";
    case NodeKind::integer: return "int " + std::to_string(n.integer);
    case NodeKind::big_integer: return "int of " + std::to_string(n.text.size()) + " bytes";
    case NodeKind::floating: return "float " + std::to_string(n.floating);
    case NodeKind::string: return "str '" + n.text.substr(0, 64) + (n.text.size() > 64 ? "...'" : "'");
    case NodeKind::bytes: return "bytes of " + std::to_string(n.text.size());
    case NodeKind::tuple: return count("tuple");
    case NodeKind::list: return count("list");
    case NodeKind::dict: return "dict of " + std::to_string(n.items.size() / 2);
    case NodeKind::set: return count("set");
    case NodeKind::frozenset: return count("frozenset");
    case NodeKind::global: return "global " + n.text + "." + n.name;
    case NodeKind::call: return "call of " + describe(n.callee);
    case NodeKind::object: return "object of " + describe(n.callee);
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
