// Greedy generation: prefill, then decode steps against the KV cache.
#include "model/generate.h"

#include <algorithm>
#include <string>

namespace llmq {

int32_t argmax_first(const float* logits, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (logits[i] > logits[best]) best = i;  // strict: the first maximum wins
  return static_cast<int32_t>(best);
}

Expected<GenerateResult> generate_greedy(const LlamaModel& model, const std::vector<int32_t>& prompt,
                                         const GenerateConfig& config) {
  const LlamaConfig& c = model.config();
  if (prompt.empty()) return Status::error("generate: empty prompt");
  for (int32_t id : prompt)
    if (id < 0 || id >= c.vocab_size)
      return Status::error("generate: token id " + std::to_string(id) + " outside the vocabulary of " +
                           std::to_string(c.vocab_size));
  if (config.max_new_tokens < 0) return Status::error("generate: negative max_new_tokens");
  const int64_t total = static_cast<int64_t>(prompt.size()) + config.max_new_tokens;
  if (total > c.max_position_embeddings)
    return Status::error("generate: prompt (" + std::to_string(prompt.size()) + ") + max_new_tokens (" +
                         std::to_string(config.max_new_tokens) + ") exceeds max_position_embeddings " +
                         std::to_string(c.max_position_embeddings));

  GenerateResult result;
  if (config.max_new_tokens == 0) return result;
  const ForwardOptions opt{config.precision, nullptr};
  KvCache cache = model.make_cache(total);
  Tensor logits = model.prefill(prompt, cache, LogitsFor::kLast, opt);  // [1, vocab]
  for (int64_t step = 0; step < config.max_new_tokens; ++step) {
    const int32_t next = argmax_first(logits.data<float>(), c.vocab_size);
    result.tokens.push_back(next);
    if (std::find(config.eos_ids.begin(), config.eos_ids.end(), next) != config.eos_ids.end()) {
      result.stopped_at_eos = true;
      break;
    }
    if (step + 1 < config.max_new_tokens) logits = model.decode_step(next, cache, opt);
  }
  return result;
}

}  // namespace llmq
