// llmq eval: the runner's benchmark, perplexity on a text file and/or GSM8K accuracy (lm-eval's
// gsm8k / gsm8k_cot_llama) of one or more checkpoints: tables on stdout and one combined JSON
// record per checkpoint (an array of them for several), the input of `llmq report`. With
// several checkpoints it ends with the report's comparison table.
//
// Perplexity and GSM8K run on the CUDA runner (runner/eval_gpu.h, bf16) when a GPU is present
// and the checkpoint is one the runner holds as stored, else on the CPU reference forward
// (eval/, float32 or bf16); --device forces one. The record and the tables name the device.
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <unistd.h>

#include "core/output_dir.h"
#include "core/stopwatch.h"
#include "eval/gsm8k.h"
#include "eval/perplexity.h"
#include "eval/report.h"
#include "formats/checkpoint.h"
#include "formats/tokenizer.h"
#include "model/llama.h"
#include "runner/bench.h"
#include "runner/device.h"
#include "runner/eval_gpu.h"
#include "tools/commands.h"

namespace llmq::cli {

namespace {

struct EvalArgs {
  std::vector<std::string> models;
  std::string ppl_file;
  int64_t seq_len = 0;  // 0: min(2048, max_position_embeddings)
  int64_t limit_tokens = 0;
  std::string precision;       // "": f32 on the CPU, bf16 on the GPU runner (which computes in bf16)
  std::string device = "auto";  // where perplexity and GSM8K run: cpu, gpu or auto
  std::string json_out;
  std::string logits_out;  // --logits-out: the first perplexity window's logits (safetensors)
  bool force = false;
  // GSM8K; defaults from Gsm8kConfig.
  std::string gsm8k_file;
  std::string train_file;  // empty: train.jsonl beside the --gsm8k file
  std::string style = std::string(gsm8k_style_name(Gsm8kConfig{}.style));
  Gsm8kConfig gsm;
  std::string samples_out;
  // --bench; defaults from BenchOptions (runner/bench.h).
  bool bench = false;
  BenchOptions bench_options;
};

Expected<std::string> read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::error(path + ": cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// What the checkpoint holds, for the results table: "bf16", "fp8", "int8", "awq-g128",
// "gptq-g128", "w4-g128" (compressed-tensors pack-quantized).
std::string checkpoint_format_label(const HfCheckpoint& ckpt) {
  const auto q = ckpt.quantization();
  if (!q) {
    const auto embed = ckpt.embed_tokens();
    std::string name = embed ? std::string(dtype_name(embed->dtype)) : "float";
    for (char& ch : name) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    return name;
  }
  const std::string g = "-g" + std::to_string(q->group_size);
  switch (q->format) {
    case QuantFormat::kCtFloat: return "fp8";
    case QuantFormat::kCtInt: return "int8";
    case QuantFormat::kCtPack: return "w4" + g;
    case QuantFormat::kAwqGemm: return "awq" + g;
    case QuantFormat::kGptqV1: return "gptq" + g;
  }
  return "?";
}

// Refuses an existing output before hours of work, not after (write_file_atomic checks again).
Status check_output_free(const std::string& path, bool force) {
  if (!path.empty() && !force && std::filesystem::exists(path))
    return Status::error(path + ": exists (use --force to replace it)");
  return Status::ok();
}

// Tensor bytes of the checkpoint files: the "weights" column of the report, on every machine.
uint64_t checkpoint_tensor_bytes(const HfCheckpoint& ckpt) {
  uint64_t bytes = 0;
  for (const SafetensorsFile& f : ckpt.tensors().files())
    for (const SafetensorsEntry& e : f.entries()) bytes += e.end - e.begin;
  return bytes;
}

Expected<std::optional<Precision>> parse_precision(const std::string& name) {
  if (name.empty()) return std::optional<Precision>();
  if (name == "f32") return std::optional<Precision>(Precision::kFloat32);
  if (name == "bf16") return std::optional<Precision>(Precision::kBFloat16);
  return Status::error("--precision must be f32 or bf16, not '" + name + "'");
}

// Option combinations, checked before anything is read.
Status check_args(const EvalArgs& a) {
  if (a.ppl_file.empty() && a.gsm8k_file.empty() && !a.bench)
    return Status::error("eval: nothing to do (give --ppl FILE, --gsm8k FILE and/or --bench)");
  if (!a.samples_out.empty() && a.gsm8k_file.empty()) return Status::error("--samples-out needs --gsm8k");
  if (!a.samples_out.empty() && a.models.size() > 1) return Status::error("--samples-out needs a single --model");
  if (!a.logits_out.empty() && a.ppl_file.empty()) return Status::error("--logits-out needs --ppl");
  if (!a.logits_out.empty() && a.models.size() > 1) return Status::error("--logits-out needs a single --model");
  if (a.device != "auto" && a.device != "cpu" && a.device != "gpu")
    return Status::error("--device must be cpu, gpu or auto, not '" + a.device + "'");
  if (a.device == "gpu" && a.precision == "f32")
    return Status::error("--precision f32 needs --device cpu or auto: the GPU runner computes in bf16");
  if (a.device == "gpu" && !a.logits_out.empty())
    return Status::error("--logits-out writes the CPU reference forward's logits: it needs --device cpu or auto");
  if (a.bench) {
    const BenchOptions& b = a.bench_options;
    if (b.batches.empty()) return Status::error("--batches: give at least one batch size");
    for (int batch : b.batches)
      if (batch < 1) return Status::error("--batches: batch sizes must be >= 1, not " + std::to_string(batch));
    if (b.input_len < 1) return Status::error("--bench-in must be >= 1");
    if (b.output_len < 2) return Status::error("--bench-out must be >= 2 (one prefill token plus decode steps)");
  }
  LLMQ_RETURN_IF_ERROR(check_output_free(a.json_out, a.force));
  LLMQ_RETURN_IF_ERROR(check_output_free(a.logits_out, a.force));
  return check_output_free(a.samples_out, a.force);
}

// What every checkpoint is evaluated on, read once before any model.
struct EvalInputs {
  std::optional<Precision> precision;  // --precision; empty: the device's own (f32 CPU, bf16 GPU)
  std::optional<Gsm8kStyle> style;  // set when GSM8K runs
  std::vector<Gsm8kDoc> gsm_test, gsm_train;
  std::string ppl_text;
};

// Inputs that can be wrong are read before the models, so their errors come at once.
Expected<EvalInputs> read_inputs(const EvalArgs& a) {
  EvalInputs in;
  LLMQ_ASSIGN_OR_RETURN(in.precision, parse_precision(a.precision));
  if (!a.gsm8k_file.empty()) {
    LLMQ_ASSIGN_OR_RETURN(in.style, parse_gsm8k_style(a.style));
    LLMQ_ASSIGN_OR_RETURN(in.gsm_test, load_gsm8k_jsonl(a.gsm8k_file));
    const int64_t k = a.gsm.fewshot >= 0 ? a.gsm.fewshot : gsm8k_task_spec(*in.style).num_fewshot;
    if (*in.style == Gsm8kStyle::kGsm8k && k > 0) {
      std::string train = a.train_file;
      if (train.empty()) {
        train = (std::filesystem::path(a.gsm8k_file).parent_path() / "train.jsonl").string();
        if (!std::filesystem::exists(train))
          return Status::error(a.gsm8k_file + ": no --train given and no train.jsonl beside it (the gsm8k style "
                               "draws its few-shot exemplars from the train split)");
      }
      LLMQ_ASSIGN_OR_RETURN(in.gsm_train, load_gsm8k_jsonl(train));
    }
  }
  if (!a.ppl_file.empty()) {
    LLMQ_ASSIGN_OR_RETURN(in.ppl_text, read_text(a.ppl_file));
  }
  return in;
}

// Where perplexity and GSM8K of one checkpoint run, and in what arithmetic.
struct EvalDevice {
  bool gpu = false;
  std::string label = "cpu";  // "cpu" or gpu_device_label(), e.g. "cuda:NVIDIA H200"
  Precision precision = Precision::kFloat32;
  std::string why;  // for the device line: why this device
};

// --device gpu takes the runner or fails; --device cpu the CPU reference forward. auto takes
// the runner where there is a GPU, unless the CPU is asked for by --precision f32 (the runner
// computes in bf16) or --logits-out (the CPU forward's logits), or the checkpoint's float
// tensors are not BF16 (the runner would round F32 / F16 weights to bf16, another model).
Expected<EvalDevice> choose_device(const HfCheckpoint& ckpt, const EvalArgs& a, const EvalInputs& in) {
  EvalDevice d;
  const auto cpu = [&](std::string why) {
    d.precision = in.precision.value_or(Precision::kFloat32);
    d.why = std::move(why);
    return d;
  };
  if (a.device == "cpu") return cpu("--device cpu");
  const GpuInfo gpu = query_gpu();
  if (a.device == "gpu" && !gpu.available) return Status::error("--device gpu: " + gpu.why_not);
  if (a.device == "auto") {
    if (!gpu.available) return cpu(gpu.why_not);
    if (in.precision == Precision::kFloat32) return cpu("--precision f32: the GPU runner computes in bf16");
    if (!a.logits_out.empty()) return cpu("--logits-out: the CPU reference forward's logits");
    const auto embed = ckpt.embed_tokens();
    if (embed && embed->dtype != DType::kBF16)
      return cpu(std::string(dtype_name(embed->dtype)) + " weights: the GPU runner would round them to bf16");
  }
  d.gpu = true;
  d.label = gpu_device_label();
  d.precision = Precision::kBFloat16;
  d.why = a.device == "gpu" ? "--device gpu" : "GPU present";
  return d;
}

// The runner's latency / throughput sweep (runner/bench.h); its JSON goes in as "bench".
Status add_bench(const std::string& model_dir, const EvalArgs& a, nlohmann::ordered_json& j) {
  BenchOptions options = a.bench_options;
  options.model_dir = model_dir;
  Expected<BenchResult> result = run_bench(options);
  if (!result) {
    // Name the checkpoint unless the runner's message already does (a load error).
    const std::string& message = result.status().message();
    return message.find(model_dir) == std::string::npos ? result.status().with_context(model_dir) : result.status();
  }
  std::printf("%s", bench_table(*result).c_str());
  j["bench"] = nlohmann::ordered_json::parse(bench_json(*result));
  return Status::ok();
}

// --logits-out: float32 logits [T, vocab] of the first perplexity window (T = min(window,
// tokens)) and its ids, "logits" F32 and "input_ids" I64 in one safetensors file, to compare this
// forward with another implementation's (scripts/ecosystem/check_loaders.py).
Status write_logits(const std::string& path, const LlamaModel& model, const std::vector<int32_t>& ids, int64_t window,
                    Precision precision, bool force) {
  const std::vector<int32_t> first(ids.begin(), ids.begin() + std::min<int64_t>(window, ids.size()));
  KvCache cache = model.make_cache(static_cast<int64_t>(first.size()));
  ForwardOptions opt;
  opt.precision = precision;
  SafetensorsWriter w;
  w.add("logits", model.prefill(first, cache, LogitsFor::kAll, opt));  // [T, vocab]
  Tensor tokens(DType::kI64, {static_cast<int64_t>(first.size())});  // [T]
  for (size_t t = 0; t < first.size(); ++t) tokens.data<int64_t>()[t] = first[t];
  w.add("input_ids", std::move(tokens));
  if (!force && std::filesystem::exists(path)) return Status::error(path + ": exists (use --force to replace it)");
  const std::string tmp = path + ".tmp-" + std::to_string(::getpid());
  Status written = w.write(tmp);
  std::error_code ec;
  if (written.is_ok()) std::filesystem::rename(tmp, path, ec);
  if (!written.is_ok() || ec) {
    std::filesystem::remove(tmp, ec);
    return written.is_ok() ? Status::error(path + ": cannot move into place") : written;
  }
  return Status::ok();
}

// model: the CPU reference forward, null when the device is the GPU.
Status add_perplexity(const std::string& model_dir, const LlamaModel* model, const Tokenizer& tokenizer,
                      const EvalArgs& a, const EvalInputs& in, const EvalDevice& device, const std::string& format,
                      nlohmann::ordered_json& j) {
  const auto t0 = Clock::now();
  std::vector<int32_t> ids = tokenizer.encode(in.ppl_text);
  if (a.limit_tokens > 0 && static_cast<int64_t>(ids.size()) > a.limit_tokens) ids.resize(a.limit_tokens);
  PerplexityConfig pc;
  pc.window = a.seq_len;
  pc.precision = device.precision;
  const Expected<PerplexityResult> result = device.gpu ? perplexity_gpu(model_dir, ids, pc) : perplexity(*model, ids, pc);
  if (!result) return result.status().with_context(a.ppl_file);
  const double seconds = seconds_since(t0);
  std::printf("%-28s %-10s %-9s %9s %8s %7s %10s %8s  %s\n", "model", "format", "precision", "tokens", "windows", "seq",
              "ppl", "seconds", "device");
  std::printf("%-28s %-10s %-9s %9lld %8lld %7lld %10.4f %8.1f  %s\n", model_dir.c_str(), format.c_str(),
              std::string(precision_name(device.precision)).c_str(), (long long)ids.size(), (long long)result->windows,
              (long long)result->window, result->ppl, seconds, device.label.c_str());
  j["perplexity"] = {{"file", a.ppl_file},
                     {"tokens", ids.size()},
                     {"window", result->window},
                     {"stride", result->stride},
                     {"windows", result->windows},
                     {"scored_tokens", result->scored_tokens},
                     {"mean_nll", result->mean_nll},
                     {"ppl", result->ppl},
                     {"device", device.label},
                     {"seconds", seconds}};
  if (!a.logits_out.empty())  // choose_device keeps --logits-out on the CPU
    LLMQ_RETURN_IF_ERROR(write_logits(a.logits_out, *model, ids, result->window, device.precision, a.force));
  return Status::ok();
}

// GSM8K's lm-eval results merged into the record; returns the per-sample log.
Expected<std::string> add_gsm8k(const std::string& model_dir, const LlamaModel* model, const Tokenizer& tokenizer,
                                const EvalArgs& a, const EvalInputs& in, const EvalDevice& device,
                                nlohmann::ordered_json& j) {
  const auto t0 = Clock::now();
  Gsm8kConfig gc = a.gsm;
  gc.style = *in.style;
  gc.precision = device.precision;
  gc.chat_template = detect_chat_template(model_dir);
  const Expected<Gsm8kResult> result = device.gpu ? evaluate_gsm8k_gpu(model_dir, tokenizer, in.gsm_test, in.gsm_train, gc)
                                                  : evaluate_gsm8k(*model, tokenizer, in.gsm_test, in.gsm_train, gc);
  if (!result) return result.status().with_context(a.gsm8k_file);
  const double seconds = seconds_since(t0);
  const Gsm8kTaskSpec& spec = gsm8k_task_spec(*in.style);
  std::printf("%-28s %-16s %6s %6s %8s %10s %10s %8s  %s\n", "model", "task", "docs", "shots", "max-gen", "strict",
              "flexible", "seconds", "device");
  std::printf("%-28s %-16s %6zu %6lld %8lld %10.4f %10.4f %8.1f  %s\n", model_dir.c_str(), spec.task.c_str(),
              result->samples.size(), (long long)result->fewshot, (long long)result->max_gen_toks,
              result->metrics.at(0).exact_match, result->metrics.at(1).exact_match, seconds, device.label.c_str());
  nlohmann::ordered_json r = gsm8k_results_json(*result);
  for (auto it = r.begin(); it != r.end(); ++it) j[it.key()] = it.value();
  j["gsm8k_file"] = a.gsm8k_file;
  j["gsm8k_device"] = device.label;
  j["gsm8k_seconds"] = seconds;
  return gsm8k_samples_jsonl(*result);
}

struct EvalOutput {
  nlohmann::ordered_json record;
  std::string samples_jsonl;  // GSM8K's per-sample log ("" without --gsm8k)
};

// One checkpoint: the benchmark first (it fails at once where there is no GPU), then
// perplexity and GSM8K on the device choose_device picks (the CPU reference forward is loaded
// only when the CPU runs one of them).
Expected<EvalOutput> eval_checkpoint(const HfCheckpoint& ckpt, const EvalArgs& a, const EvalInputs& in) {
  const auto t0 = Clock::now();
  const std::string& model_dir = ckpt.dir();
  const std::string format = checkpoint_format_label(ckpt);
  const bool forward = !a.ppl_file.empty() || in.style.has_value();
  EvalDevice device;
  if (forward) {
    LLMQ_ASSIGN_OR_RETURN(device, choose_device(ckpt, a, in));
  }
  EvalOutput out;
  nlohmann::ordered_json& j = out.record;
  j = {{"model", model_dir},
       {"format", format},
       {"device", device.label},  // of perplexity and GSM8K ("cpu" when neither runs)
       {"precision", precision_name(device.precision)},
       {"weight_bytes", checkpoint_tensor_bytes(ckpt)}};
  if (a.bench) LLMQ_RETURN_IF_ERROR(add_bench(model_dir, a, j));
  if (forward) {
    LLMQ_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer, load_tokenizer(model_dir));
    std::optional<LlamaModel> model;  // the CPU reference forward, only where the CPU runs
    if (!device.gpu) {
      LLMQ_ASSIGN_OR_RETURN(LlamaModel m, LlamaModel::load(ckpt));
      model.emplace(std::move(m));
    }
    const LlamaModel* cpu_model = model ? &*model : nullptr;
    if (!a.ppl_file.empty())
      LLMQ_RETURN_IF_ERROR(add_perplexity(model_dir, cpu_model, *tokenizer, a, in, device, format, j));
    if (in.style) {
      LLMQ_ASSIGN_OR_RETURN(out.samples_jsonl, add_gsm8k(model_dir, cpu_model, *tokenizer, a, in, device, j));
    }
    // After the tables, so that a failure stays a one-line error.
    std::printf("device: %s (%s, %s; %s)\n", device.label.c_str(), device.gpu ? "GPU runner" : "CPU reference forward",
                std::string(precision_name(device.precision)).c_str(), device.why.c_str());
  }
  j["seconds"] = seconds_since(t0);
  return out;
}

// With several checkpoints, the comparison table of `llmq report` over their records.
Status print_comparison(const std::vector<EvalOutput>& outputs) {
  std::vector<EvalSummary> rows;
  for (const EvalOutput& o : outputs) {
    LLMQ_ASSIGN_OR_RETURN(std::vector<EvalSummary> r, parse_eval_json(o.record, o.record.value("model", "")));
    rows.push_back(std::move(r.at(0)));
  }
  std::printf("\n%s", report_tables_markdown(build_report(std::move(rows))).c_str());
  return Status::ok();
}

Status run_eval(const EvalArgs& a) {
  LLMQ_RETURN_IF_ERROR(check_args(a));
  LLMQ_ASSIGN_OR_RETURN(const EvalInputs inputs, read_inputs(a));
  // Every checkpoint is opened (and so checked) before hours of work on the first.
  std::vector<HfCheckpoint> checkpoints;
  for (const std::string& dir : a.models) {
    LLMQ_ASSIGN_OR_RETURN(HfCheckpoint ckpt, HfCheckpoint::open(dir));
    checkpoints.push_back(std::move(ckpt));
  }
  std::vector<EvalOutput> outputs;
  for (const HfCheckpoint& ckpt : checkpoints) {
    LLMQ_ASSIGN_OR_RETURN(EvalOutput out, eval_checkpoint(ckpt, a, inputs));
    outputs.push_back(std::move(out));
  }
  if (outputs.size() > 1) LLMQ_RETURN_IF_ERROR(print_comparison(outputs));
  if (!a.samples_out.empty()) LLMQ_RETURN_IF_ERROR(write_file_atomic(a.samples_out, outputs[0].samples_jsonl, a.force));
  if (!a.json_out.empty()) {
    // One record for one checkpoint (as before), an array for several; `llmq report` reads both.
    nlohmann::ordered_json j = nlohmann::ordered_json::array();
    for (const EvalOutput& o : outputs) j.push_back(o.record);
    if (outputs.size() == 1) j = outputs[0].record;
    LLMQ_RETURN_IF_ERROR(write_file_atomic(a.json_out, j.dump(2) + "\n", a.force));
  }
  return Status::ok();
}

}  // namespace

void add_eval_command(CLI::App& app, CommandRunner& run) {
  auto args = std::make_shared<EvalArgs>();
  CLI::App* sub = app.add_subcommand(
      "eval", "Evaluate checkpoints: runner benchmark, perplexity on a text file and/or GSM8K (several --model: "
              "and a comparison table)");
  sub->add_option("--model", args->models, "Checkpoint directory (repeat for several)")->required();
  CLI::Option* bench = sub->add_flag(
      "--bench", args->bench, "Benchmark the CUDA runner: latency and throughput per batch size, weight and peak GPU memory");
  sub->add_option("--batches", args->bench_options.batches, "Benchmark batch sizes (comma-separated)")
      ->delimiter(',')
      ->capture_default_str()
      ->needs(bench);
  sub->add_option("--bench-in", args->bench_options.input_len, "Benchmark prompt tokens per sequence")
      ->capture_default_str()
      ->needs(bench);
  sub->add_option("--bench-out", args->bench_options.output_len, "Benchmark generated tokens per sequence")
      ->capture_default_str()
      ->needs(bench);
  sub->add_option("--ppl", args->ppl_file, "Text file: perplexity (whole text with BOS, windows of --seq-len)");
  sub->add_option("--gsm8k", args->gsm8k_file, "GSM8K test JSONL ({question, answer} per line): lm-eval-style accuracy");
  sub->add_option("--train", args->train_file, "GSM8K train JSONL for the few-shot exemplars (default: train.jsonl beside --gsm8k)");
  sub->add_option("--style", args->style, "gsm8k (lm-eval gsm8k, 5-shot) or cot-llama (gsm8k_cot_llama, 8-shot chat CoT)")
      ->capture_default_str();
  sub->add_option("--fewshot", args->gsm.fewshot, "Few-shot exemplars K (-1: the style's default, 5 / 8)")->capture_default_str();
  sub->add_option("--limit", args->gsm.limit, "GSM8K: only the first N test documents (0: all)")->capture_default_str();
  sub->add_option("--batch", args->gsm.batch,
                  "GSM8K documents per generation batch on the GPU runner (one KV-cache slot each; the CPU path runs "
                  "one document per thread)")
      ->capture_default_str();
  sub->add_option("--max-gen-toks", args->gsm.max_gen_toks, "Most tokens generated per document")->capture_default_str();
  sub->add_option("--seed", args->gsm.seed, "Few-shot sampling seed (lm-eval's fewshot_random_seed)")->capture_default_str();
  sub->add_option("--samples-out", args->samples_out, "Write one JSON line per GSM8K document here");
  sub->add_option("--seq-len", args->seq_len, "Window length (default min(2048, max_position_embeddings))");
  sub->add_option("--limit-tokens", args->limit_tokens, "Use only the first N tokens");
  sub->add_option("--device", args->device,
                  "Where perplexity and GSM8K run: gpu (the CUDA runner, bf16), cpu (the reference forward) or auto "
                  "(gpu when there is one and the checkpoint's float tensors are BF16, unless --precision f32 or "
                  "--logits-out ask for the CPU)")
      ->capture_default_str();
  sub->add_option("--precision", args->precision,
                  "f32, or bf16 (emulates bf16 activations); default f32 on the CPU, bf16 on the GPU runner (its only "
                  "arithmetic)");
  sub->add_option("--logits-out", args->logits_out,
                  "With --ppl: write the float32 logits [T, vocab] of the first window (and its input_ids) as safetensors");
  sub->add_option("--json", args->json_out, "Write the result as JSON here (an array of records for several --model)");
  sub->add_flag("--force", args->force, "Replace existing --json / --samples-out / --logits-out files");
  sub->callback([args, &run] { run = [args] { return run_eval(*args); }; });
}

}  // namespace llmq::cli
