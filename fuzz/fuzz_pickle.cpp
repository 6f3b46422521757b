// libFuzzer target: the pickle decoder on arbitrary bytes, then re-encoding what it built.
#include <cstddef>
#include <cstdint>
#include <span>
import dcp.error;
import dcp.pickle;
import dcp.metadata;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  dcp::pickle::Limits limits;
  limits.allow_persistent_ids = true;
  try {
    const auto doc = dcp::pickle::decode(bytes, dcp::metadata::metadata_allow_list(), limits);
    (void)doc.describe(doc.root());
    dcp::pickle::Encoder encoder(2);
    encoder.value(doc, doc.root(), 64);
    (void)encoder.finish();
  } catch (const dcp::Error&) {
  }
  return 0;
}
