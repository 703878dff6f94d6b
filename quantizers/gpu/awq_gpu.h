// AWQ's device kernels: the scale search's fake-quantized weight, the clip search, and the
// squared difference the scale search's block loss sums. Each is the CPU function of
// quantizers/awq.h (named below) on device pointers, on the caller's stream; the quantize
// pipeline runs the loop over scale candidates and linears around them.
//
// Exactness: awq_fake_quant_scaled is bit-identical to the CPU's (this library is compiled
// with --fmad=false and the arithmetic is the CPU's, op for op, with the INT4 grid of
// int_grid.h). awq_search_clip computes the same errors with a different summation order,
// so near-ties between candidates may pick a different (equally good) clip.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "quantizers/awq.h"

namespace llmq::gpu {

// dst rows = bf16(Q(W diag(s)) diag(s)^-1), the reference being awq_fake_quant_scaled
// (before its bf16 rounding, which is f32_to_bf16's round-to-nearest-even).
// w: device F32 [out, in] row-major; s: device F32 [in], or nullptr for s = 1; Q is AWQ's
// asymmetric INT4 fake quantization per row and group of cfg.group_size (cfg.scale_dtype).
// Row r of the result is written to dst + (dst_row0 + r * dst_row_step) * in, so q/k/v can
// land in a fused [q; k; v] weight (step 1) and gate/up in an interleaved one (step 2).
// Requires in % group_size == 0. Asynchronous on `stream`.
void awq_fake_quant_scaled(const float* w, int64_t out, int64_t in, const float* s, const AwqConfig& cfg,
                           uint16_t* dst, int64_t dst_row0, int64_t dst_row_step, cudaStream_t stream);

// best[n, g] = the clip value max|W[n, group g]| * (1 - i / clip_grid), i < int(max_shrink *
// clip_grid), whose clamped, fake-quantized group minimises mean_t (Σ_k x[t, k] (Q(Wc) - W)[n, k])²
// (the first of equal errors wins); the reference is awq_search_clip_rows.
// w: device F32 [out, in] (the scaled weight); xs: device F32 [T, in], already sub-sampled
// (awq_clip_rows), 16-byte aligned; best: device F32 [out, G], G = in / group_size.
// Requires group_size % 32 == 0, group_size <= 256 and at most 128 candidates. Uses
// no workspace; asynchronous on `stream`. Cost: 2 out * in * T * candidates flops (float32
// FMAs, SIMT): the five clip searches of a Llama-3.1-8B layer at T = 512 are ~2 TFLOP.
void awq_search_clip(const float* w, int64_t out, int64_t in, const float* xs, int64_t T, const AwqConfig& cfg,
                     float* best, cudaStream_t stream);

// *acc += Σ_i (a_i - b_i)² over n bf16 values: each term in float32 (the CPU's
// (float(a) - float(b))²), summed in float64 in a fixed order (deterministic: no atomics);
// acc is a device double. Asynchronous; 8 KB of stream-ordered scratch (cudaMallocAsync).
void sum_squared_diff(const uint16_t* a, const uint16_t* b, int64_t n, double* acc, cudaStream_t stream);

}  // namespace llmq::gpu
