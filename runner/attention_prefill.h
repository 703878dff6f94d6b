// Tensor-core attention for prefill (runner/attention_prefill.cu): the same causal GQA
// attention over the KV cache as gpu::attention (runner/kernels.h, same AttentionArgs, same
// rounding points), for batches whose rows come in runs of one sequence at consecutive
// positions. attention() in kernels.h only sees device arrays; here the caller also says, on
// the host, how the rows are grouped (RowSpan), so the kernel can tile them without reading
// device memory:
//
//   rows:   | slot 0, pos 0..199 | slot 1, pos 0..16 | slot 2, pos 300..510 |
//   spans:  {0, 200}             {200, 17}           {217, 211}
//
// Each span is cut into query tiles of 64 rows; a block takes one tile and one or two query
// heads of a kv head (GQA: the heads share each K/V tile it stages in shared memory).
// Exact two-pass softmax (row maxima first, then p = bf16(exp(s - max))), so the bf16
// probabilities are those of the per-row kernel; only f32 summation orders differ.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "runner/kernels.h"

namespace llmq::gpu {

// Rows first_row .. first_row + rows - 1 of an attention call. The tensor-core kernel needs
// every row of a span to have the same seq[r] (a row that does not gets NaN output); it is
// fast when their positions are consecutive (it reads pos[r] itself, so any positions are
// computed correctly).
struct RowSpan {
  int first_row = 0;
  int rows = 0;
};

// The maximal runs of one slot at consecutive positions, from host copies of pos/seq [rows]
// (the arrays the caller uploads for the same call).
std::vector<RowSpan> row_spans(const int32_t* pos, const int32_t* seq, int rows);

// Spans of at least this many rows go to the tensor-core kernel; shorter ones (decode rows)
// to the per-row kernel of kernels.h.
constexpr int kPrefillMinSpanRows = 16;

// Whether the tensor-core kernel covers this head layout: head_dim 64 or 128, group
// n_q / n_kv of 1, 2, 4 or 8.
bool attention_prefill_supported(int n_q, int n_kv, int hd);

// gpu::attention with the rows' layout: spans must cover rows 0..a.rows-1 in order, without
// gaps. Spans of >= kPrefillMinSpanRows rows run on tensor cores, the rest (and every row
// when the head layout is not supported) on attention(a, s). Same results as attention(a, s)
// up to f32 summation order (see attention_prefill.cu for the error bound).
void attention(const AttentionArgs& a, const std::vector<RowSpan>& spans, cudaStream_t s);

// The tensor-core kernel alone, on the given spans (disjoint, inside 0..a.rows-1, any length
// >= 1; rows outside them are not written). Requires attention_prefill_supported. For tests
// and benchmarks; callers use attention() above.
void attention_prefill(const AttentionArgs& a, const std::vector<RowSpan>& spans, cudaStream_t s);

}  // namespace llmq::gpu
