// Exhaustive tests of the scalar conversions in core/numeric.h: every bf16, f16 and fp8 code
// is decoded against an independent formula (ldexp of the fields), re-encoded to itself,
// and the midpoints between neighbours are checked to round to the even code.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>

#include "core/numeric.h"

namespace llmq {
namespace {

// Reference decoder for a sign | exponent | mantissa format with IEEE-style subnormals.
double decode_fields(uint32_t code, int exp_bits, int man_bits, int bias) {
  const uint32_t man = code & ((1u << man_bits) - 1u);
  const uint32_t exp = (code >> man_bits) & ((1u << exp_bits) - 1u);
  const bool neg = (code >> (exp_bits + man_bits)) & 1u;
  double v = exp == 0 ? std::ldexp(static_cast<double>(man), 1 - bias - man_bits)
                      : std::ldexp(1.0 + std::ldexp(static_cast<double>(man), -man_bits), static_cast<int>(exp) - bias);
  return neg ? -v : v;
}

TEST(Bf16, EveryCodeDecodesAndRoundTrips) {
  int nan_count = 0;
  for (uint32_t c = 0; c < 65536; ++c) {
    const float f = bf16_to_f32(static_cast<uint16_t>(c));
    const uint32_t exp = (c >> 7) & 0xFF;
    if (exp == 0xFF) {
      if ((c & 0x7F) != 0) {
        ++nan_count;
        EXPECT_TRUE(std::isnan(f)) << c;
        EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(f)))) << c;
        continue;
      }
      EXPECT_TRUE(std::isinf(f)) << c;
    } else {
      EXPECT_EQ(static_cast<double>(f), decode_fields(c, 8, 7, 127)) << c;
    }
    EXPECT_EQ(f32_to_bf16(f), c) << c;
  }
  EXPECT_EQ(nan_count, 2 * 127);
}

TEST(Bf16, MidpointsRoundToEven) {
  for (uint32_t c = 0; c < 0x7F7F; ++c) {  // positive finite codes with a finite successor
    const float lo = bf16_to_f32(static_cast<uint16_t>(c));
    const float hi = bf16_to_f32(static_cast<uint16_t>(c + 1));
    const float mid = static_cast<float>((static_cast<double>(lo) + hi) / 2);  // exact in f32
    const uint16_t even = (c & 1u) ? static_cast<uint16_t>(c + 1) : static_cast<uint16_t>(c);
    ASSERT_EQ(f32_to_bf16(mid), even) << c;
    ASSERT_EQ(f32_to_bf16(std::nextafter(mid, 0.0f)), c) << c;
    ASSERT_EQ(f32_to_bf16(std::nextafter(mid, INFINITY)), c + 1) << c;
    ASSERT_EQ(f32_to_bf16(-mid), even | 0x8000u) << c;
  }
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::max()), 0x7F80);  // rounds up to +inf
}

TEST(F16, EveryCodeDecodesAndRoundTrips) {
  for (uint32_t c = 0; c < 65536; ++c) {
    const float f = f16_to_f32(static_cast<uint16_t>(c));
    const uint32_t exp = (c >> 10) & 0x1F;
    if (exp == 0x1F) {
      if (c & 0x3FF) {
        EXPECT_TRUE(std::isnan(f)) << c;
        EXPECT_EQ(f32_to_f16(f) & 0x7C00u, 0x7C00u);
        EXPECT_NE(f32_to_f16(f) & 0x3FFu, 0u);
        continue;
      }
      EXPECT_TRUE(std::isinf(f)) << c;
    } else {
      EXPECT_EQ(static_cast<double>(f), decode_fields(c, 5, 10, 15)) << c;
    }
    EXPECT_EQ(f32_to_f16(f), c) << c;
  }
}

TEST(F16, MidpointsRoundToEvenIncludingSubnormalsAndOverflow) {
  for (uint32_t c = 0; c < 0x7BFF; ++c) {
    const double lo = f16_to_f32(static_cast<uint16_t>(c));
    const double hi = f16_to_f32(static_cast<uint16_t>(c + 1));
    const float mid = static_cast<float>((lo + hi) / 2);
    const uint16_t even = (c & 1u) ? static_cast<uint16_t>(c + 1) : static_cast<uint16_t>(c);
    ASSERT_EQ(f32_to_f16(mid), even) << c;
    ASSERT_EQ(f32_to_f16(std::nextafter(mid, 0.0f)), c) << c;
    ASSERT_EQ(f32_to_f16(std::nextafter(mid, INFINITY)), c + 1) << c;
  }
  EXPECT_EQ(f32_to_f16(65519.996f), 0x7BFF);  // just below the overflow midpoint
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7C00);    // midpoint 65504/65536 ties away to inf (odd 0x3FF)
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25)), 0x0000);  // half the smallest subnormal: tie to 0
  EXPECT_EQ(f32_to_f16(std::ldexp(1.5f, -25)), 0x0001);
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -130)), 0x0000);  // f32 subnormal input
}

TEST(Fp8E4M3, EveryCodeDecodes) {
  for (uint32_t c = 0; c < 256; ++c) {
    const float f = fp8e4m3_to_f32(static_cast<uint8_t>(c));
    if ((c & 0x7F) == 0x7F) {
      EXPECT_TRUE(std::isnan(f)) << c;
      continue;
    }
    EXPECT_EQ(static_cast<double>(f), decode_fields(c, 4, 3, 7)) << c;
    EXPECT_EQ(f32_to_fp8e4m3(f), c) << c;
  }
  EXPECT_EQ(fp8e4m3_to_f32(0x7E), 448.0f);
  EXPECT_EQ(fp8e4m3_to_f32(0x08), 0.015625f);
  EXPECT_EQ(fp8e4m3_to_f32(0x01), std::ldexp(1.0f, -9));
}

// The values torch gives (formats.md A.4), except that encode saturates instead of making NaN.
TEST(Fp8E4M3, MatchesTorchTableAndSaturates) {
  EXPECT_EQ(f32_to_fp8e4m3(1.0625f), 0x38);
  EXPECT_EQ(f32_to_fp8e4m3(1.1875f), 0x3A);
  EXPECT_EQ(f32_to_fp8e4m3(std::ldexp(1.0f, -10)), 0x00);
  EXPECT_EQ(f32_to_fp8e4m3(std::ldexp(1.5f, -10)), 0x01);
  EXPECT_EQ(f32_to_fp8e4m3(449.0f), 0x7E);
  EXPECT_EQ(f32_to_fp8e4m3(464.0f), 0x7E);
  EXPECT_EQ(f32_to_fp8e4m3(-0.0f), 0x80);
  for (float big : {465.0f, 480.0f, 1e4f, 3e38f, INFINITY}) {
    EXPECT_EQ(f32_to_fp8e4m3(big), 0x7E) << big;
    EXPECT_EQ(f32_to_fp8e4m3(-big), 0xFE) << big;
  }
  EXPECT_EQ(f32_to_fp8e4m3(NAN) & 0x7F, 0x7F);
}

// Brute force: the nearest representable value by search, ties to the even code.
uint8_t fp8_nearest_reference(float x) {
  const double ax = std::fabs(static_cast<double>(x));
  uint8_t best = 0;
  double best_err = INFINITY;
  for (uint32_t c = 0; c <= 0x7E; ++c) {
    const double err = std::fabs(decode_fields(c, 4, 3, 7) - ax);
    if (err < best_err || (err == best_err && (c & 1u) == 0)) {
      best_err = err;
      best = static_cast<uint8_t>(c);
    }
  }
  if (ax >= 448.0) best = 0x7E;
  return static_cast<uint8_t>(best | (std::signbit(x) ? 0x80 : 0));
}

TEST(Fp8E4M3, RandomValuesMatchBruteForceNearest) {
  const unsigned seed = 1234;
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> exponent(-14.0f, 10.0f);
  std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
  for (int i = 0; i < 200000; ++i) {
    const float x = unit(rng) * std::exp2(exponent(rng));
    ASSERT_EQ(f32_to_fp8e4m3(x), fp8_nearest_reference(x)) << "x=" << x << " seed=" << seed;
  }
  // Every midpoint between neighbouring codes, and one f32 ulp either side.
  for (uint32_t c = 0; c < 0x7E; ++c) {
    const double lo = decode_fields(c, 4, 3, 7), hi = decode_fields(c + 1, 4, 3, 7);
    const float mid = static_cast<float>((lo + hi) / 2);
    ASSERT_EQ(f32_to_fp8e4m3(mid), (c & 1u) ? c + 1 : c) << c;
    ASSERT_EQ(f32_to_fp8e4m3(std::nextafter(mid, 0.0f)), c) << c;
    ASSERT_EQ(f32_to_fp8e4m3(std::nextafter(mid, INFINITY)), c + 1) << c;
  }
}

}  // namespace
}  // namespace llmq
