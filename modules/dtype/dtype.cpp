// The dtype table.
module;
#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
module dcp.dtype;

namespace dcp {
namespace {
using enum TensorRebuild;
// torch's name, element size, torch 1.13's legacy storage class (what torch.save's
// _rebuild_tensor_v2 names), safetensors' code (safetensors' Dtype enum, as its torch binding
// maps it), c10::ScalarType's value, how torch.save rebuilds it, and whether torch 1.13 has it.
constexpr std::array<DTypeInfo, 26> kDTypes{{
    {DType::float32, "float32", 4, "FloatStorage", "F32", 6, v2, true},
    {DType::float64, "float64", 8, "DoubleStorage", "F64", 7, v2, true},
    {DType::float16, "float16", 2, "HalfStorage", "F16", 5, v2, true},
    {DType::bfloat16, "bfloat16", 2, "BFloat16Storage", "BF16", 15, v2, true},
    {DType::int8, "int8", 1, "CharStorage", "I8", 1, v2, true},
    {DType::uint8, "uint8", 1, "ByteStorage", "U8", 0, v2, true},
    {DType::int16, "int16", 2, "ShortStorage", "I16", 2, v2, true},
    {DType::int32, "int32", 4, "IntStorage", "I32", 3, v2, true},
    {DType::int64, "int64", 8, "LongStorage", "I64", 4, v2, true},
    {DType::boolean, "bool", 1, "BoolStorage", "BOOL", 11, v2, true},
    {DType::complex64, "complex64", 8, "ComplexFloatStorage", "C64", 9, v2, true},
    {DType::complex128, "complex128", 16, "ComplexDoubleStorage", "", 10, v2, true},
    {DType::complex32, "complex32", 4, "", "", 8, v3, true},
    {DType::uint16, "uint16", 2, "", "U16", 27, v3, false},
    {DType::uint32, "uint32", 4, "", "U32", 28, v3, false},
    {DType::uint64, "uint64", 8, "", "U64", 29, v3, false},
    {DType::float8_e4m3fn, "float8_e4m3fn", 1, "", "F8_E4M3", 24, v3, false},
    {DType::float8_e5m2, "float8_e5m2", 1, "", "F8_E5M2", 23, v3, false},
    {DType::float8_e4m3fnuz, "float8_e4m3fnuz", 1, "", "F8_E4M3FNUZ", 26, v3, false},
    {DType::float8_e5m2fnuz, "float8_e5m2fnuz", 1, "", "F8_E5M2FNUZ", 25, v3, false},
    {DType::float8_e8m0fnu, "float8_e8m0fnu", 1, "", "F8_E8M0", 44, v3, false},
    {DType::qint8, "qint8", 1, "", "", 12, none, true},
    {DType::quint8, "quint8", 1, "", "", 13, none, true},
    {DType::qint32, "qint32", 4, "", "", 14, none, true},
    {DType::quint4x2, "quint4x2", 1, "", "", 16, none, true},  // several elements a byte: itemsize 1
    {DType::quint2x4, "quint2x4", 1, "", "", 17, none, true},
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

std::optional<DType> dtype_from_safetensors(std::string_view code) noexcept {
  if (code.empty()) return std::nullopt;
  for (const auto& info : kDTypes)
    if (info.safetensors == code) return info.dtype;
  return std::nullopt;
}

std::optional<DType> dtype_from_c10(int scalar_type) noexcept {
  for (const auto& info : kDTypes)
    if (info.c10_scalar_type >= 0 && info.c10_scalar_type == scalar_type) return info.dtype;
  return std::nullopt;
}

std::size_t dtype_itemsize(DType dtype) noexcept {
  const auto i = static_cast<std::size_t>(dtype);
  return i < kDTypes.size() ? kDTypes[i].itemsize : 1;
}

}  // namespace dcp
