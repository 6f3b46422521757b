// state_owners: which checkpoint entry is the parameter of each optimizer state entry (for
// `dcpp inspect`'s grouping), from the keys alone.
module;
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <variant>
#include <vector>
module dcp.optimizer;
import dcp.metadata;

namespace dcp::optimizer {
namespace {

constexpr std::string_view kState = ".state.";

// "<param>" of an optimizer state entry, or nullopt: the planner_data path (key, "state",
// param, state), or without planner_data the flat key "<key>.state.<param>.<state>" (the state
// name is the part after the last dot; a parameter name may hold dots).
std::optional<std::string> param_of(const metadata::Metadata& md, const metadata::ItemMetadata& item) {
  if (md.planner_data) {
    const auto* path = md.find_path(item.fqn);
    if (!path || path->size() != 4) return std::nullopt;
    const auto* state = std::get_if<std::string>(&(*path)[1]);
    const auto* param = std::get_if<std::string>(&(*path)[2]);
    if (!state || *state != "state" || !param) return std::nullopt;
    return *param;
  }
  const auto at = item.fqn.find(kState);
  const auto last = item.fqn.rfind('.');
  if (at == std::string::npos || at == 0 || last <= at + kState.size()) return std::nullopt;
  return item.fqn.substr(at + kState.size(), last - at - kState.size());
}

}  // namespace

std::vector<StateOwner> state_owners(const metadata::Metadata& md) {
  std::vector<std::optional<std::string>> params;
  params.reserve(md.items.size());
  for (const auto& item : md.items) params.push_back(item.is_tensor() ? param_of(md, item) : std::nullopt);
  // Every dotted suffix of each tensor key that is not itself state, to its first entry.
  std::unordered_map<std::string_view, std::size_t> by_suffix;
  for (std::size_t i = 0; i < md.items.size(); ++i) {
    if (params[i] || !md.items[i].is_tensor()) continue;
    const std::string_view fqn = md.items[i].fqn;
    by_suffix.try_emplace(fqn, i);
    for (auto dot = fqn.find('.'); dot != std::string_view::npos; dot = fqn.find('.', dot + 1))
      by_suffix.try_emplace(fqn.substr(dot + 1), i);
  }
  std::vector<StateOwner> owners;
  for (std::size_t i = 0; i < md.items.size(); ++i)
    if (params[i])
      if (const auto it = by_suffix.find(*params[i]); it != by_suffix.end()) owners.push_back({i, it->second});
  return owners;
}

}  // namespace dcp::optimizer
