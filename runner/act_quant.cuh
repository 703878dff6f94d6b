// Device pieces of per-token activation quantization (vLLM's formulas, model/quantized_linear.h),
// shared by the standalone kernels (act_quant.cu) and the ones fused into RMSNorm (norm_rope.cu),
// so both produce the same codes from the same bf16 row, and the bf16 packs they read.
#pragma once

#include <cuda_fp8.h>

#include <cfloat>
#include <cstdint>

#include "core/numeric.h"
#include "runner/kernels.h"

namespace llmq::gpu {

// V consecutive bf16 values: 16-byte accesses when rows allow (n % 8 == 0), else one by one.
template <int V>
struct Pack {
  bf16 v[V];
  __device__ __forceinline__ static Pack load(const bf16* p) {
    Pack r;
    if constexpr (V == 8) *reinterpret_cast<uint4*>(r.v) = *reinterpret_cast<const uint4*>(p);
    else for (int i = 0; i < V; ++i) r.v[i] = p[i];
    return r;
  }
  __device__ __forceinline__ void store(bf16* p) const {
    if constexpr (V == 8) *reinterpret_cast<uint4*>(p) = *reinterpret_cast<const uint4*>(v);
    else for (int i = 0; i < V; ++i) p[i] = v[i];
  }
};

// The block's maximum of v; every thread gets it. shared: [blockDim.x / 32] floats.
__device__ __forceinline__ float block_max(float v, float* shared) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  if (threadIdx.x % 32 == 0) shared[threadIdx.x / 32] = v;
  __syncthreads();
  float m = shared[0];
  for (int i = 1; i < static_cast<int>(blockDim.x / 32); ++i) m = fmaxf(m, shared[i]);
  __syncthreads();  // shared may be reused by the caller
  return m;
}

// FP8 E4M3: scale = max(amax / 448, 1 / (448 * 512)), code = e4m3(v / scale) (a division, as vLLM).
struct Fp8TokenQuant {
  float scale;
  __device__ explicit Fp8TokenQuant(float amax) : scale(fmaxf(amax / kFp8E4M3Max, 1.0f / (kFp8E4M3Max * 512.0f))) {}
  __device__ uint8_t operator()(float v) const {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    // The hardware conversion (sm_89+): round to nearest even, finite values past 448 and
    // infinities saturated, as f32_to_fp8e4m3, in one instruction instead of its branches.
    return static_cast<uint8_t>(__nv_cvt_float_to_fp8(v / scale, __NV_SATFINITE, __NV_E4M3));
#else
    return f32_to_fp8e4m3(v / scale);
#endif
  }
};

// INT8: code = clamp(rint(v * (127 / amax))) (half to even, like cvt.rni), scale amax / 127;
// an all-zero row has no scale in vLLM: scale 1 and code 0 give the same zero output.
struct Int8TokenQuant {
  float inv, scale;
  __device__ explicit Int8TokenQuant(float amax)
      : inv(amax == 0.0f ? 0.0f : 127.0f / amax), scale(amax == 0.0f ? 1.0f : amax / 127.0f) {}
  __device__ int8_t operator()(float v) const {
    if (inv == 0.0f) return 0;
    return static_cast<int8_t>(fminf(fmaxf(rintf(v * inv), -128.0f), 127.0f));
  }
};

}  // namespace llmq::gpu
