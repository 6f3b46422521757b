// Hugging Face's index file and torch's DCP_SHARDING_INFO, both ways.
module;
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>
module dcp.safetensors;
import dcp.error;
import dcp.json;
import dcp.metadata;

namespace dcp::safetensors {
namespace {

using Kind = json::JsonReader::Kind;

Error bad(std::string message, std::uint64_t at) { return Error(Errc::data_loss, std::move(message)).at_offset(at); }

void expect(json::JsonReader& in, Kind kind, const char* what) {
  if (in.peek() != kind) throw bad(std::string(what), in.offset());
}

}  // namespace

Index parse_index(std::string_view text) {
  json::JsonReader in(text);
  Index index;
  bool has_map = false;
  expect(in, Kind::object, "an index file is a JSON object");
  in.begin_object();
  while (auto member = in.next_key()) {
    if (*member == "metadata" && in.peek() == Kind::object) {
      in.begin_object();
      while (auto field = in.next_key()) {
        if (*field == "total_size" && in.peek() == Kind::number) index.total_size = in.uint64();
        else in.skip();
      }
    } else if (*member == "weight_map") {
      if (has_map) throw bad("the index holds weight_map twice", in.offset());
      has_map = true;
      expect(in, Kind::object, "weight_map must be an object of file names");
      in.begin_object();
      while (true) {
        const auto at = member_offset(text, 0, in.offset());
        auto key = in.next_key();
        if (!key) break;
        if (in.peek() != Kind::string) throw bad("weight_map value is not a file name", in.offset()).for_key(*key);
        index.weight_map.push_back({std::move(*key), in.string(), at});
      }
    } else {
      in.skip();
    }
  }
  in.finish();
  if (!has_map) throw bad("the index has no weight_map", 0);
  std::unordered_set<std::string_view> keys;
  keys.reserve(index.weight_map.size());
  for (const auto& e : index.weight_map)
    if (!keys.insert(e.key).second) throw bad("weight_map lists this key twice", e.offset).for_key(e.key);
  return index;
}

std::vector<const IndexEntry*> index_files(const Index& index) {
  std::vector<const IndexEntry*> files;
  std::unordered_set<std::string_view> seen;
  for (const auto& e : index.weight_map) {
    if (!metadata::is_safe_relative_path(e.file))
      throw bad("'" + escape_text(e.file) + "' is not a file name of the index's directory", e.offset).for_key(e.key);
    if (seen.insert(e.file).second) files.push_back(&e);
  }
  return files;
}

std::string encode_index(std::uint64_t total_size, std::span<const std::pair<std::string, std::string>> weight_map) {
  json::JsonWriter w(2);
  w.begin_object().key("metadata").begin_object().key("total_size").value(total_size).end_object();
  w.key("weight_map").begin_object();
  for (const auto& [key, file] : weight_map) w.key(key).value(file);
  w.end_object().end_object();
  return w.take() + "\n";
}

std::vector<std::pair<std::string, metadata::Shape>> parse_sharding_info(std::string_view text, std::uint64_t base_offset) {
  json::JsonReader in(text, base_offset);
  std::vector<std::pair<std::string, metadata::Shape>> out;
  expect(in, Kind::object, "DCP_SHARDING_INFO is not a JSON object");
  in.begin_object();
  while (true) {
    const auto at = in.offset();
    auto key = in.next_key();
    if (!key) break;
    expect(in, Kind::object, "DCP_SHARDING_INFO entry is not an object");
    in.begin_object();
    bool has_offsets = false;
    metadata::Shape offsets;
    while (auto field = in.next_key()) {
      if (*field != "saved_offsets" || has_offsets) {
        in.skip();
        continue;
      }
      has_offsets = true;
      expect(in, Kind::array, "saved_offsets is not an array");
      in.begin_array();
      while (in.next_element()) {
        const auto dim_at = in.offset();
        const auto v = in.uint64();
        if (v > static_cast<std::uint64_t>(INT64_MAX)) throw bad("saved offset " + std::to_string(v) + " is too large", dim_at).for_key(*key);
        if (offsets.size() == metadata::kMaxRank)
          throw bad("saved_offsets of more than " + std::to_string(metadata::kMaxRank) + " dims", dim_at).for_key(*key);
        offsets.push_back(static_cast<std::int64_t>(v));
      }
    }
    if (!has_offsets) throw bad("DCP_SHARDING_INFO entry has no saved_offsets", at).for_key(*key);
    out.emplace_back(std::move(*key), std::move(offsets));
  }
  in.finish();
  std::unordered_set<std::string_view> keys;
  keys.reserve(out.size());
  for (const auto& [key, offsets] : out)
    if (!keys.insert(key).second) throw bad("DCP_SHARDING_INFO lists this key twice", base_offset).for_key(key);
  return out;
}

std::string encode_sharding_info(std::span<const std::pair<std::string, metadata::Shape>> offsets) {
  // json.dumps' separators: ", " and ": ".
  std::string out = "{";
  bool first = true;
  for (const auto& [key, shape] : offsets) {
    if (!first) out += ", ";
    first = false;
    json::append_quoted(out, key);
    out += ": {\"saved_offsets\": [";
    for (std::size_t d = 0; d < shape.size(); ++d) out += (d ? ", " : "") + std::to_string(shape[d]);
    out += "]}";
  }
  return out + "}";
}

}  // namespace dcp::safetensors
