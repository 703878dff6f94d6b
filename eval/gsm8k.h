// GSM8K accuracy of a checkpoint, scored the way lm-evaluation-harness scores it, so numbers
// compare with published lm-eval ones. `llmq eval --gsm8k` is the front end.
//
// Rules followed (sources: EleutherAI/lm-evaluation-harness, lm_eval/tasks/gsm8k/gsm8k.yaml
// v3.0 and gsm8k-cot-llama.yaml v4.0, api/task.py, api/samplers.py, config/task.py,
// filters/extraction.py, api/metrics.py, models/huggingface.py, models/utils.py; CPython
// Lib/random.py):
//
// Style `gsm8k` (task "gsm8k"):
//   - doc_to_text "Question: {{question}}\nAnswer:", doc_to_target "{{answer}}" (the whole
//     worked answer, "#### N" included), rendered by Jinja2 (no escaping, so verbatim).
//   - K-shot (default 5) from the train split with the "default" sampler:
//     rnd = random.Random(seed) (Task.set_fewshot_seed; lm-eval's default seed is 1234), one
//     rnd.sample(train_docs, K) per test doc, docs taken in order 0, 1, 2, ... from the same
//     rnd; exemplars equal to the test doc are dropped ([x for x in ex if x != doc][:K]; the
//     0.4.1x samplers apply this only when the few-shot and test splits are the same, and no
//     GSM8K train doc equals a test doc, so every version picks the same exemplars here).
//     So doc i's exemplars depend on the seed and on i, not on --limit. eval/py_random.h
//     reproduces CPython's Mersenne Twister seeding and sample() exactly.
//   - Context: for each exemplar doc_to_text + target_delimiter " " + answer +
//     fewshot_delimiter "\n\n", then doc_to_text(test doc). No description, no system prompt.
//   - Tokenized as one string with the tokenizer's default special tokens (BOS for Llama),
//     as current lm-eval does (add_bos_token unset -> tokenizer default), left-truncated to
//     max_length - max_gen_toks tokens, max_length = max_position_embeddings (HFLM).
//   - Greedy, max_gen_toks 256, stop at "Question:", "</s>", "<|im_end|>" plus the EOS
//     token's text (handle_stop_sequences) and at an EOS id; the decoded continuation is cut
//     with text.split(stop)[0] for each stop string in order.
//   - Filters: strict-match = regex "#### (\-?[0-9\.\,]+)", group_select 0 (first match);
//     flexible-extract = regex "(-?[$0-9.,]{2,})|(-?[0-9]+)", group_select -1 (last match),
//     the first non-empty group; no match -> "[invalid]"; then take_first.
//   - exact_match: regexes_to_ignore ",", "\$", "(?s).*#### ", "\.$" removed (re.sub, in
//     order) from prediction and target, ignore_case, equal strings score 1. The mean is the
//     score; stderr = sample stddev / sqrt(n) (mean_stderr), "N/A" for n < 2.
// Style `cot-llama` (task "gsm8k_cot_llama", run as Meta's Llama-3.1-Instruct numbers are:
// --apply_chat_template --fewshot_as_multiturn):
//   - first_n sampler over the yaml's 8 fixed chain-of-thought exemplars (default K = 8).
//   - doc_to_text "Given the following problem, reason and give a final answer to the
//     problem.\nProblem: {{question}}\nYour response should end with \"The final answer is
//     [answer]\" where [answer] is the response to the problem.\n"; exemplar targets end in
//     "The final answer is N"; the test target is answer.split('####')[-1].strip().
//   - Multi-turn chat: user/assistant per exemplar, then the question as a user turn, rendered
//     with the checkpoint's Llama-3 chat template (contents trimmed, generation prompt added;
//     Llama-3.1-style templates also emit their system block with the default date) and
//     encoded with specials and no extra BOS (the text already starts with <|begin_of_text|>;
//     lm-eval adds none to a string that starts with the BOS text).
//   - Stop at "<|eot_id|>", "<|start_header_id|>user<|end_header_id|>", "Q:", "</s>",
//     "<|im_end|>" (+ EOS text and ids). strict-match = "The final answer is ((-?[$0-9.,]{2,})|
//     (-?[0-9]+))", flexible-extract as above, both group_select -1; the same exact_match.
//
// Where this is not byte-for-byte lm-eval:
//   - gsm8k.yaml v3.0 has no blank-line ("\n\n") stop; earlier versions (v1/v2) had one. The
//     harness's current list is followed.
//   - Two stored revisions of gsm8k-cot-llama.yaml v4.0 differ: one lists "\.$" twice in
//     regexes_to_ignore. It is applied once here (differs only for answers ending in "..").
//   - Special tokens other than the final EOS stay in the logged output text (HF decodes with
//     skip_special_tokens=True); the stop strings cut the text before any that matter here.
//   - lower()/strip() are ASCII-only (see eval/answer_extract.h); the HF datasets copy of
//     GSM8K is assumed to be in the order of openai/grade-school-math's jsonl files.
//   - Logits come from the CPU reference forward (or the runner), not from torch: a near-tie
//     in greedy argmax can pick another token, as between any two backends.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/status.h"
#include "eval/gsm8k_prompts.h"
#include "formats/tokenizer.h"
#include "model/generate.h"
#include "model/llama.h"

namespace llmq {

// One test or train split: a JSONL file of {"question": str, "answer": str} objects; blank
// lines are skipped. Errors name the file and line.
Expected<std::vector<Gsm8kDoc>> load_gsm8k_jsonl(const std::string& path);

// Which Llama-3 chat template the checkpoint uses, from the chat_template string in its
// tokenizer_config.json: kLlama31 when it emits the "Cutting Knowledge Date" system block,
// else (other template, none, or no file) kLlama3.
ChatTemplateKind detect_chat_template(const std::string& model_dir);

struct Gsm8kConfig {
  Gsm8kStyle style = Gsm8kStyle::kGsm8k;
  int64_t fewshot = -1;        // -1: the style's default (5 / 8)
  int64_t limit = 0;           // 0: every test doc; else the first N (lm-eval --limit N)
  int64_t batch = 32;          // prompts per generation call of the batched (GPU runner) path; the CPU
                               // path runs one sample per thread and records batch 1
  int64_t max_gen_toks = 256;  // HFLM's default max_gen_toks
  int64_t seed = 1234;         // lm-eval's default --fewshot_random_seed
  Precision precision = Precision::kFloat32;
  ChatTemplateKind chat_template = ChatTemplateKind::kLlama31;  // cot-llama only
  bool progress = true;        // progress bar with running accuracy on stderr
};

// One test doc's request, before any model runs.
struct Gsm8kRequest {
  int64_t doc_id = 0;
  std::vector<int64_t> exemplars;  // train indices (gsm8k) or exemplar numbers (cot-llama)
  std::string prompt;              // the context string the tokenizer sees
  std::string target;              // doc_to_target of the test doc
};

// The requests of test docs 0 .. n-1 (n = limit or all). Errors: K > available exemplars,
// gsm8k style without train docs.
Expected<std::vector<Gsm8kRequest>> build_gsm8k_requests(const std::vector<Gsm8kDoc>& test,
                                                         const std::vector<Gsm8kDoc>& train, const Gsm8kConfig& config);

// FNV-1a-64 of the prompt bytes, 16 hex digits (what the sample log records).
std::string gsm8k_prompt_hash(const std::string& prompt);

struct Gsm8kSample {
  Gsm8kRequest request;
  int64_t prompt_tokens = 0;     // after truncation
  int64_t truncated_tokens = 0;  // dropped from the left to fit max_length - max_gen_toks
  std::vector<int32_t> tokens;   // generated ids
  StopReason stop = StopReason::kMaxTokens;
  std::string output;                  // the cut continuation
  std::vector<std::string> extracted;  // per filter (strict-match, flexible-extract)
  std::vector<bool> correct;           // per filter
};

struct Gsm8kMetric {
  std::string filter;             // "strict-match" / "flexible-extract"
  double exact_match = 0.0;
  std::optional<double> stderr_;  // empty for fewer than two samples ("N/A")
};

struct Gsm8kResult {
  Gsm8kStyle style = Gsm8kStyle::kGsm8k;
  int64_t fewshot = 0;
  int64_t seed = 0;
  int64_t max_gen_toks = 0;
  int64_t batch = 1;
  int64_t docs_total = 0;  // test docs in the file (lm-eval "original")
  std::vector<std::string> until;  // stop strings used, EOS text included
  std::vector<Gsm8kSample> samples;
  std::vector<Gsm8kMetric> metrics;  // one per filter
};

// Scores already generated outputs (sample.request, sample.output set): fills extracted,
// correct and the metrics. Used by evaluate_gsm8k and by tests.
Status score_gsm8k(Gsm8kResult& result);

// Builds the requests, generates greedily (OpenMP over samples, each with its own KV cache:
// the outputs do not depend on the thread count) and scores. Errors: bad config, a prompt
// that cannot fit (max_position_embeddings <= max_gen_toks), cot-llama with a tokenizer
// without the Llama-3 chat tokens.
Expected<Gsm8kResult> evaluate_gsm8k(const LlamaModel& model, const Tokenizer& tokenizer,
                                     const std::vector<Gsm8kDoc>& test, const std::vector<Gsm8kDoc>& train,
                                     const Gsm8kConfig& config);

// Greedy continuations of each prompt (token ids), stopping only at EOS (kept) or max_new
// tokens: the GPU runner's batched generation, or any other greedy generator.
using BatchGreedyFn = std::function<Expected<std::vector<std::vector<int32_t>>>(
    const std::vector<std::vector<int32_t>>& prompts, int64_t max_new)>;

// Called once before the first generation with the most prompts any call passes and the
// longest prompt (tokens, after truncation), so a generator can size its KV cache:
// longest_prompt + max_gen_toks positions per sequence suffice.
using BatchPlanFn = std::function<Status(int64_t max_batch, int64_t longest_prompt)>;

// The same evaluation with prompts generated config.batch at a time by `generate`; the stop
// strings are applied afterwards (finish_until), so the samples equal evaluate_gsm8k's for the
// same greedy model. `plan` (optional) runs after the prompts are built, before `generate`.
Expected<Gsm8kResult> evaluate_gsm8k_batched(const BatchGreedyFn& generate, int64_t max_position_embeddings,
                                             const Tokenizer& tokenizer, const std::vector<Gsm8kDoc>& test,
                                             const std::vector<Gsm8kDoc>& train, const Gsm8kConfig& config,
                                             const BatchPlanFn& plan = nullptr);

// lm-eval's results layout for this one task: {"results": {task: {"alias", "exact_match,
// strict-match", "exact_match_stderr,strict-match", ...}}, "group_subtasks", "configs",
// "versions", "n-shot", "higher_is_better", "n-samples"}.
nlohmann::ordered_json gsm8k_results_json(const Gsm8kResult& result);

// One JSON line per sample: doc_id, exemplars, prompt_hash, prompt_tokens, truncated_tokens,
// gen_tokens, stop, output, target, strict, flexible, strict_correct, flexible_correct.
// Same inputs give the same bytes, so two runs can be diffed.
std::string gsm8k_samples_jsonl(const Gsm8kResult& result);

}  // namespace llmq
