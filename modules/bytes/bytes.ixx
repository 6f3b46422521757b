// dcp.bytes: little-endian integers in byte buffers. Every format dcpp speaks stores its
// integers little-endian (pickle's BININT/FRAME, zip's headers, safetensors' header length,
// the wire formats of plans and errors between ranks); these are the one codec they share.
// Inline: they sit in the innermost loops of the decoders.
module;
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>
export module dcp.bytes;

export namespace dcp {

/// The unsigned integer stored in the first `width` (<= 8) bytes of `in`, least significant
/// first. The caller has checked that `in` holds `width` bytes.
inline std::uint64_t load_le(std::span<const std::byte> in, std::size_t width) noexcept {
  std::uint64_t value = 0;
  for (std::size_t i = width; i-- > 0;) value = (value << 8) | std::to_integer<std::uint64_t>(in[i]);
  return value;
}
inline std::uint64_t load_le(const char* in, std::size_t width) noexcept {
  return load_le(std::span(reinterpret_cast<const std::byte*>(in), width), width);
}

/// Appends the `width` (<= 8) low bytes of `value`, least significant first.
inline void append_le(std::vector<std::byte>& out, std::uint64_t value, std::size_t width) {
  for (std::size_t i = 0; i < width; ++i) out.push_back(static_cast<std::byte>(value >> (8 * i)));
}
inline void append_le(std::string& out, std::uint64_t value, std::size_t width) {
  for (std::size_t i = 0; i < width; ++i) out.push_back(static_cast<char>(static_cast<std::uint8_t>(value >> (8 * i))));
}

}  // namespace dcp
