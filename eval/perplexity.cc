// Windowed perplexity over the CPU reference model (see perplexity.h for the convention).
#include "eval/perplexity.h"

#include <algorithm>
#include <cmath>
#include <string>

namespace llmq {

Expected<PerplexityPlan> plan_perplexity(const LlamaConfig& c, const std::vector<int32_t>& ids,
                                         const PerplexityConfig& config) {
  const int64_t n = static_cast<int64_t>(ids.size());
  const int64_t W = config.window > 0 ? config.window : std::min<int64_t>(2048, c.max_position_embeddings);
  const int64_t S = config.stride > 0 ? config.stride : W;
  if (W < 2 || W > c.max_position_embeddings)
    return Status::error("perplexity: window " + std::to_string(W) + " outside [2, max_position_embeddings " +
                         std::to_string(c.max_position_embeddings) + "]");
  if (config.stride < 0) return Status::error("perplexity: negative stride");
  if (n <= W)
    return Status::error("perplexity: " + std::to_string(n) + " tokens do not fill one window of " +
                         std::to_string(W) + " plus one");
  for (int32_t id : ids)
    if (id < 0 || id >= c.vocab_size)
      return Status::error("perplexity: token id " + std::to_string(id) + " outside the vocabulary of " +
                           std::to_string(c.vocab_size));
  PerplexityPlan plan;
  plan.window = W;
  plan.stride = S;
  plan.windows = (n - W - 1) / S + 1;  // s = 0, S, ... while s < n - W
  return plan;
}

double window_nll(const Tensor& logits, const int32_t* next, int64_t predictions) {
  const int64_t vocab = logits.dim(1);
  std::vector<double> row_nll(static_cast<size_t>(predictions));
  // Rows in parallel where the caller is not itself in a parallel region (the runner's path);
  // inside the CPU path's window loop this runs on the calling thread.
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < predictions; ++t) {
    const float* row = logits.data<float>() + t * vocab;
    const double m = *std::max_element(row, row + vocab);
    double sum = 0.0;
    for (int64_t i = 0; i < vocab; ++i) sum += std::exp(static_cast<double>(row[i]) - m);
    row_nll[static_cast<size_t>(t)] = (m + std::log(sum)) - static_cast<double>(row[next[t]]);
  }
  double nll = 0.0;
  for (double v : row_nll) nll += v;  // in row order: deterministic
  return nll;
}

PerplexityResult perplexity_result(const PerplexityPlan& plan, const std::vector<double>& window_nlls) {
  PerplexityResult r;
  double total = 0.0;
  for (double v : window_nlls) total += v;  // in window order: deterministic
  r.windows = plan.windows;
  r.scored_tokens = plan.windows * (plan.window - 1);
  r.mean_nll = total / static_cast<double>(r.scored_tokens);
  r.ppl = std::exp(r.mean_nll);
  r.window = plan.window;
  r.stride = plan.stride;
  return r;
}

Expected<PerplexityResult> perplexity(const LlamaModel& model, const std::vector<int32_t>& ids,
                                      const PerplexityConfig& config) {
  LLMQ_ASSIGN_OR_RETURN(const PerplexityPlan plan, plan_perplexity(model.config(), ids, config));
  const int64_t W = plan.window;
  std::vector<double> nll(static_cast<size_t>(plan.windows), 0.0);
  const ForwardOptions opt{config.precision, nullptr};
#pragma omp parallel
  {
    KvCache cache = model.make_cache(W);  // one per thread
#pragma omp for schedule(dynamic, 1)
    for (int64_t w = 0; w < plan.windows; ++w) {
      const std::vector<int32_t> window(ids.begin() + plan.begin(w), ids.begin() + plan.begin(w) + W);
      const Tensor logits = model.prefill(window, cache, LogitsFor::kAll, opt);  // [W, vocab]
      nll[static_cast<size_t>(w)] = window_nll(logits, window.data() + 1, W - 1);
    }
  }
  return perplexity_result(plan, nll);
}

}  // namespace llmq
