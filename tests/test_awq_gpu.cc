// AWQ's GPU kernels (quantizers/gpu/awq_gpu.h) against their CPU references (quantizers/awq.h):
// awq_fake_quant_scaled bit for bit through bf16, in fused and interleaved destinations;
// awq_search_clip against awq_search_clip_rows (the same choice for >= 99% of (row, group),
// and otherwise a choice whose float64 error is within the derived rounding bound of the CPU
// choice's); sum_squared_diff against a float64 host sum. The clip search and the sum give
// the same bits when run twice. Plus the CPU split of the clip search into sub-sampling and
// search (no GPU needed). Every random input prints its seed on failure; the GPU cases skip
// without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "quantizers/awq.h"
#include "quantizers/gpu/awq_gpu.h"
#include "runner/device_buffer.h"
#include "runner_test_util.h"

namespace llmq {
namespace {

constexpr double kU32 = 0x1p-24;  // unit roundoff of float32
constexpr double kU64 = 0x1p-53;  // unit roundoff of float64

double gamma_n(double n, double u) { return n * u / (1 - n * u); }  // Higham's gamma_n

// W [out, in]: normal(0, 0.02), every 97th element times `outlier` (so clips pay off), a zero
// group (row 1, group 0) and a constant group (row 2, group 0) where the rows exist.
Tensor test_weight(int64_t out, int64_t in, int64_t gs, unsigned seed, float outlier = 10.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 0.02f);
  Tensor w(DType::kF32, {out, in});
  float* p = w.data<float>();
  for (int64_t i = 0; i < w.numel(); ++i) p[i] = nd(rng) * (i % 97 == 5 ? outlier : 1.0f);
  if (out > 1) std::fill_n(p + 1 * in, gs, 0.0f);
  if (out > 2) std::fill_n(p + 2 * in, gs, 0.0125f);
  return w;
}

// Inputs [T, in] with log-normal channel scales (AWQ's salient channels).
Tensor test_inputs(int64_t T, int64_t in, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> scale(in);
  for (float& s : scale) s = std::exp(0.8f * nd(rng));
  Tensor x(DType::kF32, {T, in});
  for (int64_t t = 0; t < T; ++t)
    for (int64_t k = 0; k < in; ++k) x.data<float>()[t * in + k] = scale[k] * nd(rng);
  return x;
}

DeviceBuffer upload(const Tensor& t) {
  return DeviceBuffer::from_host(t.data<float>(), static_cast<size_t>(t.numel()));
}

// ---- awq_fake_quant_scaled ---------------------------------------------------------------------

// s [in]: log-normal (sigma 0.5) with 1e-5 and 1e-3 in the first group and, where there is
// more than one group, 1e3 and 1e5 in the last.
std::vector<float> test_scales(int64_t in, int64_t gs, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> s(in);
  for (float& v : s) v = std::exp(0.5f * nd(rng));
  s[0] = 1e-5f;
  s[1] = 1e-3f;
  s[gs / 2] = 1.0f;
  if (in > gs) {  // the last group only: a group holding 1e5 quantizes its other channels to zero
    s[in - 2] = 1e3f;
    s[in - 1] = 1e5f;
  }
  return s;
}

TEST(AwqGpu, FakeQuantScaledIsBitExactInFusedAndInterleavedRows) {
  LLMQ_REQUIRE_GPU();
  struct Variant {
    int64_t gs;
    DType scale_dtype;
    bool unit_s;  // s = nullptr (the CPU with s = 1)
  };
  const Variant variants[] = {{128, DType::kF16, false}, {128, DType::kF16, true}, {64, DType::kBF16, false},
                              {32, DType::kF16, false}};
  for (const Variant& v : variants)
    for (int64_t out : {1, 3, 17, 118})
      for (int64_t in : {128, 384, 640}) {
        const unsigned seed = static_cast<unsigned>(100 + out * 7 + in + v.gs);
        SCOPED_TRACE(::testing::Message() << "seed " << seed << " [" << out << ", " << in << "] group " << v.gs
                                          << " scales " << dtype_name(v.scale_dtype) << (v.unit_s ? " s = 1" : ""));
        AwqConfig c;
        c.group_size = v.gs;
        c.scale_dtype = v.scale_dtype;
        const Tensor w = test_weight(out, in, v.gs, seed, 1.0f);
        const std::vector<float> s = v.unit_s ? std::vector<float>(in, 1.0f) : test_scales(in, v.gs, seed + 1);
        const Tensor ref = awq_fake_quant_scaled(w, s, c);
        std::vector<uint16_t> ref_bf16(static_cast<size_t>(ref.numel()));  // [out, in]
        int64_t nonzero = 0;
        for (int64_t i = 0; i < ref.numel(); ++i) {
          const float r = ref.data<float>()[i];
          ASSERT_TRUE(std::isfinite(r)) << "CPU reference not finite at " << i;
          nonzero += r != 0;
          ref_bf16[i] = f32_to_bf16(r);
        }
        ASSERT_GT(nonzero, ref.numel() / 4);  // not vacuous (4 bits round many small values to 0)

        const DeviceBuffer wd = upload(w), sd = DeviceBuffer::from_host(s);
        // Step 1 into [out, in]; step 2 from row 1 into [2 out, in] (up rows of a gate|up weight).
        for (int64_t step : {1, 2}) {
          const int64_t row0 = step - 1, rows = out * step;
          DeviceBuffer dst(static_cast<size_t>(rows * in) * sizeof(uint16_t));  // [rows, in]
          LLMQ_CUDA_CHECK(cudaMemset(dst.as(), 0xAB, dst.bytes()));                // sentinel 0xABAB
          gpu::awq_fake_quant_scaled(wd.as<float>(), out, in, v.unit_s ? nullptr : sd.as<float>(), c,
                                     dst.as<uint16_t>(), row0, step, nullptr);
          const std::vector<uint16_t> got = dst.to_host<uint16_t>();
          int64_t bad = 0;
          for (int64_t r = 0; r < rows; ++r)
            for (int64_t k = 0; k < in; ++k) {
              const bool ours = (r - row0) % step == 0 && r >= row0;
              const uint16_t want = ours ? ref_bf16[((r - row0) / step) * in + k] : uint16_t{0xABAB};
              if (got[r * in + k] != want && bad++ < 5)
                ADD_FAILURE() << "step " << step << " dst row " << r << " col " << k << ": gpu 0x" << std::hex
                              << got[r * in + k] << " want 0x" << want << std::dec;
            }
          EXPECT_EQ(bad, 0) << "step " << step;
        }
      }
}

// ---- clip search -------------------------------------------------------------------------------

// The float64 output error of clip value mv for (row n, group g), as awq.cc defines it
// (Q(clamp(W)) - W in float32, exactly as both searches form it), and a bound on how far a
// float32 evaluation in any summation order may be from it: each token's dot product of gs
// terms is off by at most gamma_gs Σ|x d| (Higham 3.1), its square by (2|e| + δ) δ, and the
// sum of T squares, the squaring and the division by T add gamma_(T+2) of the total (zero
// padding rows add exact zeros). The float64 evaluation's own error is folded in.
struct ClipError {
  double err = 0;
  double bound = 0;
};

ClipError clip_error(const Tensor& w, const Tensor& xs, int64_t n, int64_t g, float mv, const AwqConfig& c) {
  const int64_t gs = c.group_size, in = w.dim(1), T = xs.dim(0);
  const float* wr = w.data<float>() + n * in + g * gs;
  Tensor row(DType::kF32, {1, gs});
  for (int64_t k = 0; k < gs; ++k) row.data<float>()[k] = std::clamp(wr[k], -mv, mv);
  const Tensor fq = awq_fake_quant(row, c);
  std::vector<float> d(gs);  // [gs]
  for (int64_t k = 0; k < gs; ++k) d[k] = fq.data<float>()[k] - wr[k];
  const double g_dot = gamma_n(static_cast<double>(gs), kU32) + gamma_n(static_cast<double>(gs), kU64);
  const double g_sum = gamma_n(static_cast<double>(T + 2), kU32) + gamma_n(static_cast<double>(T + 2), kU64);
  double sum = 0, dev = 0, upper = 0;
  for (int64_t t = 0; t < T; ++t) {
    const float* x = xs.data<float>() + t * in + g * gs;
    double e = 0, a = 0;
    for (int64_t k = 0; k < gs; ++k) {
      e += static_cast<double>(x[k]) * d[k];
      a += std::fabs(static_cast<double>(x[k]) * d[k]);
    }
    const double delta = g_dot * a;
    sum += e * e;
    dev += (2 * std::fabs(e) + delta) * delta;
    upper += (std::fabs(e) + delta) * (std::fabs(e) + delta);
  }
  return {sum / T, (dev + g_sum * upper) / T};
}

struct ClipTally {
  int64_t pairs = 0, same = 0, shrunk = 0;
  double worst_rel = 0;  // largest (err(gpu) - err(cpu)) / err(cpu) where they differ
};

// Runs the GPU search on xs [T, in] and compares it with the CPU's best [out, G] (from
// awq_search_clip_rows on the same xs, or awq_search_clip on the rows xs were taken from).
void compare_clip(const Tensor& w, const Tensor& xs, const Tensor& cpu, const AwqConfig& c, ClipTally& tally) {
  const int64_t out = w.dim(0), in = w.dim(1), T = xs.dim(0), G = in / c.group_size;
  const DeviceBuffer wd = upload(w), xd = upload(xs);
  DeviceBuffer bd(static_cast<size_t>(out * G) * sizeof(float));  // [out, G]
  gpu::awq_search_clip(wd.as<float>(), out, in, xd.as<float>(), T, c, bd.as<float>(), nullptr);
  const std::vector<float> gpu = bd.to_host<float>();
  // Deterministic: a second run gives the same bits.
  LLMQ_CUDA_CHECK(cudaMemset(bd.as(), 0, bd.bytes()));
  gpu::awq_search_clip(wd.as<float>(), out, in, xd.as<float>(), T, c, bd.as<float>(), nullptr);
  const std::vector<float> again = bd.to_host<float>();
  EXPECT_EQ(std::memcmp(gpu.data(), again.data(), gpu.size() * sizeof(float)), 0) << "second run differs";

  const float min_shrink = 1.0f - static_cast<float>(static_cast<int>(c.max_shrink * c.clip_grid) - 1) / c.clip_grid;
  for (int64_t n = 0; n < out; ++n)
    for (int64_t g = 0; g < G; ++g) {
      const float gv = gpu[n * G + g], cv = cpu.data<float>()[n * G + g];
      float amax = 0;
      for (int64_t k = 0; k < c.group_size; ++k)
        amax = std::max(amax, std::fabs(w.data<float>()[n * in + g * c.group_size + k]));
      ASSERT_TRUE(std::isfinite(gv)) << "gpu best[" << n << ", " << g << "] = " << gv;
      ASSERT_LE(gv, amax) << n << ", " << g;
      ASSERT_GE(gv, amax * min_shrink) << n << ", " << g;
      ++tally.pairs;
      tally.shrunk += gv < amax;
      if (std::memcmp(&gv, &cv, sizeof(float)) == 0) {
        ++tally.same;
        continue;
      }
      const ClipError eg = clip_error(w, xs, n, g, gv, c), ec = clip_error(w, xs, n, g, cv, c);
      EXPECT_LE(eg.err - ec.err, eg.bound + ec.bound)
          << "[" << n << ", " << g << "] gpu clip " << gv << " err " << eg.err << ", cpu clip " << cv << " err "
          << ec.err;
      if (ec.err > 0) tally.worst_rel = std::max(tally.worst_rel, (eg.err - ec.err) / ec.err);
    }
}

TEST(AwqGpu, ClipSearchMatchesCpuOnAwkwardShapes) {
  LLMQ_REQUIRE_GPU();
  struct Case {
    int64_t out, in, T, gs;
  };
  std::vector<Case> cases;
  for (int64_t out : {1, 17, 118})
    for (int64_t in : {128, 384})
      for (int64_t T : {1, 3, 37, 512}) cases.push_back({out, in, T, 128});
  cases.push_back({17, 512, 37, 64});   // other group sizes: D's shared-memory layout
  cases.push_back({17, 512, 37, 256});
  cases.push_back({130, 256, 200, 32});
  ClipTally tally;
  for (const Case& cs : cases) {
    const unsigned seed = static_cast<unsigned>(7000 + cs.out * 31 + cs.in + cs.T * 3 + cs.gs);
    SCOPED_TRACE(::testing::Message() << "seed " << seed << " w [" << cs.out << ", " << cs.in << "] T " << cs.T
                                      << " group " << cs.gs);
    AwqConfig c;
    c.group_size = cs.gs;
    const Tensor w = test_weight(cs.out, cs.in, cs.gs, seed);
    const Tensor xs = test_inputs(cs.T, cs.in, seed + 1);
    const Tensor cpu = awq_search_clip_rows(w, xs.view(), c);
    compare_clip(w, xs, cpu, c, tally);
    if (::testing::Test::HasFatalFailure()) return;
  }
  std::printf("clip search: %lld of %lld (row, group) choices identical, %lld clipped, worst relative excess %.3g\n",
              static_cast<long long>(tally.same), static_cast<long long>(tally.pairs),
              static_cast<long long>(tally.shrunk), tally.worst_rel);
  EXPECT_GT(tally.shrunk, tally.pairs / 10);  // not vacuous: many groups prefer a clip
  EXPECT_GE(tally.same, tally.pairs * 99 / 100);
}

TEST(AwqGpu, ClipSearchOnSubsampledRowsMatchesTheFullCpuSearch) {
  LLMQ_REQUIRE_GPU();
  const int64_t out = 40, in = 256, n_tokens = 1500;
  const unsigned seed = 7500;
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  AwqConfig c;
  const Tensor w = test_weight(out, in, c.group_size, seed);
  const Tensor x = test_inputs(n_tokens, in, seed + 1);
  const AwqClipRows rows = awq_clip_rows(n_tokens, c.clip_tokens);
  Tensor xs(DType::kF32, {rows.count, in});  // [T, in] the rows the GPU searches on
  for (int64_t t = 0; t < rows.count; ++t)
    std::copy_n(x.data<float>() + t * rows.step * in, in, xs.data<float>() + t * in);
  const Tensor cpu = awq_search_clip(w, x.view(), c);
  ClipTally tally;
  compare_clip(w, xs, cpu, c, tally);
  EXPECT_GE(tally.same, tally.pairs * 99 / 100);
  EXPECT_GT(tally.shrunk, 0);
}

// CPU only: the sub-sampling rule, and the search split into sampling + search is the same
// search bit for bit.
TEST(AwqGpu, CpuClipSubsamplingIsSharedAndUnchanged) {
  struct Rule {
    int64_t n_tokens, clip_tokens, step, count;
  };
  // step = max(1, n / clip) | 1 (odd), count = ceil(n / step).
  for (const Rule& r : {Rule{0, 512, 1, 0}, Rule{1, 512, 1, 1}, Rule{511, 512, 1, 511}, Rule{1024, 512, 3, 342},
                        Rule{1500, 512, 3, 500}, Rule{65536, 512, 129, 509}, Rule{100, 10, 11, 10}}) {
    const AwqClipRows got = awq_clip_rows(r.n_tokens, r.clip_tokens);
    EXPECT_EQ(got.step, r.step) << r.n_tokens << " / " << r.clip_tokens;
    EXPECT_EQ(got.count, r.count) << r.n_tokens << " / " << r.clip_tokens;
  }
  const unsigned seed = 7600;
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  AwqConfig c;
  const Tensor w = test_weight(20, 256, c.group_size, seed);
  const Tensor x = test_inputs(1100, 256, seed + 1);
  const AwqClipRows rows = awq_clip_rows(1100, c.clip_tokens);
  Tensor xs(DType::kF32, {rows.count, 256});  // [T, in]
  for (int64_t t = 0; t < rows.count; ++t)
    std::copy_n(x.data<float>() + t * rows.step * 256, 256, xs.data<float>() + t * 256);
  const Tensor a = awq_search_clip(w, x.view(), c), b = awq_search_clip_rows(w, xs.view(), c);
  ASSERT_EQ(a.shape(), b.shape());
  EXPECT_EQ(std::memcmp(a.raw(), b.raw(), a.nbytes()), 0);
}

// ---- sum_squared_diff --------------------------------------------------------------------------

TEST(AwqGpu, SumSquaredDiffMatchesAFloat64HostSum) {
  LLMQ_REQUIRE_GPU();
  for (int64_t n : {1, 1000, 3000001}) {
    const unsigned seed = static_cast<unsigned>(8000 + n % 1000);
    SCOPED_TRACE(::testing::Message() << "seed " << seed << " n " << n);
    std::mt19937 rng(seed);
    const std::vector<uint16_t> a = testing::random_bf16(static_cast<size_t>(n), rng, 1.0f);
    const std::vector<uint16_t> b = testing::random_bf16(static_cast<size_t>(n), rng, 0.5f);
    double ref = 0;  // the same float32 terms, summed in order
    for (int64_t i = 0; i < n; ++i) {
      const float d = bf16_to_f32(a[i]) - bf16_to_f32(b[i]);
      ref += static_cast<double>(d * d);
    }
    ASSERT_TRUE(std::isfinite(ref));
    ASSERT_GT(ref, 0);
    const double start = 0.25;  // the kernel adds to what is there
    const DeviceBuffer ad = DeviceBuffer::from_host(a), bd = DeviceBuffer::from_host(b);
    DeviceBuffer acc = DeviceBuffer::from_host(&start, 1);  // [1]
    gpu::sum_squared_diff(ad.as<uint16_t>(), bd.as<uint16_t>(), n, acc.as<double>(), nullptr);
    const double got = acc.to_host<double>()[0];
    ASSERT_TRUE(std::isfinite(got));
    // Both are float64 sums of the same non-negative terms (plus start): each within
    // gamma_(n+1) of the exact sum.
    const double tol = 2 * gamma_n(static_cast<double>(n + 1), kU64) * (ref + start);
    EXPECT_NEAR(got - start, ref, tol);
    // a - a adds exactly nothing; n = 0 is a no-op.
    gpu::sum_squared_diff(ad.as<uint16_t>(), ad.as<uint16_t>(), n, acc.as<double>(), nullptr);
    gpu::sum_squared_diff(ad.as<uint16_t>(), bd.as<uint16_t>(), 0, acc.as<double>(), nullptr);
    EXPECT_EQ(acc.to_host<double>()[0], got);
    // Deterministic: the same start gives the same bits.
    LLMQ_CUDA_CHECK(cudaMemcpy(acc.as(), &start, sizeof(double), cudaMemcpyHostToDevice));
    gpu::sum_squared_diff(ad.as<uint16_t>(), bd.as<uint16_t>(), n, acc.as<double>(), nullptr);
    const double again = acc.to_host<double>()[0];
    EXPECT_EQ(std::memcmp(&again, &got, sizeof(double)), 0) << again << " vs " << got;
  }
}

}  // namespace
}  // namespace llmq
