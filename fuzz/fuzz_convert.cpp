// libFuzzer target: what `dcpp convert` does with a BYTE_IO object, in memory. The input is a
// torch.save archive: parse_object, then the torch.save side (StateDictPickler re-encodes the
// object into a data.pkl, which must decode again) and the safetensors side (object_to_json).
// Both must return or throw dcp::Error, within tools/fuzz's -rss_limit_mb and -timeout: an
// object whose sharing blows up either output is a finding.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <span>
#include <vector>
import dcp.error;
import dcp.pickle;
import dcp.record;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  dcp::pickle::Document doc;
  try {
    doc = dcp::record::parse_object(bytes);
  } catch (const dcp::Error&) {
    return 0;
  }
  std::vector<std::byte> data_pkl;
  try {
    dcp::record::StateDictPickler pickler;
    pickler.begin_dict();
    pickler.dict_items(1, [&](std::size_t) {
      pickler.key("obj");
      pickler.object(doc);
    });
    data_pkl = pickler.finish();
  } catch (const dcp::Error&) {
  }
  if (!data_pkl.empty()) {
    // What the encoder wrote is a pickle our decoder (and so torch.load) reads back. Only a
    // nesting limit may differ: the encoder may use a MARK where the input nested without.
    dcp::pickle::Limits limits;
    limits.allow_persistent_ids = true;
    try {
      (void)dcp::pickle::decode(data_pkl, dcp::record::object_allow_list(), limits);
    } catch (const dcp::Error& e) {
      if (e.code() != dcp::Errc::out_of_range) {
        std::fprintf(stderr, "re-encoded object does not decode: %s\n", e.what());
        __builtin_trap();
      }
    }
  }
  try {
    (void)dcp::record::object_to_json(doc, doc.root());
  } catch (const dcp::Error&) {
  }
  return 0;
}
