// The quantize pipeline's float layer (pipeline/layer.h: float32 host weights) as the runner's
// bf16 decoder layer (runner/layer.h: q/k/v fused, gate/up interleaved). Each float32 weight
// goes to the device as it is and is rounded to bf16 there (gpu::f32_rows_to_bf16) into its
// rows of the fused weight: the values make_gpu_layer(dense_host_linear(...)) gives, without
// converting, fusing and interleaving ~0.5 GB per layer (at 8B) on the host first.
#pragma once

#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "core/status.h"
#include "pipeline/layer.h"
#include "runner/layer.h"

namespace llmq {

Expected<GpuLayer> upload_float_layer(const LayerWeights& w, cudaStream_t stream);

// float32 host weights [rows_i, K] as one bf16 linear: concatenated (q/k/v) or, with
// interleave, gate/up's alternating rows (two parts of one shape). `what` names it in errors.
Expected<GpuLinear> upload_float_linear(const std::vector<const Tensor*>& parts, bool interleave, cudaStream_t stream,
                                        const std::string& what);

}  // namespace llmq
