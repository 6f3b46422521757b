// Full tensors as at::Tensor: the core's buffers adopted by libtorch, then placed on a device.
module;
#include <ATen/core/Tensor.h>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <utility>
#include <vector>
module dcp.torch;
import dcp.error;
import dcp.metadata;
import dcp.memory;
import dcp.storage;
import dcp.alloc;
import dcp.checkpoint;

namespace dcp::torch {

storage::ReadReport for_each_tensor(const std::filesystem::path& checkpoint_dir, const metadata::ValidatedMetadata& md,
                                    const LoadOptions& options,
                                    const std::function<void(const std::string&, at::Tensor)>& consume) {
  alloc::check_device(options.allocation.device);
  for (const auto& item : md->items) {
    if (!item.is_tensor() || (options.select && !options.select(item.fqn))) continue;
    try {
      (void)alloc::scalar_type(item.tensor().properties.dtype);
    } catch (Error& e) {
      e.for_key(item.fqn);
      throw;
    }
  }
  checkpoint::LoadOptions core = options;
  // Read on the host; tensors bound for a GPU are read into page-locked memory first.
  if (options.allocation.pinned || options.allocation.device.kind == memory::DeviceKind::cuda)
    core.allocate = [](std::uint64_t bytes) { return alloc::allocate_pinned(bytes); };
  return checkpoint::for_each_tensor(checkpoint_dir, md, core, [&](const std::string& fqn, checkpoint::TensorBuffer t) {
    consume(fqn, alloc::to_device(alloc::adopt(std::move(t.memory), t.dtype, t.shape), options.allocation.device));
  });
}

LoadedCheckpoint load_full(const std::filesystem::path& checkpoint_dir, const LoadOptions& options) {
  LoadedCheckpoint result{checkpoint::inspect(checkpoint_dir), {}, {}, {}};
  result.report = for_each_tensor(checkpoint_dir, result.metadata, options, [&](const std::string& fqn, at::Tensor t) {
    result.tensors.emplace_back(fqn, std::move(t));
  });
  result.objects = checkpoint::load_objects(checkpoint_dir, result.metadata, options);
  return result;
}

}  // namespace dcp::torch
