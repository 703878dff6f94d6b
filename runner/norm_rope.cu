// Elementwise and row kernels of the runner: RMSNorm, residual add, SwiGLU, embedding
// gather, RoPE + KV-cache append, argmax, column gather. All are memory-bound; each reads and
// writes its bytes once, with the rounding points of runner/kernels_ref.cc.
#include <cfloat>
#include <cstdint>
#include <type_traits>

#include "core/numeric.h"
#include "runner/act_quant.cuh"
#include "runner/cuda_check.h"
#include "runner/kernels.h"
#include "runner/pdl.cuh"

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

// The bf16 value RMSNorm writes for x (the reference's rounding points).
__device__ __forceinline__ bf16 normed(bf16 x, bf16 w, float inv_rms) { return b(f(w) * round_bf16(f(x) * inv_rms)); }

// One block per row. Pass 1: the residual add (if any) and the sum of squares in double (as
// the reference, so the f32 variance is nearly always its exact value); pass 2 writes y, or
// finds the amax of y and pass 3 writes the codes. Rows of up to kHeldPacks packs per thread
// (8192 values at V = 8: Llama-3.1-8B's 4096 and 70B's 8192) stay in registers between the
// passes, with their weights loaded before pdl_wait (norm weights are written only by plain
// launches); longer rows are re-read from L1 / L2.
constexpr int kHeldPacks = 4;

template <int V, class Q, class Code>
__global__ void __launch_bounds__(kRowThreads) rms_norm_kernel(RmsNormArgs a) {
  __shared__ double partial[32];
  __shared__ float fshared[32];
  const int64_t row = blockIdx.x;
  bf16* xr = a.x + row * a.n;
  const int packs = a.n / V, threads = static_cast<int>(blockDim.x);
  const bool held = packs <= kHeldPacks * threads;
  Pack<V> xh[kHeldPacks], wh[kHeldPacks];
  // fn(p, i) for this thread's packs p of a held row in order, i the registers that hold it.
  const auto held_packs = [&](auto&& fn) {
#pragma unroll
    for (int i = 0; i < kHeldPacks; ++i) {
      const int p = static_cast<int>(threadIdx.x) + i * threads;
      if (p < packs) fn(p, i);
    }
  };
  if (held) held_packs([&](int p, int i) { wh[i] = Pack<V>::load(a.w + p * V); });
  pdl_wait();
  double sum_sq = 0.0;
  const auto add_delta = [&](int p, Pack<V>& xv) {  // x += delta (written back), and the squares
    xv = Pack<V>::load(xr + p * V);
    if (a.delta) {
      const Pack<V> dv = Pack<V>::load(a.delta + row * a.n + p * V);
#pragma unroll
      for (int i = 0; i < V; ++i) xv.v[i] = b(f(xv.v[i]) + f(dv.v[i]));
      xv.store(xr + p * V);
    }
#pragma unroll
    for (int i = 0; i < V; ++i) sum_sq += static_cast<double>(f(xv.v[i])) * f(xv.v[i]);
  };
  // fn(p, x, w) for this thread's packs in order, from registers or from memory.
  const auto each_pack = [&](auto&& fn) {
    if (held) {
      held_packs([&](int p, int i) { fn(p, xh[i], wh[i]); });
    } else {
      for (int p = threadIdx.x; p < packs; p += threads) fn(p, Pack<V>::load(xr + p * V), Pack<V>::load(a.w + p * V));
    }
  };
  if (held) {
    held_packs([&](int p, int i) { add_delta(p, xh[i]); });
  } else {
    for (int p = threadIdx.x; p < packs; p += threads) {
      Pack<V> xv;
      add_delta(p, xv);
    }
  }
  sum_sq = block_sum(sum_sq, partial);
  const float variance = static_cast<float>(sum_sq / static_cast<double>(a.n));
  const float inv_rms = 1.0f / sqrtf(variance + a.eps);  // IEEE div and sqrt, as the reference
  if constexpr (std::is_void_v<Q>) {
    each_pack([&](int p, const Pack<V>& xv, const Pack<V>& wv) {
      Pack<V> yv;
#pragma unroll
      for (int i = 0; i < V; ++i) yv.v[i] = normed(xv.v[i], wv.v[i], inv_rms);
      yv.store(a.y + row * a.n + p * V);
    });
  } else {
    float amax = 0.0f;
    each_pack([&](int, const Pack<V>& xv, const Pack<V>& wv) {
#pragma unroll
      for (int i = 0; i < V; ++i) amax = fmaxf(amax, fabsf(f(normed(xv.v[i], wv.v[i], inv_rms))));
    });
    const Q q(block_max(amax, fshared));
    Code* cr = static_cast<Code*>(a.codes) + row * a.ld_codes;
    each_pack([&](int p, const Pack<V>& xv, const Pack<V>& wv) {
#pragma unroll
      for (int i = 0; i < V; ++i) cr[p * V + i] = static_cast<Code>(q(f(normed(xv.v[i], wv.v[i], inv_rms))));
    });
    if (threadIdx.x == 0) a.scales[row] = q.scale;
  }
}

// V consecutive f32 values: two 16-byte accesses when rows allow (n % 8 == 0), else one by one.
template <int V>
struct PackF {
  float v[V];
  __device__ __forceinline__ static PackF load(const float* p) {
    PackF r;
    if constexpr (V == 8) {
      *reinterpret_cast<float4*>(r.v) = *reinterpret_cast<const float4*>(p);
      *reinterpret_cast<float4*>(r.v + 4) = *reinterpret_cast<const float4*>(p + 4);
    } else {
      for (int i = 0; i < V; ++i) r.v[i] = p[i];
    }
    return r;
  }
  __device__ __forceinline__ void store(float* p) const {
    if constexpr (V == 8) {
      *reinterpret_cast<float4*>(p) = *reinterpret_cast<const float4*>(v);
      *reinterpret_cast<float4*>(p + 4) = *reinterpret_cast<const float4*>(v + 4);
    } else {
      for (int i = 0; i < V; ++i) p[i] = v[i];
    }
  }
};

// rms_norm_kernel on an f32 stream: pass 1 adds the bf16 branch in f32 (no rounding) and sums
// the squares in double (each f32 square is exact in double, so only the order differs from the
// reference); pass 2 writes the bf16 y with the reference's rounding points.
template <int V>
__global__ void __launch_bounds__(kRowThreads) rms_norm_f32_kernel(RmsNormF32Args a) {
  pdl_wait();
  __shared__ double partial[32];
  const int64_t row = blockIdx.x;
  float* xr = a.x + row * a.n;
  const int packs = a.n / V;
  double sum_sq = 0.0;
  for (int p = threadIdx.x; p < packs; p += blockDim.x) {
    PackF<V> xv = PackF<V>::load(xr + p * V);
    if (a.delta) {
      const Pack<V> dv = Pack<V>::load(a.delta + row * a.n + p * V);
#pragma unroll
      for (int i = 0; i < V; ++i) xv.v[i] += f(dv.v[i]);
      xv.store(xr + p * V);
    }
#pragma unroll
    for (int i = 0; i < V; ++i) sum_sq += static_cast<double>(xv.v[i]) * xv.v[i];
  }
  sum_sq = block_sum(sum_sq, partial);  // its barriers also order pass 1's delta reads before y (may alias)
  const float variance = static_cast<float>(sum_sq / static_cast<double>(a.n));
  const float inv_rms = 1.0f / sqrtf(variance + a.eps);  // IEEE div and sqrt, as the reference
  for (int p = threadIdx.x; p < packs; p += blockDim.x) {
    const PackF<V> xv = PackF<V>::load(xr + p * V);
    const Pack<V> wv = Pack<V>::load(a.w + p * V);
    Pack<V> yv;
#pragma unroll
    for (int i = 0; i < V; ++i) yv.v[i] = b(f(wv.v[i]) * round_bf16(xv.v[i] * inv_rms));
    yv.store(a.y + row * a.n + p * V);
  }
}

__global__ void add_bf16_to_f32_kernel(float* x, const bf16* y, int64_t n) {
  pdl_wait();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    x[i] += f(y[i]);
}

__global__ void add_kernel(bf16* x, const bf16* y, int64_t n) {
  pdl_wait();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    x[i] = b(f(x[i]) + f(y[i]));
}

__global__ void silu_mul_kernel(const bf16* gate_up, bf16* out, int rows, int inter) {
  pdl_wait();
  const int64_t n = static_cast<int64_t>(rows) * inter;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / inter, c = i % inter;
    const float g = f(gate_up[r * 2 * inter + c]);
    const float s = round_bf16(g / (1.0f + expf(-g)));
    out[i] = b(s * f(gate_up[r * 2 * inter + inter + c]));
  }
}

__device__ __forceinline__ bf16 silu_mul_pair(uint32_t gu) {  // (gate, up) of one column: the low half is the gate
  const float g = f(static_cast<bf16>(gu & 0xFFFFu));
  const float s = round_bf16(g / (1.0f + expf(-g)));
  return b(s * f(static_cast<bf16>(gu >> 16)));
}

// Four columns per thread and step (a 16-byte load, an 8-byte store) when the buffers allow,
// else one: with 4-byte loads the prefill's SwiGLU ran at about 60% of HBM bandwidth.
template <int V>
__global__ void silu_mul_pairs_kernel(const uint32_t* gate_up, bf16* out, int64_t n) {
  pdl_wait();
  for (int64_t i = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) * V; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x * V) {
    if constexpr (V == 4) {
      const uint4 gu = *reinterpret_cast<const uint4*>(gate_up + i);
      const bf16 y[4] = {silu_mul_pair(gu.x), silu_mul_pair(gu.y), silu_mul_pair(gu.z), silu_mul_pair(gu.w)};
      *reinterpret_cast<uint2*>(out + i) = *reinterpret_cast<const uint2*>(y);
    } else {
      out[i] = silu_mul_pair(gate_up[i]);
    }
  }
}

__global__ void embed_kernel(const bf16* table, const int32_t* ids, bf16* out, int n) {
  pdl_wait();
  const bf16* src = table + static_cast<int64_t>(ids[blockIdx.x]) * n;
  bf16* dst = out + static_cast<int64_t>(blockIdx.x) * n;
  for (int i = threadIdx.x; i < n; i += blockDim.x) dst[i] = src[i];
}

// Block (r, y) takes V-pair groups y * 256 .. y * 256 + 255 of fused qkv row r's (head,
// i < hd/2) pairs, one group per thread: q and k heads rotate the pairs (i, i + hd/2) in place
// (k also into the cache), v heads copy them to the cache. V = 8 (16-byte accesses) where
// hd/2 allows: with one pair per thread (2-byte accesses) the batch-64 prefill spent 0.88 ms
// per layer here, 5x its bytes' worth. (A block per (row, head) of hd/2 threads made prefill
// launch 48 blocks of 64 threads per row at 8B: 61 ms, 7% of a batch-64 prefill. A block per
// row looping over its 3072 pairs halved that but cost decode 0.15 ms per step, one block per
// token doing the work of 48.)
template <int V>
__global__ void __launch_bounds__(kRowThreads) rope_cache_kernel(RopeCacheArgs a) {
  pdl_wait();
  const int r = blockIdx.x, half = a.hd / 2, heads = a.n_q + 2 * a.n_kv, groups = half / V;
  const int j = blockIdx.y * blockDim.x + threadIdx.x;
  if (j >= heads * groups) return;
  const int h = j / groups, i = j % groups * V;
  bf16* v = a.qkv + static_cast<int64_t>(r) * heads * a.hd + static_cast<int64_t>(h) * a.hd + i;
  const int kv_dim = a.n_kv * a.hd;
  const int64_t slot = (static_cast<int64_t>(a.seq[r]) * a.capacity + a.pos[r]) * kv_dim;
  Pack<V> lo = Pack<V>::load(v), hi = Pack<V>::load(v + half);
  if (h >= a.n_q + a.n_kv) {  // v head
    bf16* dst = a.v_cache + slot + (h - a.n_q - a.n_kv) * a.hd + i;
    lo.store(dst);
    hi.store(dst + half);
    return;
  }
  const PackF<V> c = PackF<V>::load(a.cos + static_cast<int64_t>(a.pos[r]) * half + i);
  const PackF<V> s = PackF<V>::load(a.sin + static_cast<int64_t>(a.pos[r]) * half + i);
#pragma unroll
  for (int k = 0; k < V; ++k) {
    const float x1 = f(lo.v[k]), x2 = f(hi.v[k]);
    lo.v[k] = b(round_bf16(x1 * c.v[k]) + round_bf16(-x2 * s.v[k]));
    hi.v[k] = b(round_bf16(x2 * c.v[k]) + round_bf16(x1 * s.v[k]));
  }
  lo.store(v);
  hi.store(v + half);
  if (h >= a.n_q) {  // k head
    bf16* dst = a.k_cache + slot + (h - a.n_q) * a.hd + i;
    lo.store(dst);
    hi.store(dst + half);
  }
}

// Argmax keys: larger key = larger logit, then smaller index. -0 is folded into +0 (the
// reference compares with >, so they tie).
__device__ __forceinline__ unsigned long long argmax_key(float v, int i) {
  const uint32_t u = __float_as_uint(v + 0.0f);
  const uint32_t ordered = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return (static_cast<unsigned long long>(ordered) << 32) | (0xFFFFFFFFu - static_cast<uint32_t>(i));
}

struct ArgmaxWorkspace {
  unsigned long long* best;  // [rows]
  unsigned int* arrived;     // [rows]
};

constexpr int kArgmaxChunk = kRowThreads * 8;  // vocabulary entries per block

// Block (chunk, row): the chunk's best key; the last block of a row to arrive writes the
// index and clears the row's workspace for the next call. Each thread's loads are strided by
// the block width (coalesced); the key order makes the visiting order irrelevant.
__global__ void __launch_bounds__(kRowThreads) argmax_kernel(const bf16* logits, int32_t* out, int vocab, int chunk,
                                                               ArgmaxWorkspace ws) {
  pdl_wait();
  __shared__ unsigned long long shared[kRowThreads / 32];
  const int row = blockIdx.y;
  const bf16* l = logits + static_cast<int64_t>(row) * vocab;
  unsigned long long best = 0;
  const int begin = blockIdx.x * chunk, end = min(vocab, begin + chunk);
  for (int i = begin + threadIdx.x; i < end; i += kRowThreads) best = max(best, argmax_key(f(l[i]), i));
  for (int o = 16; o > 0; o >>= 1) best = max(best, __shfl_xor_sync(0xffffffffu, best, o));
  if (threadIdx.x % 32 == 0) shared[threadIdx.x / 32] = best;
  __syncthreads();
  if (threadIdx.x != 0) return;
  for (int w = 1; w < kRowThreads / 32; ++w) best = max(best, shared[w]);
  if (gridDim.x == 1) {
    out[row] = static_cast<int32_t>(0xFFFFFFFFu - static_cast<uint32_t>(best));
    return;
  }
  atomicMax(&ws.best[row], best);
  __threadfence();
  if (atomicAdd(&ws.arrived[row], 1u) == gridDim.x - 1) {
    const unsigned long long final_best = atomicExch(&ws.best[row], 0ull);
    out[row] = static_cast<int32_t>(0xFFFFFFFFu - static_cast<uint32_t>(final_best));
    ws.arrived[row] = 0;
  }
}

__global__ void gather_columns_kernel(const bf16* x, const int32_t* perm, bf16* x_out, int K) {
  pdl_wait();
  const bf16* src = x + static_cast<int64_t>(blockIdx.x) * K;
  bf16* dst = x_out + static_cast<int64_t>(blockIdx.x) * K;
  for (int j = threadIdx.x; j < K; j += blockDim.x) dst[j] = src[perm[j]];
}

int grid_for(int64_t n) {
  const int64_t blocks = (n + kRowThreads - 1) / kRowThreads;
  return static_cast<int>(blocks < 65535 ? (blocks > 0 ? blocks : 1) : 65535);
}

}  // namespace

void rms_norm(const RmsNormArgs& a, cudaStream_t s) {
  if (a.rows == 0) return;
  const auto launch = [&](auto kernel) {
    launch_pdl(kernel, dim3(a.rows), dim3(kRowThreads), 0, s, a);
    LLMQ_CUDA_CHECK_LAUNCH();
  };
  const bool vec = a.n % 8 == 0;
  switch (a.quant) {
    case ActQuant::kNone:
      LLMQ_CHECK(a.y != nullptr, "rms_norm: no output");
      return vec ? launch(rms_norm_kernel<8, void, void>) : launch(rms_norm_kernel<1, void, void>);
    case ActQuant::kFp8:
      return vec ? launch(rms_norm_kernel<8, Fp8TokenQuant, uint8_t>) : launch(rms_norm_kernel<1, Fp8TokenQuant, uint8_t>);
    case ActQuant::kInt8:
      return vec ? launch(rms_norm_kernel<8, Int8TokenQuant, int8_t>) : launch(rms_norm_kernel<1, Int8TokenQuant, int8_t>);
  }
}

void rms_norm(const bf16* x, const bf16* w, bf16* y, int rows, int n, float eps, cudaStream_t s) {
  RmsNormArgs a;
  a.x = const_cast<bf16*>(x);  // read only: no delta
  a.w = w;
  a.rows = rows;
  a.n = n;
  a.eps = eps;
  a.y = y;
  rms_norm(a, s);
}

void rms_norm_f32(const RmsNormF32Args& a, cudaStream_t s) {
  if (a.rows == 0) return;
  LLMQ_CHECK(a.y != nullptr && a.w != nullptr, "rms_norm_f32: no weight or output");
  if (a.n % 8 == 0) launch_pdl(rms_norm_f32_kernel<8>, dim3(a.rows), dim3(kRowThreads), 0, s, a);
  else launch_pdl(rms_norm_f32_kernel<1>, dim3(a.rows), dim3(kRowThreads), 0, s, a);
  LLMQ_CUDA_CHECK_LAUNCH();
}

void add_bf16_to_f32(float* x, const bf16* y, int64_t n, cudaStream_t s) {
  if (n == 0) return;
  launch_pdl(add_bf16_to_f32_kernel, dim3(grid_for(n)), dim3(kRowThreads), 0, s, x, y, n);
  LLMQ_CUDA_CHECK_LAUNCH();
}

void add_inplace(bf16* x, const bf16* y, int64_t n, cudaStream_t s) {
  if (n == 0) return;
  launch_pdl(add_kernel, dim3(grid_for(n)), dim3(kRowThreads), 0, s, x, y, n);
  LLMQ_CUDA_CHECK_LAUNCH();
}

void silu_mul(const bf16* gate_up, bf16* out, int rows, int inter, cudaStream_t s) {
  if (rows == 0) return;
  launch_pdl(silu_mul_kernel, dim3(grid_for(static_cast<int64_t>(rows) * inter)), dim3(kRowThreads), 0, s, gate_up, out, rows, inter);
  LLMQ_CUDA_CHECK_LAUNCH();
}

void silu_mul_pairs(const bf16* gate_up, bf16* out, int rows, int inter, cudaStream_t s) {
  const int64_t n = static_cast<int64_t>(rows) * inter;
  if (n == 0) return;
  const auto* pairs = reinterpret_cast<const uint32_t*>(gate_up);
  const bool vec = n % 4 == 0 && reinterpret_cast<uintptr_t>(gate_up) % 16 == 0 && reinterpret_cast<uintptr_t>(out) % 8 == 0;
  if (vec) launch_pdl(silu_mul_pairs_kernel<4>, dim3(grid_for(n / 4)), dim3(kRowThreads), 0, s, pairs, out, n);
  else launch_pdl(silu_mul_pairs_kernel<1>, dim3(grid_for(n)), dim3(kRowThreads), 0, s, pairs, out, n);
  LLMQ_CUDA_CHECK_LAUNCH();
}

void embed(const bf16* table, const int32_t* ids, bf16* out, int rows, int n, cudaStream_t s) {
  if (rows == 0) return;
  launch_pdl(embed_kernel, dim3(rows), dim3(kRowThreads), 0, s, table, ids, out, n);
  LLMQ_CUDA_CHECK_LAUNCH();
}

void rope_and_cache(const RopeCacheArgs& a, cudaStream_t s) {
  if (a.rows == 0) return;
  LLMQ_CHECK(a.hd % 2 == 0, "head_dim " << a.hd);
  // 16-byte accesses need hd / 2 % 8 == 0 (then every offset is a multiple of 8 elements)
  // and aligned buffers.
  const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  const bool vec = a.hd / 2 % 8 == 0 && aligned(a.qkv) && aligned(a.cos) && aligned(a.sin) && aligned(a.k_cache) &&
                   aligned(a.v_cache);
  const int groups = (a.n_q + 2 * a.n_kv) * (a.hd / 2) / (vec ? 8 : 1);
  const dim3 grid(a.rows, (groups + kRowThreads - 1) / kRowThreads);
  if (vec) launch_pdl(rope_cache_kernel<8>, grid, dim3(kRowThreads), 0, s, a);
  else launch_pdl(rope_cache_kernel<1>, grid, dim3(kRowThreads), 0, s, a);
  LLMQ_CUDA_CHECK_LAUNCH();
}

size_t argmax_workspace_bytes(int rows) { return static_cast<size_t>(rows) * (sizeof(unsigned long long) + sizeof(unsigned)); }

void argmax_rows(const bf16* logits, int32_t* out, int rows, int vocab, void* workspace, cudaStream_t s) {
  if (rows == 0) return;
  LLMQ_CHECK(vocab >= 1, "argmax: empty rows");
  const int chunks = workspace ? (vocab + kArgmaxChunk - 1) / kArgmaxChunk : 1;
  ArgmaxWorkspace ws{static_cast<unsigned long long*>(workspace), nullptr};
  if (workspace) ws.arrived = reinterpret_cast<unsigned*>(ws.best + rows);
  // One chunk (no workspace, or a small vocabulary): the block takes the whole row.
  launch_pdl(argmax_kernel, dim3(chunks, rows), dim3(kRowThreads), 0, s, logits, out, vocab, chunks == 1 ? vocab : kArgmaxChunk, ws);
  LLMQ_CUDA_CHECK_LAUNCH();
}

void gather_columns(const bf16* x, const int32_t* perm, bf16* x_out, int M, int K, cudaStream_t s) {
  if (M == 0) return;
  launch_pdl(gather_columns_kernel, dim3(M), dim3(kRowThreads), 0, s, x, perm, x_out, K);
  LLMQ_CUDA_CHECK_LAUNCH();
}

}  // namespace llmq::gpu
