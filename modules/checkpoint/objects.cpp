// A checkpoint's BYTE_IO objects as values that can be saved again: decoded, with the storages
// of the tensors inside them (torch 1.13 saves every non-tensor value of a state dict as one
// object, a dict of tensors included), each checked.
module;
#include <cstddef>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>
module dcp.checkpoint;
import dcp.error;
import dcp.pickle;
import dcp.metadata;
import dcp.planning;
import dcp.record;
import dcp.storage;

namespace dcp::checkpoint {

LoadedObject decode_object(std::string fqn, std::vector<std::byte> archive, const metadata::Metadata& md,
                           const storage::StorageReader& reader) {
  try {
    LoadedObject object{fqn, {}, std::make_shared<const std::vector<std::byte>>(std::move(archive))};
    auto saved = std::make_shared<const record::TorchSave>(record::parse_torch_save(*object.archive));
    const auto root = saved->document.root();
    auto storages = record::find_storages(*saved, *object.archive, root);
    object.value = planning::ObjectValue{std::shared_ptr<const pickle::Document>(saved, &saved->document), root,
                                         std::move(storages)};
    return object;
  } catch (Error& e) {
    if (const auto* info = md.find_storage(fqn, nullptr)) {
      e.add_offset(info->offset);
      e.in_file(reader.location_of(info->relative_path));
    }
    throw e.for_key(fqn);
  }
}

std::vector<LoadedObject> load_object_values(const std::filesystem::path& checkpoint_dir,
                                             const metadata::ValidatedMetadata& md, const LoadOptions& options) {
  planning::Destination destination;
  for (const auto& item : md->items)
    if (!item.is_tensor() && detail::is_selected(options, item.fqn)) destination.add_object(item.fqn);
  std::vector<LoadedObject> objects;
  if (destination.size() == 0) return objects;
  storage::ReadOptions read_options = options.read;
  read_options.collect_errors = false;  // every object below must have loaded
  const auto reader = storage::open_reader(checkpoint_dir, read_options);
  planning::DefaultLoadPlanner planner;
  (void)load(destination, *reader, planner, md);
  for (const auto& [fqn, entry] : destination.entries()) {
    auto bytes = planner.take_bytes(fqn);
    if (!bytes) throw Error(Errc::internal, "object was not loaded").for_key(fqn);
    objects.push_back(decode_object(fqn, std::move(*bytes), *md, *reader));
  }
  return objects;
}

}  // namespace dcp::checkpoint
