// `llmq quantize --device gpu`: the per-layer work of pipeline/quantize.cc on one GPU, for
// every method.
//
// The session keeps the calibration samples on the device (pipeline/gpu_samples.h: float32
// [Σ T_s, hidden], 4 GB for 128 x 2048 tokens of an 8B model) between layers. Per layer it
// uploads the float layer as bf16 (pipeline/float_layer_gpu.h), runs the samples through it with
// linear-input hooks that accumulate device statistics, quantizes, and advances the samples to
// the next layer's input, as the CPU method functions (methods_*.cc) do:
//   fp8 / rtn-*: the host quantizers (the same code as the CPU path: identical bytes), no forward.
//   int8-sq:     with --calib, the file's statistics (as the CPU path); else per-channel ranges
//                of attn_in and mlp_in from one forward of the float layer, which also advances
//                the samples (the CPU path forwards the float layer too). Folding and INT8 RTN
//                are the host code.
//   gptq:        true-sequential as methods_gptq.cc: per group {q,k,v}, {o}, {gate,up}, {down}
//                the samples run through the layer with the earlier groups quantized
//                (dequantized, as make_decoder_layer dequantizes them, then bf16), stopping at the
//                group's input; its Hessian accumulates on the device (quantizers/gpu
//                HessianAccumulator) and quantize_gptq_gpu quantizes the group. Then the samples
//                run through the quantized layer. --no-sequential: the --calib Hessians.
//   awq:         pipeline/awq_gpu.h.
//
// Differences from the CPU path: the forwards' ops are bf16 (Precision::kBFloat16's rounding
// points) on a float32 residual stream (pipeline/gpu_samples.h) where the CPU computes in
// float32, so statistics differ by bf16 rounding; perplexity of the results agrees within the
// issue's 0.5% for int8-sq, and for GPTQ / AWQ within their own sensitivity to such
// perturbations (tests/test_pipeline_gpu.cc says how much). The stream is float32 because rounding it too cost
// GPTQ +0.57% perplexity on the CPU path with these forwards; with it in float32, -0.10%.
//
// Memory on the device: the samples' activations + one layer's bf16 weights + one forward's
// buffers (up to 4096 rows) + one Hessian accumulator and one GPTQ call (or AWQ's captures) at a time: independent of
// the number of layers. On the host: one layer's float32 weights.
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/status.h"
#include "formats/checkpoint.h"
#include "pipeline/layer.h"
#include "pipeline/method.h"

namespace llmq {

class GpuQuantizeSession {
 public:
  // samples: token ids per sample (empty when the method needs none). Errors: no GPU (or a
  // build without CUDA), token ids outside the vocabulary, not enough GPU memory.
  static Expected<std::unique_ptr<GpuQuantizeSession>> create(const HfCheckpoint& ckpt,
                                                              const std::vector<std::vector<int32_t>>& samples);
  ~GpuQuantizeSession();

  // One layer: quantizes the slots ctx.plan marks, may transform w (SmoothQuant folding), and
  // advances the device activations when the method uses samples. ctx.activations is unused.
  Expected<LayerResult> run_layer(LayerWeights& w, LayerContext& ctx);

  std::string device_label() const;  // "cuda:NAME"
  // Device memory this session used at its high-water mark (cudaMemGetInfo samples taken
  // after every allocation step, plus the GPTQ calls' own peaks), bytes.
  size_t peak_device_bytes() const;
  // Seconds per stage summed over layers: upload, forward, stats, quantize.
  nlohmann::ordered_json stage_seconds() const;

 private:
  struct Impl;
  explicit GpuQuantizeSession(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace llmq
