// libFuzzer target: .metadata decoding, validation (also as loaders call it, decode_validated)
// and JSON rendering on arbitrary bytes.
#include <cstddef>
#include <cstdint>
#include <span>
import dcp.error;
import dcp.metadata;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  try {
    auto md = dcp::metadata::decode_metadata(bytes);
    (void)dcp::metadata::to_json(md);
    dcp::metadata::validate(md);
    (void)dcp::metadata::encode_metadata(md, md.flavor);
  } catch (const dcp::Error&) {
  }
  try {
    (void)dcp::metadata::decode_validated(bytes);  // what loaders call: lookups built once
  } catch (const dcp::Error&) {
  }
  return 0;
}
