// The comparison report over `llmq eval --json` records (`llmq report`, the end of `make
// pipeline`, and the table `llmq eval` prints for several checkpoints): one row per checkpoint
// with weight and peak GPU memory, batch-1 latency, throughput per batch size, prefill time,
// perplexity and its delta vs the BF16 row, GSM8K strict / flexible; then the INT4 crossover
// (the smallest measured batch at which an INT4 checkpoint generates fewer tokens/s than the
// BF16 or an FP8 checkpoint). DESIGN.md rule: report tables are generated, never typed.
//
// Output directory: report.md (tables and notes), report.json (the same numbers), and per
// plot report_<name>.dat + report_<name>.gp, drawn to report_<name>.png when gnuplot is on
// the PATH. report.md and report.json depend only on the inputs (no timestamps), so the same
// records give the same bytes.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"

namespace llmq {

// One batch size of `eval --bench` (runner/bench.h BenchRow, as bench_json writes it).
struct BenchPoint {
  int batch = 0;
  double tokens_per_s = 0;
  std::optional<double> decode_ms_per_step, prefill_ms;
};

// What the report uses of one eval record; anything the record lacks stays empty ("-").
struct EvalSummary {
  std::string source;      // the file it came from (for messages and the notes)
  std::string model;       // the checkpoint directory as eval saw it
  std::string checkpoint;  // the row label: model's last path component, made unique
  std::string format;      // "bf16", "fp8", "int8", "awq-g128", "gptq-g128", "w4-g128"
  std::optional<uint64_t> weight_bytes;    // tensor bytes of the checkpoint (else bench's)
  std::optional<uint64_t> peak_gpu_bytes;  // from --bench
  std::string bench_device;
  int bench_input_len = 0, bench_output_len = 0;
  std::vector<BenchPoint> bench;  // ascending batch
  std::optional<double> ppl;
  std::string ppl_file;
  int64_t ppl_window = 0;
  std::string gsm8k_task;
  int64_t gsm8k_docs = 0;
  std::optional<double> gsm8k_strict, gsm8k_flexible;
};

// An INT4 row against a reference row (the BF16 baseline or an FP8 row).
struct Crossover {
  size_t row = 0, reference = 0;  // indices into Report::rows
  std::optional<int> batch;       // smallest common batch where row's tokens/s < reference's
  int up_to = 0;                  // largest common batch (0: none measured by both)
};

struct Report {
  std::vector<EvalSummary> rows;
  std::optional<size_t> baseline;  // the bf16 row (else the first float row)
  std::vector<size_t> references;  // baseline first, then the fp8 rows
  std::vector<Crossover> crossovers;
};

// An eval record (object) or an array of them (`eval --json` with several --model). Errors
// name `source` and the field: "a.json: perplexity.ppl is not a number".
Expected<std::vector<EvalSummary>> parse_eval_json(const nlohmann::ordered_json& j, const std::string& source);
Expected<std::vector<EvalSummary>> load_eval_json(const std::string& path);

// Labels, baseline, references and crossovers of rows in the order given.
Report build_report(std::vector<EvalSummary> rows);

// The comparison table and the crossover table (markdown; `llmq eval` prints these).
std::string report_tables_markdown(const Report& report);
// report.md: the tables, notes on what was measured, and the plots (`plot_note` says whether
// they were drawn).
std::string report_markdown(const Report& report, const std::string& plot_note);
std::string report_json(const Report& report);

struct ReportOptions {
  std::string out_dir;
  bool force = false;              // replace existing report files
  std::string gnuplot = "gnuplot";  // program (searched on PATH); "none": scripts only
};

// Writes the report files into out_dir (created if missing; other files there are left
// alone). Without force, refuses when any report file exists. report.md is written last.
Status write_report(const Report& report, const ReportOptions& options);

}  // namespace llmq
