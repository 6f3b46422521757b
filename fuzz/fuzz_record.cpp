// libFuzzer target: a DCP item (torch.save archive) as a tensor and as an object, tensors
// inside included.
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
  try {  // an object holding tensors (torch 1.13's nested values): found, checked, written again
    const auto saved = dcp::record::parse_torch_save(bytes);
    const auto storages = dcp::record::find_storages(saved, bytes, saved.document.root());
    (void)dcp::record::object_archive(saved.document, saved.document.root(), dcp::record::ArchiveStyle::torch_1_13,
                                      storages);
  } catch (const dcp::Error&) {
  }
  return 0;
}
