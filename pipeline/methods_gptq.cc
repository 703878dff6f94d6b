// gptq: the linears of a layer in execution order — {q,k,v}, {o}, {gate,up}, {down} — each
// group quantized with the Hessian of its input. Sequential (default, AutoGPTQ's
// true_sequential): that Hessian is collected by running the samples through the layer with
// the groups before it already quantized, so later groups compensate earlier errors, and the
// next layer sees this layer's quantized output. Otherwise the Hessians of the float model
// from the calibration file are used (no forward at all).
#include "pipeline/activations.h"
#include "pipeline/layer.h"
#include "quantizers/gptq.h"

namespace llmq {
namespace {

struct GptqGroup {
  LinearInput input;
  std::vector<LinearSlot> slots;
};

}  // namespace

GptqConfig gptq_config(const MethodSettings& m) {
  GptqConfig cfg;
  cfg.group_size = m.group_size;
  cfg.range = m.symmetric ? Int4Range::kSymmetric : Int4Range::kAsymWithZero;
  cfg.scale_dtype = m.scale_dtype;
  cfg.min_zero = (m.format == QuantFormat::kGptqV1 && !m.symmetric) ? 1 : 0;  // v1 files store zero - 1
  cfg.damp_percent = m.damp_percent;
  cfg.act_order = m.act_order;
  cfg.mse_clip = m.mse_clip;
  return cfg;
}

Expected<LayerResult> quantize_layer_gptq(LayerWeights& w, LayerContext& ctx) {
  const MethodSettings& m = ctx.settings;
  const bool sequential = m.sequential && !ctx.activations.empty();
  if (!sequential && !(ctx.calib && ctx.calib->has_hessian()))
    return Status::error("gptq needs Hessians: give --dataset (sequential) or a --calib file made with Hessians");

  const GptqConfig cfg = gptq_config(m);

  LayerResult result;
  const GptqGroup groups[] = {{LinearInput::kAttnIn, {LinearSlot::kQ, LinearSlot::kK, LinearSlot::kV}},
                              {LinearInput::kAttnOut, {LinearSlot::kO}},
                              {LinearInput::kMlpIn, {LinearSlot::kGate, LinearSlot::kUp}},
                              {LinearInput::kMlpOut, {LinearSlot::kDown}}};
  for (const GptqGroup& g : groups) {
    if (!ctx.plan.quantizes(w.index, g.slots.front())) continue;
    Tensor hessian;
    if (sequential) {
      const DecoderLayer partial = make_decoder_layer(w, &result.quantized);
      LLMQ_ASSIGN_OR_RETURN(auto stats, collect_layer_stats(partial, ctx.config, ctx.activations, /*hessian=*/true));
      hessian = std::move(stats[static_cast<size_t>(g.input)].hessian);
    } else {
      hessian = Tensor::copy_of(ctx.calib->stats(w.index, g.input).hessian.view());
    }
    for (LinearSlot s : g.slots) {
      QuantReport& report = result.reports[static_cast<size_t>(s)];
      result.quantized[static_cast<size_t>(s)] = quantize_gptq(w.weight(s).view(), hessian.view(), cfg, &report);
    }
  }
  if (sequential) {
    const DecoderLayer quantized = make_decoder_layer(w, &result.quantized);
    LLMQ_RETURN_IF_ERROR(forward_layer(quantized, ctx.config, ctx.activations));
  }
  result.notes["sequential"] = sequential;
  return result;
}

}  // namespace llmq
