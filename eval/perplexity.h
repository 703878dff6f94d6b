// Perplexity of a token sequence under the CPU reference model, computed the way
// data/golden/make_golden.py does it: the ids (tokenized once, with BOS) are cut into windows
// [s, s + W) for s = 0, S, 2S, ... while s < n - W; each window runs from an empty cache and
// scores its W - 1 next-token predictions; ppl = exp(sum NLL / scored tokens).
// Windows run in parallel (OpenMP, one KV cache per thread); each window's NLL is summed in
// double and the windows are added in order, so the result does not depend on thread count.
#pragma once

#include <cstdint>
#include <vector>

#include "core/status.h"
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

// Errors: W < 2 or beyond max_position_embeddings, S < 1, ids outside the vocabulary, or
// too few ids for one window (n <= W).
Expected<PerplexityResult> perplexity(const LlamaModel& model, const std::vector<int32_t>& ids,
                                      const PerplexityConfig& config);

}  // namespace llmq
