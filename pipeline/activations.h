// Running the calibration samples through one decoder layer, for the methods that need more
// than the stored statistics: each sample is its own sequence (causal attention within it),
// samples run in parallel, and everything gathered from them is combined in sample order, so
// results do not depend on the thread count.
#pragma once

#include <array>
#include <vector>

#include "calibration/stats.h"
#include "core/status.h"
#include "core/tensor.h"
#include "model/llama.h"

namespace llmq {

// The four distinct linear inputs of every sample: inputs[input][sample] = [T_s, in].
struct CapturedInputs {
  std::array<std::vector<Tensor>, kNumLinearInputs> inputs;
  const std::vector<Tensor>& of(LinearInput in) const { return inputs[static_cast<size_t>(in)]; }
};

// Runs `layer` on every sample in place (activations become the next layer's input) and, when
// capture is given, records each sample's linear inputs. Non-finite outputs are an error.
Status forward_layer(const DecoderLayer& layer, const LlamaConfig& config, std::vector<Tensor>& activations,
                     CapturedInputs* capture = nullptr);

// Statistics of one layer's inputs over all samples, from a forward on copies (activations are
// left as they are). hessian: also accumulate H = Σ x xᵀ.
Expected<std::array<InputStats, kNumLinearInputs>> collect_layer_stats(const DecoderLayer& layer,
                                                                       const LlamaConfig& config,
                                                                       const std::vector<Tensor>& activations,
                                                                       bool hessian);

// The samples' rows stacked: [Σ T_s, cols] (core/tensor.h's concat_rows over a vector of samples).
Tensor concat_rows(const std::vector<Tensor>& parts);

}  // namespace llmq
