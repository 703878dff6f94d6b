// The decode GEMVs (runner/gemv.h) against their CPU references (runner/gemv_ref.h) on
// awkward shapes: M = 1, 2, 3, 7, 8 token rows; N = 1, 17, 118, 4098, 16386 (not multiples of
// the kernel's 4 or 8 rows per block; at M <= 2 the small N take the 4-row blocks, 16386 on
// any GPU and 4098 on an H200 the 8-row ones, except BF16, always 4-row there); K from one
// 16-byte chunk to Llama's 14336, with W8A8 rows padded to 16 codes, so threads run 0, 1 or
// many steps of the main loop (FP8 and INT8: the shared-memory pipeline; BF16: loads into
// registers). Every epilogue (residual in place and not, swiglu) is checked; INT8 bit for bit,
// BF16 and FP8 within the derived f32-summation bound; the tensor-core GEMVs (K a multiple of
// 64) likewise, INT8 bit for bit and FP8 within that bound plus its MMA adder's. The GPU cases
// skip without a GPU; the FP8 conversion trick, the references and the argument checks run
// everywhere.
#include <gtest/gtest.h>

#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <type_traits>
#include <vector>

#include "core/numeric.h"
#include "runner/device_buffer.h"
#include "runner/direct_warps.h"
#include "runner/gemm_skinny.h"
#include "runner/gemv.h"
#include "runner/gemv_ref.h"
#include "runner_test_util.h"

namespace llmq {
namespace {

using testing::expect_bf16_near;
using testing::random_bf16;

constexpr int kMs[] = {1, 2, 3, 7, 8};
constexpr int kSmallNs[] = {1, 17, 118};
// 1025 four-row blocks, more than an H200 holds at once at M <= 2 (4-5 per SM): 8-row blocks
// for FP8 and INT8.
constexpr int kLargeN = 4096 + 2;
// 4097 four-row blocks, more than any GPU under 256 SMs holds (at most 16 per SM): 8-row
// blocks for FP8 and INT8.
constexpr int kLargerN = 16384 + 2;
constexpr uint32_t kSeed = 20261201;

template <class T>
DeviceBuffer up(const std::vector<T>& v) { return DeviceBuffer::from_host(v); }

bool is_fp8_nan(uint8_t c) { return (c & 0x7F) == 0x7F; }

// ---- host: the FP8 conversion trick ----------------------------------------------------------

TEST(RunnerGemv, Fp8TrickEqualsCudaConversionForAllCodes) {
  const float undo = std::ldexp(1.0f, -gpu::kFp8TrickExponent);  // 2^120, a normal f32
  int checked = 0, subnormal = 0;
  for (int c = 0; c < 256; ++c) {
    const uint8_t code = static_cast<uint8_t>(c);
    if (is_fp8_nan(code)) continue;
    // The trick's f32 may be subnormal (codes with exponent 0): the host keeps subnormals.
    const float scaled = f32_from_bits(gpu::fp8e4m3_scaled_f32_bits(code));
    const float trick = scaled * undo;
    const __half_raw h = __nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(code), __NV_E4M3);
    const float cuda = __half2float(__half(h));
    EXPECT_EQ(f32_bits(trick), f32_bits(cuda)) << "code " << c;  // bits: -0 stays -0
    EXPECT_EQ(f32_bits(trick), f32_bits(fp8e4m3_to_f32(code))) << "code " << c;
    // The word form used by the kernel, for the code at each byte of a word of others.
    for (int i = 0; i < 4; ++i) {
      const uint32_t word = (0xA5C3E1F0u & ~(0xFFu << (8 * i))) | (static_cast<uint32_t>(code) << (8 * i));
      EXPECT_EQ(gpu::fp8x4_scaled_f32_bits(word, i), gpu::fp8e4m3_scaled_f32_bits(code)) << "code " << c << " byte " << i;
    }
    subnormal += (code & 0x78) == 0 && (code & 0x07) != 0;
    ++checked;
  }
  EXPECT_EQ(checked, 254);
  EXPECT_EQ(subnormal, 14);  // both signs of mantissas 1..7 went through the subnormal path
}

// ---- host: the references on a hand-computed case --------------------------------------------

TEST(RunnerGemv, ReferencesOnHandComputedCase) {
  // One token, K = 8 ones; row 0 all 0.25 (g = 2), row 1 all 0.5 (u = 4).
  const int K = 8;
  std::vector<uint16_t> x(K, f32_to_bf16(1.0f)), w(2 * K);
  for (int k = 0; k < K; ++k) w[k] = f32_to_bf16(0.25f), w[K + k] = f32_to_bf16(0.5f);
  std::vector<uint16_t> y(2);
  ref::gemv_bf16_ref(x.data(), w.data(), nullptr, false, y.data(), 1, 2, K);
  EXPECT_EQ(bf16_to_f32(y[0]), 2.0f);
  EXPECT_EQ(bf16_to_f32(y[1]), 4.0f);
  // silu(2) = 1.7616 -> bf16 1.7578125, times 4 (exact).
  ref::gemv_bf16_ref(x.data(), w.data(), nullptr, true, y.data(), 1, 2, K);
  EXPECT_EQ(bf16_to_f32(y[0]), 7.03125f);
  // In-place residual: y = bf16(r + o).
  std::vector<uint16_t> r = {f32_to_bf16(1.5f), f32_to_bf16(-4.0f)};
  ref::gemv_bf16_ref(x.data(), w.data(), r.data(), false, r.data(), 1, 2, K);
  EXPECT_EQ(bf16_to_f32(r[0]), 3.5f);
  EXPECT_EQ(bf16_to_f32(r[1]), 0.0f);
  // Fused RMSNorm: x all 3 (r = 1/3 with eps 0), norm weights 2: row 0 gives 8 · 3 · 2 · 0.25 / 3.
  const std::vector<uint16_t> x3(K, f32_to_bf16(3.0f)), g(K, f32_to_bf16(2.0f));
  ref::gemv_bf16_norm_ref(x3.data(), g.data(), 0.0f, w.data(), nullptr, false, y.data(), 1, 2, K);
  EXPECT_EQ(bf16_to_f32(y[0]), 4.0f);
  EXPECT_EQ(bf16_to_f32(y[1]), 8.0f);
  // W8A8: codes 2 and 3 over 16 columns, scales 0.5 and 0.25: 16 · 6 · 0.125 = 12.
  std::vector<int8_t> xq(16, 2), wq(16, 3);
  const float sx = 0.5f, sw = 0.25f;
  ref::gemv_w8a8_int8_ref(xq.data(), &sx, wq.data(), &sw, nullptr, false, y.data(), 1, 1, 16);
  EXPECT_EQ(bf16_to_f32(y[0]), 12.0f);
  std::vector<uint8_t> xf(16, 0x40), wf(16, 0x38);  // 2.0 and 1.0 in E4M3
  ref::gemv_w8a8_fp8_ref(xf.data(), &sx, wf.data(), &sw, nullptr, false, y.data(), 1, 1, 16);
  EXPECT_EQ(bf16_to_f32(y[0]), 4.0f);
}

TEST(RunnerGemv, RejectsBadArguments) {
  // The checks fire before any CUDA call, so they run without a GPU.
  const gpu::GemvEpilogue none;
  EXPECT_DEATH(gpu::gemv_bf16(nullptr, nullptr, nullptr, 1, 4, 12, none, nullptr), "multiple of 8");
  EXPECT_DEATH(gpu::gemv_bf16(nullptr, nullptr, nullptr, 9, 4, 16, none, nullptr), "M 9");
  EXPECT_DEATH(gpu::gemv_w8a8_int8(nullptr, nullptr, nullptr, nullptr, nullptr, 1, 4, 24, none, nullptr), "multiple of 16");
  gpu::GemvEpilogue swiglu;
  swiglu.swiglu = true;
  EXPECT_DEATH(gpu::gemv_w8a8_fp8(nullptr, nullptr, nullptr, nullptr, nullptr, 1, 5, 16, swiglu, nullptr), "odd");
  EXPECT_DEATH(gpu::gemv_w8a8_fp8_mma(nullptr, nullptr, nullptr, nullptr, nullptr, 1, 4, 48, none, nullptr),
               "multiple of 64");
  EXPECT_DEATH(gpu::gemv_w8a8_int8_mma(nullptr, nullptr, nullptr, nullptr, nullptr, 9, 4, 64, none, nullptr), "M 9");
  EXPECT_DEATH(gpu::gemv_w8a8_int8_mma(nullptr, nullptr, nullptr, nullptr, nullptr, 1, 5, 64, swiglu, nullptr), "odd");
  gpu::GemvEpilogue norm;
  const uint16_t g[8] = {};
  norm.norm_weight = g;
  EXPECT_DEATH(gpu::gemv_w8a8_fp8(nullptr, nullptr, nullptr, nullptr, nullptr, 1, 4, 16, norm, nullptr), "RMSNorm");
  EXPECT_DEATH(gpu::gemv_w8a8_int8_mma(nullptr, nullptr, nullptr, nullptr, nullptr, 1, 4, 64, norm, nullptr), "RMSNorm");
}

// The direct GEMVs' warps per tile (runner/direct_warps.h), with residencies of the H200's
// 132 SMs (2, 3 and 6 blocks per SM at S = 16, 8 and 4): the fewest waves, the larger S on a
// tie, S < 16 only with two iterations of chunks per warp.
TEST(RunnerGemv, DirectWarpsTakeTheFewestWaves) {
  const gpu::DirectResidency h200{6 * 132, 3 * 132, 2 * 132};
  EXPECT_EQ(gpu::direct_gemv_warps(384, 64, h200), 8);     // q/k/v at 8B: 2 waves at S = 16, 1 at 8 and 4
  EXPECT_EQ(gpu::direct_gemv_warps(256, 64, h200), 16);    // o: one wave at every S
  EXPECT_EQ(gpu::direct_gemv_warps(256, 224, h200), 16);   // down
  EXPECT_EQ(gpu::direct_gemv_warps(1792, 64, h200), 4);    // gate_up: 7, 5 and 3 waves
  EXPECT_EQ(gpu::direct_gemv_warps(1792, 40, h200), 4);    // too few chunks for S = 8 (64), enough for 4 (32)
  EXPECT_EQ(gpu::direct_gemv_warps(1792, 31, h200), 16);   // too few for either
  EXPECT_EQ(gpu::direct_gemv_warps(1, 1, h200), 16);
  EXPECT_EQ(gpu::direct_gemv_warps(384, 64, {0, 0, 2 * 132}), 16);  // no residency reported
}

// ---- GPU: every kernel and epilogue against the reference ------------------------------------

// Tolerance of a plain output (beyond the 1 ulp of expect_bf16_near), derived: the products
// are exact in f32 (bf16 x bf16: 16 significant bits; E4M3 x E4M3: 8 bits, kept normal by the
// kernel's scaling), so the only error before rounding is the f32 summation in the kernel's
// order, |s_f32 - s| <= γ_K Σ|p| ≈ K · 2^-24 · Σ|p| (the reference sums in double). Rounding
// both to bf16 adds at most 1 ulp, except across a power of two, where the ulp doubles; then
// the sums differ by at least half an ulp already, so 1 ulp + 2δ covers it. The W8A8 scaling
// (· sx · sw in double) is the same on both sides.
std::vector<double> f32_sum_tolerance(const std::vector<double>& abs_sum, int K) {
  std::vector<double> tol(abs_sum.size());
  for (size_t i = 0; i < tol.size(); ++i) tol[i] = 2.0 * K * std::ldexp(1.0, -24) * abs_sum[i];
  return tol;
}

// Σ_k |x[m, k] · w[n, k]| · scale[m, n] for values given by value(code).
template <class Code, class Value>
std::vector<double> abs_sums(const std::vector<Code>& x, const std::vector<Code>& w, int M, int N, int ld,
                             Value value, const float* sx = nullptr, const float* sw = nullptr) {
  std::vector<double> out(static_cast<size_t>(M) * N);
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      double s = 0.0;
      for (int k = 0; k < ld; ++k)
        s += std::fabs(static_cast<double>(value(x[static_cast<size_t>(m) * ld + k])) *
                       value(w[static_cast<size_t>(n) * ld + k]));
      out[static_cast<size_t>(m) * N + n] = s * (sx ? double(sx[m]) * sw[n] : 1.0);
    }
  return out;
}

// The tensor-core FP8 GEMV adds 32 exact products per mma.sync with Hopper's ~14-bit adder
// aligned to the largest, then sums the MMA results in f32. test_runner_kernels.cc measured
// cuBLASLt's FP8 GEMM, which keeps up to four MMAs in that adder before promoting to f32,
// within 2^-10 Σ|terms| beyond the f32 bound (2^-12 failed once in 16 000 outputs); this
// kernel promotes after every MMA, so the same bound holds with room to spare.
constexpr double kFp8MmaAddBound = 0x1p-10;

struct Bf16Case {
  static constexpr bool kExact = false;
  int M, N, K;
  std::vector<uint16_t> x, w;  // [M, K], [N, K]
  DeviceBuffer dx, dw;

  Bf16Case(int M_, int N_, int K_, std::mt19937& rng) : M(M_), N(N_), K(K_) {
    x = random_bf16(static_cast<size_t>(M) * K, rng);
    w = random_bf16(static_cast<size_t>(N) * K, rng, 0.05f);
    dx = up(x);
    dw = up(w);
  }
  void gpu(uint16_t* y, const gpu::GemvEpilogue& e) const {
    gpu::gemv_bf16(dx.as<uint16_t>(), dw.as<uint16_t>(), y, M, N, K, e, nullptr);
  }
  void ref(const uint16_t* residual, bool swiglu, uint16_t* y) const {
    ref::gemv_bf16_ref(x.data(), w.data(), residual, swiglu, y, M, N, K);
  }
  std::vector<double> tolerance() const {
    return f32_sum_tolerance(abs_sums(x, w, M, N, K, [](uint16_t v) { return bf16_to_f32(v); }), K);
  }
};

// W8A8 codes [rows, ld] with K real columns and zero padding up to ld (as the engine pads).
// kMma: through the tensor-core GEMVs (ld a multiple of kGemvMmaLd).
template <class Code, bool kMma = false>
struct W8A8Case {
  static constexpr bool kExact = std::is_same_v<Code, int8_t>;
  int M, N, K, ld;
  std::vector<Code> xq, wq;
  std::vector<float> sx, sw;
  DeviceBuffer dxq, dwq, dsx, dsw;

  static Code random_code(std::mt19937& rng) {
    if constexpr (kExact) return static_cast<Code>(static_cast<int>(rng() % 255) - 127);
    for (;;) {  // every E4M3 code but NaN, subnormals included
      const uint8_t c = static_cast<uint8_t>(rng());
      if (!is_fp8_nan(c)) return c;
    }
  }
  static float value(Code c) {
    if constexpr (kExact) return static_cast<float>(c);
    else return fp8e4m3_to_f32(c);
  }
  static constexpr int kLd = kMma ? gpu::kGemvMmaLd : 16;
  W8A8Case(int M_, int N_, int K_, std::mt19937& rng) : M(M_), N(N_), K(K_), ld((K_ + kLd - 1) / kLd * kLd) {
    xq.assign(static_cast<size_t>(M) * ld, Code(0));
    wq.assign(static_cast<size_t>(N) * ld, Code(0));
    for (int m = 0; m < M; ++m)
      for (int k = 0; k < K; ++k) xq[static_cast<size_t>(m) * ld + k] = random_code(rng);
    for (int n = 0; n < N; ++n)
      for (int k = 0; k < K; ++k) wq[static_cast<size_t>(n) * ld + k] = random_code(rng);
    sx.resize(M);
    sw.resize(N);
    for (auto& s : sx) s = 0.001f * (1 + rng() % 50);
    for (auto& s : sw) s = 0.0001f * (1 + rng() % 50);
    dxq = up(xq), dwq = up(wq), dsx = up(sx), dsw = up(sw);
  }
  void gpu(uint16_t* y, const gpu::GemvEpilogue& e) const {
    if constexpr (kExact && kMma)
      gpu::gemv_w8a8_int8_mma(dxq.as<int8_t>(), dsx.as<float>(), dwq.as<int8_t>(), dsw.as<float>(), y, M, N, ld, e,
                              nullptr);
    else if constexpr (kExact)
      gpu::gemv_w8a8_int8(dxq.as<int8_t>(), dsx.as<float>(), dwq.as<int8_t>(), dsw.as<float>(), y, M, N, ld, e, nullptr);
    else if constexpr (kMma)
      gpu::gemv_w8a8_fp8_mma(dxq.as<uint8_t>(), dsx.as<float>(), dwq.as<uint8_t>(), dsw.as<float>(), y, M, N, ld, e,
                             nullptr);
    else
      gpu::gemv_w8a8_fp8(dxq.as<uint8_t>(), dsx.as<float>(), dwq.as<uint8_t>(), dsw.as<float>(), y, M, N, ld, e, nullptr);
  }
  void ref(const uint16_t* residual, bool swiglu, uint16_t* y) const {
    if constexpr (kExact)
      ref::gemv_w8a8_int8_ref(xq.data(), sx.data(), wq.data(), sw.data(), residual, swiglu, y, M, N, ld);
    else
      ref::gemv_w8a8_fp8_ref(xq.data(), sx.data(), wq.data(), sw.data(), residual, swiglu, y, M, N, ld);
  }
  std::vector<double> tolerance() const {
    const std::vector<double> abs_sum = abs_sums(xq, wq, M, N, ld, value, sx.data(), sw.data());
    std::vector<double> tol = f32_sum_tolerance(abs_sum, ld);
    if (kMma && !kExact)  // each FP8 MMA's aligned ~14-bit adds (the bound is derived above)
      for (size_t i = 0; i < tol.size(); ++i) tol[i] += kFp8MmaAddBound * abs_sum[i];
    return tol;
  }
};

// The plain product against the reference, then each epilogue against the reference's
// epilogue (runner/gemv_ref.h) applied to the kernel's own plain product: the kernel sums in
// the same order with or without an epilogue, so residual adds must match bit for bit and
// swiglu within 2 ulps (expf vs the host's exp can differ by 2 f32 ulps, which may flip the
// bf16 rounding of silu and, through it, of the product). Exact formats also match the full
// reference with the epilogue.
template <class Case>
void check_all_epilogues(const Case& c, std::mt19937& rng) {
  const int M = c.M, N = c.N;
  const size_t n_out = static_cast<size_t>(M) * N;
  std::vector<uint16_t> ref(n_out);
  c.ref(nullptr, false, ref.data());
  DeviceBuffer dy(n_out * 2);
  c.gpu(dy.as<uint16_t>(), {});
  const std::vector<uint16_t> plain = dy.to_host<uint16_t>();
  if (Case::kExact) EXPECT_EQ(plain, ref) << "plain";
  else expect_bf16_near(plain, ref, 1.0, c.tolerance(), "plain");
  c.gpu(dy.as<uint16_t>(), {});
  EXPECT_EQ(dy.to_host<uint16_t>(), plain) << "not deterministic";

  const std::vector<uint16_t> residual = random_bf16(n_out, rng, 2.0f);
  std::vector<uint16_t> want(n_out), full(n_out);
  ref::gemv_epilogue_ref(plain.data(), residual.data(), false, want.data(), M, N);
  DeviceBuffer in_place = up(residual), separate = up(residual);
  gpu::GemvEpilogue add;
  add.residual = in_place.as<uint16_t>();
  c.gpu(in_place.as<uint16_t>(), add);
  EXPECT_EQ(in_place.to_host<uint16_t>(), want) << "residual in place";
  add.residual = separate.as<uint16_t>();
  c.gpu(dy.as<uint16_t>(), add);
  EXPECT_EQ(dy.to_host<uint16_t>(), want) << "residual";
  EXPECT_EQ(separate.to_host<uint16_t>(), residual) << "the residual input was written";
  if (Case::kExact) {
    c.ref(residual.data(), false, full.data());
    EXPECT_EQ(want, full) << "residual vs the full reference";
  }

  if (N % 2 != 0) return;
  std::vector<uint16_t> want_act(n_out / 2), full_act(n_out / 2);
  ref::gemv_epilogue_ref(plain.data(), nullptr, true, want_act.data(), M, N);
  DeviceBuffer act(n_out);  // [M, N/2] bf16
  gpu::GemvEpilogue swiglu;
  swiglu.swiglu = true;
  c.gpu(act.as<uint16_t>(), swiglu);
  const std::vector<uint16_t> got_act = act.to_host<uint16_t>();
  expect_bf16_near(got_act, want_act, 2.0, {}, "swiglu");
  if (Case::kExact) {
    c.ref(nullptr, true, full_act.data());
    expect_bf16_near(got_act, full_act, 2.0, {}, "swiglu vs the full reference");
  }
}

template <class Case>
void check_case(int M, int N, int K, uint32_t seed) {
  SCOPED_TRACE(::testing::Message() << "M " << M << " N " << N << " K " << K << " seed " << seed);
  std::mt19937 rng(seed);
  const Case c(M, N, K, rng);
  check_all_epilogues(c, rng);
}

// Small N with every K and M; the large N (the CPU reference's cost) with the shortest and a
// Llama-sized K only.
template <class Case>
void check_shapes(std::initializer_list<int> ks, int seed_offset) {
  const auto seed = [&](int M, int N, int K) { return kSeed + seed_offset + M * 131 + N * 7 + K; };
  for (int K : ks)
    for (int N : kSmallNs)
      for (int M : kMs) check_case<Case>(M, N, K, seed(M, N, K));
  for (int K : {*ks.begin(), 4096 + 16}) {
    for (int M : kMs) check_case<Case>(M, kLargeN, K, seed(M, kLargeN, K));
    for (int M : {1, 2}) check_case<Case>(M, kLargerN, K, seed(M, kLargerN, K));
  }
}

TEST(RunnerGemv, Bf16MatchesReference) {
  LLMQ_REQUIRE_GPU();
  check_shapes<Bf16Case>({8, 48, 4096 + 16, 14336}, 0);
}

// The skinny BF16 GEMM (runner/gemm_skinny.h) against the GEMV reference, with the plain
// product's bound (f32 sums in another order, then bf16): M across its three token tilings
// (9, 16 | 17, 32 | 33, 64) and below them (1), N with a partial last column of 128 rows (200,
// 17 * 128 + 5), K = 64 (one stage) to 4096 + 64; K split 1, 3 and 8 ways and by the default
// rule (each deterministic: the splits are added in a fixed order), in blocks of 128 and of 64
// weight rows, in stages of 64 and (where K allows) 128 k.
TEST(RunnerGemv, SkinnyBf16MatchesReference) {
  LLMQ_REQUIRE_GPU();
  const size_t forced = gpu::skinny_split_workspace_bytes(gpu::kSkinnyMaxM, 17 * 128 + 5, 8);  // the largest N
  DeviceBuffer ws(std::max(gpu::skinny_workspace_bytes(gpu::kSkinnyMaxM), forced));
  LLMQ_CUDA_CHECK(cudaMemset(ws.as(), 0, ws.bytes()));
  for (int M : {1, 9, 16, 17, 32, 33, 64})
    for (auto [N, K] : {std::pair{200, 64}, std::pair{128, 4096 + 64}, std::pair{17 * 128 + 5, 1024}}) {
      SCOPED_TRACE(::testing::Message() << "M " << M << " N " << N << " K " << K << " seed " << kSeed);
      std::mt19937 rng(kSeed + M * 7 + N + K);
      const Bf16Case c(M, N, K, rng);
      std::vector<uint16_t> want(static_cast<size_t>(M) * N);
      c.ref(nullptr, false, want.data());
      const std::vector<double> tol = c.tolerance();
      DeviceBuffer dy(want.size() * 2);
      for (int chunk_k : {64, 128})
        for (int block_n : {128, 64})
          for (int splits : {0, 1, 3, 8}) {
            if (K % chunk_k != 0) continue;
            SCOPED_TRACE(::testing::Message() << "chunk_k " << chunk_k << " block_n " << block_n << " splits " << splits);
            LLMQ_CUDA_CHECK(cudaMemset(dy.as(), 0xFF, dy.bytes()));
            gpu::gemm_bf16_skinny(c.dx.as<uint16_t>(), c.dw.as<uint16_t>(), dy.as<uint16_t>(), M, N, K, ws.as(),
                                  ws.bytes(), nullptr, splits, block_n, chunk_k);
            const std::vector<uint16_t> got = dy.to_host<uint16_t>();
            expect_bf16_near(got, want, 1.0, tol, "skinny");
            gpu::gemm_bf16_skinny(c.dx.as<uint16_t>(), c.dw.as<uint16_t>(), dy.as<uint16_t>(), M, N, K, ws.as(),
                                  ws.bytes(), nullptr, splits, block_n, chunk_k);
            EXPECT_EQ(dy.to_host<uint16_t>(), got) << "not deterministic";
          }
    }
}

// The skinny GEMM's residual and SwiGLU epilogues, as check_all_epilogues checks the GEMVs':
// against the reference's epilogue on the kernel's own plain product, in the single-split
// store (gate and up rows in lanes 4 apart) and the split-K tail (the last block's sums), in
// blocks of 128 and 64 weight rows; N even with a partial last column.
struct SkinnyCase : Bf16Case {
  const DeviceBuffer* ws;
  int splits, block_n;
  SkinnyCase(int M_, int N_, int K_, std::mt19937& rng, const DeviceBuffer& ws_, int splits_, int block_n_)
      : Bf16Case(M_, N_, K_, rng), ws(&ws_), splits(splits_), block_n(block_n_) {}
  void gpu(uint16_t* y, const gpu::GemvEpilogue& e) const {
    gpu::gemm_bf16_skinny(dx.as<uint16_t>(), dw.as<uint16_t>(), y, M, N, K, ws->as(), ws->bytes(), nullptr, splits,
                          block_n, 64, e);
  }
};

TEST(RunnerGemv, SkinnyEpiloguesMatchReference) {
  LLMQ_REQUIRE_GPU();
  const int N = 17 * 128 + 6, K = 1024;
  DeviceBuffer ws(gpu::skinny_split_workspace_bytes(gpu::kSkinnyMaxM, N, 3));
  LLMQ_CUDA_CHECK(cudaMemset(ws.as(), 0, ws.bytes()));
  for (int M : {5, 16, 33})
    for (int splits : {1, 3})
      for (int block_n : {128, 64}) {
        SCOPED_TRACE(::testing::Message() << "M " << M << " splits " << splits << " block_n " << block_n);
        std::mt19937 rng(kSeed + M * 11 + splits * 3 + block_n);
        check_all_epilogues(SkinnyCase(M, N, K, rng, ws, splits, block_n), rng);
      }
}

// The skinny GEMM's shapes and default K splits: the count that best evens the blocks over
// the SMs, less what more partial sums cost (fewer splits at more rows), with at least 4
// stages each, at most 4 blocks per SM, within the workspace; and the stage depth.
TEST(RunnerGemv, SkinnySplitsFillTheGpu) {
  EXPECT_TRUE(gpu::skinny_bf16_supported(64, 1, 64));
  EXPECT_FALSE(gpu::skinny_bf16_supported(65, 128, 64));
  EXPECT_FALSE(gpu::skinny_bf16_supported(16, 128, 96));
  const size_t ample = size_t(1) << 30;
  EXPECT_EQ(gpu::skinny_splits(64, 28672, 4096, 132, ample), 1);  // gate_up: 224 columns
  EXPECT_EQ(gpu::skinny_splits(16, 6144, 4096, 132, ample), 8);   // q/k/v: 48 columns, 384 blocks: 3 per SM
  EXPECT_EQ(gpu::skinny_splits(64, 6144, 4096, 132, ample), 5);   // at 64 rows 240 blocks, fewer partials
  EXPECT_EQ(gpu::skinny_splits(64, 4096, 14336, 132, ample), 4);  // down: 32 columns, 128 blocks
  EXPECT_EQ(gpu::skinny_splits(64, 4096, 512, 132, ample), 2);           // 8 stages of 64: 4 each
  EXPECT_EQ(gpu::skinny_splits(64, 4096, 512, 132, ample, 128, 128), 1);  // 4 stages of 128
  EXPECT_EQ(gpu::skinny_splits(64, 4096, 4096, 132, 0), 1);  // no workspace
  EXPECT_EQ(gpu::skinny_splits(64, 4096, 4096, 132, gpu::skinny_split_workspace_bytes(64, 4096, 3)), 3);  // room for 3
  EXPECT_EQ(gpu::skinny_splits(64, 6144, 4096, 132, ample, 64), 4);  // 96 columns of 64 rows
  EXPECT_EQ(gpu::skinny_splits(64, 28672, 4096, 132, ample, 64), 1);
  // Stages of 128 k where every split keeps 8 of them: not q/k/v's 8 splits of 4096.
  EXPECT_EQ(gpu::skinny_chunk_k(16, 6144, 4096, 132, ample), 64);
  EXPECT_EQ(gpu::skinny_splits(16, 6144, 4096, 132, ample), 8);
  EXPECT_EQ(gpu::skinny_chunk_k(16, 4096, 4096, 132, ample), 128);  // o: 4 splits of 8 stages
  EXPECT_EQ(gpu::skinny_chunk_k(16, 4096, 14336, 132, ample), 128);
  EXPECT_EQ(gpu::skinny_chunk_k(16, 28672, 4096, 132, ample), 128);
  EXPECT_EQ(gpu::skinny_chunk_k(16, 4096, 4096 + 64, 132, ample), 64);  // K not a multiple of 128
  EXPECT_EQ(gpu::skinny_chunk_k(16, 4096, 4096, 132, ample, 128, 8), 64);  // forced 8 splits
}

// The BF16 GEMV with the RMSNorm fused in (GemvEpilogue::norm_weight) against
// gemv_bf16_norm_ref. Bound: the f32 sum of the exact products x · g · w (f32_sum_tolerance of
// their absolute sum) times r, plus r's own error times r Σ|x g w|: Σ x² of positive terms in
// f32 is within K 2^-24 relative, the sqrt halves that, and /K, + eps, sqrt, the division
// and the final product by r add a rounding each (5 · 2^-24 covers them). SwiGLU is checked
// against the reference's epilogue applied to the kernel's own normed product (2 ulps, as
// check_all_epilogues).
void check_norm_case(int M, int N, int K, uint32_t seed) {
  SCOPED_TRACE(::testing::Message() << "M " << M << " N " << N << " K " << K << " seed " << seed);
  std::mt19937 rng(seed);
  const Bf16Case c(M, N, K, rng);
  const std::vector<uint16_t> g = random_bf16(static_cast<size_t>(K), rng, 1.0f);
  const float eps = 1e-5f;
  DeviceBuffer dg = up(g), dy(static_cast<size_t>(M) * N * 2);
  gpu::GemvEpilogue e;
  e.norm_weight = dg.as<uint16_t>();
  e.norm_eps = eps;
  c.gpu(dy.as<uint16_t>(), e);
  const std::vector<uint16_t> got = dy.to_host<uint16_t>();
  std::vector<uint16_t> want(got.size());
  ref::gemv_bf16_norm_ref(c.x.data(), g.data(), eps, c.w.data(), nullptr, false, want.data(), M, N, K);
  // The kernel's operands as doubles: x · g (exact) against w.
  std::vector<double> xg(c.x.size()), wd(c.w.size());
  for (size_t i = 0; i < xg.size(); ++i) xg[i] = double(bf16_to_f32(c.x[i])) * bf16_to_f32(g[i % K]);
  for (size_t i = 0; i < wd.size(); ++i) wd[i] = bf16_to_f32(c.w[i]);
  const std::vector<double> abs_sum = abs_sums(xg, wd, M, N, K, [](double v) { return v; });
  std::vector<double> tol = f32_sum_tolerance(abs_sum, K);
  const double u = std::ldexp(1.0, -24);
  for (int m = 0; m < M; ++m) {
    double sum_sq = 0.0;
    for (int k = 0; k < K; ++k) sum_sq += std::pow(bf16_to_f32(c.x[static_cast<size_t>(m) * K + k]), 2);
    const double r = 1.0 / std::sqrt(sum_sq / K + eps);
    for (int n = 0; n < N; ++n) {
      const size_t i = static_cast<size_t>(m) * N + n;
      tol[i] = r * (tol[i] + (K / 2.0 + 5.0) * u * abs_sum[i]);
    }
  }
  expect_bf16_near(got, want, 1.0, tol, "normed");
  c.gpu(dy.as<uint16_t>(), e);
  EXPECT_EQ(dy.to_host<uint16_t>(), got) << "not deterministic";
  if (N % 2 != 0) return;
  std::vector<uint16_t> want_act(got.size() / 2);
  ref::gemv_epilogue_ref(got.data(), nullptr, true, want_act.data(), M, N);
  DeviceBuffer act(got.size());
  e.swiglu = true;
  c.gpu(act.as<uint16_t>(), e);
  expect_bf16_near(act.to_host<uint16_t>(), want_act, 2.0, {}, "normed swiglu");
}

TEST(RunnerGemv, Bf16NormMatchesReference) {
  LLMQ_REQUIRE_GPU();
  for (int K : {8, 48, 4096 + 16})
    for (int N : {2, 17, 118})
      for (int M : kMs) check_norm_case(M, N, K, kSeed + 5 + M * 131 + N * 7 + K);
  for (int M : {1, 2, 8}) check_norm_case(M, kLargeN, 4096, kSeed + 6 + M);
}

// W8A8 K = 40 pads to ld = 48 with zero codes.
TEST(RunnerGemv, Int8IsBitExact) {
  LLMQ_REQUIRE_GPU();
  check_shapes<W8A8Case<int8_t>>({16, 40, 4096 + 16, 14336}, 1);
}

TEST(RunnerGemv, Fp8MatchesReference) {
  LLMQ_REQUIRE_GPU();
  check_shapes<W8A8Case<uint8_t>>({16, 40, 4096 + 16, 14336}, 2);
}

// Both FP8 GEMVs, for the exactness tests below: the tensor-core one where the device has FP8
// tensor cores and rows are whole 64-code chunks.
using Fp8Gemv = void (*)(const uint8_t*, const float*, const uint8_t*, const float*, uint16_t*, int, int, int,
                         const gpu::GemvEpilogue&, cudaStream_t);
struct Fp8Kernel { const char* name; Fp8Gemv run; };
std::vector<Fp8Kernel> fp8_kernels(int ld) {
  std::vector<Fp8Kernel> k{{"cuda cores", gpu::gemv_w8a8_fp8}};
  if (gpu::gemv_fp8_mma_supported(ld)) k.push_back({"tensor cores", gpu::gemv_w8a8_fp8_mma});
  return k;
}

// The tensor-core GEMVs: K from one 64-code chunk to Llama's 14336 (rows of 40 codes pad to
// 64; 4096 + 64 leaves the warps a partial last round of chunks).
TEST(RunnerGemv, Int8MmaIsBitExact) {
  LLMQ_REQUIRE_GPU();
  check_shapes<W8A8Case<int8_t, true>>({64, 40, 4096 + 64, 14336}, 4);
}

TEST(RunnerGemv, Fp8MmaMatchesReference) {
  LLMQ_REQUIRE_GPU();
  if (!gpu::gemv_fp8_mma_supported(gpu::kGemvMmaLd)) GTEST_SKIP() << "FP8 tensor cores need sm_89+";
  check_shapes<W8A8Case<uint8_t, true>>({64, 40, 4096 + 64, 14336}, 3);
}

// The engine's choice of decode GEMV (gemv.h: w8a8_decode_gemv): FP8 on tensor cores from
// kFp8MmaMinM rows where the device and the row length allow, the CUDA-core kernels otherwise,
// none past kGemvMaxM or for rows no kernel takes.
TEST(RunnerGemv, W8A8DecodeChoice) {
  LLMQ_REQUIRE_GPU();
  using gpu::W8A8Gemv;
  const W8A8Gemv fp8_mma = gpu::gemv_fp8_mma_supported(4096) ? W8A8Gemv::kTensorCore : W8A8Gemv::kCudaCore;
  EXPECT_EQ(gpu::w8a8_decode_gemv(true, 1, 4096), W8A8Gemv::kCudaCore);
  for (int M = gpu::kFp8MmaMinM; M <= gpu::kGemvMaxM; ++M) {
    EXPECT_EQ(gpu::w8a8_decode_gemv(true, M, 4096), fp8_mma) << "M " << M;
    EXPECT_EQ(gpu::w8a8_decode_gemv(true, M, 4096 + 16), W8A8Gemv::kCudaCore) << "M " << M;
    EXPECT_EQ(gpu::w8a8_decode_gemv(false, M, 4096), W8A8Gemv::kCudaCore) << "M " << M;
  }
  EXPECT_EQ(gpu::w8a8_decode_gemv(true, gpu::kGemvMaxM + 1, 4096), W8A8Gemv::kNone);
  EXPECT_EQ(gpu::w8a8_decode_gemv(false, gpu::kGemvMaxM + 1, 4096), W8A8Gemv::kNone);
  EXPECT_EQ(gpu::w8a8_decode_gemv(false, 1, 40), W8A8Gemv::kNone);
}

// Every E4M3 code through the kernel's conversion on each side of the product, at every byte
// position of a 16-byte chunk: activations all 1.0 (code 0x38) against weight row n holding
// code n in column n, then activations holding every code against one-hot weight rows. Each
// output is one code's value, exactly (subnormal codes included, which checks the device
// keeps f32 subnormals).
TEST(RunnerGemv, Fp8EveryCodeIsExactOnTheDevice) {
  LLMQ_REQUIRE_GPU();
  const int codes = 256, M = 1;
  std::vector<uint8_t> all(codes), one_hot_rows(static_cast<size_t>(codes) * codes, 0), x_ones(codes, 0x38);
  for (int c = 0; c < codes; ++c) all[c] = is_fp8_nan(static_cast<uint8_t>(c)) ? 0 : static_cast<uint8_t>(c);
  for (int n = 0; n < codes; ++n) one_hot_rows[static_cast<size_t>(n) * codes + n] = 0x38;
  std::vector<uint8_t> w_diagonal(static_cast<size_t>(codes) * codes, 0);  // row n: code n in column n
  for (int n = 0; n < codes; ++n) w_diagonal[static_cast<size_t>(n) * codes + n] = all[n];
  const std::vector<float> one(codes, 1.0f);
  DeviceBuffer ds = up(one), dy(codes * 2);
  struct Side { const char* name; const std::vector<uint8_t>& x; const std::vector<uint8_t>& w; };
  for (const Side& side : {Side{"weights", x_ones, w_diagonal}, Side{"activations", all, one_hot_rows}}) {
    SCOPED_TRACE(side.name);
    std::vector<uint16_t> ref(codes);
    ref::gemv_w8a8_fp8_ref(side.x.data(), one.data(), side.w.data(), one.data(), nullptr, false, ref.data(), M, codes,
                           codes);
    DeviceBuffer dx = up(side.x), dw = up(side.w);
    for (const Fp8Kernel& kernel : fp8_kernels(codes)) {
      SCOPED_TRACE(kernel.name);
      kernel.run(dx.as<uint8_t>(), ds.as<float>(), dw.as<uint8_t>(), ds.as<float>(), dy.as<uint16_t>(), M, codes, codes,
                 {}, nullptr);
      const std::vector<uint16_t> got = dy.to_host<uint16_t>();
      EXPECT_EQ(got, ref);
      for (int c = 0; c < codes; ++c) {
        if (is_fp8_nan(static_cast<uint8_t>(c))) continue;
        EXPECT_EQ(bf16_to_f32(got[c]), fp8e4m3_to_f32(static_cast<uint8_t>(c))) << "code " << c;  // -0 sums to +0
      }
    }
  }
}

// Products of the smallest codes are 2^-18 · 2^-120 in the kernel, so products and partial
// sums live in the f32 subnormal range, where they are still exact (multiples of 2^-138);
// flushing subnormals to zero anywhere would give 0. Every sum here is exact in f32, so the
// result equals the reference bit for bit. The tensor-core GEMV (K = 64, 4096) multiplies the
// codes' own values, products 2^-18 · 1..21 that a 14-bit adder also sums exactly per MMA
// (32 of them stay below 2^10 · 2^-18): it must match bit for bit too, and E4M3 subnormal
// codes flushed in the tensor cores would give 0.
TEST(RunnerGemv, Fp8SubnormalRangeSumsAreExact) {
  LLMQ_REQUIRE_GPU();
  const int M = 3, N = 5;
  for (int K : {16, 64, 4096, 4096 + 16}) {
    SCOPED_TRACE(::testing::Message() << "K " << K);
    // x rows: all +2^-9 (0x01); all -2^-9 (0x81); 2^-9 and 7 · 2^-9 (0x07) alternating.
    // w row n: code 0x01 + (n % 3) (1, 2, 3 · 2^-9), row 4 negated.
    std::vector<uint8_t> x(static_cast<size_t>(M) * K), w(static_cast<size_t>(N) * K);
    for (int k = 0; k < K; ++k) {
      x[k] = 0x01, x[K + k] = 0x81, x[2 * K + k] = k % 2 ? 0x07 : 0x01;
      for (int n = 0; n < N; ++n) w[static_cast<size_t>(n) * K + k] = static_cast<uint8_t>((n == 4 ? 0x80 : 0) | (1 + n % 3));
    }
    const std::vector<float> sx(M, 1.0f), sw(N, 1.0f);
    std::vector<uint16_t> ref(static_cast<size_t>(M) * N);
    ref::gemv_w8a8_fp8_ref(x.data(), sx.data(), w.data(), sw.data(), nullptr, false, ref.data(), M, N, K);
    DeviceBuffer dx = up(x), dw = up(w), dsx = up(sx), dsw = up(sw), dy(ref.size() * 2);
    for (uint16_t v : ref) ASSERT_NE(bf16_to_f32(v), 0.0f);  // the check below cannot pass on zeros
    for (const Fp8Kernel& kernel : fp8_kernels(K)) {
      SCOPED_TRACE(kernel.name);
      kernel.run(dx.as<uint8_t>(), dsx.as<float>(), dw.as<uint8_t>(), dsw.as<float>(), dy.as<uint16_t>(), M, N, K, {},
                 nullptr);
      EXPECT_EQ(dy.to_host<uint16_t>(), ref);
    }
  }
}

}  // namespace
}  // namespace llmq
