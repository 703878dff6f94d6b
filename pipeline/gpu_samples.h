// The calibration samples on the device, shared by the GPU quantize session
// (pipeline/quantize_gpu.h) and GPU calibration: embedded once (float32 [Σ T_s, hidden]), kept
// on the device between layers, and run through one decoder layer at a time with linear-input
// hooks (runner/layer.h). Each sample is its own sequence (its own KV-cache slot); a forward
// takes up to kMaxRows rows (several whole samples; tensor-core prefill attention per sample).
//
// The residual stream (the activations between layers and the residual adds inside a layer)
// stays float32, as in the CPU path's float32 forward; every other op is the runner's bf16
// (runner/layer.h's float* overload), so the hooks see bf16 linear inputs. Rounding the stream
// to bf16 as well (the engine's transformers semantics) cost GPTQ on tinystories-656k +0.57%
// perplexity on the CPU path (bf16 calibration forwards vs float32); with the stream in float32
// the gap was -0.10%.
//
// Memory on the device: the samples' activations + one forward's buffers + the KV cache of
// one forward's samples: independent of the number of layers. When the activations do not fit
// beside the rest (or SamplePlacement::kHost asks), they live in pinned host memory instead and
// each forward copies one chunk at a time to the device and, when it advances, back: the same
// kernels on the same rows, so the results are the same bits.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "calibration/stats.h"
#include "core/status.h"
#include "formats/checkpoint.h"
#include "runner/device_buffer.h"
#include "runner/layer.h"

namespace llmq {

// High-water mark of device memory above what was in use when it was made (cudaMemGetInfo
// samples taken by the owner after each allocation step, plus extra peaks it reports).
class DevicePeak {
 public:
  DevicePeak();
  void sample(size_t extra = 0);
  size_t peak() const { return peak_; }
  size_t free_bytes() const;

 private:
  size_t baseline_ = 0;
  size_t peak_ = 0;
};

// The hooks' LayerInput (runner/layer.h) and the statistics' LinearInput (calibration/stats.h)
// name the same four inputs in the same order; the GPU paths cast between them.
static_assert(static_cast<int>(LayerInput::kAttnIn) == static_cast<int>(LinearInput::kAttnIn) &&
                  static_cast<int>(LayerInput::kAttnOut) == static_cast<int>(LinearInput::kAttnOut) &&
                  static_cast<int>(LayerInput::kMlpIn) == static_cast<int>(LinearInput::kMlpIn) &&
                  static_cast<int>(LayerInput::kMlpOut) == static_cast<int>(LinearInput::kMlpOut),
              "runner/layer.h's LayerInput follows calibration/stats.h's LinearInput");

enum class SamplePlacement : uint8_t { kAuto, kDevice, kHost };

class GpuSamples {
 public:
  // Rows [row0, row0 + M) of the activations: whole samples, one KV slot each.
  struct Chunk {
    int64_t row0 = 0;
    int M = 0;
    int slots = 0;
    std::vector<gpu::RowSpan> spans;
  };

  // samples: token ids per sample (none: an empty set that cannot forward). Errors: token ids
  // outside the vocabulary, samples longer than the attention kernel allows, not enough GPU
  // memory (naming what is needed). blas and stream outlive the object. kAuto: on the device
  // when they fit, else in pinned host memory.
  static Expected<std::unique_ptr<GpuSamples>> create(const HfCheckpoint& ckpt,
                                                      const std::vector<std::vector<int32_t>>& samples,
                                                      gpu::Blas* blas, cudaStream_t stream, DevicePeak& peak,
                                                      SamplePlacement placement = SamplePlacement::kAuto);
  ~GpuSamples();

  bool empty() const { return chunks_.empty(); }
  int64_t total_rows() const { return total_rows_; }
  const std::vector<Chunk>& chunks() const { return chunks_; }
  int max_rows() const { return max_rows_; }
  bool on_host() const { return host_acts_ != nullptr; }
  // Rows [row0, row0 + rows) of the current activations [.., hidden] f32, copied to the host.
  std::vector<float> download_rows(int64_t row0, int64_t rows) const;

  // The samples through L, chunk by chunk. advance: the activations become L's output; else
  // each chunk runs on a copy (statistics only; the hook may stop the forward early).
  // Non-finite outputs (advance) are an error naming `layer`.
  Status forward(const GpuLayer& L, LayerInputHook* hook, bool advance, int64_t layer);

  // The pieces of a forward, for callers that run parts of a layer on a chunk themselves.
  LayerEnv env() const;
  LayerRows rows_of(const Chunk& ch) const;
  LayerBuffers& buffers() { return bufs_; }
  bf16* k_cache() const { return k_cache_.as<bf16>(); }
  bf16* v_cache() const { return v_cache_.as<bf16>(); }

 private:
  GpuSamples() = default;
  // Row `row` of the activations (device placement), or of the pinned host copy.
  float* acts_at(int64_t row) const { return acts_.as<float>() + row * c_.hidden_size; }
  float* host_at(int64_t row) const { return host_acts_ + row * c_.hidden_size; }

  LlamaConfig c_;
  gpu::Blas* blas_ = nullptr;
  cudaStream_t stream_ = nullptr;
  DevicePeak* peak_ = nullptr;
  int64_t total_rows_ = 0;
  int capacity_ = 0;                 // longest sample
  int max_rows_ = 0;                 // rows of the largest forward
  std::vector<Chunk> chunks_;
  DeviceBuffer acts_;                // [total_rows, hidden] f32: the current layer's input; on
                                     // the host: [max_rows, hidden], the chunk being run
  float* host_acts_ = nullptr;       // pinned [total_rows, hidden] f32 (host placement)
  DeviceBuffer pos_, seq_;           // [total_rows] int32: position in the sample, slot in its chunk
  DeviceBuffer x_tmp_;               // [max_rows, hidden] f32: a chunk's copy for forwards that must not advance
  DeviceBuffer k_cache_, v_cache_;   // [slots, capacity, kv_dim] bf16, reused by every layer
  RopeTables rope_;                  // [capacity, hd/2]
  LayerBuffers bufs_;
};

}  // namespace llmq
