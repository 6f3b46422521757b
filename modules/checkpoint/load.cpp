// Loading: torch's in-place load, and full-tensor loads into host buffers in bounded batches.
module;
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>
module dcp.checkpoint;
import dcp.error;
import dcp.pickle;
import dcp.metadata;
import dcp.planning;
import dcp.memory;
import dcp.record;
import dcp.storage;

namespace dcp::checkpoint {
std::uint64_t selected_tensor_bytes(const metadata::Metadata& md, const LoadOptions& options) {
  std::uint64_t total = 0;
  for (const auto& item : md.items)
    if (item.is_tensor() && detail::is_selected(options, item.fqn))
      total += metadata::byte_size(item.tensor().size, item.tensor().properties.dtype);
  return total;
}

namespace {

// torch's load sequence on one rank, over metadata the caller already read and validated.
storage::ReadReport run_load(planning::Destination& destination, storage::StorageReader& reader,
                             planning::LoadPlanner& planner, const metadata::ValidatedMetadata& md) {
  planner.set_up_planner(destination, md, /*is_coordinator=*/true);
  reader.set_up_storage_reader(md, true);
  auto local = reader.prepare_local_plan(planner.create_local_plan());
  auto global = reader.prepare_global_plan(planner.create_global_plan({std::move(local)}));
  const auto plan = planner.finish_plan(std::move(global.at(0)));
  return reader.read_data(plan, planner);
}

}  // namespace

storage::ReadReport load(planning::Destination& destination, storage::StorageReader& reader,
                         planning::LoadPlanner& planner) {
  return run_load(destination, reader, planner, reader.read_metadata());
}

std::span<const std::byte> TensorBuffer::bytes() const {
  return {memory.data(), static_cast<std::size_t>(metadata::byte_size(shape, dtype))};
}

planning::TensorSlice TensorBuffer::slice() { return planning::contiguous_slice(memory.data(), dtype, shape); }

storage::ReadReport for_each_tensor(const std::filesystem::path& checkpoint_dir, const metadata::ValidatedMetadata& md,
                                    const LoadOptions& options,
                                    const std::function<void(const std::string&, TensorBuffer)>& consume) {
  storage::ReadReport total;

  std::vector<const metadata::ItemMetadata*> pending;
  for (const auto& item : md->items)
    if (item.is_tensor() && detail::is_selected(options, item.fqn)) pending.push_back(&item);

  std::size_t next = 0;
  while (next < pending.size()) {
    // One batch: tensors up to batch_bytes, allocated and read in parallel.
    planning::Destination destination;
    std::vector<std::pair<std::string, TensorBuffer>> batch;
    std::uint64_t bytes = 0;
    while (next < pending.size()) {
      const auto& item = *pending[next];
      const auto& t = item.tensor();
      const auto size = metadata::byte_size(t.size, t.properties.dtype);
      if (!batch.empty() && bytes + size > options.batch_bytes) break;
      TensorBuffer tensor{t.properties.dtype, t.size, {}};
      try {
        tensor.memory = options.allocate ? options.allocate(size) : memory::allocate(size);
        if (tensor.memory.size() < size)
          throw Error(Errc::internal, "LoadOptions::allocate gave " + std::to_string(tensor.memory.size()) +
                                          " bytes for a " + std::to_string(size) + "-byte tensor");
      } catch (Error& e) {
        e.for_key(item.fqn);
        throw;
      }
      planning::TensorDestination dest;
      dest.global_size = t.size;
      dest.dtype = t.properties.dtype;
      dest.chunks.push_back({metadata::Shape(t.size.size(), 0), t.size, tensor.slice()});
      destination.add_tensor(item.fqn, std::move(dest));
      batch.emplace_back(item.fqn, std::move(tensor));
      bytes += size;
      ++next;
    }
    planning::DefaultLoadPlanner planner;
    storage::FileSystemReader reader(checkpoint_dir, options.read);
    auto report = run_load(destination, reader, planner, md);
    total.bytes_read += report.bytes_read;
    total.items += report.items;
    for (auto& e : report.errors) total.errors.push_back(std::move(e));
    for (auto& [fqn, tensor] : batch) consume(fqn, std::move(tensor));
  }
  return total;
}

std::vector<std::pair<std::string, pickle::Document>> load_objects(const std::filesystem::path& checkpoint_dir,
                                                                    const metadata::ValidatedMetadata& md,
                                                                    const LoadOptions& options) {
  planning::Destination destination;
  for (const auto& item : md->items)
    if (!item.is_tensor() && detail::is_selected(options, item.fqn)) destination.add_object(item.fqn);
  std::vector<std::pair<std::string, pickle::Document>> objects;
  if (destination.size() == 0) return objects;
  storage::ReadOptions read_options = options.read;
  read_options.collect_errors = false;  // every object below must have loaded
  storage::FileSystemReader reader(checkpoint_dir, read_options);
  planning::DefaultLoadPlanner planner;
  (void)run_load(destination, reader, planner, md);
  for (const auto& [fqn, entry] : destination.entries()) {
    const auto* bytes = planner.loaded_bytes(fqn);
    const auto* info = md->find_storage(fqn, nullptr);
    try {
      objects.emplace_back(fqn, record::parse_object(*bytes));
    } catch (Error& e) {
      e.add_offset(info->offset);
      e.in_file(reader.path_of(info->relative_path).string());
      e.for_key(fqn);
      throw;
    }
  }
  return objects;
}

}  // namespace dcp::checkpoint
