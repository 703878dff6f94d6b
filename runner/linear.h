// One linear layer of the runner on the device, in its checkpoint's form (runner/engine.h has
// the formats), and the host-side steps that get it there: read a checkpoint linear (or RTN it
// in memory), fuse q/k/v and gate/up into one linear each, upload. Shared by the engine
// (runner/engine.cc) and the decoder-layer forward that the quantize pipeline also uses
// (runner/layer.h).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"
#include "formats/checkpoint.h"
#include "quantizers/quantized_linear.h"
#include "runner/device_buffer.h"
#include "runner/gemm.h"
#include "runner/gemv.h"
#include "runner/kernels.h"
#include "runner/w4a16.h"

namespace llmq {

using bf16 = uint16_t;

// A float host view as bf16 values: BF16 checkpoints are copied as they are (16 GB of an 8B
// model load in seconds), other float dtypes rounded from float32.
std::vector<bf16> to_bf16(const TensorView& v);

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// Rows of a and b alternating, a's row i at 2i and b's at 2i + 1: the gate and up rows of the
// fused MLP input linear, so that one GEMV block holds both rows of a (gate, up) pair and can
// apply SwiGLU in its epilogue (runner/gemv.h). out holds 2 x rows rows.
void interleave_rows(const void* a, const void* b, void* out, int64_t rows, size_t row_bytes);
Tensor interleave_rows(const Tensor& a, const Tensor& b);  // same dtype and shape

// What one forward needs besides the layer buffers: activation-quantization codes and scales,
// the W8A8 accumulator and the W4A16 scratch, sized for the largest linear at max_rows.
struct LinearScratch {
  DeviceBuffer codes;   // [rows, max padded K] int8 / e4m3
  DeviceBuffer scales;  // [rows] f32
  DeviceBuffer acc;     // [rows, max N] int32 / f32
  DeviceBuffer x_perm;  // [rows, max K] bf16 (act-order W4A16)
  DeviceBuffer w_bf16;  // [max N * max K] bf16 (W4A16 at M > kW4A16GemvMaxM)
  DeviceBuffer split;   // W4A16 GEMV split-K workspace (w4a16_split_bytes), zeroed once
  DeviceBuffer skinny;  // BF16 skinny GEMM workspace (gpu::skinny_workspace_bytes), zeroed once
};

enum class LinearKind { kBf16, kFp8, kInt8, kW4A16 };

// A linear's input: bf16 activations, or already quantized per token into the scratch codes
// and scales (W8A8 after an RMSNorm that fused the quantization in), or with norm_weight set
// the residual stream that the linear's GEMV normalizes itself (GpuLinear::fuses_norm).
struct LinearIn {
  const bf16* x = nullptr;
  bool quantized = false;
  const bf16* norm_weight = nullptr;  // [K]: gpu::GemvEpilogue::norm_weight
  float norm_eps = 0.0f;
};

// One linear on the device in its checkpoint form.
struct GpuLinear {
  LinearKind kind = LinearKind::kBf16;
  int N = 0, K = 0, K_pad = 0;  // K_pad: K rounded up to the W8A8 GEMM's multiple (zeros)
  DeviceBuffer weight;          // bf16 [N, K] or codes [N, K_pad]
  const bf16* shared_weight = nullptr;  // tied lm_head: the embedding table
  DeviceBuffer scales;          // W8A8: [N] f32
  gpu::W4A16Weights w4;
  std::string w4_desc;

  size_t bytes() const { return weight.bytes() + scales.bytes() + w4.bytes() + (shared_weight ? size_t(N) * K * 2 : 0); }

  // Decode shapes run as GEMVs (one pass over the weights at HBM bandwidth instead of GEMM
  // tiles made for large M), which also apply the epilogue (residual add, SwiGLU) in-kernel.
  bool uses_gemv(int M) const;
  // Whether forward takes a LinearIn with norm_weight at M rows: the BF16 GEMV applies the
  // RMSNorm before it on the way in, so decode runs no norm kernel (gemv.h).
  bool fuses_norm(int M) const { return kind == LinearKind::kBf16 && uses_gemv(M); }
  // BF16 linears at kBf16SkinnyMinM..kBf16SkinnyMaxM rows whose skinny GEMM runs 128-k stages
  // go to gemm_bf16_skinny rather than cuBLASLt (gemm_skinny.h).
  bool uses_skinny(int M) const;
  // Whether forward applies a residual or SwiGLU epilogue at M rows (the GEMVs' and the skinny
  // GEMM's; cuBLASLt's products leave them to the norm and silu_mul kernels after).
  bool applies_epilogue(int M) const;
  // The per-token quantization the RMSNorm before this linear may produce for it (W8A8 inputs
  // that need no zero padding).
  gpu::ActQuant input_quant() const;
  // y = epi(in · Wᵀ); a residual or SwiGLU epilogue only where applies_epilogue(M), a fused norm
  // only where fuses_norm(M).
  void forward(LinearIn in, bf16* y, int M, const gpu::GemvEpilogue& epi, LinearScratch& s, gpu::Blas& blas,
               cudaStream_t st) const;
};

// A linear as read from the checkpoint, before upload: dense (float32) or quantized.
struct HostLinear {
  bool quantized = false;
  std::vector<bf16> dense;  // [out, in]
  int64_t out = 0, in = 0;
  QuantizedLinear q;        // when quantized
};

// From the checkpoint: the quantized linear at prefix as stored, or the float one as bf16;
// rtn ("fp8", "int8", "w4a16", or "") RTN-quantizes a float linear in memory (EngineOptions).
Expected<HostLinear> read_linear(const HfCheckpoint& ckpt, const std::string& prefix, int64_t out, int64_t in,
                                 const std::string& rtn);
// A host weight [out, in] of any float dtype as a bf16 linear.
HostLinear dense_host_linear(const TensorView& w);
// A quantized linear as it is (deep copy).
HostLinear quantized_host_linear(const QuantizedLinear& q);

// q/k/v (or gate/up) as one linear with the outputs concatenated, or with interleave (two
// parts of the same size) alternating as interleave_rows. Quantized parts must share scheme,
// group size and act-order permutation.
Expected<HostLinear> concat(std::vector<HostLinear> parts, const std::string& what, bool interleave = false);
// With interleave (gate/up: two parts of equal size) the rows alternate between the parts.
Expected<HostLinear> fuse(std::vector<HostLinear> parts, const std::string& what, bool interleave = false);
// To the device in the runner's layout for its kind (fp8_supported: the GPU runs FP8 GEMMs).
Expected<GpuLinear> upload(const HostLinear& h, bool fp8_supported);

}  // namespace llmq
