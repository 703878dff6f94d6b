// SmoothQuant factors and folding; AWQ's scale candidates, search, clip search and final grid.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "quantizers/awq.h"
#include "quantizers/smoothquant.h"

namespace llmq {
namespace {

Tensor random_matrix(int64_t rows, int64_t cols, unsigned seed, float sd = 1.0f) {
  Tensor t(DType::kF32, {rows, cols});
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, sd);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = d(rng);
  return t;
}

// y = (x * g) W^T for one row x.
std::vector<double> norm_then_linear(const std::vector<float>& x, const Tensor& g, const Tensor& w) {
  const int64_t out = w.dim(0), in = w.dim(1);
  std::vector<double> y(out, 0.0);
  for (int64_t n = 0; n < out; ++n)
    for (int64_t k = 0; k < in; ++k) y[n] += double(x[k]) * g.data<float>()[k] * w.data<float>()[n * in + k];
  return y;
}

TEST(SmoothQuant, FactorsFollowTheFormula) {
  Tensor w(DType::kF32, {2, 3});
  const float wv[6] = {0.5f, -2.0f, 0.0f, -1.0f, 1.0f, 0.0f};
  for (int i = 0; i < 6; ++i) w.data<float>()[i] = wv[i];
  const std::vector<float> mn = {-3.0f, -1.0f, -2.0f}, mx = {1.0f, 3.0f, 2.0f}, amax = {3.0f, 3.0f, 2.0f};
  SmoothQuantConfig c;
  c.alpha = 0.5;
  const auto s = smoothquant_factors(mn, mx, amax, {&w}, c);
  EXPECT_FLOAT_EQ(s[0], std::sqrt(4.0f) / std::sqrt(2.0f * 1.0f));  // act 4, wt 2*max(0.5, 1)
  EXPECT_FLOAT_EQ(s[1], std::sqrt(4.0f) / std::sqrt(2.0f * 2.0f));
  EXPECT_FLOAT_EQ(s[2], 4.0f);  // zero weight column: s = act
  c.act_range = SmoothActRange::kAbsMax;
  c.alpha = 0.8;
  const auto s2 = smoothquant_factors(mn, mx, amax, {&w}, c);
  EXPECT_NEAR(s2[0], std::pow(3.0, 0.8) / std::pow(1.0, 0.2), 1e-5);
  EXPECT_NEAR(s2[2], std::pow(2.0, 0.8) / std::pow(1e-5, 0.2), 1e-2);
}

TEST(SmoothQuant, FoldingPreservesTheFunction) {
  const int64_t in = 64;
  Tensor q = random_matrix(32, in, 1, 0.05f), k = random_matrix(16, in, 2, 0.05f);
  Tensor g = random_matrix(1, in, 3);
  g.reshape({in});
  std::vector<float> x(in), mn(in), mx(in), amax(in);
  std::mt19937 rng(4);
  std::normal_distribution<float> d(0.0f, 1.0f);
  for (int64_t j = 0; j < in; ++j) {
    x[j] = d(rng) * (j % 13 == 0 ? 40.0f : 1.0f);  // outlier channels
    mx[j] = std::fabs(x[j]);
    mn[j] = -std::fabs(x[j]);
    amax[j] = std::fabs(x[j]);
  }
  const auto yq = norm_then_linear(x, g, q), yk = norm_then_linear(x, g, k);
  const auto s = smoothquant_factors(mn, mx, amax, {&q, &k}, SmoothQuantConfig{});
  fold_smoothing(s, g, {&q, &k});
  const auto yq2 = norm_then_linear(x, g, q), yk2 = norm_then_linear(x, g, k);
  for (size_t n = 0; n < yq.size(); ++n) {
    // Each term (x g / s)(w s) picks up two f32 roundings: 2^-23 relative per term, summed.
    double bound = 0;
    for (int64_t j = 0; j < in; ++j) bound += 4 * 1.2e-7 * std::fabs(x[j] * g.data<float>()[j] * s[j] * q.data<float>()[n * in + j] / s[j]);
    EXPECT_NEAR(yq2[n], yq[n], bound + 1e-12) << n;
  }
  for (size_t n = 0; n < yk.size(); ++n) EXPECT_NEAR(yk2[n], yk[n], 1e-5 * (1 + std::fabs(yk[n])));
  // The outlier channels were scaled down in the norm (s > 1 there).
  EXPECT_GT(s[0], s[1]);
}

TEST(Awq, CandidateScalesAreNormalisedAndRatioZeroIgnoresActivations) {
  const std::vector<float> xm = {0.1f, 1.0f, 10.0f, 2.0f}, wm = {0.5f, 0.5f, 0.25f, 1.0f};
  for (double r : {0.0, 0.35, 0.95}) {
    const auto s = awq_candidate_scales(xm, wm, r, true);
    const float mx = *std::max_element(s.begin(), s.end()), mn = *std::min_element(s.begin(), s.end());
    EXPECT_NEAR(mx * mn, 1.0f, 1e-5) << r;
  }
  const auto s0 = awq_candidate_scales(xm, wm, 0.0, false);
  for (float v : s0) EXPECT_FLOAT_EQ(v, 1.0f);
  const auto s1 = awq_candidate_scales(xm, wm, 0.5, false);
  EXPECT_NEAR(s1[2] / s1[0], 10.0f, 1e-4);  // sqrt(10 / 0.1)
}

TEST(Awq, SearchKeepsTheLowestLossAndNeverLosesToRtn) {
  const std::vector<float> xm = {0.5f, 1.0f, 4.0f, 2.0f}, wm = {0.5f, 0.5f, 0.5f, 0.5f};
  AwqConfig c;
  // A loss minimised where s is closest to x_mean^0.5 shape.
  auto loss = [&](const std::vector<float>& s) {
    const auto target = awq_candidate_scales(xm, wm, 0.5, true);
    double l = 0;
    for (size_t j = 0; j < s.size(); ++j) l += (s[j] - target[j]) * (s[j] - target[j]);
    return l;
  };
  const AwqScaleSearch r = awq_search_scales(xm, wm, c, loss);
  EXPECT_DOUBLE_EQ(r.best_ratio, 0.5);
  EXPECT_NEAR(r.best_loss, 0.0, 1e-12);
  EXPECT_EQ(r.losses.size(), 20u);
  // When no scaling beats s = 1, s = 1 is kept.
  const AwqScaleSearch r1 = awq_search_scales(xm, wm, c, [](const std::vector<float>& s) {
    double l = 0;
    for (float v : s) l += (v - 1) * (v - 1);
    return l;
  });
  EXPECT_EQ(r1.best_ratio, -1);
  for (float v : r1.scales) EXPECT_EQ(v, 1.0f);
}

TEST(Awq, ClipSearchNeverWorseThanNoClipAndClipsOutliers) {
  const int64_t out = 24, in = 256, T = 700;
  Tensor w = random_matrix(out, in, 9, 0.02f);
  for (int64_t n = 0; n < out; n += 3) w.data<float>()[n * in + 5] = 0.3f;  // an outlier per row
  const Tensor x = random_matrix(T, in, 10);
  AwqConfig c;
  const Tensor best = awq_search_clip(w, x.view(), c);
  ASSERT_EQ(best.shape(), (Shape{out, 2}));
  // Output error of a clip choice on the sub-sampled tokens the search uses (stride 1 here).
  auto group_err = [&](const Tensor& wc, int64_t n, int64_t g) {
    Tensor row(DType::kF32, {1, 128});
    for (int64_t k = 0; k < 128; ++k) row.data<float>()[k] = wc.data<float>()[n * in + g * 128 + k];
    const Tensor fq = awq_fake_quant(row, c);
    double e = 0;
    for (int64_t t = 0; t < T; ++t) {
      double acc = 0;
      for (int64_t k = 0; k < 128; ++k)
        acc += double(x.data<float>()[t * in + g * 128 + k]) *
               (fq.data<float>()[k] - w.data<float>()[n * in + g * 128 + k]);
      e += acc * acc;
    }
    return e / T;
  };
  Tensor clipped = Tensor::copy_of(w.view());
  awq_apply_clip(clipped, best, 128);
  int shrunk = 0;
  for (int64_t n = 0; n < out; ++n)
    for (int64_t g = 0; g < 2; ++g) {
      EXPECT_LE(group_err(clipped, n, g), group_err(w, n, g) * (1 + 1e-4) + 1e-12) << n << "," << g;
      float amax = 0;
      for (int64_t k = 0; k < 128; ++k) amax = std::max(amax, std::fabs(w.data<float>()[n * in + g * 128 + k]));
      EXPECT_GE(best.data<float>()[n * 2 + g], amax * 0.55f - 1e-7f);
      EXPECT_LE(best.data<float>()[n * 2 + g], amax);
      shrunk += best.data<float>()[n * 2 + g] < amax;
    }
  EXPECT_GT(shrunk, 0);  // with 4-bit grids some groups always prefer a clip
}

TEST(Awq, FinalQuantizationUsesTheAwqGrid) {
  const Tensor w = random_matrix(8, 256, 12, 0.02f);
  const QuantizedLinear q = quantize_awq_final(w, AwqConfig{});
  EXPECT_EQ(validate(q), "");
  EXPECT_FALSE(q.symmetric);
  const Tensor fq = awq_fake_quant(w, AwqConfig{});
  const Tensor d = dequantize(q);
  for (int64_t i = 0; i < w.numel(); ++i) ASSERT_EQ(d.data<float>()[i], fq.data<float>()[i]) << i;
}

}  // namespace
}  // namespace llmq
