// FP8 E4M3 weights with one scale per output channel (compressed-tensors FP8_DYNAMIC,
// formats.md A.2): s = amax_row / 448 rounded to the scale's storage dtype, codes =
// e4m3_rne(clamp(w / s, -448, 448)). An all-zero row gets s = 1 (any positive scale decodes
// its zeros exactly). No calibration: activations are quantized per token at run time.
#pragma once

#include "core/tensor.h"
#include "quantizers/quantized_linear.h"

namespace llmq {

struct Fp8Config {
  DType scale_dtype = DType::kBF16;
};

QuantizedLinear quantize_fp8_channel(const TensorView& w, const Fp8Config& config);

}  // namespace llmq
