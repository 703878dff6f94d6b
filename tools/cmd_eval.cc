// llmq eval: perplexity on a text file and/or GSM8K accuracy (lm-eval's gsm8k /
// gsm8k_cot_llama), one table on stdout and one combined JSON record.
#include <cctype>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "core/output_dir.h"
#include "eval/gsm8k.h"
#include "eval/perplexity.h"
#include "formats/checkpoint.h"
#include "formats/tokenizer.h"
#include "model/llama.h"
#include "runner/device.h"
#include "tools/commands.h"

namespace llmq::cli {

namespace {

struct EvalArgs {
  std::string model;
  std::string ppl_file;
  int64_t seq_len = 0;  // 0: min(2048, max_position_embeddings)
  int64_t limit_tokens = 0;
  std::string precision = "f32";
  std::string json_out;
  bool force = false;
  // GSM8K; defaults from Gsm8kConfig.
  std::string gsm8k_file;
  std::string train_file;  // empty: train.jsonl beside the --gsm8k file
  std::string style = std::string(gsm8k_style_name(Gsm8kConfig{}.style));
  Gsm8kConfig gsm;
  std::string samples_out;
};

Expected<std::string> read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::error(path + ": cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Refuses an existing output before hours of work, not after (write_file_atomic checks again).
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

Status check_output_free(const std::string& path, bool force) {
  if (!path.empty() && !force && std::filesystem::exists(path))
    return Status::error(path + ": exists (use --force to replace it)");
  return Status::ok();
}

Status run_eval(const EvalArgs& a) {
  if (a.ppl_file.empty() && a.gsm8k_file.empty())
    return Status::error("eval: nothing to do (give --ppl FILE and/or --gsm8k FILE)");
  if (!a.samples_out.empty() && a.gsm8k_file.empty()) return Status::error("--samples-out needs --gsm8k");
  LLMQ_RETURN_IF_ERROR(check_output_free(a.json_out, a.force));
  LLMQ_RETURN_IF_ERROR(check_output_free(a.samples_out, a.force));
  Precision precision;
  if (a.precision == "f32") {
    precision = Precision::kFloat32;
  } else if (a.precision == "bf16") {
    precision = Precision::kBFloat16;
  } else {
    return Status::error("--precision must be f32 or bf16, not '" + a.precision + "'");
  }
  // Inputs that can be wrong are read before the model, so their errors come at once.
  std::optional<Gsm8kStyle> style;
  std::vector<Gsm8kDoc> gsm_test, gsm_train;
  if (!a.gsm8k_file.empty()) {
    LLMQ_ASSIGN_OR_RETURN(style, parse_gsm8k_style(a.style));
    LLMQ_ASSIGN_OR_RETURN(gsm_test, load_gsm8k_jsonl(a.gsm8k_file));
    const int64_t k = a.gsm.fewshot >= 0 ? a.gsm.fewshot : gsm8k_task_spec(*style).num_fewshot;
    if (*style == Gsm8kStyle::kGsm8k && k > 0) {
      std::string train = a.train_file;
      if (train.empty()) {
        train = (std::filesystem::path(a.gsm8k_file).parent_path() / "train.jsonl").string();
        if (!std::filesystem::exists(train))
          return Status::error(a.gsm8k_file + ": no --train given and no train.jsonl beside it (the gsm8k style "
                               "draws its few-shot exemplars from the train split)");
      }
      LLMQ_ASSIGN_OR_RETURN(gsm_train, load_gsm8k_jsonl(train));
    }
  }
  std::string ppl_text;
  if (!a.ppl_file.empty()) {
    LLMQ_ASSIGN_OR_RETURN(ppl_text, read_text(a.ppl_file));
  }

  const auto t0 = std::chrono::steady_clock::now();
  LLMQ_ASSIGN_OR_RETURN(HfCheckpoint ckpt, HfCheckpoint::open(a.model));
  LLMQ_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer, load_tokenizer(a.model));
  LLMQ_ASSIGN_OR_RETURN(LlamaModel model, LlamaModel::load(ckpt));
  const GpuInfo gpu = query_gpu();
  const std::string format = checkpoint_format_label(ckpt);
  nlohmann::ordered_json j = {{"model", a.model},
                              {"format", format},
                              {"device", "cpu"},
                              {"precision", precision_name(precision)}};

  if (!a.ppl_file.empty()) {
    const auto tp = std::chrono::steady_clock::now();
    std::vector<int32_t> ids = tokenizer->encode(ppl_text);
    if (a.limit_tokens > 0 && static_cast<int64_t>(ids.size()) > a.limit_tokens) ids.resize(a.limit_tokens);
    PerplexityConfig pc;
    pc.window = a.seq_len;
    pc.precision = precision;
    auto result = perplexity(model, ids, pc);
    if (!result) return result.status().with_context(a.ppl_file);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - tp).count();
    std::printf("%-28s %-10s %-9s %9s %8s %7s %10s %8s\n", "model", "format", "precision", "tokens", "windows",
                "seq", "ppl", "seconds");
    std::printf("%-28s %-10s %-9s %9lld %8lld %7lld %10.4f %8.1f\n", a.model.c_str(), format.c_str(),
                std::string(precision_name(precision)).c_str(), (long long)ids.size(), (long long)result->windows,
                (long long)result->window, result->ppl, seconds);
    j["perplexity"] = {{"file", a.ppl_file},
                       {"tokens", ids.size()},
                       {"window", result->window},
                       {"stride", result->stride},
                       {"windows", result->windows},
                       {"scored_tokens", result->scored_tokens},
                       {"mean_nll", result->mean_nll},
                       {"ppl", result->ppl},
                       {"seconds", seconds}};
  }

  std::string samples_jsonl;
  if (style) {
    const auto tg = std::chrono::steady_clock::now();
    Gsm8kConfig gc = a.gsm;
    gc.style = *style;
    gc.precision = precision;
    gc.chat_template = detect_chat_template(a.model);
    auto result = evaluate_gsm8k(model, *tokenizer, gsm_test, gsm_train, gc);
    if (!result) return result.status().with_context(a.gsm8k_file);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - tg).count();
    const Gsm8kTaskSpec& spec = gsm8k_task_spec(*style);
    std::printf("%-28s %-16s %6s %6s %8s %10s %10s %8s\n", "model", "task", "docs", "shots", "max-gen", "strict",
                "flexible", "seconds");
    std::printf("%-28s %-16s %6zu %6lld %8lld %10.4f %10.4f %8.1f\n", a.model.c_str(), spec.task.c_str(),
                result->samples.size(), (long long)result->fewshot, (long long)result->max_gen_toks,
                result->metrics.at(0).exact_match, result->metrics.at(1).exact_match, seconds);
    nlohmann::ordered_json r = gsm8k_results_json(*result);
    for (auto it = r.begin(); it != r.end(); ++it) j[it.key()] = it.value();
    j["gsm8k_file"] = a.gsm8k_file;
    j["gsm8k_seconds"] = seconds;
    samples_jsonl = gsm8k_samples_jsonl(*result);
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  j["seconds"] = seconds;
  std::printf("device: CPU reference forward (%s)\n", gpu.available ? "GPU runner not built yet" : gpu.why_not.c_str());
  if (!a.samples_out.empty()) LLMQ_RETURN_IF_ERROR(write_file_atomic(a.samples_out, samples_jsonl, a.force));
  if (!a.json_out.empty()) LLMQ_RETURN_IF_ERROR(write_file_atomic(a.json_out, j.dump(2) + "\n", a.force));
  return Status::ok();
}

}  // namespace

void add_eval_command(CLI::App& app, CommandRunner& run) {
  auto args = std::make_shared<EvalArgs>();
  CLI::App* sub = app.add_subcommand("eval", "Evaluate a checkpoint: perplexity on a text file and/or GSM8K");
  sub->add_option("--model", args->model, "Checkpoint directory")->required();
  sub->add_option("--ppl", args->ppl_file, "Text file: perplexity (whole text with BOS, windows of --seq-len)");
  sub->add_option("--gsm8k", args->gsm8k_file, "GSM8K test JSONL ({question, answer} per line): lm-eval-style accuracy");
  sub->add_option("--train", args->train_file, "GSM8K train JSONL for the few-shot exemplars (default: train.jsonl beside --gsm8k)");
  sub->add_option("--style", args->style, "gsm8k (lm-eval gsm8k, 5-shot) or cot-llama (gsm8k_cot_llama, 8-shot chat CoT)")
      ->capture_default_str();
  sub->add_option("--fewshot", args->gsm.fewshot, "Few-shot exemplars K (-1: the style's default, 5 / 8)")->capture_default_str();
  sub->add_option("--limit", args->gsm.limit, "GSM8K: only the first N test documents (0: all)")->capture_default_str();
  sub->add_option("--batch", args->gsm.batch, "Generation batch size (GPU runner; the CPU path runs one document per thread)")
      ->capture_default_str();
  sub->add_option("--max-gen-toks", args->gsm.max_gen_toks, "Most tokens generated per document")->capture_default_str();
  sub->add_option("--seed", args->gsm.seed, "Few-shot sampling seed (lm-eval's fewshot_random_seed)")->capture_default_str();
  sub->add_option("--samples-out", args->samples_out, "Write one JSON line per GSM8K document here");
  sub->add_option("--seq-len", args->seq_len, "Window length (default min(2048, max_position_embeddings))");
  sub->add_option("--limit-tokens", args->limit_tokens, "Use only the first N tokens");
  sub->add_option("--precision", args->precision, "f32, or bf16 (emulates bf16 activations)")->capture_default_str();
  sub->add_option("--json", args->json_out, "Write the result as JSON here");
  sub->add_flag("--force", args->force, "Replace existing --json / --samples-out files");
  sub->callback([args, &run] { run = [args] { return run_eval(*args); }; });
}

}  // namespace llmq::cli
