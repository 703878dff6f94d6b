// BF16 GEMM for a few token rows on tensor cores: y[M, N] = bf16(x[M, K] · w[N, K]ᵀ) with f32
// accumulation, for the decode linears of 5..64 rows that the GEMVs (runner/gemv.h) leave to
// cuBLASLt. Weight rows are the MMA's A operand (16 rows), tokens its B operand (8 columns), so
// one block streams 128 weight rows past all M tokens; where N gives fewer blocks than the
// GPU holds (q/k/v, o, down at 8B), K is split over blocks and the last block of a column to
// finish adds the splits' f32 partial sums in split order (deterministic for a given split
// count). Weights and x go through a four-stage cp.async ring in swizzled shared memory.
// CPU reference: ref::gemv_bf16_ref; tests: tests/test_runner_gemv.cc.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "runner/gemv.h"

namespace llmq::gpu {

constexpr int kSkinnyMaxM = 64;
// Token rows at which the engine runs a BF16 linear as gemm_bf16_skinny rather than cuBLASLt,
// where its stages are 128 k deep (skinny_chunk_k), with the residual and SwiGLU epilogues.
// H200, 8B shapes, us, skinny against cuBLASLt: at 9..16 rows o 12.0 / 13.4, gate_up 56.4 /
// 56.8, down 30.9 / 32.6, lm_head 239.6 / 243.4; at 5..8 rows o 10.9 / 13.4, gate_up 56.5 /
// 57.4, down 29.8 / 32.6, lm_head 240.2 / 248.6. q/k/v (stages of 64) stays on cuBLASLt: at
// 5..8 rows it is faster alone (15.1 / 16.7) but the decode step was slower with it. From 32
// rows on cuBLASLt is as fast or faster. Below 5 rows the GEMVs (kBf16GemvMaxM) take over.
constexpr int kBf16SkinnyMinM = 5;
constexpr int kBf16SkinnyMaxM = 16;
constexpr int kSkinnyBlockN = 128;  // weight rows per block (by default; 64 may be asked for)
constexpr int kSkinnyChunkK = 64;   // K granularity (k per pipeline stage: 64 or 128)

// Whether gemm_bf16_skinny takes the shape: 1 <= M <= 64, K a multiple of 64, N >= 1.
bool skinny_bf16_supported(int M, int N, int K);
// K splits per block column for N x K on `sms` SMs with `workspace_bytes` of workspace: the
// count (at most 8) that best evens the blocks over the SMs, less what the f32 partial sums
// cost (so fewer at more rows), with at least 4 stages of chunk_k each, at most 4 blocks per SM,
// within the workspace.
// chunk_k 0: skinny_chunk_k's choice.
int skinny_splits(int M, int N, int K, int sms, size_t workspace_bytes, int block_n = kSkinnyBlockN,
                  int chunk_k = 0);
// k per pipeline stage by default: 128 (each weight row read in 256-byte pieces: gate_up at
// M <= 16 reads HBM at 93-96% so, 65-76% in pieces of 128) where K allows and each of the
// `splits` (0: the default at 128) still runs at least 8 stages, twice the cp.async ring;
// else 64 (q/k/v at 8B: 8 splits of 4096 leave 4 stages of 128).
int skinny_chunk_k(int M, int N, int K, int sms, size_t workspace_bytes, int block_n = kSkinnyBlockN,
                   int splits = 0);
// Workspace (arrival counters, then f32 partials) for every call of up to max_m rows on this
// device; zero it once, the kernel leaves its counters at zero.
size_t skinny_workspace_bytes(int max_m);
// Workspace one call of M x N at `splits` K splits needs (forced splits: tests, benchmarks).
size_t skinny_split_workspace_bytes(int M, int N, int splits, int block_n = kSkinnyBlockN);
// splits 0: skinny_splits; otherwise forced (tests), within what the workspace holds.
// block_n: weight rows per block, 64 or 128 (0: kSkinnyBlockN). chunk_k: k per stage, 64 or
// 128 dividing K (0: skinny_chunk_k for the given or default splits). e: the GEMVs' residual or
// SwiGLU epilogue (runner/gemv.h, the same bits), applied by whichever block stores an output;
// no fused norm.
void gemm_bf16_skinny(const uint16_t* x, const uint16_t* w, uint16_t* y, int M, int N, int K, void* workspace,
                      size_t workspace_bytes, cudaStream_t s, int splits = 0, int block_n = 0, int chunk_k = 0,
                      const GemvEpilogue& e = {});

}  // namespace llmq::gpu
