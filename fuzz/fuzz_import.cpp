// libFuzzer target: a torch.save file (first byte even) or a safetensors file (odd) imported
// as `dcpp convert FILE CKPT_DIR` does, with an output budget of 2^(10 + first byte / 2 % 32)
// bytes, then what the save would touch: the first and last element of every tensor view, and
// every object re-encoded as an item archive. What is accepted was charged within the budget,
// every tensor at least at its dense size.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <variant>
import dcp.error;
import dcp.metadata;
import dcp.planning;
import dcp.record;
import dcp.checkpoint;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  // The importers take a path (they map the file): an in-memory file stands in.
  const int fd = ::memfd_create("fuzz_import", MFD_CLOEXEC);
  if (fd < 0) return 0;
  if (size > 1 && ::write(fd, data + 1, size - 1) != static_cast<ssize_t>(size - 1)) {
    ::close(fd);
    return 0;
  }
  const std::string path = "/proc/self/fd/" + std::to_string(fd);
  try {
    dcp::checkpoint::ImportOptions options;
    options.max_output_bytes = std::uint64_t{1} << (10 + data[0] / 2 % 32);
    const auto imported = data[0] % 2 == 0 ? dcp::checkpoint::import_torch_save(path, options)
                                           : dcp::checkpoint::import_safetensors(path, options);
    if (imported.output_bytes > options.max_output_bytes) std::abort();
    std::uint64_t dense = 0;
    volatile std::uint8_t sink = 0;
    for (const auto& entry : imported.state_dict.entries()) {
      if (const auto* object = std::get_if<dcp::planning::ObjectValue>(&entry.value)) {
        try {
          (void)dcp::record::object_archive(*object->document, object->id, dcp::record::ArchiveStyle::torch_2x);
        } catch (const dcp::Error&) {
        }
        continue;
      }
      const auto& m = std::get<dcp::planning::SaveTensor>(entry.value).chunks.at(0).memory;
      dense += dcp::planning::numel(m) * dcp::dtype_itemsize(m.dtype);
      if (dense > imported.output_bytes) std::abort();  // a view charged less than it will write
      if (dcp::planning::numel(m) == 0) continue;
      std::uint64_t last = 0;
      for (std::size_t d = 0; d < m.sizes.size(); ++d)
        last += static_cast<std::uint64_t>(m.sizes[d] - 1) * static_cast<std::uint64_t>(m.strides[d]);
      const auto itemsize = dcp::dtype_itemsize(m.dtype);
      sink = sink + static_cast<std::uint8_t>(m.data[0]) + static_cast<std::uint8_t>(m.data[last * itemsize + itemsize - 1]);
    }
  } catch (const dcp::Error&) {
  }
  ::close(fd);
  return 0;
}
