// Per-token dynamic activation quantization for the W8A8 GEMMs, op for op as vLLM's kernels
// (model/quantized_linear.h gives the formulas and sources), and the epilogue that applies
// per-token x per-channel scales to the GEMM accumulator. One block per token row: the row's
// amax is a block reduction, then every element is quantized with the row's scale.
#include <cfloat>

#include "core/numeric.h"
#include "runner/act_quant.cuh"
#include "runner/cuda_check.h"
#include "runner/kernels.h"
#include "runner/pdl.cuh"

namespace llmq::gpu {
namespace {

constexpr int kThreads = 256;

// One block per row: the row's amax, then every element with the row's quantizer Q.
template <class Q, class Code>
__global__ void __launch_bounds__(kThreads) quantize_kernel(const bf16* x, Code* codes, int ld, float* scales, int k) {
  pdl_wait();
  __shared__ float shared[kThreads / 32];
  const bf16* xr = x + static_cast<int64_t>(blockIdx.x) * k;
  Code* cr = codes + static_cast<int64_t>(blockIdx.x) * ld;
  float amax = 0.0f;
  for (int i = threadIdx.x; i < k; i += kThreads) amax = fmaxf(amax, fabsf(bf16_to_f32(xr[i])));
  const Q q(block_max(amax, shared));
  for (int i = threadIdx.x; i < k; i += kThreads) cr[i] = static_cast<Code>(q(bf16_to_f32(xr[i])));
  if (threadIdx.x == 0) scales[blockIdx.x] = q.scale;
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
  if (rows == 0) return;
  launch_pdl(quantize_kernel<Fp8TokenQuant, uint8_t>, dim3(rows), dim3(kThreads), 0, s, x, codes, ld_codes, scales, k);
  LLMQ_CUDA_CHECK_LAUNCH();
}

void quantize_int8_per_token(const bf16* x, int8_t* codes, int ld_codes, float* scales, int rows, int k, cudaStream_t s) {
  if (rows == 0) return;
  launch_pdl(quantize_kernel<Int8TokenQuant, int8_t>, dim3(rows), dim3(kThreads), 0, s, x, codes, ld_codes, scales, k);
  LLMQ_CUDA_CHECK_LAUNCH();
}

void scale_rows_cols_i32(const int32_t* acc, const float* sx, const float* sw, bf16* y, int M, int N, cudaStream_t s) {
  launch_scale(acc, sx, sw, y, M, N, s);
}

void scale_rows_cols_f32(const float* acc, const float* sx, const float* sw, bf16* y, int M, int N, cudaStream_t s) {
  launch_scale(acc, sx, sw, y, M, N, s);
}

}  // namespace llmq::gpu
