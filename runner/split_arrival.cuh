// The end of a split kernel's block: its results for the others are written, and the block
// counts itself in; the one block that arrives last (of `blocks`) then reads everyone's
// results (__ldcg, from L2) and finishes. Used by the split decode attention, the W4A16
// tensor-core GEMV and the skinny BF16 GEMM; each resets its counters for the next launch.
#pragma once

#include <cstdint>

namespace llmq::gpu {

// True in every thread of the block that brings *counter to `blocks`; call from all threads.
__device__ __forceinline__ bool last_block_to_arrive(unsigned* counter, unsigned blocks) {
  __shared__ bool last;
  __threadfence();  // this block's results are visible device-wide before it arrives
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(counter, 1u) == blocks - 1;
  __syncthreads();
  if (!last) return false;
  __threadfence();  // then the others' results, published before they arrived
  return true;
}

}  // namespace llmq::gpu
