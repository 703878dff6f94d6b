#include "pipeline/layer.h"

#include <Eigen/Core>
#include <cmath>
#include <vector>

#include "core/check.h"
#include "model/quantized_linear.h"

namespace llmq {
namespace {

using MatF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstMapF = Eigen::Map<const MatF>;

}  // namespace

Expected<LayerWeights> load_layer_weights(const HfCheckpoint& ckpt, int64_t layer) {
  const LlamaConfig& c = ckpt.config();
  LayerWeights w;
  w.index = layer;
  for (int s = 0; s < kNumLinearSlots; ++s) {
    const LinearSlot slot = static_cast<LinearSlot>(s);
    if (ckpt.is_quantized_linear(linear_module_name(layer, slot)))
      return Status::error(ckpt.dir() + ": " + linear_module_name(layer, slot) +
                           " is already quantized; quantize from the float checkpoint");
    const auto [out, in] = linear_shape(c, slot);
    LLMQ_ASSIGN_OR_RETURN(w.linears[s], ckpt.load_f32(linear_module_name(layer, slot) + ".weight", {out, in}));
  }
  LLMQ_ASSIGN_OR_RETURN(w.input_layernorm, ckpt.load_f32(layer_tensor_name(layer, "input_layernorm.weight"),
                                                         {c.hidden_size}));
  LLMQ_ASSIGN_OR_RETURN(w.post_attention_layernorm,
                        ckpt.load_f32(layer_tensor_name(layer, "post_attention_layernorm.weight"), {c.hidden_size}));
  return w;
}

DecoderLayer make_decoder_layer(const LayerWeights& w, const QuantizedSlots* quantized, bool w8a8) {
  DecoderLayer layer;
  layer.index = w.index;
  for (int s = 0; s < kNumLinearSlots; ++s) {
    const auto* q = quantized ? &(*quantized)[static_cast<size_t>(s)] : nullptr;
    if (q && q->has_value()) {
      const bool as_w8a8 = w8a8 && (*q)->scheme != QuantScheme::kInt4Group;
      layer.linears[s] = make_quantized_linear((*q)->clone(), as_w8a8);
    } else {
      layer.linears[s] = std::make_unique<DenseLinear>(Tensor::copy_of(w.linears[s].view()));
    }
  }
  layer.input_layernorm = Tensor::copy_of(w.input_layernorm.view());
  layer.post_attention_layernorm = Tensor::copy_of(w.post_attention_layernorm.view());
  return layer;
}

void measure_error(const Tensor& w, const QuantizedLinear& q, const Tensor* hessian, QuantReport& report) {
  const Tensor deq = dequantize(q);
  const int64_t out = w.dim(0), in = w.dim(1);
  // ||W||² and ||E||² per row on all cores, then summed in row order: the same value for any
  // thread count.
  std::vector<double> w_sq(out), e_sq(out);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < out; ++n) {
    const float* a = w.data<float>() + n * in;
    const float* b = deq.data<float>() + n * in;
    double ws = 0, es = 0;
    for (int64_t k = 0; k < in; ++k) {
      const double e = static_cast<double>(a[k]) - b[k];
      ws += static_cast<double>(a[k]) * a[k];
      es += e * e;
    }
    w_sq[n] = ws;
    e_sq[n] = es;
  }
  double wn = 0, en = 0;
  for (int64_t n = 0; n < out; ++n) wn += w_sq[n], en += e_sq[n];
  report.weight_rel_error = wn > 0 ? std::sqrt(en / wn) : 0.0;
  if (hessian && !hessian->empty()) {
    const ConstMapF W(w.data<float>(), out, in);
    const MatF E = W - ConstMapF(deq.data<float>(), out, in);
    const ConstMapF H(hessian->data<float>(), hessian->dim(0), hessian->dim(1));
    const double num = (E * H).cwiseProduct(E).cast<double>().sum();
    const double den = (W * H).cwiseProduct(W).cast<double>().sum();
    report.output_rel_error = den > 0 ? num / den : 0.0;
  }
}

}  // namespace llmq
