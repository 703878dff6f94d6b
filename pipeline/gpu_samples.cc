// pipeline/gpu_samples.h.
#include "pipeline/gpu_samples.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "quantizers/gpu/device_util.h"
#include "runner/attention_prefill.h"
#include "runner/cuda_check.h"
#include "runner/kernels.h"

namespace llmq {
namespace {

// Token rows per forward (several samples each; a sample longer than this gets a forward of
// its own length). 4096 rows keep the GEMMs at full speed and the buffers at ~0.5 GB for 8B.
constexpr int kMaxRows = 4096;

size_t used_device_bytes() {
  size_t free_b = 0, total_b = 0;
  LLMQ_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  return total_b - free_b;
}

}  // namespace

DevicePeak::DevicePeak() {
  LLMQ_CUDA_CHECK(cudaFree(nullptr));  // the context exists before the baseline is taken
  baseline_ = used_device_bytes();
}

void DevicePeak::sample(size_t extra) {
  const size_t used = used_device_bytes();
  peak_ = std::max(peak_, (used > baseline_ ? used - baseline_ : 0) + extra);
}

size_t DevicePeak::free_bytes() const {
  size_t free_b = 0, total_b = 0;
  LLMQ_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  return free_b;
}

Expected<std::unique_ptr<GpuSamples>> GpuSamples::create(const HfCheckpoint& ckpt,
                                                         const std::vector<std::vector<int32_t>>& samples,
                                                         gpu::Blas* blas, cudaStream_t stream, DevicePeak& peak,
                                                         SamplePlacement placement) {
  std::unique_ptr<GpuSamples> s(new GpuSamples());
  s->c_ = ckpt.config();
  s->blas_ = blas;
  s->stream_ = stream;
  s->peak_ = &peak;
  if (samples.empty()) return s;
  const LlamaConfig& c = s->c_;

  // Pack the samples into forwards and plan the cache.
  int64_t longest = 0;
  for (const auto& smp : samples) longest = std::max<int64_t>(longest, static_cast<int64_t>(smp.size()));
  const int max_rows = s->max_rows_ = static_cast<int>(std::max<int64_t>(kMaxRows, longest));
  s->capacity_ = static_cast<int>(longest);
  const int n_q = static_cast<int>(c.num_attention_heads), n_kv = static_cast<int>(c.num_key_value_heads);
  const int max_cap = gpu::attention_max_capacity(n_q, n_kv, static_cast<int>(c.head_dim));
  if (max_cap == 0 || s->capacity_ > max_cap)
    return Status::error("--device gpu: samples of " + std::to_string(longest) +
                         " tokens exceed the attention kernel's capacity for this model (" + std::to_string(max_cap) + ")");
  std::vector<int32_t> pos, seq;
  int max_slots = 0;
  for (const auto& smp : samples) {
    const int T = static_cast<int>(smp.size());
    if (s->chunks_.empty() || s->chunks_.back().M + T > max_rows) {
      Chunk ch;
      ch.row0 = static_cast<int64_t>(pos.size());
      s->chunks_.push_back(ch);
    }
    Chunk& ch = s->chunks_.back();
    for (int t = 0; t < T; ++t) {
      pos.push_back(t);
      seq.push_back(ch.slots);
    }
    ch.M += T;
    ch.slots += 1;
    max_slots = std::max(max_slots, ch.slots);
  }
  for (Chunk& ch : s->chunks_) ch.spans = gpu::row_spans(pos.data() + ch.row0, seq.data() + ch.row0, ch.M);
  s->total_rows_ = static_cast<int64_t>(pos.size());

  const size_t hidden = static_cast<size_t>(c.hidden_size);
  const size_t cache_bytes = size_t(max_slots) * s->capacity_ * c.kv_dim() * 2;
  const size_t acts_bytes = size_t(s->total_rows_) * hidden * sizeof(float);
  const size_t chunk_bytes = size_t(max_rows) * hidden * sizeof(float);
  // One chunk-sized f32 buffer either way: the copy of forwards that do not advance (device
  // placement) or the chunk being run (host placement).
  const size_t fixed = chunk_bytes + 2 * cache_bytes + LayerBuffers::activation_bytes(c, max_rows, s->capacity_);
  const size_t free_b = peak.free_bytes();
  const bool on_host = placement == SamplePlacement::kHost ||
                       (placement == SamplePlacement::kAuto && acts_bytes + fixed > free_b);
  const size_t need = (on_host ? 0 : acts_bytes) + fixed;
  if (need > free_b)
    return Status::error("--device gpu: the calibration forward needs about " + std::to_string(need >> 20) +
                         " MiB of GPU memory" + (on_host ? " with the activations on the host" : "") + ", " +
                         std::to_string(free_b >> 20) + " MiB free (use fewer --samples or a shorter --seq-len)");
  if (on_host && cudaMallocHost(&s->host_acts_, acts_bytes) != cudaSuccess) {
    s->host_acts_ = nullptr;
    (void)cudaGetLastError();  // clear the failed allocation's error
    return Status::error("--device gpu: the calibration activations (" + std::to_string(acts_bytes >> 20) +
                         " MiB) fit neither on the GPU nor in pinned host memory (use fewer --samples)");
  }
  s->pos_ = DeviceBuffer::from_host(pos);
  s->seq_ = DeviceBuffer::from_host(seq);
  s->acts_ = DeviceBuffer(on_host ? chunk_bytes : acts_bytes);
  if (!on_host) s->x_tmp_ = DeviceBuffer(chunk_bytes);
  s->k_cache_ = DeviceBuffer(cache_bytes);
  s->v_cache_ = DeviceBuffer(cache_bytes);
  s->bufs_ = LayerBuffers::create(c, max_rows, s->capacity_, /*quantized=*/false);
  s->rope_ = RopeTables::upload(c, s->capacity_);

  // Embed on the host one sample at a time (rows of the mmapped table, converted exactly to f32) and upload.
  LLMQ_ASSIGN_OR_RETURN(TensorView table, ckpt.embed_tokens());  // [vocab, hidden]
  const int64_t vocab = table.dim(0);
  const size_t row_bytes = dtype_nbytes(table.dtype, static_cast<int64_t>(hidden));
  std::vector<float> host;
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
      const Tensor r32 = to_f32(r);
      std::memcpy(&host[t * hidden], r32.data<float>(), hidden * sizeof(float));
    }
    if (s->on_host()) std::memcpy(s->host_at(row), host.data(), host.size() * sizeof(float));
    else LLMQ_CUDA_CHECK(cudaMemcpy(s->acts_at(row), host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice));
    row += static_cast<int64_t>(ids.size());
  }
  peak.sample();
  return s;
}

GpuSamples::~GpuSamples() {
  if (host_acts_) cudaFreeHost(host_acts_);  // no check: destructors must not abort on teardown
}

std::vector<float> GpuSamples::download_rows(int64_t row0, int64_t rows) const {
  std::vector<float> out(size_t(rows) * c_.hidden_size);
  if (on_host()) {
    LLMQ_CUDA_CHECK(cudaStreamSynchronize(stream_));
    std::memcpy(out.data(), host_at(row0), out.size() * sizeof(float));
  } else {
    LLMQ_CUDA_CHECK(cudaMemcpy(out.data(), acts_at(row0), out.size() * sizeof(float), cudaMemcpyDeviceToHost));
  }
  return out;
}

LayerEnv GpuSamples::env() const { return LayerEnv::of(c_, capacity_, rope_, blas_, stream_); }

LayerRows GpuSamples::rows_of(const Chunk& ch) const {
  return {pos_.as<const int32_t>() + ch.row0, seq_.as<const int32_t>() + ch.row0, ch.M, &ch.spans};
}

Status GpuSamples::forward(const GpuLayer& L, LayerInputHook* hook, bool advance, int64_t layer) {
  const bool quantized = L.qkv.kind != LinearKind::kBf16 || L.o.kind != LinearKind::kBf16 ||
                         L.gate_up.kind != LinearKind::kBf16 || L.down.kind != LinearKind::kBf16;
  if (quantized && bufs_.scratch.codes.empty()) bufs_ = LayerBuffers::create(c_, max_rows_, capacity_, /*quantized=*/true);
  const LayerEnv e = env();
  int64_t bad = -1;  // first non-finite element of the new activations (advance)
  for (const Chunk& ch : chunks_) {
    const size_t bytes = size_t(ch.M) * c_.hidden_size * sizeof(float);
    float* x = nullptr;
    if (on_host()) {  // the chunk to the device; the forward works on that copy
      x = acts_.as<float>();
      LLMQ_CUDA_CHECK(cudaMemcpyAsync(x, host_at(ch.row0), bytes, cudaMemcpyHostToDevice, stream_));
    } else if (!advance) {  // the second RMSNorm adds o_proj's branch to x
      LLMQ_CUDA_CHECK(cudaMemcpyAsync(x_tmp_.as(), acts_at(ch.row0), bytes, cudaMemcpyDeviceToDevice, stream_));
      x = x_tmp_.as<float>();
    } else {
      x = acts_at(ch.row0);
    }
    const bf16* pending = layer_forward(e, L, bufs_, x, nullptr, rows_of(ch), k_cache(), v_cache(), hook);
    if (advance && pending) gpu::add_bf16_to_f32(x, pending, int64_t(ch.M) * c_.hidden_size, stream_);
    if (advance && on_host()) {  // checked while on the device, then back (stream order keeps the staging safe)
      const int64_t b = gpu::first_nonfinite(x, DType::kF32, int64_t(ch.M) * c_.hidden_size, stream_);
      if (b >= 0 && bad < 0) bad = ch.row0 * c_.hidden_size + b;
      LLMQ_CUDA_CHECK(cudaMemcpyAsync(host_at(ch.row0), x, bytes, cudaMemcpyDeviceToHost, stream_));
    }
  }
  LLMQ_CUDA_CHECK(cudaStreamSynchronize(stream_));
  LLMQ_CUDA_CHECK(cudaGetLastError());
  peak_->sample();
  if (advance) {
    if (!on_host()) bad = gpu::first_nonfinite(acts_.as(), DType::kF32, total_rows_ * c_.hidden_size, stream_);
    if (bad >= 0)
      return Status::error("layer " + std::to_string(layer) + ": non-finite output at token " +
                           std::to_string(bad / c_.hidden_size) + " of the calibration samples");
  }
  return Status::ok();
}

}  // namespace llmq
