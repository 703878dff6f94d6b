// `llmq calibrate`: dataset -> token samples -> the BF16 checkpoint run one decoder layer at a
// time -> per-input statistics (stats.h) -> the calibration file (calib_file.h).
//
// Two devices run the layers (CalibrateOptions::device):
//   cpu: float32 forwards (model/llama.h) and the host collectors (stats.h). Memory is bounded
//        by one decoder layer plus the samples' activations [T, hidden] (kept between layers)
//        plus, per thread, the captured linear inputs of one sample. Samples are forwarded in
//        parallel (OpenMP, one sample per thread) and their inputs are added to the statistics
//        in sample order, so the output is byte-identical for the same inputs and seed.
//   gpu: the CUDA runner's bf16 forwards with device statistics (pipeline/calibrate_gpu.h),
//        behind the LayerStatsRunner seam below. llmq_calibration sits below the runner and
//        the pipeline (DESIGN.md's layering), so it cannot call them: the caller passes the GPU
//        in (a CalibrationGpu from pipeline/calibrate_gpu.h's calibration_gpu(); the CLI does).
//        Without one, "auto" means cpu and "gpu" is an error. Everything else (options,
//        dataset, manifest, file writing, progress) is this file's, shared by both devices, so
//        the files differ only in their statistics and the manifest's "device".
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "calibration/dataset.h"
#include "calibration/stats.h"
#include "core/status.h"
#include "core/tensor.h"
#include "formats/checkpoint.h"
#include "model/llama.h"

namespace llmq {

// The one place the calibrate defaults are declared (the CLI reads them from here).
struct CalibrateOptions {
  std::string model_dir;
  DatasetSpec dataset;
  int64_t samples = 128;
  int64_t seq_len = 2048;  // capped at the model's max_position_embeddings
  uint64_t seed = 0;
  bool hessian = true;
  std::string out;
  bool force = false;
  bool progress = true;  // per-layer progress and warnings on stderr
  // Where the layers run: "gpu" (bf16 forwards, device statistics), "cpu" (float32 forwards),
  // or "auto" (the GPU when the caller supplies one and a device is present).
  std::string device = "auto";
};

struct CalibrateResult {
  int64_t samples = 0;
  int64_t seq_len = 0;  // effective (after the cap)
  int64_t tokens = 0;
  int64_t layers = 0;
  std::string warning;  // e.g. fewer samples available than requested
  double seconds = 0.0;
  std::string device;   // "cpu" or "cuda:NAME", as the manifest records it
};

// One calibration run's per-layer work on a device other than the CPU (the GPU:
// pipeline/calibrate_gpu.h). Made once per run over the token samples; then run_layer is called
// for layers 0, 1, ... in order.
class LayerStatsRunner {
 public:
  using Sink = std::function<Status(LinearInput, const InputStats&)>;
  virtual ~LayerStatsRunner() = default;
  virtual std::string device_label() const = 0;  // "cuda:NAME"
  // Runs the samples through `layer`, hands each of its four inputs' statistics (stats.h's
  // definitions; the Hessian when the runner was made with hessian) to sink, in
  // kAllLinearInputs order, one at a time so the caller can write and drop it, and leaves the
  // samples holding the next layer's input. A sink error is returned as it is.
  virtual Status run_layer(int64_t layer, const Sink& sink) = 0;
};

// A GPU as calibrate() sees it: whether it can be used and how to start a runner on it.
struct CalibrationGpu {
  std::string unavailable;  // why not ("built without CUDA", "no CUDA device", ...); "" when usable
  std::function<Expected<std::unique_ptr<LayerStatsRunner>>(
      const HfCheckpoint& ckpt, const std::vector<std::vector<int32_t>>& samples, bool hessian)>
      open;
};

// Does the whole command and writes opts.out; prints only to stderr (progress, warnings).
// gpu: the GPU for --device gpu / auto (null: none, so auto runs on the CPU).
Expected<CalibrateResult> calibrate(const CalibrateOptions& opts, const CalibrationGpu* gpu = nullptr);
// calibrate() plus a summary line on stdout: the CLI entry point.
Status run_calibrate(const CalibrateOptions& opts, const CalibrationGpu* gpu = nullptr);

// ---- pieces the quantize pipeline reuses ----------------------------------------------------

// Float32 embeddings [T, hidden] of each sample (rows of embed_tokens, exact for BF16).
// Token ids outside the vocabulary are an error naming the sample.
Expected<std::vector<Tensor>> embed_samples(const HfCheckpoint& ckpt,
                                            const std::vector<std::vector<int32_t>>& samples);

// Runs every activation [T_s, hidden] through `layer` in place (samples in parallel). With a
// collector, each sample's distinct linear inputs are added to it in sample order; the
// collector's error (non-finite activations) is returned. Non-finite layer outputs are an
// error naming the layer.
Status forward_samples(const DecoderLayer& layer, const LlamaConfig& config, Precision precision,
                       std::vector<Tensor>& activations, LayerStatsCollector* collector);

}  // namespace llmq
