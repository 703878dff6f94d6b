// The llmq subcommands. Each add_*_command registers its options on the CLI11 app and, when
// that subcommand is chosen, sets `run` to the one library call it stands for. Option defaults
// come from the library's option structs, declared once there.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>

#include "core/status.h"

namespace llmq::cli {

using CommandRunner = std::function<Status()>;

void add_synth_command(CLI::App& app, CommandRunner& run);
void add_inspect_command(CLI::App& app, CommandRunner& run);
void add_eval_command(CLI::App& app, CommandRunner& run);
void add_calibrate_command(CLI::App& app, CommandRunner& run);
void add_quantize_command(CLI::App& app, CommandRunner& run);
void add_report_command(CLI::App& app, CommandRunner& run);
void add_dequantize_command(CLI::App& app, CommandRunner& run);

}  // namespace llmq::cli
