// Importing a safetensors file as a planning::StateDict over a read-only mapping of the file
// (`dcpp convert FILE.safetensors CKPT_DIR`): dcp.safetensors checks the header. Untrusted input:
// every byte of the file.
module;
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string_view>
#include <utility>
module dcp.checkpoint;
import dcp.error;
import dcp.metadata;
import dcp.planning;
import dcp.safetensors;
import dcp.storage;

namespace dcp::checkpoint {

ImportedStateDict import_safetensors(const std::filesystem::path& file, const ImportOptions& options) {
  std::shared_ptr<storage::MappedFile> mapped;
  try {
    mapped = std::make_shared<storage::MappedFile>(file);
    const auto whole = mapped->bytes();
    detail::OutputBudget output(options, whole.size());
    const auto length = safetensors::header_length(whole, whole.size());
    const std::string_view text(reinterpret_cast<const char*>(whole.data() + safetensors::kLengthBytes), length);
    // `__metadata__` is not imported: free-form strings, no tensor in them.
    const auto header = safetensors::parse_header(text, whole.size(), [&](const safetensors::Entry& entry) {
      try {
        output.tensor(entry.key, entry.dtype, entry.shape);  // before the entry is kept
      } catch (Error& e) {
        throw e.at_offset(entry.offset);
      }
    });
    const auto data = whole.subspan(header.data_start);
    ImportedStateDict out;
    for (const auto& e : header.entries) {
      auto* base = const_cast<std::byte*>(data.data()) + e.begin;
      out.state_dict.add_tensor({e.key}, planning::contiguous_slice(base, e.dtype, e.shape));
    }
    out.options = output.options();
    out.output_bytes = output.charged();
    out.source = mapped;
    out.keep_alive = std::move(mapped);
    return out;
  } catch (Error& e) {
    detail::throw_import_error(std::move(e), file, mapped.get());
  }
}

}  // namespace dcp::checkpoint
