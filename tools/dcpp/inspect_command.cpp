// `dcpp inspect`: a table (or JSON) of what a checkpoint holds. In the table, optimizer state
// entries ("optim.state.<param>.<state>") follow their parameter's row, indented
// (dcp.optimizer's state_owners); JSON keeps metadata order.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "cli.hpp"
import dcp.error;
import dcp.layout;
import dcp.metadata;
import dcp.checkpoint;
import dcp.optimizer;

namespace dcpp_cli {
namespace {

std::string shape_text(std::span<const std::int64_t> shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? "," : "") + std::to_string(shape[i]);
  return s + "]";
}

// Columns a cell takes on a terminal: its characters (cells are escaped, so valid UTF-8 with
// no controls; wide East Asian characters count as one).
std::size_t columns(std::string_view cell) {
  std::size_t n = 0;
  for (const char c : cell) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return n;
}

std::string human_bytes(std::uint64_t n) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", v, units[u]);
  return buf;
}

}  // namespace

int run_inspect(const Args& args) {
  namespace md = dcp::metadata;
  if (args.has("stats")) return run_stats(args);
  for (const char* flag : {"fail-on-nonfinite", "keys", "threads", "io"})
    if (args.has(flag)) throw UsageError{"--" + std::string(flag) + " needs --stats"};
  const auto validated = dcp::checkpoint::inspect(args.positional[0]);
  const md::Metadata& metadata = *validated;
  if (args.has("json")) {
    std::fputs(md::to_json(metadata).c_str(), stdout);
    std::fputc('\n', stdout);
    return 0;
  }
  std::vector<std::vector<std::string>> rows{{"KEY", "KIND", "DTYPE", "SHAPE", "CHUNKS", "LAYOUT", "BYTES", "FILES"}};
  std::uint64_t total = 0;
  std::set<std::string> all_files;
  auto add_row = [&](const md::ItemMetadata& item, bool grouped) {
    std::set<std::string> files;
    std::uint64_t bytes = 0;
    const std::string key = (grouped ? "  " : "") + dcp::escape_text(item.fqn);
    if (item.is_tensor()) {
      const auto& t = item.tensor();
      for (const auto& c : t.chunks)
        if (auto* s = metadata.find_storage(item.fqn, &c.offsets)) files.insert(s->relative_path);
      bytes = md::byte_size(t.size, t.properties.dtype);
      rows.push_back({key, "tensor", std::string(dcp::dtype_name(t.properties.dtype)), shape_text(t.size),
                      std::to_string(t.chunks.size()), dcp::layout::format_layout(md::describe_layout(t)),
                      human_bytes(bytes), ""});
    } else {
      if (auto* s = metadata.find_storage(item.fqn, nullptr)) {
        files.insert(s->relative_path);
        bytes = s->length;
      }
      rows.push_back({key, "bytes", "-", "-", "1", "-", human_bytes(bytes), ""});
    }
    total += bytes;
    std::string list;
    for (const auto& f : files) list += (list.empty() ? "" : ",") + dcp::escape_text(f);
    rows.back().back() = files.size() > 3 ? std::to_string(files.size()) + " files" : list;
    all_files.insert(files.begin(), files.end());
  };
  // Optimizer state rows move under their parameter's row.
  const auto owners = dcp::optimizer::state_owners(metadata);
  std::vector<std::vector<std::size_t>> states_of(metadata.items.size());
  std::vector<bool> grouped(metadata.items.size(), false);
  for (const auto& o : owners) {
    states_of[o.param].push_back(o.state);
    grouped[o.state] = true;
  }
  for (std::size_t i = 0; i < metadata.items.size(); ++i) {
    if (grouped[i]) continue;
    add_row(metadata.items[i], false);
    for (auto s : states_of[i]) add_row(metadata.items[s], true);
  }
  std::vector<std::size_t> width(rows[0].size(), 0);
  for (const auto& r : rows)
    for (std::size_t i = 0; i < r.size(); ++i) width[i] = std::max(width[i], columns(r[i]));
  for (const auto& r : rows) {
    std::string line;
    for (std::size_t i = 0; i < r.size(); ++i) {
      line += r[i];
      if (i + 1 < r.size()) line += std::string(width[i] - columns(r[i]) + 2, ' ');
    }
    std::printf("%s\n", line.c_str());
  }
  const std::string optimizer =
      owners.empty() ? "" : ", " + std::to_string(owners.size()) + " optimizer states under their parameters";
  // What was read: a DCP checkpoint of a torch version, or which safetensors layout.
  const std::string kind = metadata.source == md::Source::dcp ? std::string(md::flavor_name(metadata.flavor))
                                                              : std::string(md::source_name(metadata.source));
  std::printf("\n%s checkpoint: %zu keys, %s, %zu data files%s%s%s\n", kind.c_str(), metadata.items.size(),
              human_bytes(total).c_str(), all_files.size(), optimizer.c_str(),
              metadata.version ? (", version " + dcp::escape_text(*metadata.version)).c_str() : "",
              metadata.planner_data ? ", flattened (planner_data)" : "");
  return 0;
}

}  // namespace dcpp_cli
