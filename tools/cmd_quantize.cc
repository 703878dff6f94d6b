// `llmq quantize`: a thin CLI over run_quantize (pipeline/quantize.h); defaults come from
// QuantizeOptions, the method list from pipeline/method.h.
#include <memory>

#include "pipeline/quantize.h"
#include "tools/commands.h"
#include "tools/dataset_options.h"

namespace llmq::cli {

namespace {

std::string methods_help() {
  std::string help = "Quantization method:";
  for (const MethodInfo& m : all_methods()) {
    help += "\n  " + std::string(m.name) + ": " + std::string(m.summary) + " [format: ";
    for (size_t i = 0; i < m.formats.size(); ++i)
      help += (i ? ", " : "") + std::string(format_option_name(m.formats[i])) + (i == 0 ? " (default)" : "");
    help += "]";
  }
  return help;
}

}  // namespace

void add_quantize_command(CLI::App& app, CommandRunner& run) {
  auto opts = std::make_shared<QuantizeOptions>();
  auto no_sequential = std::make_shared<bool>(false);
  auto no_clip = std::make_shared<bool>(false);
  CLI::App* sub = app.add_subcommand("quantize", "Quantize a BF16 checkpoint to FP8, INT8 (SmoothQuant), AWQ, GPTQ or RTN");
  sub->add_option("--model", opts->model_dir, "BF16 Hugging Face checkpoint directory")->required();
  sub->add_option("--method", opts->method, methods_help())->required();
  sub->add_option("--format", opts->format, "Output format: compressed-tensors, awq or gptq (default: the method's)");
  sub->add_option("--out", opts->out, "Output checkpoint directory")->required();
  sub->add_flag("--force", opts->force, "Replace an existing output");
  sub->add_option("--calib", opts->calib, "Statistics from `llmq calibrate` (its dataset is re-read when samples are needed)");
  auto dataset = std::make_shared<DatasetOptions>(sub, opts->dataset, /*required=*/false);
  sub->add_option("--samples", opts->samples, "Calibration samples (with --dataset)")->capture_default_str();
  sub->add_option("--seq-len", opts->seq_len, "Tokens per sample (with --dataset)")->capture_default_str();
  sub->add_option("--seed", opts->seed, "Sampling seed (with --dataset)")->capture_default_str();
  sub->add_option("--group-size", opts->group_size, "INT4 group size")->capture_default_str();
  sub->add_option("--ignore", opts->ignore, "Regex of module names to leave unquantized (repeatable)");
  sub->add_flag("--asym", opts->asymmetric, "gptq / rtn-int4: asymmetric grid with zero points");
  sub->add_flag("--act-order", opts->act_order, "gptq: quantize columns by decreasing Hessian diagonal (g_idx)");
  sub->add_flag("--mse-clip", opts->mse_clip, "gptq: MSE-optimal shrink search per group");
  sub->add_option("--damp", opts->damp_percent, "gptq: relative damping")->capture_default_str();
  sub->add_flag("--no-sequential", *no_sequential, "gptq: use the --calib Hessians of the float model");
  sub->add_option("--alpha", opts->alpha, "int8-sq: migration strength (0.8 is the Llama recipe)")->capture_default_str();
  sub->add_option("--awq-grid", opts->awq_grid, "awq: scale ratios searched")->capture_default_str();
  sub->add_flag("--no-clip", *no_clip, "awq: skip the clip search");
  sub->add_option("--max-shard-bytes", opts->max_shard_bytes, "Shard size limit")->capture_default_str();
  sub->add_option("--device", opts->device,
                  "Where layers are calibrated and quantized: gpu, cpu, or auto (the GPU when there is one)")
      ->capture_default_str();
  sub->callback([opts, dataset, no_sequential, no_clip, &run] {
    dataset->resolve(opts->dataset);
    opts->sequential = !*no_sequential;
    opts->awq_clip = !*no_clip;
    run = [opts] { return run_quantize(*opts); };
  });
}

}  // namespace llmq::cli
