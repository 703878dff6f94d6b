#include "model/quantized_linear.h"

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/check.h"
#include "core/numeric.h"

namespace llmq {

namespace {

using MatD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Output channels per GEMM block: the block of weights is widened to double on the fly, so
// the resident weight stays float32 (as large as a dense one) and a block (kBlock × in
// doubles) stays cache-sized per thread.
constexpr int64_t kBlock = 32;
// Tokens quantized and multiplied per pass: bounds the double activation buffer
// (kTokenChunk × in) while the per-pass weight widening stays 1/kTokenChunk of the GEMM work.
constexpr int64_t kTokenChunk = 128;

}  // namespace

WeightOnlyLinear::WeightOnlyLinear(const QuantizedLinear& q) : dense_(dequantize(q)) {}

float quantize_token_fp8(const float* x, int64_t n, double* xq) {
  float amax = 0.0f;
  for (int64_t k = 0; k < n; ++k) amax = std::fmax(amax, std::fabs(x[k]));
  // vLLM's min_scaling_factor keeps tiny rows from using huge reciprocal scales.
  const float s = std::fmax(amax / kFp8E4M3Max, 1.0f / (kFp8E4M3Max * 512.0f));
  // f32_to_fp8e4m3 saturates to +-448, which is the kernel's clamp before the cast.
  for (int64_t k = 0; k < n; ++k) xq[k] = fp8e4m3_to_f32(f32_to_fp8e4m3(x[k] / s));
  return s;
}

float quantize_token_int8(const float* x, int64_t n, double* xq) {
  float amax = 0.0f;
  for (int64_t k = 0; k < n; ++k) amax = std::fmax(amax, std::fabs(x[k]));
  if (amax == 0.0f) {
    std::fill(xq, xq + n, 0.0);
    return 1.0f;
  }
  const float inv = 127.0f / amax;
  for (int64_t k = 0; k < n; ++k) {
    const float v = std::nearbyint(x[k] * inv);  // half to even (FE_TONEAREST), like cvt.rni
    xq[k] = std::fmin(std::fmax(v, -128.0f), 127.0f);
  }
  return amax / 127.0f;
}

W8A8Linear::W8A8Linear(const QuantizedLinear& q)
    : scheme_(q.scheme), out_(q.out_features), in_(q.in_features) {
  LLMQ_CHECK(q.scheme == QuantScheme::kFp8Channel || q.scheme == QuantScheme::kInt8Channel,
             "W8A8Linear needs an fp8 or int8 per-channel linear");
  const std::string problem = validate(q);
  LLMQ_CHECK(problem.empty(), "W8A8Linear: " << problem);
  weight_grid_ = Tensor(DType::kF32, {out_, in_});
  float* w = weight_grid_.data<float>();
  if (scheme_ == QuantScheme::kFp8Channel) {
    const uint8_t* c = q.codes.data<uint8_t>();
    for (int64_t i = 0; i < out_ * in_; ++i) w[i] = fp8e4m3_to_f32(c[i]);
  } else {
    const int8_t* c = q.codes.data<int8_t>();
    for (int64_t i = 0; i < out_ * in_; ++i) w[i] = static_cast<float>(c[i]);
  }
  scales_ = Tensor(DType::kF32, {out_});
  std::copy(q.scales.data<float>(), q.scales.data<float>() + out_, scales_.data<float>());
}

void W8A8Linear::forward(const TensorView& x, const TensorView& y) const {
  LLMQ_CHECK(x.dtype == DType::kF32 && y.dtype == DType::kF32 && x.rank() == 2 && y.rank() == 2 &&
                 x.is_contiguous() && y.is_contiguous() && x.dim(1) == in_ && y.dim(0) == x.dim(0) && y.dim(1) == out_,
             "W8A8 linear [" << out_ << ", " << in_ << "]: x " << shape_str(x.shape) << ", y " << shape_str(y.shape));
  const int64_t T = x.dim(0);
  const float* xs = static_cast<const float*>(x.data);
  float* ys = static_cast<float*>(y.data);
  const float* wg = weight_grid_.data<float>();
  const float* sw = scales_.data<float>();
  const bool fp8 = scheme_ == QuantScheme::kFp8Channel;
  const int64_t blocks = (out_ + kBlock - 1) / kBlock;
  MatD xq(std::min(T, kTokenChunk), in_);  // [chunk, in] activation grid values
  std::vector<float> s_t(T);               // [T] token scales
  for (int64_t t0 = 0; t0 < T; t0 += kTokenChunk) {
    const int64_t tc = std::min(kTokenChunk, T - t0);
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < tc; ++t) {
      const float* row = xs + (t0 + t) * in_;
      double* q = xq.data() + t * in_;
      s_t[t0 + t] = fp8 ? quantize_token_fp8(row, in_, q) : quantize_token_int8(row, in_, q);
    }
    // Inside the parallel region Eigen's GEMM runs single-threaded (it checks omp_get_num_threads).
#pragma omp parallel for schedule(dynamic)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t n0 = b * kBlock, nb = std::min(kBlock, out_ - n0);
      const MatD wb = Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(
                          wg + n0 * in_, nb, in_)
                          .cast<double>();                        // [nb, in]
      const MatD acc = xq.topRows(tc) * wb.transpose();           // [tc, nb], exact sums (see header)
      for (int64_t t = 0; t < tc; ++t)
        for (int64_t j = 0; j < nb; ++j)
          ys[(t0 + t) * out_ + n0 + j] = static_cast<float>(acc(t, j) * static_cast<double>(s_t[t0 + t]) *
                                                            static_cast<double>(sw[n0 + j]));
    }
  }
}

std::unique_ptr<Linear> make_quantized_linear(QuantizedLinear q, bool w8a8) {
  if (w8a8) {
    LLMQ_CHECK(q.scheme != QuantScheme::kInt4Group, "W8A8 evaluation requested for an int4 (weight-only) linear");
    return std::make_unique<W8A8Linear>(q);
  }
  return std::make_unique<WeightOnlyLinear>(q);
}

}  // namespace llmq
