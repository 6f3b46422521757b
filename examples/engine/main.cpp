// What an inference engine that does not use libtorch does with a Distributed Checkpoint:
// lay its tensors out in one arena it owns (each 256-byte aligned, for SIMD loads and DMA),
// then let dcpp read every saved shard straight from the files into that arena. Prints a line
// per tensor (key, dtype, shape and an FNV-1a hash of its bytes, tab-separated), then a
// summary line.
//
//   engine CKPT_DIR
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>
import dcp.error;
import dcp.metadata;
import dcp.planning;
import dcp.storage;
import dcp.checkpoint;

namespace {

constexpr std::size_t kAlignment = 256;

struct Tensor {
  std::string key;
  dcp::DType dtype;
  dcp::metadata::Shape shape;
  std::size_t offset;  // in the arena
  std::size_t bytes;
};

std::uint64_t fnv1a(const std::byte* data, std::size_t size) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (std::size_t i = 0; i < size; ++i) h = (h ^ static_cast<std::uint64_t>(data[i])) * 0x100000001b3ull;
  return h;
}

int run(const char* checkpoint_dir) {
  // 1. What the checkpoint holds, validated against its data files; no tensor bytes read yet.
  const auto metadata = dcp::checkpoint::inspect(checkpoint_dir);

  // 2. The engine's layout: every tensor at an aligned offset of one arena.
  std::vector<Tensor> tensors;
  std::size_t arena_bytes = 0;
  for (const auto& item : metadata->items) {
    if (!item.is_tensor()) continue;  // objects (optimizer settings, ...) are not weights
    const auto& t = item.tensor();
    const auto bytes = static_cast<std::size_t>(dcp::metadata::byte_size(t.size, t.properties.dtype));
    tensors.push_back({item.fqn, t.properties.dtype, t.size, arena_bytes, bytes});
    arena_bytes += (bytes + kAlignment - 1) / kAlignment * kAlignment;
  }
  std::unique_ptr<std::byte, decltype(&std::free)> arena(
      static_cast<std::byte*>(std::aligned_alloc(kAlignment, arena_bytes == 0 ? kAlignment : arena_bytes)), &std::free);
  if (!arena) throw dcp::Error(dcp::Errc::resource_exhausted, "no memory for a " + std::to_string(arena_bytes) + "-byte arena");

  // 3. Where each tensor goes: one whole-tensor chunk over its place in the arena. However
  //    the checkpoint was sharded, the planner finds the saved pieces of each.
  dcp::planning::Destination destination;
  for (const auto& t : tensors) {
    dcp::planning::TensorDestination dest{t.shape, t.dtype, {}};
    dest.chunks.push_back({dcp::metadata::Shape(t.shape.size(), 0), t.shape,
                           dcp::planning::contiguous_slice(arena.get() + t.offset, t.dtype, t.shape)});
    destination.add_tensor(t.key, std::move(dest));
  }

  // 4. Read: byte ranges straight into the arena, on a thread pool, every record checked.
  dcp::storage::FileSystemReader reader(checkpoint_dir);
  dcp::planning::DefaultLoadPlanner planner;
  const auto report = dcp::checkpoint::load(destination, reader, planner);

  for (const auto& t : tensors)
    std::printf("%s\t%s\t%s\t%016llx\n", t.key.c_str(), std::string(dcp::dtype_name(t.dtype)).c_str(),
                dcp::format_shape(t.shape).c_str(),
                static_cast<unsigned long long>(fnv1a(arena.get() + t.offset, t.bytes)));
  std::printf("%zu tensors, %llu bytes read into a %zu-byte arena\n", tensors.size(),
              static_cast<unsigned long long>(report.bytes_read), arena_bytes);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: engine CKPT_DIR\n");
    return 2;
  }
  try {
    return run(argv[1]);
  } catch (const dcp::Error& e) {
    std::fprintf(stderr, "engine: %s\n", e.what());
    return 1;
  }
}
