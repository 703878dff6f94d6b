// Greedy generation with the CPU reference model: prefill the prompt into a KV cache, then
// one decode step per new token, taking the argmax (first index on ties, like torch.argmax)
// and stopping after an EOS id or max_new_tokens — what HF generate(do_sample=False) does.
// generate_until adds stop strings the way lm-evaluation-harness's generate_until requests
// use them (HFLM.generate_until + stop_sequences_criteria, models/utils.py
// postprocess_generated_text): generation also stops once the decoded continuation contains
// one of the strings, and the text is then cut before it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "formats/tokenizer.h"
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

// lm-eval's cut: for each stop string in order, text = text.split(stop)[0] (the text before its
// first occurrence); empty strings are skipped. Sequential, as in the harness: with
// overlapping stop strings this is not always the cut at the earliest occurrence of any.
std::string cut_at_stop_strings(std::string text, const std::vector<std::string>& until);

enum class StopReason : uint8_t { kEos, kStopString, kMaxTokens };
const char* stop_reason_name(StopReason r);  // "eos" / "stop_string" / "max_tokens"

struct GenerateUntilResult {
  std::vector<int32_t> tokens;  // new tokens; ends with the EOS id when one stopped it
  std::string text;             // decode(tokens less a final EOS), cut at the stop strings
  StopReason stop = StopReason::kMaxTokens;
};

// generate_greedy that also stops after the token whose decoding makes the continuation
// (decoded whole, special-token text included, as the harness's stopping criteria see it)
// contain one of `until`. The text before the first occurrence cannot change with more
// tokens, so stopping there gives the same cut text as generating on. The EOS token is left
// out of `text` (HF decodes with skip_special_tokens=True); other special tokens stay.
Expected<GenerateUntilResult> generate_until(const LlamaModel& model, const Tokenizer& tokenizer,
                                            const std::vector<int32_t>& prompt, const GenerateConfig& config,
                                            const std::vector<std::string>& until);

// generate_until's result from a continuation generated with no stop strings (a batched
// generator stops only at EOS or the token limit): the prefix generate_until would have
// stopped at. Greedy tokens do not depend on what follows them, so this is identical to
// generate_until on the same model, which lets a batched GPU generator run lm-eval's stops.
GenerateUntilResult finish_until(const Tokenizer& tokenizer, std::vector<int32_t> generated,
                                 const std::vector<int32_t>& eos_ids, const std::vector<std::string>& until);

}  // namespace llmq
