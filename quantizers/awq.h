// AWQ (Lin et al. 2024, "AWQ: Activation-aware Weight Quantization for LLM Compression and
// Acceleration", section 3; AutoAWQ's implementation, formats.md B.4-B.5), the numerical
// parts as pure functions; the loop over a decoder layer's four scale groups and the block
// forwards that measure the loss live in the quantize pipeline.
//
// Scale search, per group of linears sharing an input X (x_mean[j] = mean |X[:, j]|):
//   w_mean[j]: the linears' rows concatenated, each 128-wide group of a row divided by its max
//              |w| (+1e-6), then averaged over rows;
//   for r = i / n_grid, i = 0..n_grid-1:
//     s = clamp(x_mean^r / (w_mean^(1-r) + 1e-4), min 1e-4); s /= sqrt(max(s) * min(s));
//     loss(s) = mean squared difference of the block output with each linear's weight replaced
//               by Q(W diag(s)) diag(s)^-1 (Q = AWQ asymmetric INT4 fake-quantization);
//   keep the s with the lowest loss (caller supplies loss(s)). Unlike AutoAWQ, s = 1 (plain
//   RTN) is also evaluated and kept when it is best, so the block loss never exceeds RTN's.
// Clip search, per linear (not q/k), on the scaled weight and scaled input X (sub-sampled to
// ~clip_tokens rows, odd stride): per (row, group) try max_val = amax * (1 - i / n_grid), i < max_shrink *
// n_grid, clamp W to +-max_val, fake-quantize, error = mean over tokens of
// (sum_group x (Q(W_c) - W))^2; keep the best max_val.
#pragma once

#include <functional>
#include <vector>

#include "core/tensor.h"
#include "quantizers/int_grid.h"
#include "quantizers/quantized_linear.h"

namespace llmq {

struct AwqConfig {
  int64_t group_size = 128;
  int n_grid = 20;           // scale ratios 0, 1/20, ..., 19/20
  bool duo_scaling = true;   // use w_mean as well as x_mean
  int clip_grid = 20;
  double max_shrink = 0.5;   // clip candidates 1.00 .. 0.55
  int64_t clip_tokens = 512;  // input rows used by the clip search
  DType scale_dtype = DType::kF16;
};

// Per-input-channel mean of group-normalised |w| over the rows of all `weights` [out_i, in].
std::vector<float> awq_weight_mean(const std::vector<const Tensor*>& weights, int64_t group_size);

std::vector<float> awq_candidate_scales(const std::vector<float>& x_mean, const std::vector<float>& w_mean,
                                        double ratio, bool duo_scaling);

struct AwqScaleSearch {
  std::vector<float> scales;  // the best s [in]
  double best_ratio = 0;  // -1: s = 1 (no scaling) won
  double best_loss = 0;
  double loss_unscaled = 0;  // loss at ratio 0 with duo off, i.e. plain RTN of the block (s = 1)
  std::vector<double> losses;  // per ratio
};

using AwqLossFn = std::function<double(const std::vector<float>& scales)>;
AwqScaleSearch awq_search_scales(const std::vector<float>& x_mean, const std::vector<float>& w_mean,
                                 const AwqConfig& config, const AwqLossFn& loss_of);

// Q(W diag(s)) diag(s)^-1 in float32: the weight the scale search evaluates.
Tensor awq_fake_quant_scaled(const Tensor& w, const std::vector<float>& s, const AwqConfig& config);
// Fake-quantizes w [out, in] with AWQ's asymmetric INT4 grid (per row and group).
Tensor awq_fake_quant(const Tensor& w, const AwqConfig& config);

// The clip search's token sub-sampling: rows 0, step, 2 step, ... (count of them) of the
// n_tokens inputs. step = max(1, n_tokens / clip_tokens) | 1, count = ceil(n_tokens / step).
struct AwqClipRows {
  int64_t step = 1;
  int64_t count = 0;
};
AwqClipRows awq_clip_rows(int64_t n_tokens, int64_t clip_tokens);

// Best clip value per (row, group) [out, G] for weight w [out, in] and inputs x [T, in]:
// sub-samples x with awq_clip_rows, then awq_search_clip_rows.
Tensor awq_search_clip(const Tensor& w, const TensorView& x, const AwqConfig& config);
// The same search on already sub-sampled inputs xs [T, in] (F32, contiguous, host); the
// reference of gpu::awq_search_clip.
Tensor awq_search_clip_rows(const Tensor& w, const TensorView& xs, const AwqConfig& config);
// W = clamp(W, -max_val, max_val) per (row, group), in place.
void awq_apply_clip(Tensor& w, const Tensor& max_val, int64_t group_size);

// The final quantization of a scaled and clipped weight (AutoAWQ's grid, F16 scales).
QuantizedLinear quantize_awq_final(const Tensor& w, const AwqConfig& config);

}  // namespace llmq
