// Importing a safetensors file as a planning::StateDict over a read-only mapping of the file
// (`dcpp convert FILE.safetensors CKPT_DIR`). Untrusted input: every byte of the file.
module;
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>
module dcp.checkpoint;
import dcp.error;
import dcp.json;
import dcp.metadata;
import dcp.planning;
import dcp.storage;

namespace dcp::checkpoint {
namespace {

// The safetensors library's own bound on the header.
constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;
constexpr std::uint64_t kHeaderLengthBytes = 8;


std::optional<DType> dtype_from_safetensors(std::string_view code) {
  for (const auto& info : dtype_table())
    if (!info.safetensors.empty() && info.safetensors == code) return info.dtype;
  return std::nullopt;
}

// One header entry: {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}.
struct TensorEntry {
  std::string key;
  std::uint64_t key_offset = 0;  // file offset of the entry, for errors
  DType dtype = DType::float32;
  metadata::Shape shape;
  std::uint64_t begin = 0, end = 0;  // in the data section
};

TensorEntry read_entry(json::JsonReader& in, std::string key, std::uint64_t key_offset) {
  TensorEntry t{std::move(key), key_offset};
  bool has_dtype = false, has_shape = false, has_offsets = false;
  in.begin_object();
  while (auto field = in.next_key()) {
    const auto at = in.offset();
    auto fail = [&](std::string message) -> Error { return Error(Errc::data_loss, std::move(message)).at_offset(at); };
    if (*field == "dtype" && !has_dtype) {
      const auto code = in.string();
      const auto dtype = dtype_from_safetensors(code);
      if (!dtype) throw Error(Errc::unimplemented, "safetensors dtype '" + code + "' is not supported").at_offset(at);
      t.dtype = *dtype;
      has_dtype = true;
    } else if (*field == "shape" && !has_shape) {
      in.begin_array();
      while (in.next_element()) {
        const auto dim_at = in.offset();
        const auto dim = in.uint64();
        if (dim > static_cast<std::uint64_t>(INT64_MAX))
          throw Error(Errc::out_of_range, "dimension " + std::to_string(dim) + " is too large").at_offset(dim_at);
        if (t.shape.size() == metadata::kMaxRank)
          throw Error(Errc::unimplemented, "tensor of more than " + std::to_string(metadata::kMaxRank) + " dims").at_offset(dim_at);
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
    throw Error(Errc::data_loss, "tensor entry lacks dtype, shape or data_offsets").at_offset(key_offset);
  return t;
}

}  // namespace

ImportedStateDict import_safetensors(const std::filesystem::path& file, const ImportOptions& options) {
  std::shared_ptr<storage::MappedFile> mapped;
  try {
    mapped = std::make_shared<storage::MappedFile>(file);
    const auto whole = mapped->bytes();
    detail::OutputBudget output(options, whole.size());
    if (whole.size() < kHeaderLengthBytes)
      throw Error(Errc::data_loss, "file of " + std::to_string(whole.size()) + " bytes has no safetensors header length")
          .at_offset(0);
    std::uint64_t header_bytes = 0;
    for (int i = 7; i >= 0; --i) header_bytes = (header_bytes << 8) | std::to_integer<std::uint64_t>(whole[static_cast<std::size_t>(i)]);
    if (header_bytes > kMaxHeaderBytes || header_bytes > whole.size() - kHeaderLengthBytes)
      throw Error(Errc::data_loss, "header length " + std::to_string(header_bytes) + " exceeds " +
                                       (header_bytes > kMaxHeaderBytes ? "the 100 MB limit" : "the file"))
          .at_offset(0);
    const auto data = whole.subspan(kHeaderLengthBytes + header_bytes);
    const std::string_view header(reinterpret_cast<const char*>(whole.data() + kHeaderLengthBytes), header_bytes);

    json::JsonReader in(header, kHeaderLengthBytes);
    std::vector<TensorEntry> entries;
    in.begin_object();
    while (true) {
      const auto key_offset = in.offset();
      auto key = in.next_key();
      if (!key) break;
      if (*key == "__metadata__") {
        in.skip();  // free-form strings: nothing a checkpoint holds
        continue;
      }
      auto entry = read_entry(in, std::move(*key), key_offset);
      const auto at = entry.key_offset;
      if (entry.begin > entry.end || entry.end > data.size())
        throw Error(Errc::data_loss, "data_offsets [" + std::to_string(entry.begin) + ", " + std::to_string(entry.end) +
                                         "] lie outside the data section of " + std::to_string(data.size()) + " bytes")
            .for_key(entry.key)
            .at_offset(at);
      try {
        output.tensor(entry.key, entry.dtype, entry.shape);  // before the entry is kept
      } catch (Error& e) {
        throw e.at_offset(at);
      }
      const auto bytes = metadata::byte_size(entry.shape, entry.dtype);
      if (bytes != entry.end - entry.begin)
        throw Error(Errc::data_loss, "data_offsets hold " + std::to_string(entry.end - entry.begin) + " bytes, a " +
                                         std::string(dtype_name(entry.dtype)) + " tensor of shape " +
                                         format_shape(entry.shape) + " needs " + std::to_string(bytes))
            .for_key(entry.key)
            .at_offset(at);
      entries.push_back(std::move(entry));
    }
    in.finish();

    // No two tensors share bytes (the safetensors library refuses that too).
    std::vector<const TensorEntry*> by_offset;
    for (const auto& e : entries)
      if (e.end > e.begin) by_offset.push_back(&e);
    std::sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* b) { return a->begin < b->begin; });
    for (std::size_t i = 1; i < by_offset.size(); ++i)
      if (by_offset[i]->begin < by_offset[i - 1]->end)
        throw Error(Errc::data_loss, "data_offsets overlap those of '" + by_offset[i - 1]->key + "'")
            .for_key(by_offset[i]->key)
            .at_offset(by_offset[i]->key_offset);

    ImportedStateDict out;
    for (const auto& e : entries) {
      if (out.state_dict.find(e.key))
        throw Error(Errc::data_loss, "the header holds this key twice").for_key(e.key).at_offset(e.key_offset);
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
