// Which linears of the model a quantize run quantizes, decided before any work starts so that
// every refusal comes first and names the module.
//
// Rules: lm_head, embeddings and norms are never quantized. A decoder linear is left in the
// float model dtype when one of the --ignore regexes matches its HF module name
// ("model.layers.3.mlp.down_proj"; std::regex ECMAScript, searched anywhere in the name, so
// "down_proj" ignores every down_proj). Fused partners must agree (vLLM loads q/k/v and
// gate/up as one module and refuses mixed schemes): ignoring q_proj but not k_proj is an error.
// Every quantized linear must fit the format: INT4 needs in_features % group_size == 0 and the
// packer's multiples of 8 (AWQ: out; GPTQ v1: in and out; pack-quantized: in, and out when
// asymmetric). A linear that does not fit is an error naming it, unless it is ignored, where
// it stays in the float dtype with a warning.
#pragma once

#include <array>
#include <string>
#include <vector>

#include "core/status.h"
#include "formats/hf_config.h"
#include "formats/quant_formats.h"
#include "model/llama.h"
#include "pipeline/method.h"

namespace llmq {

struct ModulePlan {
  std::vector<std::array<bool, kNumLinearSlots>> quantized;  // [layer][slot]
  std::vector<std::string> ignored;   // HF module names left unquantized, lm_head first
  std::vector<std::string> warnings;  // ignored modules that would not have fit the format

  bool quantizes(int64_t layer, LinearSlot slot) const {
    return quantized[static_cast<size_t>(layer)][static_cast<size_t>(slot)];
  }
};

// "model.layers.3.self_attn.q_proj"
std::string linear_module_name(int64_t layer, LinearSlot slot);
// [out, in] of a slot's weight.
std::array<int64_t, 2> linear_shape(const LlamaConfig& config, LinearSlot slot);

Expected<ModulePlan> plan_modules(const LlamaConfig& config, QuantMethod method, QuantFormat format,
                                  int64_t group_size, bool symmetric, const std::vector<std::string>& ignore_regexes);

}  // namespace llmq
