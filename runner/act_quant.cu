// Per-token dynamic activation quantization for the W8A8 GEMMs, op for op as vLLM's kernels
// (model/quantized_linear.h gives the formulas and sources), and the epilogue that applies
// per-token x per-channel scales to the GEMM accumulator. One block per token row: the row's
// amax is a block reduction, then every element is quantized with the row's scale.
#include <cfloat>

#include "core/numeric.h"
#include "runner/cuda_check.h"
#include "runner/kernels.h"

namespace llmq::gpu {
namespace {

constexpr int kThreads = 256;

__device__ float block_max(float v, float* shared) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  if (threadIdx.x % 32 == 0) shared[threadIdx.x / 32] = v;
  __syncthreads();
  float m = shared[0];
  for (int i = 1; i < kThreads / 32; ++i) m = fmaxf(m, shared[i]);
  return m;
}

__global__ void fp8_kernel(const bf16* x, uint8_t* codes, int ld, float* scales, int k) {
  __shared__ float shared[32];
  const bf16* xr = x + static_cast<int64_t>(blockIdx.x) * k;
  uint8_t* cr = codes + static_cast<int64_t>(blockIdx.x) * ld;
  float amax = 0.0f;
  for (int i = threadIdx.x; i < k; i += kThreads) amax = fmaxf(amax, fabsf(bf16_to_f32(xr[i])));
  amax = block_max(amax, shared);
  const float s = fmaxf(amax / kFp8E4M3Max, 1.0f / (kFp8E4M3Max * 512.0f));
  for (int i = threadIdx.x; i < k; i += kThreads) cr[i] = f32_to_fp8e4m3(bf16_to_f32(xr[i]) / s);  // a division, as vLLM
  if (threadIdx.x == 0) scales[blockIdx.x] = s;
}

__global__ void int8_kernel(const bf16* x, int8_t* codes, int ld, float* scales, int k) {
  __shared__ float shared[32];
  const bf16* xr = x + static_cast<int64_t>(blockIdx.x) * k;
  int8_t* cr = codes + static_cast<int64_t>(blockIdx.x) * ld;
  float amax = 0.0f;
  for (int i = threadIdx.x; i < k; i += kThreads) amax = fmaxf(amax, fabsf(bf16_to_f32(xr[i])));
  amax = block_max(amax, shared);
  if (amax == 0.0f) {  // no scale in vLLM; scale 1 and code 0 give the same zero output
    for (int i = threadIdx.x; i < k; i += kThreads) cr[i] = 0;
    if (threadIdx.x == 0) scales[blockIdx.x] = 1.0f;
    return;
  }
  const float inv = 127.0f / amax;
  for (int i = threadIdx.x; i < k; i += kThreads) {
    const float v = rintf(bf16_to_f32(xr[i]) * inv);  // half to even, like cvt.rni
    cr[i] = static_cast<int8_t>(fminf(fmaxf(v, -128.0f), 127.0f));
  }
  if (threadIdx.x == 0) scales[blockIdx.x] = amax / 127.0f;
}

// The accumulator times the two scales in double, rounded once to f32 and then to bf16: the
// reference's order (an int32 sum up to 2^31 is exact in double, not in f32).
template <class Acc>
__global__ void scale_kernel(const Acc* acc, const float* sx, const float* sw, bf16* y, int M, int N) {
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
  scale_kernel<<<static_cast<int>(blocks < 65535 ? blocks : 65535), kThreads, 0, s>>>(acc, sx, sw, y, M, N);
  LLMQ_CUDA_CHECK_LAUNCH();
}

}  // namespace

void quantize_fp8_per_token(const bf16* x, uint8_t* codes, int ld_codes, float* scales, int rows, int k, cudaStream_t s) {
  if (rows == 0) return;
  fp8_kernel<<<rows, kThreads, 0, s>>>(x, codes, ld_codes, scales, k);
  LLMQ_CUDA_CHECK_LAUNCH();
}

void quantize_int8_per_token(const bf16* x, int8_t* codes, int ld_codes, float* scales, int rows, int k, cudaStream_t s) {
  if (rows == 0) return;
  int8_kernel<<<rows, kThreads, 0, s>>>(x, codes, ld_codes, scales, k);
  LLMQ_CUDA_CHECK_LAUNCH();
}

void scale_rows_cols_i32(const int32_t* acc, const float* sx, const float* sw, bf16* y, int M, int N, cudaStream_t s) {
  launch_scale(acc, sx, sw, y, M, N, s);
}

void scale_rows_cols_f32(const float* acc, const float* sx, const float* sw, bf16* y, int M, int N, cudaStream_t s) {
  launch_scale(acc, sx, sw, y, M, N, s);
}

}  // namespace llmq::gpu
