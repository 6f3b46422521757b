// safetensors headers: parsing (every bound checked) and writing as the library writes them.
module;
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>
module dcp.safetensors;
import dcp.error;
import dcp.bytes;
import dcp.dtype;
import dcp.json;
import dcp.metadata;

namespace dcp::safetensors {
namespace {

constexpr std::string_view kMetadataKey = "__metadata__";

// One header entry: {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}.
Entry read_entry(json::JsonReader& in, std::string key, std::uint64_t key_offset) {
  Entry t{std::move(key), DType::float32, {}, 0, 0, key_offset};
  bool has_dtype = false, has_shape = false, has_offsets = false;
  in.begin_object();
  while (auto field = in.next_key()) {
    const auto at = in.offset();
    auto fail = [&](std::string message) { return Error(Errc::data_loss, std::move(message)).for_key(t.key).at_offset(at); };
    if (*field == "dtype" && !has_dtype) {
      const auto code = in.string();
      const auto dtype = dtype_from_safetensors(code);
      if (!dtype)
        throw Error(Errc::unimplemented, "safetensors dtype '" + code + "' is not supported (torch has no such dtype)")
            .for_key(t.key)
            .at_offset(at);
      t.dtype = *dtype;
      has_dtype = true;
    } else if (*field == "shape" && !has_shape) {
      in.begin_array();
      while (in.next_element()) {
        const auto dim_at = in.offset();
        const auto dim = in.uint64();
        if (dim > static_cast<std::uint64_t>(INT64_MAX))
          throw Error(Errc::out_of_range, "dimension " + std::to_string(dim) + " is too large").for_key(t.key).at_offset(dim_at);
        if (t.shape.size() == metadata::kMaxRank)
          throw Error(Errc::unimplemented, "tensor of more than " + std::to_string(metadata::kMaxRank) + " dims")
              .for_key(t.key)
              .at_offset(dim_at);
        t.shape.push_back(static_cast<std::int64_t>(dim));
      }
      has_shape = true;
    } else if (*field == "data_offsets" && !has_offsets) {
      in.begin_array();
      std::vector<std::uint64_t> offsets;
      while (in.next_element()) {
        if (offsets.size() == 2) throw fail("data_offsets must be [begin, end]");
        offsets.push_back(in.uint64());
      }
      if (offsets.size() != 2) throw fail("data_offsets must be [begin, end]");
      t.begin = offsets[0];
      t.end = offsets[1];
      has_offsets = true;
    } else {
      throw fail("unexpected or repeated field '" + *field + "' in a tensor entry");
    }
  }
  if (!has_dtype || !has_shape || !has_offsets)
    throw Error(Errc::data_loss, "tensor entry lacks dtype, shape or data_offsets").for_key(t.key).at_offset(key_offset);
  return t;
}

void read_metadata_strings(json::JsonReader& in, Header& header) {
  header.metadata_offset = in.offset();
  if (in.peek() != json::JsonReader::Kind::object) {  // nothing a checkpoint reads (the library writes objects)
    in.skip();
    return;
  }
  in.begin_object();
  std::unordered_set<std::string_view> seen;
  while (auto key = in.next_key()) {
    const auto at = in.offset();
    if (in.peek() == json::JsonReader::Kind::string) {
      header.metadata.emplace_back(std::move(*key), in.string());
      continue;
    }
    // The library writes strings only; other values mean nothing to a checkpoint, except where
    // torch's writer puts the placement of its pieces.
    if (*key == kShardingInfoKey) throw Error(Errc::data_loss, "DCP_SHARDING_INFO is not a string").at_offset(at);
    in.skip();
  }
  for (const auto& [key, value] : header.metadata)
    if (!seen.insert(key).second)
      throw Error(Errc::data_loss, "__metadata__ holds this key twice").for_key(key).at_offset(header.metadata_offset);
}

}  // namespace

std::uint64_t member_offset(std::string_view text, std::uint64_t base, std::uint64_t offset) noexcept {
  if (offset < base) return offset;
  auto i = static_cast<std::size_t>(offset - base);
  if (i < text.size() && text[i] == ',') ++i;
  while (i < text.size() && (text[i] == ' ' || text[i] == '\t' || text[i] == '\n' || text[i] == '\r')) ++i;
  return base + i;
}

const std::string* Header::find_metadata(std::string_view key) const {
  for (const auto& [k, v] : metadata)
    if (k == key) return &v;
  return nullptr;
}

std::uint64_t header_length(std::span<const std::byte> prefix, std::uint64_t file_size) {
  if (prefix.size() < kLengthBytes || file_size < kLengthBytes)
    throw Error(Errc::data_loss, "file of " + std::to_string(file_size) + " bytes has no safetensors header length")
        .at_offset(0);
  const std::uint64_t length = load_le(prefix, kLengthBytes);
  if (length > kMaxHeaderBytes || length > file_size - kLengthBytes)
    throw Error(Errc::data_loss, "header length " + std::to_string(length) + " exceeds " +
                                     (length > kMaxHeaderBytes ? "the 100 MB limit" : "the file"))
        .at_offset(0);
  return length;
}

Header parse_header(std::string_view text, std::uint64_t file_size, const std::function<void(const Entry&)>& on_entry) {
  Header header;
  header.data_start = kLengthBytes + text.size();
  if (header.data_start > file_size)
    throw Error(Errc::data_loss, "header of " + std::to_string(text.size()) + " bytes exceeds the file").at_offset(0);
  const std::uint64_t data_size = file_size - header.data_start;
  json::JsonReader in(text, kLengthBytes);
  in.begin_object();
  bool has_metadata = false;
  while (true) {
    const auto key_offset = member_offset(text, kLengthBytes, in.offset());
    auto key = in.next_key();
    if (!key) break;
    if (*key == kMetadataKey) {
      if (has_metadata) throw Error(Errc::data_loss, "the header holds __metadata__ twice").at_offset(key_offset);
      has_metadata = true;
      read_metadata_strings(in, header);
      continue;
    }
    auto entry = read_entry(in, std::move(*key), key_offset);
    const auto at = entry.offset;
    if (entry.begin > entry.end || entry.end > data_size)
      throw Error(Errc::data_loss, "data_offsets [" + std::to_string(entry.begin) + ", " + std::to_string(entry.end) +
                                       "] lie outside the data section of " + std::to_string(data_size) + " bytes")
          .for_key(entry.key)
          .at_offset(at);
    if (on_entry) on_entry(entry);
    const auto bytes = metadata::byte_size(entry.shape, entry.dtype);
    if (bytes != entry.end - entry.begin)
      throw Error(Errc::data_loss, "data_offsets hold " + std::to_string(entry.end - entry.begin) + " bytes, a " +
                                       std::string(dtype_name(entry.dtype)) + " tensor of shape " +
                                       format_shape(entry.shape) + " needs " + std::to_string(bytes))
          .for_key(entry.key)
          .at_offset(at);
    header.entries.push_back(std::move(entry));
  }
  in.finish();

  std::unordered_set<std::string_view> keys;
  keys.reserve(header.entries.size());
  for (const auto& e : header.entries)
    if (!keys.insert(e.key).second)
      throw Error(Errc::data_loss, "the header holds this key twice").for_key(e.key).at_offset(e.offset);
  // No two tensors share bytes (the safetensors library refuses that too).
  std::vector<const Entry*> by_offset;
  for (const auto& e : header.entries)
    if (e.end > e.begin) by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* b) { return a->begin < b->begin; });
  for (std::size_t i = 1; i < by_offset.size(); ++i)
    if (by_offset[i]->begin < by_offset[i - 1]->end)
      throw Error(Errc::data_loss, "data_offsets overlap those of '" + escape_text(by_offset[i - 1]->key) + "'")
          .for_key(by_offset[i]->key)
          .at_offset(by_offset[i]->offset);
  return header;
}

std::string encode_header(std::span<const Entry> entries, std::span<const std::pair<std::string, std::string>> metadata) {
  json::JsonWriter w;
  w.begin_object();
  if (!metadata.empty()) {
    w.key(kMetadataKey).begin_object();
    for (const auto& [key, value] : metadata) w.key(key).value(value);
    w.end_object();
  }
  for (const auto& e : entries) {
    const auto code = dtype_info(e.dtype).safetensors;
    if (code.empty())
      throw Error(Errc::unimplemented, "safetensors has no dtype for " + std::string(dtype_name(e.dtype)) + " tensors")
          .for_key(e.key);
    w.key(e.key).begin_object().key("dtype").value(code);
    w.key("shape").int_array(e.shape);
    w.key("data_offsets").begin_array().value(e.begin).value(e.end).end_array().end_object();
    if (w.str().size() > kMaxHeaderBytes) break;
  }
  w.end_object();
  std::string json = w.take();
  json.append((8 - json.size() % 8) % 8, ' ');
  if (json.size() > kMaxHeaderBytes)
    throw Error(Errc::resource_exhausted, "the safetensors header passes the format's limit of " +
                                              std::to_string(kMaxHeaderBytes) + " bytes");
  std::string out;
  out.reserve(kLengthBytes + json.size());
  append_le(out, json.size(), 8);
  out += json;
  return out;
}

}  // namespace dcp::safetensors
