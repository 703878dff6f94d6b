// Per-token dynamic activation quantization for the W8A8 GEMMs, op for op as vLLM's kernels
// (model/quantized_linear.h gives the formulas and sources), and the epilogue that applies
// per-token x per-channel scales to the GEMM accumulator.
#include <cfloat>

#include "core/numeric.h"
#include "runner/act_quant.cuh"
#include "runner/cuda_check.h"
#include "runner/kernels.h"
#include "runner/pdl.cuh"

namespace llmq::gpu {
namespace {

constexpr int kThreads = 512;
// Packs a thread keeps in registers between the amax and the store: a decode row (K up to
// 4 * 512 * 8 = 16384) is read from memory once, in 16-byte loads.
constexpr int kCachedPacks = 4;

// The codes of one pack; 8 codes go out as one 8-byte store.
template <int V, class Q, class Code>
__device__ __forceinline__ void store_codes(const Q& q, const Pack<V>& xv, Code* dst) {
  if constexpr (V == 8) {
    uint32_t lo = 0, hi = 0;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      lo |= static_cast<uint32_t>(static_cast<uint8_t>(q(bf16_to_f32(xv.v[i])))) << (8 * i);
      hi |= static_cast<uint32_t>(static_cast<uint8_t>(q(bf16_to_f32(xv.v[i + 4])))) << (8 * i);
    }
    *reinterpret_cast<uint2*>(dst) = make_uint2(lo, hi);
  } else {
    for (int i = 0; i < V; ++i) dst[i] = static_cast<Code>(q(bf16_to_f32(xv.v[i])));
  }
}

// One block per row: the row's amax, then every element with the row's quantizer Q. At
// batch 1 this is one block on one SM between two GEMVs, so its latency is the cost: the row
// is read once in V-value packs (V = 8 when rows are 16-byte aligned) and kept in registers.
template <class Q, class Code, int V>
__global__ void __launch_bounds__(kThreads) quantize_kernel(const bf16* x, Code* codes, int ld, float* scales, int k) {
  pdl_wait();
  __shared__ float shared[kThreads / 32];
  const bf16* xr = x + static_cast<int64_t>(blockIdx.x) * k;
  Code* cr = codes + static_cast<int64_t>(blockIdx.x) * ld;
  const int packs = k / V;
  Pack<V> cached[kCachedPacks];
  float amax = 0.0f;
#pragma unroll
  for (int j = 0; j < kCachedPacks; ++j) {
    const int p = threadIdx.x + j * kThreads;
    if (p >= packs) break;
    cached[j] = Pack<V>::load(xr + p * V);
#pragma unroll
    for (int i = 0; i < V; ++i) amax = fmaxf(amax, fabsf(bf16_to_f32(cached[j].v[i])));
  }
  for (int p = threadIdx.x + kCachedPacks * kThreads; p < packs; p += kThreads) {
    const Pack<V> xv = Pack<V>::load(xr + p * V);
#pragma unroll
    for (int i = 0; i < V; ++i) amax = fmaxf(amax, fabsf(bf16_to_f32(xv.v[i])));
  }
  const Q q(block_max(amax, shared));
#pragma unroll
  for (int j = 0; j < kCachedPacks; ++j) {
    const int p = threadIdx.x + j * kThreads;
    if (p >= packs) break;
    store_codes<V>(q, cached[j], cr + p * V);
  }
  for (int p = threadIdx.x + kCachedPacks * kThreads; p < packs; p += kThreads)
    store_codes<V>(q, Pack<V>::load(xr + p * V), cr + p * V);
  if (threadIdx.x == 0) scales[blockIdx.x] = q.scale;
}

template <class Q, class Code>
void launch_quantize(const bf16* x, Code* codes, int ld, float* scales, int rows, int k, cudaStream_t s) {
  if (rows == 0) return;
  const bool packed = k % 8 == 0 && ld % 8 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
                      reinterpret_cast<uintptr_t>(codes) % 8 == 0;
  if (packed) launch_pdl(quantize_kernel<Q, Code, 8>, dim3(rows), dim3(kThreads), 0, s, x, codes, ld, scales, k);
  else launch_pdl(quantize_kernel<Q, Code, 1>, dim3(rows), dim3(kThreads), 0, s, x, codes, ld, scales, k);
  LLMQ_CUDA_CHECK_LAUNCH();
}

// The accumulator times the two scales in double, rounded once to f32 and then to bf16: the
// reference's order (an int32 sum up to 2^31 is exact in double, not in f32).
template <class Acc>
__global__ void scale_kernel(const Acc* acc, const float* sx, const float* sw, bf16* y, int M, int N) {
  pdl_wait();
  const int64_t n = static_cast<int64_t>(M) * N;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t m = i / N, c = i % N;
    y[i] = f32_to_bf16(static_cast<float>(static_cast<double>(acc[i]) * sx[m] * static_cast<double>(sw[c])));
  }
}

template <class Acc>
void launch_scale(const Acc* acc, const float* sx, const float* sw, bf16* y, int M, int N, cudaStream_t s) {
  const int64_t n = static_cast<int64_t>(M) * N;
  if (n == 0) return;
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  launch_pdl(scale_kernel<Acc>, dim3(static_cast<unsigned>(blocks < 65535 ? blocks : 65535)), dim3(kThreads), 0, s, acc, sx, sw, y, M, N);
  LLMQ_CUDA_CHECK_LAUNCH();
}

}  // namespace

void quantize_fp8_per_token(const bf16* x, uint8_t* codes, int ld_codes, float* scales, int rows, int k, cudaStream_t s) {
  launch_quantize<Fp8TokenQuant>(x, codes, ld_codes, scales, rows, k, s);
}

void quantize_int8_per_token(const bf16* x, int8_t* codes, int ld_codes, float* scales, int rows, int k, cudaStream_t s) {
  launch_quantize<Int8TokenQuant>(x, codes, ld_codes, scales, rows, k, s);
}

void scale_rows_cols_i32(const int32_t* acc, const float* sx, const float* sw, bf16* y, int M, int N, cudaStream_t s) {
  launch_scale(acc, sx, sw, y, M, N, s);
}

void scale_rows_cols_f32(const float* acc, const float* sx, const float* sw, bf16* y, int M, int N, cudaStream_t s) {
  launch_scale(acc, sx, sw, y, M, N, s);
}

}  // namespace llmq::gpu
