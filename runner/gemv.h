// Decode GEMVs: y[M, N] = x[M, K] · w[N, K]ᵀ for M <= kGemvMaxM token rows, at close to HBM
// bandwidth (each weight byte is read once, streamed past L1), with the elementwise op that
// follows a linear fused into the store (GemvEpilogue). Formats: BF16 weights and
// activations (f32 accumulation), and the W8A8 products of runner/kernels.h (FP8 E4M3 and
// INT8 codes with per-token x per-channel scales). CPU references: runner/gemv_ref.h;
// tests: tests/test_runner_gemv.cc; kernels: runner/gemv.cu.
//
// Conventions as runner/kernels.h: device pointers, row-major, bf16 as uint16_t bits.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "core/numeric.h"

namespace llmq::gpu {

using bf16 = uint16_t;

constexpr int kGemvMaxM = 8;
// Token rows up to which the engine runs a BF16 linear as gemv_bf16 (with its fused norm and
// epilogue) rather than cuBLASLt. The CUDA-core kernel turns compute-bound past 4 rows
// (H200, 8B shapes, us against cuBLASLt: gate_up at M = 4 60.7 / 61.6, at M = 8 75.1 / 62.8;
// down 30.6 / 32.8 and 47.7 / 33.3; lm_head 250.3 / 250.1 and 316.8 / 252.1), and the 8B
// bf16 decode step at batch 8 took 7.14 ms with it against 4.94 with cuBLASLt (docs/DESIGN.md).
constexpr int kBf16GemvMaxM = 4;

// What the GEMV does with each bf16-rounded output o[m, n] before storing it.
// residual and swiglu are exclusive.
struct GemvEpilogue {
  // If set: y[m, n] = bf16(residual[m, n] + o[m, n]), residual [M, N]; y may alias residual
  // (the in-place residual add of a transformer block).
  const uint16_t* residual = nullptr;
  // Weight rows are interleaved pairs (gate_i = row 2i, up_i = row 2i + 1), N even; y is
  // [M, N/2]: y[m, i] = bf16(round_bf16(silu(g)) · u) with g = o[m, 2i], u = o[m, 2i + 1],
  // silu(g) = g / (1 + expf(-g)) (the rounding points of ref::silu_mul_ref).
  bool swiglu = false;
  // If set (gemv_bf16 only): x is the residual stream and the GEMV normalizes it on the way
  // in (the RMSNorm before q/k/v and gate/up, fused so decode runs no norm kernel):
  // o[m, n] = bf16(r_m · Σ_k w[n, k] · (x[m, k] · norm_weight[k])) with the exact products
  // x · g summed in f32 and r_m = 1 / sqrt(Σ_k x[m, k]² / K + norm_eps), its squares summed
  // in f32. The unfused ops round the normalized x to bf16 twice (x · r, then · g); here it
  // is never rounded, so o differs from them by about those roundings (ref::gemv_bf16_norm_ref).
  const uint16_t* norm_weight = nullptr;  // [K] bf16
  float norm_eps = 0.0f;
};

// y = bf16(Σ_k x[m, k] · w[n, k]) with f32 accumulation. x [M, K], w [N, K] bf16; K % 8 == 0
// (16-byte rows).
void gemv_bf16(const bf16* x, const bf16* w, bf16* y, int M, int N, int K, const GemvEpilogue& e, cudaStream_t s);

// W8A8: o = bf16(acc · sx[m] · sw[n]) in double (the order of scale_rows_cols_*), xq [M, ld]
// and wq [N, ld] codes with ld (the padded K) a multiple of 16 and pad columns zero, sx [M],
// sw [N] f32. INT8 sums exactly in int32 (bit-equal to cuBLAS + scale_rows_cols_i32); FP8
// sums the exact products in f32.
void gemv_w8a8_int8(const int8_t* xq, const float* sx, const int8_t* wq, const float* sw, bf16* y, int M, int N,
                    int ld, const GemvEpilogue& e, cudaStream_t s);
void gemv_w8a8_fp8(const uint8_t* xq, const float* sx, const uint8_t* wq, const float* sw, bf16* y, int M, int N,
                   int ld, const GemvEpilogue& e, cudaStream_t s);

// The same products on tensor cores (runner/gemv_mma.cu), for rows of ld a multiple of
// kGemvMmaLd codes: INT8 (sm_80+) bit-equal to gemv_w8a8_int8; FP8 (sm_89+) adds each
// mma.sync's 32 exact products with Hopper's ~14-bit aligned adder and sums those results in
// f32, so it is within the f32 bound plus 2^-10 Σ|xq wq| · sx · sw of the exact product
// (tests/test_runner_gemv.cc). A weight byte costs a small fraction of an instruction at any
// M, where gemv_w8a8_fp8 spends about four at M = 1 and is compute-bound on an H200.
constexpr int kGemvMmaLd = 64;
void gemv_w8a8_fp8_mma(const uint8_t* xq, const float* sx, const uint8_t* wq, const float* sw, bf16* y, int M, int N,
                       int ld, const GemvEpilogue& e, cudaStream_t s);
void gemv_w8a8_int8_mma(const int8_t* xq, const float* sx, const int8_t* wq, const float* sw, bf16* y, int M, int N,
                        int ld, const GemvEpilogue& e, cudaStream_t s);
// Whether those take rows of ld codes on the current device.
bool gemv_fp8_mma_supported(int ld);
bool gemv_int8_mma_supported(int ld);
// The decode GEMV the engine runs for a W8A8 linear of M token rows of ld codes (kNone: none
// takes them, the engine runs cuBLASLt). FP8 takes the tensor-core kernel from
// kFp8MmaMinM rows to kGemvMaxM, where the CUDA-core one is compute-bound (H200, 8B shapes:
// gate_up at M = 4 46.2 -> 35.2 us, at M = 8 86.0 -> 36.4; at M = 1 29.6 against 33.1, so not
// there); INT8 keeps dp4a, which measured as fast at M <= 8 (docs/DESIGN.md).
enum class W8A8Gemv { kNone, kCudaCore, kTensorCore };
constexpr int kFp8MmaMinM = 2;
W8A8Gemv w8a8_decode_gemv(bool fp8, int M, int ld);
// Runs the kernel w8a8_decode_gemv picks (not kNone).
void gemv_w8a8_fp8_decode(const uint8_t* xq, const float* sx, const uint8_t* wq, const float* sw, bf16* y, int M,
                          int N, int ld, const GemvEpilogue& e, cudaStream_t s);
void gemv_w8a8_int8_decode(const int8_t* xq, const float* sx, const int8_t* wq, const float* sw, bf16* y, int M,
                           int N, int ld, const GemvEpilogue& e, cudaStream_t s);

// The FP8 kernel's conversion without cvt instructions: an E4M3 code (s|e4|m3, bias 7) placed
// in an f32 as s -> bit 31, e|m -> bits 20..26 reads as value(code) · 2^-120 exactly:
// normal codes give f32 exponent field e, so 2^(e-127)(1 + m/8) = 2^(e-7)(1 + m/8) · 2^-120;
// subnormal codes (e = 0) give the f32 subnormal (m · 2^20) · 2^-149 = m · 2^-9 · 2^-120.
// NaN codes (0x7F, 0xFF) never occur in quantized data and are not handled.
constexpr int kFp8TrickExponent = -120;
LLMQ_HD uint32_t fp8e4m3_scaled_f32_bits(uint8_t code) {
  return (static_cast<uint32_t>(code & 0x80u) << 24) | (static_cast<uint32_t>(code & 0x7Fu) << 20);
}
// The same for byte i (0 = lowest) of a word of four codes, without extracting the byte
// first: shifted to the top byte (sign at bit 31), an arithmetic shift by 4 moves bits
// 24..30 to 20..26 and copies the sign into 27..31, and one mask keeps bit 31 and 20..26:
// three instructions (two for i = 3). Written as two masks, the compiler found this form in
// one GEMV kernel and emitted four instructions in another (13% more per step at M = 8).
// (>> of a negative int32 is arithmetic in every compiler the project uses; the tests check
// this against fp8e4m3_scaled_f32_bits for every code at every byte, on the host and, through
// the FP8 GEMV, on the device.)
LLMQ_HD uint32_t fp8x4_scaled_f32_bits(uint32_t codes, int i) {
  const int32_t top = static_cast<int32_t>(codes << (24 - 8 * i));
  return static_cast<uint32_t>(top >> 4) & 0x87F00000u;
}

}  // namespace llmq::gpu
