// fp8, rtn-int4, rtn-int8: each linear on its own, from the weight alone.

#include "core/stopwatch.h"
#include "pipeline/layer.h"
#include "quantizers/fp8.h"
#include "quantizers/rtn.h"

namespace llmq {

Expected<LayerResult> quantize_layer_rtn(LayerWeights& w, LayerContext& ctx) {
  const MethodSettings& m = ctx.settings;
  if (m.method != QuantMethod::kFp8 && m.method != QuantMethod::kRtnInt8 && m.method != QuantMethod::kRtnInt4)
    return Status::error("quantize_layer_rtn: not an RTN method");
  LayerResult result;
  // One linear at a time, each quantizer and measure_error on all cores (linears in parallel
  // would leave the inner loops single-threaded: 7 uneven tasks on a 16-core machine).
  for (int s = 0; s < kNumLinearSlots; ++s) {
    const LinearSlot slot = static_cast<LinearSlot>(s);
    if (!ctx.plan.quantizes(w.index, slot)) continue;
    const auto t0 = Clock::now();
    const Tensor& weight = w.weight(slot);
    QuantizedLinear q;
    switch (m.method) {
      case QuantMethod::kFp8: q = quantize_fp8_channel(weight.view(), Fp8Config{m.scale_dtype}); break;
      case QuantMethod::kRtnInt8: q = quantize_rtn_int8(weight.view(), Int8Config{m.scale_dtype}); break;
      case QuantMethod::kRtnInt4: {
        Int4Config c;
        c.group_size = m.group_size;
        c.range = m.symmetric ? Int4Range::kSymmetric : Int4Range::kAsymWithZero;
        c.scale_dtype = m.scale_dtype;
        c.min_zero = (m.format == QuantFormat::kGptqV1 && !m.symmetric) ? 1 : 0;
        q = quantize_rtn_int4(weight.view(), c);
        break;
      }
      default: break;  // excluded above
    }
    QuantReport& report = result.reports[static_cast<size_t>(s)];
    const Tensor* hessian = nullptr;
    if (ctx.calib && ctx.calib->has_hessian()) hessian = &ctx.calib->stats(w.index, input_of(slot)).hessian;
    measure_error(weight, q, hessian, report);
    report.seconds = seconds_since(t0);
    result.quantized[static_cast<size_t>(s)] = std::move(q);
  }
  return result;
}

}  // namespace llmq
