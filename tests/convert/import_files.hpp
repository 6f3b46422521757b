// Hand-made torch.save and safetensors files for the import tests (test_import.cpp,
// test_changed_input.cpp).
#pragma once
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>
import dcp.pickle;

namespace dcp_import_files {

/// The data.pkl of {'w': tensor, [extra]}: a float32 tensor over storage "0" of `numel`
/// elements with the given offset, size and stride; `extra` adds more entries (it pushes
/// key/value pairs); `in_tuple` wraps the tensor in a 1-tuple.
std::vector<std::byte> tensor_dict_pickle(std::int64_t numel, std::int64_t offset, std::int64_t size, std::int64_t stride,
                                          void (*extra)(dcp::pickle::Encoder&) = nullptr, bool in_tuple = false);

/// A torch.save archive of `data_pkl`, a `byteorder` record and storage "0": `storage_bytes`
/// bytes of the floats 0.5, 1.5, ...
void write_pt(const std::filesystem::path& path, const std::vector<std::byte>& data_pkl, std::size_t storage_bytes,
              std::string_view byteorder = "little");

/// A good little file: {'w': the 4 floats of storage "0"}.
void write_good_pt(const std::filesystem::path& path);

/// A safetensors file: the header length (`claimed_length`, or the header's), the header, and
/// `data_bytes` bytes of 7.
void write_safetensors(const std::filesystem::path& path, const std::string& header, std::size_t data_bytes,
                       std::optional<std::uint64_t> claimed_length = std::nullopt);

}  // namespace dcp_import_files
