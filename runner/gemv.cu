// Decode GEMV kernels (runner/gemv.h) for BF16, FP8 E4M3 and INT8 weights, M <= 8 token rows.
//
// Decode linears are bound by reading the weights once; the work per weight byte is M
// multiply-adds. Layout of the work:
//   - a block owns R consecutive output rows and all of K; its kWarps warps split K by
//     16-byte chunks (chunk c goes to thread c % kThreads), so a warp reads 512 contiguous
//     bytes of each row per step and N = 1024 still gives 128-256 blocks;
//   - each thread keeps kLoadsInFlight 16-byte weight loads (R rows x 8 / R chunks) in
//     flight, streamed past L1 (ld.global.nc.L1::no_allocate: read once, never reused);
//   - activation chunks (M rows, a few KiB) come through L1 and each one serves R weight
//     rows, so converting them costs 1/R per multiply-add: R = 4 for M <= 2, R = 8 for
//     larger M, where the conversions would otherwise outweigh the M multiply-adds;
//   - per-thread partial sums are reduced over the warp with V - 1 shuffles for V values
//     (halves traded between partners), then over the warps in shared memory in a fixed
//     order (deterministic), and one thread per output applies the scale and the epilogue.
// FP8 avoids cvt (quarter-rate): codes become f32 with shifts and masks (gemv.h's trick,
// value · 2^-120; activations are then multiplied back to value · 2^12 so every product is
// an exact normal f32), INT8 uses dp4a on exact int32 sums, BF16 is a shift to f32.
#include <cuda_runtime.h>

#include "core/numeric.h"
#include "runner/cuda_check.h"
#include "runner/gemv.h"
#include "runner/pdl.cuh"

namespace llmq::gpu {
namespace {

constexpr int kWarps = 4;    // warps per block, splitting K
constexpr int kThreads = kWarps * 32;
constexpr int kLoadsInFlight = 8;  // 16-byte weight loads per thread per step

// Output rows per block (even: a swiglu pair stays in one block).
__host__ __device__ constexpr int rows_per_block(int M) { return M <= 2 ? 4 : 8; }

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
};

// Weights are read exactly once: keep them out of L1 and ask L2 for whole 256-byte sectors.
__device__ __forceinline__ uint4 load_streaming(const uint4* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}

__device__ __forceinline__ uint32_t word(const uint4& u, int j) { return j == 0 ? u.x : j == 1 ? u.y : j == 2 ? u.z : u.w; }

// ---- formats: how one 32-bit word of weights meets one word of activations -------------------

struct Bf16Format {
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
  __device__ static float output(Acc acc, const GemvArgs&, int, int) { return acc; }
};

struct Fp8Format {
  using Acc = float;
  struct Quad { float v[4]; };
  using XWord = Quad;
  using WWord = Quad;
  // Activations back to value · 2^12 (two exact power-of-two products; 2^132 is no f32): the
  // smallest product, 2^-9 · 2^-9 · 2^12 · 2^-120 = 2^-126, is then still a normal f32.
  static constexpr float kXUp1 = 0x1p120f, kXUp2 = 0x1p12f;
  static constexpr double kAccToValue = 0x1p108;  // acc = Σ value products · 2^(12 - 120)
  __device__ static XWord x_word(uint32_t u) {
    Quad q = w_word(u);
    for (int i = 0; i < 4; ++i) q.v[i] = q.v[i] * kXUp1 * kXUp2;
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
  __device__ static float output(Acc acc, const GemvArgs& a, int m, int n) {
    return static_cast<float>(static_cast<double>(acc) * kAccToValue * a.sx[m] * static_cast<double>(a.sw[n]));
  }
};

struct Int8Format {
  using Acc = int;
  using XWord = int;
  using WWord = int;
  __device__ static XWord x_word(uint32_t u) { return static_cast<int>(u); }
  __device__ static WWord w_word(uint32_t u) { return static_cast<int>(u); }
  __device__ static void mac(Acc& acc, WWord w, XWord x) { acc = __dp4a(w, x, acc); }
  // The order of scale_rows_cols_i32, so the result is bit-equal to cuBLAS + scaling.
  __device__ static float output(Acc acc, const GemvArgs& a, int m, int n) {
    return static_cast<float>(static_cast<double>(acc) * a.sx[m] * static_cast<double>(a.sw[n]));
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

__device__ __forceinline__ float bf16_value(float v) { return bf16_to_f32(f32_to_bf16(v)); }

// Writes the block's M x R outputs o[m][r] (already bf16-rounded values, in shared memory)
// with the epilogue; all threads of the block call it.
template <int M, int kRows>
__device__ void store_outputs(const float (&o)[M * kRows], const GemvArgs& a, int n0) {
  const int t = threadIdx.x;
  if (a.swiglu) {
    constexpr int kPairs = kRows / 2;
    if (t >= M * kPairs) return;
    const int m = t / kPairs, p = t % kPairs, n = n0 + 2 * p;  // N even: n < N means n + 1 < N
    if (n >= a.N) return;
    const float g = o[m * kRows + 2 * p], u = o[m * kRows + 2 * p + 1];
    const float silu = bf16_value(g / (1.0f + expf(-g)));
    a.y[static_cast<int64_t>(m) * (a.N / 2) + n / 2] = f32_to_bf16(silu * u);
    return;
  }
  if (t >= M * kRows) return;
  const int m = t / kRows, n = n0 + t % kRows;
  if (n >= a.N) return;
  const int64_t i = static_cast<int64_t>(m) * a.N + n;
  const float v = o[t];
  // Read before the write of the same element: y may alias residual.
  a.y[i] = f32_to_bf16(a.residual ? bf16_to_f32(a.residual[i]) + v : v);
}

// ---- the kernel ------------------------------------------------------------------------------

template <class F, int M>
__global__ void __launch_bounds__(kThreads) gemv_kernel(const GemvArgs a) {
  pdl_wait();
  using Acc = typename F::Acc;
  constexpr int kRows = rows_per_block(M), kUnroll = kLoadsInFlight / kRows;
  static_assert(kRows % 2 == 0 && kUnroll >= 1, "swiglu pairs (2i, 2i+1) must fall in one block");
  // Values to sum over the warp, in groups of at most 32 (one per lane after the sum).
  constexpr int kValues = pow2_at_least(M * kRows);
  constexpr int kGroups = kValues > 32 ? kValues / 32 : 1, kPerGroup = kValues / kGroups;
  __shared__ Acc warp_sums[kWarps][kValues];
  __shared__ float outputs[M * kRows];

  const int n0 = blockIdx.x * kRows, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
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

  for (int c0 = threadIdx.x; c0 < chunks; c0 += kThreads * kUnroll) {
    uint4 wv[kUnroll][kRows];  // all of this step's weight loads are issued before any use
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const int c = c0 + u * kThreads;
        wv[u][r] = c < chunks ? load_streaming(w_rows[r] + c) : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int c = c0 + u * kThreads;
      if (c >= chunks) break;
      uint4 xv[M];
#pragma unroll
      for (int m = 0; m < M; ++m) xv[m] = __ldg(x_rows + static_cast<int64_t>(m) * chunks + c);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        typename F::XWord xw[M];
#pragma unroll
        for (int m = 0; m < M; ++m) xw[m] = F::x_word(word(xv[m], j));
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          const typename F::WWord ww = F::w_word(word(wv[u][r], j));
#pragma unroll
          for (int m = 0; m < M; ++m) F::mac(acc[m][r], ww, xw[m]);
        }
      }
    }
  }

  Acc v[kGroups][kPerGroup];
#pragma unroll
  for (int i = 0; i < kValues; ++i) v[i / kPerGroup][i % kPerGroup] = i < M * kRows ? acc[i / kRows][i % kRows] : Acc(0);
#pragma unroll
  for (int g = 0; g < kGroups; ++g) {
    warp_sum_spread<kPerGroup / 2>(v[g], lane, 16);
    if (lane % (32 / kPerGroup) == 0) warp_sums[warp][g * kPerGroup + lane / (32 / kPerGroup)] = v[g][0];
  }
  __syncthreads();
  if (threadIdx.x < M * kRows) {
    Acc total = warp_sums[0][threadIdx.x];
#pragma unroll
    for (int k = 1; k < kWarps; ++k) total += warp_sums[k][threadIdx.x];
    const int m = threadIdx.x / kRows, n = min(n0 + static_cast<int>(threadIdx.x) % kRows, a.N - 1);
    outputs[threadIdx.x] = bf16_value(F::output(total, a, m, n));
  }
  __syncthreads();
  store_outputs<M, kRows>(outputs, a, n0);
}

template <class F>
using KernelPtr = void (*)(GemvArgs);

template <class F>
void run(const GemvArgs& a, int M, cudaStream_t s, const char* name) {
  static const KernelPtr<F> kernels[kGemvMaxM] = {gemv_kernel<F, 1>, gemv_kernel<F, 2>, gemv_kernel<F, 3>,
                                                  gemv_kernel<F, 4>, gemv_kernel<F, 5>, gemv_kernel<F, 6>,
                                                  gemv_kernel<F, 7>, gemv_kernel<F, 8>};
  // Messages name the entry point (LLMQ_CHECK's message must start with a literal).
  LLMQ_CHECK(M >= 1 && M <= kGemvMaxM, "" << name << ": M " << M << " outside 1.." << kGemvMaxM);
  LLMQ_CHECK(a.N >= 1, "" << name << ": N " << a.N);
  LLMQ_CHECK(a.row_bytes > 0 && a.row_bytes % 16 == 0,
             "" << name << ": rows of " << a.row_bytes << " bytes are not a positive multiple of 16");
  LLMQ_CHECK(reinterpret_cast<uintptr_t>(a.x) % 16 == 0 && reinterpret_cast<uintptr_t>(a.w) % 16 == 0,
             "" << name << ": x and w must be 16-byte aligned");
  LLMQ_CHECK(!(a.swiglu && a.residual), "" << name << ": the swiglu and residual epilogues are exclusive");
  LLMQ_CHECK(!a.swiglu || a.N % 2 == 0, "" << name << ": swiglu needs interleaved row pairs, N " << a.N << " is odd");
  const int rows = rows_per_block(M);
  launch_pdl(kernels[M - 1], dim3((a.N + rows - 1) / rows), dim3(kThreads), 0, s, a);
  LLMQ_CUDA_CHECK_LAUNCH();
}

GemvArgs args(const void* x, const float* sx, const void* w, const float* sw, bf16* y, int N, int row_bytes,
              const GemvEpilogue& e) {
  return GemvArgs{x, sx, w, sw, y, e.residual, e.swiglu, N, row_bytes};
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
