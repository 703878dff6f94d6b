// `llmq calibrate`; see calibrate.h.
#include "calibration/calibrate.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>

#include "calibration/calib_file.h"
#include "core/progress.h"
#include "core/stopwatch.h"
#include "formats/tokenizer.h"

namespace llmq {

Expected<std::vector<Tensor>> embed_samples(const HfCheckpoint& ckpt,
                                            const std::vector<std::vector<int32_t>>& samples) {
  LLMQ_ASSIGN_OR_RETURN(TensorView table, ckpt.embed_tokens());  // [vocab, hidden]
  const int64_t vocab = table.dim(0);
  const int64_t hidden = table.dim(1);
  const int64_t row_bytes = dtype_nbytes(table.dtype, hidden);
  std::vector<Tensor> out;
  out.reserve(samples.size());
  for (size_t s = 0; s < samples.size(); ++s) {
    const std::vector<int32_t>& ids = samples[s];
    const int64_t T = static_cast<int64_t>(ids.size());
    Tensor x(DType::kF32, {T, hidden});  // [T, hidden]
    for (int64_t t = 0; t < T; ++t) {
      const int32_t id = ids[static_cast<size_t>(t)];
      if (id < 0 || id >= vocab)
        return Status::error("calibrate: sample " + std::to_string(s) + " has token id " + std::to_string(id) +
                             " outside the model's vocabulary of " + std::to_string(vocab));
      const TensorView row(table.dtype, {hidden}, static_cast<uint8_t*>(table.data) + id * row_bytes);
      const Tensor row32 = to_f32(row);
      std::copy(row32.data<float>(), row32.data<float>() + hidden, x.data<float>() + t * hidden);
    }
    out.push_back(std::move(x));
  }
  return out;
}

Status forward_samples(const DecoderLayer& layer, const LlamaConfig& config, Precision precision,
                       std::vector<Tensor>& activations, LayerStatsCollector* collector) {
  const int64_t n = static_cast<int64_t>(activations.size());
  // One sample per thread; a chunk's captured inputs are consumed before the next chunk, so
  // memory holds at most `chunk` samples' inputs.
  const int64_t chunk = std::max(1, omp_get_max_threads());
  std::vector<LinearInputRecorder> captures(static_cast<size_t>(collector ? chunk : 0));
  for (int64_t s0 = 0; s0 < n; s0 += chunk) {
    const int64_t s1 = std::min(n, s0 + chunk);
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t s = s0; s < s1; ++s) {
      ForwardOptions opt;
      opt.precision = precision;
      opt.observer = collector ? &captures[static_cast<size_t>(s - s0)] : nullptr;
      decoder_layer_forward(layer, config, activations[static_cast<size_t>(s)].view(), opt);
    }
    for (int64_t s = s0; s < s1; ++s) {
      if (collector) {
        LinearInputRecorder& cap = captures[static_cast<size_t>(s - s0)];
        for (LinearInput in : kAllLinearInputs) {
          collector->add(in, cap.inputs[static_cast<size_t>(in)].view());
          cap.inputs[static_cast<size_t>(in)] = Tensor();
        }
        if (!collector->status().is_ok())
          return collector->status().with_context("sample " + std::to_string(s));
      }
      if (!all_finite(activations[static_cast<size_t>(s)]))
        return Status::error("layer " + std::to_string(layer.index) + ": non-finite output for sample " +
                             std::to_string(s));
    }
  }
  return Status::ok();
}

namespace {

// --device: cpu never uses the GPU; gpu must (or fails, naming why not); auto uses it when the
// caller supplied one and it is usable.
Expected<bool> use_gpu(const std::string& device, const CalibrationGpu* gpu) {
  if (device != "auto" && device != "cpu" && device != "gpu")
    return Status::error("--device must be cpu, gpu or auto, not '" + device + "'");
  if (device == "cpu") return false;
  const std::string why_not =
      gpu ? gpu->unavailable : "this caller of calibrate() has no GPU path (pipeline/calibrate_gpu.h)";
  if (device == "gpu" && !why_not.empty()) return Status::error("--device gpu: " + why_not);
  return why_not.empty();
}

}  // namespace

Expected<CalibrateResult> calibrate(const CalibrateOptions& opts, const CalibrationGpu* gpu) {
  const auto t0 = Clock::now();
  if (opts.samples < 1) return Status::error("calibrate: --samples must be at least 1");
  if (opts.seq_len < 2) return Status::error("calibrate: --seq-len must be at least 2");
  if (opts.out.empty()) return Status::error("calibrate: --out is required");
  LLMQ_ASSIGN_OR_RETURN(const bool on_gpu, use_gpu(opts.device, gpu));
  // Created first, so an existing output is refused before any work.
  LLMQ_ASSIGN_OR_RETURN(CalibrationWriter writer, CalibrationWriter::create(opts.out, opts.force));

  LLMQ_ASSIGN_OR_RETURN(HfCheckpoint ckpt, HfCheckpoint::open(opts.model_dir));
  const LlamaConfig& config = ckpt.config();
  LLMQ_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer, load_tokenizer(opts.model_dir));
  const int64_t seq_len = std::min(opts.seq_len, config.max_position_embeddings);
  LLMQ_ASSIGN_OR_RETURN(CalibrationSamples data,
                        load_dataset(opts.dataset, *tokenizer, opts.model_dir, opts.samples, seq_len, opts.seed));
  LLMQ_ASSIGN_OR_RETURN(std::string dataset_bytes, read_file_bytes(opts.dataset.path));
  LLMQ_ASSIGN_OR_RETURN(std::string fingerprint, model_fingerprint(ckpt));
  // The samples' activations: on the device (the runner embeds them) or here, each [T_s, hidden].
  std::unique_ptr<LayerStatsRunner> runner;
  std::vector<Tensor> acts;
  if (on_gpu) {
    LLMQ_ASSIGN_OR_RETURN(runner, gpu->open(ckpt, data.samples, opts.hessian));
  } else {
    LLMQ_ASSIGN_OR_RETURN(acts, embed_samples(ckpt, data.samples));
  }

  CalibrateResult result;
  result.samples = static_cast<int64_t>(data.samples.size());
  result.seq_len = seq_len;
  result.tokens = data.tokens();
  result.layers = config.num_hidden_layers;
  result.warning = data.warning;
  result.device = runner ? runner->device_label() : "cpu";
  if (opts.progress && !data.warning.empty()) std::fprintf(stderr, "llmq: warning: %s\n", data.warning.c_str());

  std::unique_ptr<Progress> progress;
  if (opts.progress)
    progress = std::make_unique<Progress>("calibrate (" + result.device + ")", config.num_hidden_layers, "layers");
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    if (runner) {
      // Each input's statistics go to the spill file as soon as they are downloaded.
      const auto sink = [&](LinearInput in, const InputStats& s) { return writer.add(l, in, s); };
      LLMQ_RETURN_IF_ERROR(runner->run_layer(l, sink).with_context(opts.model_dir));
    } else {
      LLMQ_ASSIGN_OR_RETURN(DecoderLayer layer, load_decoder_layer(ckpt, l));
      LayerStatsCollector collector(config, l, opts.hessian);
      // float32 forward: statistics of the model's own function, without bf16 rounding noise.
      LLMQ_RETURN_IF_ERROR(forward_samples(layer, config, Precision::kFloat32, acts, &collector)
                               .with_context(opts.model_dir));
      for (LinearInput in : kAllLinearInputs) LLMQ_RETURN_IF_ERROR(writer.add(l, in, collector.finish(in)));
    }
    if (progress) progress->update(l + 1);
  }
  if (progress) progress->finish();
  runner.reset();  // device memory back before the file is assembled

  CalibrationManifest m;
  m.model_fingerprint = fingerprint;
  m.model_dir = opts.model_dir;
  // Absolute, so `quantize` can re-read the samples from any working directory.
  m.dataset = std::filesystem::absolute(opts.dataset.path).lexically_normal().string();
  m.dataset_kind = std::string(dataset_kind_name(opts.dataset.kind));
  if (opts.dataset.kind == DatasetKind::kJsonl) m.dataset_field = opts.dataset.field;
  m.dataset_sha = hex64(fnv1a64(dataset_bytes.data(), dataset_bytes.size()));
  m.samples = result.samples;
  m.seq_len = seq_len;
  m.tokens = result.tokens;
  m.seed = opts.seed;
  m.hessian = opts.hessian;
  m.device = result.device;
  LLMQ_RETURN_IF_ERROR(writer.finish(m));
  result.seconds = seconds_since(t0);
  return result;
}

Status run_calibrate(const CalibrateOptions& opts, const CalibrationGpu* gpu) {
  LLMQ_ASSIGN_OR_RETURN(CalibrateResult r, calibrate(opts, gpu));
  std::printf("wrote %s: %lld samples, seq-len %lld, %lld tokens, %lld layers%s, %.1f s on %s\n", opts.out.c_str(),
              static_cast<long long>(r.samples), static_cast<long long>(r.seq_len),
              static_cast<long long>(r.tokens), static_cast<long long>(r.layers),
              opts.hessian ? ", with Hessians" : ", no Hessians", r.seconds, r.device.c_str());
  return Status::ok();
}

}  // namespace llmq
