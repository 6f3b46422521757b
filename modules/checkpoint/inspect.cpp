// Reading and cross-checking metadata.
module;
#include <ATen/core/Tensor.h>
#include <filesystem>
#include <string_view>
module dcp.checkpoint;
import dcp.error;
import dcp.metadata;
import dcp.storage;

namespace dcp::checkpoint {

metadata::Metadata inspect(const std::filesystem::path& checkpoint_dir) {
  storage::FileSystemReader reader(checkpoint_dir);
  auto md = reader.read_metadata();
  const auto metadata_path = (checkpoint_dir / ".metadata").string();
  try {
    metadata::validate(md);
  } catch (Error& e) {
    e.in_file(metadata_path);
    throw;
  }
  try {
    metadata::check_storage_bounds(md, [&](std::string_view name) { return reader.file_size(name); });
  } catch (Error& e) {
    // The storage error names the data file relative to the directory; make it a full path.
    if (!e.context().file.empty() && metadata::is_safe_relative_path(e.context().file)) {
      Error full(e.code(), e.message());
      full.in_file(reader.path_of(e.context().file).string()).for_key(e.context().key);
      if (e.context().byte_offset) full.at_offset(*e.context().byte_offset);
      throw full;
    }
    throw;
  }
  return md;
}

}  // namespace dcp::checkpoint
