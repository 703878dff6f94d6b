#include "pipeline/activations.h"

#include <cmath>
#include <cstring>

#include "core/check.h"

#include "calibration/calibrate.h"

namespace llmq {

Status forward_layer(const DecoderLayer& layer, const LlamaConfig& config, std::vector<Tensor>& activations,
                     CapturedInputs* capture) {
  const int64_t n = static_cast<int64_t>(activations.size());
  std::vector<LinearInputRecorder> recorders(static_cast<size_t>(capture ? n : 0));
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t s = 0; s < n; ++s) {
    ForwardOptions opt;
    opt.observer = capture ? &recorders[static_cast<size_t>(s)] : nullptr;
    decoder_layer_forward(layer, config, activations[static_cast<size_t>(s)].view(), opt);
  }
  for (int64_t s = 0; s < n; ++s)
    if (!all_finite(activations[static_cast<size_t>(s)]))
      return Status::error("layer " + std::to_string(layer.index) + ": non-finite output for sample " +
                           std::to_string(s));
  if (capture) {
    for (LinearInput in : kAllLinearInputs) {
      auto& dst = capture->inputs[static_cast<size_t>(in)];
      dst.clear();
      for (LinearInputRecorder& r : recorders) dst.push_back(std::move(r.inputs[static_cast<size_t>(in)]));
    }
  }
  return Status::ok();
}

Expected<std::array<InputStats, kNumLinearInputs>> collect_layer_stats(const DecoderLayer& layer,
                                                                       const LlamaConfig& config,
                                                                       const std::vector<Tensor>& activations,
                                                                       bool hessian) {
  std::vector<Tensor> copies;
  copies.reserve(activations.size());
  for (const Tensor& a : activations) copies.push_back(Tensor::copy_of(a.view()));
  LayerStatsCollector collector(config, layer.index, hessian);
  LLMQ_RETURN_IF_ERROR(forward_samples(layer, config, Precision::kFloat32, copies, &collector));
  std::array<InputStats, kNumLinearInputs> out;
  for (LinearInput in : kAllLinearInputs) out[static_cast<size_t>(in)] = collector.finish(in);
  return out;
}

Tensor concat_rows(const std::vector<Tensor>& parts) {
  std::vector<const Tensor*> ptrs;
  for (const Tensor& p : parts) ptrs.push_back(&p);
  return llmq::concat_rows(ptrs);
}

}  // namespace llmq
