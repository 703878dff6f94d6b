// Tensor-core causal GQA attention for prefill (API: runner/attention_prefill.h). Same
// semantics as the per-row kernel in attention.cu and its reference ref::attention_ref:
// s = f32(q·k) * scale (scale = head_dim**-0.5 rounded once from double), exact softmax with
// the row's global maximum m, p = bf16(exp(s - m)) for P·V, l = f32 sum of the unrounded
// exp, out = bf16(f32(P·V) * (1 / l)).
//
// Work split. A query tile is up to 64 consecutive rows of one span (one cache slot); a block
// takes one tile and HB query heads of one kv head (HB = 2 when the group has >= 2 heads, so
// each K/V tile staged in shared memory serves both; 1 for MHA): 4 warps per head, 16 rows
// per warp. Keys come in tiles of 64 positions, copied with cp.async into two shared-memory
// stages (the next tile loads while this one computes), positions past the tile's last row
// zero-filled, never read. A warp skips key tiles wholly past its rows' positions (the
// causal upper triangle) and masks per element (key j visible to row r iff j <= pos[r]) only
// in the tiles that reach past its smallest position (the diagonal).
// Two passes over the keys, both on mma.sync.m16n8k16 (bf16 in, f32 accumulate):
//   pass 1: S = Q·Kᵀ, row maxima over visible keys of the unscaled scores, scaled once;
//   pass 2: S again (same instructions, same order: bit-identical), p = exp(s - m), l += p,
//           P·V with p rounded to bf16 (the A operand comes straight from the S registers).
// Recomputing Q·Kᵀ costs a third more tensor work than an online softmax but keeps p exactly
// the per-row kernel's function of s: an online softmax would round exp(s - m_running) to
// bf16 and rescale, which rounds differently.
//
// Fragment layouts (PTX ISA, mma.m16n8k16 .bf16; g = lane / 4, t = lane % 4):
//   A 16x16 row-major: reg0 (row g, cols 2t, 2t+1), reg1 (row g+8, same cols),
//                      reg2 (row g, cols 2t+8, 2t+9), reg3 (row g+8, cols 2t+8, 2t+9)
//   B 16x8 (k x n):    reg0 (k 2t, 2t+1; col g), reg1 (k 2t+8, 2t+9; col g)
//   C 16x8 f32:        c0, c1 (row g, cols 2t, 2t+1), c2, c3 (row g+8, cols 2t, 2t+1)
// ldmatrix gives lane the pair (row g, cols 2t, 2t+1) of each 8x8 matrix (.trans: the pair
// (rows 2t, 2t+1; col g)). So K tiles [key][dim] feed B of Q·Kᵀ untransposed, V tiles
// [key][dim] feed B of P·V transposed, and the C fragments of two adjacent 8-key column tiles
// of S are exactly the A fragment of P for 16 keys.
//
// Error against the reference (derived in tests/test_runner_attention.cc, where it is the
// tolerance): the kernel sums q·k over head_dim and P·V, l over keys in f32 in another order;
// that moves s by <= hd·2^-23·scale·Σ|q_d k_d|, each p by one bf16 rounding at most (2^-7 of
// p), so |Δout| <= 2^-7 Σ p|v| / l plus f32 summation terms, plus the output rounding.
#include "runner/attention_prefill.h"

#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "core/numeric.h"
#include "runner/cuda_check.h"
#include "runner/mma.cuh"

namespace llmq::gpu {
namespace {

constexpr int kTileRows = 64;   // query rows per tile: 4 warps x 16 rows, per head
constexpr int kKeys = 64;       // key positions per shared-memory stage
constexpr int kRowBits = 26;    // a tile's code: first_row | (rows - 1) << kRowBits
constexpr int kMaxTiles = 896;  // tiles per launch: the list travels as a kernel parameter

// The tiles of one launch, heaviest first (a kernel parameter: no device buffer, so the call
// needs nothing but the host-side spans and can be captured in a graph).
struct TileList {
  uint32_t code[kMaxTiles];
};
static_assert(sizeof(TileList) + sizeof(AttentionArgs) + sizeof(float) + 64 <= 4096,
              "prefill kernel parameters must fit the 4 KB limit");
static_assert((kTileRows - 1) < (1 << (32 - kRowBits)), "tile row count must fit the code");

// bf16 per K/V tile row in shared memory: +16 bytes, so ldmatrix's 8 row addresses hit 8 bank
// groups.
template <int HD>
constexpr int kTileStride = HD + 8;

// S stages of K and V tiles: tiles kt + 1 .. kt + S - 1 are in flight while tile kt computes.
template <int HD, int S>
struct Stage {
  static constexpr int kStride = kTileStride<HD>;
  static constexpr int kElems = kKeys * kStride;
  static constexpr size_t kSmemBytes = 2 * S * kElems * sizeof(bf16);  // K and V, S stages each
};

// Two f32 -> bf16x2 (lo in the low half), round to nearest even: the same rounding as
// core/numeric.h's f32_to_bf16 for every finite value (NaN cannot occur here).
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// s = Q·Kᵀ for a warp's 16 rows and the 64 keys of a staged K tile [key][dim]: s[n][e] is
// row (e < 2 ? g : g + 8), key 8n + 2t + (e & 1), summed over head dims 16 at a time in
// ascending order (the same instructions in both passes, so the same bits).
template <int HD>
__device__ __forceinline__ void qk_tile(const uint32_t (&qf)[HD / 16][4], const bf16* k_tile, int lane,
                                        float (&s)[8][4]) {
  constexpr int kStride = kTileStride<HD>;
#pragma unroll
  for (int n = 0; n < 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) s[n][e] = 0.0f;
  // ldmatrix.x4: lanes 8i..8i+7 address the rows of matrix i = (keys +0, dims +0),
  // (keys +0, dims +8), (keys +8, dims +0), (keys +8, dims +8) -> B of key tiles 2p, 2p + 1.
  const int mi = lane / 8;
  const bf16* base = k_tile + (lane % 8 + (mi & 2) * 4) * kStride + (mi & 1) * 8;
#pragma unroll
  for (int ks = 0; ks < HD / 16; ++ks)
#pragma unroll
    for (int p = 0; p < 4; ++p) {
      uint32_t b[4];
      ldmatrix_x4(b, smem_addr(base + p * 16 * kStride + ks * 16));
      mma_bf16(s[2 * p], qf[ks], b[0], b[1]);
      mma_bf16(s[2 * p + 1], qf[ks], b[2], b[3]);
    }
}

// Grid (n_q / HB, tiles): block (x, y) computes tile y for query heads x*HB .. x*HB+HB-1.
template <int HD, int HB, int S>
__global__ void __launch_bounds__(HB * 128) prefill_kernel(AttentionArgs a, float scale, TileList tiles) {
  using St = Stage<HD, S>;
  constexpr int kThreads = HB * 128, kStride = St::kStride, kChunks = HD / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* k_s = reinterpret_cast<bf16*>(smem_raw);  // [S][kKeys][kStride]
  bf16* v_s = k_s + S * St::kElems;               // [S][kKeys][kStride]
  __shared__ int row_pos[kTileRows];              // pos of the tile's rows; -1 past its end

  const uint32_t code = tiles.code[blockIdx.y];
  const int r0 = static_cast<int>(code & ((1u << kRowBits) - 1)), n = static_cast<int>(code >> kRowBits) + 1;
  const int group = a.n_q / a.n_kv, head0 = blockIdx.x * HB, kvh = head0 / group;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int head = head0 + warp / 4, w0 = (warp % 4) * 16;  // this warp: rows w0..w0+15, one head
  const int slot = a.seq[r0];
  if (threadIdx.x < kTileRows) row_pos[threadIdx.x] = threadIdx.x < n ? a.pos[r0 + threadIdx.x] : -1;
  __syncthreads();
  const int pos_lo = row_pos[w0 + g], pos_hi = row_pos[w0 + g + 8];  // this thread's rows g, g + 8
  int warp_max = max(pos_lo, pos_hi), warp_min = min(pos_lo, pos_hi);
  int block_max = max(row_pos[lane], row_pos[lane + 32]);
  for (int o = 16; o > 0; o >>= 1) {
    warp_max = max(warp_max, __shfl_xor_sync(0xffffffffu, warp_max, o));
    warp_min = min(warp_min, __shfl_xor_sync(0xffffffffu, warp_min, o));
    block_max = max(block_max, __shfl_xor_sync(0xffffffffu, block_max, o));
  }
  const int key_tiles = block_max / kKeys + 1;  // keys 0..block_max (row 0 exists: block_max >= 0)

  // Q fragments of the warp's 16 rows, all head dims, in registers for both passes.
  const bool lo_ok = w0 + g < n, hi_ok = w0 + g + 8 < n;
  const bf16* q_lo = a.q + static_cast<int64_t>(r0 + w0 + g) * a.q_stride + head * HD + 2 * t;
  const bf16* q_hi = q_lo + static_cast<int64_t>(8) * a.q_stride;
  uint32_t qf[HD / 16][4];
#pragma unroll
  for (int ks = 0; ks < HD / 16; ++ks) {
    qf[ks][0] = lo_ok ? *reinterpret_cast<const uint32_t*>(q_lo + ks * 16) : 0u;
    qf[ks][1] = hi_ok ? *reinterpret_cast<const uint32_t*>(q_hi + ks * 16) : 0u;
    qf[ks][2] = lo_ok ? *reinterpret_cast<const uint32_t*>(q_lo + ks * 16 + 8) : 0u;
    qf[ks][3] = hi_ok ? *reinterpret_cast<const uint32_t*>(q_hi + ks * 16 + 8) : 0u;
  }

  const int kv_dim = a.n_kv * HD;
  const int64_t kv_base = static_cast<int64_t>(slot) * a.capacity * kv_dim + kvh * HD;
  const bf16* k_g = a.k_cache + kv_base;
  const bf16* v_g = a.v_cache + kv_base;
  // Key tile kt of src into a stage: consecutive threads take consecutive 16-byte chunks of a
  // row (coalesced); rows past block_max are zero-filled (they may hold anything, even NaN).
  static_assert(kKeys * kChunks % kThreads == 0, "whole chunks per thread");
  const auto load = [&](bf16* dst, const bf16* src, int kt) {
#pragma unroll
    for (int i = 0; i < kKeys * kChunks / kThreads; ++i) {
      const int c = threadIdx.x + i * kThreads;
      const int row = c / kChunks, ch = c % kChunks, j = kt * kKeys + row;
      const bool ok = j <= block_max;
      cp_async16(dst + row * kStride + ch * 8, src + static_cast<int64_t>(ok ? j : 0) * kv_dim + ch * 8, ok);
    }
  };

  // Q·Kᵀ of key tile kt (in stage k_tile) for this thread's rows, e < 2: row g (pos_lo), else
  // row g + 8 (pos_hi): s[nt][e] = visible(score, e) where the key is visible (j <= pos[r]),
  // `masked` where not. A tile that ends at or before the warp's smallest position is visible
  // to all its rows and skips the per-element test (a warp-uniform branch): only the tiles on
  // the diagonal (and those of a tile's missing rows, pos -1) pay for it.
  const auto scores = [&](const bf16* k_tile, int kt, float (&s)[8][4], float masked, auto visible) {
    qk_tile<HD>(qf, k_tile, lane, s);
    if (kt * kKeys + kKeys - 1 <= warp_min) {
#pragma unroll
      for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[nt][e] = visible(s[nt][e], e);
    } else {
#pragma unroll
      for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int j = kt * kKeys + nt * 8 + 2 * t + (e & 1);
          s[nt][e] = j <= (e < 2 ? pos_lo : pos_hi) ? visible(s[nt][e], e) : masked;
        }
    }
  };

  // Streams key tiles 0..key_tiles-1 (K, and V when with_v) through the two stages and calls
  // body(kt, k_tile, v_tile) for those at or before the warp's last row; the next S - 1
  // tiles' copies are in flight while body runs (one commit group per tile, empty past the end).
  const auto stream_key_tiles = [&](auto with_v, auto&& body) {  // with_v: std::bool_constant
    const auto load_tile = [&](int kt) {
      if (kt < key_tiles) {
        load(k_s + (kt % S) * St::kElems, k_g, kt);
        if constexpr (decltype(with_v)::value) load(v_s + (kt % S) * St::kElems, v_g, kt);
      }
      cp_async_commit();
    };
#pragma unroll
    for (int kt = 0; kt < S - 1; ++kt) load_tile(kt);
    for (int kt = 0; kt < key_tiles; ++kt) {
      load_tile(kt + S - 1);  // into the stage tile kt - 1 was read from
      cp_async_wait(S - 1);   // tile kt has landed; the S - 1 after it may stay in flight
      __syncthreads();
      if (kt * kKeys <= warp_max) body(kt, k_s + (kt % S) * St::kElems, v_s + (kt % S) * St::kElems);
      __syncthreads();  // the stage read here is the one the next iteration's copy overwrites
    }
  };

  // Pass 1: row maxima of the visible scores, taken over the unscaled q·k and scaled once:
  // x -> fl(x · scale) never decreases as x grows (scale > 0), so fl(max · scale) is the
  // maximum of the scaled scores s = fl(q·k · scale) (__fmul_rn: no FMA contraction, as the
  // reference and the per-row kernel round it), bit for bit.
  float m_lo = -INFINITY, m_hi = -INFINITY;
  stream_key_tiles(std::false_type{}, [&](int kt, const bf16* k_tile, const bf16*) {
    float s[8][4];
    scores(k_tile, kt, s, -INFINITY, [](float x, int) { return x; });
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        if (e < 2) m_lo = fmaxf(m_lo, s[nt][e]);
        else m_hi = fmaxf(m_hi, s[nt][e]);
      }
  });
  for (int o = 1; o <= 2; o <<= 1) {  // the 4 lanes of a quad hold the same two rows
    m_lo = fmaxf(m_lo, __shfl_xor_sync(0xffffffffu, m_lo, o));
    m_hi = fmaxf(m_hi, __shfl_xor_sync(0xffffffffu, m_hi, o));
  }
  m_lo = __fmul_rn(m_lo, scale);
  m_hi = __fmul_rn(m_hi, scale);

  // Pass 2: p = exp(s - m), l = Σ p (unrounded), O = bf16(p)·V.
  float acc[HD / 8][4];
#pragma unroll
  for (int d = 0; d < HD / 8; ++d)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[d][e] = 0.0f;
  float l_lo = 0.0f, l_hi = 0.0f;
  // ldmatrix.x4.trans: matrices (keys +0, dims +0), (keys +8, dims +0), (keys +0, dims +8),
  // (keys +8, dims +8) -> B of dim tiles 2p, 2p + 1 for 16 keys.
  const int mi = lane / 8;
  const int v_off = (lane % 8 + (mi & 1) * 8) * kStride + (mi & 2) * 4;
  stream_key_tiles(std::true_type{}, [&](int kt, const bf16* k_tile, const bf16* v_stage) {
    float s[8][4];
    // Masked keys (and rows past the tile, m = -inf) are 0: never exp of garbage.
    scores(k_tile, kt, s, 0.0f, [&](float x, int e) { return expf(__fmul_rn(x, scale) - (e < 2 ? m_lo : m_hi)); });
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        if (e < 2) l_lo += s[nt][e];
        else l_hi += s[nt][e];
      }
    uint32_t pa[4][4];  // A fragments of bf16(p): keys 16k..16k+15
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      pa[k][0] = pack_bf16x2(s[2 * k][0], s[2 * k][1]);
      pa[k][1] = pack_bf16x2(s[2 * k][2], s[2 * k][3]);
      pa[k][2] = pack_bf16x2(s[2 * k + 1][0], s[2 * k + 1][1]);
      pa[k][3] = pack_bf16x2(s[2 * k + 1][2], s[2 * k + 1][3]);
    }
    const bf16* v_tile = v_stage + v_off;
#pragma unroll
    for (int k = 0; k < 4; ++k)
#pragma unroll
      for (int p = 0; p < HD / 16; ++p) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, smem_addr(v_tile + k * 16 * kStride + p * 16));
        mma_bf16(acc[2 * p], pa[k], b[0], b[1]);
        mma_bf16(acc[2 * p + 1], pa[k], b[2], b[3]);
      }
  });
  for (int o = 1; o <= 2; o <<= 1) {
    l_lo += __shfl_xor_sync(0xffffffffu, l_lo, o);
    l_hi += __shfl_xor_sync(0xffffffffu, l_hi, o);
  }

  // out = bf16(acc * (1 / l)); a row whose seq is not the tile's slot gets NaN (bad spans).
  const float inv_lo = 1.0f / l_lo, inv_hi = 1.0f / l_hi;
  const int64_t out_stride = static_cast<int64_t>(a.n_q) * HD;
  bf16* out_lo = a.out + static_cast<int64_t>(r0 + w0 + g) * out_stride + head * HD + 2 * t;
  bf16* out_hi = out_lo + 8 * out_stride;
  constexpr uint32_t kNaN2 = 0x7FC07FC0u;
  const bool good_lo = lo_ok && a.seq[r0 + w0 + g] == slot, good_hi = hi_ok && a.seq[r0 + w0 + g + 8] == slot;
#pragma unroll
  for (int d = 0; d < HD / 8; ++d) {
    if (lo_ok)
      *reinterpret_cast<uint32_t*>(out_lo + d * 8) =
          good_lo ? pack_bf16x2(acc[d][0] * inv_lo, acc[d][1] * inv_lo) : kNaN2;
    if (hi_ok)
      *reinterpret_cast<uint32_t*>(out_hi + d * 8) =
          good_hi ? pack_bf16x2(acc[d][2] * inv_hi, acc[d][3] * inv_hi) : kNaN2;
  }
}

template <int HD, int HB, int S>
void launch_stages(const AttentionArgs& a, const std::vector<uint32_t>& codes, cudaStream_t s) {
  const size_t bytes = Stage<HD, S>::kSmemBytes;
  LLMQ_CUDA_CHECK(cudaFuncSetAttribute(prefill_kernel<HD, HB, S>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(bytes)));
  // head_dim**-0.5 rounded once from double, as attention.cu and the reference.
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(HD)));
  for (size_t i0 = 0; i0 < codes.size(); i0 += kMaxTiles) {
    const int n = static_cast<int>(std::min<size_t>(kMaxTiles, codes.size() - i0));
    TileList list{};
    std::copy(codes.begin() + i0, codes.begin() + i0 + n, list.code);
    prefill_kernel<HD, HB, S><<<dim3(a.n_q / HB, n), HB * 128, bytes, s>>>(a, scale, list);
    LLMQ_CUDA_CHECK_LAUNCH();
  }
}

// Stages of K/V tiles in shared memory: a.prefill_stages (2, 3 or 4) or the default, 3: on an
// H200 (llmq_attention_bench --mode prefill) 3 stages took 1-1.5% less time than 2 or 4.
constexpr int kDefaultStages = 3;
template <int HD, int HB>
void launch(const AttentionArgs& a, const std::vector<uint32_t>& codes, cudaStream_t s) {
  switch (a.prefill_stages > 0 ? a.prefill_stages : kDefaultStages) {
    case 3: return launch_stages<HD, HB, 3>(a, codes, s);
    case 4: return launch_stages<HD, HB, 4>(a, codes, s);
    default: return launch_stages<HD, HB, 2>(a, codes, s);
  }
}


}  // namespace

std::vector<RowSpan> row_spans(const int32_t* pos, const int32_t* seq, int rows) {
  std::vector<RowSpan> spans;
  for (int r = 0; r < rows; ++r) {
    if (r > 0 && seq[r] == seq[r - 1] && pos[r] == pos[r - 1] + 1) ++spans.back().rows;
    else spans.push_back({r, 1});
  }
  return spans;
}

bool attention_prefill_supported(int n_q, int n_kv, int hd) {
  if (n_kv <= 0 || n_q % n_kv != 0 || (hd != 64 && hd != 128)) return false;
  const int group = n_q / n_kv;
  return group == 1 || group == 2 || group == 4 || group == 8;
}

void attention_prefill(const AttentionArgs& a, const std::vector<RowSpan>& spans, cudaStream_t s) {
  LLMQ_CHECK(attention_prefill_supported(a.n_q, a.n_kv, a.hd),
             "attention_prefill: heads " << a.n_q << "/" << a.n_kv << " head_dim " << a.hd << " unsupported");
  LLMQ_CHECK(a.rows < (1 << kRowBits), "attention_prefill: " << a.rows << " rows");
  LLMQ_CHECK(a.prefill_stages == 0 || (a.prefill_stages >= 2 && a.prefill_stages <= 4),
             "attention_prefill: prefill_stages " << a.prefill_stages << " is not 2, 3 or 4");
  LLMQ_CHECK(a.q_stride % 2 == 0, "attention_prefill: odd q_stride " << a.q_stride);  // 4-byte Q loads
  LLMQ_CHECK(reinterpret_cast<uintptr_t>(a.k_cache) % 16 == 0 && reinterpret_cast<uintptr_t>(a.v_cache) % 16 == 0,
             "attention_prefill: K/V cache not 16-byte aligned");
  // Tiles of 64 rows from each span's start, heaviest (latest positions) first so that the
  // short ones fill the GPU at the end.
  struct Tile {
    int index;  // within its span
    uint32_t code;
  };
  std::vector<Tile> tiles;
  for (const RowSpan& sp : spans) {
    LLMQ_CHECK(sp.rows >= 1 && sp.first_row >= 0 && sp.first_row + sp.rows <= a.rows,
               "attention_prefill: span {" << sp.first_row << ", " << sp.rows << "} outside rows 0.." << a.rows);
    for (int k = 0; k * kTileRows < sp.rows; ++k) {
      const int r0 = sp.first_row + k * kTileRows, n = std::min(kTileRows, sp.rows - k * kTileRows);
      tiles.push_back({k, static_cast<uint32_t>(r0) | static_cast<uint32_t>(n - 1) << kRowBits});
    }
  }
  if (tiles.empty()) return;
  std::stable_sort(tiles.begin(), tiles.end(), [](const Tile& x, const Tile& y) { return x.index > y.index; });
  std::vector<uint32_t> codes(tiles.size());
  for (size_t i = 0; i < tiles.size(); ++i) codes[i] = tiles[i].code;
  const bool pair = a.n_q / a.n_kv >= 2;  // two heads of the group per block share K/V tiles
  if (a.hd == 64) return pair ? launch<64, 2>(a, codes, s) : launch<64, 1>(a, codes, s);
  return pair ? launch<128, 2>(a, codes, s) : launch<128, 1>(a, codes, s);
}

void attention(const AttentionArgs& a, const std::vector<RowSpan>& spans, cudaStream_t s) {
  if (a.rows == 0) return;
  int covered = 0;
  for (const RowSpan& sp : spans) {
    LLMQ_CHECK(sp.first_row == covered && sp.rows >= 1,
               "attention: span {" << sp.first_row << ", " << sp.rows << "} does not continue at row " << covered);
    covered += sp.rows;
  }
  LLMQ_CHECK(covered == a.rows, "attention: spans cover " << covered << " of " << a.rows << " rows");
  if (!attention_prefill_supported(a.n_q, a.n_kv, a.hd)) return attention(a, s);
  // Long spans to the tensor cores; each run of consecutive short spans (decode rows) is one
  // per-row call on its slice of the rows.
  std::vector<RowSpan> long_spans;
  int short_begin = -1;
  const auto flush_short = [&](int end) {
    if (short_begin >= 0) attention(attention_rows(a, short_begin, end - short_begin), s);
    short_begin = -1;
  };
  for (const RowSpan& sp : spans) {
    if (sp.rows >= kPrefillMinSpanRows) {
      flush_short(sp.first_row);
      long_spans.push_back(sp);
    } else if (short_begin < 0) {
      short_begin = sp.first_row;
    }
  }
  flush_short(a.rows);
  if (!long_spans.empty()) attention_prefill(a, long_spans, s);
}

}  // namespace llmq::gpu
