// Per-input-channel activation ranges on the device, for SmoothQuant on the GPU quantize path
// (pipeline/quantize_gpu.h): over every row x[t, :] of every add(), per column c,
//   min[c] = min_t x[t,c],  max[c] = max_t x[t,c],  abs_max[c] = max_t |x[t,c]|,
// as calibration/stats.h's InputStatsAccumulator defines them. Minima and maxima are exact and
// independent of the order of the rows, so the result is deterministic although the kernel
// combines partial results with atomics; column_ranges_ref is the CPU reference.
// (abs_mean, a sum, is not collected here: SmoothQuant does not use it.)
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "core/status.h"
#include "runner/device_buffer.h"

namespace llmq::gpu {

class ColumnRanges {
 public:
  ColumnRanges(int64_t cols, cudaStream_t stream);
  // x: device bf16 [rows, cols]. NaN/Inf is an error naming the row and channel (nothing is
  // added). Synchronises the stream (the non-finite check reads one value back).
  Status add(const uint16_t* x, int64_t rows);
  int64_t tokens() const { return tokens_; }
  // Host float32 [cols] each.
  void download(std::vector<float>* min, std::vector<float>* max, std::vector<float>* abs_max) const;

 private:
  int64_t cols_ = 0;
  int64_t tokens_ = 0;
  cudaStream_t stream_ = nullptr;
  DeviceBuffer min_, max_;  // [cols] f32 each
};

// The CPU reference over host bf16 rows (same definitions), for tests.
void column_ranges_ref(const uint16_t* x, int64_t rows, int64_t cols, std::vector<float>* min,
                       std::vector<float>* max, std::vector<float>* abs_max);

}  // namespace llmq::gpu
