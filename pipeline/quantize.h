// `llmq quantize`: a float checkpoint -> a quantized checkpoint, one decoder layer at a time.
//
// Data flow (DESIGN.md step 2): open the checkpoint; plan which linears are quantized
// (module_plan.h, every refusal before any work); obtain calibration: the statistics file of
// `llmq calibrate` (--calib) and/or token samples (--dataset, or the dataset the --calib
// manifest names, re-read and checked against its hash); embed the samples; then per layer:
// load its float weights, run the method (layer.h), write its tensors, free it. Memory is one
// layer's weights plus the samples' activations (and, for AWQ, one layer's linear inputs).
// The embeddings, final norm and lm_head are written in the format's model dtype.
//
// What each method needs: fp8 / rtn-*: nothing. int8-sq: activation ranges (--calib, or
// --dataset collected on the fly). gptq: samples (sequential, default) or, with
// --no-sequential, the Hessians of a --calib file. awq: samples.
//
// Output: byte-identical for the same inputs and options, except the wall-clock "timings" in
// llmq_report.json.
#pragma once

#include <string>
#include <vector>

#include "calibration/dataset.h"
#include "core/status.h"
#include "pipeline/layer.h"
#include "pipeline/method.h"

namespace llmq {

// The one place the quantize defaults are declared (the CLI reads them from here).
struct QuantizeOptions {
  std::string model_dir;
  std::string method;  // a MethodInfo name
  std::string format;  // "" = the method's default
  std::string out;
  bool force = false;

  // Calibration: a statistics file and/or a dataset.
  std::string calib;
  DatasetSpec dataset;  // path empty: none (or the --calib manifest's dataset when samples are needed)
  int64_t samples = 128;
  int64_t seq_len = 512;
  uint64_t seed = 0;

  int64_t group_size = 128;
  bool asymmetric = false;  // INT4 GPTQ / RTN with zero points (AWQ is always asymmetric)
  bool act_order = false;
  bool mse_clip = false;
  double damp_percent = 0.01;
  bool sequential = true;
  double alpha = 0.5;
  int awq_grid = 20;
  bool awq_clip = true;
  std::vector<std::string> ignore;

  uint64_t max_shard_bytes = 5'000'000'000ULL;
  bool progress = true;
  // Where the per-layer work runs: "gpu" (pipeline/quantize_gpu.h), "cpu", or "auto" (the GPU
  // when there is one).
  std::string device = "auto";
};

struct QuantizeResult {
  std::string out;
  int64_t quantized_linears = 0;
  int64_t ignored_linears = 0;
  double seconds = 0;
  std::string device;  // "cpu" or "cuda:NAME"
  std::vector<std::string> warnings;
};

Expected<QuantizeResult> quantize(const QuantizeOptions& opts);
// quantize() plus a summary line on stdout: the CLI entry point.
Status run_quantize(const QuantizeOptions& opts);

}  // namespace llmq
