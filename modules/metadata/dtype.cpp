// DType names and sizes, and small helpers shared by the decoder and the validator.
module;
#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
module dcp.metadata;
import dcp.error;

namespace dcp {
namespace {
struct DTypeInfo {
  DType dtype;
  std::string_view name;
  std::size_t itemsize;
};
constexpr std::array<DTypeInfo, 26> kDTypes{{
    {DType::float32, "float32", 4}, {DType::float64, "float64", 8},
    {DType::float16, "float16", 2}, {DType::bfloat16, "bfloat16", 2},
    {DType::int8, "int8", 1}, {DType::uint8, "uint8", 1}, {DType::int16, "int16", 2},
    {DType::int32, "int32", 4}, {DType::int64, "int64", 8}, {DType::boolean, "bool", 1},
    {DType::complex64, "complex64", 8}, {DType::complex128, "complex128", 16},
    {DType::complex32, "complex32", 4}, {DType::uint16, "uint16", 2},
    {DType::uint32, "uint32", 4}, {DType::uint64, "uint64", 8},
    {DType::float8_e4m3fn, "float8_e4m3fn", 1}, {DType::float8_e5m2, "float8_e5m2", 1},
    {DType::float8_e4m3fnuz, "float8_e4m3fnuz", 1}, {DType::float8_e5m2fnuz, "float8_e5m2fnuz", 1},
    {DType::float8_e8m0fnu, "float8_e8m0fnu", 1}, {DType::qint8, "qint8", 1},
    {DType::quint8, "quint8", 1}, {DType::qint32, "qint32", 4},
    {DType::quint4x2, "quint4x2", 1}, {DType::quint2x4, "quint2x4", 1},
}};
}  // namespace

std::string_view dtype_name(DType dtype) noexcept {
  for (const auto& info : kDTypes)
    if (info.dtype == dtype) return info.name;
  return "unknown";
}

std::optional<DType> dtype_from_name(std::string_view name) noexcept {
  for (const auto& info : kDTypes)
    if (info.name == name) return info.dtype;
  return std::nullopt;
}

std::size_t dtype_itemsize(DType dtype) noexcept {
  for (const auto& info : kDTypes)
    if (info.dtype == dtype) return info.itemsize;
  return 1;
}

}  // namespace dcp

namespace dcp::metadata {

std::string_view flavor_name(Flavor flavor) noexcept {
  return flavor == Flavor::torch_1_13 ? "torch-1.13" : "torch-2.x";
}

std::string_view memory_format_name(MemoryFormat format) noexcept {
  switch (format) {
    case MemoryFormat::contiguous: return "contiguous_format";
    case MemoryFormat::channels_last: return "channels_last";
    case MemoryFormat::preserve: return "preserve_format";
    default: return "unknown";
  }
}

std::uint64_t numel(const Shape& shape) {
  std::uint64_t n = 1;
  for (std::int64_t d : shape) {
    if (d < 0) throw Error(Errc::data_loss, "negative dimension " + std::to_string(d));
    n = mul_or_throw(n, static_cast<std::uint64_t>(d), "number of elements");
  }
  return n;
}

std::uint64_t byte_size(const Shape& shape, DType dtype) {
  return mul_or_throw(numel(shape), dtype_itemsize(dtype), "tensor byte size");
}

bool is_safe_relative_path(std::string_view path) noexcept {
  if (path.empty() || path == "." || path == "..") return false;
  for (char c : path)
    if (c == '/' || c == '\\' || c == '\0') return false;
  return true;
}

}  // namespace dcp::metadata
