// AWQ on the GPU quantize path (pipeline/quantize_gpu.h): methods_awq.cc's steps, with the
// forwards, the scale search's losses and the clip search on the device
// (quantizers/gpu/awq_gpu.h). Per layer, for each linear input in order (attn_in, attn_out,
// mlp_in, mlp_out):
//   1. capture the input X of every sample with a forward of the float layer that stops there
//      ([Σ T_s, in] bf16 on the device), its per-channel mean |x| (x_mean) and the clip
//      search's sub-sampled rows (awq_clip_rows, the CPU's rows);
//   2. if its mapping applies (awq_layer.h): the reference block output of the float layer on
//      X, then awq_search_scales (the host loop, 20 ratios and s = 1) with a loss that
//      fake-quantizes the mapping's linears on the device (Q(W diag(s)) diag(s)^-1 as bf16)
//      and runs the block on X, chunk by chunk: mean squared difference to the reference.
// Then the scales fold into the float weights (host, as the CPU), the clip search runs on the
// device on the folded weights and the sub-sampled inputs / s, and the final quantization is
// the host code (awq_finish_linear). The samples advance through the float layer (AutoAWQ's
// rule, as the CPU path).
//
// Differences from the CPU path: the forwards and block outputs are bf16 where the CPU
// computes in float32 (x_mean, the losses and the clip inputs differ by bf16 rounding).
//
// Device memory: beyond the samples (gpu_samples.h), one captured input [Σ T_s, max(hidden,
// intermediate)] bf16 and one reference output [Σ T_s, hidden] bf16, kept between layers, plus
// the float32 weights of one mapping: 9.5 GB + 0.5 GB for 128 x 2048 tokens of an 8B model.
#pragma once

#include <nlohmann/json.hpp>

#include "core/status.h"
#include "pipeline/gpu_samples.h"
#include "pipeline/layer.h"

namespace llmq {

// Seconds per stage of the GPU quantize path, summed over layers.
// quantize includes AWQ's device clip search, which clip also counts on its own.
struct GpuStageSeconds {
  double upload = 0, forward = 0, stats = 0, quantize = 0, clip = 0;
  nlohmann::ordered_json json() const {
    nlohmann::ordered_json j = {{"upload_s", upload}, {"forward_s", forward}, {"stats_s", stats}, {"quantize_s", quantize}};
    if (clip > 0) j["of_which_clip_s"] = clip;
    return j;
  }
};

class GpuAwq {
 public:
  GpuAwq(GpuSamples& samples, DevicePeak& memory, GpuStageSeconds& seconds)
      : samples_(samples), memory_(memory), seconds_(seconds) {}
  Expected<LayerResult> run_layer(LayerWeights& w, LayerContext& ctx);

 private:
  GpuSamples& samples_;
  DevicePeak& memory_;
  GpuStageSeconds& seconds_;
  DeviceBuffer captured_;   // [Σ T_s, max in] bf16: one linear input of every sample
  DeviceBuffer reference_;  // [Σ T_s, hidden] bf16: the float block's output on it
  DeviceBuffer out_;        // [max_rows, hidden] bf16: a candidate block's output on one chunk
  DeviceBuffer acc_;        // one double: a loss's sum of squares
};

}  // namespace llmq
