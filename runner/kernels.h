// Host API of the runner's elementwise, normalisation, attention and activation-quantization
// kernels (runner/norm_rope.cu, runner/attention.cu, runner/act_quant.cu). Each kernel's CPU
// reference is in runner/kernels_ref.h under the same name with a _ref suffix, and
// tests/test_runner_kernels.cc compares them.
//
// Conventions: every pointer is device memory; activations are row-major with one row per
// token; bf16 values travel as uint16_t bit patterns (core/numeric.h), so callers need no CUDA
// headers. Rounding points are those of model/llama.h's Precision::kBFloat16, so a runner
// forward can be compared with the CPU reference to about one bf16 step per op.
//
// Token rows of a batch: row r belongs to KV-cache slot seq[r] and sits at position pos[r];
// decode has one row per sequence, prefill many rows per sequence. Both kinds use the same
// kernels (attention over cache rows 0..pos[r]).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace llmq::gpu {

using bf16 = uint16_t;

// y[r] = bf16(w * bf16(x[r] * rsqrt(mean(x[r]^2) + eps))), x/y [rows, n], w [n]. The mean of
// squares is summed in double (as the reference) so the f32 variance is nearly always the
// reference's exact value. y may alias x.
void rms_norm(const bf16* x, const bf16* w, bf16* y, int rows, int n, float eps, cudaStream_t s);

// RMSNorm with what sits around it fused in (one pass over the row instead of two or three):
// optionally the residual add before it (x = bf16(x + delta), written back to x) and, for a
// W8A8 linear after it, the per-token quantization of the normalised row (codes and scales
// exactly as quantize_*_per_token would make from the bf16 y) instead of the bf16 y.
enum class ActQuant { kNone, kFp8, kInt8 };
struct RmsNormArgs {
  bf16* x;                       // [rows, n]
  const bf16* delta = nullptr;   // [rows, n] residual branch to add first, or none
  const bf16* w = nullptr;       // [n]
  int rows = 0, n = 0;
  float eps = 0.0f;
  bf16* y = nullptr;             // kNone: [rows, n] (may alias x or delta)
  ActQuant quant = ActQuant::kNone;
  void* codes = nullptr;         // kFp8 / kInt8: [rows, ld_codes] e4m3 / int8
  int ld_codes = 0;
  float* scales = nullptr;       // [rows]
};
void rms_norm(const RmsNormArgs& a, cudaStream_t s);

// RMSNorm on a float32 residual stream (the calibration forward, pipeline/gpu_samples.h: the
// hidden state between ops is not rounded to bf16, as in the CPU's float32 path, while every
// other op keeps its bf16 rounding): x = x + float(delta) in f32 (written back, not rounded),
// then y = bf16(w * bf16(x * rsqrt(mean(x^2) + eps))) as rms_norm. y may alias delta (a row's
// delta is read before its y is written); not x.
struct RmsNormF32Args {
  float* x;                      // [rows, n] the residual stream
  const bf16* delta = nullptr;   // [rows, n] residual branch to add first, or none
  const bf16* w = nullptr;       // [n]
  int rows = 0, n = 0;
  float eps = 0.0f;
  bf16* y = nullptr;             // [rows, n]
};
void rms_norm_f32(const RmsNormF32Args& a, cudaStream_t s);

// x[i] = x[i] + float(y[i]) in f32 for n values (the last residual add of an f32 stream).
void add_bf16_to_f32(float* x, const bf16* y, int64_t n, cudaStream_t s);

// x[i] = bf16(x[i] + y[i]) for n values (the residual add).
void add_inplace(bf16* x, const bf16* y, int64_t n, cudaStream_t s);

// out[r, i] = bf16(bf16(silu(g)) * u) with g = gate_up[r, i], u = gate_up[r, inter + i]
// (gate and up computed by one fused GEMM). gate_up [rows, 2*inter], out [rows, inter].
void silu_mul(const bf16* gate_up, bf16* out, int rows, int inter, cudaStream_t s);

// The same with gate and up interleaved: g = gate_up[r, 2i], u = gate_up[r, 2i + 1] (the
// engine interleaves the gate and up weight rows so that a GEMV can apply SwiGLU in its
// epilogue; the GEMM path then needs this layout).
void silu_mul_pairs(const bf16* gate_up, bf16* out, int rows, int inter, cudaStream_t s);

// out[r] = table[ids[r]], table [vocab, n] bf16, ids [rows] int32 (checked by the caller).
void embed(const bf16* table, const int32_t* ids, bf16* out, int rows, int n, cudaStream_t s);

// RoPE on the fused qkv rows [rows, (n_q + 2 n_kv) * hd] (q heads, then k heads, then v
// heads) in place for q, and K (rotated) and V appended to the cache:
// k_cache/v_cache [slots, capacity, n_kv * hd] at [seq[r], pos[r]]. cos/sin [capacity, hd/2]
// f32 tables, already rounded to bf16 values (rope_tables_ref builds them).
struct RopeCacheArgs {
  bf16* qkv;
  const float* cos;
  const float* sin;
  const int32_t* pos;  // [rows]
  const int32_t* seq;  // [rows]
  bf16* k_cache;
  bf16* v_cache;
  int rows, n_q, n_kv, hd, capacity;
};
void rope_and_cache(const RopeCacheArgs& a, cudaStream_t s);

// Causal GQA attention over the cache: for each row r and head h, keys/values 0..pos[r] of
// slot seq[r]. q is the fused qkv buffer (row stride q_stride, q heads first), out [rows,
// n_q*hd]. Like torch's flash SDPA: f32 scores and softmax, the unnormalised probabilities
// rounded to bf16 for P·V, f32 accumulation, times 1/rowsum, output rounded to bf16.
// max_len bounds pos[r] + 1 (sizes the shared memory; capacity of the cache).
struct AttentionArgs {
  const bf16* q;
  int q_stride;
  const bf16* k_cache;
  const bf16* v_cache;
  const int32_t* pos;
  const int32_t* seq;
  bf16* out;
  int rows, n_q, n_kv, hd, capacity;
  // Optional f32 scratch of attention_workspace_floats(workspace_rows, n_q, hd, capacity)
  // floats. With it, decode-sized calls (rows <= 8 * workspace_rows, taken workspace_rows at a
  // time) are split over position chunks across the GPU (flash-decoding, with the global max
  // found first so the bf16 probabilities are the same as unsplit): two kernels per group of
  // rows, scores then P·V with the chunks summed by the last block to finish. Needs no
  // zeroing: the kernels reset the counters they keep there.
  float* workspace = nullptr;
  int workspace_rows = 0;
  // Positions per chunk of the split path: a multiple of 64 up to 1024, or 0 to choose from
  // the grid size (rows, n_kv, capacity vs SM count). Results depend on it (f32 summation
  // order); for benchmarks.
  int split_chunk = 0;
  // Shared-memory stages of K/V tiles in the tensor-core prefill kernel (2, 3 or 4), 0 for
  // the default. For benchmarks.
  int prefill_stages = 0;
  // Blocks of a thread-block cluster per (row, kv head) forcing the cluster path (1, 2, 4 or
  // 8), or 0 to let the grid size choose; a forced split_chunk takes the split kernels instead,
  // and so does any call below sm_90 (no clusters there). For benchmarks and tests.
  int cluster = 0;
  // The caller's promise that the kernel launched just before writes no K/V row of a row's
  // slot but the one at pos[r], and neither pos nor seq (decode: one row per slot, after
  // rope_and_cache). The older rows are then read before that kernel has finished.
  bool history_settled = false;
  // How the one-block-per-(row, kv head) decode kernel (whole_row, from 17 rows at 8B heads)
  // streams K and V at head_dim 128: 0 the default, -1 through registers, 1 through a
  // cp.async ring in shared memory. The same bits either way. For benchmarks and tests.
  int kv_ring = 0;
};
void attention(const AttentionArgs& a, cudaStream_t s);
// Rows r0 .. r0 + n - 1 of a call as a call of their own.
inline AttentionArgs attention_rows(const AttentionArgs& a, int r0, int n) {
  AttentionArgs b = a;
  b.q += static_cast<int64_t>(r0) * a.q_stride;
  b.pos += r0;
  b.seq += r0;
  b.out += static_cast<int64_t>(r0) * a.n_q * a.hd;
  b.rows = n;
  return b;
}
size_t attention_workspace_floats(int rows, int n_q, int hd, int capacity);
// Largest cache capacity attention() supports for this head layout on this device.
int attention_max_capacity(int n_q, int n_kv, int hd);
// Thread-block clusters of `cluster` blocks per (row, kv head) that run at once on this device
// for a call of this shape (cudaOccupancyMaxActiveClusters); 0 below sm_90 or where the
// blocks' chunks of the capacity would be longer than the path takes. For benchmarks.
int attention_max_active_clusters(const AttentionArgs& a, int cluster);

// Per-token dynamic activation quantization exactly as vLLM (model/quantized_linear.h):
// x [rows, k] bf16 -> codes [rows, ld_codes] (columns k.. untouched: the caller zeroes them
// once when it pads K for the GEMM) and per-row scales [rows] f32.
void quantize_fp8_per_token(const bf16* x, uint8_t* codes, int ld_codes, float* scales, int rows, int k, cudaStream_t s);
void quantize_int8_per_token(const bf16* x, int8_t* codes, int ld_codes, float* scales, int rows, int k, cudaStream_t s);

// y[m, n] = bf16(acc[m, n] * sx[m] * sw[n]) in double (the reference's order), for the W8A8
// GEMMs: acc [M, N] int32 (INT8) or f32 (FP8).
void scale_rows_cols_i32(const int32_t* acc, const float* sx, const float* sw, bf16* y, int M, int N, cudaStream_t s);
void scale_rows_cols_f32(const float* acc, const float* sx, const float* sw, bf16* y, int M, int N, cudaStream_t s);

// out[r] = argmax over logits[r, 0..vocab) (first index on ties; -0 equals +0), logits bf16
// [rows, vocab]. The vocabulary is split over many blocks per row; they meet in `workspace`
// (argmax_workspace_bytes(rows), zeroed once by the caller and left zeroed by every call).
// Without a workspace one block per row does it all (slow for large vocabularies).
size_t argmax_workspace_bytes(int rows);
void argmax_rows(const bf16* logits, int32_t* out, int rows, int vocab, void* workspace, cudaStream_t s);

// x_out[m, j] = x[m, perm[j]] (act-order W4A16: inputs follow the sorted weight columns).
void gather_columns(const bf16* x, const int32_t* perm, bf16* x_out, int M, int K, cudaStream_t s);

}  // namespace llmq::gpu
