// libFuzzer target: a DCP item (torch.save archive) as a tensor and as an object.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
import dcp.error;
import dcp.metadata;
import dcp.record;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  try {
    const auto loc = dcp::record::locate_tensor(size, [&](std::uint64_t offset, std::span<std::byte> out) {
      if (offset > size || out.size() > size - offset) throw dcp::Error(dcp::Errc::data_loss, "read past the end");
      std::memcpy(out.data(), data + offset, out.size());
    });
    dcp::record::check_against_chunk(loc, dcp::DType::float32, loc.record.sizes);
  } catch (const dcp::Error&) {
  }
  try {
    const auto doc = dcp::record::parse_object(bytes);
    (void)dcp::record::object_to_json(doc, doc.root());
  } catch (const dcp::Error&) {
  }
  return 0;
}
