#include "quantizers/smoothquant.h"

#include <algorithm>
#include <cmath>

namespace llmq {

std::vector<float> smoothquant_factors(const std::vector<float>& act_min, const std::vector<float>& act_max,
                                       const std::vector<float>& act_absmax,
                                       const std::vector<const Tensor*>& balance, const SmoothQuantConfig& config) {
  LLMQ_CHECK(!balance.empty(), "smoothquant needs balance layers");
  const int64_t in = balance[0]->dim(1);
  LLMQ_CHECK(static_cast<int64_t>(act_absmax.size()) == in, "activation stats width " << act_absmax.size());
  // Column maxima of |W| over every balance layer's rows: row ranges on all cores, merged by
  // max (exact, so the same for any thread count).
  std::vector<double> wt(in, 0.0);
  for (const Tensor* w : balance) {
    LLMQ_CHECK(w->dim(1) == in, "balance layer width " << w->dim(1) << " != " << in);
    const float* p = w->data<float>();
    const int64_t rows = w->dim(0);
#pragma omp parallel
    {
      std::vector<float> local(in, 0.0f);
#pragma omp for schedule(static) nowait
      for (int64_t n = 0; n < rows; ++n)
        for (int64_t j = 0; j < in; ++j) local[j] = std::max(local[j], std::fabs(p[n * in + j]));
#pragma omp critical
      for (int64_t j = 0; j < in; ++j) wt[j] = std::max(wt[j], static_cast<double>(local[j]));
    }
  }
  const bool llmc = config.act_range == SmoothActRange::kMaxMinusMin;
  std::vector<float> s(in);
  for (int64_t j = 0; j < in; ++j) {
    const double act = llmc ? static_cast<double>(act_max[j]) - act_min[j] : act_absmax[j];
    const double w = llmc ? 2.0 * wt[j] : std::max(wt[j], 1e-5);
    double v = w > 0 ? std::pow(act, config.alpha) / std::pow(w, 1.0 - config.alpha) : act;
    if (!std::isfinite(v)) v = 1.0;
    s[j] = static_cast<float>(std::max(v, 1e-5));
  }
  return s;
}

void fold_smoothing(const std::vector<float>& s, Tensor& norm_weight, const std::vector<Tensor*>& balance) {
  const int64_t in = static_cast<int64_t>(s.size());
  LLMQ_CHECK(norm_weight.numel() == in, "norm width " << norm_weight.numel() << " != " << in);
  float* g = norm_weight.data<float>();
  for (int64_t j = 0; j < in; ++j) g[j] /= s[j];
  for (Tensor* w : balance) {
    LLMQ_CHECK(w->dim(1) == in, "balance layer width " << w->dim(1));
    float* p = w->data<float>();
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < w->dim(0); ++n)
      for (int64_t j = 0; j < in; ++j) p[n * in + j] *= s[j];
  }
}

}  // namespace llmq
