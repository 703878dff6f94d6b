#include "quantizers/quantized_linear.h"

#include <cmath>
#include <vector>

#include "core/numeric.h"

namespace llmq {

QuantizedLinear QuantizedLinear::clone() const {
  const auto copy = [](const Tensor& t) { return t.empty() ? Tensor() : Tensor::copy_of(t.view()); };
  QuantizedLinear c;
  c.scheme = scheme;
  c.out_features = out_features;
  c.in_features = in_features;
  c.group_size = group_size;
  c.symmetric = symmetric;
  c.scale_dtype = scale_dtype;
  c.codes = copy(codes);
  c.scales = copy(scales);
  c.zeros = copy(zeros);
  c.g_idx = copy(g_idx);
  return c;
}

QuantizedLinear make_int4_linear(int64_t out, int64_t in, int64_t group_size, bool symmetric, DType scale_dtype) {
  LLMQ_CHECK(group_size > 0 && in % group_size == 0, "in " << in << " not a multiple of group " << group_size);
  QuantizedLinear q;
  q.scheme = QuantScheme::kInt4Group;
  q.out_features = out;
  q.in_features = in;
  q.group_size = group_size;
  q.symmetric = symmetric;
  q.scale_dtype = scale_dtype;
  q.codes = Tensor(DType::kU8, {out, in});
  q.scales = Tensor(DType::kF32, {out, in / group_size});
  q.zeros = Tensor(DType::kU8, {out, in / group_size});
  return q;
}

QuantizedLinear make_channel_linear(QuantScheme scheme, int64_t out, int64_t in, DType scale_dtype) {
  LLMQ_CHECK(scheme != QuantScheme::kInt4Group, "make_channel_linear is for FP8/INT8");
  QuantizedLinear q;
  q.scheme = scheme;
  q.out_features = out;
  q.in_features = in;
  q.scale_dtype = scale_dtype;
  q.codes = Tensor(scheme == QuantScheme::kInt8Channel ? DType::kI8 : DType::kU8, {out, in});
  q.scales = Tensor(DType::kF32, {out, 1});
  return q;
}

Tensor dequantize(const QuantizedLinear& q) {
  const int64_t out = q.out_features, in = q.in_features;
  Tensor w(DType::kF32, {out, in});
  float* dst = w.data<float>();
  const float* s = q.scales.data<float>();
  const int64_t G = q.num_groups();
  switch (q.scheme) {
    case QuantScheme::kFp8Channel: {
      const uint8_t* c = q.codes.data<uint8_t>();
#pragma omp parallel for schedule(static)
      for (int64_t n = 0; n < out; ++n)
        for (int64_t k = 0; k < in; ++k) dst[n * in + k] = fp8e4m3_to_f32(c[n * in + k]) * s[n];
      break;
    }
    case QuantScheme::kInt8Channel: {
      const int8_t* c = q.codes.data<int8_t>();
#pragma omp parallel for schedule(static)
      for (int64_t n = 0; n < out; ++n)
        for (int64_t k = 0; k < in; ++k) dst[n * in + k] = static_cast<float>(c[n * in + k]) * s[n];
      break;
    }
    case QuantScheme::kInt4Group: {
      const uint8_t* c = q.codes.data<uint8_t>();
      const uint8_t* z = q.zeros.data<uint8_t>();
      std::vector<int32_t> group(in);  // group of each input column
      for (int64_t k = 0; k < in; ++k) group[k] = q.group_of(k);
#pragma omp parallel for schedule(static)
      for (int64_t n = 0; n < out; ++n)
        for (int64_t k = 0; k < in; ++k) {
          const int64_t g = group[k];
          dst[n * in + k] = (static_cast<float>(c[n * in + k]) - static_cast<float>(z[n * G + g])) * s[n * G + g];
        }
      break;
    }
  }
  return w;
}

std::string validate(const QuantizedLinear& q) {
  const int64_t out = q.out_features, in = q.in_features;
  const Shape wshape{out, in};
  if (out <= 0 || in <= 0) return "non-positive shape";
  if (q.codes.shape() != wshape) return "codes shape " + shape_str(q.codes.shape()) + " != " + shape_str(wshape);
  const int64_t G = q.scheme == QuantScheme::kInt4Group ? (q.group_size > 0 ? in / q.group_size : 0) : 1;
  if (q.scheme == QuantScheme::kInt4Group && (q.group_size <= 0 || in % q.group_size != 0))
    return "input width " + std::to_string(in) + " is not a multiple of group size " + std::to_string(q.group_size);
  if (q.scales.dtype() != DType::kF32 || q.scales.shape() != Shape{out, G})
    return "scales must be F32 " + shape_str({out, G}) + ", got " + shape_str(q.scales.shape());
  const float* s = q.scales.data<float>();
  for (int64_t i = 0; i < out * G; ++i)
    if (!(std::isfinite(s[i]) && s[i] > 0)) return "scale " + std::to_string(i) + " is not finite and positive";
  const uint8_t* codes = static_cast<const uint8_t*>(q.codes.raw());
  switch (q.scheme) {
    case QuantScheme::kFp8Channel:
      if (q.codes.dtype() != DType::kU8) return "fp8 codes must be U8 bit patterns";
      for (int64_t i = 0; i < out * in; ++i)
        if ((codes[i] & 0x7F) == 0x7F) return "fp8 code " + std::to_string(i) + " is NaN";
      break;
    case QuantScheme::kInt8Channel:
      if (q.codes.dtype() != DType::kI8) return "int8 codes must be I8";
      break;
    case QuantScheme::kInt4Group:
      if (q.codes.dtype() != DType::kU8) return "int4 codes must be U8";
      {
        // One vectorized OR over every code first (a layer's worth is read at each load), the
        // offending index only when there is one.
        uint8_t high = 0;
        for (int64_t i = 0; i < out * in; ++i) high |= codes[i];
        if (high > 15)
          for (int64_t i = 0; i < out * in; ++i)
            if (codes[i] > 15) return "int4 code " + std::to_string(i) + " out of range";
      }
      if (q.zeros.dtype() != DType::kU8 || q.zeros.shape() != Shape{out, G}) return "zeros must be U8 " + shape_str({out, G});
      for (int64_t i = 0; i < out * G; ++i)
        if (q.zeros.data<uint8_t>()[i] > 15) return "int4 zero " + std::to_string(i) + " out of range";
      if (!q.g_idx.empty()) {
        if (q.g_idx.dtype() != DType::kI32 || q.g_idx.shape() != Shape{in}) return "g_idx must be I32 [in]";
        const int32_t* g_idx = q.g_idx.data<int32_t>();
        for (int64_t k = 0; k < in; ++k) {
          const int32_t g = g_idx[k];
          if (g < 0 || g >= G) return "g_idx[" + std::to_string(k) + "] = " + std::to_string(g) + " out of range";
        }
      }
      break;
  }
  return "";
}

}  // namespace llmq
