// `llmq calibrate`: a thin CLI over run_calibrate (calibration/calibrate.h); defaults come from
// CalibrateOptions.
#include <memory>

#include "calibration/calibrate.h"
#include "tools/commands.h"

namespace llmq::cli {

void add_calibrate_command(CLI::App& app, CommandRunner& run) {
  auto opts = std::make_shared<CalibrateOptions>();
  auto jsonl_field = std::make_shared<std::string>();
  auto no_hessian = std::make_shared<bool>(!opts->hessian);
  CLI::App* sub = app.add_subcommand(
      "calibrate", "Collect per-linear activation statistics (abs-max, mean-abs, min/max, Hessians) of a checkpoint");
  sub->add_option("--model", opts->model_dir, "BF16 Hugging Face checkpoint directory")->required();
  sub->add_option("--dataset", opts->dataset.path, "Calibration data file")->required();
  CLI::Option* text = sub->add_flag("--text", "Dataset is plain text, cut into windows (default)");
  CLI::Option* jsonl = sub->add_option("--jsonl", *jsonl_field, "Dataset is JSONL; this string field is one sample");
  CLI::Option* chat = sub->add_flag("--chat", "Dataset is JSONL with \"messages\", rendered with the Llama-3 chat template");
  text->excludes(jsonl)->excludes(chat);
  jsonl->excludes(chat);
  sub->add_option("--samples", opts->samples, "Number of samples")->capture_default_str();
  sub->add_option("--seq-len", opts->seq_len, "Tokens per sample (capped at max_position_embeddings)")
      ->capture_default_str();
  sub->add_option("--seed", opts->seed, "Sampling seed")->capture_default_str();
  sub->add_flag("--no-hessian", *no_hessian, "Skip the Hessians (X^T X)");
  sub->add_option("--out", opts->out, "Output calibration file (safetensors)")->required();
  sub->add_flag("--force", opts->force, "Replace an existing output");
  sub->callback([opts, jsonl_field, no_hessian, jsonl, chat, &run] {
    opts->hessian = !*no_hessian;
    if (*jsonl) {
      opts->dataset.kind = DatasetKind::kJsonl;
      opts->dataset.field = *jsonl_field;
    } else if (*chat) {
      opts->dataset.kind = DatasetKind::kChat;
    } else {
      opts->dataset.kind = DatasetKind::kText;
    }
    run = [opts] { return run_calibrate(*opts); };
  });
}

}  // namespace llmq::cli
