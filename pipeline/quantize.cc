#include "pipeline/quantize.h"

#include <sys/resource.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <future>
#include <memory>

#include "calibration/calibrate.h"
#include "core/progress.h"
#include "core/stopwatch.h"
#include "formats/tokenizer.h"
#include "pipeline/output_writer.h"
#include "pipeline/quantize_gpu.h"
#include "runner/device.h"

namespace llmq {
namespace {

// Peak resident set of this process so far (Linux reports ru_maxrss in KiB).
uint64_t peak_rss_bytes() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<uint64_t>(u.ru_maxrss) * 1024;
}

// Anonymous resident memory now (Linux /proc/self/status RssAnon): what the process holds
// besides mapped file pages, i.e. the "host RSS excluding the page cache"; 0 when
// unavailable. Sampled at the points where a layer's data peaks, since the kernel keeps no
// high-water mark of it.
uint64_t anon_rss_bytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("RssAnon:", 0) == 0) return std::stoull(line.substr(8)) * 1024;  // "RssAnon:  1234 kB"
  return 0;
}

// Why the GPU path cannot run these options ("" when it can): AWQ's device clip search takes
// groups of a multiple of 32 columns, up to 256 (quantizers/gpu/awq_gpu.h).
std::string gpu_path_misfit(const QuantizeOptions& o, QuantMethod method) {
  if (method == QuantMethod::kAwq && o.awq_clip && (o.group_size % 32 != 0 || o.group_size > 256))
    return "awq's clip search on the GPU needs a --group-size that is a multiple of 32 up to 256, not " +
           std::to_string(o.group_size);
  return "";
}

// Writes layer l's norms and linears: the quantized form of the slots in `quantized`, the
// float weight of the others.
Status write_layer(QuantizedCheckpointWriter& writer, int64_t l, const LayerWeights& w, const QuantizedSlots& quantized) {
  LLMQ_RETURN_IF_ERROR(writer.add_float(layer_tensor_name(l, "input_layernorm.weight"), w.input_layernorm));
  LLMQ_RETURN_IF_ERROR(writer.add_float(layer_tensor_name(l, "post_attention_layernorm.weight"), w.post_attention_layernorm));
  for (int s = 0; s < kNumLinearSlots; ++s) {
    const std::string name = linear_module_name(l, static_cast<LinearSlot>(s));
    if (quantized[static_cast<size_t>(s)]) {
      LLMQ_RETURN_IF_ERROR(writer.add_linear(name, *quantized[static_cast<size_t>(s)]));
    } else {
      LLMQ_RETURN_IF_ERROR(writer.add_float(name + ".weight", w.linears[static_cast<size_t>(s)]));
    }
  }
  return Status::ok();
}

// --device: gpu takes the GPU path or fails; auto takes it where there is a GPU and the options
// fit it; cpu never.
Expected<bool> use_gpu(const QuantizeOptions& o, QuantMethod method) {
  if (o.device == "cpu") return false;
  const GpuInfo gpu = query_gpu();
  const std::string misfit = gpu_path_misfit(o, method);
  if (o.device == "gpu") {
    if (!gpu.available) return Status::error("--device gpu: " + gpu.why_not);
    if (!misfit.empty()) return Status::error("--device gpu: " + misfit + " (or use --device cpu)");
    return true;
  }
  return gpu.available && misfit.empty();
}

Status validate_options(const QuantizeOptions& o, QuantMethod method) {
  const std::string m = std::string(method_info(method).name);
  if (o.out.empty()) return Status::error("quantize: --out is required");
  if (o.device != "auto" && o.device != "cpu" && o.device != "gpu")
    return Status::error("--device must be cpu, gpu or auto, not '" + o.device + "'");
  if (o.samples < 1) return Status::error("quantize: --samples must be at least 1");
  if (o.seq_len < 2) return Status::error("quantize: --seq-len must be at least 2");
  if (!(o.damp_percent > 0 && o.damp_percent < 1)) return Status::error("quantize: --damp must be in (0, 1)");
  if (!(o.alpha >= 0 && o.alpha <= 1)) return Status::error("quantize: --alpha must be in [0, 1]");
  if (o.awq_grid < 1) return Status::error("quantize: --awq-grid must be at least 1");
  if (o.asymmetric && method != QuantMethod::kGptq && method != QuantMethod::kRtnInt4)
    return Status::error("quantize: --asym applies to gptq and rtn-int4 (" + m + " has a fixed grid)");
  if ((o.act_order || o.mse_clip || !o.sequential) && method != QuantMethod::kGptq)
    return Status::error("quantize: --act-order, --mse-clip and --no-sequential apply to gptq only");
  // compressed-tensors removed actorder "group" (its PR #840; 0.20 refuses such configs), so
  // the checkpoint would not load there: act-order is written as GPTQ v1 (g_idx) instead.
  if (o.act_order && o.format == "compressed-tensors")
    return Status::error("quantize: --act-order with --format compressed-tensors no longer loads in "
                         "compressed-tensors >= 0.20 (actorder \"group\" was removed); use --format gptq");
  return Status::ok();
}

// The token samples a method runs on: from --dataset, else the dataset a --calib file names
// (checked against the hash it recorded, with the samples, length and seed it used).
Expected<std::vector<std::vector<int32_t>>> load_samples(const QuantizeOptions& o, const HfCheckpoint& ckpt,
                                                          const CalibrationData* calib,
                                                          nlohmann::ordered_json& record) {
  DatasetSpec spec = o.dataset;
  int64_t samples = o.samples, seq_len = o.seq_len;
  uint64_t seed = o.seed;
  if (spec.path.empty()) {
    const CalibrationManifest& m = calib->manifest();
    spec.path = m.dataset;
    spec.kind = m.dataset_kind == "jsonl" ? DatasetKind::kJsonl
                : m.dataset_kind == "chat" ? DatasetKind::kChat
                                           : DatasetKind::kText;
    if (!m.dataset_field.empty()) spec.field = m.dataset_field;
    samples = m.samples;
    seq_len = m.seq_len;
    seed = m.seed;
    const Expected<std::string> bytes = read_file_bytes(spec.path);
    if (!bytes)
      return Status::error(o.calib + ": the dataset it was made from, " + spec.path + ", cannot be read; give --dataset");
    if (hex64(fnv1a64(bytes->data(), bytes->size())) != m.dataset_sha)
      return Status::error(o.calib + ": " + spec.path + " changed since calibration (hash differs); give --dataset");
  }
  LLMQ_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer, load_tokenizer(o.model_dir));
  seq_len = std::min(seq_len, ckpt.config().max_position_embeddings);
  LLMQ_ASSIGN_OR_RETURN(CalibrationSamples data, load_dataset(spec, *tokenizer, o.model_dir, samples, seq_len, seed));
  if (!data.warning.empty() && o.progress) std::fprintf(stderr, "llmq: warning: %s\n", data.warning.c_str());
  record["dataset"] = spec.path;
  record["dataset_kind"] = dataset_kind_name(spec.kind);
  record["samples"] = data.samples.size();
  record["seq_len"] = seq_len;
  record["tokens"] = data.tokens();
  record["seed"] = seed;
  return std::move(data.samples);
}

nlohmann::ordered_json linear_record(const QuantReport& r, QuantMethod method) {
  nlohmann::ordered_json j;
  j["weight_rel_error"] = r.weight_rel_error;
  if (r.output_rel_error >= 0) j["output_rel_error"] = r.output_rel_error;
  if (method == QuantMethod::kGptq) {
    j["damp"] = r.damp;
    j["fallbacks"] = r.fallbacks;
  }
  return j;
}

Expected<LayerResult> run_method(QuantMethod method, LayerWeights& w, LayerContext& ctx) {
  switch (method) {
    case QuantMethod::kFp8:
    case QuantMethod::kRtnInt4:
    case QuantMethod::kRtnInt8: return quantize_layer_rtn(w, ctx);
    case QuantMethod::kInt8Sq: return quantize_layer_smoothquant(w, ctx);
    case QuantMethod::kGptq: return quantize_layer_gptq(w, ctx);
    case QuantMethod::kAwq: return quantize_layer_awq(w, ctx);
  }
  return Status::error("unknown method");
}

}  // namespace

Expected<QuantizeResult> quantize(const QuantizeOptions& o) {
  const auto t0 = Clock::now();
  LLMQ_ASSIGN_OR_RETURN(const QuantMethod method, parse_method(o.method));
  const MethodInfo& info = method_info(method);
  LLMQ_ASSIGN_OR_RETURN(const QuantFormat format, resolve_format(info, o.format));
  LLMQ_RETURN_IF_ERROR(validate_options(o, method));
  LLMQ_ASSIGN_OR_RETURN(const bool gpu, use_gpu(o, method));

  MethodSettings settings;
  settings.method = method;
  settings.format = format;
  settings.scale_dtype = format_scale_dtype(format);
  settings.group_size = o.group_size;
  settings.symmetric = method == QuantMethod::kAwq ? false : !o.asymmetric;
  settings.act_order = o.act_order;
  settings.mse_clip = o.mse_clip;
  settings.damp_percent = o.damp_percent;
  settings.sequential = o.sequential;
  settings.alpha = o.alpha;
  settings.awq_grid = o.awq_grid;
  settings.awq_clip = o.awq_clip;

  LLMQ_ASSIGN_OR_RETURN(HfCheckpoint ckpt, HfCheckpoint::open(o.model_dir));
  if (ckpt.quantization())
    return Status::error(o.model_dir + "/config.json: the checkpoint is already quantized (" +
                         std::string(quant_format_name(ckpt.quantization()->format)) + "); quantize the float one");
  const LlamaConfig& config = ckpt.config();
  LLMQ_ASSIGN_OR_RETURN(const ModulePlan plan, plan_modules(config, method, format, o.group_size, settings.symmetric,
                                                            o.ignore));

  QuantConfigInfo qinfo;
  qinfo.format = format;
  qinfo.group_size = is_int4_method(method) ? o.group_size : 0;
  qinfo.symmetric = settings.symmetric;
  qinfo.act_order = settings.act_order;
  qinfo.damp_percent = settings.damp_percent;
  qinfo.ignore = plan.ignored;
  // Created before the expensive part, so an existing output is refused at once.
  LLMQ_ASSIGN_OR_RETURN(QuantizedCheckpointWriter writer,
                        QuantizedCheckpointWriter::create(o.out, o.force, qinfo, o.max_shard_bytes));

  // Calibration.
  const auto t_calib = Clock::now();
  std::unique_ptr<CalibrationData> calib;
  nlohmann::ordered_json calib_record = nlohmann::ordered_json::object();
  if (!o.calib.empty()) {
    LLMQ_ASSIGN_OR_RETURN(CalibrationData data, load_calibration(o.calib, ckpt));
    calib = std::make_unique<CalibrationData>(std::move(data));
    calib_record["file"] = o.calib;
    calib_record["dataset_sha"] = calib->manifest().dataset_sha;
  }
  const bool gptq_from_file = method == QuantMethod::kGptq && !o.sequential;
  if (gptq_from_file && !(calib && calib->has_hessian()))
    return Status::error("gptq --no-sequential needs --calib FILE made with Hessians");
  const bool needs_samples = method == QuantMethod::kAwq || (method == QuantMethod::kGptq && o.sequential) ||
                             (method == QuantMethod::kInt8Sq && !calib);
  if (needs_samples && o.dataset.path.empty() && !calib)
    return Status::error("--method " + std::string(info.name) + " needs calibration: give --dataset FILE or --calib FILE");
  std::vector<Tensor> activations;
  std::unique_ptr<GpuQuantizeSession> session;  // the GPU path: activations live on the device
  if (needs_samples) {
    LLMQ_ASSIGN_OR_RETURN(const auto samples, load_samples(o, ckpt, calib.get(), calib_record));
    if (gpu) {
      LLMQ_ASSIGN_OR_RETURN(session, GpuQuantizeSession::create(ckpt, samples));
    } else {
      LLMQ_ASSIGN_OR_RETURN(activations, embed_samples(ckpt, samples));
    }
  } else if (gpu) {
    LLMQ_ASSIGN_OR_RETURN(session, GpuQuantizeSession::create(ckpt, {}));
  }
  std::vector<std::string> warnings = plan.warnings;
  if (!info.needs_calibration && (!o.dataset.path.empty() || !o.calib.empty()))
    warnings.push_back("--method " + std::string(info.name) + " uses no calibration; --dataset/--calib only feed the report");
  if (o.progress)
    for (const std::string& w : warnings) std::fprintf(stderr, "llmq: warning: %s\n", w.c_str());
  const double calib_seconds = seconds_since(t_calib);

  // The model, one layer at a time.
  // Embeddings, final norm and lm_head go from the mapped source to the output as they are
  // (or converted in row chunks), never as a float32 copy of a 128k x 4096 table.
  LLMQ_ASSIGN_OR_RETURN(TensorView embed, ckpt.float_view("model.embed_tokens.weight", {config.vocab_size, config.hidden_size}));
  LLMQ_RETURN_IF_ERROR(writer.add_float("model.embed_tokens.weight", embed));

  std::unique_ptr<Progress> progress;
  if (o.progress) progress = std::make_unique<Progress>("quantize " + std::string(info.name), config.num_hidden_layers, "layers");
  QuantizeResult result;
  nlohmann::ordered_json layer_records = nlohmann::ordered_json::array();
  nlohmann::ordered_json layer_seconds = nlohmann::ordered_json::array();
  // I/O overlaps the method: layer l + 1 loads and layer l - 1 is written on worker threads
  // while layer l is quantized (at 8B on the GPU, about 15 s of reading and 12 s of writing
  // that would otherwise add to the run). In memory at once: two layers' float weights and
  // one layer's output. The writer is only ever used by one task at a time.
  double load_seconds = 0, write_seconds = 0, deferred_seconds = 0, io_wait_seconds = 0;
  const auto load_async = [&ckpt](int64_t l) {
    return std::async(std::launch::async, [&ckpt, l] {
      const auto t = Clock::now();
      Expected<LayerWeights> w = load_layer_weights(ckpt, l);
      return std::make_pair(std::move(w), seconds_since(t));
    });
  };
  std::future<std::pair<Expected<LayerWeights>, double>> next_load = load_async(0);
  std::future<Status> pending_write;
  const auto finish_write = [&]() -> Status {
    if (!pending_write.valid()) return Status::ok();
    const auto t = Clock::now();
    Status s = pending_write.get();
    io_wait_seconds += seconds_since(t);
    return s;
  };
  uint64_t peak_anon = anon_rss_bytes();
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    const auto t_layer = Clock::now();
    auto [loaded, load_s] = next_load.get();
    io_wait_seconds += seconds_since(t_layer);
    load_seconds += load_s;
    LLMQ_ASSIGN_OR_RETURN(LayerWeights w, std::move(loaded));
    if (l + 1 < config.num_hidden_layers) next_load = load_async(l + 1);
    LayerContext ctx{config, plan, settings, activations, calib.get()};
    auto done = session ? session->run_layer(w, ctx) : run_method(method, w, ctx);
    if (!done) return done.status().with_context("layer " + std::to_string(l));
    peak_anon = std::max(peak_anon, anon_rss_bytes());  // float weights and their quantized form

    LLMQ_RETURN_IF_ERROR(finish_write().with_context("writing layer " + std::to_string(l - 1)));
    // The worker finishes the layer (a method's deferred host work), records it and writes it;
    // layer_records and the counts are its alone until the last write is joined.
    pending_write = std::async(std::launch::async, [&, l, w = std::move(w), r = std::move(*done)]() mutable -> Status {
      const auto t = Clock::now();
      if (r.deferred) {
        r.deferred(w, r);
        deferred_seconds += seconds_since(t);
      }
      nlohmann::ordered_json linears = nlohmann::ordered_json::object();
      for (int s = 0; s < kNumLinearSlots; ++s) {
        const LinearSlot slot = static_cast<LinearSlot>(s);
        if (r.quantized[static_cast<size_t>(s)]) {
          linears[std::string(linear_slot_name(slot))] = linear_record(r.reports[static_cast<size_t>(s)], method);
          ++result.quantized_linears;
          w.weight(slot) = Tensor();  // written in its quantized form: the float copy can go
        } else {
          ++result.ignored_linears;
        }
      }
      layer_records.push_back({{"layer", l}, {"linears", std::move(linears)}, {"method", std::move(r.notes)}});
      const auto t_write = Clock::now();
      Status s = write_layer(writer, l, w, r.quantized);
      write_seconds += seconds_since(t_write);
      return s;
    });
    layer_seconds.push_back(seconds_since(t_layer));
    if (progress) progress->update(l + 1);
  }
  LLMQ_RETURN_IF_ERROR(finish_write().with_context("writing layer " + std::to_string(config.num_hidden_layers - 1)));
  if (progress) progress->finish();

  LLMQ_ASSIGN_OR_RETURN(TensorView norm, ckpt.float_view("model.norm.weight", {config.hidden_size}));
  LLMQ_RETURN_IF_ERROR(writer.add_float("model.norm.weight", norm));
  if (!config.tie_word_embeddings) {
    LLMQ_ASSIGN_OR_RETURN(TensorView head, ckpt.float_view("lm_head.weight", {config.vocab_size, config.hidden_size}));
    LLMQ_RETURN_IF_ERROR(writer.add_float("lm_head.weight", head));
  }

  nlohmann::ordered_json report;
  report["llmq_report_version"] = 1;
  report["source"] = o.model_dir;
  report["method"] = info.name;
  report["format"] = quant_format_name(format);
  report["settings"] = {{"group_size", qinfo.group_size},
                        {"symmetric", settings.symmetric},
                        {"act_order", settings.act_order},
                        {"mse_clip", settings.mse_clip},
                        {"damp_percent", settings.damp_percent},
                        {"sequential", method == QuantMethod::kGptq ? nlohmann::ordered_json(o.sequential) : nullptr},
                        {"alpha", method == QuantMethod::kInt8Sq ? nlohmann::ordered_json(o.alpha) : nullptr},
                        {"awq_grid", method == QuantMethod::kAwq ? nlohmann::ordered_json(o.awq_grid) : nullptr},
                        {"awq_clip", method == QuantMethod::kAwq ? nlohmann::ordered_json(o.awq_clip) : nullptr},
                        {"scale_dtype", dtype_name(settings.scale_dtype)},
                        {"model_dtype", dtype_name(format_model_dtype(format))}};
  report["calibration"] = calib_record;
  report["quantized_linears"] = result.quantized_linears;
  report["unquantized"] = plan.ignored;
  report["warnings"] = warnings;
  report["layers"] = std::move(layer_records);
  result.device = session ? session->device_label() : "cpu";
  result.seconds = seconds_since(t0);
  // Wall-clock times and memory high-water marks: the only part of the output that differs
  // between identical runs. Stages: reading the layers (load), the method (quantize: on the
  // GPU path split further in "gpu"), writing them (write); reading and writing overlap the
  // method, so the stages add up to more than the total.
  // load_s, write_s and deferred_s (a method's host work finished on the write worker) are
  // the workers' time; io_wait_s the part of it the layer loop waited for.
  nlohmann::ordered_json stages = {{"load_s", load_seconds},
                                   {"write_s", write_seconds},
                                   {"deferred_s", deferred_seconds},
                                   {"io_wait_s", io_wait_seconds}};
  if (session) stages["gpu"] = session->stage_seconds();
  report["timings"] = {{"total_s", result.seconds},
                       {"calibration_s", calib_seconds},
                       {"layers_s", layer_seconds},
                       {"stages", std::move(stages)},
                       {"device", result.device},
                       {"peak_host_rss_bytes", peak_rss_bytes()},
                       {"peak_host_anon_bytes", std::max(peak_anon, anon_rss_bytes())},
                       {"peak_gpu_bytes", session ? session->peak_device_bytes() : 0}};
  LLMQ_RETURN_IF_ERROR(writer.finish(o.model_dir, report));
  result.out = o.out;
  result.warnings = std::move(warnings);
  return result;
}

Status run_quantize(const QuantizeOptions& opts) {
  LLMQ_ASSIGN_OR_RETURN(QuantizeResult r, quantize(opts));
  std::printf("wrote %s: %s, %lld linears quantized, %lld left unquantized (+ lm_head), %.1f s on %s\n",
              r.out.c_str(), opts.method.c_str(), static_cast<long long>(r.quantized_linears),
              static_cast<long long>(r.ignored_linears), r.seconds, r.device.c_str());
  return Status::ok();
}

}  // namespace llmq
