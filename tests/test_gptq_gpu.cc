// The GPU GPTQ and Hessian accumulation (quantizers/gpu) against their CPU references:
// HessianAccumulator vs calibration's InputStatsAccumulator, quantize_gptq_gpu vs quantize_gptq
// (codes, scales, zeros, g_idx, damping, output loss), identity Hessian = RTN bit for bit,
// dead columns, damping fallbacks, NaN inputs, device vs host inputs. Every random input
// prints its seed on failure. Skips without a GPU.
#include <gtest/gtest.h>

#include <Eigen/Dense>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "calibration/stats.h"
#include "quantizers/gpu/gptq_gpu.h"
#include "quantizers/gpu/hessian_gpu.h"
#include "quantizers/gptq.h"
#include "quantizers/rtn.h"
#include "runner/device_buffer.h"
#include "gptq_test_util.h"
#include "runner_test_util.h"

namespace llmq {
namespace {

constexpr double kU32 = 0x1p-24;  // unit roundoff of float32

using testing::correlated_hessian;
using testing::correlated_inputs;
using testing::diagonal_hessian;
using testing::random_weight;
using testing::rtn_config;
using testing::trace_ehe;

void expect_same_tensor(const Tensor& a, const Tensor& b, const char* what) {
  ASSERT_EQ(a.shape(), b.shape()) << what;
  ASSERT_EQ(a.dtype(), b.dtype()) << what;
  EXPECT_EQ(std::memcmp(a.raw(), b.raw(), a.nbytes()), 0) << what << " differ";
}

QuantizedLinear gpu_gptq(gpu::GptqGpuContext& ctx, const Tensor& w, const Tensor& h, const GptqConfig& c,
                         QuantReport* rep) {
  auto q = gpu::quantize_gptq_gpu(ctx, w.view(), h.view(), c, rep);
  EXPECT_TRUE(q.has_value()) << q.status().message();
  return q.has_value() ? std::move(q).value() : QuantizedLinear{};
}

// ---- Hessian -----------------------------------------------------------------------------------

TEST(GptqGpu, HessianMatchesCpuCollector) {
  LLMQ_REQUIRE_GPU();
  // K = 300: not a multiple of the CPU's 128-wide blocks nor of cuBLAS tiles. Three adds of
  // different lengths, so the float64 accumulation across calls is exercised.
  const int64_t K = 300;
  const std::vector<int64_t> lengths = {100, 257, 33};
  for (bool bf16 : {false, true}) {
    const unsigned seed = bf16 ? 61 : 60;
    SCOPED_TRACE(::testing::Message() << "seed " << seed << " bf16 " << bf16);
    InputStatsAccumulator cpu(K, /*hessian=*/true);
    gpu::HessianAccumulator acc(K);
    Eigen::MatrixXd abs_gram = Eigen::MatrixXd::Zero(K, K);  // [K, K] Σ |x_i| |x_j| over all tokens
    int64_t t_max = 0;
    for (size_t a = 0; a < lengths.size(); ++a) {
      const int64_t T = lengths[a];
      t_max = std::max(t_max, T);
      const Eigen::MatrixXd x = correlated_inputs(T, K, seed * 10 + static_cast<unsigned>(a), {7});
      Tensor xf(DType::kF32, {T, K});  // [T, K] the values both paths see
      std::vector<uint16_t> xb(static_cast<size_t>(T * K));
      for (int64_t t = 0; t < T; ++t)
        for (int64_t k = 0; k < K; ++k) {
          const uint16_t b = f32_to_bf16(static_cast<float>(x(t, k)));
          xb[t * K + k] = b;
          xf.data<float>()[t * K + k] = bf16 ? bf16_to_f32(b) : static_cast<float>(x(t, k));
        }
      ASSERT_TRUE(cpu.add(xf.view()).is_ok());
      const DeviceBuffer xd = bf16 ? DeviceBuffer::from_host(xb) : DeviceBuffer::from_host(xf.data<float>(), xf.numel());
      ASSERT_TRUE(acc.add(TensorView(bf16 ? DType::kBF16 : DType::kF32, {T, K}, xd.as(), Device::kCuda)).is_ok());
      for (int64_t t = 0; t < T; ++t)
        for (int64_t i = 0; i < K; ++i)
          for (int64_t j = 0; j < K; ++j)
            abs_gram(i, j) += std::fabs(xf.data<float>()[t * K + i]) * std::fabs(xf.data<float>()[t * K + j]);
    }
    EXPECT_EQ(acc.tokens(), cpu.tokens());
    const Tensor hc = cpu.finish().hessian;
    const Tensor hg = acc.download();
    ASSERT_EQ(hg.shape(), (Shape{K, K}));
    // Each path's float32 dot products of length T are within gamma_T = T u / (1 - T u) times
    // Σ|x_i x_j| of the exact sum (Higham 3.1), so the paths differ by at most twice that;
    // then each rounds its float64 sum to float32 once (u |H| each; the float64 sums' own
    // error is below 2^-50 relative). Tensor-core accumulation (bf16 path) may truncate
    // instead of round: u doubled.
    const double u = bf16 ? 2 * kU32 : kU32;
    const double gamma = t_max * u / (1 - t_max * u);
    int64_t bad = 0, nonzero = 0;
    for (int64_t i = 0; i < K; ++i)
      for (int64_t j = 0; j < K; ++j) {
        const double g = hg.data<float>()[i * K + j], c = hc.data<float>()[i * K + j];
        ASSERT_TRUE(std::isfinite(g)) << i << "," << j;
        ASSERT_EQ(g, hg.data<float>()[j * K + i]) << "not symmetric at " << i << "," << j;
        nonzero += g != 0;
        const double tol = 2 * gamma * abs_gram(i, j) + 2 * kU32 * std::fabs(c);
        if (std::fabs(g - c) > tol && bad++ < 5) ADD_FAILURE() << "H[" << i << "," << j << "] gpu " << g << " cpu " << c;
      }
    EXPECT_EQ(bad, 0);
    EXPECT_GT(nonzero, K * K / 2);  // not vacuous (row/column 7 is dead)
    for (int64_t j = 0; j < K; ++j) EXPECT_EQ(hg.data<float>()[7 * K + j], 0.0f);
  }
}

TEST(GptqGpu, HessianRejectsNonFiniteAndKeepsItsState) {
  LLMQ_REQUIRE_GPU();
  const int64_t K = 64, T = 10;
  Tensor x = random_weight(T, K, 62, 1.0f);
  gpu::HessianAccumulator acc(K);
  DeviceBuffer good = DeviceBuffer::from_host(x.data<float>(), x.numel());
  ASSERT_TRUE(acc.add(TensorView(DType::kF32, {T, K}, good.as(), Device::kCuda)).is_ok());
  const Tensor before = acc.download();
  x.data<float>()[3 * K + 5] = std::numeric_limits<float>::quiet_NaN();
  DeviceBuffer bad = DeviceBuffer::from_host(x.data<float>(), x.numel());
  const Status st = acc.add(TensorView(DType::kF32, {T, K}, bad.as(), Device::kCuda));
  ASSERT_FALSE(st.is_ok());
  EXPECT_NE(st.message().find("token 3, channel 5"), std::string::npos) << st.message();
  EXPECT_EQ(acc.tokens(), T);
  expect_same_tensor(acc.download(), before, "H after a rejected add");
}

// ---- GPTQ ------------------------------------------------------------------------------------

// Agreement of one GPU result with the CPU one on the same inputs.
void expect_matches_cpu(const Tensor& w, const Tensor& h, const GptqConfig& c, const QuantizedLinear& g,
                        const QuantReport& rg, const QuantizedLinear& r, const QuantReport& rc, double min_code_agree) {
  ASSERT_EQ(validate(g), "");
  const int64_t out = w.dim(0), in = w.dim(1);
  ASSERT_EQ(g.codes.shape(), r.codes.shape());
  ASSERT_EQ(g.scales.shape(), r.scales.shape());
  EXPECT_EQ(g.symmetric, r.symmetric);
  EXPECT_EQ(g.g_idx.empty(), r.g_idx.empty());
  if (!r.g_idx.empty()) expect_same_tensor(g.g_idx, r.g_idx, "g_idx");  // host-side decision: identical
  EXPECT_EQ(rg.damp, rc.damp);
  EXPECT_EQ(rg.fallbacks, rc.fallbacks);
  // Codes: float32 GEMM summation order differs (cuBLAS vs Eigen), so a value within rounding
  // of a rounding boundary may flip, and the rest of that row then drifts a little.
  int64_t same = 0;
  for (int64_t i = 0; i < out * in; ++i) same += g.codes.data<uint8_t>()[i] == r.codes.data<uint8_t>()[i];
  EXPECT_GE(static_cast<double>(same) / (out * in), min_code_agree) << same << " of " << out * in << " codes equal";
  // Scales: one unit of the storage dtype (relative 2^-10 for f16, 2^-7 for bf16) covers a
  // group max that moved by rounding across a storage rounding boundary; groups after a
  // flipped code may differ more, hence the same fraction as the codes.
  const double scale_rel = c.scale_dtype == DType::kBF16 ? 0x1p-7 : 0x1p-10;
  int64_t close = 0, zeros_same = 0;
  const int64_t ns = g.scales.numel();
  for (int64_t i = 0; i < ns; ++i) {
    const double a = g.scales.data<float>()[i], b = r.scales.data<float>()[i];
    ASSERT_TRUE(std::isfinite(a) && a > 0);
    close += std::fabs(a - b) <= scale_rel * b;
    zeros_same += g.zeros.data<uint8_t>()[i] == r.zeros.data<uint8_t>()[i];
  }
  EXPECT_GE(static_cast<double>(close) / ns, min_code_agree) << close << " of " << ns << " scales close";
  EXPECT_GE(static_cast<double>(zeros_same) / ns, min_code_agree) << zeros_same << " of " << ns << " zeros equal";
  // Output loss tr((W - Q) H (W - Q)^T): within 1% of the CPU's (the criterion; a few
  // flipped ties move it by far less), and not suspiciously different from a real error.
  const Tensor dg = dequantize(g), dr = dequantize(r);
  const double eg = trace_ehe(w, dg, h), ec = trace_ehe(w, dr, h);
  ASSERT_TRUE(std::isfinite(eg) && eg > 0 && ec > 0);
  EXPECT_NEAR(eg, ec, 0.01 * ec);
  // The GPU report against the host trace: both are sums of O(out * in^2) float products of
  // mixed signs, well inside 1e-4 relative on these sizes (test_gptq.cc's kTraceRelTol).
  const double den = trace_ehe(w, Tensor(DType::kF32, w.shape()), h);
  EXPECT_NEAR(rg.output_rel_error, eg / den, 1e-4 * eg / den);
  EXPECT_NEAR(rg.weight_rel_error, rc.weight_rel_error, 0.01 * rc.weight_rel_error);
}

TEST(GptqGpu, MatchesCpuOnCorrelatedHessians) {
  LLMQ_REQUIRE_GPU();
  gpu::GptqGpuContext ctx;
  unsigned seed = 200;
  for (int64_t in : {256, 384}) {
    const unsigned hseed = seed++;
    const Tensor h = correlated_hessian(in, hseed, {5, in - 7});
    for (int64_t out : {64, 130}) {
      const unsigned wseed = seed++;
      const Tensor w = random_weight(out, in, wseed);
      for (Int4Range range : {Int4Range::kSymmetric, Int4Range::kAsymWithZero}) {
        for (bool act_order : {false, true}) {
          for (bool mse : {false, true}) {
            SCOPED_TRACE(::testing::Message() << "weight seed " << wseed << " hessian seed " << hseed << " out " << out
                                            << " in " << in << " range " << int(range) << " act_order " << act_order
                                            << " mse " << mse);
            GptqConfig c;
            c.range = range;
            c.act_order = act_order;
            c.mse_clip = mse;
            QuantReport rg, rc;
            const QuantizedLinear g = gpu_gptq(ctx, w, h, c, &rg);
            const QuantizedLinear r = quantize_gptq(w.view(), h.view(), c, &rc);
            expect_matches_cpu(w, h, c, g, rg, r, rc, 0.99);
            // GPTQ never does worse than RTN on the same layer.
            EXPECT_LT(trace_ehe(w, dequantize(g), h), trace_ehe(w, dequantize(quantize_rtn_int4(w.view(), rtn_config(c))), h));
          }
        }
      }
    }
  }
}

TEST(GptqGpu, BlockAndGroupLayoutsAndAwkwardRows) {
  LLMQ_REQUIRE_GPU();
  // Blocks that straddle groups (params carried across blocks), groups wider than a block
  // (values read from global memory), block 200 (8 columns per lane), 1 and 33 rows (partial
  // CTAs), all against the CPU.
  gpu::GptqGpuContext ctx;
  struct Layout {
    int64_t group, block;
  };
  const int64_t in = 384;
  const Tensor h = correlated_hessian(in, 300, {1});
  unsigned seed = 301;
  for (int64_t out : {1, 33}) {
    for (Layout l : {Layout{128, 128}, Layout{128, 96}, Layout{32, 96}, Layout{128, 200}, Layout{64, 32}}) {
      for (bool act_order : {false, true}) {
        ++seed;
        SCOPED_TRACE(::testing::Message() << "seed " << seed << " (hessian 300) out " << out << " group " << l.group
                                        << " block " << l.block << " act_order " << act_order);
        const Tensor w = random_weight(out, in, seed);
        GptqConfig c;
        c.group_size = l.group;
        c.block_size = l.block;
        c.act_order = act_order;
        c.range = seed % 2 ? Int4Range::kSymmetric : Int4Range::kAsymWithZero;
        c.scale_dtype = seed % 3 ? DType::kF16 : DType::kBF16;
        QuantReport rg, rc;
        const QuantizedLinear g = gpu_gptq(ctx, w, h, c, &rg);
        const QuantizedLinear r = quantize_gptq(w.view(), h.view(), c, &rc);
        // A single row has 384 codes: one flipped tie may drift a row's tail, so 95% here.
        expect_matches_cpu(w, h, c, g, rg, r, rc, out == 1 ? 0.95 : 0.99);
        const Tensor dg = dequantize(g);
        for (int64_t n = 0; n < out; ++n) ASSERT_EQ(dg.data<float>()[n * in + 1], 0.0f) << "dead column, row " << n;
      }
    }
  }
}

TEST(GptqGpu, DiagonalHessianEqualsRtnExactly) {
  LLMQ_REQUIRE_GPU();
  // With a diagonal H, U is diagonal (off-diagonals exactly 0), no error propagates, and the
  // device grid functions are the host ones (int_grid.h, no FMA): RTN bit for bit.
  gpu::GptqGpuContext ctx;
  const Tensor w = random_weight(17, 256, 7);
  for (unsigned hseed : {0u, 5u}) {
    const Tensor h = diagonal_hessian(256, hseed);
    for (Int4Range range : {Int4Range::kSymmetric, Int4Range::kAsymWithZero, Int4Range::kAsymAwq}) {
      for (DType sd : {DType::kF16, DType::kBF16}) {
        for (int64_t gs : {128, 32}) {
          SCOPED_TRACE(::testing::Message() << "weight seed 7, hessian seed " << hseed << " range " << int(range)
                                          << " scale " << dtype_name(sd) << " group " << gs);
          GptqConfig c;
          c.group_size = gs;
          c.range = range;
          c.scale_dtype = sd;
          c.min_zero = range == Int4Range::kSymmetric ? 0 : 1;
          c.block_size = 96;
          QuantReport rep;
          const QuantizedLinear g = gpu_gptq(ctx, w, h, c, &rep);
          const QuantizedLinear r = quantize_rtn_int4(w.view(), rtn_config(c));
          ASSERT_EQ(validate(g), "");
          EXPECT_TRUE(g.g_idx.empty());
          expect_same_tensor(g.codes, r.codes, "codes");
          expect_same_tensor(g.scales, r.scales, "scales");
          expect_same_tensor(g.zeros, r.zeros, "zeros");
          EXPECT_EQ(rep.fallbacks, 0);
          EXPECT_GT(rep.weight_rel_error, 0.02);  // a real quantization error
          EXPECT_LT(rep.weight_rel_error, 0.2);
        }
      }
    }
  }
}

TEST(GptqGpu, DeadColumns) {
  LLMQ_REQUIRE_GPU();
  gpu::GptqGpuContext ctx;
  const int64_t out = 9, in = 384;
  const std::vector<int64_t> dead = {2, 3, 128, 300, 383};
  const unsigned wseed = 70, hseed = 71;
  const Tensor w = random_weight(out, in, wseed);
  const Tensor h = correlated_hessian(in, hseed, dead);
  for (bool act_order : {false, true}) {
    SCOPED_TRACE(::testing::Message() << "seeds " << wseed << "/" << hseed << " act_order " << act_order);
    GptqConfig c;
    c.act_order = act_order;
    QuantReport rg, rc;
    const QuantizedLinear g = gpu_gptq(ctx, w, h, c, &rg);
    const QuantizedLinear r = quantize_gptq(w.view(), h.view(), c, &rc);
    expect_matches_cpu(w, h, c, g, rg, r, rc, 0.99);
    const Tensor dg = dequantize(g);
    for (int64_t n = 0; n < out; ++n)
      for (int64_t k : dead) ASSERT_EQ(dg.data<float>()[n * in + k], 0.0f) << n << "," << k;
  }
  // Every column dead (H = 0): H becomes (1 + damp) I and W is zeroed, so every group is the
  // all-zero group of AutoGPTQ's rule; exactly the CPU's result.
  const Tensor h0(DType::kF32, {in, in});
  GptqConfig c;
  c.range = Int4Range::kAsymWithZero;
  QuantReport rg;
  const QuantizedLinear g = gpu_gptq(ctx, w, h0, c, &rg);
  const QuantizedLinear r = quantize_gptq(w.view(), h0.view(), c, nullptr);
  expect_same_tensor(g.codes, r.codes, "codes (all dead)");
  expect_same_tensor(g.scales, r.scales, "scales (all dead)");
  expect_same_tensor(g.zeros, r.zeros, "zeros (all dead)");
}

TEST(GptqGpu, IndefiniteHessianFallsBackLikeTheCpu) {
  LLMQ_REQUIRE_GPU();
  // test_gptq.cc's case: smallest eigenvalue -0.025 * mean, so damping 0, 0.01, 0.02 fail and
  // 0.03 succeeds: 3 fallbacks, on either device.
  gpu::GptqGpuContext ctx;
  const unsigned wseed = 16, hseed = 17;
  const Tensor w = random_weight(6, 128, wseed);
  const Tensor h = correlated_hessian(128, hseed, {}, /*tokens=*/64, /*shift=*/0.025);
  GptqConfig c;
  c.damp_percent = 0.0;
  QuantReport rep;
  const QuantizedLinear g = gpu_gptq(ctx, w, h, c, &rep);
  ASSERT_EQ(validate(g), "") << "seeds " << wseed << "/" << hseed;
  EXPECT_EQ(rep.fallbacks, 3) << "seeds " << wseed << "/" << hseed;
  EXPECT_NEAR(rep.damp, 0.03, 1e-12);
}

TEST(GptqGpu, NonFiniteInputsAreAnError) {
  LLMQ_REQUIRE_GPU();
  gpu::GptqGpuContext ctx;
  Tensor w = random_weight(2, 128, 51);
  Tensor h = diagonal_hessian(128, 0);
  w.data<float>()[37] = std::numeric_limits<float>::quiet_NaN();
  auto a = gpu::quantize_gptq_gpu(ctx, w.view(), h.view(), GptqConfig{}, nullptr);
  ASSERT_FALSE(a.has_value());
  EXPECT_NE(a.status().message().find("weight has NaN/Inf at [0, 37]"), std::string::npos) << a.status().message();
  w.data<float>()[37] = 0.0f;
  h.data<float>()[5 * 128 + 9] = std::numeric_limits<float>::infinity();
  auto b = gpu::quantize_gptq_gpu(ctx, w.view(), h.view(), GptqConfig{}, nullptr);
  ASSERT_FALSE(b.has_value());
  EXPECT_NE(b.status().message().find("Hessian has NaN/Inf at [5, 9]"), std::string::npos) << b.status().message();
}

TEST(GptqGpu, DeviceInputsAndRepeatsGiveTheSameBits) {
  LLMQ_REQUIRE_GPU();
  gpu::GptqGpuContext ctx;
  const unsigned wseed = 41, hseed = 42;
  const Tensor w = random_weight(300, 256, wseed);
  const Tensor h = correlated_hessian(256, hseed, {9});
  GptqConfig c;
  c.act_order = true;
  c.mse_clip = true;
  c.block_size = 96;
  const QuantizedLinear a = gpu_gptq(ctx, w, h, c, nullptr);
  const DeviceBuffer wd = DeviceBuffer::from_host(w.data<float>(), w.numel());
  const DeviceBuffer hd = DeviceBuffer::from_host(h.data<float>(), h.numel());
  gpu::GptqGpuStats st;
  auto b = gpu::quantize_gptq_gpu(ctx, TensorView(DType::kF32, w.shape(), wd.as(), Device::kCuda),
                                  TensorView(DType::kF32, h.shape(), hd.as(), Device::kCuda), c, nullptr, &st);
  ASSERT_TRUE(b.has_value()) << b.status().message();
  SCOPED_TRACE(::testing::Message() << "seeds " << wseed << "/" << hseed);
  expect_same_tensor(a.codes, b->codes, "codes");
  expect_same_tensor(a.scales, b->scales, "scales");
  expect_same_tensor(a.zeros, b->zeros, "zeros");
  expect_same_tensor(a.g_idx, b->g_idx, "g_idx");
  // Peak: at least the float64 factor (8 in^2) plus U (4 in^2); inputs on the device are the
  // caller's and not counted.
  EXPECT_GE(st.peak_device_bytes, size_t{12} * 256 * 256);
  EXPECT_LT(st.peak_device_bytes, size_t{64} << 20);
}

}  // namespace
}  // namespace llmq
