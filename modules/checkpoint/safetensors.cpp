// Converting a checkpoint into one safetensors file, or a Hugging Face model directory of
// them: each file's JSON header known from metadata alone (tensors sorted by key, packed back
// to back; objects as JSON strings in __metadata__), then the tensor bytes written in place as
// they stream in.
module;
#include <algorithm>
#include <cstdio>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>
module dcp.checkpoint;
import dcp.error;
import dcp.metadata;
import dcp.record;
import dcp.safetensors;
import dcp.storage;

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

// What safetensors cannot hold of the selected keys, refused before any work.
void check_keys(const metadata::ValidatedMetadata& md, const LoadOptions& options) {
  for (const auto& item : md->items) {
    if (!detail::is_selected(options, item.fqn)) continue;
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
}

// The selected objects as JSON strings (sorted by key) after "format": "pt": a `__metadata__`.
std::vector<std::pair<std::string, std::string>> metadata_strings_of(const std::filesystem::path& checkpoint_dir,
                                                                     const metadata::ValidatedMetadata& md,
                                                                     const detail::Selection& selection) {
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
      detail::locate_object_error(e, checkpoint_dir, *md, fqn);
      throw;
    }
  }
  std::vector<std::pair<std::string, std::string>> strings{{"format", "pt"}};
  for (auto& [fqn, text] : metadata_strings) strings.emplace_back(fqn, std::move(text));
  return strings;
}

// One safetensors file: its header, known from metadata alone (tensors sorted by key, packed
// back to back), and where each tensor's bytes go in it.
struct PackedFile {
  std::string header;
  std::uint64_t size = 0;  // the whole file
  std::vector<std::pair<std::string, std::uint64_t>> offsets;  // fqn, file offset
};

PackedFile pack(std::vector<const metadata::ItemMetadata*> items,
                std::span<const std::pair<std::string, std::string>> strings) {
  std::sort(items.begin(), items.end(), [](const auto* a, const auto* b) { return a->fqn < b->fqn; });
  std::vector<safetensors::Entry> entries;
  entries.reserve(items.size());
  std::uint64_t total = 0;
  for (const auto* item : items) {
    const auto& t = item->tensor();
    const auto end = add_or_throw(total, metadata::byte_size(t.size, t.properties.dtype), "safetensors data size");
    entries.push_back({item->fqn, t.properties.dtype, t.size, total, end, 0});
    total = end;
  }
  PackedFile file;
  file.header = safetensors::encode_header(entries, strings);
  file.size = file.header.size() + total;
  for (const auto& entry : entries) file.offsets.emplace_back(entry.key, file.header.size() + entry.begin);
  return file;
}

}  // namespace

using namespace detail;

ConvertReport convert_to_safetensors(const std::filesystem::path& checkpoint_dir, const std::filesystem::path& out,
                                     const LoadOptions& options, const Progress& progress, bool overwrite) {
  check_output_path(out, overwrite);
  const auto md = inspect(checkpoint_dir);
  check_keys(md, options);
  Selection selection = select_items(checkpoint_dir, md, options);
  const auto strings = metadata_strings_of(checkpoint_dir, md, selection);
  const auto packed = pack(selection.tensors, strings);
  std::unordered_map<std::string, std::uint64_t> offset(packed.offsets.begin(), packed.offsets.end());

  TempFile file(out, overwrite);
  file.write(std::as_bytes(std::span(packed.header.data(), packed.header.size())));
  ConvertReport report;
  report.bytes = stream_tensors(checkpoint_dir, md, options, selection, progress,
                                [&](const std::string& fqn, std::uint64_t at, std::span<const std::byte> data, bool) {
                                  file.write_at(data, offset.at(fqn) + at);
                                });
  file.commit(packed.size);
  report.tensors = selection.tensors.size();
  report.objects = selection.objects.size();
  return report;
}

ConvertReport convert_to_hf(const std::filesystem::path& checkpoint_dir, const std::filesystem::path& out_dir,
                            const LoadOptions& options, const Progress& progress, bool overwrite,
                            std::uint64_t max_shard_bytes) {
  const auto md = inspect(checkpoint_dir);
  check_keys(md, options);
  Selection selection = select_items(checkpoint_dir, md, options);
  const auto strings = metadata_strings_of(checkpoint_dir, md, selection);

  // huggingface_hub's split_state_dict_into_shards_factory, tensor for tensor.
  std::vector<std::vector<const metadata::ItemMetadata*>> shards;
  std::vector<const metadata::ItemMetadata*> current;
  std::uint64_t current_bytes = 0, total = 0;
  for (const auto* item : selection.tensors) {
    const auto bytes = metadata::byte_size(item->tensor().size, item->tensor().properties.dtype);
    total = add_or_throw(total, bytes, "model size");
    if (bytes > max_shard_bytes) {
      shards.push_back({item});
      continue;
    }
    if (current_bytes + bytes > max_shard_bytes) {
      shards.push_back(std::move(current));
      current.clear();
      current_bytes = 0;
    }
    current.push_back(item);
    current_bytes += bytes;
  }
  if (!current.empty() || shards.empty()) shards.push_back(std::move(current));

  const std::size_t n = shards.size();
  if (n > 99'999)
    throw Error(Errc::resource_exhausted, "a model directory holds at most 99999 shards; raise --max-shard-size")
        .in_file(out_dir.string());
  std::vector<std::string> names;
  std::vector<PackedFile> files;
  std::vector<std::uint64_t> sizes;
  std::vector<std::pair<std::string, std::size_t>> weight_map;
  std::unordered_map<std::string, std::pair<std::size_t, std::uint64_t>> where;  // fqn → shard, offset
  const std::vector<std::pair<std::string, std::string>> format_only{strings.front()};
  for (std::size_t i = 0; i < n; ++i) {
    char name[64];
    std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", i + 1, n);
    names.emplace_back(n == 1 ? "model.safetensors" : name);
    files.push_back(pack(shards[i], i == 0 ? std::span(strings) : std::span(format_only)));
    sizes.push_back(files.back().size);
    for (const auto* item : shards[i]) weight_map.emplace_back(item->fqn, i);
    for (const auto& [fqn, offset] : files.back().offsets) where.emplace(fqn, std::pair{i, offset});
  }

  storage::HfDirectoryWriter writer(out_dir, overwrite);
  writer.begin(names);
  for (std::size_t i = 0; i < n; ++i)
    writer.file(i).write(std::as_bytes(std::span(files[i].header.data(), files[i].header.size())));
  ConvertReport report;
  report.bytes = stream_tensors(checkpoint_dir, md, options, selection, progress,
                                [&](const std::string& fqn, std::uint64_t at, std::span<const std::byte> data, bool) {
                                  const auto& [shard, offset] = where.at(fqn);
                                  writer.file(shard).write_at(data, offset + at);
                                });
  writer.publish(sizes, total, weight_map);
  report.tensors = selection.tensors.size();
  report.objects = selection.objects.size();
  return report;
}

}  // namespace dcp::checkpoint
