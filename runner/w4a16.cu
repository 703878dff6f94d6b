// W4A16 kernels (layouts and method in runner/w4a16.h): the tensor-core GEMV, the CUDA-core
// GEMV for layouts it cannot take, and the dequantization of the large-M path.
#include <cuda_fp16.h>

#include "core/numeric.h"
#include "runner/cuda_check.h"
#include "runner/gemv.h"
#include "runner/kernels.h"
#include "runner/w4a16.h"

namespace llmq::gpu {
namespace {

constexpr int kWarps = 8;           // warps per block of the GEMV
constexpr int kRowsPerWarp = 4;     // output rows per warp: each x load is reused 4 times
constexpr int kTokensPerPass = 8;   // token rows per pass over the weights
constexpr float kMagic = 8388608.0f;  // 2^23: float(0x4B000000 | c) == 2^23 + c

template <bool kF16>
__device__ __forceinline__ float scale_of(uint32_t param) {
  return kF16 ? __half2float(__ushort_as_half(static_cast<unsigned short>(param & 0xFFFFu)))
              : __uint_as_float(param << 16);
}

__device__ __forceinline__ void unpack8(const uint4& u, float* out) {
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    out[2 * i] = __uint_as_float(w[i] << 16);
    out[2 * i + 1] = __uint_as_float(w[i] & 0xFFFF0000u);
  }
}

// Grid: x over groups of kWarps * kRowsPerWarp output rows, y over passes of MT token rows.
// Lane l of a warp takes words l, l + 32, ... of its rows; the warp sums at the end.
template <int MT, bool kF16>
__global__ void __launch_bounds__(kWarps * 32) gemv_kernel(const uint32_t* __restrict__ packed,
                                                           const uint32_t* __restrict__ params,
                                                           const uint16_t* __restrict__ x, uint16_t* __restrict__ y,
                                                           int M, int N, int K, int group_words, int G) {
  const int lane = threadIdx.x % 32;
  const int n0 = (blockIdx.x * kWarps + threadIdx.x / 32) * kRowsPerWarp;
  const int m0 = blockIdx.y * MT;
  if (n0 >= N) return;
  const int words = K / 8;
  float acc[kRowsPerWarp][MT];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
    for (int m = 0; m < MT; ++m) acc[r][m] = 0.0f;

#pragma unroll 2
  for (int j = lane; j < words; j += 32) {
    uint32_t w[kRowsPerWarp], p[kRowsPerWarp];
    const int g = j / group_words;
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int n = min(n0 + r, N - 1);  // rows past N recompute row N-1 and are not stored
      w[r] = __ldg(packed + static_cast<int64_t>(n) * words + j);
      p[r] = __ldg(params + static_cast<int64_t>(n) * G + g);
    }
    float xv[MT][8];
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      if (m0 + m < M)
        unpack8(__ldg(reinterpret_cast<const uint4*>(x + static_cast<int64_t>(m0 + m) * K) + j), xv[m]);
      else
#pragma unroll
        for (int i = 0; i < 8; ++i) xv[m][i] = 0.0f;
    }
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const float zb = kMagic + static_cast<float>((p[r] >> 16) & 0xFu);
      float part[MT];
#pragma unroll
      for (int m = 0; m < MT; ++m) part[m] = 0.0f;
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const float c = __uint_as_float(0x4B000000u | ((w[r] >> (4 * i)) & 0xFu)) - zb;  // code - zero, exact
#pragma unroll
        for (int m = 0; m < MT; ++m) part[m] = fmaf(xv[m][i], c, part[m]);
      }
      const float s = scale_of<kF16>(p[r]);
#pragma unroll
      for (int m = 0; m < MT; ++m) acc[r][m] = fmaf(part[m], s, acc[r][m]);
    }
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) acc[r][m] += __shfl_xor_sync(0xffffffffu, acc[r][m], o);
  if (lane == 0) {
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
      for (int m = 0; m < MT; ++m)
        if (n0 + r < N && m0 + m < M) y[static_cast<int64_t>(m0 + m) * N + n0 + r] = f32_to_bf16(acc[r][m]);
  }
}

// One thread per packed word: 8 bf16 weights written as one 16-byte store.
template <bool kF16>
__global__ void dequant_kernel(const uint32_t* __restrict__ packed, const uint32_t* __restrict__ params,
                               uint16_t* __restrict__ out, int N, int K, int group_words, int G) {
  const int words = K / 8;
  const int64_t total = static_cast<int64_t>(N) * words;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = i / words;
    const int j = static_cast<int>(i % words);
    const uint32_t w = packed[i];
    const uint32_t p = params[n * G + j / group_words];
    const float s = scale_of<kF16>(p);
    const float zb = kMagic + static_cast<float>((p >> 16) & 0xFu);
    uint32_t h[4];
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const float lo = (__uint_as_float(0x4B000000u | ((w >> (8 * q)) & 0xFu)) - zb) * s;
      const float hi = (__uint_as_float(0x4B000000u | ((w >> (8 * q + 4)) & 0xFu)) - zb) * s;
      h[q] = static_cast<uint32_t>(f32_to_bf16(lo)) | (static_cast<uint32_t>(f32_to_bf16(hi)) << 16);
    }
    reinterpret_cast<uint4*>(out)[i] = make_uint4(h[0], h[1], h[2], h[3]);
  }
}

// ---- tensor-core path (layout in runner/w4a16.h) ------------------------------------------

constexpr int kMmaWarps = 8;  // K slices of one 16-row tile, summed in shared memory

__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// bf16x2 a - b (exact here: small integers), as a · 1 + (-b) because fma.rn.bf16x2 exists on
// sm_80 while sub.bf16x2 needs sm_90.
__device__ __forceinline__ uint32_t hsub2_bf16(uint32_t a, uint32_t b) {
  uint32_t d;
  asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(0x3F803F80u), "r"(b ^ 0x80008000u));
  return d;
}

// bf16x2 (128 + zero, 128 + zero): 128 is 0x4300 and 128 + z (z < 16) only sets mantissa bits.
__device__ __forceinline__ uint32_t zero_pair(uint32_t param) {
  const uint32_t h = 0x4300u | ((param >> 16) & 0xFu);
  return h | (h << 16);
}

// Stores a 16-row tile's f32 sums out[token][row] (rows tile*16..) as bf16 through the
// GEMV epilogue (runner/gemv.h): plain, plus the residual, or SwiGLU of row pairs (2i, 2i+1;
// the tile holds 8 whole pairs, y is [M, N/2]).
template <int TOKENS>
__device__ void store_tile(const float (&out)[TOKENS][16], int tile, int M, int N, uint16_t* y, const GemvEpilogue& epi) {
  if (epi.swiglu) {
    const int half_n = N / 2;
    for (int e = threadIdx.x; e < TOKENS * 8; e += blockDim.x) {
      const int tok = e / 8, pair = tile * 8 + e % 8;
      if (tok >= M || pair >= half_n) continue;
      const float g = bf16_to_f32(f32_to_bf16(out[tok][2 * (e % 8)]));
      const float u = bf16_to_f32(f32_to_bf16(out[tok][2 * (e % 8) + 1]));
      const float silu = bf16_to_f32(f32_to_bf16(g / (1.0f + expf(-g))));
      y[static_cast<int64_t>(tok) * half_n + pair] = f32_to_bf16(silu * u);
    }
    return;
  }
  for (int e = threadIdx.x; e < TOKENS * 16; e += blockDim.x) {
    const int tok = e / 16, row = tile * 16 + e % 16;
    if (tok >= M || row >= N) continue;
    const int64_t at = static_cast<int64_t>(tok) * N + row;
    const uint16_t o = f32_to_bf16(out[tok][e % 16]);
    y[at] = epi.residual ? f32_to_bf16(bf16_to_f32(epi.residual[at]) + bf16_to_f32(o)) : o;
  }
}

// Grid: one block per 16-row tile. Warp w takes 64-column chunks w, w + 8, ...; loads of up
// to four chunks are issued before their MMAs so each lane keeps 64 bytes in flight.
// TG groups of 8 token rows (M <= 8 TG).
template <int TG, bool kF16>
__global__ void __launch_bounds__(kMmaWarps * 32) mma_kernel(const uint4* __restrict__ packed,
                                                             const uint32_t* __restrict__ params,
                                                             const uint16_t* __restrict__ x, uint16_t* __restrict__ y,
                                                             int M, int N, int K, int group_size, int G,
                                                             GemvEpilogue epi) {
  __shared__ float partial[kMmaWarps][TG][32][4];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int tile = blockIdx.x;
  const int chunks = K / 64;
  const int ra = tile * 16 + lane / 4, rb = ra + 8;
  const uint4* base = packed + static_cast<int64_t>(tile) * chunks * 32 + lane;
  float acc[TG][4];
#pragma unroll
  for (int g = 0; g < TG; ++g)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[g][i] = 0.0f;

  for (int c0 = warp; c0 < chunks; c0 += 4 * kMmaWarps) {
    uint4 wv[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const int c = c0 + u * kMmaWarps;
      if (c < chunks) wv[u] = __ldg(base + static_cast<int64_t>(c) * 32);
    }
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const int c = c0 + u * kMmaWarps;
      if (c >= chunks) break;
      const int grp = c * 64 / group_size;
      const uint32_t pa = __ldg(params + static_cast<int64_t>(ra) * G + grp);
      const uint32_t pb = __ldg(params + static_cast<int64_t>(rb) * G + grp);
      const uint32_t za = zero_pair(pa), zb = zero_pair(pb);
      float part[TG][4];
#pragma unroll
      for (int g = 0; g < TG; ++g)
#pragma unroll
        for (int i = 0; i < 4; ++i) part[g][i] = 0.0f;
      const uint32_t words[4] = {wv[u].x, wv[u].y, wv[u].z, wv[u].w};
#pragma unroll
      for (int s = 0; s < 4; ++s) {
        uint32_t a[4];
#pragma unroll
        for (int i = 0; i < 4; ++i)
          a[i] = hsub2_bf16(((words[s] >> (4 * i)) & 0x000F000Fu) | 0x43004300u, (i % 2 == 0) ? za : zb);
        const int k = c * 64 + s * 16 + 2 * (lane % 4);
#pragma unroll
        for (int g = 0; g < TG; ++g) {
          const int tok = g * 8 + lane / 4;
          uint32_t b0 = 0, b1 = 0;
          if (tok < M) {
            const uint32_t* xr = reinterpret_cast<const uint32_t*>(x + static_cast<int64_t>(tok) * K + k);
            b0 = __ldg(xr);
            b1 = __ldg(xr + 4);  // k + 8
          }
          mma_bf16(part[g], a, b0, b1);
        }
      }
      const float sa = scale_of<kF16>(pa), sb = scale_of<kF16>(pb);
#pragma unroll
      for (int g = 0; g < TG; ++g) {
        acc[g][0] = fmaf(part[g][0], sa, acc[g][0]);
        acc[g][1] = fmaf(part[g][1], sa, acc[g][1]);
        acc[g][2] = fmaf(part[g][2], sb, acc[g][2]);
        acc[g][3] = fmaf(part[g][3], sb, acc[g][3]);
      }
    }
  }
#pragma unroll
  for (int g = 0; g < TG; ++g)
#pragma unroll
    for (int i = 0; i < 4; ++i) partial[warp][g][lane][i] = acc[g][i];
  __syncthreads();
  // C fragment: {c0 c1} row l/4, tokens 2(l%4) + {0, 1}; {c2 c3} row l/4 + 8. The warps' sums
  // go to out[token][row of the tile] so the epilogue sees whole (gate, up) row pairs.
  __shared__ float out[TG * 8][16];
  for (int e = threadIdx.x; e < TG * 32 * 4; e += blockDim.x) {
    const int g = e / 128, l = (e / 4) % 32, i = e % 4;
    float sum = 0.0f;
#pragma unroll
    for (int w = 0; w < kMmaWarps; ++w) sum += partial[w][g][l][i];
    out[g * 8 + 2 * (l % 4) + (i % 2)][l / 4 + (i >= 2 ? 8 : 0)] = sum;
  }
  __syncthreads();
  store_tile(out, tile, M, N, y, epi);
}

// Dequantization from the tensor-core layout: one thread per lane-uint4 (32 codes).
template <bool kF16>
__global__ void mma_dequant_kernel(const uint4* __restrict__ packed, const uint32_t* __restrict__ params,
                                   uint16_t* __restrict__ out, int N, int K, int group_size, int G) {
  const int chunks = K / 64;
  const int64_t total = static_cast<int64_t>((N + 15) / 16) * chunks * 32;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int lane = static_cast<int>(i % 32);
    const int c = static_cast<int>((i / 32) % chunks);
    const int tile = static_cast<int>(i / (32 * chunks));
    const uint4 v = packed[i];
    const uint32_t words[4] = {v.x, v.y, v.z, v.w};
    const int ra = tile * 16 + lane / 4, rb = ra + 8;
    const int grp = c * 64 / group_size;
    const uint32_t pr[2] = {params[static_cast<int64_t>(ra) * G + grp], params[static_cast<int64_t>(rb) * G + grp]};
    for (int s = 0; s < 4; ++s)
      for (int p = 0; p < 4; ++p) {
        const int row = (p % 2 == 0) ? ra : rb;
        if (row >= N) continue;
        const int col = c * 64 + s * 16 + 2 * (lane % 4) + (p >= 2 ? 8 : 0);
        const float sc = scale_of<kF16>(pr[p % 2]);
        const float z = static_cast<float>((pr[p % 2] >> 16) & 0xFu);
        const float lo = (static_cast<float>((words[s] >> (4 * p)) & 0xFu) - z) * sc;
        const float hi = (static_cast<float>((words[s] >> (16 + 4 * p)) & 0xFu) - z) * sc;
        *reinterpret_cast<uint32_t*>(out + static_cast<int64_t>(row) * K + col) =
            static_cast<uint32_t>(f32_to_bf16(lo)) | (static_cast<uint32_t>(f32_to_bf16(hi)) << 16);
      }
  }
}

template <int TG>
void launch_mma(const W4A16Weights& w, const uint16_t* x, uint16_t* y, int M, const GemvEpilogue& epi, cudaStream_t s) {
  const dim3 grid((w.N + 15) / 16);
  const auto* packed = w.packed.as<const uint4>();
  const auto* params = w.params.as<const uint32_t>();
  if (w.scale_f16)
    mma_kernel<TG, true><<<grid, kMmaWarps * 32, 0, s>>>(packed, params, x, y, M, w.N, w.K, w.group_size, w.G, epi);
  else
    mma_kernel<TG, false><<<grid, kMmaWarps * 32, 0, s>>>(packed, params, x, y, M, w.N, w.K, w.group_size, w.G, epi);
  LLMQ_CUDA_CHECK_LAUNCH();
}

template <int MT>
void launch_gemv(const W4A16Weights& w, const uint16_t* x, uint16_t* y, int M, cudaStream_t s) {
  const int rows_per_block = kWarps * kRowsPerWarp;
  const dim3 grid((w.N + rows_per_block - 1) / rows_per_block, (M + MT - 1) / MT);
  const auto* packed = w.packed.as<const uint32_t>();
  const auto* params = w.params.as<const uint32_t>();
  if (w.scale_f16)
    gemv_kernel<MT, true><<<grid, kWarps * 32, 0, s>>>(packed, params, x, y, M, w.N, w.K, w.group_size / 8, w.G);
  else
    gemv_kernel<MT, false><<<grid, kWarps * 32, 0, s>>>(packed, params, x, y, M, w.N, w.K, w.group_size / 8, w.G);
  LLMQ_CUDA_CHECK_LAUNCH();
}

}  // namespace

W4A16Weights W4A16Weights::upload(const W4A16Layout& l) {
  W4A16Weights w;
  w.N = static_cast<int>(l.out_features);
  w.K = static_cast<int>(l.in_features);
  w.group_size = static_cast<int>(l.group_size);
  w.G = static_cast<int>(l.num_groups);
  w.scale_f16 = l.scale_f16;
  w.mma = l.mma;
  w.packed = DeviceBuffer::from_host(l.packed);
  w.params = DeviceBuffer::from_host(l.params);
  if (!l.perm.empty()) w.perm = DeviceBuffer::from_host(l.perm);
  return w;
}

void w4a16_gemv(const W4A16Weights& w, const uint16_t* x, uint16_t* y, int M, cudaStream_t s, const GemvEpilogue& epi) {
  if (M == 0) return;
  if (w.mma) {
    LLMQ_CHECK(M <= kW4A16GemvMaxM, "W4A16 tensor-core GEMV takes at most " << kW4A16GemvMaxM << " rows, got " << M);
    LLMQ_CHECK(!epi.swiglu || w.N % 2 == 0, "W4A16 SwiGLU epilogue needs an even N, got " << w.N);
    if (M <= 8) return launch_mma<1>(w, x, y, M, epi, s);
    if (M <= 16) return launch_mma<2>(w, x, y, M, epi, s);
    if (M <= 24) return launch_mma<3>(w, x, y, M, epi, s);
    return launch_mma<4>(w, x, y, M, epi, s);
  }
  LLMQ_CHECK(!epi.residual && !epi.swiglu, "the plain-layout W4A16 GEMV has no epilogue (w4a16_fuses_epilogue)");
  // The smallest pass width that covers M: no wasted FMAs at batch 1, 2, 4.
  if (M == 1) return launch_gemv<1>(w, x, y, M, s);
  if (M == 2) return launch_gemv<2>(w, x, y, M, s);
  if (M <= 4) return launch_gemv<4>(w, x, y, M, s);
  launch_gemv<kTokensPerPass>(w, x, y, M, s);
}

void w4a16_dequantize(const W4A16Weights& w, uint16_t* w_bf16, cudaStream_t s) {
  const auto* params = w.params.as<const uint32_t>();
  if (w.mma) {
    const int64_t lanes = static_cast<int64_t>((w.N + 15) / 16) * (w.K / 64) * 32;
    const int blocks = static_cast<int>(std::min<int64_t>((lanes + 255) / 256, 65535));
    const auto* p4 = w.packed.as<const uint4>();
    if (w.scale_f16)
      mma_dequant_kernel<true><<<blocks, 256, 0, s>>>(p4, params, w_bf16, w.N, w.K, w.group_size, w.G);
    else
      mma_dequant_kernel<false><<<blocks, 256, 0, s>>>(p4, params, w_bf16, w.N, w.K, w.group_size, w.G);
    LLMQ_CUDA_CHECK_LAUNCH();
    return;
  }
  const int64_t total = static_cast<int64_t>(w.N) * (w.K / 8);
  const int blocks = static_cast<int>(std::min<int64_t>((total + 255) / 256, 65535));
  const auto* packed = w.packed.as<const uint32_t>();
  if (w.scale_f16)
    dequant_kernel<true><<<blocks, 256, 0, s>>>(packed, params, w_bf16, w.N, w.K, w.group_size / 8, w.G);
  else
    dequant_kernel<false><<<blocks, 256, 0, s>>>(packed, params, w_bf16, w.N, w.K, w.group_size / 8, w.G);
  LLMQ_CUDA_CHECK_LAUNCH();
}

bool w4a16_fuses_epilogue(const W4A16Weights& w, int M) { return w.mma && M <= kW4A16PassesMaxM; }

void w4a16_gemm(const W4A16Weights& w, const uint16_t* x, uint16_t* y, int M, const W4A16Scratch& scratch,
                Blas& blas, cudaStream_t s, const GemvEpilogue& epi) {
  if (M == 0) return;
  if (!w.perm.empty()) {
    LLMQ_CHECK(scratch.x_perm != nullptr, "act-order W4A16 needs an x_perm scratch");
    gather_columns(x, w.perm.as<const int32_t>(), scratch.x_perm, M, w.K, s);
    x = scratch.x_perm;
  }
  if (M <= kW4A16GemvMaxM) return w4a16_gemv(w, x, y, M, s, epi);
  if (w4a16_fuses_epilogue(w, M)) {
    const int y_cols = epi.swiglu ? w.N / 2 : w.N;
    for (int m0 = 0; m0 < M; m0 += kW4A16GemvMaxM) {
      GemvEpilogue part = epi;
      if (epi.residual) part.residual = epi.residual + static_cast<int64_t>(m0) * w.N;
      w4a16_gemv(w, x + static_cast<int64_t>(m0) * w.K, y + static_cast<int64_t>(m0) * y_cols,
                 std::min(kW4A16GemvMaxM, M - m0), s, part);
    }
    return;
  }
  LLMQ_CHECK(!epi.residual && !epi.swiglu, "W4A16 with M > " << kW4A16GemvMaxM << " fuses no epilogue");
  LLMQ_CHECK(scratch.w_bf16 != nullptr, "W4A16 with M > " << kW4A16GemvMaxM << " needs a w_bf16 scratch");
  w4a16_dequantize(w, scratch.w_bf16, s);
  blas.gemm_bf16(x, scratch.w_bf16, y, M, w.N, w.K, s);
}

}  // namespace llmq::gpu
