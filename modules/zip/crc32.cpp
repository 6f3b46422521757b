// CRC-32 (zlib's, reflected polynomial 0xEDB88320): slicing-by-8 tables everywhere, and
// carry-less multiplication folding (Intel's "Fast CRC Computation Using PCLMULQDQ", the same
// constants as zlib/Chromium) on x86-64 CPUs that have PCLMULQDQ. Records are GiBs, so the
// table loop (~2 GB/s) would be the bottleneck of a checkpoint write; folding runs at memory
// speed.
module;
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#if defined(__x86_64__)
#include <immintrin.h>
#endif
module dcp.zip;

namespace dcp::zip {
namespace {

struct Tables {
  std::uint32_t t[8][256];
};

// t[0] is the bytewise table; t[k][i] is the CRC of byte i followed by k zero bytes.
constexpr Tables make_tables() {
  Tables tables{};
  for (std::uint32_t i = 0; i < 256; ++i) {
    std::uint32_t c = i;
    for (int bit = 0; bit < 8; ++bit) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
    tables.t[0][i] = c;
  }
  for (int k = 1; k < 8; ++k)
    for (int i = 0; i < 256; ++i)
      tables.t[k][i] = (tables.t[k - 1][i] >> 8) ^ tables.t[0][tables.t[k - 1][i] & 0xFF];
  return tables;
}
constexpr Tables kTables = make_tables();

// `c` is the inverted running CRC, as in zlib's inner loops.
std::uint32_t crc_tables(const unsigned char* p, std::size_t n, std::uint32_t c) {
  const auto& t = kTables.t;
  if constexpr (std::endian::native == std::endian::little) {
    for (; n >= 8; p += 8, n -= 8) {
      std::uint64_t w;
      std::memcpy(&w, p, 8);
      w ^= c;
      c = t[7][w & 0xFF] ^ t[6][(w >> 8) & 0xFF] ^ t[5][(w >> 16) & 0xFF] ^
          t[4][(w >> 24) & 0xFF] ^ t[3][(w >> 32) & 0xFF] ^ t[2][(w >> 40) & 0xFF] ^
          t[1][(w >> 48) & 0xFF] ^ t[0][w >> 56];
    }
  }
  for (; n > 0; ++p, --n) c = t[0][(c ^ *p) & 0xFF] ^ (c >> 8);
  return c;
}

#if defined(__x86_64__)
// One folding step: x.lo * k.lo ^ x.hi * k.hi ^ next (lambdas do not inherit the target).
__attribute__((target("pclmul,sse4.1"), always_inline)) inline __m128i fold(__m128i x, __m128i k,
                                                                            __m128i next) {
  return _mm_xor_si128(
      _mm_xor_si128(_mm_clmulepi64_si128(x, k, 0x00), _mm_clmulepi64_si128(x, k, 0x11)), next);
}

// Folds `n` bytes (n >= 64, a multiple of 16) four 128-bit lanes at a time, then reduces to
// 32 bits with Barrett reduction. `c` is the inverted running CRC.
__attribute__((target("pclmul,sse4.1"))) std::uint32_t crc_clmul(const unsigned char* p,
                                                                  std::size_t n, std::uint32_t c) {
  alignas(16) static constexpr std::uint64_t k1k2[] = {0x0154442bd4, 0x01c6e41596};
  alignas(16) static constexpr std::uint64_t k3k4[] = {0x01751997d0, 0x00ccaa009e};
  alignas(16) static constexpr std::uint64_t k5k0[] = {0x0163cd6124, 0x0000000000};
  alignas(16) static constexpr std::uint64_t poly[] = {0x01db710641, 0x01f7011641};
  const auto load = [](const unsigned char* q) {
    return _mm_loadu_si128(reinterpret_cast<const __m128i*>(q));
  };
  __m128i x1 = _mm_xor_si128(load(p), _mm_cvtsi32_si128(static_cast<int>(c)));
  __m128i x2 = load(p + 16), x3 = load(p + 32), x4 = load(p + 48);
  p += 64;
  n -= 64;
  __m128i k = _mm_load_si128(reinterpret_cast<const __m128i*>(k1k2));
  for (; n >= 64; p += 64, n -= 64) {
    x1 = fold(x1, k, load(p));
    x2 = fold(x2, k, load(p + 16));
    x3 = fold(x3, k, load(p + 32));
    x4 = fold(x4, k, load(p + 48));
  }
  k = _mm_load_si128(reinterpret_cast<const __m128i*>(k3k4));
  x1 = fold(x1, k, x2);
  x1 = fold(x1, k, x3);
  x1 = fold(x1, k, x4);
  for (; n >= 16; p += 16, n -= 16) x1 = fold(x1, k, load(p));

  // 128 -> 64 bits.
  const __m128i low32 = _mm_setr_epi32(~0, 0, ~0, 0);
  x1 = _mm_xor_si128(_mm_srli_si128(x1, 8), _mm_clmulepi64_si128(x1, k, 0x10));
  k = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(k5k0));
  x1 = _mm_xor_si128(_mm_clmulepi64_si128(_mm_and_si128(x1, low32), k, 0x00), _mm_srli_si128(x1, 4));
  // Barrett reduction to 32 bits.
  k = _mm_load_si128(reinterpret_cast<const __m128i*>(poly));
  __m128i x2b = _mm_clmulepi64_si128(_mm_and_si128(x1, low32), k, 0x10);
  x2b = _mm_clmulepi64_si128(_mm_and_si128(x2b, low32), k, 0x00);
  x1 = _mm_xor_si128(x1, x2b);
  return static_cast<std::uint32_t>(_mm_extract_epi32(x1, 1));
}

bool has_clmul() {
  static const bool yes = __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
  return yes;
}
#endif

}  // namespace

std::uint32_t crc32(std::span<const std::byte> data, std::uint32_t crc) {
  auto p = reinterpret_cast<const unsigned char*>(data.data());
  std::size_t n = data.size();
  std::uint32_t c = ~crc;
#if defined(__x86_64__)
  if (n >= 64 && has_clmul()) {
    const std::size_t folded = n & ~std::size_t{15};
    c = crc_clmul(p, folded, c);
    p += folded;
    n -= folded;
  }
#endif
  return ~crc_tables(p, n, c);
}

}  // namespace dcp::zip
