// GPU time of a callable for the benchmark programs (bench_main.cc, attention_bench_main.cc):
// warm-up calls, then `iters` calls between two events on the default stream.
#pragma once

#include <cuda_runtime.h>

#include "runner/cuda_check.h"

namespace llmq {

// Milliseconds per call of fn, averaged over `iters` calls after `warmup` calls.
template <class Fn>
double gpu_ms_per_call(Fn fn, int iters, int warmup) {
  for (int i = 0; i < warmup; ++i) fn();
  cudaEvent_t a, b;
  LLMQ_CUDA_CHECK(cudaEventCreate(&a));
  LLMQ_CUDA_CHECK(cudaEventCreate(&b));
  LLMQ_CUDA_CHECK(cudaEventRecord(a));
  for (int i = 0; i < iters; ++i) fn();
  LLMQ_CUDA_CHECK(cudaEventRecord(b));
  LLMQ_CUDA_CHECK(cudaEventSynchronize(b));
  float ms = 0.0f;
  LLMQ_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
  LLMQ_CUDA_CHECK(cudaEventDestroy(a));
  LLMQ_CUDA_CHECK(cudaEventDestroy(b));
  return ms / iters;
}

}  // namespace llmq
