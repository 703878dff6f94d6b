// Decode GEMV kernels (runner/gemv.h) for BF16, FP8 E4M3 and INT8 weights, M <= 8 token rows.
//
// Decode linears are bound by reading the weights once; the work per weight byte is M
// multiply-adds. Layout of the work:
//   - a block owns R consecutive output rows and all of K; its kWarps warps split K by
//     16-byte chunks (chunk c goes to thread c % kThreads), so a warp reads 512 contiguous
//     bytes of each row per step;
//   - a step of a thread is kStepLoads 16-byte weight chunks (R rows x 8 / R chunks) and the
//     activation chunks they meet. FP8 and INT8 (the ring path) copy them with cp.async into
//     the thread's own slots of a two-stage shared-memory ring: step s + 1 is in flight while
//     step s is summed, so each thread keeps 8-16 weight copies in flight (64-192 KiB per SM)
//     at any M, and they hold no registers. Weights go to L2 only (.cg, read once),
//     activations through L1 (.ca: every block of the SM reads them). Each thread reads only
//     the slots it filled, so the pipeline needs no block barrier. (With loads into
//     registers, ptxas issued only 2-5 of a step's 8 loads before the arithmetic that waits
//     for them and the rest after it: at M = 1, 2 and some larger M a step cost two to five
//     dependent HBM round trips.);
//   - BF16 (the register path) loads a step's weights into registers instead, streamed past
//     L1 (ld.global.nc.L1::no_allocate), all issued before any use, and activations with
//     __ldg; no dynamic shared memory. On an H200 (synthetic Llama-3.1-8B, batch-1 decode
//     ms/step) the ring took fp8 3.644 -> 3.402 and int8 3.014 -> 2.960 but bf16 4.418 ->
//     4.491, so BF16 keeps this path with its R as measured: 4 for M <= 2, else 8;
//   - each activation chunk serves R weight rows, so converting it costs 1/R per multiply-add.
//     On the ring path R = 8, except at M <= 2 while N / 4 blocks still fit in one wave of
//     resident blocks (small N: more blocks to spread over the SMs, e.g. N = 1024 gives 256).
//     Past one wave, R = 4 would leave a partial second wave of blocks that start late and
//     end the kernel with few copies in flight (qkv 6144 x 4096 at M = 1: 1536 blocks for
//     660 slots);
//   - on the ring path the epilogue's global reads (W8A8 scales, the residual) are issued at
//     the start, next to the first copies, so they add no dependent memory round trip after
//     the sum; the register path issues them after the sum (at the start, BF16 M = 1 spilled);
//   - per-thread partial sums are reduced over the warp with V - 1 shuffles for V values
//     (halves traded between partners), then over the warps in shared memory in a fixed
//     order (deterministic), and one thread per output (per swiglu pair) applies the scale
//     and the epilogue and stores.
//   - the BF16 kernel may apply the RMSNorm before it (GemvEpilogue::norm_weight): a block
//     owns all of K, so it meets every activation of its tokens anyway; each thread multiplies
//     them by the norm weights and adds their squares, which are reduced beside the products,
//     and the finishing thread multiplies its sum by 1 / rms.
// Thread t sums chunks t, t + kThreads, ... of a row in order, on either path and for either
// R; only the shuffle tree depends on R (any summation order keeps the f32 bound of gemv.h).
// FP8 avoids cvt (quarter-rate): codes become f32 with shifts and masks (gemv.h's trick,
// value · 2^-120; about 2.75 instructions per code); activations are multiplied back to their
// value (one exact FMUL), so products are value products · 2^-120 (see Fp8Format for why
// that is exact); INT8 uses dp4a on exact int32 sums, BF16 is a shift or a mask to f32.
#include <cuda_runtime.h>

#include <type_traits>

#include "core/numeric.h"
#include "runner/cuda_check.h"
#include "runner/device_attribute.h"
#include "runner/gemv.h"
#include "runner/mma.cuh"
#include "runner/epilogue.cuh"
#include "runner/pdl.cuh"

namespace llmq::gpu {
namespace {

constexpr int kWarps = 4;    // warps per block, splitting K
constexpr int kThreads = kWarps * 32;
constexpr int kStepLoads = 8;  // 16-byte weight copies per thread per step (R rows x 8 / R chunks)
constexpr int kStages = 2;     // steps in the shared-memory ring: step s + 1 is in flight during step s

struct GemvArgs {
  const void* x;          // [M, row_bytes] activations
  const float* sx;        // [M] (W8A8)
  const void* w;          // [N, row_bytes] weights
  const float* sw;        // [N] (W8A8)
  bf16* y;                // [M, N] or [M, N/2] (swiglu)
  const bf16* residual;   // [M, N] or null; may alias y
  bool swiglu;
  int N;
  int row_bytes;          // a multiple of 16
  const uint16_t* norm_w; // [K] bf16 or null: GemvEpilogue::norm_weight (register path only)
  float norm_eps;
};

// cp.async of 16 bytes into shared memory (the pipeline at the top of the file) with the
// cache hints of each operand; committed and waited for with runner/mma.cuh's cp_async_commit
// and cp_async_wait (only this thread reads its slots: no barrier). ptxas keeps the copies
// ahead of the wait that precedes their use.
// Weights are read exactly once: L2 only (.cg), whole 256-byte sectors requested.
__device__ __forceinline__ void copy_streaming(uint4* dst, const uint4* src) {
  asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16;" ::"r"(smem_addr(dst)), "l"(src) : "memory");
}
// Activations: every block of the SM reads them, so they are kept in L1 too (.ca).
__device__ __forceinline__ void copy_cached(uint4* dst, const uint4* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 16;" ::"r"(smem_addr(dst)), "l"(src) : "memory");
}

__device__ __forceinline__ uint32_t word(const uint4& u, int j) { return j == 0 ? u.x : j == 1 ? u.y : j == 2 ? u.z : u.w; }

// ---- formats: how one 32-bit word of weights meets one word of activations -------------------

// kRing: the main loop streams through the cp.async ring (else registers; top of the file).
struct Bf16Format {
  static constexpr bool kScaled = false;  // no sx, sw
  static constexpr bool kRing = false;    // the ring was slower for BF16
  using Acc = float;
  struct Pair { float lo, hi; };
  using XWord = Pair;
  using WWord = Pair;
  // bf16 is the top half of an f32: one shift or mask per value.
  __device__ static Pair unpack(uint32_t u) { return {__uint_as_float(u << 16), __uint_as_float(u & 0xFFFF0000u)}; }
  __device__ static XWord x_word(uint32_t u) { return unpack(u); }
  __device__ static WWord w_word(uint32_t u) { return unpack(u); }
  __device__ static void mac(Acc& acc, const WWord& w, const XWord& x) {
    acc = fmaf(w.lo, x.lo, acc);
    acc = fmaf(w.hi, x.hi, acc);
  }
  __device__ static float output(Acc acc, float, float) { return acc; }
};

struct Fp8Format {
  static constexpr bool kScaled = true;
  static constexpr bool kRing = true;
  using Acc = float;
  struct Quad { float v[4]; };
  using XWord = Quad;
  using WWord = Quad;
  // Weights stay value · 2^-120 (gemv.h's trick); activations are multiplied back to their
  // value (2^120 is an f32, the product is exact and normal: |value| >= 2^-9). Each product
  // is then value(x) · value(w) · 2^-120, exact in the FMA: E4M3 values are multiples of 2^-9,
  // so products and every partial sum are multiples of 2^-138, and f32 holds each such
  // multiple below 2^-114 exactly (its spacing there is at most 2^-138, subnormals included);
  // from 2^-114 up the numbers are normal and round as at any other power-of-two scale. So the
  // sums are the f32 sums of the exact products, bit for bit those of the former value · 2^12
  // scaling, with one FMUL per activation code instead of two. This needs f32 subnormals kept
  // (no -ftz / --use_fast_math), as the trick does for subnormal codes; the tests check both.
  static constexpr float kXUp = 0x1p120f;
  static constexpr double kAccToValue = 0x1p120;  // acc = Σ value products · 2^-120
  static_assert(kFp8TrickExponent == -120, "kXUp and kAccToValue undo the trick's 2^-120");
  __device__ static XWord x_word(uint32_t u) {
    Quad q = w_word(u);
    for (int i = 0; i < 4; ++i) q.v[i] *= kXUp;
    return q;
  }
  __device__ static WWord w_word(uint32_t u) {
    Quad q;
    for (int i = 0; i < 4; ++i) q.v[i] = __uint_as_float(fp8x4_scaled_f32_bits(u, i));
    return q;
  }
  __device__ static void mac(Acc& acc, const WWord& w, const XWord& x) {
    for (int i = 0; i < 4; ++i) acc = fmaf(w.v[i], x.v[i], acc);
  }
  __device__ static float output(Acc acc, float sx, float sw) {
    return static_cast<float>(static_cast<double>(acc) * kAccToValue * sx * static_cast<double>(sw));
  }
};

struct Int8Format {
  static constexpr bool kScaled = true;
  static constexpr bool kRing = true;
  using Acc = int;
  using XWord = int;
  using WWord = int;
  __device__ static XWord x_word(uint32_t u) { return static_cast<int>(u); }
  __device__ static WWord w_word(uint32_t u) { return static_cast<int>(u); }
  __device__ static void mac(Acc& acc, WWord w, XWord x) { acc = __dp4a(w, x, acc); }
  // The order of scale_rows_cols_i32, so the result is bit-equal to cuBLAS + scaling.
  __device__ static float output(Acc acc, float sx, float sw) {
    return static_cast<float>(static_cast<double>(acc) * sx * static_cast<double>(sw));
  }
};

// ---- reduction -------------------------------------------------------------------------------

__host__ __device__ constexpr int pow2_at_least(int v) { return v <= 1 ? 1 : 2 * pow2_at_least((v + 1) / 2); }

// One step of the warp sum of V values: lanes trade the half they do not keep with the
// partner `off` lanes away (H shuffles instead of 2H), then the next step halves again.
// Afterwards lane l holds the warp total of value l / (32 / V).
template <int H, class T, int V>
__device__ __forceinline__ void warp_sum_spread(T (&v)[V], int lane, int off) {
  if constexpr (H >= 1) {
    const bool upper = (lane & off) != 0;
#pragma unroll
    for (int i = 0; i < H; ++i) {
      const T send = upper ? v[i] : v[i + H];
      const T keep = upper ? v[i + H] : v[i];
      v[i] = keep + __shfl_xor_sync(0xFFFFFFFFu, send, off);
    }
    warp_sum_spread<H / 2>(v, lane, off / 2);
  } else {
    for (; off >= 1; off /= 2) v[0] += __shfl_xor_sync(0xFFFFFFFFu, v[0], off);
  }
}

// ---- epilogue --------------------------------------------------------------------------------

// What the thread that finishes an output (plain, residual) or a swiglu pair reads from
// global memory for it, loaded at the start of the kernel.
struct EpilogueIn {
  float sx = 1.0f, sw0 = 1.0f, sw1 = 1.0f;  // W8A8: sx[m], sw[n] (sw[n + 1]: the pair's up row)
  bf16 residual = 0;                         // residual[m, n]
};

// Thread t finishes output t = (m, r) of the block's M x R, or with swiglu pair t = (m, p),
// rows (2p, 2p + 1); threads past those, and outputs past N, do nothing.
template <int M, int kRows>
__device__ __forceinline__ bool finisher(const GemvArgs& a, int n0, int& m, int& n) {
  const int t = threadIdx.x;
  if (a.swiglu) {
    constexpr int kPairs = kRows / 2;
    if (t >= M * kPairs) return false;
    m = t / kPairs, n = n0 + 2 * (t % kPairs);  // N even: n < N means n + 1 < N
  } else {
    if (t >= M * kRows) return false;
    m = t / kRows, n = n0 + t % kRows;
  }
  return n < a.N;
}

template <class F, int M, int kRows>
__device__ __forceinline__ EpilogueIn epilogue_inputs(const GemvArgs& a, int n0) {
  EpilogueIn in;
  int m = 0, n = 0;
  if (!finisher<M, kRows>(a, n0, m, n)) return in;
  if constexpr (F::kScaled) {
    in.sx = a.sx[m];
    in.sw0 = a.sw[n];
    if (a.swiglu) in.sw1 = a.sw[n + 1];
  }
  // A plain load: y may alias residual, and this thread is the one that later writes y[m, n].
  if (a.residual) in.residual = a.residual[static_cast<int64_t>(m) * a.N + n];
  return in;
}

// Σ over the warps of value i, in warp order.
template <class Acc, int kValues>
__device__ __forceinline__ Acc block_total(const Acc (&sums)[kWarps][kValues], int i) {
  Acc total = sums[0][i];
#pragma unroll
  for (int k = 1; k < kWarps; ++k) total += sums[k][i];
  return total;
}

// Scales, rounds and stores the block's outputs with the epilogue (values m * R + r of sums).
// With kNorm, sum_sq holds the warps' sums of token m's squares (GemvEpilogue::norm_weight).
template <class F, int M, int kRows, bool kNorm, class Acc, int kValues>
__device__ __forceinline__ void finish(const Acc (&sums)[kWarps][kValues], const float (&sum_sq)[kWarps][M],
                                       const EpilogueIn& in, const GemvArgs& a, int n0) {
  int m = 0, n = 0;
  if (!finisher<M, kRows>(a, n0, m, n)) return;
  const int v = m * kRows + (n - n0);
  float inv_rms = 1.0f;
  if constexpr (kNorm) {
    const float variance = block_total(sum_sq, m) / static_cast<float>(a.row_bytes / 2);
    inv_rms = 1.0f / sqrtf(variance + a.norm_eps);  // IEEE div and sqrt, as rms_norm
  }
  const auto output = [&](int i, float sw) {
    const float o = F::output(block_total(sums, i), in.sx, sw);
    return kNorm ? o * inv_rms : o;
  };
  if (a.swiglu) {
    a.y[static_cast<int64_t>(m) * (a.N / 2) + n / 2] = swiglu_out(output(v, in.sw0), output(v + 1, in.sw1));
    return;
  }
  a.y[static_cast<int64_t>(m) * a.N + n] = residual_out(output(v, in.sw0), a.residual ? &in.residual : nullptr);
}

// ---- the kernel ------------------------------------------------------------------------------

// 16-byte shared-memory slots per thread and stage: kStepLoads weight chunks (u, r), then
// the M x kUnroll activation chunks (u, m) they meet.
template <int M, int kRows>
__host__ __device__ constexpr int stage_slots() {
  return kStepLoads + M * (kStepLoads / kRows);
}
template <int M, int kRows>
__host__ __device__ constexpr int smem_bytes() {
  return kStages * stage_slots<M, kRows>() * kThreads * static_cast<int>(sizeof(uint4));
}

// The register path's rows per block (see the top of the file).
constexpr int register_rows(int M) { return M <= 2 ? 4 : 8; }

// Adds one chunk's products into acc: activation chunks xv[m] with weight chunks wv[r]. With
// kNorm (BF16) each activation is first multiplied by its norm weight in gv (exact in f32:
// two 8-bit significands) and its square added to sum_sq[m].
template <class F, int M, int kRows, bool kNorm = false>
__device__ __forceinline__ void mac_chunk(typename F::Acc (&acc)[M][kRows], const uint4 (&xv)[M],
                                          const uint4 (&wv)[kRows], const uint4& gv, float (&sum_sq)[M]) {
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    typename F::XWord xw[M];
#pragma unroll
    for (int m = 0; m < M; ++m) xw[m] = F::x_word(word(xv[m], j));
    if constexpr (kNorm) {
      const typename F::XWord gw = F::x_word(word(gv, j));
#pragma unroll
      for (int m = 0; m < M; ++m) {
        sum_sq[m] = fmaf(xw[m].lo, xw[m].lo, sum_sq[m]);
        sum_sq[m] = fmaf(xw[m].hi, xw[m].hi, sum_sq[m]);
        xw[m].lo *= gw.lo;
        xw[m].hi *= gw.hi;
      }
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const typename F::WWord ww = F::w_word(word(wv[r], j));
#pragma unroll
      for (int m = 0; m < M; ++m) F::mac(acc[m][r], ww, xw[m]);
    }
  }
}

// The register path's main loop (BF16; top of the file). The first step's weight loads are
// issued before pdl_wait (weights never depend on the kernel before). With kNorm the norm
// weights' chunks (g, written only by plain launches) come with the activations.
template <class F, int M, int kRows, bool kNorm>
__device__ __forceinline__ void sum_registers(typename F::Acc (&acc)[M][kRows], float (&sum_sq)[M],
                                              const uint4* const (&w_rows)[kRows], const uint4* x_rows,
                                              const uint4* g, int chunks) {
  constexpr int kUnroll = kStepLoads / kRows, kStepChunks = kThreads * kUnroll;
  bool waited = false;
  for (int c0 = threadIdx.x; c0 < chunks; c0 += kStepChunks) {
    uint4 wv[kUnroll][kRows];  // all of this step's weight loads are issued before any use
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const int c = c0 + u * kThreads;
        wv[u][r] = c < chunks ? load_streaming(w_rows[r] + c) : make_uint4(0, 0, 0, 0);
      }
    if (!waited) {
      pdl_wait();
      waited = true;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int c = c0 + u * kThreads;
      if (c >= chunks) break;
      uint4 xv[M];
#pragma unroll
      for (int m = 0; m < M; ++m) xv[m] = load_after_wait(x_rows + static_cast<int64_t>(m) * chunks + c);
      uint4 gv{};
      if constexpr (kNorm) gv = __ldg(g + c);
      mac_chunk<F, M, kRows, kNorm>(acc, xv, wv[u], gv, sum_sq);
    }
  }
  if (!waited) pdl_wait();
}

// The fused RMSNorm at M = 1 took 96 registers unbounded (the plain kernel 64): bounded to 8
// resident blocks per SM (64 registers, no spill), so as many weight loads are in flight as
// without it. A minimum of 0 leaves the other kernels' code as it was (an explicit 1 did not).
template <class F, int M, int kRows, bool kNorm = false>
__global__ void __launch_bounds__(kThreads, kNorm && M == 1 ? 8 : 0) gemv_kernel(const GemvArgs a) {
  // pdl_wait comes after the first step's weight loads or copies are issued (on the register
  // path in sum_registers): nothing the kernel before writes is read ahead of it.
  using Acc = typename F::Acc;
  static_assert(kRows % 2 == 0 && kStepLoads % kRows == 0, "swiglu pairs (2i, 2i+1) must fall in one block");
  static_assert(!kNorm || std::is_same_v<F, Bf16Format>, "the fused RMSNorm is BF16's (GemvEpilogue)");
  // Values to sum over the warp, in groups of at most 32 (one per lane after the sum).
  constexpr int kValues = pow2_at_least(M * kRows);
  constexpr int kGroups = kValues > 32 ? kValues / 32 : 1, kPerGroup = kValues / kGroups;
  __shared__ Acc warp_sums[kWarps][kValues];
  __shared__ float warp_sum_sq[kWarps][M];  // kNorm: each warp's sums of the squares

  const int t = threadIdx.x, n0 = blockIdx.x * kRows, lane = t % 32, warp = t / 32;
  EpilogueIn in;  // loaded at the start on the ring path, after the sum on the register path (top of the file)
  const int chunks = a.row_bytes / 16;
  const uint4* w_rows[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int n = min(n0 + r, a.N - 1);  // rows past N re-read row N - 1 and are not stored
    w_rows[r] = reinterpret_cast<const uint4*>(static_cast<const char*>(a.w) + static_cast<int64_t>(n) * a.row_bytes);
  }
  const uint4* x_rows = static_cast<const uint4*>(a.x);  // row m starts at chunk m * chunks

  Acc acc[M][kRows];
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int r = 0; r < kRows; ++r) acc[m][r] = Acc(0);
  float sum_sq[M];
#pragma unroll
  for (int m = 0; m < M; ++m) sum_sq[m] = 0.0f;

  // On either path step s of this thread covers chunks t + s * kStepChunks + u * kThreads
  // (u < kUnroll) of each row, so each thread sums its chunks in the same order.
  if constexpr (F::kRing) {
    // The ring path, in the kernel body: moved into a helper function, its PTX differed only
    // in register numbering, yet ptxas allocated it differently (Fp8 M = 8: 184 registers, not 178).
    constexpr int kUnroll = kStepLoads / kRows, kSlots = stage_slots<M, kRows>();
    constexpr int kStepChunks = kThreads * kUnroll;
    // [kStages][kSlots][kThreads]: thread t's slot i of stage g is ring[(g * kSlots + i) * kThreads + t]
    // (a warp's 32 slots are 512 contiguous bytes: no bank conflicts).
    extern __shared__ uint4 ring[];
    const int steps = t < chunks ? (chunks - 1 - t) / kStepChunks + 1 : 0;
    // Copies of `step` into stage step % kStages: its weights, its activations, or both.
    const auto issue = [&](int step, bool weights, bool activations) {
      uint4* slot = ring + (step % kStages) * kSlots * kThreads + t;
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int c = t + step * kStepChunks + u * kThreads;
        if (c >= chunks) break;
        if (weights)
#pragma unroll
          for (int r = 0; r < kRows; ++r) copy_streaming(slot + (u * kRows + r) * kThreads, w_rows[r] + c);
        if (activations)
#pragma unroll
          for (int m = 0; m < M; ++m)
            copy_cached(slot + (kStepLoads + u * M + m) * kThreads, x_rows + static_cast<int64_t>(m) * chunks + c);
      }
    };

    // One commit group per step (empty past the end), so wait<kStages - 1> always means
    // "this step's copies have landed" while the next kStages - 1 steps stay in flight. The
    // first steps' weights go out before pdl_wait as one extra group ahead of them.
    static_assert(kStages == 2, "the prologue below issues one step");
    if (0 < steps) issue(0, true, false);
    cp_async_commit();
    pdl_wait();
    in = epilogue_inputs<F, M, kRows>(a, n0);
    if (0 < steps) issue(0, false, true);
    cp_async_commit();
    for (int step = 0; step < steps; ++step) {
      // Refills the stage that step - 1 read: its values were consumed by the multiply-adds
      // before this point in program order.
      if (step + kStages - 1 < steps) issue(step + kStages - 1, true, true);
      cp_async_commit();
      cp_async_wait(kStages - 1);
      const uint4* slot = ring + (step % kStages) * kSlots * kThreads + t;
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int c = t + step * kStepChunks + u * kThreads;
        if (c >= chunks) break;
        uint4 xv[M], wv[kRows];
#pragma unroll
        for (int m = 0; m < M; ++m) xv[m] = slot[(kStepLoads + u * M + m) * kThreads];
#pragma unroll
        for (int r = 0; r < kRows; ++r) wv[r] = slot[(u * kRows + r) * kThreads];
        mac_chunk<F>(acc, xv, wv, uint4{}, sum_sq);
      }
    }
  } else {
    sum_registers<F, M, kRows, kNorm>(acc, sum_sq, w_rows, x_rows, static_cast<const uint4*>(
        static_cast<const void*>(a.norm_w)), chunks);
  }

  Acc v[kGroups][kPerGroup];
#pragma unroll
  for (int i = 0; i < kValues; ++i) v[i / kPerGroup][i % kPerGroup] = i < M * kRows ? acc[i / kRows][i % kRows] : Acc(0);
#pragma unroll
  for (int g = 0; g < kGroups; ++g) {
    warp_sum_spread<kPerGroup / 2>(v[g], lane, 16);
    if (lane % (32 / kPerGroup) == 0) warp_sums[warp][g * kPerGroup + lane / (32 / kPerGroup)] = v[g][0];
  }
  if constexpr (kNorm) {
#pragma unroll
    for (int m = 0; m < M; ++m) {
      for (int off = 16; off >= 1; off /= 2) sum_sq[m] += __shfl_xor_sync(0xFFFFFFFFu, sum_sq[m], off);
      if (lane == 0) warp_sum_sq[warp][m] = sum_sq[m];
    }
  }
  if constexpr (!F::kRing) in = epilogue_inputs<F, M, kRows>(a, n0);
  __syncthreads();
  finish<F, M, kRows, kNorm>(warp_sums, warp_sum_sq, in, a, n0);
}

// Ring path: set up once per format and M, at the first call, for the device current then
// (the engine's single device; its eager first step makes that call outside graph capture):
// the dynamic shared memory attribute (past the default 48 KiB from M = 5 on), the largest
// shared-memory carveout (so the occupancy below is what launches get: the kernel needs no L1
// beyond the activations), and the blocks resident at once on the whole device.
struct KernelSetup {
  int smem = 0;      // bytes of dynamic shared memory per block
  int resident = 0;  // blocks resident at once on the device
};

template <class F, int M, int kRows>
KernelSetup set_up_kernel() {
  KernelSetup k;
  k.smem = smem_bytes<M, kRows>();
  const int optin = device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin);
  LLMQ_CHECK(k.smem <= optin, "decode GEMV (M " << M << ") needs " << k.smem
                                                << " bytes of shared memory per block, the device has " << optin);
  const auto kernel = gemv_kernel<F, M, kRows>;
  LLMQ_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, k.smem));
  LLMQ_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                       cudaSharedmemCarveoutMaxShared));
  k.resident = device_resident_blocks(kernel, kThreads, k.smem);
  LLMQ_CHECK(k.resident > 0, "decode GEMV (M " << M << ") cannot be resident");
  return k;
}

struct LaunchSetup {
  KernelSetup rows4, rows8;  // rows4 only for M <= 2
};

template <class F, int M>
const LaunchSetup& launch_setup() {
  static const LaunchSetup setup = [] {
    LaunchSetup l;
    if constexpr (M <= 2) l.rows4 = set_up_kernel<F, M, 4>();
    l.rows8 = set_up_kernel<F, M, 8>();
    return l;
  }();
  return setup;
}

// R = 4 rows per block at M <= 2 while ceil(N / 4) blocks fit in one wave, else R = 8 (see
// the top of the file).
template <class F, int M>
void launch_ring(const GemvArgs& a, cudaStream_t s) {
  const LaunchSetup& l = launch_setup<F, M>();
  if constexpr (M <= 2) {
    if ((a.N + 3) / 4 <= l.rows4.resident) {
      launch_pdl(gemv_kernel<F, M, 4>, dim3((a.N + 3) / 4), dim3(kThreads), l.rows4.smem, s, a);
      return;
    }
  }
  launch_pdl(gemv_kernel<F, M, 8>, dim3((a.N + 7) / 8), dim3(kThreads), l.rows8.smem, s, a);
}

// The register path needs no setup: no dynamic shared memory, R = register_rows(M).
template <class F, int M>
void launch(const GemvArgs& a, cudaStream_t s) {
  if constexpr (F::kRing) {
    launch_ring<F, M>(a, s);
  } else {
    constexpr int kRows = register_rows(M);
    const dim3 grid((a.N + kRows - 1) / kRows);
    if (a.norm_w) launch_pdl(gemv_kernel<F, M, kRows, true>, grid, dim3(kThreads), 0, s, a);
    else launch_pdl(gemv_kernel<F, M, kRows>, grid, dim3(kThreads), 0, s, a);
  }
}

template <class F>
void run(const GemvArgs& a, int M, cudaStream_t s, const char* name) {
  using Launch = void (*)(const GemvArgs&, cudaStream_t);
  static const Launch launches[kGemvMaxM] = {launch<F, 1>, launch<F, 2>, launch<F, 3>, launch<F, 4>,
                                             launch<F, 5>, launch<F, 6>, launch<F, 7>, launch<F, 8>};
  // Messages name the entry point (LLMQ_CHECK's message must start with a literal).
  LLMQ_CHECK(M >= 1 && M <= kGemvMaxM, "" << name << ": M " << M << " outside 1.." << kGemvMaxM);
  LLMQ_CHECK(a.N >= 1, "" << name << ": N " << a.N);
  LLMQ_CHECK(a.row_bytes > 0 && a.row_bytes % 16 == 0,
             "" << name << ": rows of " << a.row_bytes << " bytes are not a positive multiple of 16");
  LLMQ_CHECK(reinterpret_cast<uintptr_t>(a.x) % 16 == 0 && reinterpret_cast<uintptr_t>(a.w) % 16 == 0,
             "" << name << ": x and w must be 16-byte aligned");
  LLMQ_CHECK(!(a.swiglu && a.residual), "" << name << ": the swiglu and residual epilogues are exclusive");
  LLMQ_CHECK(!a.norm_w || !F::kRing, "" << name << ": the fused RMSNorm is gemv_bf16's");
  LLMQ_CHECK(!a.norm_w || reinterpret_cast<uintptr_t>(a.norm_w) % 16 == 0,
             "" << name << ": the norm weight must be 16-byte aligned");
  LLMQ_CHECK(!a.swiglu || a.N % 2 == 0, "" << name << ": swiglu needs interleaved row pairs, N " << a.N << " is odd");
  launches[M - 1](a, s);  // after the checks: they run without a GPU
  LLMQ_CUDA_CHECK_LAUNCH();
}

GemvArgs args(const void* x, const float* sx, const void* w, const float* sw, bf16* y, int N, int row_bytes,
              const GemvEpilogue& e) {
  return GemvArgs{x, sx, w, sw, y, e.residual, e.swiglu, N, row_bytes, e.norm_weight, e.norm_eps};
}

}  // namespace

void gemv_bf16(const bf16* x, const bf16* w, bf16* y, int M, int N, int K, const GemvEpilogue& e, cudaStream_t s) {
  LLMQ_CHECK(K > 0 && K % 8 == 0, "gemv_bf16: K " << K << " is not a positive multiple of 8 (16-byte rows)");
  run<Bf16Format>(args(x, nullptr, w, nullptr, y, N, K * 2, e), M, s, "gemv_bf16");
}

void gemv_w8a8_int8(const int8_t* xq, const float* sx, const int8_t* wq, const float* sw, bf16* y, int M, int N,
                    int ld, const GemvEpilogue& e, cudaStream_t s) {
  run<Int8Format>(args(xq, sx, wq, sw, y, N, ld, e), M, s, "gemv_w8a8_int8");
}

void gemv_w8a8_fp8(const uint8_t* xq, const float* sx, const uint8_t* wq, const float* sw, bf16* y, int M, int N,
                   int ld, const GemvEpilogue& e, cudaStream_t s) {
  run<Fp8Format>(args(xq, sx, wq, sw, y, N, ld, e), M, s, "gemv_w8a8_fp8");
}

}  // namespace llmq::gpu
