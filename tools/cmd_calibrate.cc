// `llmq calibrate`: a thin CLI over run_calibrate (calibration/calibrate.h); defaults come from
// CalibrateOptions. The GPU path (pipeline/calibrate_gpu.h) is passed in here: the tools sit
// above both libraries, llmq_calibration cannot depend on the pipeline.
#include <memory>

#include "calibration/calibrate.h"
#include "pipeline/calibrate_gpu.h"
#include "tools/commands.h"
#include "tools/dataset_options.h"

namespace llmq::cli {

void add_calibrate_command(CLI::App& app, CommandRunner& run) {
  auto opts = std::make_shared<CalibrateOptions>();
  auto no_hessian = std::make_shared<bool>(!opts->hessian);
  CLI::App* sub = app.add_subcommand(
      "calibrate", "Collect per-linear activation statistics (abs-max, mean-abs, min/max, Hessians) of a checkpoint");
  sub->add_option("--model", opts->model_dir, "BF16 Hugging Face checkpoint directory")->required();
  auto dataset = std::make_shared<DatasetOptions>(sub, opts->dataset, /*required=*/true);
  sub->add_option("--samples", opts->samples, "Number of samples")->capture_default_str();
  sub->add_option("--seq-len", opts->seq_len, "Tokens per sample (capped at max_position_embeddings)")
      ->capture_default_str();
  sub->add_option("--seed", opts->seed, "Sampling seed")->capture_default_str();
  sub->add_flag("--no-hessian", *no_hessian, "Skip the Hessians (X^T X)");
  sub->add_option("--out", opts->out, "Output calibration file (safetensors)")->required();
  sub->add_flag("--force", opts->force, "Replace an existing output");
  sub->add_option("--device", opts->device,
                  "Where the layers run: gpu (bf16 forwards, statistics on the device), cpu (float32 forwards), "
                  "or auto (the GPU when there is one)")
      ->capture_default_str();
  sub->callback([opts, dataset, no_hessian, &run] {
    opts->hessian = !*no_hessian;
    dataset->resolve(opts->dataset);
    run = [opts] {
      if (opts->device == "cpu") return run_calibrate(*opts);  // no driver query
      const CalibrationGpu gpu = calibration_gpu();
      return run_calibrate(*opts, &gpu);
    };
  });
}

}  // namespace llmq::cli
