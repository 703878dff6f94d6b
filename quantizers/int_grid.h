// Integer quantization grids: how a group of weights maps to (scale, zero) and codes, in the
// conventions of the reference tools (formats.md B.4, C.5, C.7, D.2). Shared by RTN, GPTQ
// (which quantizes one column at a time against these parameters) and AWQ's searches.
//
// INT4 (unsigned codes 0..15, dequant (q - z) * s):
//   symmetric            s = max(|lo|, |hi|) / 7.5, z = 8        (AutoGPTQ sym, CT W4A16)
//   asymmetric, kWithZero  lo = min(min, 0), hi = max(max, 0), s = (hi - lo) / 15,
//                        z = round(-lo / s)                      (AutoGPTQ asym, CT asym)
//   asymmetric, kAwq     lo = min, hi = max (zero not forced in), s = max(hi - lo, 1e-5) / 15,
//                        z = clamp(-round(lo / s), 0, 15)        (AutoAWQ)
//   q = clamp(round(w / s) + z, 0, 15). Rounding is half-to-even (torch.round).
// The scale is rounded to its storage dtype BEFORE codes are computed (readers dequantize with
// the stored value). A group that is all zero gets the range [-1, 1] (AutoGPTQ's rule), so
// every scale is positive.
// INT8 per channel (compressed-tensors): s = amax / 127.5, q = clamp(round(w / s), -128, 127).
// Written once for host and device (LLMQ_HD from core/numeric.h): the GPU GPTQ sweep
// (quantizers/gpu/gptq_gpu.cu) computes its group parameters and codes with these very
// functions. Device code uses the CUDA builtins with the same IEEE semantics (rintf is
// round-half-even in the default rounding mode, like std::nearbyint); the host path is
// unchanged.
#pragma once

#include <cmath>
#include <cstdint>

#include "core/dtype.h"
#include "core/numeric.h"

namespace llmq {
namespace int_grid_detail {

LLMQ_HD float fmin_f(float a, float b) {
#if defined(__CUDA_ARCH__)
  return fminf(a, b);
#else
  return std::fmin(a, b);
#endif
}

LLMQ_HD float fmax_f(float a, float b) {
#if defined(__CUDA_ARCH__)
  return fmaxf(a, b);
#else
  return std::fmax(a, b);
#endif
}

}  // namespace int_grid_detail

enum class Int4Range : uint8_t {
  kSymmetric,      // zero fixed at 8
  kAsymWithZero,   // range forced to include 0 (GPTQ, compressed-tensors)
  kAsymAwq,        // plain min/max (AutoAWQ)
};

struct Int4Params {
  float scale;  // as stored (already rounded to the storage dtype)
  uint8_t zero;  // 0..15
};

// Rounds a positive scale to the storage dtype, keeping it positive and finite.
LLMQ_HD float round_scale_to(float s, DType storage) {
  float r = s;
  if (storage == DType::kBF16) r = bf16_to_f32(f32_to_bf16(s));
  if (storage == DType::kF16) r = f16_to_f32(f32_to_f16(s));
  if (!(r > 0)) {  // underflow to zero: smallest positive normal of the storage type
    r = storage == DType::kF16 ? 6.103515625e-05f : 1.17549435e-38f;
  }
  return r;
}

LLMQ_HD float round_half_even(float x) {  // default FE_TONEAREST
#if defined(__CUDA_ARCH__)
  return rintf(x);
#else
  return std::nearbyint(x);
#endif
}

// lo/hi: the group's min and max (after any clipping the caller applies).
LLMQ_HD Int4Params int4_params(float lo, float hi, Int4Range range, DType scale_dtype, int min_zero = 0) {
  Int4Params p{};
  if (range == Int4Range::kAsymAwq) {
    const float s = round_scale_to(int_grid_detail::fmax_f(hi - lo, 1e-5f) / 15.0f, scale_dtype);
    const float z = -round_half_even(lo / s);
    p.scale = s;
    p.zero = static_cast<uint8_t>(int_grid_detail::fmin_f(int_grid_detail::fmax_f(z, static_cast<float>(min_zero)), 15.0f));
    return p;
  }
  lo = int_grid_detail::fmin_f(lo, 0.0f);
  hi = int_grid_detail::fmax_f(hi, 0.0f);
  if (lo == 0.0f && hi == 0.0f) {
    lo = -1.0f;
    hi = 1.0f;
  }
  if (range == Int4Range::kSymmetric) {
    p.scale = round_scale_to(int_grid_detail::fmax_f(-lo, hi) / 7.5f, scale_dtype);
    p.zero = 8;
    return p;
  }
  p.scale = round_scale_to((hi - lo) / 15.0f, scale_dtype);
  const float z = round_half_even(-lo / p.scale);
  p.zero = static_cast<uint8_t>(int_grid_detail::fmin_f(int_grid_detail::fmax_f(z, static_cast<float>(min_zero)), 15.0f));
  return p;
}

LLMQ_HD uint8_t int4_code(float w, const Int4Params& p) {
  const float q = round_half_even(w / p.scale) + static_cast<float>(p.zero);
  return static_cast<uint8_t>(int_grid_detail::fmin_f(int_grid_detail::fmax_f(q, 0.0f), 15.0f));
}

LLMQ_HD float int4_dequant(uint8_t q, const Int4Params& p) {
  return (static_cast<float>(q) - static_cast<float>(p.zero)) * p.scale;
}

LLMQ_HD int8_t int8_code(float w, float scale) {
  const float q = round_half_even(int_grid_detail::fmin_f(int_grid_detail::fmax_f(w / scale, -128.0f), 127.0f));
  return static_cast<int8_t>(q);
}

}  // namespace llmq
