// pipeline/calibrate_gpu.h (CUDA builds).
#include "pipeline/calibrate_gpu.h"

#include <cuda_runtime.h>

#include <array>
#include <memory>
#include <string>
#include <vector>

#include "calibration/stats.h"
#include "core/check.h"
#include "formats/safetensors.h"
#include "pipeline/column_stats_gpu.h"
#include "pipeline/gpu_samples.h"
#include "pipeline/module_plan.h"
#include "quantizers/gpu/hessian_gpu.h"
#include "runner/cuda_check.h"
#include "runner/device.h"
#include "runner/layer.h"
#include "runner/linear.h"

namespace llmq {
namespace {

// Device bytes of one Hessian accumulator: f64 sum + f32 product per element (hessian_gpu.h).
constexpr size_t kHessianBytesPerElement = 12;
// Slack for what the estimate leaves out: cuBLAS workspaces, ColumnRanges' partial sums.
constexpr size_t kDeviceSlackBytes = size_t(64) << 20;

// The accumulators of one layer's four inputs, fed by the forward's hook on every chunk.
class StatsHook final : public LayerInputHook {
 public:
  StatsHook(const LlamaConfig& c, bool hessian, cudaStream_t stream) {
    for (LinearInput in : kAllLinearInputs) {
      const size_t i = static_cast<size_t>(in);
      ranges_[i] = std::make_unique<gpu::ColumnRanges>(input_features(c, in), stream);
      if (hessian) hessians_[i] = std::make_unique<gpu::HessianAccumulator>(input_features(c, in), stream);
    }
  }

  void on_input(LayerInput input, const bf16* x, int rows, int cols) override {
    if (!status.is_ok()) return;  // keep the first error
    const size_t i = static_cast<size_t>(input);
    const std::string name(linear_input_name(static_cast<LinearInput>(input)));
    status = ranges_[i]->add(x, rows).with_context(name);
    if (status.is_ok() && hessians_[i]) {
      const TensorView v(DType::kBF16, {rows, cols}, const_cast<bf16*>(x), Device::kCuda);  // [rows, cols]
      status = hessians_[i]->add(v).with_context(name);
    }
  }

  // One input's statistics on the host (stats.h's conventions: zeros for no tokens); its
  // device accumulators are freed.
  InputStats take(LinearInput in) {
    const size_t i = static_cast<size_t>(in);
    InputStats s = ranges_[i]->input_stats();
    if (hessians_[i]) {
      LLMQ_CHECK(hessians_[i]->tokens() == s.tokens, "Hessian saw " << hessians_[i]->tokens() << " tokens, ranges "
                                                                    << s.tokens);
      s.hessian = hessians_[i]->download();  // [features, features]
    }
    ranges_[i].reset();
    hessians_[i].reset();
    return s;
  }

  Status status;

 private:
  std::array<std::unique_ptr<gpu::ColumnRanges>, kNumLinearInputs> ranges_;          // by LinearInput
  std::array<std::unique_ptr<gpu::HessianAccumulator>, kNumLinearInputs> hessians_;  // null: no Hessians
};

class GpuLayerStats final : public LayerStatsRunner {
 public:
  GpuLayerStats(const HfCheckpoint& ckpt, bool hessian, const GpuInfo& info)
      : ckpt_(ckpt), c_(ckpt.config()), hessian_(hessian), fp8_ok_(info.major * 10 + info.minor >= 89),
        label_("cuda:" + info.name) {}
  ~GpuLayerStats() override {
    samples_.reset();
    blas_.reset();
    if (stream_) cudaStreamDestroy(stream_);
  }

  // The stream, cuBLAS, the device samples; refuses when one layer's weights and accumulators
  // would not fit beside them.
  Status init(const std::vector<std::vector<int32_t>>& samples) {
    LLMQ_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    blas_ = std::make_unique<gpu::Blas>();
    LLMQ_ASSIGN_OR_RETURN(samples_, GpuSamples::create(ckpt_, samples, blas_.get(), stream_, peak_));
    const size_t h = size_t(c_.hidden_size), q = size_t(c_.q_dim()), kv = size_t(c_.kv_dim()),
                 inter = size_t(c_.intermediate_size);
    const size_t layer_bytes = 2 * (q * h + 2 * kv * h + h * q + 3 * inter * h + 2 * h);  // bf16
    size_t hessian_bytes = 0;
    if (hessian_)
      for (LinearInput in : kAllLinearInputs) {
        const size_t f = size_t(input_features(c_, in));
        hessian_bytes += kHessianBytesPerElement * f * f;
      }
    const size_t need = layer_bytes + hessian_bytes + kDeviceSlackBytes;
    const size_t free_b = peak_.free_bytes();
    if (need > free_b)
      return Status::error("--device gpu: one layer's weights and statistics need about " + std::to_string(need >> 20) +
                           " MiB of GPU memory (Hessians " + std::to_string(hessian_bytes >> 20) + " MiB) beside the " +
                           "calibration activations, " + std::to_string(free_b >> 20) +
                           " MiB free (use fewer --samples or --no-hessian)");
    return Status::ok();
  }

  std::string device_label() const override { return label_; }

  Status run_layer(int64_t layer, const Sink& sink) override {
    const std::string where = "layer " + std::to_string(layer);
    StatsHook hook(c_, hessian_, stream_);
    {
      LLMQ_ASSIGN_OR_RETURN(const GpuLayer g, upload_layer(layer));
      const Status st = samples_->forward(g, &hook, /*advance=*/true, layer);
      // The hook's error names the input; a non-finite output follows from it.
      LLMQ_RETURN_IF_ERROR(hook.status.with_context(where));
      LLMQ_RETURN_IF_ERROR(st);
    }  // the layer's weights are freed here
    for (LinearInput in : kAllLinearInputs) {
      const InputStats s = hook.take(in);
      LLMQ_CHECK(s.tokens == samples_->total_rows(), "statistics of " << where << " " << linear_input_name(in) << " saw "
                                                                     << s.tokens << " tokens, the samples have "
                                                                     << samples_->total_rows());
      LLMQ_RETURN_IF_ERROR(sink(in, s));
    }
    return Status::ok();
  }

 private:
  // The layer as the CPU path runs it (model/llama.h load_decoder_layer): float linears as bf16
  // (finite-checked), already-quantized ones as stored.
  Expected<GpuLayer> upload_layer(int64_t layer) const {
    std::array<HostLinear, kNumLinearSlots> linears;  // q, k, v, o, gate, up, down
    for (int s = 0; s < kNumLinearSlots; ++s) {
      const LinearSlot slot = static_cast<LinearSlot>(s);
      const std::string prefix = layer_tensor_name(layer, std::string(linear_slot_name(slot)));
      const auto [out, in] = linear_shape(c_, slot);
      if (ckpt_.is_quantized_linear(prefix)) {
        LLMQ_ASSIGN_OR_RETURN(linears[s], read_linear(ckpt_, prefix, out, in, /*rtn=*/""));
      } else {
        LLMQ_ASSIGN_OR_RETURN(const TensorView w, ckpt_.float_view(prefix + ".weight", {out, in}));
        linears[s] = dense_host_linear(w);
        release_mapped_pages(w.data, static_cast<size_t>(w.nbytes()));  // copied: keep resident memory one layer
      }
    }
    LLMQ_ASSIGN_OR_RETURN(const TensorView ln1,
                          ckpt_.float_view(layer_tensor_name(layer, "input_layernorm.weight"), {c_.hidden_size}));
    LLMQ_ASSIGN_OR_RETURN(const TensorView ln2,
                          ckpt_.float_view(layer_tensor_name(layer, "post_attention_layernorm.weight"), {c_.hidden_size}));
    return make_gpu_layer(std::move(linears), ln1, ln2, fp8_ok_, ckpt_.dir() + " layer " + std::to_string(layer));
  }

  const HfCheckpoint& ckpt_;  // outlives the runner (calibrate() holds it)
  LlamaConfig c_;
  bool hessian_ = true;
  bool fp8_ok_ = false;
  std::string label_;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<gpu::Blas> blas_;
  DevicePeak peak_;
  std::unique_ptr<GpuSamples> samples_;
};

}  // namespace

CalibrationGpu calibration_gpu() {
  const GpuInfo info = query_gpu();
  CalibrationGpu g;
  if (!info.available) g.unavailable = info.why_not;
  g.open = [info](const HfCheckpoint& ckpt, const std::vector<std::vector<int32_t>>& samples,
                  bool hessian) -> Expected<std::unique_ptr<LayerStatsRunner>> {
    if (!info.available) return Status::error("--device gpu: " + info.why_not);
    const LlamaConfig& c = ckpt.config();
    if (c.attention_bias || c.mlp_bias)
      return Status::error(ckpt.dir() + "/config.json: attention/MLP biases are not supported on the GPU path");
    auto runner = std::make_unique<GpuLayerStats>(ckpt, hessian, info);
    LLMQ_RETURN_IF_ERROR(runner->init(samples));
    return std::unique_ptr<LayerStatsRunner>(std::move(runner));
  };
  return g;
}

}  // namespace llmq
