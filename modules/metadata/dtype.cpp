// The dtype table, and small helpers shared by the decoder and the validator.
module;
#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
module dcp.metadata;
import dcp.error;

namespace dcp {
namespace {
using enum TensorRebuild;
// The one dtype table: torch's name, element size, torch 1.13's legacy storage class (what
// torch.save's _rebuild_tensor_v2 names), safetensors' code, and how torch.save rebuilds it.
constexpr std::array<DTypeInfo, 26> kDTypes{{
    {DType::float32, "float32", 4, "FloatStorage", "F32", v2},
    {DType::float64, "float64", 8, "DoubleStorage", "F64", v2},
    {DType::float16, "float16", 2, "HalfStorage", "F16", v2},
    {DType::bfloat16, "bfloat16", 2, "BFloat16Storage", "BF16", v2},
    {DType::int8, "int8", 1, "CharStorage", "I8", v2},
    {DType::uint8, "uint8", 1, "ByteStorage", "U8", v2},
    {DType::int16, "int16", 2, "ShortStorage", "I16", v2},
    {DType::int32, "int32", 4, "IntStorage", "I32", v2},
    {DType::int64, "int64", 8, "LongStorage", "I64", v2},
    {DType::boolean, "bool", 1, "BoolStorage", "BOOL", v2},
    {DType::complex64, "complex64", 8, "ComplexFloatStorage", "", v2},
    {DType::complex128, "complex128", 16, "ComplexDoubleStorage", "", v2},
    {DType::complex32, "complex32", 4, "", "", v3},
    {DType::uint16, "uint16", 2, "", "U16", v3},
    {DType::uint32, "uint32", 4, "", "U32", v3},
    {DType::uint64, "uint64", 8, "", "U64", v3},
    {DType::float8_e4m3fn, "float8_e4m3fn", 1, "", "F8_E4M3", v3},
    {DType::float8_e5m2, "float8_e5m2", 1, "", "F8_E5M2", v3},
    {DType::float8_e4m3fnuz, "float8_e4m3fnuz", 1, "", "", v3},
    {DType::float8_e5m2fnuz, "float8_e5m2fnuz", 1, "", "", v3},
    {DType::float8_e8m0fnu, "float8_e8m0fnu", 1, "", "", v3},
    {DType::qint8, "qint8", 1, "", "", none},
    {DType::quint8, "quint8", 1, "", "", none},
    {DType::qint32, "qint32", 4, "", "", none},
    {DType::quint4x2, "quint4x2", 1, "", "", none},  // several elements a byte: itemsize 1
    {DType::quint2x4, "quint2x4", 1, "", "", none},
}};
constexpr bool in_enum_order() {
  for (std::size_t i = 0; i < kDTypes.size(); ++i)
    if (static_cast<std::size_t>(kDTypes[i].dtype) != i) return false;
  return true;
}
static_assert(in_enum_order(), "kDTypes is indexed by DType");
}  // namespace

std::span<const DTypeInfo> dtype_table() noexcept { return kDTypes; }

const DTypeInfo& dtype_info(DType dtype) noexcept {
  const auto i = static_cast<std::size_t>(dtype);
  return i < kDTypes.size() ? kDTypes[i] : kDTypes[0];
}

std::string_view dtype_name(DType dtype) noexcept {
  const auto i = static_cast<std::size_t>(dtype);
  return i < kDTypes.size() ? kDTypes[i].name : "unknown";
}

std::optional<DType> dtype_from_name(std::string_view name) noexcept {
  for (const auto& info : kDTypes)
    if (info.name == name) return info.dtype;
  return std::nullopt;
}

std::optional<DType> dtype_from_storage_class(std::string_view name) noexcept {
  if (name.empty()) return std::nullopt;
  for (const auto& info : kDTypes)
    if (info.storage_class == name) return info.dtype;
  return std::nullopt;
}

std::size_t dtype_itemsize(DType dtype) noexcept {
  const auto i = static_cast<std::size_t>(dtype);
  return i < kDTypes.size() ? kDTypes[i].itemsize : 1;
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
