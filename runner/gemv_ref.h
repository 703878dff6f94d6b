// CPU references of the decode GEMVs (runner/gemv.h): the product of runner/kernels_ref.h's
// GEMM references, then the epilogue built from its elementwise references (add_inplace_ref,
// silu_mul_ref), so a fused kernel is checked against the same arithmetic as the unfused
// ops. Host-only; built in CPU-only builds too.
#pragma once

#include <cstdint>

namespace llmq::ref {

using bf16 = uint16_t;

// gpu::GemvEpilogue applied to a plain product o [M, N]:
//   residual != null: y [M, N] = bf16(residual + o) (y may alias residual);
//   swiglu: rows (2i, 2i+1) of the weights are (gate_i, up_i), y [M, N/2] = silu_mul of them.
void gemv_epilogue_ref(const bf16* o, const bf16* residual, bool swiglu, bf16* y, int M, int N);

// x [M, K], w [N, K] bf16; y = epilogue(bf16(Σ x · w)) with the sum in double.
void gemv_bf16_ref(const bf16* x, const bf16* w, const bf16* residual, bool swiglu, bf16* y, int M, int N, int K);
// gpu::GemvEpilogue::norm_weight's product in double: o = bf16(r_m · Σ x · g · w) with
// r_m = 1 / sqrt(Σ x² / K + eps), then the epilogue.
void gemv_bf16_norm_ref(const bf16* x, const bf16* g, float eps, const bf16* w, const bf16* residual, bool swiglu,
                        bf16* y, int M, int N, int K);
// xq [M, ld], wq [N, ld] codes, sx [M], sw [N]; y = epilogue(bf16(float(acc · sx · sw))) with
// the exact sum (gemm_w8a8_*_ref).
void gemv_w8a8_int8_ref(const int8_t* xq, const float* sx, const int8_t* wq, const float* sw, const bf16* residual,
                        bool swiglu, bf16* y, int M, int N, int ld);
void gemv_w8a8_fp8_ref(const uint8_t* xq, const float* sx, const uint8_t* wq, const float* sw, const bf16* residual,
                       bool swiglu, bf16* y, int M, int N, int ld);

}  // namespace llmq::ref
