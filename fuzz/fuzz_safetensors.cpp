// libFuzzer target: safetensors checkpoints from headers (dcp.safetensors): an optional index
// file and up to 8 safetensors files, separated by the 4 bytes FF 'S' 'T' FF (the first part is
// the index text, empty for none), each header parsed, the metadata built, validated and
// rendered as `dcpp inspect --json` does.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>
import dcp.error;
import dcp.metadata;
import dcp.safetensors;

namespace st = dcp::safetensors;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  constexpr std::string_view kSeparator("\xffST\xff", 4);
  std::vector<std::string_view> parts;
  for (std::size_t at = 0;;) {
    const auto next = input.find(kSeparator, at);
    parts.push_back(input.substr(at, next == std::string_view::npos ? std::string_view::npos : next - at));
    if (next == std::string_view::npos || parts.size() == 9) break;
    at = next + kSeparator.size();
  }
  try {
    std::optional<st::Index> index;
    if (!parts[0].empty()) {
      index = st::parse_index(parts[0]);
      (void)st::index_files(*index);
    }
    std::vector<st::FileHeader> files;
    for (std::size_t i = 1; i < parts.size(); ++i) {
      const auto bytes = std::as_bytes(std::span(parts[i].data(), parts[i].size()));
      const auto length = st::header_length(bytes, bytes.size());
      files.push_back({"f" + std::to_string(i) + ".safetensors",
                       st::parse_header(parts[i].substr(st::kLengthBytes, length), bytes.size())});
    }
    const auto md = dcp::metadata::validate(
        st::build_metadata(files, index ? dcp::metadata::Source::hf_index : dcp::metadata::Source::hf_directory,
                           index ? &*index : nullptr));
    (void)dcp::metadata::to_json(*md);
  } catch (const dcp::Error&) {
  }
  return 0;
}
