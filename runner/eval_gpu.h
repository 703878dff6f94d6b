// Perplexity and GSM8K on the CUDA runner (runner/engine.h): eval/'s conventions with the
// Engine's forward in place of the CPU reference, for `llmq eval` on a GPU.
//
// Perplexity scores eval/perplexity's windows (plan_perplexity) one at a time in slot 0 of an
// engine sized for one window, takes the float32 logits of every position (prefill with
// all_logits: [W, vocab], 1 GiB for W = 2048 and a 128256 vocabulary, so one window at a time)
// and sums the NLL on the host in double with the CPU path's window_nll / perplexity_result.
// Only the logits differ from the CPU path's: the windows, BOS handling (the ids are the
// caller's, tokenized once with BOS), token counting and summation order are the same code.
//
// GSM8K is evaluate_gsm8k_batched with Engine::generate_greedy as its generator: the docs in
// batches of Gsm8kConfig::batch (one KV slot each), the engine sized by the batch plan
// (slots = batch, positions = longest prompt + max_gen_toks), the stop strings applied to the
// stop-free continuations afterwards (finish_until), exactly as generate_until would.
//
// The runner computes with model/llama.h's Precision::kBFloat16 semantics (bf16 rounding after
// every op), so both entry points require config.precision == kBFloat16: a GPU number is never
// labelled float32. They agree with the CPU path at kBFloat16 up to the runner's logit
// differences; tests/test_runner_eval.cc derives the bound. Without CUDA
// (runner/eval_gpu_none.cc) every entry point answers "built without CUDA".
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "eval/gsm8k.h"
#include "eval/perplexity.h"
#include "formats/tokenizer.h"
#include "runner/engine.h"

namespace llmq {

// "cuda:<device name>" of device 0, e.g. "cuda:NVIDIA H200"; "cpu" when no GPU is usable.
std::string gpu_device_label();

// Perplexity with an engine that has a slot of at least config's window (W) positions.
// Errors: plan_perplexity's, precision not kBFloat16, a window beyond the engine's capacity,
// the engine's own.
Expected<PerplexityResult> perplexity_on_engine(Engine& engine, const std::vector<int32_t>& ids,
                                                const PerplexityConfig& config);

// Loads the checkpoint in `model_dir` into an engine of one slot of W positions, then
// perplexity_on_engine.
Expected<PerplexityResult> perplexity_gpu(const std::string& model_dir, const std::vector<int32_t>& ids,
                                          const PerplexityConfig& config);

// Greedy continuations of a batch of prompts with engine.generate_greedy (EOS ids kept, no
// stop strings): the generator evaluate_gsm8k_batched takes. The engine must have a slot per
// prompt and room for the longest prompt plus max_new positions.
BatchGreedyFn engine_greedy_fn(Engine& engine, std::vector<int32_t> eos_ids);

// GSM8K with the checkpoint in `model_dir` on the runner: the engine is loaded once the
// prompts are known (evaluate_gsm8k_batched's plan) and sized for them. Errors:
// evaluate_gsm8k_batched's, precision not kBFloat16, the engine's.
Expected<Gsm8kResult> evaluate_gsm8k_gpu(const std::string& model_dir, const Tokenizer& tokenizer,
                                         const std::vector<Gsm8kDoc>& test, const std::vector<Gsm8kDoc>& train,
                                         const Gsm8kConfig& config);

}  // namespace llmq
