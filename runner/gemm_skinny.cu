// The skinny BF16 GEMM (gemm_skinny.h). Block: 4 warps over BN = 128 (or 64) weight rows (32
// each: two m16 tiles; or one) and all M tokens (MT n8 tiles, M padded to 16, 32 or 64 with
// zero rows). Each stage of 64 k, the weights (BN / 8 KB) and x (MT KB) arrive by cp.async in
// rows of 128 bytes whose 16-byte chunks are XOR-swizzled by row (chunk c of row r at
// c ^ (r % 8)), so each ldmatrix's eight row addresses hit eight different bank groups.
#include "runner/gemm_skinny.h"

#include <algorithm>

#include "core/numeric.h"
#include "runner/cuda_check.h"
#include "runner/device_attribute.h"
#include "runner/mma.cuh"
#include "runner/pdl.cuh"
#include "runner/split_arrival.cuh"

namespace llmq::gpu {
namespace {

using bf16 = uint16_t;

constexpr int kWarps = 4;
constexpr int kStages = 4;
constexpr int kRowBytes = kSkinnyChunkK * 2;  // one row of a stage: 64 bf16
constexpr int kMaxSplits = 8;
constexpr int kMinStagesPerSplit = 4;
constexpr size_t kCounterBytes = 16384;  // [4096] uint32 arrival counters, one per block column

__device__ __forceinline__ int swizzled(int row, int chunk) { return row * kRowBytes + ((chunk ^ (row & 7)) << 4); }

template <int MT, int BN>
struct Stage {
  static constexpr int kXRows = MT * 8;
  static constexpr int kBytes = (BN + kXRows) * kRowBytes;
};

// Block (column of BN weight rows, split of K): warp w takes rows BN / 4 · w .. in MA m16
// tiles. chunks_per_split stages of 64 k per split; partials [splits, M, N] f32 and counters
// [columns] when gridDim.y > 1.
template <int MT, int BN>
__global__ void __launch_bounds__(kWarps * 32) skinny_kernel(const bf16* __restrict__ x, const bf16* __restrict__ w,
                                                             bf16* y, int M, int N, int K, int chunks_per_split,
                                                             float* partials, uint32_t* counters) {
  extern __shared__ __align__(128) uint8_t smem[];
  using St = Stage<MT, BN>;
  constexpr int kWarpRows = BN / kWarps, MA = kWarpRows / 16;
  static_assert(MA >= 1 && kWarpRows % 16 == 0, "skinny_kernel: BN");
  const int column = blockIdx.x, split = blockIdx.y, splits = gridDim.y;
  const int n0 = column * BN;
  const int c_begin = split * chunks_per_split;
  const int count = max(0, min(K / kSkinnyChunkK, c_begin + chunks_per_split) - c_begin);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  // A thread copies 16-byte chunk tid % 8 of rows tid / 8 + 16 j: the same chunk, and (row % 8
  // being the same) the same swizzle, for every j, so its addresses are a base plus strides.
  constexpr int kThreads = kWarps * 32, kRowStep = kThreads / 8;
  const int r0 = threadIdx.x / 8, c = threadIdx.x % 8;
  const int dst0 = swizzled(r0, c);
  const bf16* w0 = w + static_cast<int64_t>(min(n0 + r0, N - 1)) * K + c * 8;
  const bf16* x0 = x + static_cast<int64_t>(min(r0, M - 1)) * K + c * 8;
  const int64_t step = static_cast<int64_t>(kRowStep) * K;
  const auto load_w = [&](int i) {
    uint8_t* dst = smem + (i % kStages) * St::kBytes + dst0;
    const bf16* src = w0 + (c_begin + i) * kSkinnyChunkK;
#pragma unroll
    for (int j = 0; j < BN / kRowStep; ++j) {  // rows past N: zeros, their (clamped) source unread
      const bool ok = n0 + r0 + j * kRowStep < N;
      cp_async16(dst + j * kRowStep * kRowBytes, ok ? src + j * step : src, ok);
    }
  };
  const auto load_x = [&](int i) {
    uint8_t* dst = smem + (i % kStages) * St::kBytes + BN * kRowBytes + dst0;
    const bf16* src = x0 + (c_begin + i) * kSkinnyChunkK;
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
    for (int kk = 0; kk < kSkinnyChunkK / 16; ++kk) {
      uint32_t a[MA][4];
#pragma unroll
      for (int mt = 0; mt < MA; ++mt) {  // A: rows g, g + 8 at k 0..7, then at k 8..15
        const int row = warp * kWarpRows + mt * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
        ldmatrix_x4(a[mt], smem_addr(ws + swizzled(row, kk * 2 + (lane >> 4))));
      }
#pragma unroll
      for (int np = 0; np < MT / 2; ++np) {  // B of two n8 tiles: tokens 16np.. at k 0..7, 8..15
        uint32_t b[4];
        const int row = np * 16 + (lane & 7) + (lane >> 4) * 8;
        ldmatrix_x4(b, smem_addr(xs + swizzled(row, kk * 2 + ((lane >> 3) & 1))));
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
  const auto for_each = [&](auto f) {
#pragma unroll
    for (int mt = 0; mt < MA; ++mt)
#pragma unroll
      for (int nt = 0; nt < MT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int n = n0 + warp * kWarpRows + mt * 16 + g + (e >= 2 ? 8 : 0), m = nt * 8 + 2 * t + (e & 1);
          if (n < N && m < M) f(m, n, acc[mt][nt][e]);
        }
  };
  if (splits == 1) {
    for_each([&](int m, int n, float v) { y[static_cast<int64_t>(m) * N + n] = f32_to_bf16(v); });
    return;
  }
  for_each([&](int m, int n, float v) { partials[(static_cast<int64_t>(split) * M + m) * N + n] = v; });
  if (!last_block_to_arrive(counters + column, static_cast<unsigned>(splits))) return;
  for_each([&](int m, int n, float) {
    float sum = 0.0f;
    for (int q = 0; q < splits; ++q) sum += __ldcg(partials + (static_cast<int64_t>(q) * M + m) * N + n);
    y[static_cast<int64_t>(m) * N + n] = f32_to_bf16(sum);
  });
  if (threadIdx.x == 0) counters[column] = 0;  // ready for the next launch
}

template <int MT, int BN>
void launch(const bf16* x, const bf16* w, bf16* y, int M, int N, int K, int splits, float* partials,
            uint32_t* counters, cudaStream_t s) {
  const int chunks = K / kSkinnyChunkK, per_split = (chunks + splits - 1) / splits;
  const size_t smem = static_cast<size_t>(kStages) * Stage<MT, BN>::kBytes;
  LLMQ_CUDA_CHECK(cudaFuncSetAttribute(skinny_kernel<MT, BN>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(smem)));
  const dim3 grid((N + BN - 1) / BN, (chunks + per_split - 1) / per_split);
  launch_pdl(skinny_kernel<MT, BN>, grid, dim3(kWarps * 32), smem, s, x, w, y, M, N, K, per_split, partials, counters);
  LLMQ_CUDA_CHECK_LAUNCH();
}

template <int BN>
void launch_rows(const bf16* x, const bf16* w, bf16* y, int M, int N, int K, int splits, float* partials,
                 uint32_t* counters, cudaStream_t s) {
  if (M <= 16) return launch<2, BN>(x, w, y, M, N, K, splits, partials, counters, s);
  if (M <= 32) return launch<4, BN>(x, w, y, M, N, K, splits, partials, counters, s);
  return launch<8, BN>(x, w, y, M, N, K, splits, partials, counters, s);
}

}  // namespace

bool skinny_bf16_supported(int M, int N, int K) {
  return M >= 1 && M <= kSkinnyMaxM && N >= 1 && K >= kSkinnyChunkK && K % kSkinnyChunkK == 0;
}

int skinny_splits(int M, int N, int K, int sms, size_t workspace_bytes, int block_n) {
  const int columns = (N + block_n - 1) / block_n;
  if (columns >= sms || workspace_bytes <= kCounterBytes || columns > static_cast<int>(kCounterBytes / 4)) return 1;
  const int by_grid = 2 * sms / columns;  // rounded down: one wave at two blocks per SM
  const int by_k = K / kSkinnyChunkK / kMinStagesPerSplit;
  const int by_workspace = static_cast<int>((workspace_bytes - kCounterBytes) / (sizeof(float) * M * N));
  return std::max(1, std::min({by_grid, by_k, by_workspace, kMaxSplits}));
}

size_t skinny_workspace_bytes(int max_m) {
  // A split call has columns < sms and splits <= 2 sms / columns, so splits · N <= 2 sms · 128
  // rows (3 sms · 128 leaves room).
  const size_t sms = static_cast<size_t>(device_attribute(cudaDevAttrMultiProcessorCount));
  return kCounterBytes + sizeof(float) * static_cast<size_t>(std::min(max_m, kSkinnyMaxM)) * 3 * sms * kSkinnyBlockN;
}

void gemm_bf16_skinny(const uint16_t* x, const uint16_t* w, uint16_t* y, int M, int N, int K, void* workspace,
                      size_t workspace_bytes, cudaStream_t s, int splits, int block_n) {
  LLMQ_CHECK(skinny_bf16_supported(M, N, K), "gemm_bf16_skinny: M " << M << " N " << N << " K " << K);
  if (block_n <= 0) block_n = kSkinnyBlockN;
  LLMQ_CHECK(block_n == 64 || block_n == 128, "gemm_bf16_skinny: block_n " << block_n << " is not 64 or 128");
  if (workspace == nullptr) workspace_bytes = 0;
  const int sms = device_attribute(cudaDevAttrMultiProcessorCount);
  if (splits <= 0) splits = skinny_splits(M, N, K, sms, workspace_bytes, block_n);
  const int columns = (N + block_n - 1) / block_n;
  if (splits > 1)
    LLMQ_CHECK(columns <= static_cast<int>(kCounterBytes / 4) &&
                   workspace_bytes >= kCounterBytes + sizeof(float) * splits * static_cast<size_t>(M) * N,
               "gemm_bf16_skinny: " << splits << " splits need more workspace than " << workspace_bytes << " bytes");
  auto* counters = static_cast<uint32_t*>(workspace);
  auto* partials = reinterpret_cast<float*>(static_cast<uint8_t*>(workspace) + kCounterBytes);
  if (block_n == 64) return launch_rows<64>(x, w, y, M, N, K, splits, partials, counters, s);
  return launch_rows<128>(x, w, y, M, N, K, splits, partials, counters, s);
}

}  // namespace llmq::gpu
