// Copying a strided box between memories, converting dtypes as torch's `copy_` does.
module;
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
module dcp.storage;
import dcp.error;
import dcp.dtype;
import dcp.metadata;

namespace dcp::storage {
namespace {

// 16-bit floats as torch computes them (c10/util/Half.h, BFloat16.h): both widen exactly to
// float32; narrowing rounds to nearest even from float32, so double -> half goes through float.
float to_float(Half h) {
  const std::uint32_t sign = std::uint32_t(h.bits & 0x8000u) << 16;
  std::uint32_t exponent = (h.bits >> 10) & 0x1fu;
  std::uint32_t mantissa = h.bits & 0x3ffu;
  if (exponent == 0x1f) return std::bit_cast<float>(sign | 0x7f800000u | (mantissa << 13));  // inf, NaN
  if (exponent == 0) {
    if (mantissa == 0) return std::bit_cast<float>(sign);
    exponent = 127 - 15 + 1;  // subnormal: normalise
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      --exponent;
    }
    mantissa &= 0x3ffu;
    return std::bit_cast<float>(sign | (exponent << 23) | (mantissa << 13));
  }
  return std::bit_cast<float>(sign | ((exponent + 127 - 15) << 23) | (mantissa << 13));
}

// c10's fp16_ieee_from_fp32_value: rounding done by float arithmetic; NaN becomes 0x7e00.
Half half_from_float(float f) {
  const float scale_to_inf = 0x1.0p+112f;
  const float scale_to_zero = 0x1.0p-110f;
  float base = (std::fabs(f) * scale_to_inf) * scale_to_zero;
  const std::uint32_t w = std::bit_cast<std::uint32_t>(f);
  const std::uint32_t shl1_w = w + w;
  const std::uint32_t sign = w & 0x80000000u;
  std::uint32_t bias = shl1_w & 0xff000000u;
  if (bias < 0x71000000u) bias = 0x71000000u;
  base = std::bit_cast<float>((bias >> 1) + 0x07800000u) + base;
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(base);
  const std::uint32_t nonsign = ((bits >> 13) & 0x7c00u) + (bits & 0x0fffu);
  return Half{static_cast<std::uint16_t>((sign >> 16) | (shl1_w > 0xff000000u ? 0x7e00u : nonsign))};
}

float to_float(BFloat16 b) { return std::bit_cast<float>(std::uint32_t(b.bits) << 16); }

// c10's round_to_nearest_even; NaN becomes 0x7fc0.
BFloat16 bfloat16_from_float(float f) {
  if (std::isnan(f)) return BFloat16{0x7fc0};
  const std::uint32_t u = std::bit_cast<std::uint32_t>(f);
  const std::uint32_t rounding_bias = 0x7fffu + ((u >> 16) & 1u);
  return BFloat16{static_cast<std::uint16_t>((u + rounding_bias) >> 16)};
}

// A float converted to an integer type: in range, truncation toward zero (C++ and torch); out
// of range or NaN, C++ leaves it undefined and torch on x86-64 gives what cvttss2si gives
// (the "integer indefinite" value, then truncated to the narrower type). We pin that down.
template <class To>
To integer_from_floating(double v) {
  if constexpr (sizeof(To) == 8 && std::is_unsigned_v<To>) {
    if (v >= 0 && v < 0x1.0p64) return static_cast<To>(v);
    if (v < 0 && v > -0x1.0p63) return static_cast<To>(static_cast<std::int64_t>(v));
    return static_cast<To>(std::uint64_t{1} << 63);
  } else if constexpr (sizeof(To) == 8 || (sizeof(To) == 4 && std::is_unsigned_v<To>)) {
    if (v >= -0x1.0p63 && v < 0x1.0p63) return static_cast<To>(static_cast<std::int64_t>(v));
    return static_cast<To>(std::int64_t(std::uint64_t{1} << 63));
  } else {
    if (v >= -0x1.0p31 && v < 0x1.0p31) return static_cast<To>(static_cast<std::int32_t>(v));
    return static_cast<To>(std::int32_t(std::uint32_t{1} << 31));
  }
}

template <class To, class From>
To convert(From v) {
  if constexpr (std::is_same_v<From, Half> || std::is_same_v<From, BFloat16>) {
    return convert<To>(to_float(v));
  } else if constexpr (std::is_same_v<To, Half>) {
    return half_from_float(static_cast<float>(v));
  } else if constexpr (std::is_same_v<To, BFloat16>) {
    return bfloat16_from_float(static_cast<float>(v));
  } else if constexpr (std::is_same_v<To, bool>) {
    return v != From(0);
  } else if constexpr (std::is_integral_v<To> && std::is_floating_point_v<From>) {
    return integer_from_floating<To>(static_cast<double>(v));
  } else {
    return static_cast<To>(v);
  }
}

template <class T>
T load(const std::byte* p) {
  if constexpr (std::is_same_v<T, bool>) {
    return *p != std::byte{0};  // a stored bool byte other than 0/1 still reads as true
  } else {
    T v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
}

template <class T>
void store(std::byte* p, T v) {
  std::memcpy(p, &v, sizeof v);
}

template <class To, class From>
void convert_box(std::byte* dst, const metadata::Shape& dst_strides, const std::byte* src,
                 const metadata::Shape& src_strides, const metadata::Shape& lengths, std::size_t dim) {
  if (dim == lengths.size()) {
    store<To>(dst, convert<To>(load<From>(src)));
    return;
  }
  const auto dst_step = dst_strides[dim] * static_cast<std::int64_t>(sizeof(To));
  const auto src_step = src_strides[dim] * static_cast<std::int64_t>(sizeof(From));
  if (dim + 1 == lengths.size()) {  // the innermost run as one loop, not a call per element
    for (std::int64_t i = 0; i < lengths[dim]; ++i)
      store<To>(dst + i * dst_step, convert<To>(load<From>(src + i * src_step)));
    return;
  }
  for (std::int64_t i = 0; i < lengths[dim]; ++i)
    convert_box<To, From>(dst + i * dst_step, dst_strides, src + i * src_step, src_strides, lengths, dim + 1);
}

// Same dtype: memcpy of the innermost runs when both sides are dense there.
void copy_same(std::byte* dst, const metadata::Shape& dst_strides, const std::byte* src,
               const metadata::Shape& src_strides, const metadata::Shape& lengths, std::size_t itemsize,
               std::size_t dim) {
  if (dim == lengths.size()) {
    std::memcpy(dst, src, itemsize);
    return;
  }
  const auto n = lengths[dim];
  const auto dst_step = dst_strides[dim] * static_cast<std::int64_t>(itemsize);
  const auto src_step = src_strides[dim] * static_cast<std::int64_t>(itemsize);
  if (dim + 1 == lengths.size() && dst_strides[dim] == 1 && src_strides[dim] == 1) {
    if (n > 0) std::memcpy(dst, src, static_cast<std::size_t>(n) * itemsize);
    return;
  }
  for (std::int64_t i = 0; i < n; ++i)
    copy_same(dst + i * dst_step, dst_strides, src + i * src_step, src_strides, lengths, itemsize, dim + 1);
}

}  // namespace

bool can_convert(DType from, DType to) noexcept {
  if (from == to) return true;
  auto known = [](auto) {};
  return with_element_type(from, known) && with_element_type(to, known);
}

void copy_box(std::byte* dst, const metadata::Shape& dst_strides, DType dst_dtype, const std::byte* src,
              const metadata::Shape& src_strides, DType src_dtype, const metadata::Shape& lengths) {
  for (std::int64_t n : lengths)
    if (n == 0) return;
  if (dst_dtype == src_dtype) {
    copy_same(dst, dst_strides, src, src_strides, lengths, dtype_itemsize(dst_dtype), 0);
    return;
  }
  if (!can_convert(src_dtype, dst_dtype))
    throw Error(Errc::unimplemented, "converting " + std::string(dtype_name(src_dtype)) + " to " +
                                         std::string(dtype_name(dst_dtype)) + " is not supported");
  (void)with_element_type(dst_dtype, [&](auto to) {
    (void)with_element_type(src_dtype, [&](auto from) {
      convert_box<decltype(to), decltype(from)>(dst, dst_strides, src, src_strides, lengths, 0);
    });
  });
}

}  // namespace dcp::storage
