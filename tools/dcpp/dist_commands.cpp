// The commands that run as ranks of a process group (launched by torchrun, or anything that
// sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT): `load` of each rank's rows and
// `reshard`. Written against the collective::ProcessGroup interface, so they live in the core
// command line; dcpp-torch forms the c10d group (dcp.dist) and hands it in. `reshard` in one
// process (no launcher) needs no group at all. Whatever a rank does on its own between the
// library's sequences (allocating its share, parsing loaded objects, adding up totals) is a
// step of collective::Collectives, so a rank that fails there fails every rank, naming it.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "cli.hpp"
import dcp.error;
import dcp.layout;
import dcp.metadata;
import dcp.memory;
import dcp.planning;
import dcp.storage;
import dcp.collective;
import dcp.checkpoint;

namespace dcpp_cli {

dcp::checkpoint::LoadOptions load_options(const Args& args);  // load_command.cpp

namespace {

using dcp::collective::Collectives;
using dcp::collective::ProcessGroup;

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// The layout a tensor is split by: `layout`, or rows where the layout shards a dim the tensor
// lacks (a bias under `cols`).
dcp::layout::Layout layout_for(const dcp::layout::Shape& size, const dcp::layout::Layout& layout, int world) {
  for (const auto& p : layout.placements())
    if (p.shard_dim && *p.shard_dim >= static_cast<int>(size.size())) return dcp::layout::parse_layout("rows", world);
  return layout;
}

// This rank's share of a tensor under `layout` (dcp.layout's local_box, torch's DTensor rule;
// a 0-dim tensor whole on every rank) as a destination over fresh memory, which `memory` keeps.
std::uint64_t add_share(dcp::planning::Destination& destination, const dcp::metadata::ItemMetadata& item,
                        const dcp::layout::Layout& layout, int rank, int world, std::vector<dcp::memory::Buffer>& memory) {
  const auto& t = item.tensor();
  const auto box = t.size.empty() ? dcp::layout::full_box(t.size)
                                  : dcp::layout::local_box(t.size, layout_for(t.size, layout, world), rank);
  const std::uint64_t bytes = dcp::metadata::byte_size(box.sizes, t.properties.dtype);
  try {
    memory.push_back(dcp::memory::allocate(std::max<std::uint64_t>(bytes, 1)));
  } catch (dcp::Error& e) {
    throw e.for_key(item.fqn);
  }
  dcp::planning::TensorDestination dest{t.size, t.properties.dtype, {}};
  if (t.size.empty() || !dcp::layout::is_empty(box))
    dest.chunks.push_back({box.offsets, box.sizes,
                           dcp::planning::contiguous_slice(memory.back().data(), t.properties.dtype, box.sizes)});
  destination.add_tensor(item.fqn, std::move(dest));
  return bytes;
}

// Small facts of every rank, added up on rank 0: every rank's numbers, then the coordinator's
// element-wise sums (or maximum, where `is_max`) as text on every rank.
std::vector<double> total_of(Collectives& ranks, const std::vector<double>& mine, const std::vector<bool>& is_max) {
  auto to_bytes = [](const std::string& text) {
    std::vector<std::byte> bytes(text.size());
    std::transform(text.begin(), text.end(), bytes.begin(), [](char c) { return static_cast<std::byte>(c); });
    return bytes;
  };
  auto numbers = [](std::span<const std::byte> payload) {
    std::string s(reinterpret_cast<const char*>(payload.data()), payload.size());
    std::vector<double> values;
    for (char* p = s.data(); *p;) {
      char* end = nullptr;
      const double v = std::strtod(p, &end);
      if (end == p) break;
      values.push_back(v);
      p = end;
    }
    return values;
  };
  auto text_of = [](const std::vector<double>& values) {
    std::string text;
    for (double v : values) text += std::to_string(v) + " ";
    return text;
  };
  const auto total = ranks.all_reduce(
      "totals", [&] { return to_bytes(text_of(mine)); },
      [&](Collectives::Results all) {
        std::vector<double> sums(mine.size());
        for (const auto& payload : all) {
          const auto values = numbers(payload);
          for (std::size_t i = 0; i < sums.size() && i < values.size(); ++i)
            sums[i] = is_max[i] ? std::max(sums[i], values[i]) : sums[i] + values[i];
        }
        return to_bytes(text_of(sums));
      });
  return numbers(total);
}

}  // namespace

int launcher_world_size() {
  const char* text = std::getenv("WORLD_SIZE");
  if (!text || !*text) return 1;
  try {
    return static_cast<int>(dcp::collective::parse_launcher_integer("WORLD_SIZE", text, 1, 65536));
  } catch (const dcp::Error& e) {
    throw UsageError{e.message()};
  }
}

std::chrono::seconds timeout_of(const Args& args) {
  const auto text = args.get("timeout");
  if (!text) return dcp::collective::kDefaultTimeout;
  char* end = nullptr;
  const long s = std::strtol(text->c_str(), &end, 10);
  if (text->empty() || *end != '\0' || s < 1 || s > 86400)
    throw UsageError{"--timeout takes seconds from 1 to 86400, not '" + *text + "'"};
  return std::chrono::seconds(s);
}

// --layout: rows (the default), cols or 2d:AxB over the ranks (usage errors exit 2).
dcp::layout::Layout layout_of(const Args& args, int world) {
  const auto text = args.get("layout").value_or("rows");
  try {
    return dcp::layout::parse_layout(text, world);
  } catch (const dcp::Error& e) {
    throw UsageError{"--layout: " + e.message()};
  }
}

// --no-read-once, --slowest-link host|storage (usage errors exit 2).
dcp::checkpoint::ReadOnce read_once_of(const Args& args) {
  dcp::checkpoint::ReadOnce read_once;
  read_once.enabled = !args.has("no-read-once");
  const auto link = args.get("slowest-link").value_or("host");
  if (link == "storage")
    read_once.slowest_link = dcp::planning::ReadTopology::Link::storage;
  else if (link != "host")
    throw UsageError{"--slowest-link takes host or storage, not '" + link + "'"};
  return read_once;
}

void check_dist_flags(const Args& args, int world_size) {
  (void)layout_of(args, world_size);
  (void)read_once_of(args);
}

int run_load_distributed(const Args& args, ProcessGroup& pg) {
  const auto options = load_options(args);
  const int rank = pg.rank();
  const int world = pg.size();
  Collectives ranks(&pg);
  const auto start = std::chrono::steady_clock::now();
  const auto reader_ptr = dcp::storage::open_reader(args.positional[0], options.read);
  auto& reader = *reader_ptr;
  const auto md = dcp::checkpoint::read_metadata(reader, &pg, 0);

  // Batches of whole tensors, bounded by their global size over the ranks: the same on every
  // rank (each load is a collective), about batch_bytes of rows on each.
  const auto layout = layout_of(args, world);
  std::vector<const dcp::metadata::ItemMetadata*> tensors, objects;
  for (const auto& item : md->items)
    if (!options.select || options.select(item.fqn)) (item.is_tensor() ? tensors : objects).push_back(&item);
  LoadResult result;
  DistResult dist{rank, world, 0, 0, std::nullopt};
  std::size_t next = 0;
  do {
    dcp::planning::Destination destination;
    std::vector<dcp::memory::Buffer> memory;
    ranks.run("load: allocate", [&] {
      std::uint64_t global = 0;
      while (next < tensors.size()) {
        const auto& t = tensors[next]->tensor();
        const auto size = dcp::metadata::byte_size(t.size, t.properties.dtype);
        if (!memory.empty() && global + size > options.batch_bytes * static_cast<std::uint64_t>(world)) break;
        global += size;
        const auto bytes = add_share(destination, *tensors[next++], layout, rank, world, memory);
        result.bytes += bytes;
        if (bytes > 0) ++result.tensors;
      }
      if (next == tensors.size())  // objects are replicated: every rank loads each, in the last batch
        for (const auto* item : objects) destination.add_object(item->fqn);
    });
    dcp::planning::DefaultLoadPlanner planner;
    const auto report = dcp::checkpoint::load(destination, reader, planner, md, &pg, 0, read_once_of(args));
    result.items_read += report.items;
    dist.storage_bytes += report.storage_bytes;
    dist.received_bytes += report.received_bytes;
    result.requests += report.requests;
  } while (next < tensors.size());
  result.objects = objects.size();
  result.seconds = seconds_since(start);
  result.device = "cpu";

  const auto all = total_of(ranks,
                            {static_cast<double>(result.bytes), static_cast<double>(dist.storage_bytes),
                             static_cast<double>(dist.received_bytes), result.seconds},
                            {false, false, false, true});
  if (rank == 0 && all.size() == 4)
    dist.total = DistTotal{static_cast<std::uint64_t>(all[0]), static_cast<std::uint64_t>(all[1]),
                           static_cast<std::uint64_t>(all[2]), all[3]};
  result.dist = dist;
  print_load_result(args, result);
  return 0;
}

int run_reshard(const Args& args, ProcessGroup* group) {
  dcp::storage::WriteOptions write;
  write.format = parse_flavor(args);
  write.overwrite = args.has("overwrite");
  const auto options = load_options(args);
  Collectives ranks(group);
  const int rank = ranks.rank();
  const int world = ranks.size();
  if (world > 1) write.files_per_rank = 1;  // the ranks write in parallel already
  const auto layout = layout_of(args, world);
  const auto start = std::chrono::steady_clock::now();

  // Each rank loads its share of every tensor; rank 0 also loads the objects. torch 1.13 keeps
  // only top-level keys: a tensor nested under one goes whole into that key's object, on rank 0.
  const auto reader_ptr = dcp::storage::open_reader(args.positional[0], options.read);
  auto& reader = *reader_ptr;
  const auto md = dcp::checkpoint::read_metadata(reader, group, 0);
  const auto path_of = [&](const dcp::metadata::ItemMetadata& item) {
    const auto* found = md->find_path(item.fqn);
    return found ? *found : std::vector<dcp::metadata::PathPart>{item.fqn};
  };
  const bool regroup = write.format == dcp::metadata::Flavor::torch_1_13;
  dcp::planning::Destination destination;
  std::vector<dcp::memory::Buffer> memory;
  std::vector<std::size_t> buffer_of;  // per item: its buffer in `memory`, if it has one
  ranks.run("reshard: allocate", [&] {
    for (const auto& item : md->items) {
      buffer_of.push_back(memory.size());
      if (!item.is_tensor()) {
        if (rank == 0) destination.add_object(item.fqn);
      } else if (!regroup || path_of(item).size() == 1) {
        (void)add_share(destination, item, layout, rank, world, memory);
      } else if (rank == 0) {
        (void)add_share(destination, item, dcp::layout::parse_layout("replicated", world), rank, world, memory);
      }
    }
  });
  dcp::planning::DefaultLoadPlanner planner;
  (void)dcp::checkpoint::load(destination, reader, planner, md, group, 0, read_once_of(args));

  // The same shares, saved together: every rank its shards, rank 0 the objects and the 0-dim
  // and empty tensors (as `convert --ranks` splits) and the whole nested tensors.
  dcp::planning::StateDict state_dict;
  std::vector<dcp::checkpoint::LoadedObject> objects;  // the objects' archives stay alive
  std::uint64_t tensors = 0;
  ranks.run("reshard: state dict", [&] {  // decodes the objects rank 0 loaded
    for (std::size_t i = 0; i < md->items.size(); ++i) {
      const auto& item = md->items[i];
      const auto path = path_of(item);
      const auto* entry = destination.find(item.fqn);
      if (!item.is_tensor()) {
        if (!entry) continue;
        objects.push_back(dcp::checkpoint::decode_object(item.fqn, std::move(*planner.take_bytes(item.fqn)), *md, reader));
        state_dict.add_object(path, objects.back().value);
        continue;
      }
      ++tensors;
      if (!entry) continue;
      const auto& t = item.tensor();
      const auto& loaded = std::get<dcp::planning::TensorDestination>(*entry);
      std::byte* data = memory[buffer_of[i]].data();
      if (t.size.empty() || dcp::metadata::numel(t.size) == 0 || (regroup && path.size() > 1)) {
        if (rank == 0)
          state_dict.add_tensor(path, dcp::planning::contiguous_slice(data, t.properties.dtype, t.size),
                                t.properties.requires_grad);
        continue;
      }
      std::vector<dcp::planning::SaveChunk> chunks;
      for (const auto& c : loaded.chunks) chunks.push_back({c.offsets, c.memory});
      state_dict.add_sharded_tensor(path, t.size, t.properties, std::move(chunks));
    }
    if (regroup) state_dict = dcp::checkpoint::group_top_level(state_dict);
  });
  const std::uint64_t saved_objects = objects.size();
  const auto writer = dcp::storage::open_writer(args.positional[1], write);
  dcp::planning::DefaultSavePlanner save_planner;
  (void)dcp::checkpoint::save(state_dict, *writer, save_planner, group, 0);
  if (rank == 0 && !args.has("quiet"))
    std::printf("resharded %llu tensors and %llu objects from %s to %s (%s, %d rank%s, %s) in %.3f s\n",
                static_cast<unsigned long long>(tensors), static_cast<unsigned long long>(saved_objects),
                dcp::escape_text(args.positional[0]).c_str(), dcp::escape_text(args.positional[1]).c_str(),
                std::string(dcp::metadata::flavor_name(write.format)).c_str(), world, world == 1 ? "" : "s",
                dcp::escape_text(args.get("layout").value_or("rows")).c_str(), seconds_since(start));
  return 0;
}

}  // namespace dcpp_cli
