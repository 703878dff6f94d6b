// Every runner kernel against its CPU reference (runner/kernels_ref.h, runner/w4a16.h) on
// awkward shapes: token rows 1, 2, 3, 17, 64, 118; widths that are not powers of two. Where
// the kernel does the reference's arithmetic in the same order the results must be
// identical; where only the summation order differs, the tolerance is derived next to the
// test. Skips without a GPU. The seed of every random case is in the failure trace.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/numeric.h"
#include "model/llama.h"
#include "runner/cuda_check.h"
#include "runner/device_buffer.h"
#include "runner/gemm.h"
#include "runner/gemv.h"
#include "runner/kernels.h"
#include "runner/kernels_ref.h"
#include "runner/w4a16.h"
#include "runner_test_util.h"

namespace llmq {
namespace {

using testing::bf16_ulp;
using testing::expect_bf16_near;
using testing::random_bf16;

constexpr int kRows[] = {1, 2, 3, 17, 64, 118};
constexpr uint32_t kSeed = 20261122;

template <class T>
DeviceBuffer up(const std::vector<T>& v) { return DeviceBuffer::from_host(v); }


// Widths up to 4 packs per thread (8192 at 8 values a pack, 1024 at 1) keep the row in
// registers; 1100 (n % 8 != 0) and 10000 take the loop that re-reads it.
TEST(RunnerKernels, RmsNormMatchesReference) {
  LLMQ_REQUIRE_GPU();
  for (int n : {64, 172, 1000, 1100, 4096, 10000})
    for (int rows : kRows) {
      SCOPED_TRACE(::testing::Message() << "rows " << rows << " n " << n << " seed " << kSeed);
      std::mt19937 rng(kSeed + rows * 7 + n);
      const auto x = random_bf16(static_cast<size_t>(rows) * n, rng, 3.0f);
      const auto w = random_bf16(n, rng);
      std::vector<uint16_t> ref(x.size());
      ref::rms_norm_ref(x.data(), w.data(), ref.data(), rows, n, 1e-5f);
      DeviceBuffer dx = up(x), dw = up(w), dy(x.size() * 2);
      gpu::rms_norm(dx.as<uint16_t>(), dw.as<uint16_t>(), dy.as<uint16_t>(), rows, n, 1e-5f, nullptr);
      // Same ops; the double sum of squares may differ in its last bit with the order, which
      // can move the f32 variance by one ulp and flip one bf16 rounding: 1 ulp allowed.
      expect_bf16_near(dy.to_host<uint16_t>(), ref, 1.0);
    }
}

TEST(RunnerKernels, AddEmbedArgmaxAreExact) {
  LLMQ_REQUIRE_GPU();
  for (int rows : kRows) {
    SCOPED_TRACE(::testing::Message() << "rows " << rows << " seed " << kSeed);
    std::mt19937 rng(kSeed + rows);
    const int n = 172, vocab = 1003;
    auto x = random_bf16(static_cast<size_t>(rows) * n, rng);
    const auto y = random_bf16(x.size(), rng);
    DeviceBuffer dx = up(x), dy = up(y);
    gpu::add_inplace(dx.as<uint16_t>(), dy.as<uint16_t>(), static_cast<int64_t>(x.size()), nullptr);
    ref::add_inplace_ref(x.data(), y.data(), static_cast<int64_t>(x.size()));
    EXPECT_EQ(dx.to_host<uint16_t>(), x);

    const auto table = random_bf16(static_cast<size_t>(vocab) * n, rng);
    std::vector<int32_t> ids(rows);
    for (auto& id : ids) id = static_cast<int32_t>(rng() % vocab);
    std::vector<uint16_t> emb(static_cast<size_t>(rows) * n);
    ref::embed_ref(table.data(), ids.data(), emb.data(), rows, n);
    DeviceBuffer dt = up(table), di = up(ids), de(emb.size() * 2);
    gpu::embed(dt.as<uint16_t>(), di.as<int32_t>(), de.as<uint16_t>(), rows, n, nullptr);
    EXPECT_EQ(de.to_host<uint16_t>(), emb);

    auto logits = random_bf16(static_cast<size_t>(rows) * vocab, rng);
    logits[vocab / 2] = logits[vocab - 1] = f32_to_bf16(100.0f);  // a tie in row 0: first index wins
    std::vector<int32_t> best(rows);
    ref::argmax_rows_ref(logits.data(), best.data(), rows, vocab);
    DeviceBuffer dl = up(logits), db(rows * 4);
    gpu::argmax_rows(dl.as<uint16_t>(), db.as<int32_t>(), rows, vocab, nullptr, nullptr);
    EXPECT_EQ(db.to_host<int32_t>(), best);
    EXPECT_EQ(best[0], vocab / 2);
  }
}

// The multi-block argmax: chunks meet in the workspace, which every call leaves zeroed (so a
// second call, as in a replayed CUDA graph, is right too). Vocabularies around the chunk size
// and Llama-3's; ties across chunks go to the first index; -0 ties with +0.
TEST(RunnerKernels, ArgmaxAcrossBlocksIsExact) {
  LLMQ_REQUIRE_GPU();
  DeviceBuffer ws(gpu::argmax_workspace_bytes(64));
  LLMQ_CUDA_CHECK(cudaMemset(ws.as(), 0, ws.bytes()));
  for (int vocab : {1, 2047, 2048, 2049, 32000, 128256})
    for (int rows : {1, 3, 64}) {
      SCOPED_TRACE(::testing::Message() << "rows " << rows << " vocab " << vocab << " seed " << kSeed);
      std::mt19937 rng(kSeed + rows + vocab);
      auto logits = random_bf16(static_cast<size_t>(rows) * vocab, rng, 4.0f);
      if (vocab > 2049) {  // row 0: equal maxima in different chunks; row 1 (if any): all -0 and +0
        logits[vocab - 1] = logits[100] = logits[vocab / 2] = f32_to_bf16(50.0f);
        if (rows > 1)
          for (int i = 0; i < vocab; ++i) logits[static_cast<size_t>(vocab) + i] = i % 3 == 0 ? 0x8000u : 0x0000u;
      }
      std::vector<int32_t> best(rows);
      ref::argmax_rows_ref(logits.data(), best.data(), rows, vocab);
      if (vocab > 2049) {
        EXPECT_EQ(best[0], 100);
        if (rows > 1) {
          EXPECT_EQ(best[1], 0);
        }
      }
      DeviceBuffer dl = up(logits), db(rows * 4);
      for (int call = 0; call < 2; ++call) {
        LLMQ_CUDA_CHECK(cudaMemset(db.as(), 0xFF, rows * 4));
        gpu::argmax_rows(dl.as<uint16_t>(), db.as<int32_t>(), rows, vocab, ws.as(), nullptr);
        EXPECT_EQ(db.to_host<int32_t>(), best) << "call " << call;
      }
    }
}

// RMSNorm with the residual add and/or the activation quantization fused: the written-back x
// is the exact bf16 sum; y is the plain norm of it (1 ulp, as above); the codes and scales are
// exactly what quantize_*_per_token makes from this kernel's own bf16 y (same variance, so no
// tolerance: any difference is a bug in the fused quantization).
TEST(RunnerKernels, FusedRmsNormMatchesComposition) {
  LLMQ_REQUIRE_GPU();
  for (int n : {64, 172, 1100, 4096, 10000})
    for (int rows : kRows)
      for (gpu::ActQuant quant : {gpu::ActQuant::kNone, gpu::ActQuant::kFp8, gpu::ActQuant::kInt8})
        for (bool with_delta : {false, true}) {
          SCOPED_TRACE(::testing::Message() << "rows " << rows << " n " << n << " quant " << static_cast<int>(quant)
                                            << " delta " << with_delta << " seed " << kSeed);
          std::mt19937 rng(kSeed + rows * 5 + n);
          auto x = random_bf16(static_cast<size_t>(rows) * n, rng, 3.0f);
          const auto delta = random_bf16(x.size(), rng, 2.0f);
          const auto w = random_bf16(n, rng);
          if (rows > 1) std::fill(x.begin() + n, x.begin() + 2 * n, uint16_t{0});  // an all-zero row (int8: scale 1)
          DeviceBuffer dx = up(x), dd = up(delta), dw = up(w), dy(x.size() * 2), dplain(x.size() * 2);
          const int ld = (n + 15) / 16 * 16;
          DeviceBuffer codes(static_cast<size_t>(rows) * ld), scales(rows * 4);
          LLMQ_CUDA_CHECK(cudaMemset(codes.as(), 0, codes.bytes()));
          gpu::RmsNormArgs a;
          a.x = dx.as<uint16_t>();
          a.delta = with_delta ? dd.as<const uint16_t>() : nullptr;
          a.w = dw.as<const uint16_t>();
          a.rows = rows;
          a.n = n;
          a.eps = 1e-5f;
          a.quant = quant;
          a.y = quant == gpu::ActQuant::kNone ? dy.as<uint16_t>() : nullptr;
          a.codes = codes.as();
          a.ld_codes = ld;
          a.scales = scales.as<float>();
          gpu::rms_norm(a, nullptr);
          if (with_delta) {
            ref::add_inplace_ref(x.data(), delta.data(), static_cast<int64_t>(x.size()));
            EXPECT_EQ(dx.to_host<uint16_t>(), x);
          }
          // The plain norm of the (summed) x on the GPU, and against the reference.
          DeviceBuffer dsum = up(x);
          gpu::rms_norm(dsum.as<uint16_t>(), dw.as<uint16_t>(), dplain.as<uint16_t>(), rows, n, 1e-5f, nullptr);
          const auto plain = dplain.to_host<uint16_t>();
          std::vector<uint16_t> ref(x.size());
          ref::rms_norm_ref(x.data(), w.data(), ref.data(), rows, n, 1e-5f);
          expect_bf16_near(plain, ref, 1.0);
          if (quant == gpu::ActQuant::kNone) {
            EXPECT_EQ(dy.to_host<uint16_t>(), plain);
            continue;
          }
          std::vector<float> want_scales(rows);
          const auto got = codes.to_host<uint8_t>();
          std::vector<uint8_t> want(static_cast<size_t>(rows) * n);
          if (quant == gpu::ActQuant::kFp8)
            ref::quantize_fp8_per_token_ref(plain.data(), want.data(), want_scales.data(), rows, n);
          else
            ref::quantize_int8_per_token_ref(plain.data(), reinterpret_cast<int8_t*>(want.data()), want_scales.data(),
                                             rows, n);
          for (int r = 0; r < rows; ++r) {
            ASSERT_TRUE(std::equal(want.begin() + static_cast<size_t>(r) * n, want.begin() + static_cast<size_t>(r + 1) * n,
                                   got.begin() + static_cast<size_t>(r) * ld))
                << "codes of row " << r;
            for (int c = n; c < ld; ++c) ASSERT_EQ(got[static_cast<size_t>(r) * ld + c], 0) << "pad column " << c;
          }
          EXPECT_EQ(scales.to_host<float>(), want_scales);
        }
}

// RMSNorm on a float32 residual stream (rms_norm_f32), with x values that are not bf16 values
// (so a rounding of the stream shows), with and without the bf16 branch, y aliasing the branch
// as layer_forward passes them; widths with n % 8 != 0 take the scalar path. The written-back
// x is the f32 sum: exact. y: the reference's ops; only the order of the double sum of squares
// differs (each f32 square is exact in double), which can move the f32 variance by one ulp and
// flip the bf16 rounding of x · inv_rms by one ulp (2^-8 to 2^-7 of it); times w and rounded
// again that is at most 2 ulps of y. Two-sided: a flip needs x · inv_rms within ~2^-23 of a
// rounding tie, so nearly all of y (kMinSame) must be bit-identical.
TEST(RunnerKernels, RmsNormF32MatchesReference) {
  LLMQ_REQUIRE_GPU();
  constexpr double kMinSame = 0.99;
  for (int n : {64, 172, 1000, 4096, 4100})
    for (int rows : kRows)
      for (bool with_delta : {false, true}) {
        SCOPED_TRACE(::testing::Message() << "rows " << rows << " n " << n << " delta " << with_delta << " seed "
                                          << kSeed);
        std::mt19937 rng(kSeed + rows * 11 + n);
        std::normal_distribution<float> nd(0.0f, 3.0f);
        std::vector<float> x(static_cast<size_t>(rows) * n);
        for (float& v : x) v = nd(rng);
        if (rows > 1) std::fill(x.begin() + n, x.begin() + 2 * n, 0.0f);  // an all-zero row (y = 0 without the branch)
        const auto delta = random_bf16(x.size(), rng, 2.0f);
        const auto w = random_bf16(n, rng);
        DeviceBuffer dx = up(x), dd = up(delta), dw = up(w), dy(x.size() * 2);
        gpu::RmsNormF32Args a;
        a.x = dx.as<float>();
        a.delta = with_delta ? dd.as<const uint16_t>() : nullptr;
        a.w = dw.as<const uint16_t>();
        a.rows = rows;
        a.n = n;
        a.eps = 1e-5f;
        a.y = with_delta ? dd.as<uint16_t>() : dy.as<uint16_t>();
        gpu::rms_norm_f32(a, nullptr);
        std::vector<float> want_x = x;
        std::vector<uint16_t> want_y(x.size());
        ref::rms_norm_f32_ref(want_x.data(), with_delta ? delta.data() : nullptr, w.data(), want_y.data(), rows, n,
                              1e-5f);
        const auto got_x = dx.to_host<float>();
        EXPECT_TRUE(got_x == want_x) << "the written-back stream is not the exact f32 sum";
        size_t not_bf16 = 0;
        for (float v : got_x) not_bf16 += bf16_to_f32(f32_to_bf16(v)) != v;
        EXPECT_GT(not_bf16, got_x.size() / 4) << "the stream was rounded to bf16";  // all but the zero row
        const auto got_y = with_delta ? dd.to_host<uint16_t>() : dy.to_host<uint16_t>();
        expect_bf16_near(got_y, want_y, 2.0);
        size_t same = 0;
        for (size_t i = 0; i < got_y.size(); ++i) same += got_y[i] == want_y[i];
        EXPECT_GE(same, kMinSame * got_y.size());
      }
}

// The last residual add of an f32 stream: one f32 add, exact.
TEST(RunnerKernels, AddBf16ToF32IsExact) {
  LLMQ_REQUIRE_GPU();
  for (int64_t n : {int64_t{1}, int64_t{255}, int64_t{70001}}) {
    SCOPED_TRACE(::testing::Message() << "n " << n << " seed " << kSeed);
    std::mt19937 rng(kSeed + static_cast<uint32_t>(n));
    std::normal_distribution<float> nd(0.0f, 3.0f);
    std::vector<float> x(static_cast<size_t>(n));
    for (float& v : x) v = nd(rng);
    const auto y = random_bf16(x.size(), rng, 2.0f);
    DeviceBuffer dx = up(x), dy = up(y);
    gpu::add_bf16_to_f32(dx.as<float>(), dy.as<const uint16_t>(), n, nullptr);
    ref::add_bf16_to_f32_ref(x.data(), y.data(), n);
    EXPECT_TRUE(dx.to_host<float>() == x);
  }
}

TEST(RunnerKernels, SiluMulMatchesReference) {
  LLMQ_REQUIRE_GPU();
  for (int inter : {172, 1000})
    for (int rows : kRows) {
      SCOPED_TRACE(::testing::Message() << "rows " << rows << " inter " << inter << " seed " << kSeed);
      std::mt19937 rng(kSeed + rows * 3 + inter);
      const auto gu = random_bf16(static_cast<size_t>(rows) * 2 * inter, rng, 4.0f);
      std::vector<uint16_t> ref(static_cast<size_t>(rows) * inter);
      ref::silu_mul_ref(gu.data(), ref.data(), rows, inter);
      DeviceBuffer dg = up(gu), dout(ref.size() * 2);
      gpu::silu_mul(dg.as<uint16_t>(), dout.as<uint16_t>(), rows, inter, nullptr);
      // expf differs from the host's exp by up to 2 f32 ulps, which can flip the bf16 rounding
      // of silu (1 ulp) and through it the product: 2 ulps.
      expect_bf16_near(dout.to_host<uint16_t>(), ref, 2.0);
    }
}

LlamaConfig rope_config(int n_q, int n_kv, int hd, bool llama3) {
  LlamaConfig c;
  c.hidden_size = n_q * hd;
  c.num_attention_heads = n_q;
  c.num_key_value_heads = n_kv;
  c.head_dim = hd;
  c.rope_theta = llama3 ? 500000.0 : 10000.0;
  if (llama3) c.rope_scaling = RopeScaling{"llama3", 8.0, 1.0, 4.0, 8192};
  return c;
}

// Interleaved gate/up: the same values as silu_mul on the de-interleaved buffer, bit for bit.
TEST(RunnerKernels, SiluMulPairsEqualsSiluMul) {
  LLMQ_REQUIRE_GPU();
  for (int inter : {1, 172, 1000})
    for (int rows : kRows) {
      SCOPED_TRACE(::testing::Message() << "rows " << rows << " inter " << inter << " seed " << kSeed);
      std::mt19937 rng(kSeed + rows * 11 + inter);
      const auto gu = random_bf16(static_cast<size_t>(rows) * 2 * inter, rng, 4.0f);
      std::vector<uint16_t> pairs(gu.size());
      for (int r = 0; r < rows; ++r)
        for (int i = 0; i < inter; ++i) {
          const size_t row = static_cast<size_t>(r) * 2 * inter;
          pairs[row + 2 * i] = gu[row + i];
          pairs[row + 2 * i + 1] = gu[row + inter + i];
        }
      DeviceBuffer dg = up(gu), dp = up(pairs), d1(static_cast<size_t>(rows) * inter * 2), d2(d1.bytes());
      gpu::silu_mul(dg.as<uint16_t>(), d1.as<uint16_t>(), rows, inter, nullptr);
      gpu::silu_mul_pairs(dp.as<uint16_t>(), d2.as<uint16_t>(), rows, inter, nullptr);
      EXPECT_EQ(d2.to_host<uint16_t>(), d1.to_host<uint16_t>());
    }
}

TEST(RunnerKernels, RopeAndCacheIsExact) {
  LLMQ_REQUIRE_GPU();
  struct Case { int n_q, n_kv, hd; bool llama3; };
  for (const Case& k : {Case{8, 4, 8, false}, Case{32, 8, 128, true}, Case{6, 2, 48, true}})
    for (int rows : kRows) {
      SCOPED_TRACE(::testing::Message() << "rows " << rows << " hd " << k.hd << " seed " << kSeed);
      std::mt19937 rng(kSeed + rows + k.hd);
      const int capacity = 300, slots = 3;
      const LlamaConfig c = rope_config(k.n_q, k.n_kv, k.hd, k.llama3);
      std::vector<float> cos_t, sin_t;
      ref::rope_tables_ref(c, capacity, &cos_t, &sin_t);
      const int width = (k.n_q + 2 * k.n_kv) * k.hd, kv_dim = k.n_kv * k.hd;
      auto qkv = random_bf16(static_cast<size_t>(rows) * width, rng);
      std::vector<int32_t> pos(rows), seq(rows);
      for (int r = 0; r < rows; ++r) seq[r] = r % slots, pos[r] = static_cast<int32_t>((r * 37 + 5) % capacity);
      // Distinct (slot, pos) per row so the cache writes do not collide.
      for (int r = 0; r < rows; ++r) pos[r] = (r / slots) * 2 + (r % 2) + 250 * (r == 0);
      std::vector<uint16_t> kc(static_cast<size_t>(slots) * capacity * kv_dim, 0), vc(kc.size(), 0);
      DeviceBuffer dq = up(qkv), dcos = up(cos_t), dsin = up(sin_t), dp = up(pos), ds = up(seq), dk = up(kc), dv = up(vc);
      ref::rope_and_cache_ref(qkv.data(), cos_t.data(), sin_t.data(), pos.data(), seq.data(), kc.data(), vc.data(),
                              rows, k.n_q, k.n_kv, k.hd, capacity);
      gpu::rope_and_cache({dq.as<uint16_t>(), dcos.as<float>(), dsin.as<float>(), dp.as<int32_t>(), ds.as<int32_t>(),
                           dk.as<uint16_t>(), dv.as<uint16_t>(), rows, k.n_q, k.n_kv, k.hd, capacity},
                          nullptr);
      EXPECT_EQ(dq.to_host<uint16_t>(), qkv);
      EXPECT_EQ(dk.to_host<uint16_t>(), kc);
      EXPECT_EQ(dv.to_host<uint16_t>(), vc);
    }
}

TEST(RunnerKernels, RopeTablesFollowRopeInvFreq) {
  // Frequencies come from model/llama.h's rope_inv_freq (Llama-3 scaling included): the
  // table at position 1 is cos/sin of the inverse frequencies themselves.
  const LlamaConfig c = rope_config(4, 2, 128, true);
  const std::vector<float> inv = rope_inv_freq(c);
  std::vector<float> cos_t, sin_t;
  ref::rope_tables_ref(c, 4, &cos_t, &sin_t);
  ASSERT_EQ(cos_t.size(), 4 * inv.size());
  for (size_t i = 0; i < inv.size(); ++i) {
    EXPECT_EQ(cos_t[i], 1.0f);
    EXPECT_EQ(sin_t[i], 0.0f);
    EXPECT_EQ(cos_t[inv.size() + i], bf16_to_f32(f32_to_bf16(std::cos(inv[i]))));
  }
  EXPECT_LT(inv.back(), 1.0f / std::pow(500000.0f, 126.0f / 128.0f));  // the low frequencies are scaled down
}

TEST(RunnerKernels, AttentionMatchesReference) {
  LLMQ_REQUIRE_GPU();
  struct Case { int n_q, n_kv, hd; };
  for (const Case& k : {Case{8, 4, 8}, Case{32, 8, 128}, Case{4, 4, 64}, Case{8, 1, 16}})
    for (int rows : kRows) {
      SCOPED_TRACE(::testing::Message() << "rows " << rows << " heads " << k.n_q << "/" << k.n_kv << " hd " << k.hd
                                        << " seed " << kSeed);
      std::mt19937 rng(kSeed + rows * 11 + k.hd);
      const int capacity = 160, slots = 4, kv_dim = k.n_kv * k.hd, q_stride = (k.n_q + 2 * k.n_kv) * k.hd;
      const auto q = random_bf16(static_cast<size_t>(rows) * q_stride, rng);
      const auto kc = random_bf16(static_cast<size_t>(slots) * capacity * kv_dim, rng);
      const auto vc = random_bf16(kc.size(), rng);
      // Rows mix decode-like (one row of a slot, long context) and prefill-like (consecutive
      // positions of one slot) cases; position capacity - 1 is the longest.
      std::vector<int32_t> pos(rows), seq(rows);
      for (int r = 0; r < rows; ++r) seq[r] = r % slots, pos[r] = (r < 4) ? capacity - 1 - 40 * r : (r * 13) % capacity;
      std::vector<uint16_t> ref(static_cast<size_t>(rows) * k.n_q * k.hd);
      ref::attention_ref(q.data(), q_stride, kc.data(), vc.data(), pos.data(), seq.data(), ref.data(), rows, k.n_q,
                         k.n_kv, k.hd, capacity);
      DeviceBuffer dq = up(q), dk = up(kc), dv = up(vc), dp = up(pos), ds = up(seq), dout(ref.size() * 2);
      gpu::AttentionArgs args{dq.as<uint16_t>(), q_stride, dk.as<uint16_t>(), dv.as<uint16_t>(), dp.as<int32_t>(),
                              ds.as<int32_t>(), dout.as<uint16_t>(), rows, k.n_q, k.n_kv, k.hd, capacity};
      // Scores differ from the reference only by f32 summation order, so each bf16
      // probability p_j can flip by one ulp (2^-8 relative): |Δout| <= 2^-8 Σ p_j |v_j| / l
      // <= 2^-8 max|v|, plus one ulp of the output's own rounding.
      double vmax = 0.0;
      for (uint16_t v : vc) vmax = std::max(vmax, std::fabs(static_cast<double>(bf16_to_f32(v))));
      gpu::attention(args, nullptr);
      expect_bf16_near(dout.to_host<uint16_t>(), ref, 1.0, std::vector<double>(ref.size(), std::ldexp(vmax, -8)),
                       "one block per row");
      // The same with a workspace: few rows are split over position chunks (decode path).
      DeviceBuffer ws(gpu::attention_workspace_floats(rows, k.n_q, k.hd, capacity) * sizeof(float));
      args.workspace = ws.as<float>();
      args.workspace_rows = rows;
      gpu::attention(args, nullptr);
      expect_bf16_near(dout.to_host<uint16_t>(), ref, 1.0, std::vector<double>(ref.size(), std::ldexp(vmax, -8)),
                       "split over chunks");
      // A workspace for fewer rows: the split path takes the rows 16 at a time (118 rows: 8 groups).
      DeviceBuffer ws16(gpu::attention_workspace_floats(16, k.n_q, k.hd, capacity) * sizeof(float));
      args.workspace = ws16.as<float>();
      args.workspace_rows = 16;
      gpu::attention(args, nullptr);
      expect_bf16_near(dout.to_host<uint16_t>(), ref, 1.0, std::vector<double>(ref.size(), std::ldexp(vmax, -8)),
                       "split in groups of 16 rows");
    }
  EXPECT_GE(gpu::attention_max_capacity(32, 8, 128), 8192);  // Llama-3-8B heads: room for 8K positions
}

// Decode-shaped calls (one row per sequence) on the split path: rows 1, 3, 16, 64 at
// positions up to 639, capacity 640 and 2048 (where the first row sees all 2048 positions
// and most chunks of the others are empty; rows 1 and 2 see 1 and 4 positions), GQA groups
// 1, 4, 8, head_dim 64 and 128, the default path (thread-block clusters at the small
// batches, else whole_row or the pair; whole_row in half-size blocks at 64 rows of 8 kv
// heads, more pairs than one wave of full blocks on a GPU of up to 256 SMs), the two-kernel
// pair with forced chunks (192: a partial last chunk; 1024: one chunk per row) and forced
// cluster sizes 1, 2, 8 (1 at capacity 2048 falls back to the pair). Cache positions past
// every row of a slot hold NaN, so a chunk that lets an unwritten K/V row into a sum fails;
// the workspace starts as NaN / all-ones counters, so nothing relies on zeroing.
// Same tolerance as AttentionMatchesReference, two-sided: most outputs must equal the
// reference bit for bit (a probability rounds the other way only near a bf16 boundary), and
// a second call must give the same bits.
TEST(RunnerKernels, AttentionDecodeMatchesReference) {
  LLMQ_REQUIRE_GPU();
  struct Case { int n_q, n_kv, hd; };
  constexpr uint16_t kNaN = 0x7FC0;
  for (const Case& k : {Case{32, 8, 128}, Case{8, 8, 64}, Case{16, 2, 128}, Case{16, 4, 64}, Case{8, 1, 64}})
    for (int capacity : {640, 2048})
      for (int rows : {1, 3, 16, 64}) {
        SCOPED_TRACE(::testing::Message() << "rows " << rows << " heads " << k.n_q << "/" << k.n_kv << " hd " << k.hd
                                          << " capacity " << capacity << " seed " << kSeed);
        std::mt19937 rng(kSeed + rows * 31 + k.hd + capacity + k.n_kv);
        const int slots = std::min(rows, 16), kv_dim = k.n_kv * k.hd, q_stride = (k.n_q + 2 * k.n_kv) * k.hd;
        std::vector<int32_t> pos(rows), seq(rows), last(slots, -1);
        for (int r = 0; r < rows; ++r) {
          seq[r] = r % slots;
          // Rows 1 and 2 see 1 and 4 positions: fewer than a cluster's 8 blocks (empty blocks).
          pos[r] = r == 0 ? capacity - 1 : r <= 2 ? 3 * (r - 1) : 639 - (r * 97) % 420;
          last[seq[r]] = std::max(last[seq[r]], pos[r]);
        }
        const auto q = random_bf16(static_cast<size_t>(rows) * q_stride, rng, 1.5f);
        std::vector<uint16_t> kc(static_cast<size_t>(slots) * capacity * kv_dim, kNaN), vc(kc.size(), kNaN);
        double vmax = 0.0;
        for (int sl = 0; sl < slots; ++sl) {
          const size_t n = static_cast<size_t>(last[sl] + 1) * kv_dim, off = static_cast<size_t>(sl) * capacity * kv_dim;
          const auto kr = random_bf16(n, rng), vr = random_bf16(n, rng);
          std::copy(kr.begin(), kr.end(), kc.begin() + off);
          std::copy(vr.begin(), vr.end(), vc.begin() + off);
          for (uint16_t v : vr) vmax = std::max(vmax, std::fabs(static_cast<double>(bf16_to_f32(v))));
        }
        std::vector<uint16_t> ref(static_cast<size_t>(rows) * k.n_q * k.hd);
        ref::attention_ref(q.data(), q_stride, kc.data(), vc.data(), pos.data(), seq.data(), ref.data(), rows, k.n_q,
                           k.n_kv, k.hd, capacity);
        DeviceBuffer dq = up(q), dk = up(kc), dv = up(vc), dp = up(pos), ds = up(seq), dout(ref.size() * 2);
        DeviceBuffer ws(gpu::attention_workspace_floats(rows, k.n_q, k.hd, capacity) * sizeof(float));
        LLMQ_CUDA_CHECK(cudaMemset(ws.as<float>(), 0xFF, ws.bytes()));
        gpu::AttentionArgs args{dq.as<uint16_t>(), q_stride, dk.as<uint16_t>(), dv.as<uint16_t>(), dp.as<int32_t>(),
                                ds.as<int32_t>(), dout.as<uint16_t>(), rows, k.n_q, k.n_kv, k.hd, capacity,
                                ws.as<float>(), rows};
        // Default, the two-kernel pair with forced chunks, forced clusters.
        for (auto [chunk, cluster] : {std::pair{0, 0}, std::pair{192, 0}, std::pair{1024, 0}, std::pair{0, 1},
                                      std::pair{0, 2}, std::pair{0, 8}}) {
          SCOPED_TRACE(::testing::Message() << "split_chunk " << chunk << " cluster " << cluster);
          args.split_chunk = chunk;
          args.cluster = cluster;
          LLMQ_CUDA_CHECK(cudaMemset(dout.as<uint16_t>(), 0xFF, dout.bytes()));
          gpu::attention(args, nullptr);
          const std::vector<uint16_t> first = dout.to_host<uint16_t>();
          expect_bf16_near(first, ref, 1.0, std::vector<double>(ref.size(), std::ldexp(vmax, -8)), "split decode");
          size_t differ = 0;
          for (size_t i = 0; i < ref.size(); ++i) differ += first[i] != ref[i];
          EXPECT_LE(differ, ref.size() / 20) << differ << " of " << ref.size() << " differ from the reference";
          LLMQ_CUDA_CHECK(cudaMemset(dout.as<uint16_t>(), 0, dout.bytes()));
          gpu::attention(args, nullptr);
          EXPECT_TRUE(dout.to_host<uint16_t>() == first) << "a second call gives other bits";
          // Reading the older rows before pdl_wait changes when they are loaded, not the sums.
          args.history_settled = true;
          LLMQ_CUDA_CHECK(cudaMemset(dout.as<uint16_t>(), 0, dout.bytes()));
          gpu::attention(args, nullptr);
          EXPECT_TRUE(dout.to_host<uint16_t>() == first) << "history_settled gives other bits";
          // whole_row's K/V through registers or its shared-memory ring: the same values, so
          // the same bits (the other kernels ignore kv_ring).
          for (int ring : {-1, 1})
            for (bool settled : {false, true}) {
              SCOPED_TRACE(::testing::Message() << "kv_ring " << ring << " history_settled " << settled);
              args.kv_ring = ring;
              args.history_settled = settled;
              LLMQ_CUDA_CHECK(cudaMemset(dout.as<uint16_t>(), 0xFF, dout.bytes()));
              gpu::attention(args, nullptr);
              EXPECT_TRUE(dout.to_host<uint16_t>() == first) << "other bits";
            }
          args.kv_ring = 0;
          args.history_settled = false;
        }
      }
}

// Decode as the engine runs it: rope_and_cache writes each row's newest K/V row while the
// attention after it (history_settled) already reads the older ones. The newest rows start
// as NaN, so an attention that read one before the RoPE kernel wrote it gives NaN.
TEST(RunnerKernels, SettledAttentionAfterRopeReadsTheNewestRow) {
  LLMQ_REQUIRE_GPU();
  constexpr uint16_t kNaN = 0x7FC0;
  const int n_q = 32, n_kv = 8, hd = 128, capacity = 640;
  const int kv_dim = n_kv * hd, width = (n_q + 2 * n_kv) * hd;
  const LlamaConfig c = rope_config(n_q, n_kv, hd, true);
  std::vector<float> cos_t, sin_t;
  ref::rope_tables_ref(c, capacity, &cos_t, &sin_t);
  for (int rows : {1, 3, 16, 64}) {  // cluster kernel up to 16 rows, whole_row at 64
    SCOPED_TRACE(::testing::Message() << "rows " << rows << " seed " << kSeed);
    std::mt19937 rng(kSeed + 11 * rows);
    std::vector<int32_t> pos(rows), seq(rows);
    for (int r = 0; r < rows; ++r) seq[r] = r, pos[r] = r == 0 ? capacity - 1 : 1 + (r * 97) % 600;
    auto qkv = random_bf16(static_cast<size_t>(rows) * width, rng);
    std::vector<uint16_t> kc(static_cast<size_t>(rows) * capacity * kv_dim, kNaN), vc(kc.size(), kNaN);
    for (int r = 0; r < rows; ++r) {  // positions 0 .. pos - 1 hold keys and values; pos is NaN
      const size_t off = static_cast<size_t>(r) * capacity * kv_dim, n = static_cast<size_t>(pos[r]) * kv_dim;
      const auto kr = random_bf16(n, rng), vr = random_bf16(n, rng);
      std::copy(kr.begin(), kr.end(), kc.begin() + off);
      std::copy(vr.begin(), vr.end(), vc.begin() + off);
    }
    DeviceBuffer dq = up(qkv), dcos = up(cos_t), dsin = up(sin_t), dp = up(pos), ds = up(seq), dk = up(kc), dv = up(vc);
    DeviceBuffer dout(static_cast<size_t>(rows) * n_q * hd * 2);
    DeviceBuffer ws(gpu::attention_workspace_floats(rows, n_q, hd, capacity) * sizeof(float));
    gpu::AttentionArgs args{dq.as<uint16_t>(), width, dk.as<uint16_t>(), dv.as<uint16_t>(), dp.as<int32_t>(),
                            ds.as<int32_t>(), dout.as<uint16_t>(), rows, n_q, n_kv, hd, capacity,
                            ws.as<float>(), rows};
    args.history_settled = true;
    cudaStream_t stream;  // a stream of its own, where the attention launches while RoPE runs
    LLMQ_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    gpu::rope_and_cache({dq.as<uint16_t>(), dcos.as<float>(), dsin.as<float>(), dp.as<int32_t>(), ds.as<int32_t>(),
                         dk.as<uint16_t>(), dv.as<uint16_t>(), rows, n_q, n_kv, hd, capacity},
                        stream);
    gpu::attention(args, stream);
    LLMQ_CUDA_CHECK(cudaStreamSynchronize(stream));
    LLMQ_CUDA_CHECK(cudaStreamDestroy(stream));
    const std::vector<uint16_t> got = dout.to_host<uint16_t>();

    ref::rope_and_cache_ref(qkv.data(), cos_t.data(), sin_t.data(), pos.data(), seq.data(), kc.data(), vc.data(), rows,
                            n_q, n_kv, hd, capacity);
    DeviceBuffer dk2 = up(kc), dv2 = up(vc), dq2 = up(qkv);
    args.q = dq2.as<uint16_t>(), args.k_cache = dk2.as<uint16_t>(), args.v_cache = dv2.as<uint16_t>();
    args.history_settled = false;
    gpu::attention(args, nullptr);
    EXPECT_TRUE(got == dout.to_host<uint16_t>()) << "after rope_and_cache != on the reference's rotated cache";
  }
}

// The split path captured in a CUDA graph (as the engine's decode steps are) and replayed:
// every replay gives the bits of an eager call, so nothing in the workspace carries over.
TEST(RunnerKernels, AttentionSplitReplaysInGraph) {
  LLMQ_REQUIRE_GPU();
  const int rows = 16, n_q = 32, n_kv = 8, hd = 128, capacity = 640;
  const int kv_dim = n_kv * hd, q_stride = (n_q + 2 * n_kv) * hd;
  std::mt19937 rng(kSeed + 7);
  const auto q = random_bf16(static_cast<size_t>(rows) * q_stride, rng);
  const auto kc = random_bf16(static_cast<size_t>(rows) * capacity * kv_dim, rng);
  const auto vc = random_bf16(kc.size(), rng);
  std::vector<int32_t> pos(rows), seq(rows);
  for (int r = 0; r < rows; ++r) seq[r] = r, pos[r] = 500 + 9 * r;
  DeviceBuffer dq = up(q), dk = up(kc), dv = up(vc), dp = up(pos), ds = up(seq);
  DeviceBuffer dout(static_cast<size_t>(rows) * n_q * hd * 2);
  DeviceBuffer ws(gpu::attention_workspace_floats(rows, n_q, hd, capacity) * sizeof(float));
  const gpu::AttentionArgs args{dq.as<uint16_t>(), q_stride, dk.as<uint16_t>(), dv.as<uint16_t>(), dp.as<int32_t>(),
                                ds.as<int32_t>(), dout.as<uint16_t>(), rows, n_q, n_kv, hd, capacity,
                                ws.as<float>(), rows};
  gpu::attention(args, nullptr);
  const std::vector<uint16_t> eager = dout.to_host<uint16_t>();

  cudaStream_t stream;
  LLMQ_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  LLMQ_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  gpu::attention(args, stream);
  LLMQ_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  LLMQ_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  for (int rep = 0; rep < 3; ++rep) {
    LLMQ_CUDA_CHECK(cudaMemsetAsync(dout.as<uint16_t>(), 0, dout.bytes(), stream));
    LLMQ_CUDA_CHECK(cudaGraphLaunch(exec, stream));
    LLMQ_CUDA_CHECK(cudaStreamSynchronize(stream));
    EXPECT_TRUE(dout.to_host<uint16_t>() == eager) << "replay " << rep;
  }
  LLMQ_CUDA_CHECK(cudaGraphExecDestroy(exec));
  LLMQ_CUDA_CHECK(cudaGraphDestroy(graph));
  LLMQ_CUDA_CHECK(cudaStreamDestroy(stream));
}

TEST(RunnerKernels, ActivationQuantizationIsExact) {
  LLMQ_REQUIRE_GPU();
  for (int k : {64, 172, 1000, 4096})
    for (int rows : kRows) {
      SCOPED_TRACE(::testing::Message() << "rows " << rows << " k " << k << " seed " << kSeed);
      std::mt19937 rng(kSeed + rows * 5 + k);
      auto x = random_bf16(static_cast<size_t>(rows) * k, rng, 2.0f);
      if (rows >= 3) {
        std::fill(x.begin() + k, x.begin() + 2 * k, uint16_t{0});  // a zero row
        for (int i = 0; i < k; ++i) x[2 * k + i] = f32_to_bf16(bf16_to_f32(x[2 * k + i]) * 1e-6f);  // min-scale path
      }
      std::vector<uint8_t> f8(x.size());
      std::vector<int8_t> i8(x.size());
      std::vector<float> sf(rows), si(rows);
      ref::quantize_fp8_per_token_ref(x.data(), f8.data(), sf.data(), rows, k);
      ref::quantize_int8_per_token_ref(x.data(), i8.data(), si.data(), rows, k);
      DeviceBuffer dx = up(x), df(x.size()), di(x.size()), dsf(rows * 4), dsi(rows * 4);
      gpu::quantize_fp8_per_token(dx.as<uint16_t>(), df.as<uint8_t>(), k, dsf.as<float>(), rows, k, nullptr);
      gpu::quantize_int8_per_token(dx.as<uint16_t>(), di.as<int8_t>(), k, dsi.as<float>(), rows, k, nullptr);
      EXPECT_EQ(df.to_host<uint8_t>(), f8);
      EXPECT_EQ(dsf.to_host<float>(), sf);
      EXPECT_EQ(di.to_host<int8_t>(), i8);
      EXPECT_EQ(dsi.to_host<float>(), si);
      EXPECT_TRUE(std::any_of(i8.begin(), i8.end(), [](int8_t c) { return c != 0; }));
    }
}

// Σ_k |x[m,k] w[n,k]| for the f32-accumulation bound of the GEMM tests.
std::vector<double> abs_products(const std::vector<float>& x, const std::vector<float>& w, int M, int N, int K) {
  std::vector<double> out(static_cast<size_t>(M) * N);
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      double s = 0;
      for (int k = 0; k < K; ++k) s += std::fabs(static_cast<double>(x[m * K + k]) * w[n * K + k]);
      out[static_cast<size_t>(m) * N + n] = s;
    }
  return out;
}

// f32 accumulation of K terms in any order (cuBLAS tiles, split-K) errs by at most
// K · u · Σ|terms| (the standard γ_K bound) with u = 2^-24 for round-to-nearest, 2^-23 for
// tensor-core adders that truncate; then one bf16 rounding (1 ulp).
std::vector<double> f32_sum_bound(const std::vector<double>& abs_sum, int K, double extra_scale = 1.0) {
  std::vector<double> tol(abs_sum.size());
  for (size_t i = 0; i < tol.size(); ++i) tol[i] = K * std::ldexp(1.0, -23) * abs_sum[i] * extra_scale;
  return tol;
}

std::vector<float> to_float(const std::vector<uint16_t>& v) {
  std::vector<float> f(v.size());
  for (size_t i = 0; i < v.size(); ++i) f[i] = bf16_to_f32(v[i]);
  return f;
}

TEST(RunnerKernels, Bf16GemmMatchesReference) {
  LLMQ_REQUIRE_GPU();
  gpu::Blas blas;
  for (auto [N, K] : {std::pair{64, 64}, std::pair{172, 64}, std::pair{64, 172}, std::pair{1000, 4096}})
    for (int M : kRows) {
      SCOPED_TRACE(::testing::Message() << "M " << M << " N " << N << " K " << K << " seed " << kSeed);
      std::mt19937 rng(kSeed + M + N * 3 + K);
      const auto x = random_bf16(static_cast<size_t>(M) * K, rng), w = random_bf16(static_cast<size_t>(N) * K, rng, 0.05f);
      std::vector<uint16_t> ref(static_cast<size_t>(M) * N);
      ref::gemm_bf16_ref(x.data(), w.data(), ref.data(), M, N, K);
      DeviceBuffer dx = up(x), dw = up(w), dy(ref.size() * 2);
      blas.gemm_bf16(dx.as<uint16_t>(), dw.as<uint16_t>(), dy.as<uint16_t>(), M, N, K, nullptr);
      const std::vector<uint16_t> got = dy.to_host<uint16_t>();
      expect_bf16_near(got, ref, 1.0, f32_sum_bound(abs_products(to_float(x), to_float(w), M, N, K), K));
      // f32 sums in another order differ by ~sqrt(K) 2^-24 relative, so a bf16 rounding
      // (2^-8) flips for a small fraction of outputs only; a bf16 split-K reduction would
      // change most of them.
      size_t differ = 0;
      for (size_t i = 0; i < got.size(); ++i) differ += got[i] != ref[i];
      EXPECT_LE(differ, got.size() / 20 + 1) << differ << " of " << got.size() << " outputs differ from the reference";
    }
}

TEST(RunnerKernels, W8A8GemmsMatchReference) {
  LLMQ_REQUIRE_GPU();
  const GpuInfo info = query_gpu();
  const bool fp8_ok = info.major * 10 + info.minor >= 89;
  gpu::Blas blas;
  for (auto [N, K] : {std::pair{64, 64}, std::pair{172, 176}, std::pair{1000, 4096}})
    for (int M : {1, 2, 3, 8, 17, 64, 118}) {  // kRows and the GEMV's largest M
      SCOPED_TRACE(::testing::Message() << "M " << M << " N " << N << " K " << K << " seed " << kSeed);
      std::mt19937 rng(kSeed + M * 17 + N + K);
      const auto x = random_bf16(static_cast<size_t>(M) * K, rng);
      std::vector<float> sw(N);
      for (auto& s : sw) s = 0.001f * (1 + rng() % 50);
      // INT8: exact int32 sums, then the same double scaling as the reference: bit-exact.
      std::vector<int8_t> xi(x.size()), wi(static_cast<size_t>(N) * K);
      std::vector<float> sxi(M);
      ref::quantize_int8_per_token_ref(x.data(), xi.data(), sxi.data(), M, K);
      for (auto& c : wi) c = static_cast<int8_t>(static_cast<int>(rng() % 255) - 127);
      std::vector<uint16_t> ref_i(static_cast<size_t>(M) * N);
      ref::gemm_w8a8_int8_ref(xi.data(), sxi.data(), wi.data(), sw.data(), ref_i.data(), M, N, K);
      DeviceBuffer dxi = up(xi), dwi = up(wi), dsx = up(sxi), dsw = up(sw), dacc(ref_i.size() * 4), dy(ref_i.size() * 2);
      blas.gemm_int8(dxi.as<int8_t>(), dwi.as<int8_t>(), dacc.as<int32_t>(), M, N, K, nullptr);
      gpu::scale_rows_cols_i32(dacc.as<int32_t>(), dsx.as<float>(), dsw.as<float>(), dy.as<uint16_t>(), M, N, nullptr);
      EXPECT_EQ(dy.to_host<uint16_t>(), ref_i);
      if (M <= gpu::kGemvMaxM && K % 16 == 0) {  // the decode GEMV: exact int32 sums too
        gpu::gemv_w8a8_int8(dxi.as<int8_t>(), dsx.as<float>(), dwi.as<int8_t>(), dsw.as<float>(), dy.as<uint16_t>(), M,
                            N, K, gpu::GemvEpilogue{}, nullptr);
        EXPECT_EQ(dy.to_host<uint16_t>(), ref_i) << "gemv";
      }

      if (!fp8_ok) continue;
      std::vector<uint8_t> xf(x.size()), wf(static_cast<size_t>(N) * K);
      std::vector<float> sxf(M);
      ref::quantize_fp8_per_token_ref(x.data(), xf.data(), sxf.data(), M, K);
      for (auto& c : wf) {
        c = static_cast<uint8_t>(rng() & 0xFF);
        if ((c & 0x7F) == 0x7F) c ^= 0x01;  // no NaN codes
      }
      std::vector<uint16_t> ref_f(static_cast<size_t>(M) * N);
      ref::gemm_w8a8_fp8_ref(xf.data(), sxf.data(), wf.data(), sw.data(), ref_f.data(), M, N, K);
      DeviceBuffer dxf = up(xf), dwf = up(wf), dsxf = up(sxf), dacf(ref_f.size() * 4), dyf(ref_f.size() * 2);
      blas.gemm_fp8(dxf.as<uint8_t>(), dwf.as<uint8_t>(), dacf.as<float>(), M, N, K, nullptr);
      gpu::scale_rows_cols_f32(dacf.as<float>(), dsxf.as<float>(), dsw.as<float>(), dyf.as<uint16_t>(), M, N, nullptr);
      // Exact e4m3 products, but Hopper's FP8 tensor cores accumulate with about 14 mantissa
      // bits (DeepSeek-V3 report, 3.3.2), aligned to the largest product of each MMA, and
      // cuBLAS promotes to f32 after at most four k=32 MMAs: each MMA errs by <= 2^-13 of its
      // largest |term|, four before promotion, twice that for the alignment rounding, and a
      // term is <= Σ|terms|: 2^-10 Σ|xq wq| · sx · sw, on top of the f32 bound. (2^-12
      // failed for one output in 16 000 on an H100.)
      std::vector<float> xg(xf.size()), wg(wf.size());
      for (size_t i = 0; i < xf.size(); ++i) xg[i] = fp8e4m3_to_f32(xf[i]);
      for (size_t i = 0; i < wf.size(); ++i) wg[i] = fp8e4m3_to_f32(wf[i]);
      std::vector<double> abs_sum = abs_products(xg, wg, M, N, K);
      for (int m = 0; m < M; ++m)
        for (int n = 0; n < N; ++n) abs_sum[static_cast<size_t>(m) * N + n] *= static_cast<double>(sxf[m]) * sw[n];
      std::vector<double> tol = f32_sum_bound(abs_sum, K);
      for (size_t i = 0; i < tol.size(); ++i) tol[i] += std::ldexp(abs_sum[i], -10);
      expect_bf16_near(dyf.to_host<uint16_t>(), ref_f, 1.0, tol);
      if (M <= gpu::kGemvMaxM && K % 16 == 0) {  // the decode GEMV: f32 sums of exact products
        gpu::gemv_w8a8_fp8(dxf.as<uint8_t>(), dsxf.as<float>(), dwf.as<uint8_t>(), dsw.as<float>(), dyf.as<uint16_t>(),
                           M, N, K, gpu::GemvEpilogue{}, nullptr);
        expect_bf16_near(dyf.to_host<uint16_t>(), ref_f, 1.0, f32_sum_bound(abs_sum, K), "fp8 gemv");
      }
    }
}

// A random int4 linear: scales exact in the scale dtype, zeros 0..15 (or 8), optional act-order.
QuantizedLinear random_int4(int N, int K, int gs, bool symmetric, bool act_order, DType scale_dtype, std::mt19937& rng) {
  QuantizedLinear q = make_int4_linear(N, K, gs, symmetric, scale_dtype);
  uint8_t* c = q.codes.data<uint8_t>();
  for (int64_t i = 0; i < static_cast<int64_t>(N) * K; ++i) c[i] = static_cast<uint8_t>(rng() % 16);
  float* s = q.scales.data<float>();
  uint8_t* z = q.zeros.data<uint8_t>();
  for (int64_t i = 0; i < q.scales.numel(); ++i) {
    const float v = 0.002f + 0.02f * static_cast<float>(rng() % 1000) / 1000.0f;
    s[i] = scale_dtype == DType::kF16 ? f16_to_f32(f32_to_f16(v)) : bf16_to_f32(f32_to_bf16(v));
    z[i] = symmetric ? 8 : static_cast<uint8_t>(rng() % 16);
  }
  if (act_order) {
    std::vector<int32_t> perm(K);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    q.g_idx = Tensor(DType::kI32, {K});
    for (int k = 0; k < K; ++k) q.g_idx.data<int32_t>()[perm[k]] = k / gs;  // GPTQ desc_act: groups of the permuted order
  }
  EXPECT_EQ(validate(q), "");
  return q;
}

TEST(RunnerKernels, W4A16MatchesReference) {
  LLMQ_REQUIRE_GPU();
  gpu::Blas blas;
  struct Case { int N, K, gs; bool sym, act; DType sd; };
  // Tile edges of the tensor-core GEMV: N not a multiple of its 128-row blocks (172, 200,
  // 328, 1000), K = 64 · odd (448, 2368: a partial last pipeline stage, uneven K splits),
  // group 64; M across its 8-token groups and passes of 64 (100, 128), 130 the BF16 path.
  const Case cases[] = {{64, 128, 128, true, false, DType::kBF16},  {172, 384, 128, false, false, DType::kF16},
                        {1000, 1024, 128, false, true, DType::kF16}, {96, 256, 32, false, true, DType::kBF16},
                        {200, 448, 64, false, false, DType::kBF16},  {328, 2368, 64, true, false, DType::kF16},
                        {4096, 4096, 128, true, false, DType::kBF16}};
  for (const Case& k : cases)
    for (int M : {1, 2, 3, 5, 9, 16, 17, 31, 32, 33, 48, 64, 100, 118, 128, 130}) {
      if (k.N * k.K > 1000 * 1024 && M > 17) continue;  // the double reference is slow at 4096²
      SCOPED_TRACE(::testing::Message() << "M " << M << " N " << k.N << " K " << k.K << " gs " << k.gs << " sym " << k.sym
                                        << " act " << k.act << " seed " << kSeed);
      std::mt19937 rng(kSeed + M + k.N + k.K * 3 + k.gs);
      const QuantizedLinear q = random_int4(k.N, k.K, k.gs, k.sym, k.act, k.sd, rng);
      auto layout = w4a16_layout(q);
      ASSERT_TRUE(layout.has_value()) << layout.status().message();
      const gpu::W4A16Weights w = gpu::W4A16Weights::upload(*layout);
      const auto x = random_bf16(static_cast<size_t>(M) * k.K, rng);
      std::vector<uint16_t> ref(static_cast<size_t>(M) * k.N);
      w4a16_gemm_ref(q, x.data(), ref.data(), M);
      DeviceBuffer dx = up(x), dy(ref.size() * 2), xp(x.size() * 2), wb(static_cast<size_t>(k.N) * k.K * 2);
      DeviceBuffer split(gpu::w4a16_split_bytes(k.N, M));
      LLMQ_CUDA_CHECK(cudaMemset(split.as(), 0, split.bytes()));
      const gpu::W4A16Scratch scratch{xp.as<uint16_t>(), wb.as<uint16_t>(), split.as(), split.bytes()};
      gpu::w4a16_gemm(w, dx.as<uint16_t>(), dy.as<uint16_t>(), M, scratch, blas, nullptr);
      const std::vector<uint16_t> got = dy.to_host<uint16_t>();
      const Tensor wd = dequantize(q);
      std::vector<float> wf(wd.data<float>(), wd.data<float>() + wd.numel());
      const std::vector<double> abs_sum = abs_products(to_float(x), wf, M, k.N, k.K);
      std::vector<double> tol = f32_sum_bound(abs_sum, k.K);
      // The large-M path rounds each dequantized weight to bf16 (relative error <= 2^-9).
      if (M > (w.mma ? kW4A16PassesMaxM : kW4A16GemvMaxM))
        for (size_t i = 0; i < tol.size(); ++i) tol[i] += std::ldexp(abs_sum[i], -9);
      expect_bf16_near(got, ref, 1.0, tol);
      // Deterministic: a second run is bit-identical (K splits summed in a fixed order; the
      // cleared output also catches split counters not left at zero).
      LLMQ_CUDA_CHECK(cudaMemset(dy.as(), 0, dy.bytes()));
      gpu::w4a16_gemm(w, dx.as<uint16_t>(), dy.as<uint16_t>(), M, scratch, blas, nullptr);
      EXPECT_EQ(dy.to_host<uint16_t>(), got) << "second run";
      // Without the split-K workspace (one K range per block): the same bound.
      gpu::w4a16_gemm(w, dx.as<uint16_t>(), dy.as<uint16_t>(), M, {xp.as<uint16_t>(), wb.as<uint16_t>()}, blas, nullptr);
      expect_bf16_near(dy.to_host<uint16_t>(), ref, 1.0, tol, "no split workspace");
      // The direct kernel (M <= 8) with each warp count per tile (K = 448 leaves warps without
      // chunks; 2368 and 4096 give each several iterations): the same bound. Act-order
      // permutes x before the GEMV, so the unpermuted cases cover it.
      if (w.mma && M <= 8 && !k.act)
        for (int warps : {4, 8, 16}) {
          gpu::w4a16_gemv(w, dx.as<uint16_t>(), dy.as<uint16_t>(), M, nullptr, {}, nullptr, 0, warps);
          expect_bf16_near(dy.to_host<uint16_t>(), ref, 1.0, tol, ("direct, " + std::to_string(warps) + " warps").c_str());
        }
    }
}

// The tensor-core GEMV's epilogues equal the unfused composition on the same kernel's output,
// bit for bit: the residual add (in place, y aliasing the residual) and SwiGLU of interleaved
// row pairs (as silu_mul_pairs computes it).
TEST(RunnerKernels, W4A16EpiloguesEqualComposition) {
  LLMQ_REQUIRE_GPU();
  gpu::Blas blas;
  for (bool split_k : {false, true})
    for (int N : {64, 160, 200, 1000})
      for (int M : {1, 3, 8, 9, 16, 17, 31, 32, 33, 48, 64, 100, 128}) {
        SCOPED_TRACE(::testing::Message() << "M " << M << " N " << N << " split " << split_k << " seed " << kSeed);
        std::mt19937 rng(kSeed + 17 * M + N);
        const int K = 64 * 17;  // odd chunk count: a partial last pipeline stage, uneven K splits
        const QuantizedLinear q = random_int4(N, K, 64, false, false, DType::kBF16, rng);
        auto layout = w4a16_layout(q);
        ASSERT_TRUE(layout.has_value()) << layout.status().message();
        const gpu::W4A16Weights w = gpu::W4A16Weights::upload(*layout);
        ASSERT_TRUE(gpu::w4a16_fuses_epilogue(w, M));
        const auto x = random_bf16(static_cast<size_t>(M) * K, rng);
        auto res = random_bf16(static_cast<size_t>(M) * N, rng, 4.0f);
        DeviceBuffer dx = up(x), plain(res.size() * 2), dres = up(res), act(res.size()), act_ref(res.size());
        DeviceBuffer split(split_k ? gpu::w4a16_split_bytes(N, M) : 0);
        if (split_k) LLMQ_CUDA_CHECK(cudaMemset(split.as(), 0, split.bytes()));
        const gpu::W4A16Scratch scratch{nullptr, nullptr, split.as(), split.bytes()};
        gpu::w4a16_gemm(w, dx.as<uint16_t>(), plain.as<uint16_t>(), M, scratch, blas, nullptr);
        gpu::GemvEpilogue add;
        add.residual = dres.as<const uint16_t>();
        gpu::w4a16_gemm(w, dx.as<uint16_t>(), dres.as<uint16_t>(), M, scratch, blas, nullptr, add);
        ref::add_inplace_ref(res.data(), plain.to_host<uint16_t>().data(), static_cast<int64_t>(res.size()));
        EXPECT_EQ(dres.to_host<uint16_t>(), res);
        gpu::GemvEpilogue swiglu;
        swiglu.swiglu = true;
        gpu::w4a16_gemm(w, dx.as<uint16_t>(), act.as<uint16_t>(), M, scratch, blas, nullptr, swiglu);
        gpu::silu_mul_pairs(plain.as<uint16_t>(), act_ref.as<uint16_t>(), M, N / 2, nullptr);
        EXPECT_EQ(act.to_host<uint16_t>(), act_ref.to_host<uint16_t>());
      }
}

TEST(RunnerKernels, W4A16DequantizeIsExactRounding) {
  LLMQ_REQUIRE_GPU();
  std::mt19937 rng(kSeed);
  const QuantizedLinear q = random_int4(172, 512, 128, false, true, DType::kF16, rng);
  auto layout = w4a16_layout(q);
  ASSERT_TRUE(layout.has_value()) << layout.status().message();
  const gpu::W4A16Weights w = gpu::W4A16Weights::upload(*layout);
  DeviceBuffer out(static_cast<size_t>(172) * 512 * 2);
  gpu::w4a16_dequantize(w, out.as<uint16_t>(), nullptr);
  const std::vector<uint16_t> got = out.to_host<uint16_t>();
  const Tensor wd = dequantize(q);
  for (int n = 0; n < 172; ++n)
    for (int j = 0; j < 512; ++j) {
      const int k = layout->perm.empty() ? j : layout->perm[j];
      ASSERT_EQ(got[n * 512 + j], f32_to_bf16(wd.data<float>()[n * 512 + k])) << "n " << n << " j " << j;
    }
}

TEST(RunnerKernels, W4A16LayoutRejectsBadGroups) {
  std::mt19937 rng(kSeed);
  QuantizedLinear q = random_int4(16, 256, 128, true, true, DType::kBF16, rng);
  q.g_idx.data<int32_t>()[0] = 1 - q.g_idx.data<int32_t>()[0];  // one group now has 129 columns
  const auto layout = w4a16_layout(q);
  ASSERT_FALSE(layout.has_value());
  EXPECT_NE(layout.status().message().find("g_idx"), std::string::npos) << layout.status().message();
}

}  // namespace
}  // namespace llmq
