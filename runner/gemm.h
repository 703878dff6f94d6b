// The runner's cuBLASLt GEMMs: y[M, N] = x[M, K] · w[N, K]ᵀ for BF16, FP8 E4M3 and INT8
// operands (weights [out, in] as stored in the checkpoint). cuBLAS is column-major, so each
// call is the "TN" product Cᵀ[N, M] = W · Xᵀ, which is also the only layout cuBLASLt accepts
// for FP8 and the fast one for INT8. The W8A8 products return their raw accumulator (f32 for
// FP8, exact int32 for INT8); gpu::scale_rows_cols_* applies per-token x per-channel scales.
// Plans (descriptors + heuristic algorithm) are cached per shape, so steady-state calls and
// CUDA-graph capture do no host-side search.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <vector>

namespace llmq::gpu {

class Blas {
 public:
  Blas();
  ~Blas();
  Blas(const Blas&) = delete;
  Blas& operator=(const Blas&) = delete;

  // y bf16 [M, N] = bf16(x bf16 [M, K] · w bf16 [N, K]ᵀ), f32 accumulation.
  void gemm_bf16(const uint16_t* x, const uint16_t* w, uint16_t* y, int M, int N, int K, cudaStream_t s);
  // acc f32 [M, N] = xq [M, K] · wq [N, K]ᵀ on E4M3 codes (K % 16 == 0), f32 accumulation.
  void gemm_fp8(const uint8_t* xq, const uint8_t* wq, float* acc, int M, int N, int K, cudaStream_t s);
  // acc int32 [M, N] = xq [M, K] · wq [N, K]ᵀ exactly (K % 4 == 0).
  void gemm_int8(const int8_t* xq, const int8_t* wq, int32_t* acc, int M, int N, int K, cudaStream_t s);

  // The benchmark's look at cuBLASLt's choice: up to max_algos of the algorithms its heuristic
  // offers for this bf16 product, in its order, each run on these operands (ms per call over
  // `iters` calls after one) with its output compared bit for bit with the first one's.
  struct AlgoTiming {
    int tile = 0, stages = 0, splitk = 0, cluster = 0;  // cublasLtMatmulAlgoConfigAttributes_t ids
    double ms = 0.0;
    bool same_bits = false;
  };
  std::vector<AlgoTiming> time_bf16_algos(const uint16_t* x, const uint16_t* w, uint16_t* y, int M, int N, int K,
                                          int max_algos, int iters);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace llmq::gpu
