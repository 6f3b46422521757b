// dcp.dtype — the element types a checkpoint can hold, and everything dcpp knows about each:
// one table that every layer reads (dcp.metadata for `.metadata` and its allow-list, dcp.record
// for torch.save's storages and rebuild functions, dcp.storage for conversions, dcp.checkpoint
// and dcp.safetensors for safetensors' codes, dcp.alloc for libtorch's scalar types). A fact about
// a dtype that is written anywhere else is a bug. Imports nothing.
module;
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
export module dcp.dtype;

export namespace dcp {

/// Element types a checkpoint can hold (torch's names, `torch.` dropped).
enum class DType : std::uint8_t {
  float32, float64, float16, bfloat16, int8, uint8, int16, int32, int64, boolean, complex64,
  complex128, complex32, uint16, uint32, uint64, float8_e4m3fn, float8_e5m2, float8_e4m3fnuz,
  float8_e5m2fnuz, float8_e8m0fnu, qint8, quint8, qint32, quint4x2, quint2x4,
};

/// How torch.save writes a tensor of a dtype.
enum class TensorRebuild : std::uint8_t {
  v2,    ///< torch._utils._rebuild_tensor_v2 over a typed legacy storage (torch 1.13's dtypes)
  v3,    ///< _rebuild_tensor_v3 over an UntypedStorage (dtypes without a legacy storage)
  none,  ///< quantized: _rebuild_qtensor needs quantizer parameters that DCP does not keep
};

/// Everything dcpp knows about a dtype: a row of the one dtype table.
struct DTypeInfo {
  DType dtype;
  std::string_view name;           ///< torch 2.x's name (`torch.float32`)
  std::size_t itemsize;            ///< bytes per element (quint4x2/quint2x4 pack several: 1)
  std::string_view storage_class;  ///< torch 1.13's legacy typed storage ("FloatStorage"); "" if none
  std::string_view safetensors;    ///< safetensors' code ("F32"); "" if the format has none
  /// c10::ScalarType's value (stable: libtorch only appends); a libtorch whose
  /// ScalarType::NumOptions is not above it has no such tensors. -1: none in any libtorch.
  std::int8_t c10_scalar_type;
  TensorRebuild rebuild;
  /// torch 1.13 has this dtype (its checkpoints can hold it): the v2 dtypes and complex32.
  bool in_torch_1_13;
};

/// Every DType, in enum order.
std::span<const DTypeInfo> dtype_table() noexcept;
const DTypeInfo& dtype_info(DType dtype) noexcept;
/// torch's name: "float32", "bool", ...
std::string_view dtype_name(DType dtype) noexcept;
std::optional<DType> dtype_from_name(std::string_view name) noexcept;
/// Bytes per element.
std::size_t dtype_itemsize(DType dtype) noexcept;
/// The dtype a legacy storage class ("FloatStorage") holds; nullopt for other names.
std::optional<DType> dtype_from_storage_class(std::string_view name) noexcept;
/// The dtype of a safetensors code ("F32", "C64", "F8_E4M3"); nullopt for codes torch has no
/// dtype for (F4, F6_E2M3, ...) and for anything else.
std::optional<DType> dtype_from_safetensors(std::string_view code) noexcept;
/// The dtype of a c10::ScalarType value; nullopt for scalar types no checkpoint holds.
std::optional<DType> dtype_from_c10(int scalar_type) noexcept;

/// The C++ types of 16-bit float elements: their bits (conversions are dcp.storage's).
struct Half {
  std::uint16_t bits;
};
struct BFloat16 {
  std::uint16_t bits;
};

/// Calls fn(T{}) with the C++ type that holds one element of `dtype` (bool, std::int8_t, ...,
/// Half, BFloat16, float, double) and returns true; false, without calling, for dtypes that
/// have none here (complex, float8, quantized: bytes that are copied, never converted).
template <class Fn>
bool with_element_type(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::boolean: fn(bool{}); return true;
    case DType::int8: fn(std::int8_t{}); return true;
    case DType::uint8: fn(std::uint8_t{}); return true;
    case DType::int16: fn(std::int16_t{}); return true;
    case DType::uint16: fn(std::uint16_t{}); return true;
    case DType::int32: fn(std::int32_t{}); return true;
    case DType::uint32: fn(std::uint32_t{}); return true;
    case DType::int64: fn(std::int64_t{}); return true;
    case DType::uint64: fn(std::uint64_t{}); return true;
    case DType::float16: fn(Half{}); return true;
    case DType::bfloat16: fn(BFloat16{}); return true;
    case DType::float32: fn(float{}); return true;
    case DType::float64: fn(double{}); return true;
    default: return false;
  }
}

}  // namespace dcp
