// pipeline/quantize_gpu.h (CUDA builds).
#include "pipeline/quantize_gpu.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include "calibration/stats.h"
#include "core/numeric.h"
#include "pipeline/column_stats_gpu.h"
#include "quantizers/gpu/device_util.h"
#include "quantizers/gpu/gptq_gpu.h"
#include "quantizers/gpu/hessian_gpu.h"
#include "runner/attention_prefill.h"
#include "runner/cuda_check.h"
#include "runner/device.h"
#include "runner/kernels.h"
#include "runner/layer.h"

namespace llmq {
namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Token rows per forward (several samples each; a sample longer than this gets a forward of
// its own length). 4096 rows keep the GEMMs at full speed and the buffers at ~0.5 GB for 8B.
constexpr int kMaxRows = 4096;

static_assert(static_cast<int>(LayerInput::kAttnIn) == static_cast<int>(LinearInput::kAttnIn) &&
                  static_cast<int>(LayerInput::kAttnOut) == static_cast<int>(LinearInput::kAttnOut) &&
                  static_cast<int>(LayerInput::kMlpIn) == static_cast<int>(LinearInput::kMlpIn) &&
                  static_cast<int>(LayerInput::kMlpOut) == static_cast<int>(LinearInput::kMlpOut),
              "runner/layer.h's LayerInput follows calibration/stats.h's LinearInput");

// Samples packed into forwards: rows [row0, row0 + M) of the activations; each sample a slot.
struct Chunk {
  int64_t row0 = 0;
  int M = 0;
  int slots = 0;
  std::vector<gpu::RowSpan> spans;
};

// The four groups of linears that share an input, with the slots of each (execution order).
struct SlotGroup {
  LinearInput input;
  std::vector<LinearSlot> slots;
};
const SlotGroup kGroups[] = {{LinearInput::kAttnIn, {LinearSlot::kQ, LinearSlot::kK, LinearSlot::kV}},
                             {LinearInput::kAttnOut, {LinearSlot::kO}},
                             {LinearInput::kMlpIn, {LinearSlot::kGate, LinearSlot::kUp}},
                             {LinearInput::kMlpOut, {LinearSlot::kDown}}};

// A slot's host linear for the layer forward: float, or its quantized form as the CPU
// make_decoder_layer runs it (dequantized; W8A8 schemes on the runner's W8A8 kernels when
// w8a8).
HostLinear host_linear_for(const LayerWeights& w, const QuantizedSlots* q, LinearSlot s, bool w8a8) {
  const auto* qs = q ? &(*q)[static_cast<size_t>(s)] : nullptr;
  if (!qs || !qs->has_value()) return dense_host_linear(w.weight(s).view());
  if (w8a8 && (*qs)->scheme != QuantScheme::kInt4Group) return quantized_host_linear(**qs);
  const Tensor deq = dequantize(**qs);
  return dense_host_linear(deq.view());
}

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
  InputStats stats(LinearInput in) const {
    const gpu::ColumnRanges& r = in == LinearInput::kAttnIn ? attn_in_ : mlp_in_;
    std::vector<float> mn, mx, amax;
    r.download(&mn, &mx, &amax);
    InputStats s;
    s.tokens = r.tokens();
    const auto tensor = [](const std::vector<float>& v) {
      Tensor t(DType::kF32, {static_cast<int64_t>(v.size())});
      std::memcpy(t.raw(), v.data(), v.size() * sizeof(float));
      return t;
    };
    s.min = tensor(mn);
    s.max = tensor(mx);
    s.abs_max = tensor(amax);
    return s;
  }
  Status status;

 private:
  gpu::ColumnRanges attn_in_, mlp_in_;
};

}  // namespace

bool gpu_quantize_supported(QuantMethod method) { return method != QuantMethod::kAwq; }

struct GpuQuantizeSession::Impl {
  LlamaConfig c;
  std::string label;
  bool fp8_ok = false;
  cudaStream_t stream = nullptr;
  std::unique_ptr<gpu::Blas> blas;
  std::unique_ptr<gpu::GptqGpuContext> gptq;

  // The samples.
  int64_t total_rows = 0;
  int capacity = 0;                 // longest sample
  int max_rows = 0;                 // rows of the largest forward
  std::vector<Chunk> chunks;
  DeviceBuffer acts;                // [total_rows, hidden] bf16: the current layer's input
  DeviceBuffer pos, seq;            // [total_rows] int32: position in the sample, slot in its chunk
  DeviceBuffer x_tmp;               // [max_rows, hidden] bf16: a chunk's copy for forwards that must not advance
  DeviceBuffer k_cache, v_cache;    // [slots, capacity, kv_dim] bf16, reused by every layer
  RopeTables rope;                  // [capacity, hd/2]
  LayerBuffers bufs;

  // Memory: device bytes in use when the session began, and the high-water mark above it.
  size_t baseline = 0;
  size_t peak = 0;
  double s_upload = 0, s_forward = 0, s_stats = 0, s_quantize = 0;

  ~Impl() {
    gptq.reset();
    blas.reset();
    if (stream) cudaStreamDestroy(stream);
  }

  void sample_memory(size_t extra = 0) {
    size_t free_b = 0, total_b = 0;
    LLMQ_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    const size_t used = total_b - free_b;
    peak = std::max(peak, (used > baseline ? used - baseline : 0) + extra);
  }

  LayerEnv env() const { return LayerEnv::of(c, capacity, rope, blas.get(), stream); }
  LayerRows rows_of(const Chunk& ch) const {
    return {pos.as<const int32_t>() + ch.row0, seq.as<const int32_t>() + ch.row0, ch.M, &ch.spans};
  }
  bf16* acts_at(int64_t row) const { return acts.as<bf16>() + row * c.hidden_size; }

  // The samples through L. advance: the activations become L's output; else each chunk runs on
  // a copy (statistics only; the hook may stop the forward early).
  Status forward(const GpuLayer& L, LayerInputHook* hook, bool advance, int64_t layer) {
    const auto t0 = Clock::now();
    const bool quantized = L.qkv.kind != LinearKind::kBf16 || L.o.kind != LinearKind::kBf16 ||
                           L.gate_up.kind != LinearKind::kBf16 || L.down.kind != LinearKind::kBf16;
    if (quantized && bufs.scratch.codes.empty()) bufs = LayerBuffers::create(c, max_rows, capacity, /*quantized=*/true);
    const LayerEnv e = env();
    for (const Chunk& ch : chunks) {
      bf16* x = acts_at(ch.row0);
      if (!advance) {
        LLMQ_CUDA_CHECK(cudaMemcpyAsync(x_tmp.as(), x, size_t(ch.M) * c.hidden_size * 2, cudaMemcpyDeviceToDevice, stream));
        x = x_tmp.as<bf16>();
      }
      const bf16* pending = layer_forward(e, L, bufs, x, nullptr, rows_of(ch), k_cache.as<bf16>(), v_cache.as<bf16>(), hook);
      if (advance && pending) gpu::add_inplace(x, pending, int64_t(ch.M) * c.hidden_size, stream);
    }
    LLMQ_CUDA_CHECK(cudaStreamSynchronize(stream));
    LLMQ_CUDA_CHECK(cudaGetLastError());
    sample_memory();
    if (advance) {
      const int64_t bad = gpu::first_nonfinite(acts.as(), DType::kBF16, total_rows * c.hidden_size, stream);
      if (bad >= 0)
        return Status::error("layer " + std::to_string(layer) + ": non-finite output at token " +
                             std::to_string(bad / c.hidden_size) + " of the calibration samples");
    }
    s_forward += seconds_since(t0);
    return Status::ok();
  }

  Expected<GpuLayer> upload_layer(const LayerWeights& w, const QuantizedSlots* q) {
    const auto t0 = Clock::now();
    std::array<HostLinear, 7> linears;
    for (int s = 0; s < kNumLinearSlots; ++s) linears[s] = host_linear_for(w, q, static_cast<LinearSlot>(s), false);
    auto g = make_gpu_layer(std::move(linears), w.input_layernorm.view(), w.post_attention_layernorm.view(), fp8_ok,
                            "layer " + std::to_string(w.index));
    sample_memory();
    s_upload += seconds_since(t0);
    return g;
  }

  // Replaces the device linear of one group by its quantized form.
  Status reupload_group(GpuLayer& g, const LayerWeights& w, const QuantizedSlots& q, const SlotGroup& group) {
    const auto t0 = Clock::now();
    const std::string where = "layer " + std::to_string(w.index);
    std::vector<HostLinear> parts;
    for (LinearSlot s : group.slots) parts.push_back(host_linear_for(w, &q, s, false));
    switch (group.input) {
      case LinearInput::kAttnIn: {
        LLMQ_ASSIGN_OR_RETURN(HostLinear f, fuse(std::move(parts), where + " q/k/v"));
        LLMQ_ASSIGN_OR_RETURN(g.qkv, upload(f, fp8_ok));
        break;
      }
      case LinearInput::kAttnOut: {
        LLMQ_ASSIGN_OR_RETURN(g.o, upload(parts[0], fp8_ok));
        break;
      }
      case LinearInput::kMlpIn: {
        LLMQ_ASSIGN_OR_RETURN(HostLinear f, fuse(std::move(parts), where + " gate/up", /*interleave=*/true));
        LLMQ_ASSIGN_OR_RETURN(g.gate_up, upload(f, fp8_ok));
        break;
      }
      case LinearInput::kMlpOut: {
        LLMQ_ASSIGN_OR_RETURN(g.down, upload(parts[0], fp8_ok));
        break;
      }
    }
    s_upload += seconds_since(t0);
    return Status::ok();
  }

  Expected<LayerResult> smoothquant(LayerWeights& w, LayerContext& ctx) {
    if (ctx.calib) return quantize_layer_smoothquant(w, ctx);  // the file's statistics, no forward (as the CPU)
    if (chunks.empty()) return Status::error("int8-sq needs calibration (--calib or --dataset)");
    LLMQ_ASSIGN_OR_RETURN(GpuLayer g, upload_layer(w, nullptr));
    RangesHook hook(c, stream);
    // The float layer's statistics and its output in one pass (the CPU does two).
    LLMQ_RETURN_IF_ERROR(forward(g, &hook, /*advance=*/true, w.index));
    LLMQ_RETURN_IF_ERROR(hook.status.with_context("layer " + std::to_string(w.index)));
    const auto t0 = Clock::now();
    std::array<InputStats, kNumLinearInputs> stats;
    stats[static_cast<size_t>(LinearInput::kAttnIn)] = hook.stats(LinearInput::kAttnIn);
    stats[static_cast<size_t>(LinearInput::kMlpIn)] = hook.stats(LinearInput::kMlpIn);
    s_stats += seconds_since(t0);
    const auto t1 = Clock::now();
    auto r = quantize_layer_smoothquant_with_stats(w, ctx, stats);
    s_quantize += seconds_since(t1);
    return r;
  }

  Expected<LayerResult> gptq_layer(LayerWeights& w, LayerContext& ctx) {
    const MethodSettings& m = ctx.settings;
    const bool sequential = m.sequential && !chunks.empty();
    if (!sequential && !(ctx.calib && ctx.calib->has_hessian()))
      return Status::error("gptq needs Hessians: give --dataset (sequential) or a --calib file made with Hessians");
    const GptqConfig cfg = gptq_config(m);

    LayerResult result;
    GpuLayer g;
    if (sequential) {
      LLMQ_ASSIGN_OR_RETURN(g, upload_layer(w, nullptr));
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
        sample_memory();
        s_stats += seconds_since(t0);
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
        sample_memory(st.peak_device_bytes);
        result.quantized[static_cast<size_t>(s)] = std::move(*q);
      }
      s_quantize += seconds_since(t1);
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
  s.fp8_ok = info.major * 10 + info.minor >= 89;
  LLMQ_CUDA_CHECK(cudaFree(nullptr));  // the context exists before the baseline is taken
  size_t free_b = 0, total_b = 0;
  LLMQ_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  s.baseline = total_b - free_b;
  LLMQ_CUDA_CHECK(cudaStreamCreateWithFlags(&s.stream, cudaStreamNonBlocking));
  s.blas = std::make_unique<gpu::Blas>();
  s.gptq = std::make_unique<gpu::GptqGpuContext>(s.stream);
  if (samples.empty()) return std::unique_ptr<GpuQuantizeSession>(new GpuQuantizeSession(std::move(impl)));

  // Pack the samples into forwards and plan the cache.
  int64_t longest = 0;
  for (const auto& smp : samples) longest = std::max<int64_t>(longest, static_cast<int64_t>(smp.size()));
  const int max_rows = s.max_rows = static_cast<int>(std::max<int64_t>(kMaxRows, longest));
  s.capacity = static_cast<int>(longest);
  const int n_q = static_cast<int>(c.num_attention_heads), n_kv = static_cast<int>(c.num_key_value_heads);
  const int max_cap = gpu::attention_max_capacity(n_q, n_kv, static_cast<int>(c.head_dim));
  if (max_cap == 0 || s.capacity > max_cap)
    return Status::error("--device gpu: samples of " + std::to_string(longest) +
                         " tokens exceed the attention kernel's capacity for this model (" + std::to_string(max_cap) + ")");
  std::vector<int32_t> pos, seq;
  int max_slots = 0;
  for (const auto& smp : samples) {
    const int T = static_cast<int>(smp.size());
    if (s.chunks.empty() || s.chunks.back().M + T > max_rows) {
      Chunk ch;
      ch.row0 = static_cast<int64_t>(pos.size());
      s.chunks.push_back(ch);
    }
    Chunk& ch = s.chunks.back();
    for (int t = 0; t < T; ++t) {
      pos.push_back(t);
      seq.push_back(ch.slots);
    }
    ch.M += T;
    ch.slots += 1;
    max_slots = std::max(max_slots, ch.slots);
  }
  for (Chunk& ch : s.chunks) ch.spans = gpu::row_spans(pos.data() + ch.row0, seq.data() + ch.row0, ch.M);
  s.total_rows = static_cast<int64_t>(pos.size());

  const size_t hidden = static_cast<size_t>(c.hidden_size);
  const size_t cache_bytes = size_t(max_slots) * s.capacity * c.kv_dim() * 2;
  const size_t need = size_t(s.total_rows) * hidden * 2 + size_t(max_rows) * hidden * 2 + 2 * cache_bytes +
                      LayerBuffers::activation_bytes(c, max_rows, s.capacity);
  if (need > free_b)
    return Status::error("--device gpu: the calibration activations need about " + std::to_string(need >> 20) +
                         " MiB of GPU memory, " + std::to_string(free_b >> 20) + " MiB free (use fewer --samples)");
  s.pos = DeviceBuffer::from_host(pos);
  s.seq = DeviceBuffer::from_host(seq);
  s.acts = DeviceBuffer(size_t(s.total_rows) * hidden * 2);
  s.x_tmp = DeviceBuffer(size_t(max_rows) * hidden * 2);
  s.k_cache = DeviceBuffer(cache_bytes);
  s.v_cache = DeviceBuffer(cache_bytes);
  s.bufs = LayerBuffers::create(c, max_rows, s.capacity, /*quantized=*/false);
  s.rope = RopeTables::upload(c, s.capacity);

  // Embed on the host one sample at a time (rows of the mmapped table, bf16 as stored) and upload.
  LLMQ_ASSIGN_OR_RETURN(TensorView table, ckpt.embed_tokens());  // [vocab, hidden]
  const int64_t vocab = table.dim(0);
  const size_t row_bytes = dtype_nbytes(table.dtype, static_cast<int64_t>(hidden));
  std::vector<bf16> host;
  int64_t row = 0;
  for (size_t i = 0; i < samples.size(); ++i) {
    const auto& ids = samples[i];
    host.resize(ids.size() * hidden);
    for (size_t t = 0; t < ids.size(); ++t) {
      const int32_t id = ids[t];
      if (id < 0 || id >= vocab)
        return Status::error("calibrate: sample " + std::to_string(i) + " has token id " + std::to_string(id) +
                             " outside the model's vocabulary of " + std::to_string(vocab));
      const TensorView r(table.dtype, {static_cast<int64_t>(hidden)}, static_cast<uint8_t*>(table.data) + id * row_bytes);
      const std::vector<bf16> b = to_bf16(r);
      std::memcpy(&host[t * hidden], b.data(), hidden * 2);
    }
    LLMQ_CUDA_CHECK(cudaMemcpy(s.acts_at(row), host.data(), host.size() * 2, cudaMemcpyHostToDevice));
    row += static_cast<int64_t>(ids.size());
  }
  s.sample_memory();
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
      s.s_quantize += seconds_since(t0);
      return r;
    }
    case QuantMethod::kInt8Sq: return s.smoothquant(w, ctx);
    case QuantMethod::kGptq: return s.gptq_layer(w, ctx);
    case QuantMethod::kAwq: break;
  }
  return Status::error("--device gpu: --method awq runs on the CPU only (use --device cpu or auto)");
}

std::string GpuQuantizeSession::device_label() const { return impl_->label; }
size_t GpuQuantizeSession::peak_device_bytes() const { return impl_->peak; }
nlohmann::ordered_json GpuQuantizeSession::stage_seconds() const {
  return {{"upload_s", impl_->s_upload},
          {"forward_s", impl_->s_forward},
          {"stats_s", impl_->s_stats},
          {"quantize_s", impl_->s_quantize}};
}

}  // namespace llmq
