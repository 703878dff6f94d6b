// W8A8 GEMV for decode (runner/kernels.h): cuBLASLt's FP8 / INT8 GEMMs read the weights at
// 20-60% of HBM bandwidth for M <= 8 (tile shapes made for large M), and need a separate
// scaling pass. Here each warp streams whole weight rows as 16-byte chunks (every lane keeps
// several loads in flight), multiplies them with the M activation rows (small, served from
// L1/L2), reduces with shuffles, and writes bf16(acc · sx[m] · sw[n]) as the scaling kernel
// does. INT8 sums with dp4a in int32 (exact, so bit-equal to cuBLAS + scaling); FP8 products
// are exact in f32 and summed in f32 (tighter than the tensor cores' ~14-bit accumulation).
#include <cuda_fp8.h>

#include <type_traits>

#include "core/numeric.h"
#include "runner/cuda_check.h"
#include "runner/kernels.h"

namespace llmq::gpu {
namespace {

constexpr int kWarps = 8;  // rows per block, one per warp

__device__ __forceinline__ void fp8x16_to_f32(const uint4& u, float* out) {
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
  for (int i = 0; i < 4; ++i) {
    for (int h = 0; h < 2; ++h) {
      const __nv_fp8x2_storage_t pair = static_cast<__nv_fp8x2_storage_t>(w[i] >> (16 * h));
      const __half2_raw raw = __nv_cvt_fp8x2_to_halfraw2(pair, __NV_E4M3);
      const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&raw));
      out[4 * i + 2 * h] = f.x;
      out[4 * i + 2 * h + 1] = f.y;
    }
  }
}

// Sums each row's lane partials and writes y[m, n] = bf16(acc · sx[m] · sw[n]) in double, the
// scaling kernel's order; lane m writes row m.
template <int M, class Acc>
__device__ __forceinline__ void store_scaled(Acc (&acc)[M], const float* sx, const float* sw, bf16* y, int n, int N,
                                             int lane) {
  for (int m = 0; m < M; ++m)
    for (int o = 16; o > 0; o >>= 1) acc[m] += __shfl_xor_sync(0xffffffffu, acc[m], o);
  for (int m = 0; m < M; ++m)
    if (m == lane)
      y[static_cast<int64_t>(m) * N + n] =
          f32_to_bf16(static_cast<float>(static_cast<double>(acc[m]) * sx[m] * static_cast<double>(sw[n])));
}

template <int M>
__global__ void __launch_bounds__(kWarps * 32) gemv_int8_kernel(const int8_t* xq, const float* sx, const int8_t* wq,
                                                                const float* sw, bf16* y, int N, int ld) {
  const int n = blockIdx.x * kWarps + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (n >= N) return;
  const uint4* w = reinterpret_cast<const uint4*>(wq + static_cast<int64_t>(n) * ld);
  const int chunks = ld / 16;
  int acc[M] = {};
  for (int c = lane; c < chunks; c += 32) {
    const uint4 wv = __ldg(w + c);
    for (int m = 0; m < M; ++m) {
      const uint4 xv = __ldg(reinterpret_cast<const uint4*>(xq + static_cast<int64_t>(m) * ld) + c);
      acc[m] = __dp4a(static_cast<int>(wv.x), static_cast<int>(xv.x), acc[m]);
      acc[m] = __dp4a(static_cast<int>(wv.y), static_cast<int>(xv.y), acc[m]);
      acc[m] = __dp4a(static_cast<int>(wv.z), static_cast<int>(xv.z), acc[m]);
      acc[m] = __dp4a(static_cast<int>(wv.w), static_cast<int>(xv.w), acc[m]);
    }
  }
  store_scaled<M>(acc, sx, sw, y, n, N, lane);
}

template <int M>
__global__ void __launch_bounds__(kWarps * 32) gemv_fp8_kernel(const uint8_t* xq, const float* sx, const uint8_t* wq,
                                                               const float* sw, bf16* y, int N, int ld) {
  const int n = blockIdx.x * kWarps + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (n >= N) return;
  const uint4* w = reinterpret_cast<const uint4*>(wq + static_cast<int64_t>(n) * ld);
  const int chunks = ld / 16;
  float acc[M] = {};
  for (int c = lane; c < chunks; c += 32) {
    float wf[16];
    fp8x16_to_f32(__ldg(w + c), wf);
    for (int m = 0; m < M; ++m) {
      float xf[16];
      fp8x16_to_f32(__ldg(reinterpret_cast<const uint4*>(xq + static_cast<int64_t>(m) * ld) + c), xf);
      for (int i = 0; i < 16; ++i) acc[m] = fmaf(wf[i], xf[i], acc[m]);
    }
  }
  store_scaled<M>(acc, sx, sw, y, n, N, lane);
}

template <class Code>
using KernelPtr = void (*)(const Code*, const float*, const Code*, const float*, bf16*, int, int);

template <class Code, int M>
KernelPtr<Code> pick() {
  if constexpr (std::is_same_v<Code, int8_t>) return gemv_int8_kernel<M>;
  else return gemv_fp8_kernel<M>;
}

template <class Code>
void launch(const Code* xq, const float* sx, const Code* wq, const float* sw, bf16* y, int M, int N, int ld,
            cudaStream_t s) {
  LLMQ_CHECK(ld % 16 == 0, "w8a8 gemv: row length " << ld << " is not a multiple of 16");
  static const KernelPtr<Code> kernels[] = {pick<Code, 1>(), pick<Code, 2>(), pick<Code, 3>(), pick<Code, 4>(),
                                            pick<Code, 5>(), pick<Code, 6>(), pick<Code, 7>(), pick<Code, 8>()};
  LLMQ_CHECK(M >= 1 && M <= kW8A8GemvMaxM, "w8a8 gemv: M " << M);
  kernels[M - 1]<<<(N + kWarps - 1) / kWarps, kWarps * 32, 0, s>>>(xq, sx, wq, sw, y, N, ld);
  LLMQ_CUDA_CHECK_LAUNCH();
}

}  // namespace

void w8a8_gemv_int8(const int8_t* xq, const float* sx, const int8_t* wq, const float* sw, bf16* y, int M, int N,
                    int ld, cudaStream_t s) {
  launch<int8_t>(xq, sx, wq, sw, y, M, N, ld, s);
}

void w8a8_gemv_fp8(const uint8_t* xq, const float* sx, const uint8_t* wq, const float* sw, bf16* y, int M, int N,
                   int ld, cudaStream_t s) {
  launch<uint8_t>(xq, sx, wq, sw, y, M, N, ld, s);
}

}  // namespace llmq::gpu
