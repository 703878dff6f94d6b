// SmoothQuant (Xiao et al. 2023, "SmoothQuant: Accurate and Efficient Post-Training
// Quantization for Large Language Models", section 4; formats.md D.4): migrate activation
// outliers into the weights with a per-channel factor s, folded into the preceding RMSNorm:
//   norm.weight[j] /= s[j],  W_b[:, j] *= s[j]  for every balance layer b,
// which leaves the float model's function unchanged. Llama mappings: input_layernorm ->
// q,k,v and post_attention_layernorm -> gate,up.
//
// Factors (llm-compressor's form, the default):
//   act[j] = max_j - min_j over calibration tokens of the norm output (dynamic range);
//   wt[j]  = 2 * max over balance layers and rows of |W[:, j]|;
//   s[j]   = act[j]^alpha / wt[j]^(1 - alpha); s[j] = act[j] where wt[j] == 0; s = max(s, 1e-5).
// The original paper's form uses act[j] = max|x_j| and wt without the factor 2 (kAbsMax).
#pragma once

#include <vector>

#include "core/tensor.h"

namespace llmq {

enum class SmoothActRange : uint8_t { kMaxMinusMin, kAbsMax };

struct SmoothQuantConfig {
  double alpha = 0.5;  // migration strength; 0.8 is the llm-compressor Llama INT8 recipe
  SmoothActRange act_range = SmoothActRange::kMaxMinusMin;
};

// act_min/act_max/act_absmax: per-channel statistics [in] of the balance layers' shared input.
// balance: float32 [out_b, in] weights. Returns s [in].
std::vector<float> smoothquant_factors(const std::vector<float>& act_min, const std::vector<float>& act_max,
                                       const std::vector<float>& act_absmax,
                                       const std::vector<const Tensor*>& balance, const SmoothQuantConfig& config);

// norm_weight [in] /= s; each balance weight's column j *= s[j]. In place, float32.
void fold_smoothing(const std::vector<float>& s, Tensor& norm_weight, const std::vector<Tensor*>& balance);

}  // namespace llmq
