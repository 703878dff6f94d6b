// The CPU reference forward of a Llama decoder, with the semantics of Hugging Face
// transformers' LlamaForCausalLM (modeling_llama.py), readable top to bottom.
//
// Weights are loaded as float32 one decoder layer at a time (load_decoder_layer), and
// decoder_layer_forward runs one layer on a [tokens, hidden] activation matrix: this is the
// layer interface that calibration, the quantizers and the CUDA runner share. The seven
// linears of a layer are behind the abstract Linear (Y[T, out] = X[T, in] · Wᵀ), so
// quantized linears (dequantized weight-only, emulated W8A8) plug in where DenseLinear is;
// an optional LinearInputObserver sees every linear's input (calibration statistics).
//
// Conventions (core/tensor.h): row-major, weights [out, in], activations [T, features] with
// one row per token. All activations are float32 host tensors; Eigen appears only as
// Eigen::Map over them inside llama.cc.
//
// Precision::kBFloat16 emulates HF with torch_dtype=bfloat16 on CUDA by rounding to bf16
// (round-to-nearest-even, core/numeric.h) exactly where torch materialises a bf16 tensor:
//   embedding rows (exact for bf16 weights); RMSNorm: fp32 x * rsqrt(mean(x^2) + eps), round,
//   times the weight, round; every linear output (fp32 accumulation, then round); RoPE with
//   cos/sin rounded, q*cos, rotate_half(q)*sin and their sum each rounded; attention as the
//   flash / memory-efficient SDPA kernels do it (fp32 scores and softmax, the unnormalised
//   probabilities rounded to bf16 for the P·V product, fp32 accumulation and normalisation,
//   output rounded); SiLU(gate) rounded, gate*up rounded; each residual add rounded; logits
//   rounded (then used as float32, like `.float()`). It assumes bf16-representable weights
//   (true for a BF16 checkpoint upcast to float32).
// Precision::kFloat32 is plain float32 arithmetic, what HF does with torch_dtype=float32.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"
#include "formats/checkpoint.h"
#include "formats/hf_config.h"

namespace llmq {

enum class Precision : uint8_t {
  kFloat32,   // float32 everywhere
  kBFloat16,  // float32 arithmetic with HF's bf16 rounding points (see the file comment)
};
std::string_view precision_name(Precision p);  // "float32" / "bfloat16"

// ---- linears -----------------------------------------------------------------------------

class Linear {
 public:
  virtual ~Linear() = default;
  virtual int64_t in_features() const = 0;
  virtual int64_t out_features() const = 0;
  // y[T, out] = x[T, in] · Wᵀ with float32 accumulation; y is overwritten. Both are contiguous
  // float32 host views. Rounding the output to bf16 is the caller's business (Precision).
  virtual void forward(const TensorView& x, const TensorView& y) const = 0;
};

// A float32 weight held as is.
class DenseLinear final : public Linear {
 public:
  explicit DenseLinear(Tensor weight);  // [out, in] float32
  int64_t in_features() const override { return weight_.dim(1); }
  int64_t out_features() const override { return weight_.dim(0); }
  void forward(const TensorView& x, const TensorView& y) const override;
  const Tensor& weight() const { return weight_; }

 private:
  Tensor weight_;  // [out, in]
};

// The seven linears of a decoder layer, in execution order.
enum class LinearSlot : uint8_t { kQ, kK, kV, kO, kGate, kUp, kDown };
constexpr int kNumLinearSlots = 7;
// HF name inside the layer, e.g. "self_attn.q_proj" (append ".weight" for the tensor).
std::string_view linear_slot_name(LinearSlot slot);

// Sees the input of every linear just before it runs. q/k/v receive the same view (one
// input, three linears) and so do gate/up; a collector that wants one statistic per
// distinct input can keep kQ, kO, kGate and kDown only. Not called concurrently by one
// forward; a forward with an observer must not run on several threads at once.
class LinearInputObserver {
 public:
  virtual ~LinearInputObserver() = default;
  // x: [T, in] float32, as the linear sees it (already bf16-rounded in kBFloat16).
  virtual void on_linear_input(int64_t layer, LinearSlot slot, const TensorView& x) = 0;
};

// ---- one decoder layer -------------------------------------------------------------------

struct DecoderLayer {
  int64_t index = 0;
  std::array<std::unique_ptr<Linear>, kNumLinearSlots> linears;  // indexed by LinearSlot
  Tensor input_layernorm;           // [hidden]
  Tensor post_attention_layernorm;  // [hidden]

  const Linear& linear(LinearSlot s) const { return *linears[static_cast<int>(s)]; }
  void set_linear(LinearSlot s, std::unique_ptr<Linear> l) { linears[static_cast<int>(s)] = std::move(l); }
};

// Loads layer `layer` of the checkpoint as float32 DenseLinears and norms. Refuses configs
// with attention/MLP biases (not Llama checkpoints).
Expected<DecoderLayer> load_decoder_layer(const HfCheckpoint& ckpt, int64_t layer);

// One layer's slice of a KV cache: rows are positions, K after RoPE.
struct LayerKv {
  TensorView k;  // [capacity, kv_dim] float32
  TensorView v;  // [capacity, kv_dim] float32
};

struct ForwardOptions {
  Precision precision = Precision::kFloat32;
  LinearInputObserver* observer = nullptr;  // optional
};

// RoPE inverse frequencies [head_dim / 2], float32 as transformers computes them: default
// 1 / theta^(2i/d), then Llama-3 scaling (_compute_llama3_parameters) when configured.
std::vector<float> rope_inv_freq(const LlamaConfig& config);

// Runs one decoder layer in place on x [T, hidden]: the tokens sit at positions
// pos0 .. pos0+T-1; their K/V are written to rows pos0.. of kv, whose rows < pos0 must hold
// the earlier tokens of the sequence (causal attention over rows 0 .. pos0+T-1).
void decoder_layer_forward(const DecoderLayer& layer, const LlamaConfig& config,
                           const TensorView& x, int64_t pos0, const LayerKv& kv,
                           const ForwardOptions& opt);
// The same for a whole sequence starting at position 0, with a temporary K/V (calibration).
void decoder_layer_forward(const DecoderLayer& layer, const LlamaConfig& config,
                           const TensorView& x, const ForwardOptions& opt);

// The two blocks of a layer without their norm and residual, for whole sequences at positions
// 0..T-1 (AWQ measures its scale search on their outputs). h [T, hidden] is the block's
// normalised input; the result is [T, hidden]:
//   attention_block: o_proj(attn(rope(q(h)), rope(k(h)), v(h)))
//   mlp_block:       down(silu(gate(h)) * up(h))
Tensor attention_block(const DecoderLayer& layer, const LlamaConfig& config, const TensorView& h,
                       const ForwardOptions& opt);
Tensor mlp_block(const DecoderLayer& layer, const LlamaConfig& config, const TensorView& h,
                 const ForwardOptions& opt);

// HF LlamaRMSNorm on each row of x [T, hidden], in place (rounding per precision).
void rms_norm(const TensorView& x, const Tensor& weight, double eps, Precision precision);

// ---- KV cache ----------------------------------------------------------------------------

class KvCache {
 public:
  KvCache(const LlamaConfig& config, int64_t capacity);
  int64_t capacity() const { return capacity_; }
  int64_t length() const { return length_; }  // tokens stored
  LayerKv layer(int64_t i) const { return {k_[i].view(), v_[i].view()}; }
  void advance(int64_t n);
  void clear() { length_ = 0; }

 private:
  int64_t capacity_ = 0;
  int64_t length_ = 0;
  std::vector<Tensor> k_;  // per layer [capacity, kv_dim]
  std::vector<Tensor> v_;  // per layer [capacity, kv_dim]
};

// ---- the model ---------------------------------------------------------------------------

enum class LogitsFor : uint8_t { kLast, kAll };

class LlamaModel {
 public:
  // Loads every layer (float32) plus embeddings, final norm and lm_head (tied embeddings
  // resolved by HfCheckpoint).
  static Expected<LlamaModel> load(const HfCheckpoint& ckpt);
  // From parts (tests, synthetic models); shapes are checked against the config.
  LlamaModel(LlamaConfig config, Tensor embed_tokens, std::vector<DecoderLayer> layers,
             Tensor norm, std::unique_ptr<Linear> lm_head);

  const LlamaConfig& config() const { return config_; }
  int64_t vocab_size() const { return config_.vocab_size; }
  std::vector<DecoderLayer>& layers() { return layers_; }  // e.g. to swap in quantized linears
  const std::vector<DecoderLayer>& layers() const { return layers_; }

  KvCache make_cache(int64_t capacity) const { return KvCache(config_, capacity); }

  // Runs `tokens` after what the cache holds and appends their K/V. Returns float32 logits
  // [1, vocab] (last position) or [T, vocab] (all). Preconditions (LLMQ_CHECK): tokens
  // non-empty, ids in [0, vocab), cache.length() + T <= cache.capacity(); callers that take
  // user input validate first (generate, perplexity).
  Tensor forward(const std::vector<int32_t>& tokens, KvCache& cache, LogitsFor which,
                 const ForwardOptions& opt) const;
  // forward() on an emptied cache.
  Tensor prefill(const std::vector<int32_t>& tokens, KvCache& cache, LogitsFor which,
                 const ForwardOptions& opt) const;
  // One token after the cache's contents; logits [1, vocab].
  Tensor decode_step(int32_t token, KvCache& cache, const ForwardOptions& opt) const;

  // The pieces of forward(), for layer-at-a-time callers.
  Tensor embed(const std::vector<int32_t>& tokens, Precision precision) const;  // [T, hidden]
  // Final norm + lm_head on x [T, hidden] (x is normalised in place); logits [T, vocab].
  Tensor head(const TensorView& x, Precision precision) const;

 private:
  LlamaConfig config_;
  Tensor embed_tokens_;  // [vocab, hidden]
  std::vector<DecoderLayer> layers_;
  Tensor norm_;  // [hidden]
  std::unique_ptr<Linear> lm_head_;
};

}  // namespace llmq
