// Forward layouts: DTensor meshes and placements → each rank's box, and the layout parser.
module;
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>
module dcp.layout;
import dcp.error;

namespace dcp::layout {
namespace {

[[noreturn]] void bad(std::string message) { throw Error(Errc::invalid_argument, std::move(message)); }

// A whole string of ASCII decimal digits that fits int; nullopt otherwise (no sign, no space).
std::optional<int> parse_int(std::string_view text) {
  int value = 0;
  if (text.empty() || text.front() < '0' || text.front() > '9') return std::nullopt;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return value;
}

}  // namespace

Layout::Layout(std::vector<int> mesh, std::vector<Placement> placements)
    : mesh_(std::move(mesh)), placements_(std::move(placements)) {
  if (mesh_.empty()) bad("a device mesh needs at least one dimension");
  if (placements_.size() != mesh_.size())
    bad("a mesh of " + std::to_string(mesh_.size()) + " dims needs as many placements, not " +
        std::to_string(placements_.size()));
  std::int64_t world = 1;
  for (int d : mesh_) {
    if (d < 1) bad("mesh dimension of size " + std::to_string(d));
    world *= d;
    if (world > std::numeric_limits<int>::max()) bad("a mesh of more than 2^31 - 1 ranks");
  }
  for (const Placement& p : placements_)
    if (p.shard_dim && *p.shard_dim < 0) bad("Shard(" + std::to_string(*p.shard_dim) + "): negative dim");
  world_size_ = static_cast<int>(world);
}

std::vector<int> Layout::coordinate(int rank) const {
  if (rank < 0 || rank >= world_size_)
    bad("rank " + std::to_string(rank) + " outside a world of " + std::to_string(world_size_));
  std::vector<int> coord(mesh_.size());
  for (std::size_t d = mesh_.size(); d-- > 0;) {
    coord[d] = rank % mesh_[d];
    rank /= mesh_[d];
  }
  return coord;
}

Layout parse_layout(std::string_view text, int world_size) {
  if (world_size < 1) bad("layout '" + std::string(text) + "' for a world of " + std::to_string(world_size));
  if (text == "rows") return Layout({world_size}, {Placement::shard(0)});
  if (text == "cols") return Layout({world_size}, {Placement::shard(1)});
  if (text == "replicated") return Layout({world_size}, {Placement::replicate()});
  if (text.starts_with("2d:")) {
    const std::string_view dims = text.substr(3);
    const std::size_t x = dims.find('x');
    const auto a = parse_int(dims.substr(0, x));
    const auto b = x == std::string_view::npos ? std::nullopt : parse_int(dims.substr(x + 1));
    if (!a || !b || *a < 1 || *b < 1)
      bad("layout '" + std::string(text) + "': expected 2d:AxB with whole numbers A, B >= 1");
    if (static_cast<std::int64_t>(*a) * *b != world_size)
      bad("layout '" + std::string(text) + "' has " + std::to_string(static_cast<std::int64_t>(*a) * *b) +
          " ranks, the world " + std::to_string(world_size));
    return Layout({*a, *b}, {Placement::shard(0), Placement::shard(1)});
  }
  bad("unknown layout '" + std::string(text) + "' (expected rows, cols, replicated or 2d:AxB)");
}

Box local_box(const Shape& global, const Layout& layout, int rank) {
  const std::vector<int> coord = layout.coordinate(rank);
  Box box = full_box(global);
  for (std::int64_t s : global)
    if (s < 0) bad("negative size in shape " + format_shape(global));
  if (global.empty()) return box;
  for (std::size_t m = 0; m < coord.size(); ++m) {
    const auto& dim = layout.placements()[m].shard_dim;
    if (!dim) continue;
    if (static_cast<std::size_t>(*dim) >= global.size())
      bad("Shard(" + std::to_string(*dim) + ") of a tensor of shape " + format_shape(global));
    const auto d = static_cast<std::size_t>(*dim);
    // A later Shard of the same dim splits the piece an earlier one left (offsets relative to
    // it); an empty piece sits at global[d], as torch records it, whatever split emptied it.
    const Extent e = chunk_extent(box.sizes[d], layout.mesh()[m], coord[m]);
    box.offsets[d] = e.size == 0 ? global[d] : box.offsets[d] + e.start;
    box.sizes[d] = e.size;
  }
  return box;
}

}  // namespace dcp::layout
