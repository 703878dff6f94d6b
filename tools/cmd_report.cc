// llmq report: the comparison report over `llmq eval --json` records (eval/report.h).
#include <cstdio>
#include <memory>

#include "eval/report.h"
#include "tools/commands.h"

namespace llmq::cli {

namespace {

struct ReportArgs {
  std::vector<std::string> evals;
  ReportOptions options;
};

Status run_report(const ReportArgs& a) {
  std::vector<EvalSummary> rows;
  for (const std::string& path : a.evals) {
    LLMQ_ASSIGN_OR_RETURN(std::vector<EvalSummary> records, load_eval_json(path));
    for (EvalSummary& s : records) rows.push_back(std::move(s));
  }
  const Report report = build_report(std::move(rows));
  LLMQ_RETURN_IF_ERROR(write_report(report, a.options));
  std::printf("%s\nwrote %s/report.md and report.json\n", report_tables_markdown(report).c_str(),
              a.options.out_dir.c_str());
  return Status::ok();
}

}  // namespace

void add_report_command(CLI::App& app, CommandRunner& run) {
  auto args = std::make_shared<ReportArgs>();
  CLI::App* sub = app.add_subcommand(
      "report", "Compare checkpoints: one table (memory, latency, throughput, perplexity, GSM8K), the INT4 "
                "crossover batch and plots, from `llmq eval --json` files");
  sub->add_option("evals", args->evals, "Eval JSON files (one record, or an array from eval with several --model)")
      ->required();
  sub->add_option("--out", args->options.out_dir, "Directory for report.md, report.json and the plots")->required();
  sub->add_option("--gnuplot", args->options.gnuplot,
                  "gnuplot program that draws the PNG plots ('none': write only the .gp/.dat files)")
      ->capture_default_str();
  sub->add_flag("--force", args->options.force, "Replace an existing report in --out");
  sub->callback([args, &run] { run = [args] { return run_report(*args); }; });
}

}  // namespace llmq::cli
