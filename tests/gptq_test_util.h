// Inputs and measures shared by the GPTQ / RTN tests (CPU and GPU): random weights, Hessians
// of correlated inputs (the case where GPTQ must beat RTN), diagonal Hessians (where it must
// equal RTN) and the output loss tr(E H Eᵀ).
#pragma once

#include <Eigen/Dense>

#include <cmath>
#include <random>
#include <vector>

#include "core/tensor.h"
#include "quantizers/gptq.h"
#include "quantizers/rtn.h"

namespace llmq::testing {

inline Tensor random_weight(int64_t out, int64_t in, unsigned seed, float std_dev = 0.02f) {
  Tensor w(DType::kF32, {out, in});
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, std_dev);
  for (int64_t i = 0; i < w.numel(); ++i) w.data<float>()[i] = d(rng);
  return w;
}

// X [N, in]: AR(1)-correlated columns (rho 0.9) with log-normal column scales, so neighbouring
// columns are strongly correlated and diag(XᵀX) spans a wide range; the columns in `dead` are
// all zero.
inline Eigen::MatrixXd correlated_inputs(int64_t N, int64_t in, unsigned seed, const std::vector<int64_t>& dead) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> z(0.0, 1.0);
  std::vector<double> scale(in);  // [in]
  for (auto& s : scale) s = std::exp(0.7 * z(rng));
  Eigen::MatrixXd x(N, in);  // [N, in]
  const double rho = 0.9;
  for (int64_t t = 0; t < N; ++t) {
    double prev = z(rng);
    for (int64_t k = 0; k < in; ++k) {
      prev = rho * prev + std::sqrt(1 - rho * rho) * z(rng);
      x(t, k) = scale[k] * prev;
    }
  }
  for (int64_t k : dead) x.col(k).setZero();
  return x;
}

// H = XᵀX / N (N = tokens, default 2 in) as float32; dead columns give exactly-zero H rows and
// columns. shift: subtract shift * mean(diag) * I (makes a rank-deficient H indefinite).
inline Tensor correlated_hessian(int64_t in, unsigned seed, const std::vector<int64_t>& dead, int64_t tokens = -1,
                                 double shift = 0.0) {
  const int64_t N = tokens > 0 ? tokens : 2 * in;
  const Eigen::MatrixXd x = correlated_inputs(N, in, seed, dead);
  Eigen::MatrixXd h = x.transpose() * x / static_cast<double>(N);  // [in, in]
  if (shift != 0) h.diagonal().array() -= shift * h.diagonal().mean();
  Tensor out(DType::kF32, {in, in});
  for (int64_t i = 0; i < in; ++i)
    for (int64_t j = 0; j < in; ++j) out.data<float>()[i * in + j] = static_cast<float>(h(i, j));
  return out;
}

inline Tensor diagonal_hessian(int64_t in, unsigned seed) {  // seed 0: identity
  Tensor h(DType::kF32, {in, in});
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(0.1f, 10.0f);
  for (int64_t k = 0; k < in; ++k) h.data<float>()[k * in + k] = seed == 0 ? 1.0f : d(rng);
  return h;
}

inline Int4Config rtn_config(const GptqConfig& c) { return Int4Config{c.group_size, c.range, c.scale_dtype, c.min_zero}; }

// tr(E H Eᵀ) with E = W - deq, everything in float64, the plain triple loop.
inline double trace_ehe(const Tensor& w, const Tensor& deq, const Tensor& h) {
  const int64_t out = w.dim(0), in = w.dim(1);
  const float* a = w.data<float>();
  const float* b = deq.data<float>();
  const float* hh = h.data<float>();
  double t = 0;
  std::vector<double> e(in);
  for (int64_t n = 0; n < out; ++n) {
    for (int64_t k = 0; k < in; ++k) e[k] = static_cast<double>(a[n * in + k]) - b[n * in + k];
    for (int64_t i = 0; i < in; ++i) {
      double s = 0;
      for (int64_t j = 0; j < in; ++j) s += hh[i * in + j] * e[j];
      t += e[i] * s;
    }
  }
  return t;
}

}  // namespace llmq::testing
