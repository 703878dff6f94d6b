// pipeline/awq_gpu.h.
#include "pipeline/awq_gpu.h"

#include <algorithm>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/numeric.h"
#include "core/stopwatch.h"
#include "pipeline/awq_layer.h"
#include "pipeline/column_stats_gpu.h"
#include "pipeline/float_layer_gpu.h"
#include "quantizers/awq.h"
#include "quantizers/gpu/awq_gpu.h"
#include "runner/cuda_check.h"
#include "runner/kernels.h"

namespace llmq {
namespace {

// Copies one linear input of every chunk, in row order, into a [Σ T_s, cols] buffer; the
// forward stops there.
class CaptureHook final : public LayerInputHook {
 public:
  CaptureHook(LinearInput input, bf16* dst, cudaStream_t stream)
      : input_(static_cast<LayerInput>(input)), dst_(dst), stream_(stream) {
    stop_after = input_;
  }
  void on_input(LayerInput input, const bf16* x, int rows, int cols) override {
    if (input != input_) return;
    LLMQ_CUDA_CHECK(cudaMemcpyAsync(dst_ + next_row_ * cols, x, size_t(rows) * cols * sizeof(bf16),
                                    cudaMemcpyDeviceToDevice, stream_));
    next_row_ += rows;
  }

 private:
  LayerInput input_;
  bf16* dst_;
  cudaStream_t stream_;
  int64_t next_row_ = 0;
};

const AwqMapping& mapping_of(LinearInput input) {
  for (const AwqMapping& map : awq_mappings())
    if (map.input == input) return map;
  LLMQ_CHECK(false, "no AWQ mapping reads " << linear_input_name(input));
  return awq_mappings().front();
}

// Where the i-th linear of a mapping sits in its fused device weight: first row and row step
// (q/k/v concatenated; gate/up interleaved, runner/linear.h).
struct RowPlace {
  int64_t row0, step;
};
RowPlace place_of(const AwqMapping& map, size_t i, const LayerWeights& w) {
  if (map.block == AwqLossBlock::kMlp) return {static_cast<int64_t>(i), 2};
  int64_t row0 = 0;
  for (size_t j = 0; j < i; ++j) row0 += w.weight(map.linears[j]).dim(0);
  return {row0, 1};
}

// Rows t * step (t < count) of a device bf16 [rows, cols] buffer as host float32 [count, cols].
std::vector<float> gather_rows(const bf16* x, int64_t cols, const AwqClipRows& pick) {
  std::vector<bf16> host(size_t(pick.count) * cols);
  LLMQ_CUDA_CHECK(cudaMemcpy2D(host.data(), size_t(cols) * sizeof(bf16), x, size_t(pick.step * cols) * sizeof(bf16),
                               size_t(cols) * sizeof(bf16), size_t(pick.count), cudaMemcpyDeviceToHost));
  std::vector<float> out(host.size());
  for (size_t i = 0; i < host.size(); ++i) out[i] = bf16_to_f32(host[i]);
  return out;
}

}  // namespace

Expected<LayerResult> GpuAwq::run_layer(LayerWeights& w, LayerContext& ctx) {
  const MethodSettings& m = ctx.settings;
  const LlamaConfig& c = ctx.config;
  if (samples_.empty()) return Status::error("awq needs calibration samples (--dataset or --calib)");
  const AwqConfig cfg = awq_config(m);
  const std::string where = "layer " + std::to_string(w.index);
  const LayerEnv env = samples_.env();
  const cudaStream_t stream = env.stream;
  const int64_t rows = samples_.total_rows(), hidden = c.hidden_size;

  // The float layer on the device; the capture buffers on first use.
  auto t0 = Clock::now();
  LLMQ_ASSIGN_OR_RETURN(GpuLayer g, upload_float_layer(w, stream));
  if (captured_.empty()) {
    int64_t max_in = 0;
    for (LinearInput in : kAllLinearInputs) max_in = std::max(max_in, input_features(c, in));
    const size_t need = size_t(rows) * (max_in + hidden) * sizeof(bf16) + size_t(samples_.max_rows()) * hidden * sizeof(bf16);
    const size_t free_b = memory_.free_bytes();
    if (need > free_b)
      return Status::error("--device gpu: AWQ's captured activations need about " + std::to_string(need >> 20) +
                           " MiB of GPU memory, " + std::to_string(free_b >> 20) +
                           " MiB free (use fewer --samples or --device cpu)");
    captured_ = DeviceBuffer(size_t(rows) * max_in * sizeof(bf16));
    reference_ = DeviceBuffer(size_t(rows) * hidden * sizeof(bf16));
    out_ = DeviceBuffer(size_t(samples_.max_rows()) * hidden * sizeof(bf16));
    acc_ = DeviceBuffer(sizeof(double));
  }
  memory_.sample();
  seconds_.upload += seconds_since(t0);

  // A block of the layer on one chunk's rows of x: the mapping's fused linear `first` (the
  // float one or a candidate) and the float rest of the block; output [M, hidden] in y.
  LayerBuffers& b = samples_.buffers();
  const auto run_block = [&](const AwqMapping& map, const GpuLinear& first, const bf16* x, bf16* y,
                             const GpuSamples::Chunk& ch) {
    const int M = ch.M;
    const auto linear = [&](const GpuLinear& L, const bf16* in, bf16* out) {
      L.forward({in, false}, out, M, {}, b.scratch, *env.blas, stream);
    };
    switch (map.block) {
      case AwqLossBlock::kAttention:
        linear(first, x, b.qkv.as<bf16>());
        attend(env, b, samples_.rows_of(ch), samples_.k_cache(), samples_.v_cache());
        linear(g.o, b.attn.as<const bf16>(), y);
        break;
      case AwqLossBlock::kMlp:
        linear(first, x, b.gate_up.as<bf16>());
        gpu::silu_mul_pairs(b.gate_up.as<const bf16>(), b.act.as<bf16>(), M, static_cast<int>(c.intermediate_size),
                            stream);
        linear(g.down, b.act.as<const bf16>(), y);
        break;
      case AwqLossBlock::kLinear: linear(first, x, y); break;
    }
  };

  LayerResult result;
  nlohmann::ordered_json scale_notes = nlohmann::ordered_json::array();
  std::vector<std::pair<const AwqMapping*, std::vector<float>>> chosen;
  std::array<std::vector<float>, kNumLinearInputs> clip_x;  // host f32 [clip rows, in] per input
  const AwqClipRows clip_rows = awq_clip_rows(rows, cfg.clip_tokens);
  bf16* const X = captured_.as<bf16>();
  for (LinearInput input : kAllLinearInputs) {
    const AwqMapping& map = mapping_of(input);
    const bool search = awq_mapping_applies(map, c, ctx.plan, w.index);
    bool clip = false;
    for (int s = 0; s < kNumLinearSlots; ++s) {
      const LinearSlot slot = static_cast<LinearSlot>(s);
      clip |= input_of(slot) == input && ctx.plan.quantizes(w.index, slot) && awq_clips(slot, m);
    }
    if (!search && !clip) continue;
    const int64_t K = input_features(c, input);
    const std::string what = where + " " + std::string(linear_input_name(input));

    // 1. The input of every sample (the float layer, stopped there), its clip rows and x_mean.
    t0 = Clock::now();
    CaptureHook hook(input, X, stream);
    LLMQ_RETURN_IF_ERROR(samples_.forward(g, &hook, /*advance=*/false, w.index));
    seconds_.forward += seconds_since(t0);
    if (clip) clip_x[static_cast<size_t>(input)] = gather_rows(X, K, clip_rows);
    if (!search) continue;
    t0 = Clock::now();
    gpu::ColumnRanges ranges(K, stream);
    LLMQ_RETURN_IF_ERROR(ranges.add(X, rows).with_context(what));
    const std::vector<float> x_mean = ranges.abs_mean();
    const GpuLinear& original = linear_reading(g, static_cast<LayerInput>(input));
    for (const auto& ch : samples_.chunks())
      run_block(map, original, X + ch.row0 * K, reference_.as<bf16>() + ch.row0 * hidden, ch);
    LLMQ_CUDA_CHECK(cudaStreamSynchronize(stream));
    seconds_.stats += seconds_since(t0);

    // 2. The scale search: each candidate's fake-quantized linears in a bf16 copy of the fused
    //    weight, the block on every chunk, the squared differences summed on the device.
    t0 = Clock::now();
    std::vector<DeviceBuffer> weights;
    std::vector<const Tensor*> host_weights;
    for (LinearSlot s : map.linears) {
      const Tensor& wt = w.weight(s);
      weights.push_back(DeviceBuffer::from_host(wt.data<float>(), static_cast<size_t>(wt.numel())));
      host_weights.push_back(&wt);
    }
    GpuLinear candidate;
    candidate.kind = LinearKind::kBf16;
    candidate.N = original.N;
    candidate.K = original.K;
    candidate.K_pad = original.K_pad;
    candidate.weight = DeviceBuffer(size_t(original.N) * original.K * sizeof(bf16));
    DeviceBuffer scales(size_t(K) * sizeof(float));
    memory_.sample();
    const AwqLossFn loss_of = [&](const std::vector<float>& s) {
      LLMQ_CUDA_CHECK(cudaMemcpyAsync(scales.as(), s.data(), s.size() * sizeof(float), cudaMemcpyHostToDevice, stream));
      for (size_t i = 0; i < map.linears.size(); ++i) {
        const RowPlace p = place_of(map, i, w);
        gpu::awq_fake_quant_scaled(weights[i].as<const float>(), host_weights[i]->dim(0), K, scales.as<const float>(),
                                   cfg, candidate.weight.as<uint16_t>(), p.row0, p.step, stream);
      }
      LLMQ_CUDA_CHECK(cudaMemsetAsync(acc_.as(), 0, sizeof(double), stream));
      for (const auto& ch : samples_.chunks()) {
        run_block(map, candidate, X + ch.row0 * K, out_.as<bf16>(), ch);
        gpu::sum_squared_diff(out_.as<const uint16_t>(), reference_.as<const uint16_t>() + ch.row0 * hidden,
                              int64_t(ch.M) * hidden, acc_.as<double>(), stream);
      }
      double sum = 0;
      LLMQ_CUDA_CHECK(cudaMemcpyAsync(&sum, acc_.as(), sizeof(double), cudaMemcpyDeviceToHost, stream));
      LLMQ_CUDA_CHECK(cudaStreamSynchronize(stream));
      return sum / static_cast<double>(rows * hidden);
    };
    const AwqScaleSearch found = awq_search_scales(x_mean, awq_weight_mean(host_weights, cfg.group_size), cfg, loss_of);
    const double search_s = seconds_since(t0);
    scale_notes.push_back({{"mapping", map.name},
                           {"best_ratio", found.best_ratio},
                           {"loss_rtn", found.loss_unscaled},
                           {"loss_best", found.best_loss},
                           {"seconds", search_s}});
    chosen.emplace_back(&map, found.scales);
    seconds_.quantize += search_s;
  }

  // 3. Fold the scales; the clip rows of the scaled linears' inputs become x / s.
  t0 = Clock::now();
  for (const auto& [map, s] : chosen) {
    awq_fold_scales(w, *map, s);
    std::vector<float>& x = clip_x[static_cast<size_t>(map->input)];
    awq_divide_columns(x.data(), static_cast<int64_t>(x.size() / s.size()), s);
  }

  // 4. Clip on the device.
  // Shared: std::function (LayerResult::deferred) needs a copyable target, and Tensor moves only.
  const auto max_vals = std::make_shared<std::array<std::optional<Tensor>, kNumLinearSlots>>();
  std::array<double, kNumLinearSlots> clip_seconds{};
  for (int si = 0; si < kNumLinearSlots; ++si) {
    const LinearSlot slot = static_cast<LinearSlot>(si);
    if (!ctx.plan.quantizes(w.index, slot) || !awq_clips(slot, m)) continue;
    const auto t_clip = Clock::now();
    const Tensor& wt = w.weight(slot);
    const int64_t out = wt.dim(0), in = wt.dim(1), G = in / cfg.group_size;
    const std::vector<float>& x = clip_x[static_cast<size_t>(input_of(slot))];
    const DeviceBuffer w_dev = DeviceBuffer::from_host(wt.data<float>(), static_cast<size_t>(wt.numel()));
    const DeviceBuffer x_dev = DeviceBuffer::from_host(x);
    DeviceBuffer best(size_t(out) * G * sizeof(float));
    gpu::awq_search_clip(w_dev.as<const float>(), out, in, x_dev.as<const float>(), clip_rows.count, cfg,
                         best.as<float>(), stream);
    Tensor& max_val = (*max_vals)[static_cast<size_t>(si)].emplace(DType::kF32, Shape{out, G});
    LLMQ_CUDA_CHECK(cudaMemcpyAsync(max_val.raw(), best.as(), best.bytes(), cudaMemcpyDeviceToHost, stream));
    LLMQ_CUDA_CHECK(cudaStreamSynchronize(stream));
    clip_seconds[static_cast<size_t>(si)] = seconds_since(t_clip);
    seconds_.clip += clip_seconds[static_cast<size_t>(si)];
  }
  seconds_.quantize += seconds_since(t0);

  // 5. Quantize on the host, deferred to the layer loop's write worker: it needs nothing of the
  //    next layer, whose device work it then overlaps (at 8B the quantize stage beyond the
  //    searches and clips was 48 s, about 1.5 s per layer).
  const ModulePlan& plan = ctx.plan;
  const int64_t index = w.index;
  result.deferred = [&plan, index, cfg, max_vals, clip_seconds](LayerWeights& lw, LayerResult& r) {
    for (int si = 0; si < kNumLinearSlots; ++si) {
      const LinearSlot slot = static_cast<LinearSlot>(si);
      if (!plan.quantizes(index, slot)) continue;
      const auto t1 = Clock::now();
      const std::optional<Tensor>& max_val = (*max_vals)[static_cast<size_t>(si)];
      awq_finish_linear(lw, slot, max_val ? &*max_val : nullptr, cfg, r,
                        clip_seconds[static_cast<size_t>(si)] + seconds_since(t1));
    }
  };

  // The next layer's input: the float layer's output.
  t0 = Clock::now();
  LLMQ_RETURN_IF_ERROR(samples_.forward(g, nullptr, /*advance=*/true, w.index));
  seconds_.forward += seconds_since(t0);
  result.notes["scales"] = std::move(scale_notes);
  result.notes["clip"] = m.awq_clip;
  return result;
}

}  // namespace llmq
