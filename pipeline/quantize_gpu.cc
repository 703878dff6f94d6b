// pipeline/quantize_gpu.h (CUDA builds).
#include "pipeline/quantize_gpu.h"

#include <cuda_runtime.h>

#include <algorithm>

#include "calibration/stats.h"
#include "core/stopwatch.h"
#include "pipeline/awq_gpu.h"
#include "pipeline/column_stats_gpu.h"
#include "pipeline/float_layer_gpu.h"
#include "pipeline/gpu_samples.h"
#include "quantizers/gpu/gptq_gpu.h"
#include "quantizers/gpu/hessian_gpu.h"
#include "runner/cuda_check.h"
#include "runner/device.h"
#include "runner/layer.h"

namespace llmq {
namespace {


// The four groups of linears that share an input, with the slots of each (execution order).
struct SlotGroup {
  LinearInput input;
  std::vector<LinearSlot> slots;
};
const SlotGroup kGroups[] = {{LinearInput::kAttnIn, {LinearSlot::kQ, LinearSlot::kK, LinearSlot::kV}},
                             {LinearInput::kAttnOut, {LinearSlot::kO}},
                             {LinearInput::kMlpIn, {LinearSlot::kGate, LinearSlot::kUp}},
                             {LinearInput::kMlpOut, {LinearSlot::kDown}}};

// Hessian of one input, accumulated over the forward's chunks.
class HessianHook final : public LayerInputHook {
 public:
  HessianHook(LinearInput input, gpu::HessianAccumulator& acc) : input_(input), acc_(acc) {
    stop_after = static_cast<LayerInput>(input);
  }
  void on_input(LayerInput input, const bf16* x, int rows, int cols) override {
    if (static_cast<LinearInput>(input) != input_ || !status.is_ok()) return;
    const TensorView v(DType::kBF16, {rows, cols}, const_cast<bf16*>(x), Device::kCuda);
    status = acc_.add(v);
  }
  Status status;

 private:
  LinearInput input_;
  gpu::HessianAccumulator& acc_;
};

// Per-channel ranges of attn_in and mlp_in (SmoothQuant's inputs) over a full forward.
class RangesHook final : public LayerInputHook {
 public:
  RangesHook(const LlamaConfig& c, cudaStream_t s) : attn_in_(c.hidden_size, s), mlp_in_(c.hidden_size, s) {}
  void on_input(LayerInput input, const bf16* x, int rows, int /*cols*/) override {
    if (!status.is_ok()) return;
    if (input == LayerInput::kAttnIn) status = attn_in_.add(x, rows).with_context("attn_in");
    if (input == LayerInput::kMlpIn) status = mlp_in_.add(x, rows).with_context("mlp_in");
  }
  InputStats stats(LinearInput in) const { return (in == LinearInput::kAttnIn ? attn_in_ : mlp_in_).input_stats(); }
  Status status;

 private:
  gpu::ColumnRanges attn_in_, mlp_in_;
};

}  // namespace

struct GpuQuantizeSession::Impl {
  LlamaConfig c;
  std::string label;
  cudaStream_t stream = nullptr;
  std::unique_ptr<gpu::Blas> blas;
  std::unique_ptr<gpu::GptqGpuContext> gptq;

  DevicePeak memory;
  std::unique_ptr<GpuSamples> samples;
  GpuStageSeconds seconds;
  std::unique_ptr<GpuAwq> awq;  // made by the first AWQ layer

  ~Impl() {
    gptq.reset();
    blas.reset();
    if (stream) cudaStreamDestroy(stream);
  }

  // The samples through L (GpuSamples::forward), timed.
  Status forward(const GpuLayer& L, LayerInputHook* hook, bool advance, int64_t layer) {
    const auto t0 = Clock::now();
    Status st = samples->forward(L, hook, advance, layer);
    seconds.forward += seconds_since(t0);
    return st;
  }

  Expected<GpuLayer> upload_layer(const LayerWeights& w) {
    const auto t0 = Clock::now();
    auto g = upload_float_layer(w, stream);
    memory.sample();
    seconds.upload += seconds_since(t0);
    return g;
  }

  // Replaces the device linear of one group by its quantized form, dequantized as the CPU's
  // make_decoder_layer runs it (float32) and rounded to bf16 on the device.
  Status reupload_group(GpuLayer& g, const LayerWeights& w, const QuantizedSlots& q, const SlotGroup& group) {
    const auto t0 = Clock::now();
    std::vector<Tensor> dequantized;
    dequantized.reserve(group.slots.size());
    std::vector<const Tensor*> parts;
    for (LinearSlot s : group.slots) {
      const auto& qs = q[static_cast<size_t>(s)];
      if (qs.has_value()) dequantized.push_back(dequantize(*qs));
      parts.push_back(qs.has_value() ? &dequantized.back() : &w.weight(s));
    }
    const std::string what = "layer " + std::to_string(w.index) + " " + std::string(linear_input_name(group.input));
    LLMQ_ASSIGN_OR_RETURN(GpuLinear linear,
                          upload_float_linear(parts, group.input == LinearInput::kMlpIn, stream, what));
    linear_reading(g, static_cast<LayerInput>(group.input)) = std::move(linear);
    seconds.upload += seconds_since(t0);
    return Status::ok();
  }

  Expected<LayerResult> smoothquant(LayerWeights& w, LayerContext& ctx) {
    if (ctx.calib) return quantize_layer_smoothquant(w, ctx);  // the file's statistics, no forward (as the CPU)
    if (samples->empty()) return Status::error("int8-sq needs calibration (--calib or --dataset)");
    LLMQ_ASSIGN_OR_RETURN(GpuLayer g, upload_layer(w));
    RangesHook hook(c, stream);
    // The float layer's statistics and its output in one pass (the CPU does two).
    LLMQ_RETURN_IF_ERROR(forward(g, &hook, /*advance=*/true, w.index));
    LLMQ_RETURN_IF_ERROR(hook.status.with_context("layer " + std::to_string(w.index)));
    const auto t0 = Clock::now();
    std::array<InputStats, kNumLinearInputs> stats;
    stats[static_cast<size_t>(LinearInput::kAttnIn)] = hook.stats(LinearInput::kAttnIn);
    stats[static_cast<size_t>(LinearInput::kMlpIn)] = hook.stats(LinearInput::kMlpIn);
    seconds.stats += seconds_since(t0);
    const auto t1 = Clock::now();
    auto r = quantize_layer_smoothquant_with_stats(w, ctx, stats);
    seconds.quantize += seconds_since(t1);
    return r;
  }

  Expected<LayerResult> gptq_layer(LayerWeights& w, LayerContext& ctx) {
    const MethodSettings& m = ctx.settings;
    const bool sequential = m.sequential && !samples->empty();
    if (!sequential && !(ctx.calib && ctx.calib->has_hessian()))
      return Status::error("gptq needs Hessians: give --dataset (sequential) or a --calib file made with Hessians");
    const GptqConfig cfg = gptq_config(m);

    LayerResult result;
    GpuLayer g;
    if (sequential) {
      LLMQ_ASSIGN_OR_RETURN(g, upload_layer(w));
    }
    for (const SlotGroup& group : kGroups) {
      if (!ctx.plan.quantizes(w.index, group.slots.front())) continue;
      std::unique_ptr<gpu::HessianAccumulator> acc;
      TensorView hessian;
      if (sequential) {
        acc = std::make_unique<gpu::HessianAccumulator>(input_features(c, group.input), stream);
        HessianHook hook(group.input, *acc);
        LLMQ_RETURN_IF_ERROR(forward(g, &hook, /*advance=*/false, w.index));
        LLMQ_RETURN_IF_ERROR(hook.status.with_context("layer " + std::to_string(w.index) + " " +
                                                      std::string(linear_input_name(group.input))));
        const auto t0 = Clock::now();
        const int64_t K = acc->features();
        hessian = TensorView(DType::kF32, {K, K}, const_cast<float*>(acc->finish()), Device::kCuda);
        LLMQ_CUDA_CHECK(cudaStreamSynchronize(stream));
        memory.sample();
        seconds.stats += seconds_since(t0);
      } else {
        hessian = ctx.calib->stats(w.index, group.input).hessian.view();
      }
      const auto t1 = Clock::now();
      for (LinearSlot s : group.slots) {
        QuantReport& report = result.reports[static_cast<size_t>(s)];
        gpu::GptqGpuStats st;
        auto q = gpu::quantize_gptq_gpu(*gptq, w.weight(s).view(), hessian, cfg, &report, &st);
        if (!q) return q.status().with_context(linear_module_name(w.index, s));
        report.seconds = st.seconds_factor + st.seconds_sweep + st.seconds_report;
        memory.sample(st.peak_device_bytes);
        result.quantized[static_cast<size_t>(s)] = std::move(*q);
      }
      seconds.quantize += seconds_since(t1);
      acc.reset();
      if (sequential) LLMQ_RETURN_IF_ERROR(reupload_group(g, w, result.quantized, group));
    }
    if (sequential) LLMQ_RETURN_IF_ERROR(forward(g, nullptr, /*advance=*/true, w.index));
    result.notes["sequential"] = sequential;
    return result;
  }
};

GpuQuantizeSession::GpuQuantizeSession(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
GpuQuantizeSession::~GpuQuantizeSession() = default;

Expected<std::unique_ptr<GpuQuantizeSession>> GpuQuantizeSession::create(
    const HfCheckpoint& ckpt, const std::vector<std::vector<int32_t>>& samples) {
  const GpuInfo info = query_gpu();
  if (!info.available) return Status::error("--device gpu: " + info.why_not);
  auto impl = std::make_unique<Impl>();
  Impl& s = *impl;
  s.c = ckpt.config();
  const LlamaConfig& c = s.c;
  if (c.attention_bias || c.mlp_bias)
    return Status::error(ckpt.dir() + "/config.json: attention/MLP biases are not supported on the GPU path");
  s.label = "cuda:" + info.name;
  LLMQ_CUDA_CHECK(cudaStreamCreateWithFlags(&s.stream, cudaStreamNonBlocking));
  s.blas = std::make_unique<gpu::Blas>();
  s.gptq = std::make_unique<gpu::GptqGpuContext>(s.stream);
  LLMQ_ASSIGN_OR_RETURN(s.samples, GpuSamples::create(ckpt, samples, s.blas.get(), s.stream, s.memory));
  return std::unique_ptr<GpuQuantizeSession>(new GpuQuantizeSession(std::move(impl)));
}

Expected<LayerResult> GpuQuantizeSession::run_layer(LayerWeights& w, LayerContext& ctx) {
  Impl& s = *impl_;
  switch (ctx.settings.method) {
    case QuantMethod::kFp8:
    case QuantMethod::kRtnInt4:
    case QuantMethod::kRtnInt8: {
      const auto t0 = Clock::now();
      auto r = quantize_layer_rtn(w, ctx);  // host quantizers, as the CPU path: identical bytes
      s.seconds.quantize += seconds_since(t0);
      return r;
    }
    case QuantMethod::kInt8Sq: return s.smoothquant(w, ctx);
    case QuantMethod::kGptq: return s.gptq_layer(w, ctx);
    case QuantMethod::kAwq:
      if (!s.awq) s.awq = std::make_unique<GpuAwq>(*s.samples, s.memory, s.seconds);
      return s.awq->run_layer(w, ctx);
  }
  return Status::error("--device gpu: unknown method");
}

std::string GpuQuantizeSession::device_label() const { return impl_->label; }
size_t GpuQuantizeSession::peak_device_bytes() const { return impl_->memory.peak(); }
nlohmann::ordered_json GpuQuantizeSession::stage_seconds() const {
  return impl_->seconds.json();
}

}  // namespace llmq
