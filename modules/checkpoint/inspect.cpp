// Reading and cross-checking metadata.
module;
#include <filesystem>
module dcp.checkpoint;
import dcp.metadata;
import dcp.storage;

namespace dcp::checkpoint {

metadata::ValidatedMetadata inspect(const std::filesystem::path& checkpoint_dir) {
  return storage::FileSystemReader(checkpoint_dir).read_metadata();
}

}  // namespace dcp::checkpoint
