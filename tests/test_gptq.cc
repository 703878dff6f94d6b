// GPTQ: equals RTN where it must (diagonal Hessian), beats RTN on the output error where it
// should (correlated Hessian), agrees with an unbatched float64 reference of Algorithm 1 for
// every block/group layout, emits a valid act-order g_idx, counts its damping fallbacks, and is
// deterministic. Every random input prints its seed on failure.
#include <gtest/gtest.h>
#include <omp.h>

#include <Eigen/Dense>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "quantizers/gptq.h"
#include "quantizers/rtn.h"
#include "gptq_test_util.h"

namespace llmq {
namespace {

using testing::correlated_hessian;
using testing::diagonal_hessian;
using testing::random_weight;
using testing::rtn_config;
using testing::trace_ehe;

Tensor zeros_like_weight(const Tensor& w) { return Tensor(DType::kF32, w.shape()); }

// Column order of act-order: diag(H) descending, dead columns counted as 1, ties by index.
std::vector<int64_t> act_order_perm(const Tensor& h) {
  const int64_t in = h.dim(0);
  std::vector<double> diag(in);
  for (int64_t k = 0; k < in; ++k) {
    const double d = h.data<float>()[k * in + k];
    diag[k] = d == 0 ? 1.0 : d;
  }
  std::vector<int64_t> perm(in);
  std::iota(perm.begin(), perm.end(), 0);
  std::stable_sort(perm.begin(), perm.end(), [&](int64_t a, int64_t b) { return diag[a] > diag[b]; });
  return perm;
}

// Algorithm 1 without lazy batches, in float64, row by row: the whole trailing row is updated
// after every column. Min/max groups only. Returns the codes in original column order.
std::vector<uint8_t> gptq_ref(const Tensor& w, const Tensor& h, const GptqConfig& c) {
  const int64_t out = w.dim(0), in = w.dim(1), gs = c.group_size;
  std::vector<int64_t> perm(in);
  std::iota(perm.begin(), perm.end(), 0);
  if (c.act_order) perm = act_order_perm(h);
  Eigen::MatrixXd hp(in, in);  // [in, in] permuted, dead-fixed, damped
  for (int64_t i = 0; i < in; ++i)
    for (int64_t j = 0; j < in; ++j) hp(i, j) = h.data<float>()[perm[i] * in + perm[j]];
  std::vector<bool> dead(in);
  for (int64_t i = 0; i < in; ++i) {
    dead[i] = hp(i, i) == 0;
    if (dead[i]) hp(i, i) = 1;
  }
  hp.diagonal().array() += c.damp_percent * hp.diagonal().mean();
  const Eigen::MatrixXd hinv = hp.inverse();
  const Eigen::MatrixXd u = Eigen::LLT<Eigen::MatrixXd, Eigen::Upper>(hinv).matrixU();
  std::vector<uint8_t> codes(out * in);
  std::vector<double> row(in);
  std::vector<float> cur(gs);
  for (int64_t n = 0; n < out; ++n) {
    for (int64_t i = 0; i < in; ++i) row[i] = dead[i] ? 0.0 : w.data<float>()[n * in + perm[i]];
    Int4Params p{};
    for (int64_t i = 0; i < in; ++i) {
      if (i % gs == 0) {
        for (int64_t k = 0; k < gs; ++k) cur[k] = static_cast<float>(row[i + k]);
        p = int4_group_params(cur.data(), 0, gs, rtn_config(c));
      }
      const uint8_t q = int4_code(static_cast<float>(row[i]), p);
      codes[n * in + perm[i]] = q;
      const double e = (row[i] - int4_dequant(q, p)) / u(i, i);
      for (int64_t j = i + 1; j < in; ++j) row[j] -= e * u(i, j);
    }
  }
  return codes;
}

void expect_same_tensor(const Tensor& a, const Tensor& b, const char* what) {
  ASSERT_EQ(a.shape(), b.shape()) << what;
  ASSERT_EQ(a.dtype(), b.dtype()) << what;
  EXPECT_EQ(std::memcmp(a.raw(), b.raw(), a.nbytes()), 0) << what << " differ";
}

// Relative agreement of the report's output error with trace_ehe: both are sums of
// O(out * in^2) float products of mixed signs, well inside 1e-4 relative on these sizes.
constexpr double kTraceRelTol = 1e-4;

TEST(Gptq, DiagonalHessianEqualsRtn) {
  const Tensor w = random_weight(17, 256, 7);
  for (unsigned hseed : {0u, 5u}) {  // identity, random positive diagonal
    const Tensor h = diagonal_hessian(256, hseed);
    for (Int4Range range : {Int4Range::kSymmetric, Int4Range::kAsymWithZero, Int4Range::kAsymAwq}) {
      for (DType sd : {DType::kF16, DType::kBF16}) {
        for (int64_t gs : {128, 32}) {
          for (int min_zero : {0, 1}) {
            SCOPED_TRACE(::testing::Message() << "weight seed 7, hessian seed " << hseed << " range "
                                            << int(range) << " scale " << dtype_name(sd) << " group " << gs
                                            << " min_zero " << min_zero);
            GptqConfig c;
            c.group_size = gs;
            c.range = range;
            c.scale_dtype = sd;
            c.min_zero = range == Int4Range::kSymmetric ? 0 : min_zero;
            c.block_size = 96;  // blocks that straddle groups must not matter
            QuantReport rep;
            const QuantizedLinear g = quantize_gptq(w.view(), h.view(), c, &rep);
            const QuantizedLinear r = quantize_rtn_int4(w.view(), rtn_config(c));
            ASSERT_EQ(validate(g), "");
            EXPECT_TRUE(g.g_idx.empty());
            EXPECT_EQ(g.symmetric, r.symmetric);
            expect_same_tensor(g.codes, r.codes, "codes");
            expect_same_tensor(g.scales, r.scales, "scales");
            expect_same_tensor(g.zeros, r.zeros, "zeros");
            EXPECT_EQ(rep.fallbacks, 0);
            EXPECT_EQ(rep.damp, c.damp_percent);
            // Not vacuous: a real quantization error (cf. test_quantizers' RTN bounds).
            EXPECT_GT(rep.weight_rel_error, 0.02);
            EXPECT_LT(rep.weight_rel_error, 0.2);
          }
        }
      }
    }
  }
}

TEST(Gptq, MseClipWithIdentityHessianNeverWorseThanMinMax) {
  // With H = I, GPTQ is RTN with the searched parameters; p = 1 is among the candidates, so
  // every (row, group) has sum |e|^2.4 <= min/max's, and the search must improve some groups.
  const unsigned seed = 21;
  const Tensor w = random_weight(8, 256, seed);
  const Tensor h = diagonal_hessian(256, 0);
  for (Int4Range range : {Int4Range::kSymmetric, Int4Range::kAsymWithZero}) {
    SCOPED_TRACE(::testing::Message() << "seed " << seed << " range " << int(range));
    GptqConfig c;
    c.range = range;
    c.mse_clip = true;
    const QuantizedLinear g = quantize_gptq(w.view(), h.view(), c, nullptr);
    ASSERT_EQ(validate(g), "");
    if (range == Int4Range::kSymmetric) {
      for (int64_t i = 0; i < g.zeros.numel(); ++i) ASSERT_EQ(g.zeros.data<uint8_t>()[i], 8);
    }
    const QuantizedLinear r = quantize_rtn_int4(w.view(), rtn_config(c));
    const Tensor dg = dequantize(g), dr = dequantize(r);
    int improved = 0;
    for (int64_t n = 0; n < 8; ++n)
      for (int64_t grp = 0; grp < 2; ++grp) {
        double eg = 0, er = 0;
        for (int64_t k = grp * 128; k < (grp + 1) * 128; ++k) {
          const float x = w.data<float>()[n * 256 + k];
          eg += std::pow(std::fabs(double(dg.data<float>()[n * 256 + k] - x)), 2.4);
          er += std::pow(std::fabs(double(dr.data<float>()[n * 256 + k] - x)), 2.4);
        }
        EXPECT_LE(eg, er) << "row " << n << " group " << grp;
        improved += eg < er;
      }
    EXPECT_GT(improved, 0);
  }
}

TEST(Gptq, BeatsRtnOnCorrelatedHessian) {
  const unsigned wseed = 3, hseed = 4;
  const int64_t out = 64, in = 256;
  const std::vector<int64_t> dead = {5, 130, 200};
  const Tensor w = random_weight(out, in, wseed);
  const Tensor h = correlated_hessian(in, hseed, dead);
  for (Int4Range range : {Int4Range::kSymmetric, Int4Range::kAsymWithZero}) {
    for (bool act_order : {false, true}) {
      for (bool mse : {false, true}) {
        SCOPED_TRACE(::testing::Message() << "weight seed " << wseed << " hessian seed " << hseed << " range "
                                        << int(range) << " act_order " << act_order << " mse " << mse);
        GptqConfig c;
        c.range = range;
        c.act_order = act_order;
        c.mse_clip = mse;
        QuantReport rep;
        const QuantizedLinear g = quantize_gptq(w.view(), h.view(), c, &rep);
        ASSERT_EQ(validate(g), "");
        const QuantizedLinear r = quantize_rtn_int4(w.view(), rtn_config(c));
        const Tensor dg = dequantize(g), dr = dequantize(r);
        const double den = trace_ehe(w, zeros_like_weight(w), h);
        const double eg = trace_ehe(w, dg, h), er = trace_ehe(w, dr, h);
        ASSERT_TRUE(std::isfinite(eg) && std::isfinite(er) && den > 0);
        EXPECT_GT(eg, 0);
        EXPECT_LT(eg, er);
        EXPECT_NEAR(rep.output_rel_error, eg / den, kTraceRelTol * eg / den);
        EXPECT_EQ(rep.fallbacks, 0);
        EXPECT_GT(rep.weight_rel_error, 0.02);
        for (int64_t n = 0; n < out; ++n)
          for (int64_t k : dead) ASSERT_EQ(dg.data<float>()[n * in + k], 0.0f) << n << "," << k;
        std::printf("  range %d act_order %d mse %d: output rel error GPTQ %.5f RTN %.5f (ratio %.3f)\n",
                    int(range), act_order, mse, eg / den, er / den, eg / er);
      }
    }
  }
}

TEST(Gptq, MatchesUnbatchedReferenceForEveryBlockLayout) {
  // The lazy blocks (and the cut of blocks at group starts) only change float rounding, so
  // codes agree with the float64 column-by-column algorithm except where a value sits within
  // rounding of a decision boundary (and the row's later columns then diverge a little).
  const unsigned wseed = 8, hseed = 9;
  const int64_t out = 24, in = 384;
  const Tensor w = random_weight(out, in, wseed);
  const Tensor h = correlated_hessian(in, hseed, {0, 200});
  struct Layout {
    int64_t group, block;
  };
  for (Layout l : {Layout{128, 128}, Layout{128, 96}, Layout{32, 96}, Layout{128, 32}, Layout{32, 128}}) {
    for (bool act_order : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "seeds " << wseed << "/" << hseed << " group " << l.group << " block "
                                      << l.block << " act_order " << act_order);
      GptqConfig c;
      c.group_size = l.group;
      c.block_size = l.block;
      c.act_order = act_order;
      c.range = Int4Range::kAsymWithZero;
      QuantReport rep;
      const QuantizedLinear g = quantize_gptq(w.view(), h.view(), c, &rep);
      ASSERT_EQ(validate(g), "");
      const std::vector<uint8_t> ref = gptq_ref(w, h, c);
      int64_t same = 0;
      for (int64_t i = 0; i < out * in; ++i) same += g.codes.data<uint8_t>()[i] == ref[i];
      EXPECT_GE(static_cast<double>(same) / (out * in), 0.99) << same << " of " << out * in;
    }
  }
}

TEST(Gptq, ActOrderWithDiagonalHessianIsRtnOfPermutedWeights) {
  // No error propagation with a diagonal H, so act-order only regroups the columns: the result
  // must be RTN of the column-permuted weight, dequantized back through g_idx.
  const unsigned wseed = 12, hseed = 13;
  const int64_t out = 5, in = 256;
  const Tensor w = random_weight(out, in, wseed);
  const Tensor h = diagonal_hessian(in, hseed);
  const std::vector<int64_t> perm = act_order_perm(h);
  for (Int4Range range : {Int4Range::kSymmetric, Int4Range::kAsymWithZero}) {
    for (int64_t gs : {128, 32}) {
      SCOPED_TRACE(::testing::Message() << "seeds " << wseed << "/" << hseed << " range " << int(range) << " group "
                                      << gs);
      GptqConfig c;
      c.range = range;
      c.group_size = gs;
      c.act_order = true;
      const QuantizedLinear g = quantize_gptq(w.view(), h.view(), c, nullptr);
      ASSERT_EQ(validate(g), "");
      ASSERT_FALSE(g.g_idx.empty());
      for (int64_t i = 0; i < in; ++i) ASSERT_EQ(g.g_idx.data<int32_t>()[perm[i]], i / gs) << i;
      Tensor wp(DType::kF32, {out, in});
      for (int64_t n = 0; n < out; ++n)
        for (int64_t i = 0; i < in; ++i) wp.data<float>()[n * in + i] = w.data<float>()[n * in + perm[i]];
      const QuantizedLinear r = quantize_rtn_int4(wp.view(), rtn_config(c));
      expect_same_tensor(g.scales, r.scales, "scales");
      expect_same_tensor(g.zeros, r.zeros, "zeros");
      const Tensor dg = dequantize(g), dr = dequantize(r);
      for (int64_t n = 0; n < out; ++n)
        for (int64_t i = 0; i < in; ++i) {
          ASSERT_EQ(g.codes.data<uint8_t>()[n * in + perm[i]], r.codes.data<uint8_t>()[n * in + i]);
          ASSERT_EQ(dg.data<float>()[n * in + perm[i]], dr.data<float>()[n * in + i]);
        }
    }
  }
}

TEST(Gptq, ActOrderGidxIsAValidGroupAssignment) {
  const unsigned wseed = 14, hseed = 15;
  const int64_t out = 9, in = 384;
  const std::vector<int64_t> dead = {2, 3, 300};
  const Tensor w = random_weight(out, in, wseed);
  const Tensor h = correlated_hessian(in, hseed, dead);
  for (int64_t gs : {128, 32}) {
    SCOPED_TRACE(::testing::Message() << "seeds " << wseed << "/" << hseed << " group " << gs);
    GptqConfig c;
    c.group_size = gs;
    c.act_order = true;
    c.block_size = 96;
    const QuantizedLinear g = quantize_gptq(w.view(), h.view(), c, nullptr);
    ASSERT_EQ(validate(g), "");
    ASSERT_EQ(g.g_idx.shape(), Shape{in});
    std::vector<int> count(in / gs, 0);
    const int32_t* g_idx = g.g_idx.data<int32_t>();
    for (int64_t k = 0; k < in; ++k) ++count[g_idx[k]];
    for (int cnt : count) EXPECT_EQ(cnt, gs);
    // Groups follow diag(H) descending (dead columns count as diag 1).
    const float* hh = h.data<float>();
    auto d = [&](int64_t k) { return hh[k * in + k] == 0 ? 1.0f : hh[k * in + k]; };
    for (int64_t a = 0; a < in; ++a)
      for (int64_t b = 0; b < in; ++b)
        if (d(a) > d(b)) {
          ASSERT_LE(g_idx[a], g_idx[b]) << a << " vs " << b;
        }
    const Tensor dg = dequantize(g);
    for (int64_t n = 0; n < out; ++n)
      for (int64_t k : dead) ASSERT_EQ(dg.data<float>()[n * in + k], 0.0f) << n << "," << k;
    // Without g_idx the same codes would be read with the wrong groups: the mapping matters.
    QuantizedLinear plain = quantize_gptq(w.view(), h.view(), c, nullptr);
    plain.g_idx = Tensor();
    const Tensor dp = dequantize(plain);
    EXPECT_NE(std::memcmp(dp.raw(), dg.raw(), dg.nbytes()), 0);
  }
}

TEST(Gptq, IndefiniteHessianFallsBackToMoreDamping) {
  // Rank-deficient X^T X (N < in) shifted by -0.025 * mean(diag): the smallest eigenvalue is
  // -0.025 * mean, the mean becomes 0.975 * mean, so damping d works iff d * 0.975 > 0.025:
  // 0, 0.01, 0.02 fail and 0.03 succeeds -> 3 fallbacks.
  const unsigned wseed = 16, hseed = 17;
  const int64_t in = 128;
  const Tensor w = random_weight(6, in, wseed);
  const Tensor h = correlated_hessian(in, hseed, {}, /*tokens=*/64, /*shift=*/0.025);
  GptqConfig c;
  c.damp_percent = 0.0;
  QuantReport rep;
  const QuantizedLinear g = quantize_gptq(w.view(), h.view(), c, &rep);
  ASSERT_EQ(validate(g), "") << "seeds " << wseed << "/" << hseed;
  EXPECT_EQ(rep.fallbacks, 3) << "seeds " << wseed << "/" << hseed;
  EXPECT_NEAR(rep.damp, 0.03, 1e-12);
  // Rank-deficient PSD (float-rounded, so its null space is +-rounding noise) and no
  // damping: singular to working precision, one retry at 0.01 suffices.
  const Tensor h_singular = correlated_hessian(in, hseed, {}, /*tokens=*/64);
  quantize_gptq(w.view(), h_singular.view(), c, &rep);
  EXPECT_EQ(rep.fallbacks, 1) << "seeds " << wseed << "/" << hseed;
  EXPECT_NEAR(rep.damp, 0.01, 1e-12);
  // The same matrix with enough initial damping needs no fallback.
  c.damp_percent = 0.05;
  quantize_gptq(w.view(), h.view(), c, &rep);
  EXPECT_EQ(rep.fallbacks, 0);
  EXPECT_EQ(rep.damp, 0.05);
}

TEST(Gptq, AwkwardShapes) {
  struct Layout {
    int64_t group, block;
  };
  unsigned seed = 100;
  for (int64_t out : {1, 3, 17}) {
    for (int64_t in : {128, 256, 384}) {
      const Tensor h = correlated_hessian(in, seed, {1});
      for (Layout l : {Layout{128, 128}, Layout{128, 96}, Layout{32, 96}, Layout{128, 200}}) {
        for (bool act_order : {false, true}) {
          ++seed;
          SCOPED_TRACE(::testing::Message() << "seed " << seed << " out " << out << " in " << in << " group "
                                          << l.group << " block " << l.block << " act_order " << act_order);
          const Tensor w = random_weight(out, in, seed);
          GptqConfig c;
          c.group_size = l.group;
          c.block_size = l.block;
          c.act_order = act_order;
          c.range = seed % 2 ? Int4Range::kSymmetric : Int4Range::kAsymWithZero;
          QuantReport rep;
          const QuantizedLinear g = quantize_gptq(w.view(), h.view(), c, &rep);
          ASSERT_EQ(validate(g), "");
          ASSERT_EQ(g.codes.shape(), (Shape{out, in}));
          ASSERT_EQ(g.scales.shape(), (Shape{out, in / l.group}));
          const Tensor dg = dequantize(g);
          for (int64_t n = 0; n < out; ++n) ASSERT_EQ(dg.data<float>()[n * in + 1], 0.0f);
          const double den = trace_ehe(w, zeros_like_weight(w), h);
          const double eg = trace_ehe(w, dg, h);
          ASSERT_GT(eg, 0);
          EXPECT_NEAR(rep.output_rel_error, eg / den, kTraceRelTol * eg / den);
          const QuantizedLinear r = quantize_rtn_int4(w.view(), rtn_config(c));
          EXPECT_LT(eg, trace_ehe(w, dequantize(r), h));
          // Identity Hessian: RTN exactly, for this shape and layout too.
          if (!act_order) {
            const Tensor eye = diagonal_hessian(in, 0);
            const QuantizedLinear gi = quantize_gptq(w.view(), eye.view(), c, nullptr);
            expect_same_tensor(gi.codes, r.codes, "codes");
            expect_same_tensor(gi.scales, r.scales, "scales");
          }
        }
      }
    }
  }
}

TEST(Gptq, F64HessianGivesTheSameBits) {
  const Tensor w = random_weight(10, 256, 31);
  const Tensor h = correlated_hessian(256, 32, {7});
  Tensor h64(DType::kF64, {256, 256});
  for (int64_t i = 0; i < h.numel(); ++i) h64.data<double>()[i] = h.data<float>()[i];
  GptqConfig c;
  c.act_order = true;
  QuantReport r32, r64;
  const QuantizedLinear a = quantize_gptq(w.view(), h.view(), c, &r32);
  const QuantizedLinear b = quantize_gptq(w.view(), h64.view(), c, &r64);
  expect_same_tensor(a.codes, b.codes, "codes (seeds 31/32)");
  expect_same_tensor(a.scales, b.scales, "scales (seeds 31/32)");
  expect_same_tensor(a.g_idx, b.g_idx, "g_idx (seeds 31/32)");
  EXPECT_NEAR(r32.output_rel_error, r64.output_rel_error, kTraceRelTol * r64.output_rel_error);
}

TEST(Gptq, DeterministicAcrossRunsAndThreadCounts) {
  // 300 rows = 3 row chunks, so the threaded path really runs.
  const Tensor w = random_weight(300, 256, 41);
  const Tensor h = correlated_hessian(256, 42, {9});
  GptqConfig c;
  c.act_order = true;
  c.mse_clip = true;
  c.block_size = 96;
  const int threads = omp_get_max_threads();
  const QuantizedLinear a = quantize_gptq(w.view(), h.view(), c, nullptr);
  const QuantizedLinear b = quantize_gptq(w.view(), h.view(), c, nullptr);
  omp_set_num_threads(1);
  const QuantizedLinear s = quantize_gptq(w.view(), h.view(), c, nullptr);
  omp_set_num_threads(threads);
  for (const QuantizedLinear* o : {&b, &s}) {
    expect_same_tensor(a.codes, o->codes, "codes (seeds 41/42)");
    expect_same_tensor(a.scales, o->scales, "scales (seeds 41/42)");
    expect_same_tensor(a.zeros, o->zeros, "zeros (seeds 41/42)");
  }
}

TEST(GptqDeathTest, NonFiniteInputsAreACallerBug) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const Tensor w = random_weight(2, 128, 51);
  const Tensor h = diagonal_hessian(128, 0);
  Tensor bad_w = random_weight(2, 128, 51);
  bad_w.data<float>()[37] = std::numeric_limits<float>::quiet_NaN();
  Tensor bad_h = diagonal_hessian(128, 0);
  bad_h.data<float>()[5 * 128 + 9] = std::numeric_limits<float>::infinity();
  EXPECT_DEATH(quantize_gptq(bad_w.view(), h.view(), GptqConfig{}, nullptr), "weight has NaN/Inf");
  EXPECT_DEATH(quantize_gptq(w.view(), bad_h.view(), GptqConfig{}, nullptr), "Hessian has NaN/Inf");
}

}  // namespace
}  // namespace llmq
