// awq (AutoAWQ's quantizer, formats.md B.4-B.5): per layer
//   1. run the float layer on the samples, recording each linear input (the next layer's input is
//      this float output, as in AutoAWQ);
//   2. search a per-channel scale for each of the four mappings, on the recorded inputs:
//        input_layernorm -> q,k,v   loss on the attention block output
//        v_proj -> o_proj           loss on o_proj's output (only when v and o shapes allow)
//        post_attention_layernorm -> gate,up   loss on the MLP block output
//        up_proj -> down_proj       loss on down_proj's output
//   3. fold the scales (previous op / s, linears * s, recorded inputs / s);
//   4. clip search on the scaled weights and inputs (not q, k), clamp;
//   5. asymmetric INT4 with AutoAWQ's grid.
#include <cmath>

#include "core/stopwatch.h"
#include "pipeline/activations.h"
#include "pipeline/awq_layer.h"

namespace llmq {
namespace {

Tensor run_block(const DecoderLayer& layer, const LlamaConfig& c, const AwqMapping& map, const Tensor& x) {
  ForwardOptions opt;
  switch (map.block) {
    case AwqLossBlock::kAttention: return attention_block(layer, c, x.view(), opt);
    case AwqLossBlock::kMlp: return mlp_block(layer, c, x.view(), opt);
    case AwqLossBlock::kLinear: {
      const Linear& lin = layer.linear(map.linears.front());
      Tensor y(DType::kF32, {x.dim(0), lin.out_features()});
      lin.forward(x.view(), y.view());
      return y;
    }
  }
  return Tensor();
}

// Mean squared difference between the block outputs of `layer` and `reference` outputs, over
// every sample (samples in parallel, summed in order).
double block_mse(const DecoderLayer& layer, const LlamaConfig& c, const AwqMapping& map, const std::vector<Tensor>& inputs,
                 const std::vector<Tensor>& reference) {
  const int64_t n = static_cast<int64_t>(inputs.size());
  std::vector<double> sums(static_cast<size_t>(n), 0.0);
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t s = 0; s < n; ++s) {
    const Tensor y = run_block(layer, c, map, inputs[static_cast<size_t>(s)]);
    const float* a = y.data<float>();
    const float* b = reference[static_cast<size_t>(s)].data<float>();
    double acc = 0;
    for (int64_t i = 0; i < y.numel(); ++i) acc += static_cast<double>(a[i] - b[i]) * (a[i] - b[i]);
    sums[static_cast<size_t>(s)] = acc;
  }
  double total = 0;
  int64_t count = 0;
  for (int64_t s = 0; s < n; ++s) {
    total += sums[static_cast<size_t>(s)];
    count += reference[static_cast<size_t>(s)].numel();
  }
  return count > 0 ? total / static_cast<double>(count) : 0.0;
}

// mean |x[:, j]| over all samples' tokens (AutoAWQ's x_mean).
std::vector<float> channel_abs_mean(const std::vector<Tensor>& xs) {
  const int64_t cols = xs.front().dim(1);
  std::vector<double> sum(static_cast<size_t>(cols), 0.0);
  int64_t rows = 0;
  for (const Tensor& x : xs) {
    const float* p = x.data<float>();
    for (int64_t t = 0; t < x.dim(0); ++t)
      for (int64_t j = 0; j < cols; ++j) sum[static_cast<size_t>(j)] += std::fabs(p[t * cols + j]);
    rows += x.dim(0);
  }
  std::vector<float> mean(static_cast<size_t>(cols));
  for (int64_t j = 0; j < cols; ++j) mean[static_cast<size_t>(j)] = static_cast<float>(sum[static_cast<size_t>(j)] / rows);
  return mean;
}

}  // namespace

const std::vector<AwqMapping>& awq_mappings() {
  static const std::vector<AwqMapping> mappings = {
      {"qkv", LinearInput::kAttnIn, {LinearSlot::kQ, LinearSlot::kK, LinearSlot::kV}, AwqLossBlock::kAttention,
       &LayerWeights::input_layernorm, std::nullopt},
      {"v->o", LinearInput::kAttnOut, {LinearSlot::kO}, AwqLossBlock::kLinear, nullptr, LinearSlot::kV},
      {"gate,up", LinearInput::kMlpIn, {LinearSlot::kGate, LinearSlot::kUp}, AwqLossBlock::kMlp,
       &LayerWeights::post_attention_layernorm, std::nullopt},
      {"up->down", LinearInput::kMlpOut, {LinearSlot::kDown}, AwqLossBlock::kLinear, nullptr, LinearSlot::kUp}};
  return mappings;
}

bool awq_mapping_applies(const AwqMapping& map, const LlamaConfig& c, const ModulePlan& plan, int64_t layer) {
  if (!plan.quantizes(layer, map.linears.front())) return false;
  return !(map.prev_linear == LinearSlot::kV && c.kv_dim() != c.q_dim());
}

AwqConfig awq_config(const MethodSettings& m) {
  AwqConfig cfg;
  cfg.group_size = m.group_size;
  cfg.n_grid = m.awq_grid;
  cfg.scale_dtype = m.scale_dtype;
  return cfg;
}

void awq_fold_scales(LayerWeights& w, const AwqMapping& map, const std::vector<float>& s) {
  if (map.norm) {
    Tensor& norm = w.*(map.norm);
    float* p = norm.data<float>();
    for (int64_t j = 0; j < norm.numel(); ++j) p[j] /= s[static_cast<size_t>(j)];
  } else {
    Tensor& prev = w.weight(*map.prev_linear);  // rows / s
    float* p = prev.data<float>();
    for (int64_t r = 0; r < prev.dim(0); ++r)
      for (int64_t k = 0; k < prev.dim(1); ++k) p[r * prev.dim(1) + k] /= s[static_cast<size_t>(r)];
  }
  for (LinearSlot slot : map.linears) {  // columns * s
    float* p = w.weight(slot).data<float>();
    const int64_t rows = w.weight(slot).dim(0), cols = w.weight(slot).dim(1);
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < cols; ++j) p[r * cols + j] *= s[static_cast<size_t>(j)];
  }
}

void awq_divide_columns(float* x, int64_t rows, const std::vector<float>& s) {
  const int64_t cols = static_cast<int64_t>(s.size());
  for (int64_t t = 0; t < rows; ++t)
    for (int64_t j = 0; j < cols; ++j) x[t * cols + j] /= s[static_cast<size_t>(j)];
}

bool awq_clips(LinearSlot slot, const MethodSettings& m) {
  return m.awq_clip && slot != LinearSlot::kQ && slot != LinearSlot::kK;
}

void awq_finish_linear(LayerWeights& w, LinearSlot slot, const Tensor* max_val, const AwqConfig& cfg,
                       LayerResult& result, double seconds) {
  Tensor& weight = w.weight(slot);
  const Tensor scaled = Tensor::copy_of(weight.view());
  if (max_val) awq_apply_clip(weight, *max_val, cfg.group_size);
  QuantizedLinear q = quantize_awq_final(weight, cfg);
  QuantReport& report = result.reports[static_cast<size_t>(slot)];
  measure_error(scaled, q, nullptr, report);
  report.seconds = seconds;
  result.quantized[static_cast<size_t>(slot)] = std::move(q);
}

Expected<LayerResult> quantize_layer_awq(LayerWeights& w, LayerContext& ctx) {
  const MethodSettings& m = ctx.settings;
  const LlamaConfig& c = ctx.config;
  if (ctx.activations.empty()) return Status::error("awq needs calibration samples (--dataset or --calib)");
  const AwqConfig cfg = awq_config(m);

  // 1. Float forward, recording the linear inputs.
  const DecoderLayer original = make_decoder_layer(w);
  CapturedInputs cap;
  LLMQ_RETURN_IF_ERROR(forward_layer(original, c, ctx.activations, &cap));

  LayerResult result;
  nlohmann::ordered_json scale_notes = nlohmann::ordered_json::array();
  std::vector<std::pair<const AwqMapping*, std::vector<float>>> chosen;
  // 2. Scale searches, all on the unmodified layer and inputs (AutoAWQ order).
  for (const AwqMapping& map : awq_mappings()) {
    if (!awq_mapping_applies(map, c, ctx.plan, w.index)) continue;
    const std::vector<Tensor>& xs = cap.of(map.input);
    std::vector<Tensor> reference;
    for (const Tensor& x : xs) reference.push_back(run_block(original, c, map, x));
    std::vector<const Tensor*> ws;
    for (LinearSlot s : map.linears) ws.push_back(&w.weight(s));
    const std::vector<float> x_mean = channel_abs_mean(xs);
    const std::vector<float> w_mean = awq_weight_mean(ws, cfg.group_size);
    const AwqLossFn loss_of = [&](const std::vector<float>& s) {
      DecoderLayer candidate = make_decoder_layer(w);
      for (LinearSlot slot : map.linears)
        candidate.set_linear(slot, std::make_unique<DenseLinear>(awq_fake_quant_scaled(w.weight(slot), s, cfg)));
      return block_mse(candidate, c, map, xs, reference);
    };
    const AwqScaleSearch search = awq_search_scales(x_mean, w_mean, cfg, loss_of);
    scale_notes.push_back({{"mapping", map.name},
                           {"best_ratio", search.best_ratio},
                           {"loss_rtn", search.loss_unscaled},
                           {"loss_best", search.best_loss}});
    chosen.emplace_back(&map, search.scales);
  }

  // 3. Fold the scales; the recorded inputs of the scaled linears become x / s.
  std::array<std::vector<Tensor>, kNumLinearInputs> inputs = std::move(cap.inputs);
  for (const auto& [map, s] : chosen) {
    awq_fold_scales(w, *map, s);
    for (Tensor& x : inputs[static_cast<size_t>(map->input)]) awq_divide_columns(x.data<float>(), x.dim(0), s);
  }

  // 4-5. Clip, then quantize.
  for (int si = 0; si < kNumLinearSlots; ++si) {
    const LinearSlot slot = static_cast<LinearSlot>(si);
    if (!ctx.plan.quantizes(w.index, slot)) continue;
    const auto t0 = Clock::now();
    std::optional<Tensor> max_val;
    if (awq_clips(slot, m)) {
      const Tensor x = concat_rows(inputs[static_cast<size_t>(input_of(slot))]);
      max_val = awq_search_clip(w.weight(slot), x.view(), cfg);
    }
    awq_finish_linear(w, slot, max_val ? &*max_val : nullptr, cfg, result,
                      seconds_since(t0));
  }
  result.notes["scales"] = std::move(scale_notes);
  result.notes["clip"] = m.awq_clip;
  return result;
}

}  // namespace llmq
