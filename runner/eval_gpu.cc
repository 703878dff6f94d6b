// Perplexity and GSM8K on the engine (see eval_gpu.h).
#include "runner/eval_gpu.h"

#include <algorithm>
#include <memory>

#include "formats/checkpoint.h"
#include "runner/device.h"

namespace llmq {
namespace {

Status require_bf16(Precision p, const char* what) {
  if (p == Precision::kBFloat16) return Status::ok();
  return Status::error(std::string(what) + ": the GPU runner computes in bfloat16, not " + std::string(precision_name(p)));
}

}  // namespace

std::string gpu_device_label() {
  const GpuInfo gpu = query_gpu();
  return gpu.available ? "cuda:" + gpu.name : "cpu";
}

Expected<PerplexityResult> perplexity_on_engine(Engine& engine, const std::vector<int32_t>& ids,
                                                const PerplexityConfig& config) {
  LLMQ_RETURN_IF_ERROR(require_bf16(config.precision, "perplexity"));
  LLMQ_ASSIGN_OR_RETURN(const PerplexityPlan plan, plan_perplexity(engine.config(), ids, config));
  const int64_t W = plan.window;
  if (W > engine.capacity())
    return Status::error("perplexity: window " + std::to_string(W) + " exceeds the engine's " +
                         std::to_string(engine.capacity()) + " positions");
  std::vector<double> nll(static_cast<size_t>(plan.windows), 0.0);
  for (int64_t w = 0; w < plan.windows; ++w) {
    const std::vector<int32_t> window(ids.begin() + plan.begin(w), ids.begin() + plan.begin(w) + W);
    LLMQ_ASSIGN_OR_RETURN(const Tensor logits, engine.prefill({window}, /*all_logits=*/true));  // [W, vocab]
    nll[static_cast<size_t>(w)] = window_nll(logits, window.data() + 1, W - 1);
  }
  return perplexity_result(plan, nll);
}

Expected<PerplexityResult> perplexity_gpu(const std::string& model_dir, const std::vector<int32_t>& ids,
                                          const PerplexityConfig& config) {
  LLMQ_RETURN_IF_ERROR(require_bf16(config.precision, "perplexity"));
  // The window (and its errors) before the upload: the engine is sized by it.
  LLMQ_ASSIGN_OR_RETURN(const HfCheckpoint ckpt, HfCheckpoint::open(model_dir));
  LLMQ_ASSIGN_OR_RETURN(const PerplexityPlan plan, plan_perplexity(ckpt.config(), ids, config));
  EngineOptions options;
  options.max_batch = 1;
  options.capacity = static_cast<int>(plan.window);
  options.max_rows = static_cast<int>(std::min<int64_t>(plan.window, options.max_rows));  // one window per forward
  options.cuda_graphs = false;  // prefill only
  LLMQ_ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine, Engine::load(model_dir, options));
  return perplexity_on_engine(*engine, ids, config);
}

BatchGreedyFn engine_greedy_fn(Engine& engine, std::vector<int32_t> eos_ids) {
  return [&engine, eos = std::move(eos_ids)](const std::vector<std::vector<int32_t>>& prompts,
                                             int64_t max_new) -> Expected<std::vector<std::vector<int32_t>>> {
    LLMQ_ASSIGN_OR_RETURN(GreedyResult r, engine.generate_greedy(prompts, static_cast<int>(max_new), eos));
    return std::move(r.tokens);
  };
}

Expected<Gsm8kResult> evaluate_gsm8k_gpu(const std::string& model_dir, const Tokenizer& tokenizer,
                                         const std::vector<Gsm8kDoc>& test, const std::vector<Gsm8kDoc>& train,
                                         const Gsm8kConfig& config) {
  LLMQ_RETURN_IF_ERROR(require_bf16(config.precision, "gsm8k"));
  LLMQ_ASSIGN_OR_RETURN(const HfCheckpoint ckpt, HfCheckpoint::open(model_dir));
  std::unique_ptr<Engine> engine;
  // Loaded when the prompts are known: a slot per prompt of a batch, each with room for the
  // longest prompt and max_gen_toks new tokens (at most max_position_embeddings, as the
  // prompts are truncated to leave max_gen_toks).
  const BatchPlanFn plan = [&](int64_t max_batch, int64_t longest_prompt) -> Status {
    EngineOptions options;
    options.max_batch = static_cast<int>(max_batch);
    options.capacity = static_cast<int>(longest_prompt + config.max_gen_toks);
    options.max_rows = std::max(options.max_rows, options.max_batch);
    LLMQ_ASSIGN_OR_RETURN(engine, Engine::load(model_dir, options));
    return Status::ok();
  };
  const BatchGreedyFn generate = [&](const std::vector<std::vector<int32_t>>& prompts,
                                     int64_t max_new) -> Expected<std::vector<std::vector<int32_t>>> {
    if (!engine) return Status::error("gsm8k: the engine was not loaded before generation");
    return engine_greedy_fn(*engine, tokenizer.eos_ids())(prompts, max_new);
  };
  return evaluate_gsm8k_batched(generate, ckpt.config().max_position_embeddings, tokenizer, test, train, config, plan);
}

}  // namespace llmq
