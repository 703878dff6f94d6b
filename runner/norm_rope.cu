// Elementwise and row kernels of the runner: RMSNorm, residual add, SwiGLU, embedding
// gather, RoPE + KV-cache append, argmax, column gather. All are memory-bound; each reads and
// writes its bytes once, with the rounding points of runner/kernels_ref.cc.
#include <cfloat>

#include "core/numeric.h"
#include "runner/cuda_check.h"
#include "runner/kernels.h"

namespace llmq::gpu {
namespace {

constexpr int kRowThreads = 256;

__device__ __forceinline__ float f(bf16 v) { return bf16_to_f32(v); }
__device__ __forceinline__ bf16 b(float v) { return f32_to_bf16(v); }
__device__ __forceinline__ float round_bf16(float v) { return bf16_to_f32(f32_to_bf16(v)); }

template <class T>
__device__ T block_sum(T v, T* shared /* [32] */) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  const int warps = (blockDim.x + 31) / 32;
  T total = 0;
  for (int i = 0; i < warps; ++i) total += shared[i];
  __syncthreads();
  return total;
}

__global__ void rms_norm_kernel(const bf16* x, const bf16* w, bf16* y, int n, float eps) {
  __shared__ double partial[32];
  const bf16* xr = x + static_cast<int64_t>(blockIdx.x) * n;
  bf16* yr = y + static_cast<int64_t>(blockIdx.x) * n;
  double sum_sq = 0.0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) sum_sq += static_cast<double>(f(xr[i])) * f(xr[i]);
  sum_sq = block_sum(sum_sq, partial);
  const float variance = static_cast<float>(sum_sq / static_cast<double>(n));
  const float inv_rms = 1.0f / sqrtf(variance + eps);  // IEEE div and sqrt, as the reference
  for (int i = threadIdx.x; i < n; i += blockDim.x) yr[i] = b(f(w[i]) * round_bf16(f(xr[i]) * inv_rms));
}

__global__ void add_kernel(bf16* x, const bf16* y, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    x[i] = b(f(x[i]) + f(y[i]));
}

__global__ void silu_mul_kernel(const bf16* gate_up, bf16* out, int rows, int inter) {
  const int64_t n = static_cast<int64_t>(rows) * inter;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / inter, c = i % inter;
    const float g = f(gate_up[r * 2 * inter + c]);
    const float s = round_bf16(g / (1.0f + expf(-g)));
    out[i] = b(s * f(gate_up[r * 2 * inter + inter + c]));
  }
}

__global__ void embed_kernel(const bf16* table, const int32_t* ids, bf16* out, int n) {
  const bf16* src = table + static_cast<int64_t>(ids[blockIdx.x]) * n;
  bf16* dst = out + static_cast<int64_t>(blockIdx.x) * n;
  for (int i = threadIdx.x; i < n; i += blockDim.x) dst[i] = src[i];
}

// One block per row: each thread rotates pairs (i, i + hd/2) of the q and k heads, then the
// row's K and V are copied to the cache.
__global__ void rope_cache_kernel(RopeCacheArgs a) {
  const int r = blockIdx.x;
  const int half = a.hd / 2;
  const int width = (a.n_q + 2 * a.n_kv) * a.hd;
  bf16* row = a.qkv + static_cast<int64_t>(r) * width;
  const float* c = a.cos + static_cast<int64_t>(a.pos[r]) * half;
  const float* s = a.sin + static_cast<int64_t>(a.pos[r]) * half;
  const int pairs = (a.n_q + a.n_kv) * half;
  for (int p = threadIdx.x; p < pairs; p += blockDim.x) {
    const int h = p / half, i = p % half;
    bf16* v = row + h * a.hd;
    const float x1 = f(v[i]), x2 = f(v[i + half]);
    v[i] = b(round_bf16(x1 * c[i]) + round_bf16(-x2 * s[i]));
    v[i + half] = b(round_bf16(x2 * c[i]) + round_bf16(x1 * s[i]));
  }
  __syncthreads();
  const int kv_dim = a.n_kv * a.hd;
  const int64_t dst = (static_cast<int64_t>(a.seq[r]) * a.capacity + a.pos[r]) * kv_dim;
  for (int i = threadIdx.x; i < kv_dim; i += blockDim.x) {
    a.k_cache[dst + i] = row[a.n_q * a.hd + i];
    a.v_cache[dst + i] = row[(a.n_q + a.n_kv) * a.hd + i];
  }
}

__global__ void argmax_kernel(const bf16* logits, int32_t* out, int vocab) {
  __shared__ float best_v[kRowThreads];
  __shared__ int best_i[kRowThreads];
  const bf16* l = logits + static_cast<int64_t>(blockIdx.x) * vocab;
  float bv = -FLT_MAX;
  int bi = vocab;  // larger than any index, so a real value always wins a tie break
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float v = f(l[i]);
    if (v > bv) bv = v, bi = i;  // strided order: the first maximum of this thread's indices
  }
  best_v[threadIdx.x] = bv;
  best_i[threadIdx.x] = bi;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) {
      const float ov = best_v[threadIdx.x + stride];
      const int oi = best_i[threadIdx.x + stride];
      if (ov > best_v[threadIdx.x] || (ov == best_v[threadIdx.x] && oi < best_i[threadIdx.x]))
        best_v[threadIdx.x] = ov, best_i[threadIdx.x] = oi;
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = best_i[0] < vocab ? best_i[0] : 0;
}

__global__ void gather_columns_kernel(const bf16* x, const int32_t* perm, bf16* x_out, int K) {
  const bf16* src = x + static_cast<int64_t>(blockIdx.x) * K;
  bf16* dst = x_out + static_cast<int64_t>(blockIdx.x) * K;
  for (int j = threadIdx.x; j < K; j += blockDim.x) dst[j] = src[perm[j]];
}

int grid_for(int64_t n) {
  const int64_t blocks = (n + kRowThreads - 1) / kRowThreads;
  return static_cast<int>(blocks < 65535 ? (blocks > 0 ? blocks : 1) : 65535);
}

}  // namespace

void rms_norm(const bf16* x, const bf16* w, bf16* y, int rows, int n, float eps, cudaStream_t s) {
  if (rows == 0) return;
  rms_norm_kernel<<<rows, kRowThreads, 0, s>>>(x, w, y, n, eps);
  LLMQ_CUDA_CHECK_LAUNCH();
}

void add_inplace(bf16* x, const bf16* y, int64_t n, cudaStream_t s) {
  if (n == 0) return;
  add_kernel<<<grid_for(n), kRowThreads, 0, s>>>(x, y, n);
  LLMQ_CUDA_CHECK_LAUNCH();
}

void silu_mul(const bf16* gate_up, bf16* out, int rows, int inter, cudaStream_t s) {
  if (rows == 0) return;
  silu_mul_kernel<<<grid_for(static_cast<int64_t>(rows) * inter), kRowThreads, 0, s>>>(gate_up, out, rows, inter);
  LLMQ_CUDA_CHECK_LAUNCH();
}

void embed(const bf16* table, const int32_t* ids, bf16* out, int rows, int n, cudaStream_t s) {
  if (rows == 0) return;
  embed_kernel<<<rows, kRowThreads, 0, s>>>(table, ids, out, n);
  LLMQ_CUDA_CHECK_LAUNCH();
}

void rope_and_cache(const RopeCacheArgs& a, cudaStream_t s) {
  if (a.rows == 0) return;
  LLMQ_CHECK(a.hd % 2 == 0, "head_dim " << a.hd);
  rope_cache_kernel<<<a.rows, 128, 0, s>>>(a);
  LLMQ_CUDA_CHECK_LAUNCH();
}

void argmax_rows(const bf16* logits, int32_t* out, int rows, int vocab, cudaStream_t s) {
  if (rows == 0) return;
  argmax_kernel<<<rows, kRowThreads, 0, s>>>(logits, out, vocab);
  LLMQ_CUDA_CHECK_LAUNCH();
}

void gather_columns(const bf16* x, const int32_t* perm, bf16* x_out, int M, int K, cudaStream_t s) {
  if (M == 0) return;
  gather_columns_kernel<<<M, kRowThreads, 0, s>>>(x, perm, x_out, K);
  LLMQ_CUDA_CHECK_LAUNCH();
}

}  // namespace llmq::gpu
