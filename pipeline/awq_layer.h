// What the CPU (methods_awq.cc) and GPU (awq_gpu.cc) AWQ layer passes share: the four scale
// mappings of a Llama decoder layer, folding a chosen scale into the layer, and the final
// clip + quantization of one linear. The searches themselves (quantizers/awq.h on the host,
// quantizers/gpu/awq_gpu.h on the device) and the forwards that feed them differ.
#pragma once

#include <optional>
#include <vector>

#include "pipeline/layer.h"
#include "quantizers/awq.h"

namespace llmq {

// Whose output a mapping's scale-search loss compares.
enum class AwqLossBlock : uint8_t {
  kAttention,  // the attention block (q/k/v, RoPE, attention, o_proj) from attn_in
  kMlp,        // the MLP block (gate/up, SwiGLU, down_proj) from mlp_in
  kLinear,     // the mapping's single linear
};

struct AwqMapping {
  const char* name;
  LinearInput input;
  std::vector<LinearSlot> linears;  // scaled by s (columns)
  AwqLossBlock block;
  // The op before them that absorbs 1/s: a norm, or a linear's rows.
  Tensor LayerWeights::*norm;
  std::optional<LinearSlot> prev_linear;
};

// input_layernorm -> q,k,v; v_proj -> o_proj; post_attention_layernorm -> gate,up;
// up_proj -> down_proj (AutoAWQ's order).
const std::vector<AwqMapping>& awq_mappings();
// Whether the mapping is searched for this layer: its linears are quantized and, for v -> o
// (1/s folds into v's rows, one per o input channel), the model has no GQA.
bool awq_mapping_applies(const AwqMapping& map, const LlamaConfig& c, const ModulePlan& plan, int64_t layer);

AwqConfig awq_config(const MethodSettings& m);

// Folds s into the layer: the previous op / s, the mapping's linears' columns * s.
void awq_fold_scales(LayerWeights& w, const AwqMapping& map, const std::vector<float>& s);

// Recorded inputs x [rows, s.size()] (float32, row-major) of the scaled linears become x / s
// per column, as the linears' columns became W * s.
void awq_divide_columns(float* x, int64_t rows, const std::vector<float>& s);

// Whether slot gets a clip search (not q/k: their errors are amplified by the softmax).
bool awq_clips(LinearSlot slot, const MethodSettings& m);

// The last step for one linear: clamp to max_val (per row and group; none: no clip), quantize
// with AutoAWQ's grid, measure the error against the scaled weight, record it in result.
void awq_finish_linear(LayerWeights& w, LinearSlot slot, const Tensor* max_val, const AwqConfig& cfg,
                       LayerResult& result, double seconds);

}  // namespace llmq
