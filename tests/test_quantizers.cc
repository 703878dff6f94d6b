// RTN and FP8 quantizers: grids match the reference conventions, errors are bounded by half a
// quantization step, weights already on a grid are recovered exactly.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/numeric.h"
#include "quantizers/fp8.h"
#include "quantizers/rtn.h"
#include "gptq_test_util.h"

namespace llmq {
namespace {

using testing::random_weight;

TEST(Int4Grid, ReferenceConventions) {
  // Symmetric: s = amax / 7.5, zero 8; -amax -> code 0, +amax -> code 15 (clamped from 16).
  Int4Params p = int4_params(-0.75f, 0.5f, Int4Range::kSymmetric, DType::kF32);
  EXPECT_FLOAT_EQ(p.scale, 0.1f);
  EXPECT_EQ(p.zero, 8);
  EXPECT_EQ(int4_code(-0.75f, p), 0);
  EXPECT_EQ(int4_code(0.75f, p), 15);
  EXPECT_EQ(int4_code(0.25f, p), 10);  // 2.5 rounds half to even -> 2
  // With-zero asymmetric: an all-positive group still has lo = 0, so zero = 0.
  p = int4_params(0.3f, 1.5f, Int4Range::kAsymWithZero, DType::kF32);
  EXPECT_FLOAT_EQ(p.scale, 0.1f);
  EXPECT_EQ(p.zero, 0);
  EXPECT_EQ(int4_params(0.3f, 1.5f, Int4Range::kAsymWithZero, DType::kF32, 1).zero, 1);  // GPTQ v1 rule
  // AWQ: range not forced through 0; z = -round(lo / s).
  p = int4_params(0.3f, 1.8f, Int4Range::kAsymAwq, DType::kF32);
  EXPECT_FLOAT_EQ(p.scale, 0.1f);
  EXPECT_EQ(p.zero, 0);  // -round(3) = -3, clamped to 0
  p = int4_params(-1.2f, 0.3f, Int4Range::kAsymAwq, DType::kF32);
  EXPECT_EQ(p.zero, 12);
  // All-zero group: range [-1, 1], positive scale, zeros decode to 0.
  p = int4_params(0.0f, 0.0f, Int4Range::kAsymWithZero, DType::kF16);
  EXPECT_GT(p.scale, 0);
  EXPECT_EQ(int4_dequant(int4_code(0.0f, p), p), 0.0f);
  // Scales are rounded to the storage dtype before use.
  p = int4_params(-1.0f, 1.0f, Int4Range::kSymmetric, DType::kF16);
  EXPECT_EQ(p.scale, f16_to_f32(f32_to_f16(1.0f / 7.5f)));
}

TEST(RtnInt4, ErrorWithinHalfStepForEveryRangeAndDtype) {
  const Tensor w = random_weight(48, 512, 11);
  for (Int4Range range : {Int4Range::kSymmetric, Int4Range::kAsymWithZero, Int4Range::kAsymAwq}) {
    for (DType sd : {DType::kF16, DType::kBF16}) {
      Int4Config c;
      c.range = range;
      c.scale_dtype = sd;
      const QuantizedLinear q = quantize_rtn_int4(w.view(), c);
      ASSERT_EQ(validate(q), "");
      const Tensor d = dequantize(q);
      double err2 = 0, norm2 = 0;
      for (int64_t n = 0; n < 48; ++n)
        for (int64_t k = 0; k < 512; ++k) {
          const float s = q.scales.data<float>()[n * 4 + k / 128];
          const float x = w.data<float>()[n * 512 + k], y = d.data<float>()[n * 512 + k];
          // Symmetric clips +amax by half a step; everything else is within half a step
          // (plus the scale's storage rounding, < 2^-8 relative, times at most 15 steps).
          ASSERT_LE(std::fabs(x - y), s * (0.5f + 15 * 0.0040f)) << n << "," << k;
          EXPECT_EQ(s, sd == DType::kF16 ? f16_to_f32(f32_to_f16(s)) : bf16_to_f32(f32_to_bf16(s)));
          err2 += double(x - y) * (x - y);
          norm2 += double(x) * x;
        }
      // Uniform rounding noise: RMS error = step / sqrt(12) ~ 0.29 step; for Gaussian groups of
      // 128 the step is ~ 2 * 2.6 sigma / 15, so ||E|| / ||W|| is around 0.1; 0.2 flags a broken grid.
      const double rel = std::sqrt(err2 / norm2);
      EXPECT_GT(rel, 0.02);
      EXPECT_LT(rel, 0.2);
    }
  }
}

TEST(RtnInt4, WeightsOnTheGridAreExact) {
  Int4Config c;
  c.range = Int4Range::kAsymAwq;
  c.scale_dtype = DType::kF32;
  Tensor w(DType::kF32, {2, 128});
  for (int64_t k = 0; k < 128; ++k) {
    w.data<float>()[k] = 0.125f * static_cast<float>(k % 16) - 0.5f;  // codes 0..15, zero 4
    w.data<float>()[128 + k] = 0.25f * static_cast<float>(k % 16);
  }
  const QuantizedLinear q = quantize_rtn_int4(w.view(), c);
  const Tensor d = dequantize(q);
  for (int64_t i = 0; i < 256; ++i) EXPECT_EQ(d.data<float>()[i], w.data<float>()[i]) << i;
  EXPECT_EQ(q.zeros.data<uint8_t>()[0], 4);
}

TEST(RtnInt8, CompressedTensorsConvention) {
  Tensor w(DType::kF32, {2, 4});
  const float vals[8] = {1.27f, -1.275f, 0.5f, 0.0f, 0, 0, 0, 0};
  for (int i = 0; i < 8; ++i) w.data<float>()[i] = vals[i];
  Int8Config c;
  c.scale_dtype = DType::kF32;
  const QuantizedLinear q = quantize_rtn_int8(w.view(), c);
  ASSERT_EQ(validate(q), "");
  EXPECT_FLOAT_EQ(q.scales.data<float>()[0], 1.275f / 127.5f);
  EXPECT_EQ(q.codes.data<int8_t>()[1], -128);  // -amax -> -127.5 -> half-even -128
  EXPECT_EQ(q.codes.data<int8_t>()[0], 127);
  EXPECT_GT(q.scales.data<float>()[1], 0);  // all-zero row: positive scale
  EXPECT_EQ(dequantize(q).data<float>()[4], 0.0f);
  const Tensor big = random_weight(16, 256, 5);
  const QuantizedLinear q2 = quantize_rtn_int8(big.view(), Int8Config{});
  const Tensor d = dequantize(q2);
  // Half a step, plus the clip of the row's extreme when the BF16-rounded scale came out below
  // amax / 127.5: up to a half ulp (2^-8 relative for 7 mantissa bits) of 127.5 steps.
  const float bound_steps = 0.5f + 127.5f / 256.0f;
  for (int64_t i = 0; i < big.numel(); ++i)
    ASSERT_LE(std::fabs(d.data<float>()[i] - big.data<float>()[i]), q2.scales.data<float>()[i / 256] * bound_steps * 1.0001f);
}

TEST(Fp8Channel, ScalesCodesAndErrors) {
  const Tensor w = random_weight(32, 300, 7);
  const QuantizedLinear q = quantize_fp8_channel(w.view(), Fp8Config{});
  ASSERT_EQ(validate(q), "");
  const Tensor d = dequantize(q);
  for (int64_t n = 0; n < 32; ++n) {
    const float s = q.scales.data<float>()[n];
    EXPECT_EQ(s, bf16_to_f32(f32_to_bf16(s)));
    float amax = 0;
    int saw_max_code = 0;
    for (int64_t k = 0; k < 300; ++k) {
      const float x = w.data<float>()[n * 300 + k], y = d.data<float>()[n * 300 + k];
      amax = std::max(amax, std::fabs(x));
      // E4M3 has 3 mantissa bits: relative error <= 2^-4 for normals; subnormal codes are
      // spaced 2^-9 * s, so the absolute error there is <= 2^-10 * s.
      ASSERT_LE(std::fabs(x - y), std::max(std::fabs(x) * 0.0625f, s * 0.0009765625f)) << n << "," << k;
      saw_max_code += (q.codes.data<uint8_t>()[n * 300 + k] & 0x7F) >= 0x7D;
    }
    EXPECT_NEAR(s, amax / 448.0f, amax / 448.0f * 0.004f);  // bf16 rounding of the scale
    EXPECT_GE(saw_max_code, 1);  // the row's largest weight uses the top of the range
  }
}

}  // namespace
}  // namespace llmq
