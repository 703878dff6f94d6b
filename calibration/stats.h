// Per-linear-input activation statistics (DESIGN.md, data flow step 1).
//
// A decoder layer has seven linears but four distinct inputs: q/k/v read the normalised
// hidden state (attn_in), o_proj reads the attention output (attn_out), gate/up read the
// second normalised hidden state (mlp_in), down_proj reads SiLU(gate)*up (mlp_out). For each
// input x [T, in] (one row per token) over all calibration tokens:
//   abs_max[c]  = max_t |x[t,c]|        (FP8 / INT8 activation scales, AWQ)
//   abs_mean[c] = sum_t |x[t,c]| / tokens (AWQ's activation salience)
//   min[c], max[c]                      (SmoothQuant uses max - min)
//   hessian     = sum_t x[t,:]^T x[t,:]  [in, in] (GPTQ; H = X^T X without the 2/N factor)
// Arithmetic: per sample, X^T X is computed in float32 with Eigen, one 128x128 block of the
// lower triangle at a time (half the flops of a full GEMM, parallel over blocks, and each
// block's summation order is independent of the thread count), then added to a float64
// accumulator; the upper triangle is mirrored at finish, so the result is exactly symmetric.
// sum |x| is accumulated in float64. Samples are added in call order, so results are
// deterministic for a given order of samples.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"
#include "formats/hf_config.h"
#include "model/llama.h"

namespace llmq {

enum class LinearInput : uint8_t { kAttnIn, kAttnOut, kMlpIn, kMlpOut };
constexpr int kNumLinearInputs = 4;
constexpr std::array<LinearInput, kNumLinearInputs> kAllLinearInputs = {
    LinearInput::kAttnIn, LinearInput::kAttnOut, LinearInput::kMlpIn, LinearInput::kMlpOut};

std::string_view linear_input_name(LinearInput input);  // "attn_in", "attn_out", "mlp_in", "mlp_out"
LinearInput input_of(LinearSlot slot);                  // kQ/kK/kV -> kAttnIn, ...
// The slot whose observer call stands for the input (kQ, kO, kGate, kDown).
LinearSlot first_slot_of(LinearInput input);
// Width of the input: hidden, q_dim, hidden, intermediate.
int64_t input_features(const LlamaConfig& config, LinearInput input);

// Copies one forward's four distinct linear inputs ([T, in] each), to be used after the
// forward (ordered accumulation after parallel forwards, AWQ's searches).
class LinearInputRecorder final : public LinearInputObserver {
 public:
  void on_linear_input(int64_t /*layer*/, LinearSlot slot, const TensorView& x) override {
    const LinearInput input = input_of(slot);
    if (slot == first_slot_of(input)) inputs[static_cast<size_t>(input)] = Tensor::copy_of(x);
  }
  std::array<Tensor, kNumLinearInputs> inputs;
};

// True when every element of the float32 tensor is finite.
bool all_finite(const Tensor& t);

struct InputStats {
  int64_t tokens = 0;
  Tensor abs_max;   // [in] float32
  Tensor abs_mean;  // [in] float32
  Tensor min;       // [in] float32
  Tensor max;       // [in] float32
  Tensor hessian;   // [in, in] float32, sum of x x^T; empty when not collected
};

// Accumulates the statistics of one input over samples.
class InputStatsAccumulator {
 public:
  InputStatsAccumulator(int64_t features, bool hessian);
  // x: [T, features] contiguous float32 host. Returns an error (and adds nothing) when x holds
  // NaN or Inf; the message names the first bad token and channel.
  Status add(const TensorView& x);
  int64_t features() const { return features_; }
  int64_t tokens() const { return tokens_; }
  InputStats finish() const;  // float32 results; may be called more than once

  static constexpr int64_t kHessianBlock = 128;

 private:
  int64_t features_ = 0;
  bool hessian_ = false;
  int64_t tokens_ = 0;
  std::vector<float> abs_max_;     // [in]
  std::vector<double> abs_sum_;    // [in]
  std::vector<float> min_;         // [in]
  std::vector<float> max_;         // [in]
  std::vector<double> hessian_lo_; // [in, in] row-major, lower triangle (j <= i) filled
};

// The statistics of one decoder layer's four inputs. As a LinearInputObserver it is passed to
// decoder_layer_forward (ForwardOptions::observer) and accumulates every sample it sees, in
// call order; the quantize pipeline uses it inline the same way (e.g. sequential GPTQ
// re-collecting Hessians on a partially quantized layer). Calls for other layers are ignored.
// Not thread-safe: one forward at a time (llama.h's observer contract).
class LayerStatsCollector final : public LinearInputObserver {
 public:
  LayerStatsCollector(const LlamaConfig& config, int64_t layer, bool hessian);

  void on_linear_input(int64_t layer, LinearSlot slot, const TensorView& x) override;
  // Direct feeding (calibrate captures inputs from parallel forwards, then adds them here in
  // sample order).
  void add(LinearInput input, const TensorView& x);

  int64_t layer() const { return layer_; }
  // The first error seen (non-finite activations), naming the layer and input; OK otherwise.
  const Status& status() const { return status_; }
  const InputStatsAccumulator& accumulator(LinearInput input) const {
    return acc_[static_cast<int>(input)];
  }
  InputStats finish(LinearInput input) const { return accumulator(input).finish(); }

 private:
  int64_t layer_ = 0;
  std::vector<InputStatsAccumulator> acc_;  // indexed by LinearInput
  Status status_;
};

}  // namespace llmq
