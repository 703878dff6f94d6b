#include "quantizers/fp8.h"

#include <algorithm>
#include <cmath>

#include "core/numeric.h"
#include "quantizers/per_channel.h"

namespace llmq {

QuantizedLinear quantize_fp8_channel(const TensorView& w, const Fp8Config& config) {
  // f32_to_fp8e4m3 saturates, which is the clamp to +-448 (the stored scale can be a hair
  // below amax/448, pushing |w/s| just past 448).
  return quantize_per_channel<uint8_t>(w, QuantScheme::kFp8Channel, kFp8E4M3Max, config.scale_dtype,
                                       [](float v, float s) { return f32_to_fp8e4m3(v / s); });
}

}  // namespace llmq
