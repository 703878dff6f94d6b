// Per-input-channel activation statistics on the device, for the GPU paths of calibrate
// (pipeline/calibrate_gpu.h), SmoothQuant and AWQ: over every row x[t, :] of every add(), per
// column c,
//   min[c] = min_t x[t,c],  max[c] = max_t x[t,c],  abs_max[c] = max_t |x[t,c]|,
//   abs_mean[c] = (Σ_t |x[t,c]|) / tokens,
// as calibration/stats.h's InputStatsAccumulator defines them; column_ranges_ref is the CPU
// reference.
//
// Determinism: minima and maxima are exact and independent of the order of the rows, so they
// are combined with atomics. The sum is not order-independent, so it is computed in a fixed
// order: per add(), each block of kRowsPerBlock (64) rows of a column is summed in float32, in
// row order, into a partial [row_blocks, cols]; a second kernel adds a column's partials, in
// block order, to its float64 accumulator. The result depends only on the rows and on how they
// were split into add() calls, never on scheduling: two runs give the same bits.
// Error of abs_mean against the exact sum: each float32 partial of k <= 64 non-negative terms
// is within (k-1)·2^-24 (relative) of its exact value; the float64 additions add ~n·2^-53;
// the final division and rounding to float32 add 2^-24. So |abs_mean - exact| <= 65·2^-24 ·
// exact (plus float64 noise), the bound tests/test_pipeline_gpu.cc checks.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "calibration/stats.h"
#include "core/status.h"
#include "runner/device_buffer.h"

namespace llmq::gpu {

class ColumnRanges {
 public:
  static constexpr int kRowsPerBlock = 64;  // rows per float32 partial sum (see above)

  ColumnRanges(int64_t cols, cudaStream_t stream);
  // x: device bf16 [rows, cols]. NaN/Inf is an error naming the row and channel (nothing is
  // added). Synchronises the stream (the non-finite check reads one value back).
  Status add(const uint16_t* x, int64_t rows);
  int64_t cols() const { return cols_; }
  int64_t tokens() const { return tokens_; }
  // Host float32 [cols] each.
  void download(std::vector<float>* min, std::vector<float>* max, std::vector<float>* abs_max) const;
  // Host float32 [cols]: Σ|x| / tokens rounded once to float32 (zeros when no tokens were added).
  std::vector<float> abs_mean() const;
  // All of the above as calibration/stats.h's InputStats (no Hessian; every statistic zero
  // when no tokens were added, stats.h's convention).
  InputStats input_stats() const;

 private:
  int64_t cols_ = 0;
  int64_t tokens_ = 0;
  cudaStream_t stream_ = nullptr;
  DeviceBuffer min_, max_;  // [cols] f32 each
  DeviceBuffer abs_sum_;    // [cols] f64: Σ|x|
  DeviceBuffer partial_;    // [row_blocks, cols] f32: one add()'s per-block sums, grown as needed
};

// The CPU reference over host bf16 rows (same definitions; the sum in float64, in row order),
// for tests. abs_mean may be null.
void column_ranges_ref(const uint16_t* x, int64_t rows, int64_t cols, std::vector<float>* min,
                       std::vector<float>* max, std::vector<float>* abs_max, std::vector<float>* abs_mean = nullptr);

}  // namespace llmq::gpu
