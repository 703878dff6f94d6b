// CPU references of the runner's kernels (runner/kernels.h, runner/gemm.h, runner/w4a16.h):
// plain loops over host memory with the same arguments and the same rounding points, so a
// test can compare a kernel with its reference bit for bit where the arithmetic is the same
// and within a derived tolerance where only the summation order differs. Built in CPU-only
// builds too (tests/test_runner_ref.cc checks them against model/llama.cc).
#pragma once

#include <cstdint>
#include <vector>

#include "formats/hf_config.h"

namespace llmq::ref {

using bf16 = uint16_t;

void rms_norm_ref(const bf16* x, const bf16* w, bf16* y, int rows, int n, float eps);
// gpu::rms_norm_f32: x [rows, n] f32 += delta (if any, not rounded), then y = the bf16 norm of x.
void rms_norm_f32_ref(float* x, const bf16* delta, const bf16* w, bf16* y, int rows, int n, float eps);
void add_bf16_to_f32_ref(float* x, const bf16* y, int64_t n);
void add_inplace_ref(bf16* x, const bf16* y, int64_t n);
void silu_mul_ref(const bf16* gate_up, bf16* out, int rows, int inter);
void embed_ref(const bf16* table, const int32_t* ids, bf16* out, int rows, int n);

// cos/sin tables [capacity, hd/2] as model/llama.cc computes them (f32, rounded to bf16).
void rope_tables_ref(const LlamaConfig& c, int capacity, std::vector<float>* cos_t, std::vector<float>* sin_t);

// Same layouts as gpu::RopeCacheArgs / gpu::AttentionArgs (host pointers).
void rope_and_cache_ref(bf16* qkv, const float* cos, const float* sin, const int32_t* pos, const int32_t* seq,
                        bf16* k_cache, bf16* v_cache, int rows, int n_q, int n_kv, int hd, int capacity);
void attention_ref(const bf16* q, int q_stride, const bf16* k_cache, const bf16* v_cache, const int32_t* pos,
                   const int32_t* seq, bf16* out, int rows, int n_q, int n_kv, int hd, int capacity);

void quantize_fp8_per_token_ref(const bf16* x, uint8_t* codes, float* scales, int rows, int k);
void quantize_int8_per_token_ref(const bf16* x, int8_t* codes, float* scales, int rows, int k);

// y = bf16(x · wᵀ) with double accumulation: x [M, K] bf16, w [N, K] bf16, y [M, N].
void gemm_bf16_ref(const bf16* x, const bf16* w, bf16* y, int M, int N, int K);
// Exact integer / fixed-point GEMMs of the W8A8 paths, then the scaling of
// scale_rows_cols_*: y = bf16(float(acc · sx[m] · sw[n])) with the sum exact (double).
void gemm_w8a8_int8_ref(const int8_t* xq, const float* sx, const int8_t* wq, const float* sw, bf16* y, int M, int N,
                        int K);
void gemm_w8a8_fp8_ref(const uint8_t* xq, const float* sx, const uint8_t* wq, const float* sw, bf16* y, int M, int N,
                       int K);

void argmax_rows_ref(const bf16* logits, int32_t* out, int rows, int vocab);

}  // namespace llmq::ref
