// Converting a checkpoint into one safetensors file: a JSON header known from metadata alone
// (tensors sorted by key, packed back to back; objects as JSON strings in __metadata__), then
// the tensor bytes written in place as they stream in.
module;
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>
module dcp.checkpoint;
import dcp.error;
import dcp.metadata;
import dcp.record;
import dcp.safetensors;

namespace dcp::checkpoint {
namespace {

// A header is UTF-8 JSON: a key with a lone surrogate (which Python's pickle writes) would be a
// \uDCxx escape that the safetensors library refuses, and other bytes would become U+FFFD.
bool is_utf8_text(std::string_view key) {
  for (std::size_t i = 0; i < key.size();) {
    char32_t code = 0;
    const auto length = decode_utf8(key, i, code);
    if (length == 0 || (code >= 0xD800 && code <= 0xDFFF)) return false;
    i += length;
  }
  return true;
}

}  // namespace

using namespace detail;

ConvertReport convert_to_safetensors(const std::filesystem::path& checkpoint_dir, const std::filesystem::path& out,
                                     const LoadOptions& options, const Progress& progress, bool overwrite) {
  check_output_path(out, overwrite);
  const auto md = inspect(checkpoint_dir);
  for (const auto& item : md->items) {
    if (!is_selected(options, item.fqn)) continue;
    if (item.is_tensor() && dtype_info(item.tensor().properties.dtype).safetensors.empty())
      fail_for_key(Errc::unimplemented, item.fqn,
                   "safetensors has no dtype for " + std::string(dtype_name(item.tensor().properties.dtype)) +
                       " tensors");
    if (item.is_tensor() && item.fqn == "__metadata__")
      fail_for_key(Errc::unimplemented, item.fqn, "a tensor cannot be named __metadata__ in safetensors");
    if (!is_utf8_text(item.fqn))
      fail_for_key(Errc::unimplemented, item.fqn, "a safetensors header holds UTF-8 text only, and this key is not");
    if (!item.is_tensor() && item.fqn == "format")
      fail_for_key(Errc::unimplemented, item.fqn, "object key 'format' collides with safetensors' \"format\": \"pt\"");
  }
  Selection selection = select_items(checkpoint_dir, md, options);
  std::map<std::string, std::string> metadata_strings;  // sorted by key
  std::size_t header_bytes = 0;
  for (const auto& object : selection.objects) {
    const auto& fqn = object.fqn;
    try {
      auto text = record::object_to_json(*object.value.document, object.value.id);
      header_bytes += text.size();
      if (header_bytes > safetensors::kMaxHeaderBytes)
        throw Error(Errc::resource_exhausted, "objects' JSON passes the safetensors header limit of " +
                                                  std::to_string(safetensors::kMaxHeaderBytes) + " bytes");
      metadata_strings.emplace(fqn, std::move(text));
    } catch (Error& e) {
      locate_object_error(e, checkpoint_dir, *md, fqn);
      throw;
    }
  }

  // The header is known from metadata alone: tensors sorted by key, packed back to back.
  std::vector<const metadata::ItemMetadata*> sorted = selection.tensors;
  std::sort(sorted.begin(), sorted.end(), [](const auto* a, const auto* b) { return a->fqn < b->fqn; });
  std::unordered_map<std::string, std::uint64_t> data_offset;
  std::vector<safetensors::Entry> entries;
  entries.reserve(sorted.size());
  std::uint64_t total = 0;
  for (const auto* item : sorted) {
    const auto& t = item->tensor();
    const auto end = add_or_throw(total, metadata::byte_size(t.size, t.properties.dtype), "safetensors data size");
    entries.push_back({item->fqn, t.properties.dtype, t.size, total, end, 0});
    data_offset.emplace(item->fqn, total);
    total = end;
  }
  std::vector<std::pair<std::string, std::string>> strings{{"format", "pt"}};
  for (auto& [fqn, text] : metadata_strings) strings.emplace_back(fqn, std::move(text));
  const std::string header = safetensors::encode_header(entries, strings);
  const std::uint64_t data_start = header.size();

  TempFile file(out, overwrite);
  file.write(std::as_bytes(std::span(header.data(), header.size())));
  ConvertReport report;
  report.bytes = stream_tensors(checkpoint_dir, md, options, selection, progress,
                                [&](const std::string& fqn, std::span<const std::byte> data) {
                                  file.write_at(data, data_start + data_offset.at(fqn));
                                });
  file.commit(data_start + total);
  report.tensors = selection.tensors.size();
  report.objects = selection.objects.size();
  return report;
}

}  // namespace dcp::checkpoint
