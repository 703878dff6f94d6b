// The runner's engine: a Llama checkpoint on one GPU, with prefill, decode over a BF16 KV
// cache and batched greedy generation, read top to bottom in engine.cc (gpt-fast style:
// static cache, fixed buffers, decode steps replayed as CUDA graphs).
//
// Weights stay in the checkpoint's form on the device (DESIGN.md "The runner"): BF16 linears
// as BF16 for cuBLASLt; FP8 / INT8 per-channel linears as their codes plus f32 scales (W8A8
// with per-token activation quantization, as vLLM); INT4 group linears in the W4A16 layout
// (runner/w4a16.h). q/k/v and gate/up are concatenated into one linear each at load (one GEMM
// instead of three / two). Norms, embeddings and lm_head stay BF16.
//
// Forward semantics are model/llama.h's Precision::kBFloat16 (rounding after every op), so
// logits match LlamaModel to a few bf16 steps (tests/test_runner_engine.cc).
//
// Token rows: a forward takes rows (token id, KV slot, position); each slot is one sequence of
// the batch, and its positions 0..pos-1 must already be in the cache. Prefill feeds a whole
// prompt per slot (split into chunks of at most max_rows rows), decode one row per slot.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"
#include "formats/hf_config.h"

namespace llmq {

struct EngineOptions {
  int max_batch = 1;        // KV-cache slots
  int capacity = 0;         // positions per slot; 0: min(max_position_embeddings, 2048)
  int max_rows = 4096;      // token rows per forward (prefill chunk); sizes the activations
  bool cuda_graphs = true;  // replay decode steps as CUDA graphs
  // "", "fp8", "int8" or "w4a16": RTN-quantize a float checkpoint's linears at load (W4A16:
  // group 128, asymmetric, BF16 scales; linears whose in_features 128 does not divide stay
  // BF16). For benchmarking formats at real scale from `llmq synth` checkpoints.
  std::string quantize_in_memory;
};

struct GreedyResult {
  std::vector<std::vector<int32_t>> tokens;  // per sequence: new tokens, ending with EOS when it stopped there
};

class Engine {
 public:
  // Opens the checkpoint (BF16, or quantized with a quantization_config llmq reads) and
  // uploads it. Errors: no GPU, unsupported layout (head_dim, GQA group), FP8 on a GPU older
  // than sm_89, not enough GPU memory (with the bytes needed).
  static Expected<std::unique_ptr<Engine>> load(const std::string& dir, const EngineOptions& options);
  ~Engine();

  const LlamaConfig& config() const;
  int capacity() const;
  int max_batch() const;
  // Bytes of weights on the GPU (all linears, embeddings, norms, lm_head).
  size_t weight_bytes() const;
  // Bytes of the linears' weights read by one decode step (everything but the embedding
  // table, of which one row per token is read): the numerator of the bandwidth floor.
  size_t step_weight_bytes() const;
  // A short description of the linear formats, e.g. "bf16" or "w4a16 g128".
  std::string format_name() const;

  // Prefill prompts[i] into slot i (the cache of those slots is replaced); returns the
  // float32 logits [B, vocab] of each prompt's last token, or [Σ T_i, vocab] with all_logits.
  Expected<Tensor> prefill(const std::vector<std::vector<int32_t>>& prompts, bool all_logits = false);
  // prefill, returning each prompt's greedy next token (the argmax of its last logits, taken on
  // the device: the logits never cross to the host). Generation's and the benchmark's prefill.
  Expected<std::vector<int32_t>> prefill_greedy(const std::vector<std::vector<int32_t>>& prompts);
  // One token per slot 0..B-1 after what prefill/decode put there; logits [B, vocab].
  Expected<Tensor> decode(const std::vector<int32_t>& tokens);
  // The argmax of decode's logits without copying them to the host (the benchmark's step).
  Expected<std::vector<int32_t>> decode_greedy(const std::vector<int32_t>& tokens);
  // One decode step like decode_greedy, run eagerly with an event after every op: GPU
  // milliseconds per op kind (summed over layers), in forward order. For the benchmark.
  Expected<std::vector<std::pair<std::string, double>>> profile_decode_step(const std::vector<int32_t>& tokens);
  // GPU milliseconds per decode step of batch B replayed n times back to back from its CUDA
  // graph (after a decode of this batch size made it), inputs unchanged: the step without the
  // host round trip (tokens in, argmax out, synchronize) that decode_greedy has between steps.
  // It replays the rows of the last decode_greedy (a prefill since rewrites them: call it
  // right after a decode); the replays rewrite the same cache rows with the same values.
  Expected<double> replay_decode_steps(int B, int n);
  // prefill_greedy(prompts) with the same per-op events: GPU milliseconds per op kind over the
  // whole prefill (all row chunks), plus "rows_in" for the host copy before each chunk.
  Expected<std::vector<std::pair<std::string, double>>> profile_prefill(const std::vector<std::vector<int32_t>>& prompts);
  // Batched greedy generation with per-sequence stops (EOS ids or max_new tokens).
  Expected<GreedyResult> generate_greedy(const std::vector<std::vector<int32_t>>& prompts, int max_new,
                                         const std::vector<int32_t>& eos_ids);
  // Device synchronisation, for timing.
  void synchronize();

 private:
  struct Impl;
  explicit Engine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace llmq
