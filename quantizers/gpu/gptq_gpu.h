// GPTQ on the GPU for one linear: the algorithm of quantizers/gptq.h, step for step, with the
// same host-side decisions (gptq_detail: dead columns, act-order permutation, damping and its
// retry sequence, column blocks) and the same integer grid (int_grid.h, compiled for host and
// device). Results equal quantize_gptq's up to float rounding: the lazy updates are cuBLAS
// SGEMMs instead of Eigen's, the Cholesky and triangular inverse are cuSOLVER's instead of
// Eigen's (both float64); ties in rounding can therefore flip a few codes.
//
// Device steps (gptq_gpu.cu has the details):
//   3, 4. U = chol_upper(H^-1) as in gptq.cc: float64 potrf of the reversed, permuted, damped H
//         and a float64 triangular inverse (cusolverDnXpotrf, cusolverDnXtrtri), U = J Lr^-1 J
//         rounded to float32; Cholesky failure (info > 0), a pivot below n * eps * max diag or
//         a non-finite inverse retries with damp += 0.01, counted in QuantReport::fallbacks.
//   5.    per block of columns: one kernel sweeps the block's columns, one warp per output row
//         (group parameters at group starts from the current weights, MSE shrink search when
//         configured), then W[:, end:] -= Err · U[block, end:] with a float32 cuBLAS GEMM
//         (CUBLAS_COMPUTE_32F: no TF32).
// Memory per call: 8 in^2 (f64 factor, freed before the sweep) + 4 in^2 (U) + 8 out*in (the
// weight and its working copy) + in^2 * 4 if H is given on the host; GptqGpuStats reports it.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <memory>

#include "core/status.h"
#include "core/tensor.h"
#include "quantizers/gptq.h"
#include "quantizers/quantized_linear.h"

namespace llmq::gpu {

// cuBLAS and cuSOLVER handles and the stream for a run of linears (handles cost tens of
// milliseconds to create; the 8B pipeline quantizes 224 linears). One thread at a time.
class GptqGpuContext {
 public:
  explicit GptqGpuContext(cudaStream_t stream = nullptr);
  ~GptqGpuContext();
  GptqGpuContext(const GptqGpuContext&) = delete;
  GptqGpuContext& operator=(const GptqGpuContext&) = delete;

  cudaStream_t stream() const;
  struct Impl;
  Impl& impl() { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

// What one call used, for benchmarks and memory planning.
struct GptqGpuStats {
  size_t peak_device_bytes = 0;  // this call's own buffers at their high-water mark (cuBLAS/cuSOLVER
                                 // handle workspaces excluded; solver workspace included)
  double seconds_factor = 0;     // upload, steps 1-4 (damping, Cholesky, inverse, U)
  double seconds_sweep = 0;      // step 5 and the download of codes/scales/zeros
  double seconds_report = 0;     // QuantReport's errors (only when report != nullptr)
};

// w: F32 [out, in], host or device (TensorView::device), contiguous; not modified.
// hessian: F32 [in, in], host or device, contiguous, symmetric (H = Σ x xᵀ, any positive
// factor). Returns the same QuantizedLinear as quantize_gptq (host tensors; g_idx with
// act_order). Errors (Status): NaN/Inf in w or H; H not positive definite even with damping
// approaching 1. Misuse (shapes, config) is an LLMQ_CHECK, as in quantize_gptq.
// report (may be null) is filled like quantize_gptq's, computed on the device.
// Limits: group_size <= 8192; block_size above 256 is treated as 256 (the blocking changes
// only float rounding, gptq.cc's note).
Expected<QuantizedLinear> quantize_gptq_gpu(GptqGpuContext& ctx, const TensorView& w, const TensorView& hessian,
                                            const GptqConfig& config, QuantReport* report,
                                            GptqGpuStats* stats = nullptr);

}  // namespace llmq::gpu
