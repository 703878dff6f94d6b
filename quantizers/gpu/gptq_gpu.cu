// GPTQ on the GPU; the algorithm and its contract are in gptq_gpu.h and quantizers/gptq.h.
//
// Implementation notes:
//   - Host-side decisions (dead columns, permutation, mean diagonal, damping sequence, column
//     blocks) come from gptq_detail, the functions quantize_gptq itself uses.
//   - Precision mirrors gptq.cc: the damped, permuted H, its Cholesky factor and the triangular
//     inverse are float64 (cuSOLVER), because H^-1 of a 14336-wide Hessian loses most of
//     float32's digits; Hopper/Ampere run float64 on tensor cores (67 TFLOP/s on H100), so the
//     factorisation of n = 14336 (2/3 n^3 flops) costs tens of milliseconds, and 8 n^2 bytes
//     (1.6 GB) are held only until U is built. U and the sweep are float32, like AutoGPTQ's.
//   - This library is compiled with --fmad=false: the sweep's float expressions then round
//     exactly like the host ones in gptq.cc (no fused multiply-adds), so with a diagonal H the
//     result is RTN bit for bit, and otherwise only the GEMMs' summation order differs.
//   - The sweep kernel: one warp per output row, the block's columns spread over the lanes
//     (column c at lane c % 32, register c / 32), so a column's error is one shuffle away from
//     every lane and the in-block update is kPerLane multiply-subtracts per lane. A group's
//     values are staged in shared memory for the min/max and the MSE search (warp reductions,
//     identical in every lane, so every lane takes the same decision).
//   - Every reduction has a fixed order (warp butterflies, block trees, host sums in row
//     order), so results are deterministic run to run.
#include "quantizers/gpu/gptq_gpu.h"

#include <cublas_v2.h>
#include <cusolverDn.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <limits>
#include <optional>
#include <utility>
#include <string>
#include <vector>

#include "core/stopwatch.h"
#include "quantizers/gpu/device_util.h"
#include "quantizers/gpu/warp_reduce.cuh"
#include "quantizers/int_grid.h"
#include "runner/cuda_check.h"

#define LLMQ_CUSOLVER_CHECK(call)                                                          \
  do {                                                                                     \
    const int llmq_cusolver_st_ = static_cast<int>(call);                                  \
    LLMQ_CHECK(llmq_cusolver_st_ == 0, #call << ": cuSOLVER status " << llmq_cusolver_st_); \
  } while (0)

namespace llmq::gpu {
namespace {

constexpr int kSweepWarps = 4;        // output rows per CTA of the sweep kernel
constexpr int64_t kMaxBlock = 256;    // block columns held in registers: 8 per lane
constexpr int64_t kMaxGroup = 8192;   // group values staged in shared memory: 32 KB per warp
constexpr int kThreads = 256;         // element-wise and per-row reduction kernels
constexpr int64_t kMaxGridY = 65535;  // kernels with one matrix column per grid row
constexpr int64_t kTraceChunkElems = int64_t{32} << 20;  // [rows, in] f32 scratch of the traces: 128 MB


struct SweepParams {
  Int4Range range;
  DType scale_dtype;
  int min_zero;
  bool mse;
  int mse_steps;  // candidates p = 1 - s / mse_grid for s < mse_steps
  int mse_grid;
  float mse_norm;
};

// ---- factorisation kernels -------------------------------------------------------------------

// hd[i + j n] = H[rperm[j], rperm[i]] (column-major float64), dead diagonals 1, plus damp_abs
// on the diagonal: gptq.cc's load_damped with the reversed order J P. Grid (ceil(n / t), n).
__global__ void load_damped(const float* __restrict__ h, const int32_t* __restrict__ rperm,
                            const uint8_t* __restrict__ dead, int64_t n, double damp_abs, double* __restrict__ hd) {
  const int64_t j = blockIdx.y;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  double v = static_cast<double>(h[static_cast<int64_t>(rperm[j]) * n + rperm[i]]);
  if (i == j) {
    if (dead[rperm[j]]) v = 1.0;
    v += damp_abs;
  }
  hd[i + j * n] = v;
}

// flag |= 1 when a pivot of the lower factor is below the rank tolerance (gptq.cc: LAPACK
// dpstrf's n * eps * max diag on the squared pivot) or NaN.
__global__ void check_pivots(const double* __restrict__ l, int64_t n, double tol, int* __restrict__ flag) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= n) return;
  const double d = l[j + j * n];
  if (!(d * d > tol)) atomicOr(flag, 1);
}

// flag |= 2 when an element of the lower triangle of x is not finite. Grid (ceil(n / t), n).
__global__ void check_lower_finite(const double* __restrict__ x, int64_t n, int* __restrict__ flag) {
  const int64_t j = blockIdx.y;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < j || i >= n) return;
  if (!isfinite(x[i + j * n])) atomicOr(flag, 2);
}

// u[i n + j] = float(X(n-1-i, n-1-j)) for j >= i, 0 below: U = J Lr^-1 J (row-major), X
// column-major lower. Grid (ceil(n / t), n), one row of U per grid row.
__global__ void build_u(const double* __restrict__ x, int64_t n, float* __restrict__ u) {
  const int64_t i = blockIdx.y;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= n) return;
  u[i * n + j] = j >= i ? static_cast<float>(x[(n - 1 - i) + (n - 1 - j) * n]) : 0.0f;
}

// ---- sweep kernels ---------------------------------------------------------------------------

// wp[r, i] = dead[perm[i]] ? 0 : w[r, perm[i]] (working weights in processing order).
__global__ void permute_weight(const float* __restrict__ w, const int32_t* __restrict__ perm,
                               const uint8_t* __restrict__ dead, int64_t out, int64_t in, float* __restrict__ wp) {
  const int64_t total = out * in, stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += stride) {
    const int64_t r = idx / in, i = idx % in;
    const int32_t k = perm[i];
    wp[idx] = dead[k] ? 0.0f : w[r * in + k];
  }
}

// Butterfly sum: every lane ends with the same bits (each level adds the same two values).
__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o /= 2) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

// The (scale, zero) of the group [i, i + gs) of one row from its CURRENT weights (gptq.cc's
// group_params, run by the whole warp). In-block values come from the lanes' registers;
// values after the block (a group that starts at the block start and is wider than the
// block) from global memory, which the lazy updates of all earlier blocks have reached.
template <int kPerLane>
__device__ Int4Params group_params_warp(const float (&v)[kPerLane], const float* __restrict__ row,
                                        float* __restrict__ gbuf, int64_t i, int64_t i1, int count, int64_t gs,
                                        const SweepParams& sp, int lane) {
#pragma unroll
  for (int k = 0; k < kPerLane; ++k) {
    const int j = k * kWarp + lane;
    const int64_t pos = i1 + j - i;
    if (j < count && pos >= 0 && pos < gs) gbuf[pos] = v[k];
  }
  for (int64_t t = i1 + count - i + lane; t < gs; t += kWarp) gbuf[t] = row[i + t];
  __syncwarp();
  float lo = INFINITY, hi = -INFINITY;
  for (int64_t t = lane; t < gs; t += kWarp) {
    lo = fminf(lo, gbuf[t]);
    hi = fmaxf(hi, gbuf[t]);
  }
  lo = warp_min(lo);
  hi = warp_max(hi);
  Int4Params best = int4_params(lo, hi, sp.range, sp.scale_dtype, sp.min_zero);  // exactly RTN's rule
  if (sp.mse) {
    // AutoGPTQ find_params(mse=True), as gptq.cc: float32 terms summed in float64; strict <,
    // so ties keep the larger range.
    double best_err = INFINITY;
    for (int s = 0; s < sp.mse_steps; ++s) {
      const float p = static_cast<float>(1.0 - static_cast<double>(s) / sp.mse_grid);
      const Int4Params cand = int4_params(lo * p, hi * p, sp.range, sp.scale_dtype, sp.min_zero);
      double err = 0;
      for (int64_t t = lane; t < gs; t += kWarp) {
        const float x = gbuf[t];
        const float d = fabsf(int4_dequant(int4_code(x, cand), cand) - x);
        err += sp.mse_norm == 2.0f ? d * d : powf(d, sp.mse_norm);
      }
      err = warp_sum(err);
      if (err < best_err) {
        best_err = err;
        best = cand;
      }
    }
  }
  __syncwarp();  // gbuf is rewritten at the next group start
  return best;
}

// One block [i1, i1 + count) of the sweep for every row: quantize each column, spread its
// scaled error over the block's later columns, record the errors err [out, count] for the
// lazy update and the codes (original column order). params [out] carries each row's current
// group across blocks (a group may span blocks when block_size < group_size).
template <int kPerLane>
__global__ void __launch_bounds__(kSweepWarps* kWarp)
    sweep_block(float* __restrict__ wp, const float* __restrict__ u, const int32_t* __restrict__ perm,
                uint8_t* __restrict__ codes, float* __restrict__ scales, uint8_t* __restrict__ zeros,
                float* __restrict__ err, Int4Params* __restrict__ params, int64_t out, int64_t in, int64_t gs,
                int64_t i1, int count, SweepParams sp) {
  extern __shared__ float group_smem[];  // [kSweepWarps, gs]
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kSweepWarps + warp;
  if (r >= out) return;  // whole warps only; the kernel has no block-wide barrier
  float* gbuf = group_smem + warp * gs;
  float* row = wp + r * in;
  const int64_t G = in / gs;
  float v[kPerLane];    // v[k]: column i1 + k * 32 + lane, current value
  uint8_t q[kPerLane];  // its code
  float e[kPerLane];    // its scaled error
#pragma unroll
  for (int k = 0; k < kPerLane; ++k) {
    const int j = k * kWarp + lane;
    v[k] = j < count ? row[i1 + j] : 0.0f;
    q[k] = 0;
    e[k] = 0.0f;
  }
  Int4Params p = params[r];
  int64_t next_group = (i1 + gs - 1) / gs * gs;  // first group start at or after i1 (no 64-bit % per column)
#pragma unroll
  for (int k = 0; k < kPerLane; ++k) {
    for (int l = 0; l < kWarp; ++l) {
      const int c = k * kWarp + l;
      if (c >= count) break;  // warp-uniform
      const int64_t i = i1 + c;
      if (i == next_group) {
        p = group_params_warp<kPerLane>(v, row, gbuf, i, i1, count, gs, sp, lane);
        if (lane == 0) {
          scales[r * G + i / gs] = p.scale;
          zeros[r * G + i / gs] = p.zero;
        }
        next_group += gs;
      }
      const float wi = __shfl_sync(kFullMask, v[k], l);
      const float* urow = u + i * in;
      const uint8_t code = int4_code(wi, p);
      const float ei = (wi - int4_dequant(code, p)) / urow[i];
      if (lane == l) {
        q[k] = code;
        e[k] = ei;
      }
#pragma unroll
      for (int kk = 0; kk < kPerLane; ++kk) {
        const int j = kk * kWarp + lane;
        if (j > c && j < count) v[kk] -= ei * urow[i1 + j];
      }
    }
  }
#pragma unroll
  for (int k = 0; k < kPerLane; ++k) {
    const int j = k * kWarp + lane;
    if (j < count) {
      codes[r * in + perm[i1 + j]] = q[k];
      err[r * count + j] = e[k];
    }
  }
  if (lane == 0) params[r] = p;
}

// ---- report kernels --------------------------------------------------------------------------

// Sum over a block of kThreads threads in a fixed tree order; the result in thread 0.
__device__ double block_sum(double v, double* smem) {
  smem[threadIdx.x] = v;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s /= 2) {
    if (threadIdx.x < s) smem[threadIdx.x] += smem[threadIdx.x + s];
    __syncthreads();
  }
  return smem[0];
}

// One CTA per row r: e[r, k] = w[r, k] - deq[r, k] (float32, as gptq.cc's trace input), and
// err2[r] = Σ (w - deq)^2, norm2[r] = Σ w^2 in float64 (the weight error of QuantReport).
__global__ void __launch_bounds__(kThreads)
    dequant_error(const float* __restrict__ w, const uint8_t* __restrict__ codes, const float* __restrict__ scales,
                  const uint8_t* __restrict__ zeros, const int32_t* __restrict__ group_of, int64_t in, int64_t G,
                  float* __restrict__ e, double* __restrict__ err2, double* __restrict__ norm2) {
  __shared__ double smem[kThreads];
  const int64_t r = blockIdx.x;
  double se = 0, sn = 0;
  for (int64_t k = threadIdx.x; k < in; k += kThreads) {
    const int64_t g = group_of[k];
    const float d = (static_cast<float>(codes[r * in + k]) - static_cast<float>(zeros[r * G + g])) * scales[r * G + g];
    const float x = w[r * in + k];
    const double diff = static_cast<double>(x) - static_cast<double>(d);
    se += diff * diff;
    sn += static_cast<double>(x) * static_cast<double>(x);
    e[r * in + k] = x - d;
  }
  const double te = block_sum(se, smem);
  const double tn = block_sum(sn, smem);
  if (threadIdx.x == 0) {
    err2[r] = te;
    norm2[r] = tn;
  }
}

// dots[r] = Σ_k a[r, k] b[r, k] in float64, one CTA per row.
__global__ void __launch_bounds__(kThreads)
    row_dots(const float* __restrict__ a, const float* __restrict__ b, int64_t in, double* __restrict__ dots) {
  __shared__ double smem[kThreads];
  const int64_t r = blockIdx.x;
  double s = 0;
  for (int64_t k = threadIdx.x; k < in; k += kThreads)
    s += static_cast<double>(a[r * in + k]) * static_cast<double>(b[r * in + k]);
  const double t = block_sum(s, smem);
  if (threadIdx.x == 0) dots[r] = t;
}

unsigned grid_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

template <class T>
void upload(T* dst, const std::vector<T>& src, cudaStream_t s) {
  LLMQ_CUDA_CHECK(cudaMemcpyAsync(dst, src.data(), src.size() * sizeof(T), cudaMemcpyHostToDevice, s));
}

}  // namespace

// ---- context ---------------------------------------------------------------------------------

struct GptqGpuContext::Impl {
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  cusolverDnHandle_t solver = nullptr;
  cusolverDnParams_t solver_params = nullptr;
};

GptqGpuContext::GptqGpuContext(cudaStream_t stream) : impl_(std::make_unique<Impl>()) {
  impl_->stream = stream;
  LLMQ_CUBLAS_CHECK(cublasCreate(&impl_->blas));
  LLMQ_CUBLAS_CHECK(cublasSetStream(impl_->blas, stream));
  // DEFAULT_MATH plus CUBLAS_COMPUTE_32F below: float32 GEMMs stay float32, never TF32.
  LLMQ_CUBLAS_CHECK(cublasSetMathMode(impl_->blas, CUBLAS_DEFAULT_MATH));
  LLMQ_CUSOLVER_CHECK(cusolverDnCreate(&impl_->solver));
  LLMQ_CUSOLVER_CHECK(cusolverDnSetStream(impl_->solver, stream));
  LLMQ_CUSOLVER_CHECK(cusolverDnCreateParams(&impl_->solver_params));
}

GptqGpuContext::~GptqGpuContext() {
  if (impl_->solver_params) cusolverDnDestroyParams(impl_->solver_params);
  if (impl_->solver) cusolverDnDestroy(impl_->solver);
  if (impl_->blas) cublasDestroy(impl_->blas);
}

cudaStream_t GptqGpuContext::stream() const { return impl_->stream; }

// ---- quantize_gptq_gpu -----------------------------------------------------------------------

Expected<QuantizedLinear> quantize_gptq_gpu(GptqGpuContext& ctx, const TensorView& w, const TensorView& hessian,
                                            const GptqConfig& config, QuantReport* report, GptqGpuStats* stats) {
  const auto t0 = Clock::now();
  GptqGpuContext::Impl& m = ctx.impl();
  const cudaStream_t s = m.stream;
  LLMQ_CHECK(w.dtype == DType::kF32 && w.rank() == 2 && w.is_contiguous(),
             "quantize_gptq_gpu takes a contiguous float32 [out, in] weight");
  const int64_t out = w.dim(0), in = w.dim(1), gs = config.group_size;
  LLMQ_CHECK(hessian.dtype == DType::kF32 && hessian.is_contiguous() && hessian.shape == (Shape{in, in}),
             "Hessian must be contiguous F32 [" << in << ", " << in << "], got " << shape_str(hessian.shape));
  LLMQ_CHECK(out > 0 && gs > 0 && in % gs == 0, "in " << in << " not a multiple of group " << gs);
  LLMQ_CHECK(config.block_size > 0 && config.damp_percent >= 0 && config.mse_grid > 0,
             "bad GPTQ config: block " << config.block_size << ", damp " << config.damp_percent);
  LLMQ_CHECK(gs <= kMaxGroup, "quantize_gptq_gpu: group " << gs << " above " << kMaxGroup);
  LLMQ_CHECK(in <= kMaxGridY && out <= INT_MAX, "quantize_gptq_gpu: [" << out << ", " << in << "] too large");
  const int64_t G = in / gs;
  const int64_t n = in;
  DeviceBytes mem;

  // Inputs on the device (uploaded when given on the host).
  std::optional<TrackedBuffer> w_up, h_up;
  const float* wd = w.as<float>();  // [out, in]
  if (w.device == Device::kCpu) {
    w_up.emplace(mem, static_cast<size_t>(w.nbytes()));
    LLMQ_CUDA_CHECK(cudaMemcpyAsync(w_up->as(), w.data, w.nbytes(), cudaMemcpyHostToDevice, s));
    wd = w_up->as<float>();
  }
  const float* hd = hessian.as<float>();  // [in, in]
  if (hessian.device == Device::kCpu) {
    h_up.emplace(mem, static_cast<size_t>(hessian.nbytes()));
    LLMQ_CUDA_CHECK(cudaMemcpyAsync(h_up->as(), hessian.data, hessian.nbytes(), cudaMemcpyHostToDevice, s));
    hd = h_up->as<float>();
  }
  if (const int64_t bad = first_nonfinite(wd, DType::kF32, out * in, s); bad >= 0)
    return Status::error("quantize_gptq_gpu: weight has NaN/Inf at [" + std::to_string(bad / in) + ", " +
                         std::to_string(bad % in) + "]");
  if (const int64_t bad = first_nonfinite(hd, DType::kF32, n * n, s); bad >= 0)
    return Status::error("quantize_gptq_gpu: Hessian has NaN/Inf at [" + std::to_string(bad / n) + ", " +
                         std::to_string(bad % n) + "]");

  // 1. dead columns; 2. act-order permutation: on the host, from diag(H).
  std::vector<float> diag_f(n);  // [in] diag(H)
  LLMQ_CUDA_CHECK(cudaMemcpy2DAsync(diag_f.data(), sizeof(float), hd, (n + 1) * sizeof(float), sizeof(float), n,
                                    cudaMemcpyDeviceToHost, s));
  LLMQ_CUDA_CHECK(cudaStreamSynchronize(s));
  const std::vector<double> diag(diag_f.begin(), diag_f.end());  // [in]
  std::vector<uint8_t> dead;  // [in] H[j, j] == 0
  std::vector<int64_t> perm;  // [in] position -> original column
  gptq_detail::plan_columns(diag, config.act_order, &dead, &perm);
  const double mean_diag = gptq_detail::mean_diag(diag, dead);
  std::vector<int32_t> perm32(perm.begin(), perm.end());     // [in]
  std::vector<int32_t> rperm32(perm32.rbegin(), perm32.rend());  // [in] J P: reversed order
  TrackedBuffer perm_d(mem, n * sizeof(int32_t));   // [in]
  TrackedBuffer rperm_d(mem, n * sizeof(int32_t));  // [in]
  TrackedBuffer dead_d(mem, n);                     // [in] by original column
  upload(perm_d.as<int32_t>(), perm32, s);
  upload(rperm_d.as<int32_t>(), rperm32, s);
  upload(dead_d.as<uint8_t>(), dead, s);

  // 3, 4. damping and U = chol_upper(H^-1) in float64, retrying with more damping.
  TrackedBuffer u_d(mem, static_cast<size_t>(n * n) * sizeof(float));  // [in, in] row-major, upper
  double damp = 0;
  int fallbacks = 0;
  {
    TrackedBuffer fac(mem, static_cast<size_t>(n * n) * sizeof(double));  // [in, in] column-major; Lr; Lr^-1
    size_t potrf_dev = 0, potrf_host = 0, trtri_dev = 0, trtri_host = 0;
    LLMQ_CUSOLVER_CHECK(cusolverDnXpotrf_bufferSize(m.solver, m.solver_params, CUBLAS_FILL_MODE_LOWER, n, CUDA_R_64F,
                                                    fac.as(), n, CUDA_R_64F, &potrf_dev, &potrf_host));
    LLMQ_CUSOLVER_CHECK(cusolverDnXtrtri_bufferSize(m.solver, CUBLAS_FILL_MODE_LOWER, CUBLAS_DIAG_NON_UNIT, n,
                                                    CUDA_R_64F, fac.as(), n, &trtri_dev, &trtri_host));
    TrackedBuffer work(mem, std::max<size_t>({potrf_dev, trtri_dev, 1}));
    std::vector<uint8_t> host_work(std::max<size_t>({potrf_host, trtri_host, 1}));
    TrackedBuffer flags(mem, 3 * sizeof(int));  // [3] potrf info, trtri info, check flags
    int* const info_d = flags.as<int>();
    const dim3 grid_nn(grid_for(n), static_cast<unsigned>(n));
    for (int attempt = 0;; ++attempt) {
      // From damp_percent, not by accumulation, so the sequence of tries is exact (as gptq.cc).
      const double d = config.damp_percent + attempt * gptq_detail::kDampStep;
      if (attempt > 0 && !(d < 1.0))
        return Status::error("GPTQ: Hessian [" + std::to_string(n) + ", " + std::to_string(n) +
                             "] is not positive definite even with damping " + std::to_string(d - gptq_detail::kDampStep) +
                             " (not PSD?)");
      const double damp_abs = d * mean_diag;
      double max_diag = -std::numeric_limits<double>::infinity();  // of the damped matrix, as the kernel builds it
      for (int64_t j = 0; j < n; ++j) max_diag = std::max(max_diag, (dead[j] ? 1.0 : diag[j]) + damp_abs);
      LLMQ_CUDA_CHECK(cudaMemsetAsync(info_d, 0, 3 * sizeof(int), s));
      load_damped<<<grid_nn, kThreads, 0, s>>>(hd, rperm_d.as<int32_t>(), dead_d.as<uint8_t>(), n, damp_abs,
                                               fac.as<double>());
      LLMQ_CUDA_CHECK_LAUNCH();
      LLMQ_CUSOLVER_CHECK(cusolverDnXpotrf(m.solver, m.solver_params, CUBLAS_FILL_MODE_LOWER, n, CUDA_R_64F, fac.as(),
                                           n, CUDA_R_64F, work.as(), work.bytes(), host_work.data(), host_work.size(),
                                           info_d));
      int info[3] = {0, 0, 0};
      LLMQ_CUDA_CHECK(cudaMemcpyAsync(info, info_d, sizeof(int), cudaMemcpyDeviceToHost, s));
      LLMQ_CUDA_CHECK(cudaStreamSynchronize(s));
      LLMQ_CHECK(info[0] >= 0, "cusolverDnXpotrf: invalid argument " << -info[0]);
      if (info[0] > 0) continue;  // leading minor info[0] not positive definite
      // A pivot below the rank tolerance is rounding noise: singular to working precision.
      const double tol = static_cast<double>(n) * std::numeric_limits<double>::epsilon() * max_diag;
      check_pivots<<<grid_for(n), kThreads, 0, s>>>(fac.as<double>(), n, tol, info_d + 2);
      LLMQ_CUDA_CHECK_LAUNCH();
      LLMQ_CUSOLVER_CHECK(cusolverDnXtrtri(m.solver, CUBLAS_FILL_MODE_LOWER, CUBLAS_DIAG_NON_UNIT, n, CUDA_R_64F,
                                           fac.as(), n, work.as(), work.bytes(), host_work.data(), host_work.size(),
                                           info_d + 1));
      check_lower_finite<<<grid_nn, kThreads, 0, s>>>(fac.as<double>(), n, info_d + 2);
      LLMQ_CUDA_CHECK_LAUNCH();
      LLMQ_CUDA_CHECK(cudaMemcpyAsync(info, info_d, 3 * sizeof(int), cudaMemcpyDeviceToHost, s));
      LLMQ_CUDA_CHECK(cudaStreamSynchronize(s));
      LLMQ_CHECK(info[1] >= 0, "cusolverDnXtrtri: invalid argument " << -info[1]);
      if (info[1] > 0 || info[2] != 0) continue;  // singular pivot, tiny pivot or non-finite inverse
      damp = d;
      fallbacks = attempt;
      break;
    }
    build_u<<<grid_nn, kThreads, 0, s>>>(fac.as<double>(), n, u_d.as<float>());
    LLMQ_CUDA_CHECK_LAUNCH();
    LLMQ_CUDA_CHECK(cudaStreamSynchronize(s));
  }  // the float64 factor and the solver workspace are freed here, before the sweep's buffers
  const double t_factor = seconds_since(t0);

  // 5. the sweep, block by block over all rows.
  const auto t1 = Clock::now();
  const auto blocks = gptq_detail::column_blocks(in, std::min(config.block_size, kMaxBlock), gs);
  int64_t max_count = 0;
  for (const auto& [i1, i2] : blocks) max_count = std::max(max_count, i2 - i1);
  TrackedBuffer wp(mem, static_cast<size_t>(out * in) * sizeof(float));      // [out, in] permuted, working
  TrackedBuffer codes_d(mem, static_cast<size_t>(out * in));                  // [out, in] original order
  TrackedBuffer scales_d(mem, static_cast<size_t>(out * G) * sizeof(float));  // [out, G]
  TrackedBuffer zeros_d(mem, static_cast<size_t>(out * G));                   // [out, G]
  TrackedBuffer err_d(mem, static_cast<size_t>(out * max_count) * sizeof(float));  // [out, count] per block
  TrackedBuffer params_d(mem, static_cast<size_t>(out) * sizeof(Int4Params));      // [out]
  LLMQ_CUDA_CHECK(cudaMemsetAsync(params_d.as(), 0, params_d.bytes(), s));
  permute_weight<<<static_cast<unsigned>(std::min<int64_t>(grid_for(out * in), 65535)), kThreads, 0, s>>>(
      wd, perm_d.as<int32_t>(), dead_d.as<uint8_t>(), out, in, wp.as<float>());
  LLMQ_CUDA_CHECK_LAUNCH();

  SweepParams sp{};
  sp.range = config.range;
  sp.scale_dtype = config.scale_dtype;
  sp.min_zero = config.min_zero;
  sp.mse = config.mse_clip;
  sp.mse_steps = static_cast<int>(config.mse_maxshrink * config.mse_grid);  // as gptq.cc
  sp.mse_grid = config.mse_grid;
  sp.mse_norm = static_cast<float>(config.mse_norm);
  const bool wide = max_count > 4 * kWarp;
  const auto kernel = wide ? sweep_block<8> : sweep_block<4>;
  const size_t smem = static_cast<size_t>(kSweepWarps * gs) * sizeof(float);
  LLMQ_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  const unsigned sweep_grid = static_cast<unsigned>((out + kSweepWarps - 1) / kSweepWarps);
  const float one = 1.0f, minus_one = -1.0f;
  for (const auto& [i1, i2] : blocks) {
    const int count = static_cast<int>(i2 - i1);
    kernel<<<sweep_grid, kSweepWarps * kWarp, smem, s>>>(wp.as<float>(), u_d.as<float>(), perm_d.as<int32_t>(),
                                                          codes_d.as<uint8_t>(), scales_d.as<float>(),
                                                          zeros_d.as<uint8_t>(), err_d.as<float>(),
                                                          params_d.as<Int4Params>(), out, in, gs, i1, count, sp);
    LLMQ_CUDA_CHECK_LAUNCH();
    if (i2 < in) {
      // Lazy update W[:, i2:] -= Err [out, count] · U[i1:i2, i2:] [count, in - i2]. Column-major
      // views of the row-major buffers: C = W[:, i2:]ᵀ (in - i2 x out, ld in), A = U[i1:i2, i2:]ᵀ
      // (in - i2 x count, ld in), B = Errᵀ (count x out, ld count).
      LLMQ_CUBLAS_CHECK(cublasGemmEx(m.blas, CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(in - i2), static_cast<int>(out),
                                     count, &minus_one, u_d.as<float>() + i1 * in + i2, CUDA_R_32F, static_cast<int>(in),
                                     err_d.as<float>(), CUDA_R_32F, count, &one, wp.as<float>() + i2, CUDA_R_32F,
                                     static_cast<int>(in), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
  }

  QuantizedLinear q = make_int4_linear(out, in, gs, config.range == Int4Range::kSymmetric, config.scale_dtype);
  LLMQ_CUDA_CHECK(cudaMemcpyAsync(q.codes.raw(), codes_d.as(), q.codes.nbytes(), cudaMemcpyDeviceToHost, s));
  LLMQ_CUDA_CHECK(cudaMemcpyAsync(q.scales.raw(), scales_d.as(), q.scales.nbytes(), cudaMemcpyDeviceToHost, s));
  LLMQ_CUDA_CHECK(cudaMemcpyAsync(q.zeros.raw(), zeros_d.as(), q.zeros.nbytes(), cudaMemcpyDeviceToHost, s));
  LLMQ_CUDA_CHECK(cudaStreamSynchronize(s));
  // 6. codes/scales/zeros are already in original column order; groups follow positions.
  std::vector<int32_t> group_of(in);  // [in] group of each original column
  for (int64_t i = 0; i < in; ++i) group_of[perm[i]] = static_cast<int32_t>(i / gs);
  if (config.act_order) {
    q.g_idx = Tensor(DType::kI32, {in});
    std::copy(group_of.begin(), group_of.end(), q.g_idx.data<int32_t>());
  }
  const double t_sweep = seconds_since(t1);

  const auto t2 = Clock::now();
  if (report != nullptr) {
    // As gptq.cc: ||W - deq||_F / ||W||_F, and tr(E H Eᵀ) / tr(W H Wᵀ) with float32 E, W, H
    // products and float64 row dots, everything against the caller's W and H.
    float* e = wp.as<float>();  // the working weights are no longer needed: E [out, in]
    TrackedBuffer group_d(mem, static_cast<size_t>(in) * sizeof(int32_t));  // [in]
    TrackedBuffer sums(mem, static_cast<size_t>(4 * out) * sizeof(double));  // [4, out] per-row sums
    upload(group_d.as<int32_t>(), group_of, s);
    double* err2 = sums.as<double>();
    double* norm2 = err2 + out;
    double* ehe = err2 + 2 * out;
    double* whw = err2 + 3 * out;
    dequant_error<<<static_cast<unsigned>(out), kThreads, 0, s>>>(wd, codes_d.as<uint8_t>(), scales_d.as<float>(),
                                                                  zeros_d.as<uint8_t>(), group_d.as<int32_t>(), in, G,
                                                                  e, err2, norm2);
    LLMQ_CUDA_CHECK_LAUNCH();
    const int64_t chunk = std::max<int64_t>(1, std::min(out, kTraceChunkElems / in));
    TrackedBuffer ah(mem, static_cast<size_t>(chunk * in) * sizeof(float));  // [chunk, in] A · H
    const float zero = 0.0f;
    for (const auto& [a, dots] : {std::pair<const float*, double*>{e, ehe}, std::pair<const float*, double*>{wd, whw}}) {
      for (int64_t r0 = 0; r0 < out; r0 += chunk) {
        const int64_t rows = std::min(chunk, out - r0);
        // Row-major (A H) [rows, in] is column-major Hᵀ-view (H as stored, ld in) times Aᵀ-view.
        LLMQ_CUBLAS_CHECK(cublasGemmEx(m.blas, CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(in), static_cast<int>(rows),
                                       static_cast<int>(in), &one, hd, CUDA_R_32F, static_cast<int>(in), a + r0 * in,
                                       CUDA_R_32F, static_cast<int>(in), &zero, ah.as<float>(), CUDA_R_32F,
                                       static_cast<int>(in), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        row_dots<<<static_cast<unsigned>(rows), kThreads, 0, s>>>(a + r0 * in, ah.as<float>(), in, dots + r0);
        LLMQ_CUDA_CHECK_LAUNCH();
      }
    }
    std::vector<double> host_sums(4 * out);  // [4, out]
    LLMQ_CUDA_CHECK(cudaMemcpyAsync(host_sums.data(), sums.as(), sums.bytes(), cudaMemcpyDeviceToHost, s));
    LLMQ_CUDA_CHECK(cudaStreamSynchronize(s));
    double total[4] = {0, 0, 0, 0};  // summed in row order: deterministic
    for (int t = 0; t < 4; ++t)
      for (int64_t r = 0; r < out; ++r) total[t] += host_sums[t * out + r];
    report->weight_rel_error = total[1] > 0 ? std::sqrt(total[0] / total[1]) : 0.0;
    report->output_rel_error = total[3] > 0 ? total[2] / total[3] : 0.0;
    report->damp = damp;
    report->fallbacks = fallbacks;
    report->seconds = seconds_since(t0);
  }
  if (stats != nullptr) {
    stats->peak_device_bytes = mem.peak;
    stats->seconds_factor = t_factor;
    stats->seconds_sweep = t_sweep;
    stats->seconds_report = report != nullptr ? seconds_since(t2) : 0.0;
  }
  return std::move(q);  // Expected(T) takes its value by value: no implicit move
}

}  // namespace llmq::gpu
