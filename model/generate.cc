// Greedy generation: prefill, then decode steps against the KV cache.
#include "model/generate.h"

#include <algorithm>
#include <functional>
#include <string>

namespace llmq {

int32_t argmax_first(const float* logits, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (logits[i] > logits[best]) best = i;  // strict: the first maximum wins
  return static_cast<int32_t>(best);
}

namespace {

// The greedy loop; stop_after(tokens), when set, is asked after each new non-EOS token.
Expected<GenerateResult> greedy_loop(const LlamaModel& model, const std::vector<int32_t>& prompt,
                                     const GenerateConfig& config,
                                     const std::function<bool(const std::vector<int32_t>&)>& stop_after) {
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
    if (stop_after && stop_after(result.tokens)) break;
    if (step + 1 < config.max_new_tokens) logits = model.decode_step(next, cache, opt);
  }
  return result;
}

}  // namespace

Expected<GenerateResult> generate_greedy(const LlamaModel& model, const std::vector<int32_t>& prompt,
                                         const GenerateConfig& config) {
  return greedy_loop(model, prompt, config, nullptr);
}

std::string cut_at_stop_strings(std::string text, const std::vector<std::string>& until) {
  for (const std::string& stop : until) {
    if (stop.empty()) continue;
    const size_t at = text.find(stop);
    if (at != std::string::npos) text.resize(at);
  }
  return text;
}

const char* stop_reason_name(StopReason r) {
  switch (r) {
    case StopReason::kEos: return "eos";
    case StopReason::kStopString: return "stop_string";
    case StopReason::kMaxTokens: return "max_tokens";
  }
  return "?";
}

Expected<GenerateUntilResult> generate_until(const LlamaModel& model, const Tokenizer& tokenizer,
                                            const std::vector<int32_t>& prompt, const GenerateConfig& config,
                                            const std::vector<std::string>& until) {
  bool hit_stop = false;
  const auto contains_stop = [&](const std::vector<int32_t>& tokens) {
    const std::string text = tokenizer.decode(tokens);
    for (const std::string& stop : until)
      if (!stop.empty() && text.find(stop) != std::string::npos) return hit_stop = true;
    return false;
  };
  LLMQ_ASSIGN_OR_RETURN(GenerateResult g, greedy_loop(model, prompt, config, contains_stop));
  GenerateUntilResult r;
  r.stop = g.stopped_at_eos ? StopReason::kEos : hit_stop ? StopReason::kStopString : StopReason::kMaxTokens;
  std::vector<int32_t> body = g.tokens;
  if (g.stopped_at_eos) body.pop_back();
  r.text = cut_at_stop_strings(tokenizer.decode(body), until);
  r.tokens = std::move(g.tokens);
  return r;
}

GenerateUntilResult finish_until(const Tokenizer& tokenizer, std::vector<int32_t> generated,
                                 const std::vector<int32_t>& eos_ids, const std::vector<std::string>& until) {
  GenerateUntilResult r;
  // The same checks, in the same order, as greedy_loop with generate_until's stop test.
  for (size_t t = 1; t <= generated.size(); ++t) {
    if (std::find(eos_ids.begin(), eos_ids.end(), generated[t - 1]) != eos_ids.end()) {
      generated.resize(t);
      r.stop = StopReason::kEos;
      break;
    }
    const std::string text = tokenizer.decode(std::vector<int32_t>(generated.begin(), generated.begin() + t));
    const bool hit = std::any_of(until.begin(), until.end(),
                                 [&](const std::string& stop) { return !stop.empty() && text.find(stop) != std::string::npos; });
    if (hit) {
      generated.resize(t);
      r.stop = StopReason::kStopString;
      break;
    }
  }
  std::vector<int32_t> body = generated;
  if (r.stop == StopReason::kEos) body.pop_back();
  r.text = cut_at_stop_strings(tokenizer.decode(body), until);
  r.tokens = std::move(generated);
  return r;
}

}  // namespace llmq
