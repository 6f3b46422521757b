// Small helpers shared by the decoder, the validator and the modules above: names of enums,
// element and byte counts, safe file names.
module;
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
module dcp.metadata;
import dcp.error;

namespace dcp::metadata {

std::string_view flavor_name(Flavor flavor) noexcept {
  return flavor == Flavor::torch_1_13 ? "torch-1.13" : "torch-2.x";
}

std::string_view source_name(Source source) noexcept {
  switch (source) {
    case Source::dcp: return "dcp";
    case Source::safetensors_file: return "safetensors";
    case Source::hf_index: return "hf-index";
    case Source::hf_directory: return "hf-directory";
    case Source::hf_sharded: return "hf-sharded";
  }
  return "unknown";
}

std::string_view memory_format_name(MemoryFormat format) noexcept {
  switch (format) {
    case MemoryFormat::contiguous: return "contiguous_format";
    case MemoryFormat::channels_last: return "channels_last";
    case MemoryFormat::preserve: return "preserve_format";
    default: return "unknown";
  }
}

std::uint64_t numel(const Shape& shape) { return layout::volume(shape); }

std::uint64_t byte_size(const Shape& shape, DType dtype) {
  return mul_or_throw(numel(shape), dtype_itemsize(dtype), "tensor byte size");
}

bool is_safe_relative_path(std::string_view path) noexcept {
  if (path.empty() || path == "." || path == "..") return false;
  for (char c : path)
    if (c == '/' || c == '\\' || c == '\0') return false;
  return true;
}

}  // namespace dcp::metadata
