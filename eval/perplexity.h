// Perplexity of a token sequence under the CPU reference model, computed the way
// data/golden/make_golden.py does it: the ids (tokenized once, with BOS) are cut into windows
// [s, s + W) for s = 0, S, 2S, ... while s < n - W; each window runs from an empty cache and
// scores its W - 1 next-token predictions; ppl = exp(sum NLL / scored tokens).
// Windows run in parallel (OpenMP, one KV cache per thread); each window's NLL is summed in
// double and the windows are added in order, so the result does not depend on thread count.
//
// The convention is split into plan_perplexity (the windows), window_nll (one window's NLL
// from its logits) and perplexity_result (the sum), so that other forwards (the CUDA runner,
// runner/eval_gpu.h) score exactly the same windows the same way.
#pragma once

#include <cstdint>
#include <vector>

#include "core/status.h"
#include "formats/hf_config.h"
#include "model/llama.h"

namespace llmq {

struct PerplexityConfig {
  int64_t window = 0;  // W; 0: min(2048, max_position_embeddings)
  int64_t stride = 0;  // S; 0: W (non-overlapping windows)
  Precision precision = Precision::kFloat32;
};

struct PerplexityResult {
  double mean_nll = 0.0;  // nats per scored token
  double ppl = 0.0;       // exp(mean_nll)
  int64_t scored_tokens = 0;
  int64_t windows = 0;
  int64_t window = 0;  // the W and S used after defaults
  int64_t stride = 0;
};

// The windows of one run: window w is ids[w * stride, w * stride + window).
struct PerplexityPlan {
  int64_t window = 0;   // W after defaults
  int64_t stride = 0;   // S after defaults
  int64_t windows = 0;  // s = 0, S, ... while s < n - W
  int64_t begin(int64_t w) const { return w * stride; }
};

// Resolves the defaults and checks the ids against the model. Errors: W < 2 or beyond
// max_position_embeddings, S < 0, ids outside the vocabulary, or too few ids for one window
// (n <= W).
Expected<PerplexityPlan> plan_perplexity(const LlamaConfig& config, const std::vector<int32_t>& ids,
                                         const PerplexityConfig& pc);

// Sum over t < predictions of -log softmax(logits[t])[next[t]], in double (rows in parallel,
// added in row order: the same bytes for any thread count). logits: [>= predictions, vocab]
// float32.
double window_nll(const Tensor& logits, const int32_t* next, int64_t predictions);

// The result from each window's NLL (window_nll), added in window order.
PerplexityResult perplexity_result(const PerplexityPlan& plan, const std::vector<double>& window_nlls);

// The CPU reference forward over plan_perplexity's windows. Errors: plan_perplexity's.
Expected<PerplexityResult> perplexity(const LlamaModel& model, const std::vector<int32_t>& ids,
                                      const PerplexityConfig& config);

}  // namespace llmq
