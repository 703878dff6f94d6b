// The skinny BF16 GEMM (gemm_skinny.h). Block: 4 warps over BN = 128 (or 64) weight rows (32
// each: two m16 tiles; or one) and all M tokens (MT n8 tiles, M padded to 16, 32 or 64 with
// zero rows). Each stage of CK = 64 or 128 k, the weights and x arrive by cp.async in rows of
// 2 CK bytes whose 16-byte chunks are XOR-swizzled by row (chunk c of row r at c ^ (r % 8)),
// so each ldmatrix's eight row addresses hit eight different bank groups.
#include "runner/gemm_skinny.h"

#include <algorithm>
#include <type_traits>

#include "core/numeric.h"
#include "runner/cuda_check.h"
#include "runner/device_attribute.h"
#include "runner/epilogue.cuh"
#include "runner/mma.cuh"
#include "runner/pdl.cuh"
#include "runner/split_arrival.cuh"

namespace llmq::gpu {
namespace {

using bf16 = uint16_t;

constexpr int kWarps = 4;
constexpr int kStages = 4;
constexpr int kMaxSplits = 8;
constexpr int kMinStagesPerSplit = 4;
constexpr int kMaxSplitBlocksPerSm = 4;  // bounds the workspace
constexpr size_t kCounterBytes = 16384;  // [4096] uint32 arrival counters, one per block column

// Byte offset of 16-byte chunk `chunk` of row `row` in a stage of CK k (rows of 2 CK bytes).
template <int CK>
__device__ __forceinline__ int swizzled(int row, int chunk) {
  return row * (CK * 2) + ((chunk ^ (row & 7)) << 4);
}

template <int MT, int BN, int CK>
struct Stage {
  static constexpr int kXRows = MT * 8;
  static constexpr int kRowBytes = CK * 2;
  static constexpr int kBytes = (BN + kXRows) * kRowBytes;
};

// The last block of a column: y[m, n0 + j] = bf16 of the column's split tiles summed in split
// order, with the epilogue, four outputs a thread at a time with every split's load (and the
// residual's) issued before the adds (the loads, not the adds, are the tail's cost: a dependent
// load per split and output took the tail to tens of microseconds at M = 64).
template <int BN>
__device__ __forceinline__ void reduce_splits(const float* tiles, int64_t split_stride, int splits, int M, int N, int n0,
                                              bf16* y, const bf16* residual, bool swiglu) {
  constexpr int kThreads = kWarps * 32, kUnroll = 2;
  const int quads = M * BN / 4;
  // Whether every quad (n a multiple of 4) lies inside N and on 8-byte (SwiGLU: 4-byte) bounds.
  const bool whole = N % 4 == 0;
  const auto at = [&](int quad, int& m, int& n) {
    m = quad * 4 / BN, n = n0 + quad * 4 % BN;
    return quad < quads && n < N;
  };
  for (int base = threadIdx.x; base < quads; base += kThreads * kUnroll) {
    float4 v[kUnroll][kMaxSplits];
    uint2 r[kUnroll] = {};  // residual[m, n..n + 3]: a plain load, y may alias it (this thread's outputs)
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      int m, n;
      if (residual && whole && at(base + u * kThreads, m, n))
        r[u] = *reinterpret_cast<const uint2*>(residual + static_cast<int64_t>(m) * N + n);
#pragma unroll
      for (int q = 0; q < kMaxSplits; ++q)
        if (q < splits && base + u * kThreads < quads)
          v[u][q] = __ldcg(reinterpret_cast<const float4*>(tiles + q * split_stride) + base + u * kThreads);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      int m, n;
      if (!at(base + u * kThreads, m, n)) continue;
      float4 sum = v[u][0];
#pragma unroll
      for (int q = 1; q < kMaxSplits; ++q)
        if (q < splits) sum = make_float4(sum.x + v[u][q].x, sum.y + v[u][q].y, sum.z + v[u][q].z, sum.w + v[u][q].w);
      const float f[4] = {sum.x, sum.y, sum.z, sum.w};
      if (swiglu) {  // n even: whole (gate, up) pairs
        bf16* out = y + static_cast<int64_t>(m) * (N / 2) + n / 2;
        if (whole)
          *reinterpret_cast<uint32_t*>(out) = swiglu_out(f[0], f[1]) | uint32_t(swiglu_out(f[2], f[3])) << 16;
        else
          for (int j = 0; j < 4 && n + j < N; j += 2) out[j / 2] = swiglu_out(f[j], f[j + 1]);
        continue;
      }
      const int64_t i = static_cast<int64_t>(m) * N + n;
      if (whole) {
        bf16 o[4];
        const bf16 rv[4] = {bf16(r[u].x), bf16(r[u].x >> 16), bf16(r[u].y), bf16(r[u].y >> 16)};
#pragma unroll
        for (int j = 0; j < 4; ++j) o[j] = residual ? residual_add_out(f[j], rv[j]) : f32_to_bf16(f[j]);
        *reinterpret_cast<uint2*>(y + i) = {o[0] | uint32_t(o[1]) << 16, o[2] | uint32_t(o[3]) << 16};
      } else {
        for (int j = 0; j < 4 && n + j < N; ++j) y[i + j] = residual_out(f[j], residual ? residual + i + j : nullptr);
      }
    }
  }
}

// Block (column of BN weight rows, split of K): warp w takes rows BN / 4 · w .. in MA m16
// tiles. chunks_per_split stages of CK k per split; partials [splits, columns, M, BN] f32 and
// counters [columns] when gridDim.y > 1.
template <int MT, int BN, int CK>
__global__ void __launch_bounds__(kWarps * 32) skinny_kernel(const bf16* __restrict__ x, const bf16* __restrict__ w,
                                                             bf16* y, int M, int N, int K, int chunks_per_split,
                                                             float* partials, uint32_t* counters,
                                                             const bf16* residual, bool swiglu) {
  extern __shared__ __align__(128) uint8_t smem[];
  using St = Stage<MT, BN, CK>;
  constexpr int kRowBytes = St::kRowBytes, kChunks = CK / 8;
  constexpr int kWarpRows = BN / kWarps, MA = kWarpRows / 16;
  static_assert(MA >= 1 && kWarpRows % 16 == 0, "skinny_kernel: BN");
  const int column = blockIdx.x, split = blockIdx.y, splits = gridDim.y;
  const int n0 = column * BN;
  const int c_begin = split * chunks_per_split;
  const int count = max(0, min(K / CK, c_begin + chunks_per_split) - c_begin);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  // A thread copies 16-byte chunk tid % kChunks of rows tid / kChunks + kRowStep j: the same
  // chunk, and (kRowStep being a multiple of 8) the same swizzle, for every j, so its addresses
  // are a base plus strides.
  constexpr int kThreads = kWarps * 32, kRowStep = kThreads / kChunks;
  static_assert(kRowStep % 8 == 0 && St::kXRows % kRowStep == 0, "skinny_kernel: CK");
  const int r0 = threadIdx.x / kChunks, c = threadIdx.x % kChunks;
  const int dst0 = swizzled<CK>(r0, c);
  const bf16* w0 = w + static_cast<int64_t>(min(n0 + r0, N - 1)) * K + c * 8;
  const bf16* x0 = x + static_cast<int64_t>(min(r0, M - 1)) * K + c * 8;
  const int64_t step = static_cast<int64_t>(kRowStep) * K;
  const auto load_w = [&](int i) {
    uint8_t* dst = smem + (i % kStages) * St::kBytes + dst0;
    const bf16* src = w0 + (c_begin + i) * CK;
#pragma unroll
    for (int j = 0; j < BN / kRowStep; ++j) {  // rows past N: zeros, their (clamped) source unread
      const bool ok = n0 + r0 + j * kRowStep < N;
      cp_async16(dst + j * kRowStep * kRowBytes, ok ? src + j * step : src, ok);
    }
  };
  const auto load_x = [&](int i) {
    uint8_t* dst = smem + (i % kStages) * St::kBytes + BN * kRowBytes + dst0;
    const bf16* src = x0 + (c_begin + i) * CK;
#pragma unroll
    for (int j = 0; j < St::kXRows / kRowStep; ++j) {  // token rows past M: zeros
      const bool ok = r0 + j * kRowStep < M;
      cp_async16(dst + j * kRowStep * kRowBytes, ok ? src + j * step : src, ok);
    }
  };

  // Weights never change under a running model, so they stream before the wait; x is the
  // previous kernel's output. Group 0 holds the first stages' weights and x stage 0.
  for (int i = 0; i < kStages - 1; ++i)
    if (i < count) load_w(i);
  pdl_wait();
  for (int i = 0; i < kStages - 1; ++i) {
    if (i < count) load_x(i);
    cp_async_commit();
  }

  float acc[MA][MT][4];
#pragma unroll
  for (int mt = 0; mt < MA; ++mt)
#pragma unroll
    for (int nt = 0; nt < MT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mt][nt][e] = 0.0f;

  for (int i = 0; i < count; ++i) {
    cp_async_wait(kStages - 2);
    __syncthreads();  // stage i is in; every warp is done with stage i - 1, whose slot refills now
    if (i + kStages - 1 < count) {
      load_w(i + kStages - 1);
      load_x(i + kStages - 1);
    }
    cp_async_commit();
    const uint8_t* ws = smem + (i % kStages) * St::kBytes;
    const uint8_t* xs = ws + BN * kRowBytes;
#pragma unroll
    for (int kk = 0; kk < CK / 16; ++kk) {
      uint32_t a[MA][4];
#pragma unroll
      for (int mt = 0; mt < MA; ++mt) {  // A: rows g, g + 8 at k 0..7, then at k 8..15
        const int row = warp * kWarpRows + mt * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
        ldmatrix_x4(a[mt], smem_addr(ws + swizzled<CK>(row, kk * 2 + (lane >> 4))));
      }
#pragma unroll
      for (int np = 0; np < MT / 2; ++np) {  // B of two n8 tiles: tokens 16np.. at k 0..7, 8..15
        uint32_t b[4];
        const int row = np * 16 + (lane & 7) + (lane >> 4) * 8;
        ldmatrix_x4(b, smem_addr(xs + swizzled<CK>(row, kk * 2 + ((lane >> 3) & 1))));
#pragma unroll
        for (int mt = 0; mt < MA; ++mt) {
          mma_bf16(acc[mt][2 * np], a[mt], b[0], b[1]);
          mma_bf16(acc[mt][2 * np + 1], a[mt], b[2], b[3]);
        }
      }
    }
  }
  cp_async_wait(0);

  // acc[mt][nt][e]: weight row n0 + kWarpRows warp + 16 mt + g (+ 8 for e >= 2), token 8 nt +
  // 2t (+ 1 for odd e).
  const int g = lane / 4, t = lane % 4;
  // f(m, n, value) for every fragment value, in range or not: every lane takes the same path,
  // so f may shuffle.
  const auto for_all = [&](auto f) {
#pragma unroll
    for (int mt = 0; mt < MA; ++mt)
#pragma unroll
      for (int nt = 0; nt < MT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          f(nt * 8 + 2 * t + (e & 1), n0 + warp * kWarpRows + mt * 16 + g + (e >= 2 ? 8 : 0), acc[mt][nt][e]);
  };
  const auto for_each = [&](auto f) {
    for_all([&](int m, int n, float v) {
      if (n < N && m < M) f(m, n, v);
    });
  };
  if (splits == 1) {
    if (swiglu) {  // rows n (gate, g even) and n + 1 (up) sit in lanes 4 apart
      for_all([&](int m, int n, float v) {
        const float up = __shfl_xor_sync(0xFFFFFFFFu, v, 4);
        if (g % 2 == 0 && n < N && m < M) y[static_cast<int64_t>(m) * (N / 2) + n / 2] = swiglu_out(v, up);
      });
      return;
    }
    for_each([&](int m, int n, float v) {
      const int64_t i = static_cast<int64_t>(m) * N + n;
      y[i] = residual_out(v, residual ? residual + i : nullptr);
    });
    return;
  }
  // Partials as one [M, BN] f32 tile per (split, column): the fragments' stores fill whole
  // 32-byte sectors, and the last block reads the tiles back as float4s.
  const int64_t tile = static_cast<int64_t>(M) * BN, split_stride = tile * gridDim.x;
  float* mine = partials + split * split_stride + column * tile;
  for_each([&](int m, int n, float v) { mine[m * BN + n - n0] = v; });
  if (!last_block_to_arrive(counters + column, static_cast<unsigned>(splits))) return;
  reduce_splits<BN>(partials + column * tile, split_stride, splits, M, N, n0, y, residual, swiglu);
  if (threadIdx.x == 0) counters[column] = 0;  // ready for the next launch
}

template <int MT, int BN, int CK>
void launch(const bf16* x, const bf16* w, bf16* y, int M, int N, int K, int splits, float* partials,
            uint32_t* counters, const GemvEpilogue& e, cudaStream_t s) {
  const int chunks = K / CK, per_split = (chunks + splits - 1) / splits;
  const size_t smem = static_cast<size_t>(kStages) * Stage<MT, BN, CK>::kBytes;
  LLMQ_CUDA_CHECK(cudaFuncSetAttribute(skinny_kernel<MT, BN, CK>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(smem)));
  const dim3 grid((N + BN - 1) / BN, (chunks + per_split - 1) / per_split);
  launch_pdl(skinny_kernel<MT, BN, CK>, grid, dim3(kWarps * 32), smem, s, x, w, y, M, N, K, per_split, partials,
             counters, e.residual, e.swiglu);
  LLMQ_CUDA_CHECK_LAUNCH();
}

template <int BN, int CK>
void launch_rows(const bf16* x, const bf16* w, bf16* y, int M, int N, int K, int splits, float* partials,
                 uint32_t* counters, const GemvEpilogue& e, cudaStream_t s) {
  if (M <= 16) return launch<2, BN, CK>(x, w, y, M, N, K, splits, partials, counters, e, s);
  if (M <= 32) return launch<4, BN, CK>(x, w, y, M, N, K, splits, partials, counters, e, s);
  return launch<8, BN, CK>(x, w, y, M, N, K, splits, partials, counters, e, s);
}

}  // namespace

bool skinny_bf16_supported(int M, int N, int K) {
  return M >= 1 && M <= kSkinnyMaxM && N >= 1 && K >= kSkinnyChunkK && K % kSkinnyChunkK == 0;
}

int skinny_splits(int M, int N, int K, int sms, size_t workspace_bytes, int block_n, int chunk_k) {
  const int columns = (N + block_n - 1) / block_n;
  if (workspace_bytes <= kCounterBytes || columns > static_cast<int>(kCounterBytes / 4)) return 1;
  if (chunk_k <= 0) chunk_k = skinny_chunk_k(M, N, K, sms, workspace_bytes, block_n);
  const int most = std::min({kMaxSplits, K / chunk_k / kMinStagesPerSplit,
                             kMaxSplitBlocksPerSm * sms / columns,
                             static_cast<int>((workspace_bytes - kCounterBytes) / (sizeof(float) * M * columns * block_n))});
  // Time per weight row at s splits, in HBM bytes: its K weights (2 K) times the busiest SM's
  // share over the mean (ceil(blocks / sms) · sms / blocks), plus the f32 partials written and
  // read back (2 · 4 s M) through L2, counted at half the cost of HBM bytes.
  const auto cost = [&](int s) {
    const int blocks = columns * s;
    return 2.0 * K * ((blocks + sms - 1) / sms) * sms / blocks + (s > 1 ? 4.0 * s * M : 0.0);
  };
  int best = 1;
  for (int s = 2; s <= most; ++s)
    if (cost(s) < cost(best)) best = s;
  return best;
}

size_t skinny_workspace_bytes(int max_m) {
  // skinny_splits keeps splits · columns <= kMaxSplitBlocksPerSm · sms, each tile M x (<= 128).
  const size_t sms = static_cast<size_t>(device_attribute(cudaDevAttrMultiProcessorCount));
  return kCounterBytes + sizeof(float) * static_cast<size_t>(std::min(max_m, kSkinnyMaxM)) * kMaxSplitBlocksPerSm *
                             sms * kSkinnyBlockN;
}

size_t skinny_split_workspace_bytes(int M, int N, int splits, int block_n) {
  const size_t columns = static_cast<size_t>((N + block_n - 1) / block_n);
  return kCounterBytes + sizeof(float) * static_cast<size_t>(splits) * M * columns * block_n;
}

int skinny_chunk_k(int M, int N, int K, int sms, size_t workspace_bytes, int block_n, int splits) {
  if (K % 128 != 0) return 64;
  if (splits <= 0) splits = skinny_splits(M, N, K, sms, workspace_bytes, block_n, 128);
  return K / 128 / splits >= 2 * kStages ? 128 : 64;
}

void gemm_bf16_skinny(const uint16_t* x, const uint16_t* w, uint16_t* y, int M, int N, int K, void* workspace,
                      size_t workspace_bytes, cudaStream_t s, int splits, int block_n, int chunk_k,
                      const GemvEpilogue& e) {
  LLMQ_CHECK(skinny_bf16_supported(M, N, K), "gemm_bf16_skinny: M " << M << " N " << N << " K " << K);
  LLMQ_CHECK(!(e.residual && e.swiglu) && !e.norm_weight && (!e.swiglu || N % 2 == 0),
             "gemm_bf16_skinny: a residual or (N even) swiglu epilogue, no fused norm");
  if (block_n <= 0) block_n = kSkinnyBlockN;
  LLMQ_CHECK(block_n == 64 || block_n == 128, "gemm_bf16_skinny: block_n " << block_n << " is not 64 or 128");
  if (workspace == nullptr) workspace_bytes = 0;
  const int sms = device_attribute(cudaDevAttrMultiProcessorCount);
  if (chunk_k <= 0) chunk_k = skinny_chunk_k(M, N, K, sms, workspace_bytes, block_n, splits);
  LLMQ_CHECK((chunk_k == 64 || chunk_k == 128) && K % chunk_k == 0,
             "gemm_bf16_skinny: chunk_k " << chunk_k << " is not 64 or 128 dividing K " << K);
  if (splits <= 0) splits = skinny_splits(M, N, K, sms, workspace_bytes, block_n, chunk_k);
  const int columns = (N + block_n - 1) / block_n;  // one arrival counter each
  if (splits > 1)
    LLMQ_CHECK(columns <= static_cast<int>(kCounterBytes / 4) &&
                   workspace_bytes >= skinny_split_workspace_bytes(M, N, splits, block_n),
               "gemm_bf16_skinny: " << splits << " splits need more workspace than " << workspace_bytes << " bytes");
  auto* counters = static_cast<uint32_t*>(workspace);
  auto* partials = reinterpret_cast<float*>(static_cast<uint8_t*>(workspace) + kCounterBytes);
  const auto go = [&](auto bn, auto ck) {
    launch_rows<decltype(bn)::value, decltype(ck)::value>(x, w, y, M, N, K, splits, partials, counters, e, s);
  };
  using C64 = std::integral_constant<int, 64>;
  using C128 = std::integral_constant<int, 128>;
  if (block_n == 64) return chunk_k == 64 ? go(C64{}, C64{}) : go(C64{}, C128{});
  return chunk_k == 64 ? go(C128{}, C64{}) : go(C128{}, C128{});
}

}  // namespace llmq::gpu
