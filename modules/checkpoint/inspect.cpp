// Reading and cross-checking metadata, of whatever checkpoint the path holds.
module;
#include <filesystem>
module dcp.checkpoint;
import dcp.metadata;
import dcp.storage;

namespace dcp::checkpoint {

metadata::ValidatedMetadata inspect(const std::filesystem::path& checkpoint_dir) {
  return storage::open_reader(checkpoint_dir)->read_metadata();
}

}  // namespace dcp::checkpoint
