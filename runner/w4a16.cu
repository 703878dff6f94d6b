// W4A16 kernels (layouts and method in runner/w4a16.h): the tensor-core GEMV, the CUDA-core
// GEMV for layouts it cannot take, and the dequantization of the large-M path.
#include <cuda_fp16.h>

#include <algorithm>

#include "core/numeric.h"
#include "runner/cuda_check.h"
#include "runner/device_attribute.h"
#include "runner/direct_warps.h"
#include "runner/gemv.h"
#include "runner/kernels.h"
#include "runner/mma.cuh"
#include "runner/mma_gemv.cuh"
#include "runner/pdl.cuh"
#include "runner/split_arrival.cuh"
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
  pdl_wait();
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
  pdl_wait();
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
//
// Block: 8 consecutive 16-row tiles (128 output rows) over a K range of the block's split
// (gridDim.y splits of the K/64 chunks), with KS warps per tile (8 or 16 warps): with KS = 2
// each tile's two warps take alternate chunks of every stage and their sums are added at the
// end (twice the warps per SM to hide the MMA and ldmatrix latencies at the same shared
// memory: TG = 8 ran 2 warps per scheduler, waiting on fixed-latency dependencies 42% of its
// cycles, ncu at qkv M = 64; launch_mma_ks picks KS). The block streams its
// K range in stages of 4 chunks (256 columns) through a cp.async pipeline in shared memory:
// per stage the 8 tiles' weights (8 x 4 x 512 bytes, fragment-ordered), their params and
// x[0:M, 256 columns] (bf16). The x slice is read from L2 once per block and reused by all
// 8 tiles (the B fragments come from shared memory by ldmatrix), so L2 traffic for x is
// N/128 · M · K · 2 bytes instead of N/16 · M · K · 2.
// Numerics per output: per 64-column chunk Σ x·(c - zero) on mma.sync (f32 accumulation),
// times the group's scale once (f32 fma into the warp's sum, chunks in increasing order);
// with KS = 2 the two warps' sums are added in warp order; with splits > 1 each split's sum
// goes to a workspace and the last-arriving block adds the splits in the fixed order 0, 1,
// ... (deterministic whatever the arrival order).

constexpr int kMmaWarps = 8;         // = tiles per block (one 16-row tile per warp)
constexpr int kBlockRows = 16 * kMmaWarps;
constexpr int kStageChunks = 4;      // 64-column chunks per pipeline stage
constexpr int kXStride = kStageChunks * 64 + 8;  // bf16 per staged x row: +16 bytes so the 8
                                                  // row addresses of an ldmatrix hit 8 bank quads
constexpr int kStageW = kMmaWarps * kStageChunks * 32 * 16;  // bytes: [warp][chunk][lane] uint4
constexpr int kStageP = kMmaWarps * kStageChunks * 16 * 4;   // bytes: [warp][chunk][row] uint32
constexpr int kMaxSplits = 16;
constexpr size_t kSplitCounterBytes = 16384;  // [4096] uint32 arrival counters, one per block column
constexpr int kSplitCounters = static_cast<int>(kSplitCounterBytes / 4);

__host__ __device__ constexpr int mma_stage_bytes(int tg) { return kStageW + kStageP + tg * 8 * kXStride * 2; }

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

// biased_codes' magic 0x43004300 in a register (volatile: else the compiler folds it back
// into an immediate).
__device__ __forceinline__ uint32_t biased_codes_magic() {
  uint32_t magic;
  asm volatile("mov.b32 %0, 0x43004300;" : "=r"(magic));
  return magic;
}

// The four bf16x2 A-fragment values of one packed word, nibbles (i, i + 4) as (128 + code)
// pairs: one lop3 each (mask and magic in one instruction; `magic` is 0x43004300 in a register,
// since LOP3 takes one immediate) after a shift, where `(w >> 4i) & 0x000F000F | magic` gave
// ptxas two LOP3s.
__device__ __forceinline__ void biased_codes(uint32_t w, uint32_t magic, uint32_t (&h)[4]) {
#pragma unroll
  for (int i = 0; i < 4; ++i)
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(h[i]) : "r"(w >> (4 * i)), "n"(0x000F000F), "r"(magic));
}

// p + i for a 32-bit unsigned i, as a wide multiply-add on the pointer: written as p + i, the
// compiler rebuilt the row's 64-bit index for each load (365 against 357 SASS instructions
// per iteration of mma_direct_kernel at S = 4).
__device__ __forceinline__ const uint32_t* word_at(const uint32_t* p, uint32_t i) {
  uint64_t a;
  asm("mad.wide.u32 %0, %1, 4, %2;" : "=l"(a) : "r"(i), "l"(reinterpret_cast<uint64_t>(p)));
  return reinterpret_cast<const uint32_t*>(a);
}

// M <= 8: one block of S warps per 16-row tile, activations straight from L1 (8 rows of x are
// small and shared by every block); the S warps split the tile's K, warp w taking 64-column
// chunks w, w + S, ... with loads of up to four chunks issued before their MMAs. Measured
// faster at M = 1 than the staged kernel below (H200, Llama-3.1-8B shapes: per layer 78 vs
// 90 us), whose shared-memory pipeline pays off only once x is reused across many tokens.
// Per output: each warp's chunks in increasing order, then the S warps' sums in warp order.
template <bool kF16, int S>
__global__ void __launch_bounds__(S * 32) mma_direct_kernel(const uint4* __restrict__ packed,
                                                             const uint32_t* __restrict__ params,
                                                             const uint16_t* __restrict__ x, uint16_t* __restrict__ y,
                                                             int M, int N, int K, uint32_t group_magic, int G,
                                                             GemvEpilogue epi) {
  // pdl_wait comes after the first iteration's weight and parameter loads (never written by
  // the kernel before): they stream while that kernel finishes.
  static_assert(3 * S * 512 <= W4A16Weights::kPackedTail && 3 * S * 4 <= W4A16Weights::kParamsTail,
                "a warp's loads past the end (three chunks of S apart) must stay inside the buffers' tails");
  __shared__ float partial[S][32][4];
  __shared__ float out[8][16];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int tile = blockIdx.x;
  const int chunks = K / 64;
  // Pointers at the warp's first chunk, advanced per iteration, so a chunk's loads sit at
  // immediate offsets from them: 64-bit index arithmetic per load was about a third of the
  // loop's instructions, and at M = 1 the loop is bound by its instructions about as much as
  // by its loads.
  const uint4* w_warp = packed + (static_cast<int64_t>(tile) * chunks + warp) * 32 + lane;
  const uint32_t* pa_row = params + static_cast<int64_t>(tile * 16 + lane / 4) * G;
  const uint32_t* pb_row = pa_row + 8 * static_cast<int64_t>(G);
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  const int tok = lane / 4;
  const uint32_t* x_tok = reinterpret_cast<const uint32_t*>(x + static_cast<int64_t>(min(tok, M - 1)) * K);
  const uint32_t* x_warp = x_tok + warp * 32 + lane % 4;
  const uint32_t magic = biased_codes_magic();
  bool waited = false;
  for (int c0 = warp; c0 < chunks; c0 += 4 * S, w_warp += 4 * S * 32, x_warp += 4 * S * 32) {
    // The four chunks' weights and group parameters are loaded before any arithmetic, all of
    // them (past the end into padding) rather than behind an early exit, so none waits on it: at M = 1 a warp
    // has only a few iterations, and each dependent HBM or L2 round trip is one more latency
    // on the kernel's critical path. x words come from L1 (every block reads the same x) and
    // are loaded where used: holding them too would halve the resident blocks.
    uint4 wv[4];
    uint32_t pa[4], pb[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      // Past the end (c >= chunks) the loads read the next tile's words or the buffers' tail
      // padding (W4A16Weights::kPackedTail, kParamsTail) and are not summed: no predicate.
      const uint32_t c = c0 + u * S;
      wv[u] = __ldg(w_warp + u * S * 32);
      const uint32_t grp = __umulhi(2u * c, group_magic);  // c / chunks per group
      pa[u] = __ldg(word_at(pa_row, grp));
      pb[u] = __ldg(word_at(pb_row, grp));
    }
    if (!waited) {
      pdl_wait();
      waited = true;
    }
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const int c = c0 + u * S;
      if (c >= chunks) break;
      const uint32_t za = zero_pair(pa[u]), zb = zero_pair(pb[u]);
      float part[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      const uint32_t words[4] = {wv[u].x, wv[u].y, wv[u].z, wv[u].w};
      // The lane's x words of this chunk: column c * 64 + 16 s + 2 (lane % 4) (+ 8) at
      // immediate offsets from one address. Lanes of tokens past M read token M - 1's (x_tok
      // is clamped): their output columns are summed and never stored, so the loads need no
      // predicate (with one, the compiler recomputed the address inside each).
      const uint32_t* xc = x_warp + u * S * 32;
#pragma unroll
      for (int s = 0; s < 4; ++s) {
        uint32_t a[4];
        biased_codes(words[s], magic, a);
#pragma unroll
        for (int i = 0; i < 4; ++i) a[i] = hsub2_bf16(a[i], (i % 2 == 0) ? za : zb);
        const uint32_t b0 = load_after_wait(xc + s * 8);
        const uint32_t b1 = load_after_wait(xc + s * 8 + 4);  // k + 8
        mma_bf16(part, a, b0, b1);
      }
      const float sa = scale_of<kF16>(pa[u]), sb = scale_of<kF16>(pb[u]);
      acc[0] = fmaf(part[0], sa, acc[0]);
      acc[1] = fmaf(part[1], sa, acc[1]);
      acc[2] = fmaf(part[2], sb, acc[2]);
      acc[3] = fmaf(part[3], sb, acc[3]);
    }
  }
  if (!waited) pdl_wait();
#pragma unroll
  for (int i = 0; i < 4; ++i) partial[warp][lane][i] = acc[i];
  __syncthreads();
  // C fragment: {c0 c1} row l/4, tokens 2(l%4) + {0, 1}; {c2 c3} row l/4 + 8. Warps summed in
  // a fixed order.
  for (int e = threadIdx.x; e < 32 * 4; e += blockDim.x) {
    const int l = e / 4, i = e % 4;
    float sum = 0.0f;
#pragma unroll
    for (int w = 0; w < S; ++w) sum += partial[w][l][i];
    out[2 * (l % 4) + (i % 2)][l / 4 + (i >= 2 ? 8 : 0)] = sum;
  }
  __syncthreads();
  store_block<16>([&](int tok, int r) { return out[tok][r]; }, M, tile * 16, N, y, epi);
}

// mma_direct_kernel's chunk-to-group division as a multiply-high: with d = group_size / 64
// chunks per group and magic = ceil(2^31 / d), (2c · magic) >> 32 = floor(c / d) for every
// c < 2^16 and d < 2^15 (the error c · (magic · d - 2^31) / 2^31 stays below 1 / d).
uint32_t group_magic(const W4A16Weights& w) {
  const int64_t d = w.group_size / 64, chunks = w.K / 64;
  LLMQ_CHECK(d >= 1 && d < (1 << 15) && chunks < (1 << 16),
             "W4A16 direct GEMV: K " << w.K << ", group " << w.group_size << " out of its range");
  return static_cast<uint32_t>(((int64_t{1} << 31) + d - 1) / d);
}

template <bool kF16, int S>
void launch_mma_direct_s(const W4A16Weights& w, const uint16_t* x, uint16_t* y, int M, const GemvEpilogue& epi,
                         cudaStream_t s) {
  launch_pdl(mma_direct_kernel<kF16, S>, dim3((w.N + 15) / 16), dim3(S * 32), 0, s, w.packed.as<const uint4>(),
             w.params.as<const uint32_t>(), x, y, M, w.N, w.K, group_magic(w), w.G, epi);
  LLMQ_CUDA_CHECK_LAUNCH();
}

template <bool kF16>
void launch_mma_direct(const W4A16Weights& w, const uint16_t* x, uint16_t* y, int M, const GemvEpilogue& epi,
                       int warps, cudaStream_t s) {
  static const DirectResidency residency{device_resident_blocks(mma_direct_kernel<kF16, 4>, 4 * 32),
                                         device_resident_blocks(mma_direct_kernel<kF16, 8>, 8 * 32),
                                         device_resident_blocks(mma_direct_kernel<kF16, 16>, 16 * 32)};
  if (warps == 0) warps = direct_gemv_warps((w.N + 15) / 16, w.K / 64, residency);
  switch (warps) {
    case 4: return launch_mma_direct_s<kF16, 4>(w, x, y, M, epi, s);
    case 8: return launch_mma_direct_s<kF16, 8>(w, x, y, M, epi, s);
    case 16: return launch_mma_direct_s<kF16, 16>(w, x, y, M, epi, s);
  }
  LLMQ_CHECK(false, "W4A16 direct GEMV takes 4, 8 or 16 warps per tile, not " << warps);
}

// Grid: x over blocks of 128 output rows, y over K splits. TG groups of 8 token rows
// (M <= 8 TG). partials [splits, M, N] f32 and counters [gridDim.x] uint32 (zero on entry,
// zero again on exit) only when gridDim.y > 1. y may alias epi.residual.
template <int TG, bool kF16, int KS>
__global__ void __launch_bounds__(kMmaWarps * KS * 32) mma_kernel(const uint4* __restrict__ packed,
                                                             const uint32_t* __restrict__ params,
                                                             const uint16_t* __restrict__ x, uint16_t* y, int M, int N,
                                                             int K, int group_size, int G, int stages,
                                                             float* partials, uint32_t* counters, GemvEpilogue epi) {
  pdl_wait();
  extern __shared__ __align__(16) unsigned char smem[];
  constexpr int kTokens = TG * 8;
  constexpr int kStageBytes = mma_stage_bytes(TG);
  static_assert(kStageChunks % KS == 0 && (kStageChunks / 2) % KS == 0, "KS must divide a stage's chunks");
  const int lane = threadIdx.x % 32;
  // The warp's tile in the block, and its chunks of each stage: j = half, half + KS, ...
  const int warp = KS == 1 ? threadIdx.x / 32 : threadIdx.x / 32 % kMmaWarps;
  const int half = KS == 1 ? 0 : threadIdx.x / 32 / kMmaWarps;
  const int tiles = (N + 15) / 16, chunks = K / 64;
  const int tile = blockIdx.x * kMmaWarps + warp;
  const bool has_tile = tile < tiles;
  const int splits = gridDim.y, split = blockIdx.y;
  const int c_begin = split * chunks / splits, c_end = (split + 1) * chunks / splits;
  const int n_stages = (c_end - c_begin + kStageChunks - 1) / kStageChunks;

  // Token rows M..kTokens-1 of every x buffer are zero (cp.async never writes them): their
  // output columns are never stored, zero keeps them finite.
  {
    const int pad_rows = kTokens - M, segs = kXStride / 8;
    for (int e = threadIdx.x; e < stages * pad_rows * segs; e += blockDim.x) {
      const int st = e / (pad_rows * segs), r = e % (pad_rows * segs);
      *reinterpret_cast<uint4*>(smem + st * kStageBytes + kStageW + kStageP +
                                ((M + r / segs) * kXStride + (r % segs) * 8) * 2) = make_uint4(0, 0, 0, 0);
    }
  }

  // Issues stage st's copies into buffer st % stages; commits a group even when empty so the
  // group count per iteration stays fixed.
  const auto load = [&](int st) {
    if (st < n_stages) {
      unsigned char* buf = smem + (st % stages) * kStageBytes;
      const int c0 = c_begin + st * kStageChunks;
      if (has_tile) {
#pragma unroll
        for (int jj = 0; jj < kStageChunks / KS; ++jj) {
          const int j = jj * KS + half;
          if (c0 + j < c_end)
            cp_async16(buf + ((warp * kStageChunks + j) * 32 + lane) * 16,
                              packed + (static_cast<int64_t>(tile) * chunks + c0 + j) * 32 + lane);
        }
#pragma unroll
        for (int it = half; it < kStageChunks / 2; it += KS) {
          const int j = lane / 16 + 2 * it, r = lane % 16;
          if (c0 + j < c_end)
            cp_async4(buf + kStageW + ((warp * kStageChunks + j) * 16 + r) * 4,
                      params + static_cast<int64_t>(tile * 16 + r) * G + (c0 + j) * 64 / group_size);
        }
      }
      // Lane l copies 16-byte piece l of the stage's x rows (32 per row) for tokens warp,
      // warp + warps, ...: no index division, one pointer step per token.
      const int segs = min(kStageChunks, c_end - c0) * 8;
      static_assert(kStageChunks * 8 == 32, "one lane per 16-byte piece of a staged x row");
      if (lane < segs) {
        const uint16_t* src = x + static_cast<int64_t>(threadIdx.x / 32) * K + c0 * 64 + lane * 8;
        unsigned char* dst = buf + kStageW + kStageP + ((threadIdx.x / 32) * kXStride + lane * 8) * 2;
        for (int tok = threadIdx.x / 32; tok < M; tok += kMmaWarps * KS) {
          cp_async16(dst, src);
          src += static_cast<int64_t>(kMmaWarps * KS) * K;
          dst += kMmaWarps * KS * kXStride * 2;
        }
      }
    }
    cp_async_commit();
  };

  float acc[TG][4];
#pragma unroll
  for (int g = 0; g < TG; ++g)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[g][i] = 0.0f;
  const uint32_t magic = biased_codes_magic();

  for (int st = 0; st < stages - 1; ++st) load(st);
  for (int st = 0; st < n_stages; ++st) {
    cp_async_wait(stages - 2);  // this thread's copies of stage st have landed
    __syncthreads();            // everyone's have; and everyone is done with stage st - 1
    load(st + stages - 1);      // into the buffer of stage st - 1
    if (!has_tile) continue;
    const unsigned char* buf = smem + (st % stages) * kStageBytes;
    const int c0 = c_begin + st * kStageChunks;
    // Lane l addresses row l % 8 of matrix l / 8: token g*8 + l%8, k offset 8 (l/8) =
    // b0, b1 of step 2 s2 and b0, b1 of step 2 s2 + 1.
    const uint32_t xa = smem_addr(buf + kStageW + kStageP) + ((lane % 8) * kXStride + (lane / 8) * 8) * 2;
#pragma unroll
    for (int jj = 0; jj < kStageChunks / KS; ++jj) {
      const int j = jj * KS + half;
      if (c0 + j >= c_end) break;
      const uint4 wv = *reinterpret_cast<const uint4*>(buf + ((warp * kStageChunks + j) * 32 + lane) * 16);
      const uint32_t* pj = reinterpret_cast<const uint32_t*>(buf + kStageW) + (warp * kStageChunks + j) * 16;
      const uint32_t pa = pj[lane / 4], pb = pj[lane / 4 + 8];
      const uint32_t za = zero_pair(pa), zb = zero_pair(pb);
      const uint32_t words[4] = {wv.x, wv.y, wv.z, wv.w};
      float part[TG][4];
#pragma unroll
      for (int g = 0; g < TG; ++g)
#pragma unroll
        for (int i = 0; i < 4; ++i) part[g][i] = 0.0f;
#pragma unroll
      for (int s2 = 0; s2 < 2; ++s2) {
        uint32_t a0[4], a1[4];
        biased_codes(words[2 * s2], magic, a0);
        biased_codes(words[2 * s2 + 1], magic, a1);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          a0[i] = hsub2_bf16(a0[i], (i % 2 == 0) ? za : zb);
          a1[i] = hsub2_bf16(a1[i], (i % 2 == 0) ? za : zb);
        }
        // Up to 4 token groups at a time: their B fragments, then their a0 MMAs, then their a1
        // MMAs (the same sums in the same order). Written per group, ptxas issued each group's
        // two MMAs back to back, the second waiting for the first; batched, one layer's W4A16
        // linears at M = 32 took 146.0 us against 157.6 (H200, `--kernels`, session 22).
        constexpr int kBatch = TG < 4 ? TG : 4;
#pragma unroll
        for (int g0 = 0; g0 < TG; g0 += kBatch) {
          uint32_t b[kBatch][4];
          // rows = tokens, 8 consecutive k per row: the B fragments (k 2t.., column g) of two k16 steps
#pragma unroll
          for (int g = 0; g < kBatch; ++g) ldmatrix_x4(b[g], xa + ((g0 + g) * 8 * kXStride + j * 64 + s2 * 32) * 2);
#pragma unroll
          for (int g = 0; g < kBatch; ++g) mma_bf16(part[g0 + g], a0, b[g][0], b[g][1]);
#pragma unroll
          for (int g = 0; g < kBatch; ++g) mma_bf16(part[g0 + g], a1, b[g][2], b[g][3]);
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
  cp_async_wait(0);
  __syncthreads();  // the pipeline buffers become out[]

  // out [kMmaWarps tiles][kTokens][16 rows] f32. C fragment: {c0 c1} row l/4, tokens
  // 2(l%4) + {0, 1}; {c2 c3} row l/4 + 8.
  // With KS > 1 the halves' sums are added in half order (deterministic).
  float* out = reinterpret_cast<float*>(smem);
#pragma unroll
  for (int h = 0; h < KS; ++h) {
    if (has_tile && half == h)
#pragma unroll
      for (int g = 0; g < TG; ++g)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          float& o = out[(warp * kTokens + g * 8 + 2 * (lane % 4) + (i % 2)) * 16 + lane / 4 + (i >= 2 ? 8 : 0)];
          o = h == 0 ? acc[g][i] : o + acc[g][i];
        }
    __syncthreads();
  }
  const int n0 = blockIdx.x * kBlockRows, rows = min(kBlockRows, N - n0);
  const auto at = [&](int tok, int r) -> float& { return out[((r / 16) * kTokens + tok) * 16 + r % 16]; };

  if (splits > 1) {
    float* mine = partials + static_cast<int64_t>(split) * M * N;
    for (int e = threadIdx.x; e < M * kBlockRows; e += blockDim.x) {
      const int tok = e / kBlockRows, r = e % kBlockRows;
      if (r < rows) mine[static_cast<int64_t>(tok) * N + n0 + r] = at(tok, r);
    }
    if (!last_block_to_arrive(counters + blockIdx.x, static_cast<unsigned>(splits))) return;
    for (int e = threadIdx.x; e < M * kBlockRows; e += blockDim.x) {
      const int tok = e / kBlockRows, r = e % kBlockRows;
      if (r >= rows) continue;
      float sum = 0.0f;
      for (int s = 0; s < splits; ++s)  // fixed order: the result does not depend on who came last
        sum += __ldcg(partials + (static_cast<int64_t>(s) * M + tok) * N + n0 + r);
      at(tok, r) = sum;
    }
    if (threadIdx.x == 0) counters[blockIdx.x] = 0;  // ready for the next launch
    __syncthreads();
  }

  store_block<kBlockRows>(at, M, blockIdx.x * kBlockRows, N, y, epi);
}

// Dequantization from the tensor-core layout: one thread per lane-uint4 (32 codes).
template <bool kF16>
__global__ void mma_dequant_kernel(const uint4* __restrict__ packed, const uint32_t* __restrict__ params,
                                   uint16_t* __restrict__ out, int N, int K, int group_size, int G) {
  pdl_wait();
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

// Pipeline depth, dynamic shared memory and residency of one mma_kernel instantiation, found
// once (the process drives one kind of device).
struct MmaConfig {
  int stages = 0;
  int smem = 0;
  int blocks_per_sm = 0;
  int sms = 0;
};

template <int TG, bool kF16, int KS>
const MmaConfig& mma_config() {
  static const MmaConfig config = [] {
    MmaConfig c;
    const int optin = device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin);
    c.sms = device_attribute(cudaDevAttrMultiProcessorCount);
    // 4 stages keep 3 stages of weights (48 KB per block) in flight; TG = 4 takes 3 so two
    // blocks fit an SM. Fewer where the device has less shared memory.
    c.stages = TG == 4 ? 3 : 4;
    while (c.stages > 2 && c.stages * mma_stage_bytes(TG) > optin) --c.stages;
    c.smem = c.stages * mma_stage_bytes(TG);
    LLMQ_CHECK(c.smem <= optin, "W4A16 tensor-core GEMV needs " << c.smem << " bytes of shared memory, the device has "
                                                                << optin);
    LLMQ_CUDA_CHECK(cudaFuncSetAttribute(mma_kernel<TG, kF16, KS>, cudaFuncAttributeMaxDynamicSharedMemorySize, c.smem));
    LLMQ_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&c.blocks_per_sm, mma_kernel<TG, kF16, KS>,
                                                                  kMmaWarps * KS * 32, c.smem));
    LLMQ_CHECK(c.blocks_per_sm > 0, "W4A16 tensor-core GEMV cannot be resident");
    return c;
  }();
  return config;
}

// K splits: the count with the least estimated time in units of one chunk (64 columns) of
// a block: waves of blocks times (chunks per block + writing M x 128 partials), plus the
// last block's reduction; writing or reading 64 tokens' partials is taken as about 1.5
// chunks (a rough estimate, not measured). Splits are at most 2 ceil(target / columns)
// (w4a16_split_bytes' bound), at most one per pipeline stage, and fit the workspace (none: no split).
int mma_splits(const MmaConfig& c, int M, int N, int K, void* split, size_t split_bytes) {
  const int columns = (N + kBlockRows - 1) / kBlockRows, chunks = K / 64;
  const int target = c.sms * std::min(c.blocks_per_sm, 2);
  int max_splits = std::min({2 * ((target + columns - 1) / columns), kMaxSplits, chunks / kStageChunks});
  if (max_splits <= 1 || split == nullptr || split_bytes <= kSplitCounterBytes || columns > kSplitCounters) return 1;
  max_splits = static_cast<int>(
      std::min<size_t>(max_splits, (split_bytes - kSplitCounterBytes) / (static_cast<size_t>(M) * N * 4)));
  const double partial_chunks = 1.5 * M / 64.0;
  int best = 1;
  double best_cost = 0.0;
  for (int splits = 1; splits <= max_splits; ++splits) {
    const int waves = (columns * splits + target - 1) / target;
    const int per_block = (chunks + splits - 1) / splits;
    const double cost = splits == 1 ? waves * per_block
                                    : waves * (per_block + partial_chunks) + splits * partial_chunks;
    if (splits == 1 || cost < best_cost) best = splits, best_cost = cost;
  }
  return best;
}

// One launch in `splits` K splits (mma_splits of this configuration).
template <int TG, bool kF16, int KS>
void launch_mma(const W4A16Weights& w, const uint16_t* x, uint16_t* y, int M, const GemvEpilogue& epi, void* split,
                int splits, cudaStream_t s) {
  const MmaConfig& c = mma_config<TG, kF16, KS>();
  const dim3 grid((w.N + kBlockRows - 1) / kBlockRows, splits);
  auto* counters = static_cast<uint32_t*>(split);
  auto* partials = splits > 1 ? reinterpret_cast<float*>(static_cast<char*>(split) + kSplitCounterBytes) : nullptr;
  launch_pdl(mma_kernel<TG, kF16, KS>, dim3(grid), dim3(kMmaWarps * KS * 32), c.smem, s, w.packed.as<const uint4>(), w.params.as<const uint32_t>(), x, y, M, w.N, w.K, w.group_size, w.G, c.stages, partials, counters, epi);
  LLMQ_CUDA_CHECK_LAUNCH();
}

// Waves of resident blocks one launch of that configuration in `splits` K splits takes.
int mma_waves(const MmaConfig& c, int N, int splits) {
  const int blocks = (N + kBlockRows - 1) / kBlockRows * splits;
  return (blocks + c.sms * c.blocks_per_sm - 1) / (c.sms * c.blocks_per_sm);
}

// KS = 2 (16 warps, two per tile, each taking half of a stage's chunks) hides more of the
// MMA and shared-memory latencies than 8 warps, but its blocks are twice as large: where
// that costs a wave of blocks the 8-warp block runs (TG = 4 on gate_up's 224 columns, where
// two 8-warp blocks fit an SM and one 16-warp block at 76 registers).
template <int TG, bool kF16>
void launch_mma_ks(const W4A16Weights& w, const uint16_t* x, uint16_t* y, int M, const GemvEpilogue& epi, void* split,
                   size_t split_bytes, cudaStream_t s) {
  const MmaConfig &c2 = mma_config<TG, kF16, 2>(), &c1 = mma_config<TG, kF16, 1>();
  const int splits2 = mma_splits(c2, M, w.N, w.K, split, split_bytes);
  const int splits1 = mma_splits(c1, M, w.N, w.K, split, split_bytes);
  if (mma_waves(c2, w.N, splits2) <= mma_waves(c1, w.N, splits1))
    return launch_mma<TG, kF16, 2>(w, x, y, M, epi, split, splits2, s);
  launch_mma<TG, kF16, 1>(w, x, y, M, epi, split, splits1, s);
}

template <int TG>
void launch_mma(const W4A16Weights& w, const uint16_t* x, uint16_t* y, int M, const GemvEpilogue& epi, void* split,
                size_t split_bytes, cudaStream_t s) {
  if (w.scale_f16) return launch_mma_ks<TG, true>(w, x, y, M, epi, split, split_bytes, s);
  launch_mma_ks<TG, false>(w, x, y, M, epi, split, split_bytes, s);
}

template <int MT>
void launch_gemv(const W4A16Weights& w, const uint16_t* x, uint16_t* y, int M, cudaStream_t s) {
  const int rows_per_block = kWarps * kRowsPerWarp;
  const dim3 grid((w.N + rows_per_block - 1) / rows_per_block, (M + MT - 1) / MT);
  const auto* packed = w.packed.as<const uint32_t>();
  const auto* params = w.params.as<const uint32_t>();
  if (w.scale_f16)
    launch_pdl(gemv_kernel<MT, true>, dim3(grid), dim3(kWarps * 32), 0, s, packed, params, x, y, M, w.N, w.K, w.group_size / 8, w.G);
  else
    launch_pdl(gemv_kernel<MT, false>, dim3(grid), dim3(kWarps * 32), 0, s, packed, params, x, y, M, w.N, w.K, w.group_size / 8, w.G);
  LLMQ_CUDA_CHECK_LAUNCH();
}

// A device copy of v followed by tail zero bytes.
DeviceBuffer with_tail(const std::vector<uint32_t>& v, size_t tail) {
  DeviceBuffer b(v.size() * 4 + tail);
  if (!v.empty()) LLMQ_CUDA_CHECK(cudaMemcpy(b.as(), v.data(), v.size() * 4, cudaMemcpyHostToDevice));
  LLMQ_CUDA_CHECK(cudaMemset(static_cast<char*>(b.as()) + v.size() * 4, 0, tail));
  return b;
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
  w.packed = with_tail(l.packed, kPackedTail);
  w.params = with_tail(l.params, kParamsTail);
  if (!l.perm.empty()) w.perm = DeviceBuffer::from_host(l.perm);
  return w;
}

void w4a16_gemv(const W4A16Weights& w, const uint16_t* x, uint16_t* y, int M, cudaStream_t s, const GemvEpilogue& epi,
                void* split, size_t split_bytes, int direct_warps) {
  if (M == 0) return;
  LLMQ_CHECK(!epi.norm_weight, "W4A16 GEMV: the fused RMSNorm is gemv_bf16's");
  if (w.mma) {
    LLMQ_CHECK(M <= kW4A16MmaMaxM, "W4A16 tensor-core GEMV takes at most " << kW4A16MmaMaxM << " rows, got " << M);
    LLMQ_CHECK(!epi.swiglu || w.N % 2 == 0, "W4A16 SwiGLU epilogue needs an even N, got " << w.N);
    LLMQ_CHECK(reinterpret_cast<uintptr_t>(x) % 16 == 0, "W4A16 tensor-core GEMV needs 16-byte aligned x (cp.async)");
    if (M <= 8)
      return w.scale_f16 ? launch_mma_direct<true>(w, x, y, M, epi, direct_warps, s)
                         : launch_mma_direct<false>(w, x, y, M, epi, direct_warps, s);
    if (M <= 16) return launch_mma<2>(w, x, y, M, epi, split, split_bytes, s);
    if (M <= 32) return launch_mma<4>(w, x, y, M, epi, split, split_bytes, s);
    return launch_mma<8>(w, x, y, M, epi, split, split_bytes, s);
  }
  LLMQ_CHECK(!epi.residual && !epi.swiglu, "the plain-layout W4A16 GEMV has no epilogue (w4a16_fuses_epilogue)");
  // The smallest pass width that covers M: no wasted FMAs at batch 1, 2, 4.
  if (M == 1) return launch_gemv<1>(w, x, y, M, s);
  if (M == 2) return launch_gemv<2>(w, x, y, M, s);
  if (M <= 4) return launch_gemv<4>(w, x, y, M, s);
  launch_gemv<kTokensPerPass>(w, x, y, M, s);
}

size_t w4a16_split_bytes(int max_n, int max_m) {
  const int sms = device_attribute(cudaDevAttrMultiProcessorCount);
  // mma_splits: splits <= 2 ceil(target / columns) <= 2 target / columns + 2 with target <=
  // 2 sms blocks, so splits · N <= (4 sms + 2 columns) · kBlockRows.
  const size_t columns = (static_cast<size_t>(max_n) + kBlockRows - 1) / kBlockRows;
  const size_t rows = (4 * static_cast<size_t>(sms) + 2 * columns) * kBlockRows;
  return kSplitCounterBytes + static_cast<size_t>(std::min(max_m, kW4A16MmaMaxM)) * rows * 4;
}

void w4a16_dequantize(const W4A16Weights& w, uint16_t* w_bf16, cudaStream_t s) {
  const auto* params = w.params.as<const uint32_t>();
  if (w.mma) {
    const int64_t lanes = static_cast<int64_t>((w.N + 15) / 16) * (w.K / 64) * 32;
    const int blocks = static_cast<int>(std::min<int64_t>((lanes + 255) / 256, 65535));
    const auto* p4 = w.packed.as<const uint4>();
    if (w.scale_f16)
      launch_pdl(mma_dequant_kernel<true>, dim3(blocks), dim3(256), 0, s, p4, params, w_bf16, w.N, w.K, w.group_size, w.G);
    else
      launch_pdl(mma_dequant_kernel<false>, dim3(blocks), dim3(256), 0, s, p4, params, w_bf16, w.N, w.K, w.group_size, w.G);
    LLMQ_CUDA_CHECK_LAUNCH();
    return;
  }
  const int64_t total = static_cast<int64_t>(w.N) * (w.K / 8);
  const int blocks = static_cast<int>(std::min<int64_t>((total + 255) / 256, 65535));
  const auto* packed = w.packed.as<const uint32_t>();
  if (w.scale_f16)
    launch_pdl(dequant_kernel<true>, dim3(blocks), dim3(256), 0, s, packed, params, w_bf16, w.N, w.K, w.group_size / 8, w.G);
  else
    launch_pdl(dequant_kernel<false>, dim3(blocks), dim3(256), 0, s, packed, params, w_bf16, w.N, w.K, w.group_size / 8, w.G);
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
  if (M <= (w.mma ? kW4A16MmaMaxM : kW4A16GemvMaxM)) return w4a16_gemv(w, x, y, M, s, epi, scratch.split, scratch.split_bytes);
  if (w4a16_fuses_epilogue(w, M)) {
    const int y_cols = epi.swiglu ? w.N / 2 : w.N;
    for (int m0 = 0; m0 < M; m0 += kW4A16MmaMaxM) {
      GemvEpilogue part = epi;
      if (epi.residual) part.residual = epi.residual + static_cast<int64_t>(m0) * w.N;
      w4a16_gemv(w, x + static_cast<int64_t>(m0) * w.K, y + static_cast<int64_t>(m0) * y_cols,
                 std::min(kW4A16MmaMaxM, M - m0), s, part, scratch.split, scratch.split_bytes);
    }
    return;
  }
  LLMQ_CHECK(!epi.residual && !epi.swiglu, "W4A16 with M " << M << " fuses no epilogue");
  LLMQ_CHECK(scratch.w_bf16 != nullptr, "W4A16 with M " << M << " needs a w_bf16 scratch");
  w4a16_dequantize(w, scratch.w_bf16, s);
  blas.gemm_bf16(x, scratch.w_bf16, y, M, w.N, w.K, s);
}

}  // namespace llmq::gpu
