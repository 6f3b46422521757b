// Verifying a checkpoint: every selected record read whole with its CRC-32 checked, every
// selected object decoded (the storages of its tensors checked), nothing kept.
module;
#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
module dcp.checkpoint;
import dcp.error;
import dcp.storage;

namespace dcp::checkpoint {

VerifyReport verify(const std::filesystem::path& checkpoint_dir, const LoadOptions& options, const Progress& progress) {
  const auto md = inspect(checkpoint_dir);
  LoadOptions o = detail::streaming_options(options);
  o.read.verify_crc = true;
  VerifyReport report;
  auto read = for_each_tensor(checkpoint_dir, md, o, [&](const std::string&, TensorBuffer tensor) {
    ++report.tensors;
    report.bytes += tensor.bytes().size();
    if (progress) progress(tensor.bytes().size());
  });
  report.errors = std::move(read.errors);
  try {
    report.objects = load_object_values(checkpoint_dir, md, o).size();  // tensors inside checked too
  } catch (const Error& e) {
    if (!o.read.collect_errors) throw;
    report.errors.push_back(e);
  }
  return report;
}

}  // namespace dcp::checkpoint
