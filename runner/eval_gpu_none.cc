// runner/eval_gpu.h in a build without CUDA: every entry point says so.
#include "runner/eval_gpu.h"

namespace llmq {
namespace {
Status no_cuda() { return Status::error("llmq was built without CUDA: no GPU runner"); }
}  // namespace

std::string gpu_device_label() { return "cpu"; }

Expected<PerplexityResult> perplexity_on_engine(Engine&, const std::vector<int32_t>&, const PerplexityConfig&) {
  return no_cuda();
}

Expected<PerplexityResult> perplexity_gpu(const std::string&, const std::vector<int32_t>&, const PerplexityConfig&) {
  return no_cuda();
}

BatchGreedyFn engine_greedy_fn(Engine&, std::vector<int32_t>) {
  return [](const std::vector<std::vector<int32_t>>&, int64_t) -> Expected<std::vector<std::vector<int32_t>>> {
    return no_cuda();
  };
}

Expected<Gsm8kResult> evaluate_gsm8k_gpu(const std::string&, const Tokenizer&, const std::vector<Gsm8kDoc>&,
                                         const std::vector<Gsm8kDoc>&, const Gsm8kConfig&) {
  return no_cuda();
}

}  // namespace llmq
