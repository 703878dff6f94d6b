// One decoder layer as the quantize pipeline sees it: float32 weights that a method may
// transform (SmoothQuant / AWQ folding, AWQ clipping) before quantizing them, what the method
// produces, and the context it runs in. Each method is one function over these
// (methods_*.cc), called once per layer by pipeline/quantize.cc.
#pragma once

#include <array>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <vector>

#include "calibration/calib_file.h"
#include "core/status.h"
#include "core/tensor.h"
#include "formats/checkpoint.h"
#include "model/llama.h"
#include "pipeline/module_plan.h"
#include "quantizers/gptq.h"
#include "quantizers/quantized_linear.h"

namespace llmq {

struct LayerWeights {
  int64_t index = 0;
  std::array<Tensor, kNumLinearSlots> linears;  // float32 [out, in], indexed by LinearSlot
  Tensor input_layernorm;                       // [hidden]
  Tensor post_attention_layernorm;              // [hidden]

  Tensor& weight(LinearSlot s) { return linears[static_cast<size_t>(s)]; }
  const Tensor& weight(LinearSlot s) const { return linears[static_cast<size_t>(s)]; }
};

Expected<LayerWeights> load_layer_weights(const HfCheckpoint& ckpt, int64_t layer);

using QuantizedSlots = std::array<std::optional<QuantizedLinear>, kNumLinearSlots>;

// A runnable layer: float linears (copies of w), except the slots present in `quantized`, which
// run their quantized form (model/quantized_linear.h: W8A8 emulation for 8-bit schemes when
// w8a8, else the dequantized weight).
DecoderLayer make_decoder_layer(const LayerWeights& w, const QuantizedSlots* quantized = nullptr, bool w8a8 = false);

// The method settings of one run (the quantize options minus I/O).
struct MethodSettings {
  QuantMethod method = QuantMethod::kFp8;
  QuantFormat format = QuantFormat::kCtFloat;
  DType scale_dtype = DType::kBF16;  // as the format stores scales
  int64_t group_size = 128;
  bool symmetric = true;             // INT4 (GPTQ / RTN); AWQ is always asymmetric
  bool act_order = false;            // GPTQ
  bool mse_clip = false;             // GPTQ
  double damp_percent = 0.01;        // GPTQ
  bool sequential = true;            // GPTQ: Hessians through the already-quantized linears
  double alpha = 0.5;                // SmoothQuant
  int awq_grid = 20;                 // AWQ scale ratios
  bool awq_clip = true;              // AWQ clip search
};

struct LayerContext {
  const LlamaConfig& config;
  const ModulePlan& plan;
  const MethodSettings& settings;
  // The layer's input, one [T_s, hidden] float32 tensor per calibration sample; empty when the
  // run has no samples. A method that uses them leaves them holding the next layer's input.
  std::vector<Tensor>& activations;
  const CalibrationData* calib = nullptr;  // statistics from `llmq calibrate`, when given
};

struct LayerResult {
  QuantizedSlots quantized;                              // the slots the plan quantizes
  std::array<QuantReport, kNumLinearSlots> reports;      // per quantized slot
  nlohmann::ordered_json notes = nlohmann::ordered_json::object();  // method-specific record
  // Host work left to finish the layer that needs nothing of later layers (the GPU AWQ's final
  // clip and quantization): the layer loop runs it on its write worker, behind the next
  // layer's device work. It fills `quantized` and `reports` from w.
  std::function<void(LayerWeights& w, LayerResult& r)> deferred;
};

// Fills report.weight_rel_error = ||W - deq(Q)||_F / ||W||_F (W: the float weight quantized) and,
// with a Hessian H [in, in], output_rel_error = tr(E H Eᵀ) / tr(W H Wᵀ) (E = W - deq(Q)).
void measure_error(const Tensor& w, const QuantizedLinear& q, const Tensor* hessian, QuantReport& report);

// The method functions (methods_*.cc). Each quantizes the slots the plan marks, may transform w
// (folding keeps the float function unchanged), and keeps ctx.activations current.
Expected<LayerResult> quantize_layer_rtn(LayerWeights& w, LayerContext& ctx);  // fp8, rtn-int4, rtn-int8
Expected<LayerResult> quantize_layer_smoothquant(LayerWeights& w, LayerContext& ctx);
// int8-sq from statistics of the float layer's inputs already collected (min, max, abs_max of
// attn_in and mlp_in are used): the GPU path's entry, which collects them on the device.
Expected<LayerResult> quantize_layer_smoothquant_with_stats(LayerWeights& w, LayerContext& ctx,
                                                            const std::array<InputStats, kNumLinearInputs>& stats);
Expected<LayerResult> quantize_layer_gptq(LayerWeights& w, LayerContext& ctx);
// The GPTQ settings of a run (CPU and GPU paths alike).
GptqConfig gptq_config(const MethodSettings& m);
Expected<LayerResult> quantize_layer_awq(LayerWeights& w, LayerContext& ctx);

}  // namespace llmq
