#include "quantizers/fp8.h"

#include <algorithm>
#include <cmath>

#include "core/numeric.h"
#include "quantizers/int_grid.h"

namespace llmq {

QuantizedLinear quantize_fp8_channel(const TensorView& w, const Fp8Config& config) {
  LLMQ_CHECK(w.dtype == DType::kF32 && w.rank() == 2, "quantize_fp8_channel takes float32 [out, in]");
  const int64_t out = w.dim(0), in = w.dim(1);
  QuantizedLinear q = make_channel_linear(QuantScheme::kFp8Channel, out, in, config.scale_dtype);
  const float* src = w.as<float>();
  uint8_t* codes = q.codes.data<uint8_t>();
  float* scales = q.scales.data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < out; ++n) {
    const float* row = src + n * in;
    float amax = 0;
    for (int64_t k = 0; k < in; ++k) amax = std::max(amax, std::fabs(row[k]));
    const float s = round_scale_to(amax > 0 ? amax / kFp8E4M3Max : 1.0f, config.scale_dtype);
    scales[n] = s;
    // f32_to_fp8e4m3 saturates, which is the clamp to +-448 (the stored scale can be a hair
    // below amax/448, pushing |w/s| just past 448).
    for (int64_t k = 0; k < in; ++k) codes[n * in + k] = f32_to_fp8e4m3(row[k] / s);
  }
  return q;
}

}  // namespace llmq
