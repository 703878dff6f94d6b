#include <cstdio>
#include <memory>

#include "core/output_dir.h"
#include "core/stopwatch.h"
#include "formats/synth.h"
#include "tools/commands.h"

namespace llmq::cli {

namespace {
struct SynthArgs {
  std::string config;
  std::string out;
  bool force = false;
  SynthOptions options;
};

Status run_synth(const SynthArgs& a) {
  LLMQ_ASSIGN_OR_RETURN(SynthPreset preset, find_synth_preset(a.config));
  LLMQ_ASSIGN_OR_RETURN(StagedOutputDir staged, StagedOutputDir::create(a.out, a.force));
  const auto t0 = Clock::now();
  LLMQ_RETURN_IF_ERROR(write_synthetic_checkpoint(preset, a.options, staged.path()));
  LLMQ_RETURN_IF_ERROR(staged.commit());
  const double s = seconds_since(t0);
  std::printf("wrote %s (%s%s, seed %llu) in %.1f s\n", a.out.c_str(), preset.name.c_str(),
              a.options.num_layers > 0 ? (", " + std::to_string(a.options.num_layers) + " layers").c_str() : "",
              static_cast<unsigned long long>(a.options.seed), s);
  return Status::ok();
}
}  // namespace

void add_synth_command(CLI::App& app, CommandRunner& run) {
  auto args = std::make_shared<SynthArgs>();
  std::string names;
  for (const auto& p : synth_presets()) names += (names.empty() ? "" : ", ") + p.name;
  CLI::App* sub = app.add_subcommand("synth", "Write a random-weight BF16 Llama checkpoint of a named shape");
  sub->add_option("--config", args->config, "Shape: " + names)->required();
  sub->add_option("--out", args->out, "Output checkpoint directory")->required();
  sub->add_option("--seed", args->options.seed, "Random seed")->capture_default_str();
  sub->add_option("--std", args->options.weight_std, "Standard deviation of the linear weights")->capture_default_str();
  sub->add_option("--tokenizer-from", args->options.tokenizer_from,
                  "Copy tokenizer files from this checkpoint (default: a byte-level tokenizer)");
  sub->add_option("--layers", args->options.num_layers,
                  "Write only the first N decoder layers (same tensors as the full model's)")
      ->check(CLI::PositiveNumber);
  sub->add_flag("--force", args->force, "Replace an existing output");
  sub->callback([args, &run] { run = [args] { return run_synth(*args); }; });
}

}  // namespace llmq::cli
