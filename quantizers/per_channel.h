// The per-output-channel loop shared by the FP8 and INT8 weight quantizers.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "core/check.h"
#include "core/tensor.h"
#include "quantizers/int_grid.h"
#include "quantizers/quantized_linear.h"

namespace llmq {

// Symmetric per-output-channel quantization (FP8 and INT8 weights): per row, s = amax /
// grid_max rounded to scale_dtype (1 for an all-zero row, whose zeros any scale decodes), and
// codes[n, k] = encode(w[n, k], s) (Code: uint8_t for e4m3, int8_t).
template <class Code, class Encode>
QuantizedLinear quantize_per_channel(const TensorView& w, QuantScheme scheme, float grid_max, DType scale_dtype,
                                     Encode encode) {
  LLMQ_CHECK(w.dtype == DType::kF32 && w.rank() == 2, "per-channel quantization takes float32 [out, in]");
  const int64_t out = w.dim(0), in = w.dim(1);
  QuantizedLinear q = make_channel_linear(scheme, out, in, scale_dtype);
  const float* src = w.as<float>();
  Code* codes = q.codes.data<Code>();
  float* scales = q.scales.data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < out; ++n) {
    const float* row = src + n * in;
    float amax = 0;
    for (int64_t k = 0; k < in; ++k) amax = std::max(amax, std::fabs(row[k]));
    const float s = round_scale_to(amax > 0 ? amax / grid_max : 1.0f, scale_dtype);
    scales[n] = s;
    for (int64_t k = 0; k < in; ++k) codes[n * in + k] = encode(row[k], s);
  }
  return q;
}

}  // namespace llmq
