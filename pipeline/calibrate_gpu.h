// `llmq calibrate --device gpu`: calibration/calibrate.h's per-layer work on one GPU, behind its
// LayerStatsRunner seam. This file lives in the pipeline (not in calibration/) because it uses
// the runner and the pipeline's device samples, which sit above llmq_calibration; calibrate()
// gets it from its caller (tools/cmd_calibrate.cc passes calibration_gpu()).
//
// Per layer: the layer's linears are read from the checkpoint as the CPU path reads them (float
// ones as bf16, finite-checked; already-quantized ones as stored) and uploaded
// (runner/layer.h's make_gpu_layer); the samples (pipeline/gpu_samples.h: [Σ T_s, hidden] on
// the device, embedded once) run through it once, advancing in place, with a hook that feeds
// each of the four distinct linear inputs (bf16 rows) to device accumulators:
//   min / max / abs_max / abs_mean: gpu::ColumnRanges (pipeline/column_stats_gpu.h),
//   the Hessian Σ x xᵀ:             gpu::HessianAccumulator (quantizers/gpu/hessian_gpu.h),
// both in calibration/stats.h's definitions. Then, one input at a time, the statistics are
// downloaded, handed to calibrate()'s writer and their device and host memory freed.
//
// Differences from the CPU path: the forward's ops are bf16 (the runner's arithmetic; the
// residual stream is GpuSamples' choice) where the CPU's are float32, so the statistics are
// those of bf16-rounded activations; they agree with the CPU's within bounds derived from the
// bf16 roundings (tests/test_calibrate_gpu.cc). Hessians
// are float32 products of each forward chunk's rows (several samples) added in float64, the
// CPU's are per sample: the same definition, another float32 grouping.
//
// Memory on the device: the samples' activations and one forward's buffers (GpuSamples), one
// layer's bf16 weights, and the four inputs' accumulators (12 bytes per Hessian element:
// 2.5 GB for mlp_out at Llama-3.1-8B's 14336 features, 3.1 GB for all four; none with
// --no-hessian). On the host: one layer's bf16 weights and one input's float32 Hessian.
// Independent of the number of layers.
#pragma once

#include "calibration/calibrate.h"

namespace llmq {

// Device 0 for calibrate(): usable when this is a CUDA build and a device is visible;
// otherwise `unavailable` says why ("built without CUDA", the driver's reason) and open fails.
CalibrationGpu calibration_gpu();

}  // namespace llmq
