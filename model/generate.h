// Greedy generation with the CPU reference model: prefill the prompt into a KV cache, then
// one decode step per new token, taking the argmax (first index on ties, like torch.argmax)
// and stopping after an EOS id or max_new_tokens — what HF generate(do_sample=False) does.
#pragma once

#include <cstdint>
#include <vector>

#include "core/status.h"
#include "model/llama.h"

namespace llmq {

struct GenerateConfig {
  int64_t max_new_tokens = 128;
  std::vector<int32_t> eos_ids;  // empty: run to max_new_tokens
  Precision precision = Precision::kFloat32;
};

struct GenerateResult {
  std::vector<int32_t> tokens;  // new tokens only; ends with the EOS id when one stopped it
  bool stopped_at_eos = false;
};

// Index of the largest value; the first one on ties (torch.argmax).
int32_t argmax_first(const float* logits, int64_t n);

// Errors: empty prompt, ids outside the vocabulary, prompt + max_new_tokens beyond
// max_position_embeddings.
Expected<GenerateResult> generate_greedy(const LlamaModel& model, const std::vector<int32_t>& prompt,
                                         const GenerateConfig& config);

}  // namespace llmq
