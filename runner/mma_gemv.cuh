// Pieces shared by the tensor-core decode GEMVs (M <= 8 token rows, one block per 16-row tile
// whose warps split K): W4A16's mma_direct (runner/w4a16.cu) and W8A8's (runner/gemv_mma.cu).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "core/numeric.h"
#include "runner/epilogue.cuh"
#include "runner/gemv.h"

namespace llmq::gpu {

// The GEMV epilogue (runner/gemv.h) for the block's kRows output rows n0.. (at(tok, r): the f32
// value of token tok, block row r): plain, plus the residual, or SwiGLU of row pairs (2i, 2i + 1;
// kRows is even, so a block holds whole pairs; y is then [M, N/2]).
template <int kRows, class At>
__device__ void store_block(At at, int M, int n0, int N, uint16_t* y, const GemvEpilogue& epi) {
  const int rows = min(kRows, N - n0);
  if (epi.swiglu) {
    const int half_n = N / 2, p0 = n0 / 2;
    for (int e = threadIdx.x; e < M * (kRows / 2); e += blockDim.x) {
      const int tok = e / (kRows / 2), p = e % (kRows / 2);
      if (p0 + p >= half_n) continue;
      y[static_cast<int64_t>(tok) * half_n + p0 + p] = swiglu_out(at(tok, 2 * p), at(tok, 2 * p + 1));
    }
    return;
  }
  for (int e = threadIdx.x; e < M * kRows; e += blockDim.x) {
    const int tok = e / kRows, r = e % kRows;
    if (r >= rows) continue;
    const int64_t i = static_cast<int64_t>(tok) * N + n0 + r;
    y[i] = residual_out(at(tok, r), epi.residual ? epi.residual + i : nullptr);
  }
}

}  // namespace llmq::gpu
