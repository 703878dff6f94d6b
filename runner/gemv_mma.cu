// W8A8 decode GEMVs on tensor cores (runner/gemv.h: gemv_w8a8_fp8_mma, gemv_w8a8_int8_mma),
// M <= 8 tokens.
//
// The CUDA-core kernels (gemv.cu) spend per weight byte about four instructions at M = 1 for
// FP8 (E4M3 to f32, then one FMA per token) and one dp4a per four bytes and token for INT8; on
// an H200 that leaves FP8 compute-bound as M grows (qkv: 78% of HBM bandwidth at M = 1, 27% at
// M = 8) and INT8 falling off less (82% -> 60%). Here one mma.sync m16n8k32 multiplies 16 rows x
// 32 k by up to 8 tokens, so a weight byte costs a small fraction of an instruction at any M <= 8.
// The engine takes the FP8 kernel from 2 rows (gemv.h: w8a8_decode_gemv); the INT8 one measured
// no faster than dp4a and stays for the kernel benchmark.
//
// Layout of the work, as W4A16's mma_direct (runner/w4a16.cu): one block of S warps per 16-row
// tile, the warps splitting K by 64-byte chunks (warp w takes chunks w, w + S, ...), four
// chunks' weight loads issued before their MMAs. Weights stay in the row-major [N, ld] layout
// that cuBLASLt's prefill GEMMs read: lane (g, t) loads 16 bytes of rows g and g + 8 at chunk
// offset 16 t, and 16 bytes of token g's activation codes at the same offset. The four words
// of those loads feed two MMAs, word pairs (0, 1) and (2, 3) as (a0|a1, a2|a3) and (b0, b1):
// a register's four k are the same columns in A (either row) and in B for every lane of a
// quad, so the MMA multiplies matching columns whatever order of k it assigns them, and the
// sum over the tile's columns is the dot product.
//
// Numerics: INT8 sums exactly in int32 (bit-equal to the CUDA-core kernel and to cuBLASLt +
// scale_rows_cols_i32). FP8 gives each MMA a zero accumulator and adds its result into f32
// sums (Hopper's FP8 adder keeps ~14 bits, runner/mma.cuh), chunks in increasing order, then
// the S warps' sums in warp order (deterministic). The scales apply once in double, as the
// CUDA-core kernels' (o = acc · sx[m] · sw[n]).
#include <cuda_runtime.h>

#include <type_traits>

#include "core/numeric.h"
#include "runner/cuda_check.h"
#include "runner/device_attribute.h"
#include "runner/direct_warps.h"
#include "runner/gemv.h"
#include "runner/mma.cuh"
#include "runner/mma_gemv.cuh"
#include "runner/pdl.cuh"

namespace llmq::gpu {
namespace {

constexpr int kChunkBytes = kGemvMmaLd;  // per row: 16 bytes for each lane of a quad
constexpr int kLoadsAhead = 4;           // chunks per warp whose loads are issued together
constexpr int kFp8MmaMinCc = 89;         // mma.sync with E4M3 operands: Ada and newer
constexpr int kInt8MmaMinCc = 80;        // with s8 operands: Ampere and newer

struct Fp8Mma {
  using Acc = float;
  // A fresh MMA per 32 k, its result added in f32 (the adder's error stays per MMA).
  __device__ static void mma(Acc (&acc)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    float d[4];
    mma_fp8(d, a, b0, b1);
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[i] += d[i];
  }
};

struct Int8Mma {
  using Acc = int;
  __device__ static void mma(Acc (&acc)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    mma_s8(acc, a, b0, b1);  // exact: the order of the adds does not matter
  }
};

// The 16 x 8 product of one chunk's weights (rows g and g + 8) and activations, added to acc.
template <class F>
__device__ __forceinline__ void mma_chunk(typename F::Acc (&acc)[4], const uint4& wa, const uint4& wb,
                                          const uint4& xv) {
  F::mma(acc, {wa.x, wb.x, wa.y, wb.y}, xv.x, xv.y);
  F::mma(acc, {wa.z, wb.z, wa.w, wb.w}, xv.z, xv.w);
}

// sx (written by the quantization before) is read after pdl_wait with plain loads; sw and the
// weights are constant. At S = 16 two blocks must fit an SM (<= 64 registers): N = 4096 gives
// 256 tiles, which at one block per SM would run in two waves.
template <class F, int S>
__global__ void __launch_bounds__(S * 32, S == 16 ? 2 : 1) mma_gemv_kernel(const uint8_t* xq, const float* sx,
                                                                            const uint8_t* __restrict__ wq,
                                                                            const float* sw, uint16_t* y, int M, int N,
                                                                            int ld, GemvEpilogue epi) {
  using Acc = typename F::Acc;
  __shared__ Acc partial[S][32][4];
  __shared__ float out[8][16];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int g = lane / 4, t = lane % 4;
  const int n0 = blockIdx.x * 16;
  const int chunks = ld / kChunkBytes;
  // Rows past N re-read row N - 1 (a valid address); their outputs are not stored. Row g + 8
  // as an offset from row g (one pointer fewer: at S = 16 the kernel has 64 registers).
  const int ra = min(n0 + g, N - 1), rb = min(n0 + g + 8, N - 1);
  const uint4* wa = reinterpret_cast<const uint4*>(wq + static_cast<int64_t>(ra) * ld) + t;
  const int b_offset = (rb - ra) * (ld / 16);
  const uint4* xr = reinterpret_cast<const uint4*>(xq + static_cast<int64_t>(min(g, M - 1)) * ld) + t;
  Acc acc[4] = {Acc(0), Acc(0), Acc(0), Acc(0)};
  bool waited = false;
  for (int c0 = warp; c0 < chunks; c0 += kLoadsAhead * S) {
    // The chunks' weights are loaded before any arithmetic (the first ones before pdl_wait:
    // they stream while the kernel before finishes), chunks past the end re-reading the last.
    uint4 va[kLoadsAhead], vb[kLoadsAhead];
#pragma unroll
    for (int u = 0; u < kLoadsAhead; ++u) {
      const int c = min(c0 + u * S, chunks - 1);
      va[u] = load_streaming(wa + c * (kChunkBytes / 16));
      vb[u] = load_streaming(wa + b_offset + c * (kChunkBytes / 16));
    }
    if (!waited) {
      pdl_wait();
      waited = true;
    }
    // Activation codes come from L1 (every block reads the same few rows), loaded where used:
    // holding them too spilled at S = 16.
#pragma unroll
    for (int u = 0; u < kLoadsAhead; ++u) {
      const int c = c0 + u * S;
      if (c >= chunks) break;
      const uint4 xv = g < M ? load_after_wait(xr + c * (kChunkBytes / 16)) : make_uint4(0, 0, 0, 0);
      mma_chunk<F>(acc, va[u], vb[u], xv);
    }
  }
  if (!waited) pdl_wait();
#pragma unroll
  for (int i = 0; i < 4; ++i) partial[warp][lane][i] = acc[i];
  __syncthreads();
  // C fragment: {c0 c1} row l/4, tokens 2(l%4) + {0, 1}; {c2 c3} row l/4 + 8. Warps summed in
  // a fixed order, then scaled as the CUDA-core kernels do.
  for (int e = threadIdx.x; e < 32 * 4; e += blockDim.x) {
    const int l = e / 4, i = e % 4, tok = 2 * (l % 4) + (i % 2), r = l / 4 + (i >= 2 ? 8 : 0);
    Acc sum = partial[0][l][i];
#pragma unroll
    for (int w = 1; w < S; ++w) sum += partial[w][l][i];
    if (tok < M && n0 + r < N)
      out[tok][r] = static_cast<float>(static_cast<double>(sum) * sx[tok] * static_cast<double>(sw[n0 + r]));
  }
  __syncthreads();
  store_block<16>([&](int tok, int r) { return out[tok][r]; }, M, n0, N, y, epi);
}

template <class F, int S>
void launch(const uint8_t* xq, const float* sx, const uint8_t* wq, const float* sw, bf16* y, int M, int N, int ld,
            const GemvEpilogue& e, cudaStream_t s) {
  launch_pdl(mma_gemv_kernel<F, S>, dim3((N + 15) / 16), dim3(S * 32), 0, s, xq, sx, wq, sw, y, M, N, ld, e);
}

template <class F>
void run(const uint8_t* xq, const float* sx, const uint8_t* wq, const float* sw, bf16* y, int M, int N, int ld,
         const GemvEpilogue& e, cudaStream_t s, const char* name, int min_cc) {
  // Messages name the entry point (LLMQ_CHECK's message must start with a literal).
  LLMQ_CHECK(M >= 1 && M <= kGemvMaxM, "" << name << ": M " << M << " outside 1.." << kGemvMaxM);
  LLMQ_CHECK(N >= 1, "" << name << ": N " << N);
  LLMQ_CHECK(ld > 0 && ld % kGemvMmaLd == 0,
             "" << name << ": rows of " << ld << " codes are not a positive multiple of " << kGemvMmaLd);
  LLMQ_CHECK(reinterpret_cast<uintptr_t>(xq) % 16 == 0 && reinterpret_cast<uintptr_t>(wq) % 16 == 0,
             "" << name << ": x and w must be 16-byte aligned");
  LLMQ_CHECK(!(e.swiglu && e.residual), "" << name << ": the swiglu and residual epilogues are exclusive");
  LLMQ_CHECK(!e.swiglu || N % 2 == 0, "" << name << ": swiglu needs interleaved row pairs, N " << N << " is odd");
  LLMQ_CHECK(!e.norm_weight, "" << name << ": the fused RMSNorm is gemv_bf16's");
  // The device queries after the argument checks, which run without a GPU.
  LLMQ_CHECK(compute_capability() >= min_cc, "" << name << ": needs compute capability " << min_cc / 10 << "."
                                                << min_cc % 10 << " or newer");
  static const DirectResidency residency{device_resident_blocks(mma_gemv_kernel<F, 4>, 4 * 32),
                                         device_resident_blocks(mma_gemv_kernel<F, 8>, 8 * 32),
                                         device_resident_blocks(mma_gemv_kernel<F, 16>, 16 * 32)};
  switch (direct_gemv_warps((N + 15) / 16, ld / kChunkBytes, residency)) {
    case 4: launch<F, 4>(xq, sx, wq, sw, y, M, N, ld, e, s); break;
    case 8: launch<F, 8>(xq, sx, wq, sw, y, M, N, ld, e, s); break;
    default: launch<F, 16>(xq, sx, wq, sw, y, M, N, ld, e, s); break;
  }
  LLMQ_CUDA_CHECK_LAUNCH();
}

}  // namespace

bool gemv_fp8_mma_supported(int ld) { return ld > 0 && ld % kGemvMmaLd == 0 && compute_capability() >= kFp8MmaMinCc; }
bool gemv_int8_mma_supported(int ld) { return ld > 0 && ld % kGemvMmaLd == 0 && compute_capability() >= kInt8MmaMinCc; }

void gemv_w8a8_fp8_mma(const uint8_t* xq, const float* sx, const uint8_t* wq, const float* sw, bf16* y, int M, int N,
                       int ld, const GemvEpilogue& e, cudaStream_t s) {
  run<Fp8Mma>(xq, sx, wq, sw, y, M, N, ld, e, s, "gemv_w8a8_fp8_mma", kFp8MmaMinCc);
}

void gemv_w8a8_int8_mma(const int8_t* xq, const float* sx, const int8_t* wq, const float* sw, bf16* y, int M, int N,
                        int ld, const GemvEpilogue& e, cudaStream_t s) {
  run<Int8Mma>(reinterpret_cast<const uint8_t*>(xq), sx, reinterpret_cast<const uint8_t*>(wq), sw, y, M, N, ld, e, s,
               "gemv_w8a8_int8_mma", kInt8MmaMinCc);
}

W8A8Gemv w8a8_decode_gemv(bool fp8, int M, int ld) {
  if (M < 1 || M > kGemvMaxM) return W8A8Gemv::kNone;
  if (fp8 && M >= kFp8MmaMinM && gemv_fp8_mma_supported(ld)) return W8A8Gemv::kTensorCore;
  return ld % 16 == 0 ? W8A8Gemv::kCudaCore : W8A8Gemv::kNone;
}

namespace {

// A W8A8 GEMV entry point of gemv.h for codes of type Code (FP8 uint8_t, INT8 int8_t).
template <class Code>
using W8A8Kernel = void (*)(const Code*, const float*, const Code*, const float*, bf16*, int, int, int,
                            const GemvEpilogue&, cudaStream_t);

// The kernel w8a8_decode_gemv picks for the format, of its CUDA-core and tensor-core ones.
template <class Code>
void run_decode(W8A8Kernel<Code> cuda_core, W8A8Kernel<Code> tensor_core, const char* name, const Code* xq,
                const float* sx, const Code* wq, const float* sw, bf16* y, int M, int N, int ld, const GemvEpilogue& e,
                cudaStream_t s) {
  switch (w8a8_decode_gemv(std::is_same_v<Code, uint8_t>, M, ld)) {
    case W8A8Gemv::kTensorCore: return tensor_core(xq, sx, wq, sw, y, M, N, ld, e, s);
    case W8A8Gemv::kCudaCore: return cuda_core(xq, sx, wq, sw, y, M, N, ld, e, s);
    case W8A8Gemv::kNone: break;
  }
  LLMQ_CHECK(false, "" << name << ": no decode GEMV takes M " << M << ", ld " << ld);
}

}  // namespace

void gemv_w8a8_fp8_decode(const uint8_t* xq, const float* sx, const uint8_t* wq, const float* sw, bf16* y, int M,
                          int N, int ld, const GemvEpilogue& e, cudaStream_t s) {
  run_decode<uint8_t>(gemv_w8a8_fp8, gemv_w8a8_fp8_mma, "gemv_w8a8_fp8_decode", xq, sx, wq, sw, y, M, N, ld, e, s);
}

void gemv_w8a8_int8_decode(const int8_t* xq, const float* sx, const int8_t* wq, const float* sw, bf16* y, int M,
                           int N, int ld, const GemvEpilogue& e, cudaStream_t s) {
  run_decode<int8_t>(gemv_w8a8_int8, gemv_w8a8_int8_mma, "gemv_w8a8_int8_decode", xq, sx, wq, sw, y, M, N, ld, e, s);
}

}  // namespace llmq::gpu
