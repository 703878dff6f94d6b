// W4A16: group-wise INT4 weights (AWQ, GPTQ, compressed-tensors pack-quantized) times BF16
// activations, y[M, N] = x[M, K] · dequant(W)[N, K]ᵀ with dequant w = (code - zero) · scale.
//
// Device layout (w4a16_layout, done once at load). When group_size and K are multiples of 64
// (AWQ / GPTQ's 128 and most others) the codes are laid out for the tensor-core kernel:
//   packed [ceil(N/16), K/64, 32 lanes, 4] uint32: per 16-row tile, per 64-column chunk, each
//                            lane's uint4 holds its mma.m16n8k16 A fragments (8 codes) for the
//                            chunk's four k16 steps. A warp's load of one chunk is 512
//                            contiguous bytes, and nibble pairs (bits 4i, 16 + 4i) become one
//                            bf16x2 register with one LOP3: (w >> 4i) & 0x000F000F | 0x43004300
//                            = (128 + c) as bf16, minus (128 + zero) with one HSUB2 gives
//                            c - zero exactly. Rows are padded to a multiple of 16 (scale 0).
// Otherwise the plain layout [N, K/8] uint32 (nibble i of word j = code of k = 8j + i), read
// by a CUDA-core GEMV (lane per word, magic-number conversion).
//   params [N (padded), G] uint32  bits 0..15: the group's scale as stored (bf16 or f16 bits,
//                            exact in f32), bits 16..19: zero point.
//   perm   [K] int32         act-order only: columns sorted by g_idx (stable), so every group
//                            is a contiguous run of group_size columns; the kernels then read
//                            x[:, perm] (gather_columns) and use k / group_size.
// Small M (<= kW4A16MmaMaxM per pass): the tensor-core kernels compute Σ x·(c - zero) per
// 64-column chunk on mma.sync with f32 accumulation and multiply by the group's scale once
// per chunk. M <= 8: one block per 16-row tile, x read straight from L1 (faster there).
// M 9..64: a block takes 8 tiles (128 output rows, one or two warps per tile) over a K range and
// streams weights and x[0:M, 256 columns] through a cp.async pipeline in shared memory, so
// each x slice is read once per 128 rows (B fragments by ldmatrix); K is split over blocks
// where N alone gives too few blocks, the splits summed in a fixed order by the block that
// arrives last (workspace W4A16Scratch::split; without one, no split). Up to 64 tokens in
// one pass, up to kW4A16PassesMaxM in passes of 64. The plain layout's CUDA-core GEMV takes
// up to kW4A16GemvMaxM rows. Larger M (prefill):
// dequantize to a BF16 [N, K] scratch and run the cuBLASLt BF16 GEMM; the BF16 rounding of
// each dequantized weight is the only extra error (relative 2^-9 per weight).
#pragma once

#include <cstdint>
#include <vector>

#include "core/status.h"
#include "quantizers/quantized_linear.h"

namespace llmq {

// Token rows of one pass: the plain layout's CUDA-core GEMV, the tensor-core GEMV.
constexpr int kW4A16GemvMaxM = 32;
constexpr int kW4A16MmaMaxM = 64;
// Up to this many token rows the tensor-core GEMV runs in passes of kW4A16MmaMaxM rows (each
// pass re-reads the 4-bit weights: 0.5 byte per weight) instead of dequantizing to a BF16
// copy for cuBLAS (write 2 + read 2 + 0.5 bytes per weight): decode at batch 65..128 stays
// on the packed weights.
constexpr int kW4A16PassesMaxM = 2 * kW4A16MmaMaxM;

struct W4A16Layout {
  int64_t out_features = 0, in_features = 0, group_size = 0, num_groups = 0;
  bool scale_f16 = false;         // params hold f16 bits (else bf16 bits)
  bool mma = false;               // tensor-core layout (see above), else the plain one
  std::vector<uint32_t> packed;   // mma: [ceil(N/16), K/64, 32, 4]; plain: [N, K/8]
  std::vector<uint32_t> params;   // [N padded to 16 when mma, G]
  std::vector<int32_t> perm;      // [K] or empty
};

// Fails (one line) when the linear is not int4, K is not a multiple of 8 or of group_size,
// the scale dtype is neither BF16 nor F16, or g_idx does not give every group exactly
// group_size columns.
Expected<W4A16Layout> w4a16_layout(const QuantizedLinear& q);

// Reference: y bf16 [M, N] = bf16(Σ_k x[m, k] · dequantize(q)[n, k]) with double sums, from the
// logical form (so a layout bug in w4a16_layout cannot hide in the reference).
void w4a16_gemm_ref(const QuantizedLinear& q, const uint16_t* x, uint16_t* y, int M);

}  // namespace llmq

#if defined(LLMQ_HAVE_CUDA)
#include <cuda_runtime.h>

#include "runner/device_buffer.h"
#include "runner/gemm.h"
#include "runner/gemv.h"

namespace llmq::gpu {

struct W4A16Weights {
  int N = 0, K = 0, group_size = 0, G = 0;
  bool scale_f16 = false;
  bool mma = false;
  DeviceBuffer packed;  // see W4A16Layout, then kPackedTail bytes
  DeviceBuffer params;  // [N (padded), G] uint32, then kParamsTail bytes
  DeviceBuffer perm;    // [K] int32, empty without act-order
  // Zero bytes after packed and params: the M <= 8 kernel loads up to three iterations of
  // 16 warps' chunks (and their group words) past a tile's end unpredicated, and sums none.
  static constexpr size_t kPackedTail = 3 * 16 * 512, kParamsTail = 64 * 4;

  static W4A16Weights upload(const W4A16Layout& l);
  // The weights' bytes (what a forward reads), without the tails.
  size_t bytes() const {
    return packed.bytes() == 0 ? 0 : packed.bytes() + params.bytes() + perm.bytes() - kPackedTail - kParamsTail;
  }
};

// Scratch the W4A16 forward needs: x_perm [M, K] bf16 (act-order), w_bf16 [N, K] where M
// exceeds the GEMV (w4a16_fuses_epilogue false), and optionally the tensor-core GEMV's split-K
// workspace: split_bytes bytes (w4a16_split_bytes for the largest N and pass), zeroed once
// when allocated (the kernel leaves its arrival counters at zero again), used by one stream
// at a time. Without it (or smaller) the GEMV splits K less or not at all: the same result
// up to f32 summation order, slower where N is small (q/k/v, o, down at N = 4096).
struct W4A16Scratch {
  uint16_t* x_perm = nullptr;
  uint16_t* w_bf16 = nullptr;
  void* split = nullptr;
  size_t split_bytes = 0;
};

// Workspace bytes for every tensor-core GEMV with N <= max_n and min(M, kW4A16MmaMaxM) <=
// max_m on the current device (about 31 MiB for N 28672, M 64 on 132 SMs).
size_t w4a16_split_bytes(int max_n, int max_m);

// epi: the GEMV epilogue of runner/gemv.h, only where w4a16_fuses_epilogue(w, M) (the
// tensor-core GEMV); elsewhere it must be empty.
void w4a16_gemm(const W4A16Weights& w, const uint16_t* x, uint16_t* y, int M, const W4A16Scratch& scratch,
                Blas& blas, cudaStream_t s, const GemvEpilogue& epi = {});
bool w4a16_fuses_epilogue(const W4A16Weights& w, int M);
// The two halves, exposed for tests: the small-M kernel (M <= kW4A16MmaMaxM with the
// tensor-core layout, x 16-byte aligned; split / split_bytes as W4A16Scratch; direct_warps 4, 8
// or 16 forces the warps per tile of the M <= 8 kernel, 0 picks them), and the dequantization
// of the large-M path (w_bf16 [N, K] in the layout's column order).
void w4a16_gemv(const W4A16Weights& w, const uint16_t* x, uint16_t* y, int M, cudaStream_t s,
                const GemvEpilogue& epi = {}, void* split = nullptr, size_t split_bytes = 0, int direct_warps = 0);
void w4a16_dequantize(const W4A16Weights& w, uint16_t* w_bf16, cudaStream_t s);

}  // namespace llmq::gpu
#endif
