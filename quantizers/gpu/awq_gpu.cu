// AWQ's device kernels; the contracts are in awq_gpu.h, the CPU references in quantizers/awq.cc.
//
// Implementation notes:
//   - Bit-exactness of the fake quantization: this library is compiled with --fmad=false, the
//     products and quotients that the CPU rounds separately are __fmul_rn / __fdiv_rn, and the
//     grid is int_grid.h's, the very functions the CPU calls. A group's min and max are warp
//     reductions, exact in any order (only the sign of a zero may differ, which no parameter
//     depends on: z = -round(lo / s) clamps -0 to code 0).
//   - Clip search as a GEMM per group: E = X_g D, X_g = xs[:, group] [T, gs], D [gs, columns],
//     one column per (row, candidate) holding Q(clamp(W_row)) - W_row; the error of a column
//     is Σ_t E[t, c]² / T. One CTA owns R = 128 / n_shrink whole rows (all their candidates,
//     R * n_shrink <= 128 columns) of one group, keeps D in shared memory for the whole run
//     over the tokens, and so picks each row's best candidate itself: no workspace, no
//     atomics, a fixed summation order (deterministic).
//   - D needs no min/max pass per candidate: clamping is monotone, so the clamped group's
//     min and max are the clamped row min and max (exact: the values the CPU's loop finds).
//   - The GEMM is a plain SIMT tile: 128 tokens x 128 columns per pass, 256 threads with 8 x 8
//     accumulators each (two 4-wide halves 64 apart, so a warp's float4 reads of shared memory
//     are conflict-free broadcasts), tokens staged 32 columns of the group at a time
//     (transposed, so a thread's four tokens are one float4). No register prefetch: the 64
//     accumulators leave no room for it, and a stage's loads (L2 hits: every CTA of a group
//     reads the same tokens) are short next to its 2048 FMAs per thread, with two CTAs per SM
//     to overlap them. Error terms use FMAs (explicit __fmaf_rn): the summation order differs
//     from the CPU's anyway.
//   - sum_squared_diff has no atomics: per-block partials, then one block adds them in index
//     order, so the scale search's losses (and so its choices) are identical run to run.
#include "quantizers/gpu/awq_gpu.h"

#include <algorithm>
#include <cmath>

#include "core/check.h"
#include "core/numeric.h"
#include "quantizers/gpu/warp_reduce.cuh"
#include "quantizers/int_grid.h"
#include "runner/cuda_check.h"

namespace llmq::gpu {
namespace {

constexpr int kThreads = 256;

constexpr int kBn = 128;             // clip columns (row, candidate) per CTA
constexpr int kBm = 128;             // tokens per pass
constexpr int kBk = 32;              // group columns per staged token tile
constexpr int kLdx = kBm + 4;        // staged tile row stride: float4-aligned, fewer store conflicts
constexpr int64_t kMaxClipGroup = 256;  // D [gs, 128] f32 in shared memory: 128 KB at 256
constexpr int kSsdBlocks = 1024;        // sum_squared_diff's partial sums (enough to fill a GPU)


// std::clamp(v, lo, hi) as the CPU evaluates it.
__device__ __forceinline__ float clamp_like_std(float v, float lo, float hi) {
  return v < lo ? lo : (hi < v ? hi : v);
}

// ---- fake quantization -----------------------------------------------------------------------

// One warp per (row, group): min/max of w * s, then dequant(code(w * s)) / s, rounded to bf16.
__global__ void fake_quant_scaled_kernel(const float* __restrict__ w, int64_t out, int64_t in, int64_t gs,
                                         const float* __restrict__ s, DType scale_dtype, uint16_t* __restrict__ dst,
                                         int64_t row0, int64_t row_step) {
  const int64_t groups = in / gs;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  if (warp >= out * groups) return;  // uniform per warp
  const int lane = threadIdx.x % kWarp;
  const int64_t n = warp / groups, k0 = (warp % groups) * gs;
  const float* wr = w + n * in + k0;
  float lo = INFINITY, hi = -INFINITY;
  for (int64_t k = lane; k < gs; k += kWarp) {
    const float v = s ? __fmul_rn(wr[k], s[k0 + k]) : wr[k];
    lo = fminf(lo, v);
    hi = fmaxf(hi, v);
  }
  const Int4Params p = int4_params(warp_min(lo), warp_max(hi), Int4Range::kAsymAwq, scale_dtype);
  uint16_t* dr = dst + (row0 + n * row_step) * in + k0;
  for (int64_t k = lane; k < gs; k += kWarp) {
    const float v = s ? __fmul_rn(wr[k], s[k0 + k]) : wr[k];
    const float q = int4_dequant(int4_code(v, p), p);
    dr[k] = f32_to_bf16(s ? __fdiv_rn(q, s[k0 + k]) : q);
  }
}

// ---- clip search -----------------------------------------------------------------------------

struct ClipParams {
  int64_t out, in, gs, T;
  int n_shrink;   // candidates per row
  int clip_grid;
  int rows;       // R: rows per CTA
  DType scale_dtype;
};

// Grid (ceil(out / R), G). Dynamic shared memory: D [gs][kBn] then the token tile [kBk][kLdx].
__global__ void __launch_bounds__(kThreads, 2)
    clip_search_kernel(const float* __restrict__ w, const float* __restrict__ xs, float* __restrict__ best,
                       ClipParams cp) {
  extern __shared__ float4 smem4[];
  float* ds = reinterpret_cast<float*>(smem4);  // [gs][kBn] Q(Wc) - W per column
  float* xt = ds + cp.gs * kBn;                  // [kBk][kLdx] tokens, transposed; later [16][kBn] partials
  __shared__ float row_amax[kBn], row_min[kBn], row_max[kBn];  // [R]
  __shared__ float col_mv[kBn], col_scale[kBn], col_err[kBn];  // [R * n_shrink]
  __shared__ uint8_t col_zero[kBn];

  const int tid = threadIdx.x, lane = tid % kWarp, warp = tid / kWarp;
  const int64_t g = blockIdx.y, n0 = static_cast<int64_t>(blockIdx.x) * cp.rows;
  const int nrows = static_cast<int>(cp.out - n0 < cp.rows ? cp.out - n0 : cp.rows);
  const int ncols = nrows * cp.n_shrink;
  const int64_t kg = g * cp.gs;  // first input column of the group

  // 1. Row statistics of the group: max |w|, min, max (exact in any order).
  for (int r = warp; r < nrows; r += kThreads / kWarp) {
    const float* wr = w + (n0 + r) * cp.in + kg;
    float amax = 0, lo = INFINITY, hi = -INFINITY;
    for (int64_t k = lane; k < cp.gs; k += kWarp) {
      amax = fmaxf(amax, fabsf(wr[k]));
      lo = fminf(lo, wr[k]);
      hi = fmaxf(hi, wr[k]);
    }
    amax = warp_max(amax);
    lo = warp_min(lo);
    hi = warp_max(hi);
    if (lane == 0) {
      row_amax[r] = amax;
      row_min[r] = lo;
      row_max[r] = hi;
    }
  }
  __syncthreads();
  // 2. Each column's clip value and grid: awq.cc's shrink = 1 - i / clip_grid, max_val = amax * shrink.
  if (tid < ncols) {
    const int r = tid / cp.n_shrink, i = tid % cp.n_shrink;
    const float shrink = __fsub_rn(1.0f, __fdiv_rn(static_cast<float>(i), static_cast<float>(cp.clip_grid)));
    const float mv = __fmul_rn(row_amax[r], shrink);
    const Int4Params p = int4_params(clamp_like_std(row_min[r], -mv, mv), clamp_like_std(row_max[r], -mv, mv),
                                     Int4Range::kAsymAwq, cp.scale_dtype);
    col_mv[tid] = mv;
    col_scale[tid] = p.scale;
    col_zero[tid] = p.zero;
  }
  __syncthreads();
  // 3. D = Q(clamp(W)) - W; unused columns are zero.
  for (int64_t idx = tid; idx < cp.gs * kBn; idx += kThreads) {
    const int c = static_cast<int>(idx % kBn);
    const int64_t k = idx / kBn;
    float d = 0;
    if (c < ncols) {
      const float v = w[(n0 + c / cp.n_shrink) * cp.in + kg + k];
      const float mv = col_mv[c];
      const Int4Params p{col_scale[c], col_zero[c]};
      d = __fsub_rn(int4_dequant(int4_code(clamp_like_std(v, -mv, mv), p), p), v);
    }
    ds[idx] = d;
  }

  // 4. E = X_g D over all tokens; sq[j] accumulates this thread's E² for its 8 columns.
  const int tx = tid % 16, ty = tid / 16;  // columns tx*4 + {0..3, 64..67}; tokens ty*4 + {0..3, 64..67}
  // Staging: this thread copies token tl of a tile, group columns 4 (q0 + 2j) .. + 3, j < 4.
  constexpr int kQuads = kBm * kBk / 4 / kThreads;  // 4 float4 per thread per stage
  const int tl = tid % kBm, q0 = tid / kBm;
  float sq[8] = {};
  for (int64_t t0 = 0; t0 < cp.T; t0 += kBm) {
    const bool live = t0 + tl < cp.T;  // rows past T are zeros: they add nothing to E²
    const float* xrow = xs + (t0 + tl) * cp.in + kg + 4 * q0;
    float acc[8][8] = {};
    for (int k0 = 0; k0 < cp.gs; k0 += kBk) {
      float4 v[kQuads];
#pragma unroll
      for (int j = 0; j < kQuads; ++j)
        v[j] = live ? *reinterpret_cast<const float4*>(xrow + k0 + 8 * j) : make_float4(0, 0, 0, 0);
      __syncthreads();  // the previous stage is consumed (and D is complete)
#pragma unroll
      for (int j = 0; j < kQuads; ++j) {
        float* col = xt + 4 * (q0 + 2 * j) * kLdx + tl;
        col[0 * kLdx] = v[j].x;
        col[1 * kLdx] = v[j].y;
        col[2 * kLdx] = v[j].z;
        col[3 * kLdx] = v[j].w;
      }
      __syncthreads();
      const float* dk = ds + k0 * kBn + tx * 4;
      const float* xk = xt + ty * 4;
#pragma unroll 4
      for (int kk = 0; kk < kBk; ++kk) {
        const float4 a0 = *reinterpret_cast<const float4*>(xk + kk * kLdx);
        const float4 a1 = *reinterpret_cast<const float4*>(xk + kk * kLdx + 64);
        const float4 b0 = *reinterpret_cast<const float4*>(dk + kk * kBn);
        const float4 b1 = *reinterpret_cast<const float4*>(dk + kk * kBn + 64);
        const float a[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
        const float b[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
        for (int i = 0; i < 8; ++i)
#pragma unroll
          for (int j = 0; j < 8; ++j) acc[i][j] = __fmaf_rn(a[i], b[j], acc[i][j]);
      }
    }
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j) sq[j] = __fmaf_rn(acc[i][j], acc[i][j], sq[j]);
  }

  // 5. Column errors: the 16 token groups' partials summed in a fixed order, / T.
  __syncthreads();
  float* part = xt;  // [16][kBn]
#pragma unroll
  for (int j = 0; j < 8; ++j) part[ty * kBn + (j < 4 ? tx * 4 + j : 64 + tx * 4 + j - 4)] = sq[j];
  __syncthreads();
  if (tid < ncols) {
    float e = 0;
    for (int y = 0; y < 16; ++y) e = __fadd_rn(e, part[y * kBn + tid]);
    col_err[tid] = __fdiv_rn(e, static_cast<float>(cp.T));
  }
  __syncthreads();
  // 6. Per row, the first strictly smaller error wins (awq.cc); NaN errors never win.
  if (tid < nrows) {
    float min_err = INFINITY, val = row_amax[tid];
    for (int i = 0; i < cp.n_shrink; ++i) {
      const int c = tid * cp.n_shrink + i;
      if (col_err[c] < min_err) {
        min_err = col_err[c];
        val = col_mv[c];
      }
    }
    best[(n0 + tid) * (cp.in / cp.gs) + g] = val;
  }
}

// ---- squared difference ----------------------------------------------------------------------

// The block's sum in a fixed order (warp butterflies, then the warps in index order), in thread 0.
__device__ __forceinline__ double block_sum(double v, double* partial_warps) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o /= 2) v += __shfl_xor_sync(kFullMask, v, o);
  if (threadIdx.x % kWarp == 0) partial_warps[threadIdx.x / kWarp] = v;
  __syncthreads();
  double total = 0;
  if (threadIdx.x == 0)
    for (int i = 0; i < kThreads / kWarp; ++i) total += partial_warps[i];
  return total;  // meaningful in thread 0
}

// partial[block] = Σ over the block's grid-stride elements of (a - b)², each term in float32.
__global__ void squared_diff_partials(const uint16_t* __restrict__ a, const uint16_t* __restrict__ b, int64_t n,
                                      double* __restrict__ partial) {
  __shared__ double warps[kThreads / kWarp];
  double sum = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float d = __fsub_rn(bf16_to_f32(a[i]), bf16_to_f32(b[i]));
    sum += static_cast<double>(__fmul_rn(d, d));
  }
  const double total = block_sum(sum, warps);
  if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

// *acc += Σ partial[0 .. count), one block.
__global__ void add_partials(const double* __restrict__ partial, int count, double* __restrict__ acc) {
  __shared__ double warps[kThreads / kWarp];
  double sum = 0;
  for (int i = threadIdx.x; i < count; i += kThreads) sum += partial[i];
  const double total = block_sum(sum, warps);
  if (threadIdx.x == 0) *acc += total;
}

}  // namespace

void awq_fake_quant_scaled(const float* w, int64_t out, int64_t in, const float* s, const AwqConfig& cfg,
                           uint16_t* dst, int64_t dst_row0, int64_t dst_row_step, cudaStream_t stream) {
  const int64_t gs = cfg.group_size;
  LLMQ_CHECK(out >= 0 && gs > 0 && in % gs == 0, "awq_fake_quant_scaled: [" << out << ", " << in
                                                     << "] with group " << gs);
  LLMQ_CHECK(dst_row0 >= 0 && dst_row_step >= 1, "awq_fake_quant_scaled: dst rows " << dst_row0 << " + r * "
                                                                                     << dst_row_step);
  const int64_t warps = out * (in / gs);
  if (warps == 0) return;
  const int64_t blocks = (warps * kWarp + kThreads - 1) / kThreads;
  fake_quant_scaled_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(w, out, in, gs, s, cfg.scale_dtype,
                                                                                  dst, dst_row0, dst_row_step);
  LLMQ_CUDA_CHECK_LAUNCH();
}

void awq_search_clip(const float* w, int64_t out, int64_t in, const float* xs, int64_t T, const AwqConfig& cfg,
                     float* best, cudaStream_t stream) {
  const int64_t gs = cfg.group_size;
  const int n_shrink = static_cast<int>(cfg.max_shrink * cfg.clip_grid);  // awq.cc's count
  LLMQ_CHECK(gs > 0 && gs % kBk == 0 && gs <= kMaxClipGroup,
             "awq_search_clip (gpu): group size " << gs << " must be a multiple of " << kBk << " up to "
                                                  << kMaxClipGroup);
  LLMQ_CHECK(out >= 0 && in % gs == 0 && T >= 0, "awq_search_clip (gpu): w [" << out << ", " << in << "], T " << T);
  LLMQ_CHECK(in / gs <= 65535, "awq_search_clip (gpu): " << in / gs << " groups (grid limit 65535)");
  LLMQ_CHECK(n_shrink <= kBn && cfg.clip_grid > 0, "awq_search_clip (gpu): " << n_shrink
                                                      << " candidates (at most " << kBn << ")");
  LLMQ_CHECK(T == 0 || reinterpret_cast<uintptr_t>(xs) % 16 == 0, "awq_search_clip (gpu): xs not 16-byte aligned");
  if (out == 0 || in == 0) return;
  ClipParams cp{out, in, gs, T, std::max(n_shrink, 0), cfg.clip_grid, n_shrink > 0 ? kBn / n_shrink : kBn,
                cfg.scale_dtype};
  const size_t smem = (static_cast<size_t>(gs) * kBn + static_cast<size_t>(kBk) * kLdx) * sizeof(float);
  LLMQ_CUDA_CHECK(cudaFuncSetAttribute(clip_search_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(smem)));
  const dim3 grid(static_cast<unsigned>((out + cp.rows - 1) / cp.rows), static_cast<unsigned>(in / gs));
  clip_search_kernel<<<grid, kThreads, smem, stream>>>(w, xs, best, cp);
  LLMQ_CUDA_CHECK_LAUNCH();
}

void sum_squared_diff(const uint16_t* a, const uint16_t* b, int64_t n, double* acc, cudaStream_t stream) {
  LLMQ_CHECK(n >= 0, "sum_squared_diff: n " << n);
  if (n == 0) return;
  // The grid depends on n only (not on the device), so the summation order is fixed.
  const int blocks = static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, kSsdBlocks));
  double* partial = nullptr;  // [blocks], stream-ordered: no device synchronisation
  LLMQ_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&partial), blocks * sizeof(double), stream));
  squared_diff_partials<<<blocks, kThreads, 0, stream>>>(a, b, n, partial);
  LLMQ_CUDA_CHECK_LAUNCH();
  add_partials<<<1, kThreads, 0, stream>>>(partial, blocks, acc);
  LLMQ_CUDA_CHECK_LAUNCH();
  LLMQ_CUDA_CHECK(cudaFreeAsync(partial, stream));
}

}  // namespace llmq::gpu
