// GSM8K evaluation: requests, greedy generation with stop strings, lm-eval scoring; see gsm8k.h.
#include "eval/gsm8k.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>

#include "calibration/calib_file.h"
#include "calibration/chat_template.h"
#include "core/progress.h"

namespace llmq {

using nlohmann::ordered_json;

Expected<std::vector<Gsm8kDoc>> load_gsm8k_jsonl(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::error(path + ": cannot open");
  std::vector<Gsm8kDoc> docs;
  std::string line;
  int64_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.find_first_not_of(" \t\r\n") == std::string::npos) continue;
    const std::string where = path + ":" + std::to_string(line_no) + ": ";
    nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) return Status::error(where + "not valid JSON");
    if (!j.is_object()) return Status::error(where + "not a JSON object");
    Gsm8kDoc d;
    for (const char* key : {"question", "answer"}) {
      const auto it = j.find(key);
      if (it == j.end() || !it->is_string())
        return Status::error(where + "no string field \"" + key + "\"");
    }
    d.question = j["question"].get<std::string>();
    d.answer = j["answer"].get<std::string>();
    docs.push_back(std::move(d));
  }
  if (in.bad()) return Status::error(path + ": read failed");
  if (docs.empty()) return Status::error(path + ": no documents");
  return docs;
}

ChatTemplateKind detect_chat_template(const std::string& model_dir) {
  std::ifstream in(model_dir + "/tokenizer_config.json", std::ios::binary);
  if (!in) return ChatTemplateKind::kLlama3;
  const nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return ChatTemplateKind::kLlama3;
  const auto it = j.find("chat_template");
  if (it == j.end() || !it->is_string()) return ChatTemplateKind::kLlama3;
  return it->get<std::string>().find("Cutting Knowledge Date") != std::string::npos ? ChatTemplateKind::kLlama31
                                                                                     : ChatTemplateKind::kLlama3;
}

std::string gsm8k_prompt_hash(const std::string& prompt) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(fnv1a64(prompt.data(), prompt.size())));
  return buf;
}

Expected<std::vector<Gsm8kRequest>> build_gsm8k_requests(const std::vector<Gsm8kDoc>& test,
                                                         const std::vector<Gsm8kDoc>& train, const Gsm8kConfig& config) {
  const Gsm8kTaskSpec& spec = gsm8k_task_spec(config.style);
  if (config.fewshot < -1) return Status::error("--fewshot must be -1 (the style's default) or at least 0");
  const int64_t k = config.fewshot >= 0 ? config.fewshot : spec.num_fewshot;
  if (config.limit < 0) return Status::error("--limit must not be negative");
  const int64_t n = config.limit > 0 ? std::min<int64_t>(config.limit, test.size()) : test.size();
  std::vector<Gsm8kRequest> out(static_cast<size_t>(n));
  if (config.style == Gsm8kStyle::kGsm8k) {
    if (k > 0 && train.empty()) return Status::error("the gsm8k style needs the train split for its exemplars (--train)");
    LLMQ_ASSIGN_OR_RETURN(auto picks, gsm8k_fewshot_indices(test, n, train, k, config.seed));
    for (int64_t d = 0; d < n; ++d) {
      std::vector<const Gsm8kDoc*> ex;
      for (int64_t i : picks[d]) ex.push_back(&train[i]);
      out[d] = {d, picks[d], gsm8k_plain_prompt(ex, test[d].question), gsm8k_doc_to_target(config.style, test[d])};
    }
  } else {
    for (int64_t d = 0; d < n; ++d) {
      LLMQ_ASSIGN_OR_RETURN(std::vector<ChatMessage> msgs, cot_llama_messages(k, test[d].question));
      std::vector<int64_t> ex(static_cast<size_t>(k));
      for (int64_t i = 0; i < k; ++i) ex[i] = i;
      out[d] = {d, ex, render_gsm8k_chat(msgs, config.chat_template), gsm8k_doc_to_target(config.style, test[d])};
    }
  }
  return out;
}

namespace {

// mean_stderr: sample standard deviation / sqrt(n).
std::optional<double> mean_stderr(const std::vector<double>& x) {
  const size_t n = x.size();
  if (n < 2) return std::nullopt;
  double mu = 0.0;
  for (double v : x) mu += v;
  mu /= static_cast<double>(n);
  double ss = 0.0;
  for (double v : x) ss += (v - mu) * (v - mu);
  return std::sqrt(ss / static_cast<double>(n - 1)) / std::sqrt(static_cast<double>(n));
}

std::string percent(int64_t hits, int64_t n) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f%%", n > 0 ? 100.0 * hits / n : 0.0);
  return buf;
}

}  // namespace

Status score_gsm8k(Gsm8kResult& result) {
  const Gsm8kTaskSpec& spec = gsm8k_task_spec(result.style);
  LLMQ_ASSIGN_OR_RETURN(AnswerScorer scorer, AnswerScorer::create(spec.scoring));
  const size_t n_filters = spec.scoring.filters.size();
  std::vector<std::vector<double>> scores(n_filters);
  for (Gsm8kSample& s : result.samples) {
    s.extracted.assign(n_filters, "");
    s.correct.assign(n_filters, false);
    for (size_t f = 0; f < n_filters; ++f) {
      s.extracted[f] = scorer.extract(f, s.output);
      s.correct[f] = scorer.exact_match(s.extracted[f], s.request.target);
      scores[f].push_back(s.correct[f] ? 1.0 : 0.0);
    }
  }
  result.metrics.clear();
  for (size_t f = 0; f < n_filters; ++f) {
    Gsm8kMetric m;
    m.filter = spec.scoring.filters[f].name;
    double sum = 0.0;
    for (double v : scores[f]) sum += v;
    m.exact_match = scores[f].empty() ? 0.0 : sum / static_cast<double>(scores[f].size());
    m.stderr_ = mean_stderr(scores[f]);
    result.metrics.push_back(m);
  }
  return Status::ok();
}

namespace {

// What both generation paths share: the checked config, the requests with their (truncated)
// prompt ids, the result's header, the scorer and the running-accuracy progress bar.
struct Gsm8kRun {
  const Gsm8kTaskSpec* spec = nullptr;
  Gsm8kResult result;
  std::vector<std::vector<int32_t>> prompt_ids;  // per request, truncated to the context
  std::optional<AnswerScorer> scorer;
  std::unique_ptr<Progress> progress;
  std::mutex mu;
  int64_t done = 0, strict_hits = 0, flexible_hits = 0;

  // Stores one generated continuation and advances the progress bar.
  void record(int64_t i, GenerateUntilResult g) {
    Gsm8kSample& s = result.samples[static_cast<size_t>(i)];
    s.tokens = std::move(g.tokens);
    s.stop = g.stop;
    s.output = std::move(g.text);
    if (!progress) return;
    const bool strict = scorer->exact_match(scorer->extract(0, s.output), s.request.target);
    const bool flexible = scorer->exact_match(scorer->extract(1, s.output), s.request.target);
    std::lock_guard<std::mutex> lock(mu);
    ++done;
    strict_hits += strict;
    flexible_hits += flexible;
    progress->set_label(spec->task + " strict " + percent(strict_hits, done) + " flexible " +
                        percent(flexible_hits, done));
    progress->advance();
  }
};

Status prepare_gsm8k(Gsm8kRun& run, const Tokenizer& tokenizer, const std::vector<Gsm8kDoc>& test,
                     const std::vector<Gsm8kDoc>& train, const Gsm8kConfig& config, int64_t max_length) {
  const Gsm8kTaskSpec& spec = gsm8k_task_spec(config.style);
  run.spec = &spec;
  if (config.max_gen_toks < 1) return Status::error("--max-gen-toks must be at least 1");
  if (config.batch < 1) return Status::error("--batch must be at least 1");
  if (max_length <= config.max_gen_toks)
    return Status::error("--max-gen-toks " + std::to_string(config.max_gen_toks) +
                         " leaves no room for a prompt in max_position_embeddings " + std::to_string(max_length));
  if (config.style == Gsm8kStyle::kCotLlama) {
    for (const std::string& t : llama3_chat_special_tokens())
      if (tokenizer.encode_with_specials(t).size() != 1)
        return Status::error("--style cot-llama needs a Llama-3 chat tokenizer; this one has no special token " + t);
  }
  LLMQ_ASSIGN_OR_RETURN(std::vector<Gsm8kRequest> requests, build_gsm8k_requests(test, train, config));
  // A scorer up front, so a bad pattern fails before any generation.
  LLMQ_ASSIGN_OR_RETURN(AnswerScorer scorer, AnswerScorer::create(spec.scoring));
  run.scorer.emplace(std::move(scorer));

  Gsm8kResult& result = run.result;
  result.style = config.style;
  result.fewshot = config.fewshot >= 0 ? config.fewshot : spec.num_fewshot;
  result.seed = config.seed;
  result.max_gen_toks = config.max_gen_toks;
  result.batch = config.batch;
  result.docs_total = static_cast<int64_t>(test.size());
  result.until = spec.until;
  if (!tokenizer.eos_ids().empty()) {  // handle_stop_sequences: the EOS token's text joins `until`
    const std::string eos = tokenizer.decode({tokenizer.eos_ids().front()});
    if (!eos.empty() && std::find(result.until.begin(), result.until.end(), eos) == result.until.end())
      result.until.push_back(eos);
  }
  const int64_t max_ctx = max_length - config.max_gen_toks;
  const int64_t n = static_cast<int64_t>(requests.size());
  result.samples.resize(static_cast<size_t>(n));
  run.prompt_ids.resize(static_cast<size_t>(n));
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t i = 0; i < n; ++i) {
    Gsm8kSample& s = result.samples[static_cast<size_t>(i)];
    s.request = requests[static_cast<size_t>(i)];
    std::vector<int32_t> ids = config.style == Gsm8kStyle::kGsm8k ? tokenizer.encode(s.request.prompt)
                                                                   : tokenizer.encode_with_specials(s.request.prompt);
    if (static_cast<int64_t>(ids.size()) > max_ctx) {  // context_enc[:, -max_ctx_len:]
      s.truncated_tokens = static_cast<int64_t>(ids.size()) - max_ctx;
      ids.erase(ids.begin(), ids.begin() + s.truncated_tokens);
    }
    s.prompt_tokens = static_cast<int64_t>(ids.size());
    run.prompt_ids[static_cast<size_t>(i)] = std::move(ids);
  }
  if (config.progress) run.progress = std::make_unique<Progress>(spec.task, n, "docs");
  return Status::ok();
}

Expected<Gsm8kResult> finish_gsm8k(Gsm8kRun& run) {
  if (run.progress) run.progress->finish();
  LLMQ_RETURN_IF_ERROR(score_gsm8k(run.result));
  return std::move(run.result);
}

}  // namespace

Expected<Gsm8kResult> evaluate_gsm8k(const LlamaModel& model, const Tokenizer& tokenizer,
                                     const std::vector<Gsm8kDoc>& test, const std::vector<Gsm8kDoc>& train,
                                     const Gsm8kConfig& config) {
  Gsm8kRun run;
  LLMQ_RETURN_IF_ERROR(prepare_gsm8k(run, tokenizer, test, train, config, model.config().max_position_embeddings));
  run.result.batch = 1;  // one sample per thread, whatever config.batch says
  GenerateConfig gc;
  gc.max_new_tokens = config.max_gen_toks;
  gc.eos_ids = tokenizer.eos_ids();
  gc.precision = config.precision;
  const int64_t n = static_cast<int64_t>(run.prompt_ids.size());
  std::vector<Status> errors(static_cast<size_t>(n), Status::ok());
  // One sample per thread; the forward inside runs single-threaded there, and each sample's
  // arithmetic is the same whatever thread runs it, so outputs do not depend on the count.
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t i = 0; i < n; ++i) {
    auto g = generate_until(model, tokenizer, run.prompt_ids[static_cast<size_t>(i)], gc, run.result.until);
    if (!g) {
      errors[static_cast<size_t>(i)] = g.status().with_context("doc " + std::to_string(i));
      continue;
    }
    run.record(i, std::move(*g));
  }
  for (const Status& e : errors) LLMQ_RETURN_IF_ERROR(e);
  return finish_gsm8k(run);
}

Expected<Gsm8kResult> evaluate_gsm8k_batched(const BatchGreedyFn& generate, int64_t max_position_embeddings,
                                             const Tokenizer& tokenizer, const std::vector<Gsm8kDoc>& test,
                                             const std::vector<Gsm8kDoc>& train, const Gsm8kConfig& config,
                                             const BatchPlanFn& plan) {
  Gsm8kRun run;
  LLMQ_RETURN_IF_ERROR(prepare_gsm8k(run, tokenizer, test, train, config, max_position_embeddings));
  const int64_t n = static_cast<int64_t>(run.prompt_ids.size());
  if (plan && n > 0) {
    int64_t longest = 0;
    for (const std::vector<int32_t>& p : run.prompt_ids) longest = std::max<int64_t>(longest, p.size());
    LLMQ_RETURN_IF_ERROR(plan(std::min(n, config.batch), longest));
  }
  for (int64_t b0 = 0; b0 < n; b0 += config.batch) {
    const int64_t b1 = std::min(n, b0 + config.batch);
    const std::vector<std::vector<int32_t>> prompts(run.prompt_ids.begin() + b0, run.prompt_ids.begin() + b1);
    auto generated = generate(prompts, config.max_gen_toks);
    if (!generated) return generated.status().with_context("docs " + std::to_string(b0) + ".." + std::to_string(b1 - 1));
    if (static_cast<int64_t>(generated->size()) != b1 - b0)
      return Status::error("gsm8k: the generator returned " + std::to_string(generated->size()) + " continuations for " +
                           std::to_string(b1 - b0) + " prompts");
    for (int64_t i = b0; i < b1; ++i)
      run.record(i, finish_until(tokenizer, std::move((*generated)[static_cast<size_t>(i - b0)]), tokenizer.eos_ids(),
                                 run.result.until));
  }
  return finish_gsm8k(run);
}

ordered_json gsm8k_results_json(const Gsm8kResult& result) {
  const Gsm8kTaskSpec& spec = gsm8k_task_spec(result.style);
  const std::string& task = spec.task;
  ordered_json metrics = {{"alias", task}};
  for (const Gsm8kMetric& m : result.metrics) {
    metrics["exact_match," + m.filter] = m.exact_match;
    if (m.stderr_) {
      metrics["exact_match_stderr," + m.filter] = *m.stderr_;
    } else {
      metrics["exact_match_stderr," + m.filter] = "N/A";
    }
  }
  ordered_json filters = ordered_json::array();
  for (const RegexFilterSpec& f : spec.scoring.filters)
    filters.push_back({{"name", f.name},
                       {"filter",
                        {{{"function", "regex"}, {"regex_pattern", f.pattern}, {"group_select", f.group_select}},
                         {{"function", "take_first"}}}}});
  ordered_json config = {
      {"task", task},
      {"llmq_style", gsm8k_style_name(result.style)},
      {"num_fewshot", result.fewshot},
      {"fewshot_config", {{"sampler", spec.sampler}}},
      {"fewshot_seed", result.seed},
      {"output_type", "generate_until"},
      {"generation_kwargs", {{"until", result.until}, {"do_sample", false}, {"max_gen_toks", result.max_gen_toks}}},
      {"batch_size", result.batch},
      {"metric_list",
       {{{"metric", "exact_match"},
         {"aggregation", "mean"},
         {"higher_is_better", true},
         {"ignore_case", spec.scoring.ignore_case},
         {"ignore_punctuation", false},
         {"regexes_to_ignore", spec.scoring.regexes_to_ignore}}}},
      {"filter_list", filters},
      {"metadata", {{"version", spec.version}}}};
  return {{"results", {{task, metrics}}},
          {"group_subtasks", {{task, ordered_json::array()}}},
          {"configs", {{task, config}}},
          {"versions", {{task, spec.version}}},
          {"n-shot", {{task, result.fewshot}}},
          {"higher_is_better", {{task, {{"exact_match", true}}}}},
          {"n-samples", {{task, {{"original", result.docs_total}, {"effective", result.samples.size()}}}}}};
}

std::string gsm8k_samples_jsonl(const Gsm8kResult& result) {
  std::string out;
  for (const Gsm8kSample& s : result.samples) {
    ordered_json j = {{"doc_id", s.request.doc_id},
                      {"exemplars", s.request.exemplars},
                      {"prompt_hash", gsm8k_prompt_hash(s.request.prompt)},
                      {"prompt_tokens", s.prompt_tokens},
                      {"truncated_tokens", s.truncated_tokens},
                      {"gen_tokens", s.tokens.size()},
                      {"stop", stop_reason_name(s.stop)},
                      {"output", s.output},
                      {"target", s.request.target},
                      {"strict", s.extracted.size() > 0 ? s.extracted[0] : ""},
                      {"flexible", s.extracted.size() > 1 ? s.extracted[1] : ""},
                      {"strict_correct", s.correct.size() > 0 && s.correct[0]},
                      {"flexible_correct", s.correct.size() > 1 && s.correct[1]}};
    // Invalid UTF-8 (a continuation cut inside a character) is replaced, not an exception.
    out += j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    out += '\n';
  }
  return out;
}

}  // namespace llmq
