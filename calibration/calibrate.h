// `llmq calibrate`: dataset -> token samples -> the BF16 checkpoint run one decoder layer at a
// time in float32 -> per-input statistics (stats.h) -> the calibration file (calib_file.h).
//
// Memory is bounded by one decoder layer plus the samples' activations [T, hidden] (kept
// between layers) plus, per thread, the captured linear inputs of one sample. Samples are
// forwarded in parallel (OpenMP, one sample per thread) and their inputs are added to the
// statistics in sample order, so the output is byte-identical for the same inputs and seed.
#pragma once

#include <cstdint>
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
};

struct CalibrateResult {
  int64_t samples = 0;
  int64_t seq_len = 0;  // effective (after the cap)
  int64_t tokens = 0;
  int64_t layers = 0;
  std::string warning;  // e.g. fewer samples available than requested
  double seconds = 0.0;
};

// Does the whole command and writes opts.out; prints only to stderr (progress, warnings).
Expected<CalibrateResult> calibrate(const CalibrateOptions& opts);
// calibrate() plus a summary line on stdout: the CLI entry point.
Status run_calibrate(const CalibrateOptions& opts);

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
