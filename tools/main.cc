// llmq: offline weight quantization for Llama checkpoints. Exit codes: 0 success, 2 bad input
// or usage (one line on stderr naming the file and the problem), 1 anything unexpected.
#include <cstdio>
#include <exception>

#include "tools/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"llmq: calibrate, quantize, evaluate and compare Llama checkpoints (FP8, INT8-SmoothQuant, AWQ, GPTQ)"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "llmq 0.1.0");
  llmq::cli::CommandRunner run;
  llmq::cli::add_synth_command(app, run);
  llmq::cli::add_inspect_command(app, run);
  llmq::cli::add_eval_command(app, run);
  llmq::cli::add_calibrate_command(app, run);
  llmq::cli::add_quantize_command(app, run);
  llmq::cli::add_report_command(app, run);
  llmq::cli::add_dequantize_command(app, run);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "llmq: %s (see llmq --help)\n", e.what());
    return 2;
  }
  try {
    const llmq::Status status = run();
    if (!status.is_ok()) {
      std::fprintf(stderr, "llmq: %s\n", status.message().c_str());
      return 2;
    }
  } catch (const llmq::InputError& e) {
    std::fprintf(stderr, "llmq: %s\n", e.message.c_str());
    return 2;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "llmq: out of host memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "llmq: unexpected error: %s\n", e.what());
    return 1;
  }
  return 0;
}
