// Scalar conversions between float32 and the storage formats llmq reads and writes:
// bfloat16, IEEE float16 and FP8 E4M3FN. Written once for host and device (nvcc compiles
// this header too), bit-exact with torch's casts:
//   - f32 -> bf16 / f16: round to nearest, ties to even; NaN stays NaN.
//   - f32 -> fp8 e4m3fn: round to nearest even, SATURATING to +-448 (formats.md A.4: torch's
//     cast is non-saturating, so writers clamp first; we fold the clamp in here so no finite
//     or infinite input ever becomes NaN). NaN -> 0x7F (sign kept).
// Layouts: bf16 = s|e8|m7 (the top half of an f32); f16 = s|e5(bias 15)|m10;
//          e4m3fn = s|e4(bias 7)|m3, no infinities, NaN = S.1111.111, max finite 448 = 0x7E.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define LLMQ_HD __host__ __device__ __forceinline__
#else
#define LLMQ_HD inline
#endif

namespace llmq {

LLMQ_HD uint32_t f32_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
#endif
}

LLMQ_HD float f32_from_bits(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x;
  std::memcpy(&x, &u, 4);
  return x;
#endif
}

// ---- bfloat16 ----------------------------------------------------------------------------

LLMQ_HD float bf16_to_f32(uint16_t h) { return f32_from_bits(static_cast<uint32_t>(h) << 16); }

LLMQ_HD uint16_t f32_to_bf16(float x) {
  uint32_t u = f32_bits(x);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);  // quiet NaN
  u += 0x7FFFu + ((u >> 16) & 1u);  // RNE on the 16 dropped bits; overflow carries into inf
  return static_cast<uint16_t>(u >> 16);
}

// ---- float16 -----------------------------------------------------------------------------

LLMQ_HD float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu;
  const uint32_t man = h & 0x3FFu;
  if (exp == 0x1Fu) return f32_from_bits(sign | 0x7F800000u | (man << 13));  // inf / NaN
  if (exp != 0) return f32_from_bits(sign | ((exp + 112u) << 23) | (man << 13));
  // Subnormal or zero: man * 2^-24, exact in f32.
  const float v = static_cast<float>(man) * 5.9604644775390625e-08f;
  return sign ? -v : v;
}

LLMQ_HD uint16_t f32_to_f16(float x) {
  const uint32_t u = f32_bits(x);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t abs = u & 0x7FFFFFFFu;
  if (abs > 0x7F800000u) return static_cast<uint16_t>(sign | 0x7E00u | ((abs >> 13) & 0x3FFu));
  if (abs >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);  // >= 65520 rounds to inf
  if (abs < 0x38800000u) {
    // Result is subnormal (or zero): value / 2^-24 rounded to an integer, ties to even.
    const uint32_t exp = abs >> 23;
    if (exp < 102) return sign;  // below half the smallest subnormal (2^-25): rounds to 0
    const uint32_t man = (abs & 0x7FFFFFu) | 0x800000u;
    const uint32_t shift = 126u - exp;  // value = man * 2^(exp-150); want man * 2^(exp-126) units of 2^-24
    const uint32_t q = man >> shift;
    const uint32_t rem = man & ((1u << shift) - 1u);
    const uint32_t half = 1u << (shift - 1u);
    const uint32_t r = q + ((rem > half || (rem == half && (q & 1u))) ? 1u : 0u);
    return static_cast<uint16_t>(sign | r);
  }
  // Normal: rebias exponent (127 -> 15) and round the 13 dropped mantissa bits to even.
  uint32_t r = abs - 0x38000000u;
  r += 0xFFFu + ((r >> 13) & 1u);
  return static_cast<uint16_t>(sign | (r >> 13));
}

// ---- FP8 E4M3FN --------------------------------------------------------------------------

constexpr float kFp8E4M3Max = 448.0f;

LLMQ_HD float fp8e4m3_to_f32(uint8_t b) {
  const uint32_t sign = static_cast<uint32_t>(b & 0x80u) << 24;
  const uint32_t exp = (b >> 3) & 0xFu;
  const uint32_t man = b & 0x7u;
  if (exp == 0xFu && man == 0x7u) return f32_from_bits(sign | 0x7FC00000u);  // NaN
  if (exp != 0) return f32_from_bits(sign | ((exp + 120u) << 23) | (man << 20));
  const float v = static_cast<float>(man) * 0.001953125f;  // subnormal: man * 2^-9
  return sign ? -v : v;
}

LLMQ_HD uint8_t f32_to_fp8e4m3(float x) {
  const uint32_t u = f32_bits(x);
  const uint8_t sign = static_cast<uint8_t>((u >> 24) & 0x80u);
  uint32_t abs = u & 0x7FFFFFFFu;
  if (abs > 0x7F800000u) return static_cast<uint8_t>(sign | 0x7Fu);  // NaN
  if (abs >= 0x43E00000u) return static_cast<uint8_t>(sign | 0x7Eu);  // |x| >= 448 (and inf): saturate
  if (abs < 0x3C800000u) {
    // Below 2^-6: subnormal result, value / 2^-9 rounded to an integer 0..8, ties to even.
    const uint32_t exp = abs >> 23;
    if (exp < 117) return sign;  // |x| < 2^-10 (half the smallest subnormal): rounds to 0
    const uint32_t man = (abs & 0x7FFFFFu) | 0x800000u;
    const uint32_t shift = 141u - exp;  // value = man * 2^(exp-150); in units of 2^-9: 2^(exp-141)
    const uint32_t q = man >> shift;
    const uint32_t rem = man & ((1u << shift) - 1u);
    const uint32_t half = 1u << (shift - 1u);
    const uint32_t r = q + ((rem > half || (rem == half && (q & 1u))) ? 1u : 0u);
    return static_cast<uint8_t>(sign | r);  // r == 8 is exactly the min normal 0x08
  }
  // Normal: rebias (127 -> 7), round the 20 dropped mantissa bits to even. 448 < x < 464
  // rounds to 448 here; >= 448 was handled above so the result never reaches the NaN code.
  uint32_t r = abs - 0x3C000000u;
  r += 0x7FFFFu + ((r >> 20) & 1u);
  r >>= 20;
  if (r > 0x7Eu) r = 0x7Eu;
  return static_cast<uint8_t>(sign | r);
}

}  // namespace llmq
