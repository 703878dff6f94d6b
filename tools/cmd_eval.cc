#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/output_dir.h"
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
};

Expected<std::string> read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::error(path + ": cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

Status run_eval(const EvalArgs& a) {
  if (a.ppl_file.empty()) return Status::error("eval: nothing to do (give --ppl FILE)");
  Precision precision;
  if (a.precision == "f32") {
    precision = Precision::kFloat32;
  } else if (a.precision == "bf16") {
    precision = Precision::kBFloat16;
  } else {
    return Status::error("--precision must be f32 or bf16, not '" + a.precision + "'");
  }
  const auto t0 = std::chrono::steady_clock::now();
  LLMQ_ASSIGN_OR_RETURN(HfCheckpoint ckpt, HfCheckpoint::open(a.model));
  LLMQ_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer, load_tokenizer(a.model));
  LLMQ_ASSIGN_OR_RETURN(LlamaModel model, LlamaModel::load(ckpt));
  LLMQ_ASSIGN_OR_RETURN(std::string text, read_text(a.ppl_file));
  std::vector<int32_t> ids = tokenizer->encode(text);
  if (a.limit_tokens > 0 && static_cast<int64_t>(ids.size()) > a.limit_tokens) ids.resize(a.limit_tokens);
  PerplexityConfig pc;
  pc.window = a.seq_len;
  pc.precision = precision;
  auto result = perplexity(model, ids, pc);
  if (!result) return result.status().with_context(a.ppl_file);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const GpuInfo gpu = query_gpu();

  std::printf("%-28s %-10s %-9s %9s %8s %7s %10s %8s\n", "model", "format", "precision", "tokens", "windows",
              "seq", "ppl", "seconds");
  std::printf("%-28s %-10s %-9s %9lld %8lld %7lld %10.4f %8.1f\n", a.model.c_str(), "bf16",
              std::string(precision_name(precision)).c_str(), (long long)ids.size(), (long long)result->windows,
              (long long)result->window, result->ppl, seconds);
  std::printf("device: CPU reference forward (%s)\n", gpu.available ? "GPU runner not built yet" : gpu.why_not.c_str());
  if (!a.json_out.empty()) {
    nlohmann::ordered_json j = {{"model", a.model},
                                {"format", "bf16"},
                                {"device", "cpu"},
                                {"precision", precision_name(precision)},
                                {"perplexity",
                                 {{"file", a.ppl_file},
                                  {"tokens", ids.size()},
                                  {"window", result->window},
                                  {"stride", result->stride},
                                  {"windows", result->windows},
                                  {"scored_tokens", result->scored_tokens},
                                  {"mean_nll", result->mean_nll},
                                  {"ppl", result->ppl}}},
                                {"seconds", seconds}};
    LLMQ_RETURN_IF_ERROR(write_file_atomic(a.json_out, j.dump(2) + "\n", a.force));
  }
  return Status::ok();
}

}  // namespace

void add_eval_command(CLI::App& app, CommandRunner& run) {
  auto args = std::make_shared<EvalArgs>();
  CLI::App* sub = app.add_subcommand("eval", "Evaluate a checkpoint: perplexity on a text file");
  sub->add_option("--model", args->model, "Checkpoint directory")->required();
  sub->add_option("--ppl", args->ppl_file, "Text file: perplexity (whole text with BOS, windows of --seq-len)");
  sub->add_option("--seq-len", args->seq_len, "Window length (default min(2048, max_position_embeddings))");
  sub->add_option("--limit-tokens", args->limit_tokens, "Use only the first N tokens");
  sub->add_option("--precision", args->precision, "f32, or bf16 (emulates bf16 activations)")->capture_default_str();
  sub->add_option("--json", args->json_out, "Write the result as JSON here");
  sub->add_flag("--force", args->force, "Replace an existing --json file");
  sub->callback([args, &run] { run = [args] { return run_eval(*args); }; });
}

}  // namespace llmq::cli
