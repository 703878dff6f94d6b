// GPU time of a callable for the benchmarks (bench_main.cc, attention_bench_main.cc, and the
// benchmark's helpers in Blas::time_bf16_algos and Engine::replay_decode_steps): warm-up calls,
// then `iters` calls between two events on stream `s` (the default stream unless given).
#pragma once

#include <cuda_runtime.h>

#include "runner/cuda_check.h"

namespace llmq {

// Milliseconds per call of fn, averaged over `iters` calls after `warmup` calls.
template <class Fn>
double gpu_ms_per_call(Fn fn, int iters, int warmup, cudaStream_t s = nullptr) {
  for (int i = 0; i < warmup; ++i) fn();
  cudaEvent_t a, b;
  LLMQ_CUDA_CHECK(cudaEventCreate(&a));
  LLMQ_CUDA_CHECK(cudaEventCreate(&b));
  LLMQ_CUDA_CHECK(cudaEventRecord(a, s));
  for (int i = 0; i < iters; ++i) fn();
  LLMQ_CUDA_CHECK(cudaEventRecord(b, s));
  LLMQ_CUDA_CHECK(cudaEventSynchronize(b));
  float ms = 0.0f;
  LLMQ_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
  LLMQ_CUDA_CHECK(cudaEventDestroy(a));
  LLMQ_CUDA_CHECK(cudaEventDestroy(b));
  return ms / iters;
}

}  // namespace llmq
