// Round-to-nearest baselines (no calibration): INT4 per group and INT8 per output channel.
// Pure functions of the weight; the grids are those of quantizers/int_grid.h.
#pragma once

#include "core/tensor.h"
#include "quantizers/int_grid.h"
#include "quantizers/quantized_linear.h"

namespace llmq {

struct Int4Config {
  int64_t group_size = 128;
  Int4Range range = Int4Range::kSymmetric;
  DType scale_dtype = DType::kF16;  // F16 for AWQ/GPTQ files, BF16 for compressed-tensors
  int min_zero = 0;                 // 1 for GPTQ v1 asymmetric (zero 0 is not representable)
};

struct Int8Config {
  DType scale_dtype = DType::kBF16;
};

// w: float32 [out, in], in % group_size == 0 (LLMQ_CHECK: callers validate shapes first).
QuantizedLinear quantize_rtn_int4(const TensorView& w, const Int4Config& config);
QuantizedLinear quantize_rtn_int8(const TensorView& w, const Int8Config& config);

// Per-(row, group) parameters of w under a config, from the group's min/max.
Int4Params int4_group_params(const float* row, int64_t group, int64_t group_size, const Int4Config& config);

}  // namespace llmq
