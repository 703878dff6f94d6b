// BF16 GEMM for a few token rows on tensor cores: y[M, N] = bf16(x[M, K] · w[N, K]ᵀ) with f32
// accumulation, for the decode linears of 9..64 rows that the GEMVs (runner/gemv.h) leave to
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

namespace llmq::gpu {

constexpr int kSkinnyMaxM = 64;
constexpr int kSkinnyBlockN = 128;  // weight rows per block (by default; 64 may be asked for)
constexpr int kSkinnyChunkK = 64;   // k per pipeline stage

// Whether gemm_bf16_skinny takes the shape: 1 <= M <= 64, K a multiple of 64, N >= 1.
bool skinny_bf16_supported(int M, int N, int K);
// K splits per block column for N x K on `sms` SMs with `workspace_bytes` of workspace: one
// where ceil(N / 128) columns already give a block per SM, else as many as fill two blocks per
// SM in one wave, at most 8 and at least 4 stages of K each, within the workspace.
int skinny_splits(int M, int N, int K, int sms, size_t workspace_bytes, int block_n = kSkinnyBlockN);
// Workspace (arrival counters, then f32 partials) for every call of up to max_m rows on this
// device; zero it once, the kernel leaves its counters at zero.
size_t skinny_workspace_bytes(int max_m);
// splits 0: skinny_splits; otherwise forced (tests), within what the workspace holds.
// block_n: weight rows per block, 64 or 128 (0: kSkinnyBlockN).
void gemm_bf16_skinny(const uint16_t* x, const uint16_t* w, uint16_t* y, int M, int N, int K, void* workspace,
                      size_t workspace_bytes, cudaStream_t s, int splits = 0, int block_n = 0);

}  // namespace llmq::gpu
