// HessianAccumulator: GPTQ's H = Σ_t x_t x_tᵀ over calibration tokens, on the device, in the
// convention of calibration/stats.h (InputStatsAccumulator), so the GPU and CPU collect paths
// give the same matrix up to float32 rounding:
//   - a plain sum over tokens, no 2/N factor (damping is relative, formats.md C.6 step 1);
//   - each add() is ONE float32 product XᵀX of that call's tokens, added to a float64
//     accumulator (the CPU adds each sample's float32 XᵀX the same way);
//   - finish() rounds to float32 and mirrors one triangle, so H is exactly symmetric.
// Arithmetic of the product: F32 input -> cublasSsyrk (lower triangle only, half the flops),
// true float32: the handle is in CUBLAS_DEFAULT_MATH, which never uses TF32 for float32 data.
// BF16 input -> cublasGemmEx with bf16 operands and CUBLAS_COMPUTE_32F: every product of two
// bf16 values is exact in float32 and sums are float32 (tensor cores, ~10x the f32 SIMT rate),
// i.e. the float32 product of the bf16 values widened.
// Memory: 12 bytes per H element (f64 accumulator + f32 product/result): 2.5 GB at K = 14336.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>

#include "core/status.h"
#include "core/tensor.h"

namespace llmq::gpu {

class HessianAccumulator {
 public:
  // features: K, the input width. stream: where all work is queued (0: the legacy stream).
  explicit HessianAccumulator(int64_t features, cudaStream_t stream = nullptr);
  ~HessianAccumulator();
  HessianAccumulator(const HessianAccumulator&) = delete;
  HessianAccumulator& operator=(const HessianAccumulator&) = delete;

  // x: device (Device::kCuda) contiguous [T, K], F32 or BF16. Returns an error naming the
  // first bad token and channel (and adds nothing) when x holds NaN or Inf. Synchronises.
  Status add(const TensorView& x);

  // H float32 [K, K] row-major (symmetric) on the device. Valid until the next add() or
  // reset(), which reuse its memory.
  const float* finish();
  // Host F32 [K, K] copy of finish().
  Tensor download();
  void reset();  // back to zero tokens

  int64_t features() const;
  int64_t tokens() const;
  size_t device_bytes() const;  // held by this accumulator (cuBLAS's own workspace excluded)

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace llmq::gpu
