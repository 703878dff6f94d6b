// The two GSM8K task definitions (lm-eval's gsm8k.yaml and gsm8k-cot-llama.yaml written down as
// data), few-shot selection and prompt text. The rules and their sources are listed at the top
// of eval/gsm8k.h; scripts/gsm8k_reference.py rebuilds the same prompts with Jinja2 and
// Python's random module.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "calibration/chat_template.h"
#include "core/status.h"
#include "eval/answer_extract.h"

namespace llmq {

enum class Gsm8kStyle : uint8_t { kGsm8k, kCotLlama };
std::string_view gsm8k_style_name(Gsm8kStyle s);  // "gsm8k" / "cot-llama"
Expected<Gsm8kStyle> parse_gsm8k_style(std::string_view name);

struct Gsm8kDoc {
  std::string question;
  std::string answer;  // worked solution ending in "#### N"
  bool operator==(const Gsm8kDoc& o) const { return question == o.question && answer == o.answer; }
};

struct Gsm8kTaskSpec {
  std::string task;          // lm-eval task name: "gsm8k" / "gsm8k_cot_llama"
  double version = 0.0;      // the yaml's metadata.version
  int64_t num_fewshot = 0;   // default K
  std::string sampler;       // "default" (seeded random.sample) / "first_n"
  std::vector<std::string> until;  // generation_kwargs.until (EOS is added at run time)
  ScoringSpec scoring;       // filter_list + metric_list
};
const Gsm8kTaskSpec& gsm8k_task_spec(Gsm8kStyle s);

// The eight chain-of-thought exemplars of gsm8k-cot-llama.yaml (fewshot_config.samples).
struct CotExemplar {
  const char* question;
  const char* target;
};
const std::vector<CotExemplar>& cot_llama_exemplars();

// doc_to_text of each style. gsm8k: "Question: {q}\nAnswer:"; cot-llama: the instruction
// with the problem, ending in "\n" (trimmed away by the chat template).
std::string gsm8k_doc_to_text(Gsm8kStyle s, std::string_view question);
// doc_to_target of the test doc: gsm8k: the whole answer; cot-llama:
// answer.split('####')[-1].strip().
std::string gsm8k_doc_to_target(Gsm8kStyle s, const Gsm8kDoc& doc);

// Exemplar train indices for test docs 0 .. n_docs-1 (gsm8k style): one PyRandom(seed) for
// the whole run and, per doc in order, rnd.sample(range(train.size()), k) with exemplars equal
// to the test doc then dropped (so doc i's exemplars depend on the seed and i only).
// Errors: k > train.size().
Expected<std::vector<std::vector<int64_t>>> gsm8k_fewshot_indices(const std::vector<Gsm8kDoc>& test, int64_t n_docs,
                                                                  const std::vector<Gsm8kDoc>& train, int64_t k,
                                                                  int64_t seed);

// gsm8k style: for each exemplar doc_to_text + " " + answer + "\n\n", then doc_to_text(doc).
std::string gsm8k_plain_prompt(const std::vector<const Gsm8kDoc*>& exemplars, std::string_view question);

// cot-llama: the first k exemplars as user/assistant turns, then the question as a user turn.
// Errors: k > 8.
Expected<std::vector<ChatMessage>> cot_llama_messages(int64_t k, std::string_view question);

// What the checkpoint's chat template puts before the first message.
enum class ChatTemplateKind : uint8_t {
  kLlama3,   // <|begin_of_text|> only (Meta-Llama-3-*-Instruct)
  kLlama31,  // plus the system block with "Cutting Knowledge Date: December 2023\nToday Date:
             // 26 Jul 2024\n\n" that Llama-3.1/3.2/3.3-Instruct templates always emit
};
// The Llama-3 / 3.1 template on messages without a system message, add_generation_prompt.
std::string render_gsm8k_chat(const std::vector<ChatMessage>& messages, ChatTemplateKind kind);

}  // namespace llmq
