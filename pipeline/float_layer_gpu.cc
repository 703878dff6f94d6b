// pipeline/float_layer_gpu.h.
#include "pipeline/float_layer_gpu.h"

#include <string>
#include <vector>

#include "quantizers/gpu/device_util.h"
#include "runner/cuda_check.h"

namespace llmq {
namespace {

// parts [rows_i, K] float32 -> one bf16 [Σ rows_i, K] linear: concatenated, or interleaved
// row by row (two parts of equal shape). staging: a float32 device buffer, grown as needed.
Expected<GpuLinear> fused_bf16(const std::vector<const Tensor*>& parts, bool interleave, DeviceBuffer& staging,
                               cudaStream_t stream, const std::string& what) {
  const int64_t K = parts.front()->dim(1);
  int64_t N = 0;
  for (const Tensor* p : parts) {
    if (p->dim(1) != K || (interleave && p->dim(0) != parts.front()->dim(0)))
      return Status::error(what + ": parts of shapes that cannot be fused");
    N += p->dim(0);
  }
  GpuLinear g;
  g.kind = LinearKind::kBf16;
  g.N = static_cast<int>(N);
  g.K = g.K_pad = static_cast<int>(K);
  g.weight = DeviceBuffer(size_t(N) * K * sizeof(bf16));
  int64_t row0 = 0;
  for (size_t i = 0; i < parts.size(); ++i) {
    const Tensor& p = *parts[i];
    const size_t bytes = size_t(p.numel()) * sizeof(float);
    if (staging.bytes() < bytes) staging = DeviceBuffer(bytes);
    // Stream-ordered: the next part's copy waits for this conversion to have read the staging.
    LLMQ_CUDA_CHECK(cudaMemcpyAsync(staging.as(), p.data<float>(), bytes, cudaMemcpyHostToDevice, stream));
    gpu::f32_rows_to_bf16(staging.as<const float>(), p.dim(0), K, g.weight.as<uint16_t>(),
                          interleave ? static_cast<int64_t>(i) : row0, interleave ? 2 : 1, stream);
    row0 += p.dim(0);
  }
  return g;
}

}  // namespace

Expected<GpuLinear> upload_float_linear(const std::vector<const Tensor*>& parts, bool interleave, cudaStream_t stream,
                                        const std::string& what) {
  DeviceBuffer staging;
  auto g = fused_bf16(parts, interleave, staging, stream, what);
  LLMQ_CUDA_CHECK(cudaStreamSynchronize(stream));  // staging is freed on return
  return g;
}

Expected<GpuLayer> upload_float_layer(const LayerWeights& w, cudaStream_t stream) {
  const std::string where = "layer " + std::to_string(w.index);
  DeviceBuffer staging;
  GpuLayer g;
  LLMQ_ASSIGN_OR_RETURN(g.qkv, fused_bf16({&w.weight(LinearSlot::kQ), &w.weight(LinearSlot::kK), &w.weight(LinearSlot::kV)},
                                          false, staging, stream, where + " q/k/v"));
  LLMQ_ASSIGN_OR_RETURN(g.o, fused_bf16({&w.weight(LinearSlot::kO)}, false, staging, stream, where + " o"));
  LLMQ_ASSIGN_OR_RETURN(g.gate_up, fused_bf16({&w.weight(LinearSlot::kGate), &w.weight(LinearSlot::kUp)}, true,
                                              staging, stream, where + " gate/up"));
  LLMQ_ASSIGN_OR_RETURN(g.down, fused_bf16({&w.weight(LinearSlot::kDown)}, false, staging, stream, where + " down"));
  g.ln1 = DeviceBuffer::from_host(to_bf16(w.input_layernorm.view()));
  g.ln2 = DeviceBuffer::from_host(to_bf16(w.post_attention_layernorm.view()));
  LLMQ_CUDA_CHECK(cudaStreamSynchronize(stream));  // staging is freed on return
  return g;
}

}  // namespace llmq
