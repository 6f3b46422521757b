// unflatten: the nested state-dict shape from planner_data paths (torch's set_element).
module;
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <unordered_map>
#include <variant>
#include <vector>
module dcp.planning;
import dcp.error;
import dcp.metadata;

namespace dcp::planning {
namespace {

using Kind = NestedNode::Kind;
using metadata::PathPart;

constexpr std::size_t max_depth = pickle::kMaxDepth;
// planner_data is untrusted: a path may ask for a list index far past anything saved.
constexpr std::uint64_t max_list_slots = std::uint64_t{1} << 20;
constexpr std::size_t hole = std::numeric_limits<std::size_t>::max();

const char* kind_name(Kind kind) {
  switch (kind) {
    case Kind::leaf: return "a value";
    case Kind::dict: return "a dict";
    case Kind::list: return "a list";
    default: return "nothing";
  }
}

std::string part_text(const PathPart& part) {
  if (const auto* key = std::get_if<std::string>(&part)) return "key '" + *key + "'";
  return "index " + std::to_string(std::get<std::int64_t>(part));
}

// Builds in an arena with a key map per dict, so n keys cost O(n) rather than O(n^2);
// list holes are `hole` ids until `convert` makes them NestedNode{}.
class Builder {
 public:
  Builder() { make(Kind::dict); }

  void set(const std::string& fqn, const std::vector<PathPart>& path) {
    if (path.empty()) fail_for_key(Errc::data_loss, fqn, "planner_data path is empty");
    if (path.size() > max_depth)
      fail_for_key(Errc::out_of_range, fqn, "planner_data path is deeper than " + std::to_string(max_depth));
    std::size_t cur = 0;
    for (std::size_t i = 0; i + 1 < path.size(); ++i) {
      const Kind want = std::holds_alternative<std::string>(path[i + 1]) ? Kind::dict : Kind::list;
      const std::size_t pos = slot(cur, path[i], fqn);
      std::size_t child = nodes_[cur].children[pos];
      if (child == hole) {
        child = make(want);
        nodes_[cur].children[pos] = child;
      } else if (nodes_[child].kind != want) {
        fail_for_key(Errc::data_loss, fqn, "planner_data path needs " + std::string(kind_name(want)) + " at " +
                                               part_text(path[i]) + ", where another key put " +
                                               kind_name(nodes_[child].kind));
      }
      cur = child;
    }
    const std::size_t pos = slot(cur, path.back(), fqn);
    const std::size_t child = nodes_[cur].children[pos];
    if (child == hole) {
      nodes_[cur].children[pos] = make(Kind::leaf, fqn);
    } else if (nodes_[child].kind != Kind::leaf || nodes_[child].fqn != fqn) {
      fail_for_key(Errc::data_loss, fqn, "planner_data path ends at " + part_text(path.back()) + ", which already holds " +
                                             (nodes_[child].kind == Kind::leaf ? "key '" + nodes_[child].fqn + "'"
                                                                               : std::string(kind_name(nodes_[child].kind))));
    }
  }

  NestedNode convert(std::size_t id = 0) const {
    const Node& n = nodes_[id];
    NestedNode out;
    out.kind = n.kind;
    out.fqn = n.fqn;
    out.keys = n.keys;
    out.children.reserve(n.children.size());
    for (std::size_t c : n.children) out.children.push_back(c == hole ? NestedNode{} : convert(c));
    return out;
  }

 private:
  struct Node {
    Kind kind = Kind::none;
    std::string fqn;
    std::vector<std::string> keys;
    std::vector<std::size_t> children;
    std::unordered_map<std::string, std::size_t> key_index;
  };

  std::size_t make(Kind kind, const std::string& fqn = {}) {
    Node& node = nodes_.emplace_back();
    node.kind = kind;
    node.fqn = fqn;
    return nodes_.size() - 1;
  }

  // Position of `part` among `parent`'s children, adding a hole there if absent.
  std::size_t slot(std::size_t parent, const PathPart& part, const std::string& fqn) {
    Node& n = nodes_[parent];
    if (n.kind == Kind::dict) {
      const auto* key = std::get_if<std::string>(&part);
      if (!key) fail_for_key(Errc::data_loss, fqn, "planner_data path uses " + part_text(part) + " on a dict");
      auto [it, inserted] = n.key_index.try_emplace(*key, n.children.size());
      if (inserted) {
        n.keys.push_back(*key);
        n.children.push_back(hole);
      }
      return it->second;
    }
    const auto* index = std::get_if<std::int64_t>(&part);
    if (!index) fail_for_key(Errc::data_loss, fqn, "planner_data path uses " + part_text(part) + " on a list");
    if (*index < 0) fail_for_key(Errc::data_loss, fqn, "planner_data path has negative " + part_text(part));
    const auto want = static_cast<std::uint64_t>(*index) + 1;
    if (want > n.children.size()) {
      const std::uint64_t added = want - n.children.size();
      if (added > max_list_slots - list_slots_)
        fail_for_key(Errc::out_of_range, fqn, "planner_data " + part_text(part) + " makes lists longer than " +
                                                  std::to_string(max_list_slots) + " entries in all");
      list_slots_ += added;
      n.children.resize(want, hole);
    }
    return static_cast<std::size_t>(*index);
  }

  std::vector<Node> nodes_;
  std::uint64_t list_slots_ = 0;
};

}  // namespace

const NestedNode* NestedNode::find(std::string_view key) const {
  if (kind != Kind::dict) return nullptr;
  for (std::size_t i = 0; i < keys.size(); ++i)
    if (keys[i] == key) return &children[i];
  return nullptr;
}

NestedNode unflatten(const metadata::Metadata& metadata, const std::vector<std::string>& fqns) {
  Builder builder;
  for (const std::string& fqn : fqns) {
    if (!metadata.planner_data) {
      builder.set(fqn, {PathPart{fqn}});  // torch 1.13: no flattening, keys stay whole
      continue;
    }
    const std::vector<PathPart>* path = metadata.find_path(fqn);
    if (!path) fail_for_key(Errc::not_found, fqn, "key has no planner_data path");
    builder.set(fqn, *path);
  }
  return builder.convert();
}

NestedNode unflatten(const StateDict& state_dict) {
  Builder builder;
  for (const auto& entry : state_dict.entries()) builder.set(entry.fqn, entry.path);
  return builder.convert();
}

}  // namespace dcp::planning
