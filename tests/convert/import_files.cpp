// Hand-made torch.save and safetensors files for the import tests; see import_files.hpp.
#include "import_files.hpp"

#include <cstring>
#include <span>

#include "support.hpp"
import dcp.pickle;
import dcp.zip;

namespace dcp_import_files {

namespace fs = std::filesystem;

std::vector<std::byte> tensor_dict_pickle(std::int64_t numel, std::int64_t offset, std::int64_t size, std::int64_t stride,
                                          void (*extra)(dcp::pickle::Encoder&), bool in_tuple) {
  dcp::pickle::Encoder e(2);
  e.empty_dict();
  e.mark();
  e.string("w");
  e.global("torch._utils", "_rebuild_tensor_v2");
  e.mark();
  e.mark();
  e.string("storage");
  e.global("torch", "FloatStorage");
  e.string("0");
  e.string("cpu");
  e.integer(numel);
  e.tuple_from_mark();
  e.persistent_id();
  e.integer(offset);
  e.integer(size);
  e.tuple(1);
  e.integer(stride);
  e.tuple(1);
  e.boolean(false);
  e.global("collections", "OrderedDict");
  e.empty_tuple();
  e.reduce();
  e.tuple_from_mark();
  e.reduce();
  if (in_tuple) e.tuple(1);
  if (extra) extra(e);
  e.setitems_from_mark();
  return e.finish();
}

void write_pt(const fs::path& path, const std::vector<std::byte>& data_pkl, std::size_t storage_bytes,
              std::string_view byteorder) {
  std::vector<std::byte> out;
  dcp::zip::ArchiveWriter w([&](std::span<const std::byte> b) { out.insert(out.end(), b.begin(), b.end()); }, "x");
  w.add_record("data.pkl", data_pkl);
  w.add_record("byteorder", std::as_bytes(std::span(byteorder.data(), byteorder.size())));
  std::vector<float> storage(storage_bytes / 4);
  for (std::size_t i = 0; i < storage.size(); ++i) storage[i] = static_cast<float>(i) + 0.5f;
  std::vector<std::byte> bytes(storage_bytes);
  if (storage_bytes) std::memcpy(bytes.data(), storage.data(), storage_bytes);
  w.add_record("data/0", bytes);
  w.add_record("version", std::as_bytes(std::span("3\n", 2)));
  w.finish();
  dcp_test::write_bytes(path, out);
}

void write_good_pt(const fs::path& path) { write_pt(path, tensor_dict_pickle(4, 0, 4, 1), 16); }

void write_safetensors(const fs::path& path, const std::string& header, std::size_t data_bytes,
                       std::optional<std::uint64_t> claimed_length) {
  std::vector<std::byte> out(8);
  const std::uint64_t n = claimed_length.value_or(header.size());
  for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = static_cast<std::byte>((n >> (8 * i)) & 0xFF);
  for (char c : header) out.push_back(static_cast<std::byte>(c));
  out.resize(out.size() + data_bytes, std::byte{7});
  dcp_test::write_bytes(path, out);
}

}  // namespace dcp_import_files
