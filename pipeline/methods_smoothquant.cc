// int8-sq: SmoothQuant factors from the float model's activation statistics, folded into
// input_layernorm (q, k, v) and post_attention_layernorm (gate, up), then INT8 per-channel
// weights (RTN; activations are quantized per token at run time).

#include "core/stopwatch.h"
#include "pipeline/activations.h"
#include "pipeline/layer.h"
#include "quantizers/rtn.h"
#include "quantizers/smoothquant.h"

namespace llmq {
namespace {

std::vector<float> as_vector(const Tensor& t) { return std::vector<float>(t.data<float>(), t.data<float>() + t.numel()); }

struct SmoothGroup {
  LinearInput input;
  Tensor LayerWeights::*norm;
  std::vector<LinearSlot> balance;
  const char* name;
};

}  // namespace

Expected<LayerResult> quantize_layer_smoothquant(LayerWeights& w, LayerContext& ctx) {
  // Statistics of the float model (SmoothQuant smooths every layer with the activations of
  // the unmodified model, as llm-compressor's calibration pass records them).
  const bool from_file = ctx.calib != nullptr;
  if (from_file) {
    std::array<InputStats, kNumLinearInputs> stats;
    for (LinearInput in : kAllLinearInputs) {
      const InputStats& f = ctx.calib->stats(w.index, in);
      InputStats& t = stats[static_cast<size_t>(in)];
      t.tokens = f.tokens;
      t.abs_max = Tensor::copy_of(f.abs_max.view());
      t.min = Tensor::copy_of(f.min.view());
      t.max = Tensor::copy_of(f.max.view());
    }
    return quantize_layer_smoothquant_with_stats(w, ctx, stats);
  }
  if (ctx.activations.empty()) return Status::error("int8-sq needs calibration (--calib or --dataset)");
  const DecoderLayer layer = make_decoder_layer(w);
  LLMQ_ASSIGN_OR_RETURN(auto computed, collect_layer_stats(layer, ctx.config, ctx.activations, /*hessian=*/false));
  LLMQ_RETURN_IF_ERROR(forward_layer(layer, ctx.config, ctx.activations));
  return quantize_layer_smoothquant_with_stats(w, ctx, computed);
}

Expected<LayerResult> quantize_layer_smoothquant_with_stats(LayerWeights& w, LayerContext& ctx,
                                                            const std::array<InputStats, kNumLinearInputs>& stats) {
  const MethodSettings& m = ctx.settings;
  auto stats_of = [&](LinearInput in) -> const InputStats& { return stats[static_cast<size_t>(in)]; };

  LayerResult result;
  SmoothQuantConfig sq;
  sq.alpha = m.alpha;
  const SmoothGroup groups[] = {
      {LinearInput::kAttnIn, &LayerWeights::input_layernorm, {LinearSlot::kQ, LinearSlot::kK, LinearSlot::kV}, "attn"},
      {LinearInput::kMlpIn, &LayerWeights::post_attention_layernorm, {LinearSlot::kGate, LinearSlot::kUp}, "mlp"}};
  for (const SmoothGroup& g : groups) {
    // Ignored partners stay float: smoothing them would still be exact, but the plan keeps
    // fused groups together, so either all or none are quantized.
    if (!ctx.plan.quantizes(w.index, g.balance.front())) continue;
    const InputStats& st = stats_of(g.input);
    std::vector<const Tensor*> balance;
    std::vector<Tensor*> balance_mut;
    for (LinearSlot s : g.balance) {
      balance.push_back(&w.weight(s));
      balance_mut.push_back(&w.weight(s));
    }
    const std::vector<float> factors =
        smoothquant_factors(as_vector(st.min), as_vector(st.max), as_vector(st.abs_max), balance, sq);
    fold_smoothing(factors, w.*(g.norm), balance_mut);
    float lo = factors.front(), hi = factors.front();
    for (float f : factors) lo = std::min(lo, f), hi = std::max(hi, f);
    result.notes[g.name] = {{"factor_min", lo}, {"factor_max", hi}};
  }
  for (int s = 0; s < kNumLinearSlots; ++s) {
    const LinearSlot slot = static_cast<LinearSlot>(s);
    if (!ctx.plan.quantizes(w.index, slot)) continue;
    const auto t0 = Clock::now();
    QuantizedLinear q = quantize_rtn_int8(w.weight(slot).view(), Int8Config{m.scale_dtype});
    QuantReport& report = result.reports[static_cast<size_t>(s)];
    measure_error(w.weight(slot), q, nullptr, report);
    report.seconds = seconds_since(t0);
    result.quantized[static_cast<size_t>(s)] = std::move(q);
  }
  result.notes["alpha"] = m.alpha;
  return result;
}

}  // namespace llmq
