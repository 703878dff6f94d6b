#include "quantizers/rtn.h"

#include <algorithm>
#include <cmath>

#include "quantizers/per_channel.h"

namespace llmq {

Int4Params int4_group_params(const float* row, int64_t group, int64_t group_size, const Int4Config& config) {
  const float* g = row + group * group_size;
  float lo = g[0], hi = g[0];
  for (int64_t k = 1; k < group_size; ++k) {
    lo = std::min(lo, g[k]);
    hi = std::max(hi, g[k]);
  }
  return int4_params(lo, hi, config.range, config.scale_dtype, config.min_zero);
}

QuantizedLinear quantize_rtn_int4(const TensorView& w, const Int4Config& config) {
  LLMQ_CHECK(w.dtype == DType::kF32 && w.rank() == 2, "quantize_rtn_int4 takes float32 [out, in]");
  const int64_t out = w.dim(0), in = w.dim(1), gs = config.group_size;
  QuantizedLinear q = make_int4_linear(out, in, gs, config.range == Int4Range::kSymmetric, config.scale_dtype);  // checks in % gs
  const int64_t G = in / gs;
  const float* src = w.as<float>();
  uint8_t* codes = q.codes.data<uint8_t>();
  float* scales = q.scales.data<float>();
  uint8_t* zeros = q.zeros.data<uint8_t>();
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < out; ++n) {
    const float* row = src + n * in;
    for (int64_t g = 0; g < G; ++g) {
      const Int4Params p = int4_group_params(row, g, gs, config);
      scales[n * G + g] = p.scale;
      zeros[n * G + g] = p.zero;
      for (int64_t k = g * gs; k < (g + 1) * gs; ++k) codes[n * in + k] = int4_code(row[k], p);
    }
  }
  return q;
}

QuantizedLinear quantize_rtn_int8(const TensorView& w, const Int8Config& config) {
  return quantize_per_channel<int8_t>(w, QuantScheme::kInt8Channel, 127.5f, config.scale_dtype, int8_code);
}

}  // namespace llmq
