// The tensor-core prefill attention (runner/attention_prefill.h) against the CPU reference
// ref::attention_ref, on awkward shapes: prompt lengths 1, 2, 17, 63, 64, 65, 200, 511 of
// different slots in one call, a continuation chunk starting mid-prompt, head_dim 64 and 128,
// GQA groups 1, 2, 4, 8; the dispatching attention(args, spans) with its per-row fallback for
// short spans and unsupported head_dim; the last row of each prompt as a decode call on the
// split path of kernels.h (flash-decoding). Cache positions past each prompt hold NaN, so a
// kernel that lets an unwritten K/V row into a sum fails. The per-element tolerance is
// derived below from the reference's own quantities. Skips without a GPU; the seed of every
// case is in the failure trace.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "core/numeric.h"
#include "runner/attention_prefill.h"
#include "runner/device_buffer.h"
#include "runner/kernels.h"
#include "runner/kernels_ref.h"
#include "runner_test_util.h"

namespace llmq {
namespace {

using testing::expect_bf16_near;
using testing::random_bf16;

constexpr uint32_t kSeed = 20261123;
constexpr uint16_t kBf16NaN = 0x7FC0;
const std::vector<int> kLengths = {65, 1, 511, 17, 64, 2, 200, 63};  // one slot each, in this row order

// One attention call's inputs on the host: rows of several slots, each a prompt at positions
// 0..L-1 (or a part of one), caches [slots, capacity, n_kv * hd] with NaN past each prompt.
struct Batch {
  int n_q = 0, n_kv = 0, hd = 0, capacity = 0, q_stride = 0;
  std::vector<uint16_t> q;         // [rows, q_stride]
  std::vector<uint16_t> kc, vc;    // [slots, capacity, n_kv * hd]
  std::vector<int32_t> pos, seq;   // [rows]
  int rows() const { return static_cast<int>(pos.size()); }
};

Batch make_batch(int n_q, int n_kv, int hd, const std::vector<int>& lengths, uint32_t seed) {
  std::mt19937 rng(seed);
  Batch b;
  b.n_q = n_q, b.n_kv = n_kv, b.hd = hd, b.capacity = 512, b.q_stride = (n_q + 2 * n_kv) * hd;
  const int slots = static_cast<int>(lengths.size()), kv_dim = n_kv * hd;
  b.kc = random_bf16(static_cast<size_t>(slots) * b.capacity * kv_dim, rng);
  b.vc = random_bf16(b.kc.size(), rng);
  for (int sl = 0; sl < slots; ++sl) {
    for (int j = lengths[sl]; j < b.capacity; ++j)
      for (int d = 0; d < kv_dim; ++d) {
        const size_t i = (static_cast<size_t>(sl) * b.capacity + j) * kv_dim + d;
        b.kc[i] = b.vc[i] = kBf16NaN;  // never written by a prefill of this length
      }
    for (int p = 0; p < lengths[sl]; ++p) b.pos.push_back(p), b.seq.push_back(sl);
  }
  // q scaled by 1.5: scores ~ N(0, 2.25), so the softmax has both flat and peaked rows.
  b.q = random_bf16(static_cast<size_t>(b.rows()) * b.q_stride, rng, 1.5f);
  return b;
}

// The rows [r0, r0 + n) of b as a batch of their own (same caches).
Batch slice_rows(const Batch& b, int r0, int n) {
  Batch s = b;
  s.q.assign(b.q.begin() + static_cast<size_t>(r0) * b.q_stride, b.q.begin() + static_cast<size_t>(r0 + n) * b.q_stride);
  s.pos.assign(b.pos.begin() + r0, b.pos.begin() + r0 + n);
  s.seq.assign(b.seq.begin() + r0, b.seq.begin() + r0 + n);
  return s;
}

// The rows `rows` of b (in that order) as a batch of their own (same caches).
Batch pick_rows(const Batch& b, const std::vector<int>& rows) {
  Batch s = b;
  s.q.clear(), s.pos.clear(), s.seq.clear();
  for (int r : rows) {
    s.q.insert(s.q.end(), b.q.begin() + static_cast<size_t>(r) * b.q_stride,
               b.q.begin() + static_cast<size_t>(r + 1) * b.q_stride);
    s.pos.push_back(b.pos[r]), s.seq.push_back(b.seq[r]);
  }
  return s;
}

struct Expected {
  std::vector<uint16_t> out;  // ref::attention_ref [rows, n_q * hd]
  std::vector<double> tol;    // per element, absolute, on top of 1.5 ulp of the reference
};

// The kernel computes what the reference computes except for f32 summation order: q·k over
// head_dim on tensor cores, P·V and the rowsum l over keys. With u = 2^-24:
//  - scores: |Δs_j| <= Δ = max_j (hd·2u·scale·Σ_d|q_d k_jd| + 2u|s_j|) (tensor-core sums
//    may truncate: 2u per add; then the product with scale);
//  - e_j = exp(s_j - m) (m moves by <= Δ too; expf <= 2 ulp on the device, exp 1 ulp here):
//    relative error ε = e^{2Δ} - 1 + 6u;
//  - p_j = bf16(e_j): the two roundings of e_j and ê_j differ by <= |ê_j - e_j| + 2^-8
//    (e_j + ê_j), so |Δp_j| <= (2^-7 + 1.01ε) e_j <= (2^-7 + 1.01ε) p_j / (1 - 2^-8);
//  - Σ p_j v_jd in f32: kernel <= L·2u, reference <= L·u, times Σ p_j|v_jd|;
//  - l: both f32 sums (L·u each) plus ε;  o·(1/l): two roundings each side (4u|o|).
// With A_d = Σ p_j|v_jd| / l and o_d the reference output before rounding:
//  |Δo_d| <= T_d = f·[((2^-7 + 1.01ε)/(1 - 2^-8) + 3Lu(1 + 2^-7))·A_d + (ε + 2Lu + 4u)|o_d|],
//  f = 1 / (1 - ε - 2Lu). Rounding both to bf16 adds half an ulp of each: <= 1.5 ulp of the
// reference's bf16 value (the kernel's may sit one binade up), and 2^-8 T_d when it sits
// several up (tiny references): the tolerance is 1.5 ulp(ref) + (1 + 2^-7) T_d. The 2^-7 A_d
// term (one bf16 step of each probability) dominates; it is reached only if every p_j
// rounds the other way, so the test also bounds how many outputs differ at all.
Expected reference(const Batch& b) {
  const int rows = b.rows(), n_q = b.n_q, hd = b.hd, group = b.n_q / b.n_kv, kv_dim = b.n_kv * hd;
  Expected e;
  e.out.resize(static_cast<size_t>(rows) * n_q * hd);
  e.tol.resize(e.out.size());
  ref::attention_ref(b.q.data(), b.q_stride, b.kc.data(), b.vc.data(), b.pos.data(), b.seq.data(), e.out.data(), rows,
                     n_q, b.n_kv, hd, b.capacity);
  const double u = std::ldexp(1.0, -24);
  const float scale = static_cast<float>(std::pow(static_cast<double>(hd), -0.5));
  const auto f = [](uint16_t v) { return static_cast<double>(bf16_to_f32(v)); };
  std::vector<float> s;
  std::vector<double> p;
  for (int r = 0; r < rows; ++r) {
    const int L = b.pos[r] + 1;
    const uint16_t* kb = b.kc.data() + static_cast<size_t>(b.seq[r]) * b.capacity * kv_dim;
    const uint16_t* vb = b.vc.data() + static_cast<size_t>(b.seq[r]) * b.capacity * kv_dim;
    s.assign(L, 0.0f);
    p.assign(L, 0.0);
    for (int h = 0; h < n_q; ++h) {
      const uint16_t* qh = b.q.data() + static_cast<size_t>(r) * b.q_stride + h * hd;
      const int kvo = (h / group) * hd;
      double delta = 0.0;
      float m = -INFINITY;
      for (int j = 0; j < L; ++j) {
        double dot = 0.0, mag = 0.0;
        for (int d = 0; d < hd; ++d) {
          const double x = f(qh[d]) * f(kb[static_cast<size_t>(j) * kv_dim + kvo + d]);
          dot += x, mag += std::fabs(x);
        }
        s[j] = static_cast<float>(dot) * scale;
        m = std::max(m, s[j]);
        delta = std::max(delta, hd * 2 * u * scale * mag + 2 * u * std::fabs(s[j]));
      }
      double l = 0.0;
      for (int j = 0; j < L; ++j) {
        const float ej = std::exp(s[j] - m);
        l += ej;
        p[j] = bf16_to_f32(f32_to_bf16(ej));
      }
      const double eps = std::expm1(2 * delta) + 6 * u;
      const double sum_err = L * u;
      const double fac = 1.0 / (1.0 - eps - 2 * sum_err);
      const double c_p = (std::ldexp(1.0, -7) + 1.01 * eps) / (1.0 - std::ldexp(1.0, -8)) + 3 * sum_err * (1 + std::ldexp(1.0, -7));
      const double c_o = eps + 2 * sum_err + 4 * u;
      for (int d = 0; d < hd; ++d) {
        double a = 0.0, o = 0.0;
        for (int j = 0; j < L; ++j) {
          const double v = f(vb[static_cast<size_t>(j) * kv_dim + kvo + d]);
          a += p[j] * std::fabs(v);
          o += p[j] * v;
        }
        const double T = fac * (c_p * a / l + c_o * std::fabs(o / l));
        e.tol[(static_cast<size_t>(r) * n_q + h) * hd + d] = (1.0 + std::ldexp(1.0, -7)) * T;
      }
    }
  }
  return e;
}

enum class Path { kTensorCores, kDispatch };

// Runs the kernel on b; rows not written stay NaN (the output buffer starts as NaN).
// stages: the tensor-core kernel's K/V stages (0: its default).
std::vector<uint16_t> run(const Batch& b, const std::vector<gpu::RowSpan>& spans, Path path, int stages = 0) {
  const auto up = [](const auto& v) { return DeviceBuffer::from_host(v); };
  DeviceBuffer dq = up(b.q), dk = up(b.kc), dv = up(b.vc), dp = up(b.pos), ds = up(b.seq);
  DeviceBuffer dout = up(std::vector<uint16_t>(static_cast<size_t>(b.rows()) * b.n_q * b.hd, kBf16NaN));
  gpu::AttentionArgs args{dq.as<uint16_t>(), b.q_stride, dk.as<uint16_t>(), dv.as<uint16_t>(), dp.as<int32_t>(),
                          ds.as<int32_t>(), dout.as<uint16_t>(), b.rows(), b.n_q, b.n_kv, b.hd, b.capacity};
  args.prefill_stages = stages;
  if (path == Path::kTensorCores) gpu::attention_prefill(args, spans, nullptr);
  else gpu::attention(args, spans, nullptr);
  LLMQ_CUDA_CHECK(cudaDeviceSynchronize());
  return dout.to_host<uint16_t>();
}

// Within the derived bound everywhere, and bit-equal to the reference almost everywhere: a
// probability rounds the other way only when its exp lands within ~1e-7 of a bf16 rounding
// boundary, so a kernel off by a systematic amount (say, probabilities rounded against a
// running maximum) would differ in far more places than 5% while still inside the bound.
void expect_matches(const std::vector<uint16_t>& gpu, const Expected& e, const char* what) {
  expect_bf16_near(gpu, e.out, 1.5, e.tol, what);
  size_t differ = 0;
  for (size_t i = 0; i < gpu.size(); ++i) differ += gpu[i] != e.out[i];
  EXPECT_LE(differ, gpu.size() / 20) << what << ": " << differ << " of " << gpu.size() << " differ from the reference";
}

struct Heads {
  int n_q, n_kv, hd;
};

class PrefillAttention : public ::testing::TestWithParam<Heads> {};

TEST_P(PrefillAttention, MatchesReference) {
  LLMQ_REQUIRE_GPU();
  const Heads k = GetParam();
  SCOPED_TRACE(::testing::Message() << "heads " << k.n_q << "/" << k.n_kv << " hd " << k.hd << " seed " << kSeed);
  ASSERT_TRUE(gpu::attention_prefill_supported(k.n_q, k.n_kv, k.hd));
  const Batch b = make_batch(k.n_q, k.n_kv, k.hd, kLengths, kSeed + k.n_q * 131 + k.hd);
  const Expected e = reference(b);
  const std::vector<gpu::RowSpan> spans = gpu::row_spans(b.pos.data(), b.seq.data(), b.rows());
  ASSERT_EQ(spans.size(), kLengths.size());

  // Every prompt, lengths 1..511, on tensor cores in one call.
  const std::vector<uint16_t> tc = run(b, spans, Path::kTensorCores);
  expect_matches(tc, e, "tensor cores, all prompts in one call");
  // Deterministic: the same bits again, and with any number of K/V stages (only the copies'
  // schedule changes).
  EXPECT_TRUE(run(b, spans, Path::kTensorCores) == tc) << "two runs differ";
  for (int stages : {2, 3, 4}) EXPECT_TRUE(run(b, spans, Path::kTensorCores, stages) == tc) << stages << " stages";
  // Through the dispatcher: lengths 1 and 2 go to the per-row kernel.
  expect_matches(run(b, spans, Path::kDispatch), e, "dispatch");

  // A continuation chunk: positions 300..510 of the 511-token prompt, alone in a call (the
  // first tile starts mid key tile), and then positions 0..299 plus that chunk as two spans.
  int r511 = 0;
  for (size_t i = 0; kLengths[i] != 511; ++i) r511 += kLengths[i];
  const Batch chunk = slice_rows(b, r511 + 300, 211);
  Expected e_chunk;
  e_chunk.out.assign(e.out.begin() + static_cast<size_t>(r511 + 300) * k.n_q * k.hd,
                     e.out.begin() + static_cast<size_t>(r511 + 511) * k.n_q * k.hd);
  e_chunk.tol.assign(e.tol.begin() + static_cast<size_t>(r511 + 300) * k.n_q * k.hd,
                     e.tol.begin() + static_cast<size_t>(r511 + 511) * k.n_q * k.hd);
  expect_matches(run(chunk, {{0, 211}}, Path::kTensorCores), e_chunk, "continuation chunk");
  const Batch whole = slice_rows(b, r511, 511);
  const std::vector<uint16_t> split = run(whole, {{0, 300}, {300, 211}}, Path::kTensorCores);
  const std::vector<uint16_t> one = run(whole, {{0, 511}}, Path::kTensorCores);
  EXPECT_TRUE(std::equal(split.begin() + static_cast<size_t>(300) * k.n_q * k.hd, split.end(),
                         one.begin() + static_cast<size_t>(300) * k.n_q * k.hd))
      << "a row's result depends on how its span was tiled";
}

// Decode: the last row of every prompt (one row per slot, positions 0..510, NaN past each),
// on the split path (a workspace for all rows: flash-decoding over position chunks, two
// kernels) with the default chunk and a forced 128 and 320 (partial last chunks), and
// in groups of 3 rows; within the same derived bound as the tensor cores, and deterministic.
TEST_P(PrefillAttention, DecodeRowsOnSplitPathMatchReference) {
  LLMQ_REQUIRE_GPU();
  const Heads k = GetParam();
  SCOPED_TRACE(::testing::Message() << "heads " << k.n_q << "/" << k.n_kv << " hd " << k.hd << " seed " << kSeed);
  const Batch all = make_batch(k.n_q, k.n_kv, k.hd, kLengths, kSeed + k.n_q * 131 + k.hd);
  std::vector<int> last_rows;
  int r0 = 0;
  for (int len : kLengths) last_rows.push_back(r0 + len - 1), r0 += len;
  const Batch b = pick_rows(all, last_rows);
  const Expected e = reference(b);
  const auto up = [](const auto& v) { return DeviceBuffer::from_host(v); };
  DeviceBuffer dq = up(b.q), dk = up(b.kc), dv = up(b.vc), dp = up(b.pos), ds = up(b.seq);
  DeviceBuffer dout(static_cast<size_t>(b.rows()) * b.n_q * b.hd * 2);
  DeviceBuffer ws(gpu::attention_workspace_floats(b.rows(), b.n_q, b.hd, b.capacity) * sizeof(float));
  LLMQ_CUDA_CHECK(cudaMemset(ws.as<float>(), 0xFF, ws.bytes()));  // nothing may rely on a zeroed workspace
  gpu::AttentionArgs args{dq.as<uint16_t>(), b.q_stride, dk.as<uint16_t>(), dv.as<uint16_t>(), dp.as<int32_t>(),
                          ds.as<int32_t>(), dout.as<uint16_t>(), b.rows(), b.n_q, b.n_kv, b.hd, b.capacity,
                          ws.as<float>(), b.rows()};
  const auto call = [&] {
    LLMQ_CUDA_CHECK(cudaMemset(dout.as<uint16_t>(), 0xFF, dout.bytes()));
    gpu::attention(args, nullptr);
    LLMQ_CUDA_CHECK(cudaDeviceSynchronize());
    return dout.to_host<uint16_t>();
  };
  for (int chunk : {0, 128, 320}) {
    SCOPED_TRACE(::testing::Message() << "split_chunk " << chunk);
    args.split_chunk = chunk;
    const std::vector<uint16_t> out = call();
    expect_matches(out, e, "split decode");
    EXPECT_TRUE(call() == out) << "two calls differ";
  }
  args.split_chunk = 0;
  args.workspace_rows = 3;
  expect_matches(call(), e, "split decode in groups of 3 rows");
}

INSTANTIATE_TEST_SUITE_P(Heads, PrefillAttention,
                         ::testing::Values(Heads{2, 2, 64}, Heads{4, 2, 64}, Heads{8, 2, 64}, Heads{16, 2, 64},
                                           Heads{2, 2, 128}, Heads{4, 2, 128}, Heads{8, 2, 128},
                                           Heads{16, 2, 128}),
                         [](const ::testing::TestParamInfo<Heads>& i) {
                           return "G" + std::to_string(i.param.n_q / i.param.n_kv) + "_hd" +
                                  std::to_string(i.param.hd);
                         });

// Head shapes the tensor cores do not take (the tiny test models: head_dim 8, 16, 32) go to
// the per-row kernel whole.
TEST(PrefillAttentionFallback, UnsupportedHeadDimMatchesReference) {
  LLMQ_REQUIRE_GPU();
  for (const Heads k : {Heads{8, 4, 16}, Heads{4, 2, 32}}) {
    SCOPED_TRACE(::testing::Message() << "heads " << k.n_q << "/" << k.n_kv << " hd " << k.hd << " seed " << kSeed);
    EXPECT_FALSE(gpu::attention_prefill_supported(k.n_q, k.n_kv, k.hd));
    const Batch b = make_batch(k.n_q, k.n_kv, k.hd, {65, 1, 130, 17}, kSeed + k.hd);
    const Expected e = reference(b);
    expect_matches(run(b, gpu::row_spans(b.pos.data(), b.seq.data(), b.rows()), Path::kDispatch), e, "fallback");
  }
}

// A span whose rows are not all of one slot: the rows of the wrong slot come out NaN rather
// than silently attending to another sequence's cache. Rows: slot 0 at positions 10..29,
// then slot 1 at 0..9, claimed as one span.
TEST(PrefillAttentionFallback, SpanAcrossSlotsGivesNaN) {
  LLMQ_REQUIRE_GPU();
  const Batch b = slice_rows(make_batch(4, 2, 64, {30, 30}, kSeed), 10, 30);
  const std::vector<uint16_t> out = run(b, {{0, 30}}, Path::kTensorCores);
  const size_t row = static_cast<size_t>(b.n_q) * b.hd;
  for (int r = 0; r < 30; ++r)
    for (size_t i = 0; i < row; ++i) {
      const bool nan = std::isnan(bf16_to_f32(out[r * row + i]));
      ASSERT_EQ(nan, r >= 20) << "row " << r << " element " << i;
    }
}

TEST(PrefillAttentionFallback, RowSpansSplitAtSlotsAndGaps) {
  const std::vector<int32_t> pos = {0, 1, 2, 7, 3, 4, 0, 9, 10};
  const std::vector<int32_t> seq = {0, 0, 0, 1, 0, 0, 2, 1, 1};
  const std::vector<gpu::RowSpan> spans = gpu::row_spans(pos.data(), seq.data(), static_cast<int>(pos.size()));
  const std::vector<std::pair<int, int>> want = {{0, 3}, {3, 1}, {4, 2}, {6, 1}, {7, 2}};
  ASSERT_EQ(spans.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(spans[i].first_row, want[i].first) << i;
    EXPECT_EQ(spans[i].rows, want[i].second) << i;
  }
  EXPECT_TRUE(gpu::row_spans(pos.data(), seq.data(), 0).empty());
}

}  // namespace
}  // namespace llmq
