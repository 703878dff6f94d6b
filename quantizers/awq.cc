#include "quantizers/awq.h"

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <limits>

#include "quantizers/rtn.h"

namespace llmq {
namespace {

using RowMatrixF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MapF = Eigen::Map<RowMatrixF>;
using ConstMapF = Eigen::Map<const RowMatrixF>;

Int4Config awq_grid(const AwqConfig& c) {
  Int4Config g;
  g.group_size = c.group_size;
  g.range = Int4Range::kAsymAwq;
  g.scale_dtype = c.scale_dtype;
  return g;
}

// Fake-quantizes one group of n values in place.
void fake_quant_group(float* v, int64_t n, const Int4Config& grid) {
  float lo = v[0], hi = v[0];
  for (int64_t k = 1; k < n; ++k) {
    lo = std::min(lo, v[k]);
    hi = std::max(hi, v[k]);
  }
  const Int4Params p = int4_params(lo, hi, grid.range, grid.scale_dtype);
  for (int64_t k = 0; k < n; ++k) v[k] = int4_dequant(int4_code(v[k], p), p);
}

}  // namespace

std::vector<float> awq_weight_mean(const std::vector<const Tensor*>& weights, int64_t group_size) {
  LLMQ_CHECK(!weights.empty(), "awq_weight_mean needs weights");
  const int64_t in = weights[0]->dim(1);
  LLMQ_CHECK(in % group_size == 0, "width " << in << " not a multiple of " << group_size);
  std::vector<double> sum(in, 0.0);
  int64_t rows = 0;
  for (const Tensor* w : weights) {
    LLMQ_CHECK(w->dim(1) == in, "scaled layers disagree on width");
    const float* p = w->data<float>();
    const int64_t rows_w = w->dim(0);
    // Threads own column groups; each column still sums its rows in order (deterministic).
#pragma omp parallel for schedule(static)
    for (int64_t g = 0; g < in / group_size; ++g) {
      for (int64_t n = 0; n < rows_w; ++n) {
        const float* grp = p + n * in + g * group_size;
        float amax = 0;
        for (int64_t k = 0; k < group_size; ++k) amax = std::max(amax, std::fabs(grp[k]));
        for (int64_t k = 0; k < group_size; ++k) sum[g * group_size + k] += std::fabs(grp[k]) / (amax + 1e-6f);
      }
    }
    rows += w->dim(0);
  }
  std::vector<float> mean(in);
  for (int64_t j = 0; j < in; ++j) mean[j] = static_cast<float>(sum[j] / static_cast<double>(rows));
  return mean;
}

std::vector<float> awq_candidate_scales(const std::vector<float>& x_mean, const std::vector<float>& w_mean,
                                        double ratio, bool duo_scaling) {
  const size_t in = x_mean.size();
  std::vector<float> s(in);
  float smax = 0, smin = std::numeric_limits<float>::max();
  for (size_t j = 0; j < in; ++j) {
    double v = duo_scaling ? std::pow(x_mean[j], ratio) / (std::pow(w_mean[j], 1.0 - ratio) + 1e-4)
                           : std::pow(x_mean[j], ratio);
    v = std::max(v, 1e-4);
    s[j] = static_cast<float>(v);
    smax = std::max(smax, s[j]);
    smin = std::min(smin, s[j]);
  }
  const float norm = std::sqrt(smax * smin);
  for (float& v : s) {
    v /= norm;
    if (!std::isfinite(v)) v = 1.0f;
  }
  return s;
}

AwqScaleSearch awq_search_scales(const std::vector<float>& x_mean, const std::vector<float>& w_mean,
                                 const AwqConfig& config, const AwqLossFn& loss_of) {
  AwqScaleSearch r;
  r.best_loss = std::numeric_limits<double>::infinity();
  r.loss_unscaled = loss_of(std::vector<float>(x_mean.size(), 1.0f));
  for (int i = 0; i < config.n_grid; ++i) {
    const double ratio = static_cast<double>(i) / config.n_grid;
    std::vector<float> s = awq_candidate_scales(x_mean, w_mean, ratio, config.duo_scaling);
    const double loss = loss_of(s);
    r.losses.push_back(loss);
    if (loss < r.best_loss) {  // strict: the first of equal losses wins, as in AutoAWQ
      r.best_loss = loss;
      r.best_ratio = ratio;
      r.scales = std::move(s);
    }
  }
  LLMQ_CHECK(!r.scales.empty(), "AWQ scale search found no finite loss");
  // AutoAWQ never tries s = 1; we keep it when it beats every ratio, so AWQ's block loss is
  // never worse than plain RTN's (best_ratio -1 records that choice).
  if (r.loss_unscaled <= r.best_loss) {
    r.best_loss = r.loss_unscaled;
    r.best_ratio = -1;
    r.scales.assign(x_mean.size(), 1.0f);
  }
  return r;
}

Tensor awq_fake_quant(const Tensor& w, const AwqConfig& config) {
  const int64_t out = w.dim(0), in = w.dim(1), gs = config.group_size;
  Tensor q = Tensor::copy_of(w.view());
  float* p = q.data<float>();
  const Int4Config grid = awq_grid(config);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < out; ++n)
    for (int64_t g = 0; g < in / gs; ++g) fake_quant_group(p + n * in + g * gs, gs, grid);
  return q;
}

Tensor awq_fake_quant_scaled(const Tensor& w, const std::vector<float>& s, const AwqConfig& config) {
  const int64_t out = w.dim(0), in = w.dim(1);
  Tensor scaled = Tensor::copy_of(w.view());
  float* p = scaled.data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < out; ++n)
    for (int64_t k = 0; k < in; ++k) p[n * in + k] *= s[k];
  Tensor q = awq_fake_quant(scaled, config);
  float* qp = q.data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < out; ++n)
    for (int64_t k = 0; k < in; ++k) qp[n * in + k] /= s[k];
  return q;
}

AwqClipRows awq_clip_rows(int64_t n_tokens, int64_t clip_tokens) {
  // A fixed stride, as AutoAWQ does, but an odd one: samples are power-of-two long, and
  // AutoAWQ's stride (128 for 128 x 512 tokens) divides them, so it sees only positions 0,
  // 128, 256, 384, a quarter of them the position-0 outlier (in layer 0 the same BOS vector
  // 128 times). An odd stride walks through every position.
  AwqClipRows r;
  r.step = std::max<int64_t>(1, n_tokens / clip_tokens) | 1;
  r.count = (n_tokens + r.step - 1) / r.step;
  return r;
}

Tensor awq_search_clip(const Tensor& w, const TensorView& x, const AwqConfig& config) {
  const int64_t in = w.dim(1);
  LLMQ_CHECK(x.rank() == 2 && x.dim(1) == in, "clip inputs " << shape_str(x.shape) << " vs width " << in);
  const AwqClipRows rows = awq_clip_rows(x.dim(0), config.clip_tokens);
  Tensor xs(DType::kF32, {rows.count, in});  // [T, in] sub-sampled inputs
  const float* xp = x.as<float>();
  float* sp = xs.data<float>();
  for (int64_t t = 0; t < rows.count; ++t) std::copy_n(xp + t * rows.step * in, in, sp + t * in);
  return awq_search_clip_rows(w, xs.view(), config);
}

Tensor awq_search_clip_rows(const Tensor& w, const TensorView& xs_view, const AwqConfig& config) {
  const int64_t out = w.dim(0), in = w.dim(1), gs = config.group_size, G = in / gs;
  LLMQ_CHECK(xs_view.rank() == 2 && xs_view.dim(1) == in && xs_view.dtype == DType::kF32 && xs_view.is_contiguous(),
             "clip inputs " << shape_str(xs_view.shape) << " vs width " << in << " (F32, contiguous)");
  const int64_t T = xs_view.dim(0);
  const ConstMapF xs(xs_view.as<float>(), T, in);  // [T, in]
  const Int4Config grid = awq_grid(config);
  const int n_shrink = static_cast<int>(config.max_shrink * config.clip_grid);
  Tensor best(DType::kF32, {out, G});  // [out, G] chosen max |w|
  float* bp = best.data<float>();
  const float* wp = w.data<float>();
#pragma omp parallel for schedule(dynamic)
  for (int64_t g = 0; g < G; ++g) {
    const auto xg = xs.middleCols(g * gs, gs);            // [T, gs]
    RowMatrixF wg = ConstMapF(wp, out, in).middleCols(g * gs, gs);  // [out, gs]
    Eigen::VectorXf amax = wg.cwiseAbs().rowwise().maxCoeff();
    Eigen::VectorXf min_err = Eigen::VectorXf::Constant(out, std::numeric_limits<float>::infinity());
    Eigen::VectorXf best_val = amax;
    RowMatrixF delta(out, gs);  // [out, gs] fake-quantized minus original
    for (int i = 0; i < n_shrink; ++i) {
      const float shrink = 1.0f - static_cast<float>(i) / config.clip_grid;
      for (int64_t n = 0; n < out; ++n) {
        const float mv = amax[n] * shrink;
        float* row = delta.row(n).data();
        for (int64_t k = 0; k < gs; ++k) row[k] = std::clamp(wg(n, k), -mv, mv);
        fake_quant_group(row, gs, grid);
        for (int64_t k = 0; k < gs; ++k) row[k] -= wg(n, k);
      }
      const RowMatrixF e = xg * delta.transpose();  // [T, out] output error of this group
      const Eigen::VectorXf err = e.colwise().squaredNorm().transpose() / static_cast<float>(T);
      for (int64_t n = 0; n < out; ++n)
        if (err[n] < min_err[n]) {
          min_err[n] = err[n];
          best_val[n] = amax[n] * shrink;
        }
    }
    for (int64_t n = 0; n < out; ++n) bp[n * G + g] = best_val[n];
  }
  return best;
}

void awq_apply_clip(Tensor& w, const Tensor& max_val, int64_t group_size) {
  const int64_t out = w.dim(0), in = w.dim(1), G = in / group_size;
  float* p = w.data<float>();
  const float* mv = max_val.data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < out; ++n)
    for (int64_t k = 0; k < in; ++k) {
      const float m = mv[n * G + k / group_size];
      p[n * in + k] = std::clamp(p[n * in + k], -m, m);
    }
}

QuantizedLinear quantize_awq_final(const Tensor& w, const AwqConfig& config) {
  return quantize_rtn_int4(w.view(), awq_grid(config));
}

}  // namespace llmq
