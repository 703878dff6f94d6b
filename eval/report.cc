// The comparison report (eval/report.h): eval records -> rows -> markdown, JSON and plots.
#include "eval/report.h"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "core/output_dir.h"

namespace llmq {

namespace {

namespace fs = std::filesystem;
// Records are read as ordered JSON, so `llmq eval` can hand over the ones it just built.
using json = nlohmann::ordered_json;
using ordered_json = nlohmann::ordered_json;

// ---- reading eval records ------------------------------------------------------------------

// Where a field sits, for messages: "a.json: [1].perplexity.ppl is not a number".
struct FieldPath {
  const std::string& source;
  std::string prefix;  // "", "[1].", "perplexity."
  FieldPath nested(const std::string& key) const { return {source, prefix + key + "."}; }
  Status bad(const std::string& key, const std::string& what) const {
    return Status::error(source + ": " + prefix + key + " is not " + what);
  }
  // The value at this path itself (a whole record, an array element) is wrong.
  Status bad_here(const std::string& what) const {
    if (prefix.empty()) return Status::error(source + ": not " + what);
    return Status::error(source + ": " + prefix.substr(0, prefix.size() - 1) + " is not " + what);
  }
};

// o[key] when present and not null, else nullptr (absent and null both mean "not measured").
const json* field(const json& o, const char* key) {
  const auto it = o.find(key);
  return it == o.end() || it->is_null() ? nullptr : &*it;
}

Status read_number(const json& o, const char* key, const FieldPath& at, std::optional<double>* out) {
  const json* v = field(o, key);
  if (!v) return Status::ok();
  if (!v->is_number()) return at.bad(key, "a number");
  *out = v->get<double>();
  return Status::ok();
}

Status read_count(const json& o, const char* key, const FieldPath& at, std::optional<uint64_t>* out) {
  const json* v = field(o, key);
  if (!v) return Status::ok();
  // is_number_integer holds for signed and unsigned storage (eval writes int64 counts).
  if (!v->is_number_integer() || (!v->is_number_unsigned() && v->get<int64_t>() < 0))
    return at.bad(key, "a non-negative integer");
  *out = v->get<uint64_t>();
  return Status::ok();
}

// Counts that must fit an int (batch sizes, token counts).
Status read_small_count(const json& o, const char* key, const FieldPath& at, int64_t* out) {
  std::optional<uint64_t> v;
  LLMQ_RETURN_IF_ERROR(read_count(o, key, at, &v));
  if (v && *v > (1u << 30)) return at.bad(key, "a plausible count");
  if (v) *out = static_cast<int64_t>(*v);
  return Status::ok();
}

Status read_string(const json& o, const char* key, const FieldPath& at, std::string* out) {
  const json* v = field(o, key);
  if (!v) return Status::ok();
  if (!v->is_string()) return at.bad(key, "a string");
  *out = v->get<std::string>();
  return Status::ok();
}

Status read_object(const json& o, const char* key, const FieldPath& at, const json** out) {
  *out = field(o, key);
  if (*out && !(*out)->is_object()) return at.bad(key, "an object");
  return Status::ok();
}

Status read_bench_point(const json& b, const FieldPath& at, BenchPoint* p) {
  if (!b.is_object()) return at.bad_here("an object");
  int64_t batch = 0;
  std::optional<double> tokens_per_s;
  LLMQ_RETURN_IF_ERROR(read_small_count(b, "batch", at, &batch));
  LLMQ_RETURN_IF_ERROR(read_number(b, "tokens_per_s", at, &tokens_per_s));
  if (batch < 1) return at.bad("batch", "a positive integer");
  if (!tokens_per_s) return at.bad("tokens_per_s", "given");
  p->batch = static_cast<int>(batch);
  p->tokens_per_s = *tokens_per_s;
  LLMQ_RETURN_IF_ERROR(read_number(b, "decode_ms_per_step", at, &p->decode_ms_per_step));
  return read_number(b, "prefill_ms", at, &p->prefill_ms);
}

// "bench": bench_json's record (runner/bench_report.cc).
Status read_bench(const json& bench, const FieldPath& at, EvalSummary* s) {
  std::optional<uint64_t> weight_bytes;
  int64_t in = 0, out = 0;
  LLMQ_RETURN_IF_ERROR(read_count(bench, "weight_bytes", at, &weight_bytes));
  LLMQ_RETURN_IF_ERROR(read_count(bench, "peak_gpu_bytes", at, &s->peak_gpu_bytes));
  LLMQ_RETURN_IF_ERROR(read_string(bench, "device", at, &s->bench_device));
  LLMQ_RETURN_IF_ERROR(read_small_count(bench, "input_len", at, &in));
  LLMQ_RETURN_IF_ERROR(read_small_count(bench, "output_len", at, &out));
  s->bench_input_len = static_cast<int>(in);
  s->bench_output_len = static_cast<int>(out);
  if (!s->weight_bytes) s->weight_bytes = weight_bytes;
  const json* batches = field(bench, "batches");
  if (!batches) return Status::ok();
  if (!batches->is_array()) return at.bad("batches", "an array");
  for (size_t i = 0; i < batches->size(); ++i) {
    BenchPoint p;
    LLMQ_RETURN_IF_ERROR(read_bench_point((*batches)[i], at.nested("batches[" + std::to_string(i) + "]"), &p));
    for (const BenchPoint& q : s->bench)
      if (q.batch == p.batch) return at.bad("batches", "unique (batch " + std::to_string(p.batch) + " twice)");
    s->bench.push_back(p);
  }
  std::sort(s->bench.begin(), s->bench.end(), [](const BenchPoint& a, const BenchPoint& b) { return a.batch < b.batch; });
  return Status::ok();
}

Status read_perplexity(const json& p, const FieldPath& at, EvalSummary* s) {
  LLMQ_RETURN_IF_ERROR(read_number(p, "ppl", at, &s->ppl));
  LLMQ_RETURN_IF_ERROR(read_string(p, "file", at, &s->ppl_file));
  return read_small_count(p, "window", at, &s->ppl_window);
}

// lm-eval's layout (gsm8k_results_json): results.<task>["exact_match,strict-match"], ...
Status read_gsm8k(const json& results, const json* n_samples, const FieldPath& at, EvalSummary* s) {
  for (auto it = results.begin(); it != results.end(); ++it) {
    if (it.key().rfind("gsm8k", 0) != 0) continue;
    const FieldPath task_at = at.nested(it.key());
    if (!it->is_object()) return task_at.bad_here("an object");
    s->gsm8k_task = it.key();
    LLMQ_RETURN_IF_ERROR(read_number(*it, "exact_match,strict-match", task_at, &s->gsm8k_strict));
    LLMQ_RETURN_IF_ERROR(read_number(*it, "exact_match,flexible-extract", task_at, &s->gsm8k_flexible));
    const json* counts = n_samples ? field(*n_samples, it.key().c_str()) : nullptr;
    if (counts && counts->is_object())
      LLMQ_RETURN_IF_ERROR(read_small_count(*counts, "effective", FieldPath{at.source, "n-samples." + it.key() + "."},
                                            &s->gsm8k_docs));
    return Status::ok();
  }
  return Status::ok();
}

Expected<EvalSummary> read_record(const json& j, const FieldPath& at) {
  if (!j.is_object() || !j.contains("format") || !j["format"].is_string() || !j.contains("model") ||
      !j["model"].is_string())
    return at.bad_here("an llmq eval record (needs \"model\" and \"format\" strings)");
  EvalSummary s;
  s.source = at.source;
  s.model = j["model"].get<std::string>();
  s.format = j["format"].get<std::string>();
  LLMQ_RETURN_IF_ERROR(read_count(j, "weight_bytes", at, &s.weight_bytes));
  const json *bench = nullptr, *perplexity = nullptr, *results = nullptr, *n_samples = nullptr;
  LLMQ_RETURN_IF_ERROR(read_object(j, "bench", at, &bench));
  LLMQ_RETURN_IF_ERROR(read_object(j, "perplexity", at, &perplexity));
  LLMQ_RETURN_IF_ERROR(read_object(j, "results", at, &results));
  LLMQ_RETURN_IF_ERROR(read_object(j, "n-samples", at, &n_samples));
  if (bench) LLMQ_RETURN_IF_ERROR(read_bench(*bench, at.nested("bench"), &s));
  if (perplexity) LLMQ_RETURN_IF_ERROR(read_perplexity(*perplexity, at.nested("perplexity"), &s));
  if (results) LLMQ_RETURN_IF_ERROR(read_gsm8k(*results, n_samples, at.nested("results"), &s));
  return s;
}

// nlohmann messages start with "[json.exception.parse_error.101] "; the bracket adds nothing.
std::string json_error_text(const std::exception& e) {
  std::string s = e.what();
  if (const size_t close = s.find("] "); !s.empty() && s[0] == '[' && close != std::string::npos) s = s.substr(close + 2);
  return s;
}

// ---- building the report -------------------------------------------------------------------

enum class FormatKind { kFloat, kFp8, kInt8, kInt4, kOther };

FormatKind format_kind(const std::string& f) {
  if (f == "bf16" || f == "f16" || f == "f32" || f == "float") return FormatKind::kFloat;
  if (f == "fp8") return FormatKind::kFp8;
  if (f == "int8") return FormatKind::kInt8;
  for (const char* p : {"awq", "gptq", "w4"})
    if (f.rfind(p, 0) == 0) return FormatKind::kInt4;
  return FormatKind::kOther;
}

std::string last_path_component(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  const std::string name = fs::path(path).filename().string();
  return name.empty() ? path : name;
}

// Row labels: the checkpoint directory's name; the whole path where names collide, and the
// row number where even paths do (the same checkpoint evaluated twice).
void assign_labels(std::vector<EvalSummary>& rows) {
  std::vector<std::string> names, labels;
  for (const EvalSummary& r : rows) names.push_back(last_path_component(r.model));
  for (size_t i = 0; i < rows.size(); ++i)
    labels.push_back(std::count(names.begin(), names.end(), names[i]) > 1 ? rows[i].model : names[i]);
  for (size_t i = 0; i < rows.size(); ++i) {
    const bool unique = std::count(labels.begin(), labels.end(), labels[i]) == 1;
    rows[i].checkpoint = unique ? labels[i] : labels[i] + " #" + std::to_string(i + 1);
  }
}

std::optional<size_t> find_baseline(const std::vector<EvalSummary>& rows) {
  for (size_t i = 0; i < rows.size(); ++i)
    if (rows[i].format == "bf16") return i;
  for (size_t i = 0; i < rows.size(); ++i)
    if (format_kind(rows[i].format) == FormatKind::kFloat) return i;
  return std::nullopt;
}

const BenchPoint* bench_at(const EvalSummary& s, int batch) {
  for (const BenchPoint& p : s.bench)
    if (p.batch == batch) return &p;
  return nullptr;
}

// Tokens/s only compare between runs of the same prompt and generation lengths.
Crossover find_crossover(const std::vector<EvalSummary>& rows, size_t row, size_t reference) {
  Crossover c;
  c.row = row;
  c.reference = reference;
  const EvalSummary &a = rows[row], &ref = rows[reference];
  if (a.bench_input_len != ref.bench_input_len || a.bench_output_len != ref.bench_output_len) return c;
  for (const BenchPoint& p : a.bench) {
    const BenchPoint* q = bench_at(ref, p.batch);
    if (!q) continue;
    c.up_to = p.batch;
    if (!c.batch && p.tokens_per_s < q->tokens_per_s) c.batch = p.batch;
  }
  return c;
}

// The perplexity difference to the baseline, when both were measured on the same text and
// window (otherwise the numbers do not compare).
std::optional<double> ppl_delta(const Report& r, size_t row) {
  if (!r.baseline) return std::nullopt;
  const EvalSummary &s = r.rows[row], &base = r.rows[*r.baseline];
  if (!s.ppl || !base.ppl || s.ppl_file != base.ppl_file || s.ppl_window != base.ppl_window) return std::nullopt;
  return *s.ppl - *base.ppl;
}

// Every batch size measured in some row except 1 (batch 1 has its own latency columns).
std::vector<int> throughput_batches(const Report& r) {
  std::set<int> batches;
  for (const EvalSummary& s : r.rows)
    for (const BenchPoint& p : s.bench)
      if (p.batch != 1) batches.insert(p.batch);
  return {batches.begin(), batches.end()};
}

// ---- markdown --------------------------------------------------------------------------

const char kMissing[] = "-";

std::string format_double(const char* fmt, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, fmt, v);
  return buf;
}

template <class T>
std::string or_missing(const std::optional<T>& v, const char* fmt) {
  return v ? format_double(fmt, static_cast<double>(*v)) : kMissing;
}

// GiB with two decimals, or three significant digits below 1 GiB (tiny test models).
std::string gib(const std::optional<uint64_t>& bytes) {
  if (!bytes) return kMissing;
  const double g = static_cast<double>(*bytes) / 1073741824.0;
  return format_double(g >= 1.0 ? "%.2f" : "%.3g", g);
}

// Markdown cells cannot hold '|' or line breaks.
std::string md_cell(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '|') {
      out += "\\|";
    } else {
      out += (c == '\n' || c == '\r') ? ' ' : c;
    }
  }
  return out;
}

struct Column {
  std::string header;
  bool numeric;
};

std::string md_table(const std::vector<Column>& columns, const std::vector<std::vector<std::string>>& rows) {
  std::ostringstream o;
  o << "|";
  for (const Column& c : columns) o << ' ' << md_cell(c.header) << " |";
  o << "\n|";
  for (const Column& c : columns) o << (c.numeric ? "---:|" : "---|");
  o << '\n';
  for (const auto& row : rows) {
    o << "|";
    for (const std::string& cell : row) o << ' ' << md_cell(cell) << " |";
    o << '\n';
  }
  return o.str();
}

std::string ppl_delta_cell(const Report& r, size_t row) {
  if (r.baseline && *r.baseline == row) return r.rows[row].ppl ? "base" : kMissing;
  const std::optional<double> d = ppl_delta(r, row);
  if (!d) return kMissing;
  const double base = *r.rows[*r.baseline].ppl;
  return format_double("%+.3f", *d) + (base > 0 ? " (" + format_double("%+.2f", 100.0 * *d / base) + "%)" : "");
}

std::vector<std::string> main_table_row(const Report& r, size_t i, const std::vector<int>& batches) {
  const EvalSummary& s = r.rows[i];
  const BenchPoint* b1 = bench_at(s, 1);
  std::vector<std::string> row = {s.checkpoint,
                                  s.format,
                                  gib(s.weight_bytes),
                                  gib(s.peak_gpu_bytes),
                                  b1 ? or_missing(b1->decode_ms_per_step, "%.2f") : kMissing,
                                  b1 ? format_double("%.1f", b1->tokens_per_s) : kMissing};
  for (int b : batches) {
    const BenchPoint* p = bench_at(s, b);
    row.push_back(p ? format_double("%.1f", p->tokens_per_s) : kMissing);
  }
  row.push_back(b1 ? or_missing(b1->prefill_ms, "%.1f") : kMissing);
  row.push_back(or_missing(s.ppl, "%.3f"));
  row.push_back(ppl_delta_cell(r, i));
  row.push_back(or_missing(s.gsm8k_strict, "%.4f"));
  row.push_back(or_missing(s.gsm8k_flexible, "%.4f"));
  return row;
}

std::string main_table(const Report& r) {
  const std::vector<int> batches = throughput_batches(r);
  std::vector<Column> columns = {{"checkpoint", false},   {"format", false},      {"weights GiB", true},
                                 {"peak GPU GiB", true},  {"bs=1 ms/token", true}, {"bs=1 tok/s", true}};
  for (int b : batches) columns.push_back({"tok/s bs=" + std::to_string(b), true});
  const std::string base = r.baseline ? " vs " + r.rows[*r.baseline].format : "";
  for (const char* h : {"bs=1 prefill ms", "perplexity"}) columns.push_back({h, true});
  columns.push_back({"Δ ppl" + base, true});
  columns.push_back({"GSM8K strict", true});
  columns.push_back({"GSM8K flexible", true});
  std::vector<std::vector<std::string>> rows;
  for (size_t i = 0; i < r.rows.size(); ++i) rows.push_back(main_table_row(r, i, batches));
  return md_table(columns, rows);
}

std::string crossover_cell(const Crossover& c) {
  if (c.batch) return std::to_string(*c.batch);
  return c.up_to > 0 ? "none up to " + std::to_string(c.up_to) : kMissing;
}

std::string crossover_table(const Report& r) {
  std::vector<size_t> int4_rows;
  for (size_t i = 0; i < r.rows.size(); ++i)
    if (format_kind(r.rows[i].format) == FormatKind::kInt4) int4_rows.push_back(i);
  if (int4_rows.empty()) return "No INT4 checkpoint in the report.\n";
  if (r.references.empty()) return "No BF16 or FP8 checkpoint to compare the INT4 ones with.\n";
  std::vector<Column> columns = {{"INT4 checkpoint", false}};
  for (size_t ref : r.references)
    columns.push_back({"vs " + r.rows[ref].checkpoint + " (" + r.rows[ref].format + ")", true});
  std::vector<std::vector<std::string>> rows;
  for (size_t i : int4_rows) {
    std::vector<std::string> row = {r.rows[i].checkpoint};
    for (const Crossover& c : r.crossovers)
      if (c.row == i) row.push_back(crossover_cell(c));
    rows.push_back(row);
  }
  return "Smallest measured batch size at which the INT4 checkpoint generates fewer tokens/s than the reference "
         "(\"none up to B\": faster at every batch size both measured, up to B; \"-\": no common benchmark).\n\n" +
         md_table(columns, rows);
}

// Distinct values in order of first appearance (notes list each setting once).
std::vector<std::string> distinct(const std::vector<std::string>& values) {
  std::vector<std::string> out;
  for (const std::string& v : values)
    if (!v.empty() && std::find(out.begin(), out.end(), v) == out.end()) out.push_back(v);
  return out;
}

std::string join(const std::vector<std::string>& parts, const char* sep) {
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) out += (i ? sep : "") + parts[i];
  return out;
}

std::string bench_note(const Report& r) {
  std::vector<std::string> settings;
  for (const EvalSummary& s : r.rows)
    if (!s.bench.empty())
      settings.push_back((s.bench_device.empty() ? "unknown device" : s.bench_device) + ", " +
                         std::to_string(s.bench_input_len) + " input and " + std::to_string(s.bench_output_len) +
                         " output tokens per sequence");
  settings = distinct(settings);
  if (settings.empty()) return "- Benchmark: none of the records has one (`llmq eval --bench`, on a GPU machine).\n";
  std::string note = "- Benchmark (`llmq eval --bench`): " + join(settings, "; ") +
                     ". ms/token is one decode step at batch 1; tok/s is generated tokens / total latency "
                     "(prefill included); prefill ms is the batch-1 prefill of the whole prompt.\n";
  if (settings.size() > 1) note += "- The benchmarks differ in device or lengths: compare their rows with care.\n";
  return note;
}

std::string ppl_note(const Report& r) {
  std::vector<std::string> settings, incomparable;
  for (size_t i = 0; i < r.rows.size(); ++i) {
    const EvalSummary& s = r.rows[i];
    if (!s.ppl) continue;
    settings.push_back("`" + s.ppl_file + "`, window " + std::to_string(s.ppl_window));
    if (r.baseline && i != *r.baseline && r.rows[*r.baseline].ppl && !ppl_delta(r, i))
      incomparable.push_back(s.checkpoint);
  }
  settings = distinct(settings);
  if (settings.empty()) return "- Perplexity: not measured.\n";
  std::string note = "- Perplexity: " + join(settings, "; ") + ".";
  if (r.baseline) {
    note += " Δ is the difference to " + r.rows[*r.baseline].checkpoint + " (relative in parentheses).";
  } else {
    note += " No bf16/float checkpoint, so no Δ.";
  }
  note += "\n";
  if (!incomparable.empty())
    note += "- No Δ for " + join(incomparable, ", ") + ": measured on another text or window than the baseline.\n";
  return note;
}

std::string gsm8k_note(const Report& r) {
  std::vector<std::string> settings;
  for (const EvalSummary& s : r.rows)
    if (!s.gsm8k_task.empty()) settings.push_back(s.gsm8k_task + ", " + std::to_string(s.gsm8k_docs) + " documents");
  settings = distinct(settings);
  if (settings.empty()) return "- GSM8K: not measured.\n";
  return "- GSM8K: " + join(settings, "; ") + "; exact match after the strict-match and flexible-extract filters.\n";
}

std::string notes(const Report& r) {
  std::string out;
  for (const EvalSummary& s : r.rows)
    out += "- " + s.checkpoint + ": `" + s.model + "` (" + s.source + ")\n";
  out += "- Weights: tensor bytes of the checkpoint files (GiB = 2^30 bytes); peak GPU: device memory in use at "
         "the benchmark's peak.\n";
  return out + bench_note(r) + ppl_note(r) + gsm8k_note(r);
}

// ---- JSON --------------------------------------------------------------------------------

template <class T>
ordered_json or_null(const std::optional<T>& v) {
  return v ? ordered_json(*v) : ordered_json(nullptr);
}

ordered_json row_json(const Report& r, size_t i) {
  const EvalSummary& s = r.rows[i];
  ordered_json j = {{"checkpoint", s.checkpoint},          {"format", s.format},
                    {"model", s.model},                    {"source", s.source},
                    {"weight_bytes", or_null(s.weight_bytes)}, {"peak_gpu_bytes", or_null(s.peak_gpu_bytes)}};
  j["bench"] = nullptr;
  if (!s.bench.empty()) {
    ordered_json batches = ordered_json::array();
    for (const BenchPoint& p : s.bench)
      batches.push_back({{"batch", p.batch},
                         {"tokens_per_s", p.tokens_per_s},
                         {"decode_ms_per_step", or_null(p.decode_ms_per_step)},
                         {"prefill_ms", or_null(p.prefill_ms)}});
    j["bench"] = {{"device", s.bench_device},
                  {"input_len", s.bench_input_len},
                  {"output_len", s.bench_output_len},
                  {"batches", batches}};
  }
  j["perplexity"] = nullptr;
  if (s.ppl) {
    const std::optional<double> d = (r.baseline && *r.baseline == i) ? std::optional<double>(0.0) : ppl_delta(r, i);
    j["perplexity"] = {{"file", s.ppl_file}, {"window", s.ppl_window}, {"ppl", *s.ppl}, {"delta", or_null(d)}};
  }
  j["gsm8k"] = nullptr;
  if (!s.gsm8k_task.empty())
    j["gsm8k"] = {{"task", s.gsm8k_task},
                  {"docs", s.gsm8k_docs},
                  {"strict", or_null(s.gsm8k_strict)},
                  {"flexible", or_null(s.gsm8k_flexible)}};
  return j;
}

// ---- plots -------------------------------------------------------------------------------

struct PlotPoint {
  double x = 0, y = 0;
  std::string label;  // drawn beside the point when the plot labels points
};

struct PlotSeries {
  std::string title;
  std::vector<PlotPoint> points;
};

struct Plot {
  std::string name;  // files report_<name>.{dat,gp,png}
  std::string title, xlabel, ylabel;
  bool log_x = false, label_points = false;
  std::vector<PlotSeries> series;
};

const char* const kPlotNames[] = {"throughput", "ppl", "gsm8k"};

Plot throughput_plot(const Report& r) {
  Plot p{"throughput", "Generated tokens/s vs batch size", "batch size", "tokens/s", true, false, {}};
  for (const EvalSummary& s : r.rows) {
    if (s.bench.empty()) continue;
    PlotSeries series{s.checkpoint + " (" + s.format + ")", {}};
    for (const BenchPoint& b : s.bench) series.points.push_back({static_cast<double>(b.batch), b.tokens_per_s, ""});
    p.series.push_back(series);
  }
  return p;
}

Plot ppl_plot(const Report& r) {
  Plot p{"ppl", "Perplexity vs weight size", "weights (GiB)", "perplexity", false, true, {{"perplexity", {}}}};
  for (const EvalSummary& s : r.rows)
    if (s.ppl && s.weight_bytes) p.series[0].points.push_back({*s.weight_bytes / 1073741824.0, *s.ppl, s.checkpoint});
  if (p.series[0].points.empty()) p.series.clear();
  return p;
}

Plot gsm8k_plot(const Report& r) {
  Plot p{"gsm8k", "GSM8K exact match vs weight size", "weights (GiB)", "exact match", false, true,
         {{"strict-match", {}}, {"flexible-extract", {}}}};
  for (const EvalSummary& s : r.rows) {
    if (!s.weight_bytes) continue;
    const double x = *s.weight_bytes / 1073741824.0;
    if (s.gsm8k_strict) p.series[0].points.push_back({x, *s.gsm8k_strict, s.checkpoint});
    if (s.gsm8k_flexible) p.series[1].points.push_back({x, *s.gsm8k_flexible, s.checkpoint});
  }
  p.series.erase(std::remove_if(p.series.begin(), p.series.end(), [](const PlotSeries& s) { return s.points.empty(); }),
                 p.series.end());
  return p;
}

// gnuplot data: one block per series, blocks separated by two blank lines (`index i`).
std::string plot_data(const Plot& p) {
  std::string out;
  for (const PlotSeries& s : p.series) {
    out += "# " + s.title + "\n";
    for (const PlotPoint& pt : s.points) {
      std::string label = pt.label;
      std::replace(label.begin(), label.end(), '"', '\'');
      out += format_double("%.10g", pt.x) + " " + format_double("%.10g", pt.y) + " \"" + label + "\"\n";
    }
    out += "\n\n";
  }
  return out;
}

// A gnuplot single-quoted string ('' stands for ').
std::string gp_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("''") : std::string(1, c);
  return out + "'";
}

std::string plot_script(const Plot& p) {
  const std::string dat = "report_" + p.name + ".dat";
  std::string out = "# llmq report: " + p.title + ". Draw with `gnuplot report_" + p.name +
                    ".gp` in this directory.\n"
                    "if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) { set terminal pngcairo size 900,600 noenhanced } "
                    "else { set terminal png size 900,600 noenhanced }\n"
                    "set output " + gp_quote("report_" + p.name + ".png") + "\n" +
                    "set title " + gp_quote(p.title) + "\nset xlabel " + gp_quote(p.xlabel) + "\nset ylabel " +
                    gp_quote(p.ylabel) + "\nset grid\nset key outside right top\n";
  if (p.log_x) out += "set logscale x 2\n";
  if (p.label_points) out += "set offsets graph 0.1, graph 0.25, graph 0.1, graph 0.1\n";
  out += "plot ";
  for (size_t i = 0; i < p.series.size(); ++i) {
    const std::string index = " index " + std::to_string(i);
    // Throughput curves are lines over batch size; quality vs size is a scatter of checkpoints.
    const std::string style = p.label_points ? " with points pt 7 ps 1.5" : " with linespoints pt 7";
    out += (i ? ", \\\n     " : "") + gp_quote(dat) + index + " using 1:2" + style + " title " +
           gp_quote(p.series[i].title);
    if (p.label_points) out += ", \\\n     " + gp_quote(dat) + index + " using 1:2:3 with labels offset char 1,1 notitle";
  }
  return out + "\n";
}

// ---- writing -----------------------------------------------------------------------------

std::vector<std::string> report_file_names() {
  std::vector<std::string> names = {"report.md", "report.json"};
  for (const char* p : kPlotNames)
    for (const char* ext : {".dat", ".gp", ".png"}) names.push_back(std::string("report_") + p + ext);
  return names;
}

// The program's absolute path: as given when it holds a '/', else the first match on PATH.
std::optional<std::string> find_program(const std::string& name) {
  auto runnable = [](const fs::path& p) {
    std::error_code ec;
    return fs::is_regular_file(p, ec) && ::access(p.c_str(), X_OK) == 0;
  };
  if (name.find('/') != std::string::npos)
    return runnable(name) ? std::optional<std::string>(fs::absolute(name).string()) : std::nullopt;
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path ? path : "");
  for (std::string dir; std::getline(dirs, dir, ':');) {
    const fs::path candidate = fs::path(dir.empty() ? "." : dir) / name;
    if (runnable(candidate)) return fs::absolute(candidate).string();
  }
  return std::nullopt;
}

// Runs `program arg` in `dir` with its output discarded (gnuplot warnings would break the
// one-line error convention; a failed script is reported by its exit code). -1: not run.
int run_in_dir(const std::string& dir, const std::string& program, const std::string& arg) {
  const pid_t pid = ::fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    const int devnull = ::open("/dev/null", O_RDWR);
    if (devnull >= 0) {
      ::dup2(devnull, 0);
      ::dup2(devnull, 1);
      ::dup2(devnull, 2);
    }
    if (::chdir(dir.c_str()) != 0) ::_exit(126);
    ::execl(program.c_str(), program.c_str(), arg.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

Status check_report_files_free(const std::string& dir, bool force) {
  if (force) return Status::ok();
  for (const std::string& name : report_file_names()) {
    const fs::path p = fs::path(dir) / name;
    std::error_code ec;
    if (fs::exists(p, ec)) return Status::error(p.string() + ": exists (use --force to replace it)");
  }
  return Status::ok();
}

// Plot files of an earlier report that this one does not draw: removed, so the directory
// holds exactly this report.
Status remove_stale_plots(const std::string& dir, const std::vector<Plot>& plots) {
  for (const char* name : kPlotNames) {
    const bool drawn = std::any_of(plots.begin(), plots.end(), [&](const Plot& p) { return p.name == name; });
    if (drawn) continue;
    for (const char* ext : {".dat", ".gp", ".png"}) {
      const fs::path p = fs::path(dir) / (std::string("report_") + name + ext);
      std::error_code ec;
      fs::remove(p, ec);
      if (ec) return Status::error(p.string() + ": cannot remove the stale plot file: " + ec.message());
    }
  }
  return Status::ok();
}

// Writes each plot's data and script, draws them when gnuplot is there, and returns the
// "Plots" section of report.md.
Expected<std::string> write_plots(const std::vector<Plot>& plots, const ReportOptions& o) {
  if (plots.empty())
    return std::string("No plots: no record has a benchmark, or a weight size with a perplexity or GSM8K score.\n");
  for (const Plot& p : plots) {
    const std::string base = (fs::path(o.out_dir) / ("report_" + p.name)).string();
    LLMQ_RETURN_IF_ERROR(write_file_atomic(base + ".dat", plot_data(p), o.force));
    LLMQ_RETURN_IF_ERROR(write_file_atomic(base + ".gp", plot_script(p), o.force));
    // An image of an earlier report must not pass for this one's (with --force).
    std::error_code ec;
    fs::remove(base + ".png", ec);
    if (ec) return Status::error(base + ".png: cannot remove the earlier plot: " + ec.message());
  }
  const std::optional<std::string> gnuplot = o.gnuplot == "none" ? std::nullopt : find_program(o.gnuplot);
  std::string scripts;
  for (const Plot& p : plots) scripts += std::string(scripts.empty() ? "" : ", ") + "`report_" + p.name + ".gp`";
  if (!gnuplot)
    return (o.gnuplot == "none" ? std::string("Plots not drawn (--gnuplot none)") : "gnuplot was not found on the PATH") +
           ": the scripts " + scripts + " and their .dat files are written; run `gnuplot SCRIPT` in this directory to "
           "draw them.\n";
  std::string section;
  for (const Plot& p : plots) {
    const int rc = run_in_dir(o.out_dir, *gnuplot, "report_" + p.name + ".gp");
    std::error_code ec;
    if (rc == 0 && fs::exists(fs::path(o.out_dir) / ("report_" + p.name + ".png"), ec)) {
      section += "![" + p.title + "](report_" + p.name + ".png)\n\n";
    } else {
      section += "gnuplot failed on `report_" + p.name + ".gp` (exit " + std::to_string(rc) +
                 "); run it by hand in this directory to see why.\n\n";
    }
  }
  return section;
}

}  // namespace

Expected<std::vector<EvalSummary>> parse_eval_json(const json& j, const std::string& source) {
  std::vector<EvalSummary> rows;
  if (!j.is_array()) {
    LLMQ_ASSIGN_OR_RETURN(EvalSummary s, read_record(j, FieldPath{source, ""}));
    rows.push_back(std::move(s));
    return rows;
  }
  if (j.empty()) return Status::error(source + ": no eval records (an empty array)");
  for (size_t i = 0; i < j.size(); ++i) {
    LLMQ_ASSIGN_OR_RETURN(EvalSummary s, read_record(j[i], FieldPath{source, "[" + std::to_string(i) + "]."}));
    rows.push_back(std::move(s));
  }
  return rows;
}

Expected<std::vector<EvalSummary>> load_eval_json(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::error(path + ": cannot open");
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {  // parse_error, or out_of_range for a huge number
    return Status::error(path + ": invalid JSON: " + json_error_text(e));
  }
  return parse_eval_json(j, path);
}

Report build_report(std::vector<EvalSummary> rows) {
  Report r;
  r.rows = std::move(rows);
  assign_labels(r.rows);
  r.baseline = find_baseline(r.rows);
  if (r.baseline) r.references.push_back(*r.baseline);
  for (size_t i = 0; i < r.rows.size(); ++i)
    if (format_kind(r.rows[i].format) == FormatKind::kFp8) r.references.push_back(i);
  for (size_t i = 0; i < r.rows.size(); ++i) {
    if (format_kind(r.rows[i].format) != FormatKind::kInt4) continue;
    for (size_t ref : r.references) r.crossovers.push_back(find_crossover(r.rows, i, ref));
  }
  return r;
}

std::string report_tables_markdown(const Report& report) {
  return main_table(report) + "\n## INT4 crossover\n\n" + crossover_table(report);
}

std::string report_markdown(const Report& report, const std::string& plot_note) {
  return "# llmq report\n\n" + report_tables_markdown(report) + "\n## Notes\n\n" + notes(report) +
         "\n## Plots\n\n" + plot_note;
}

std::string report_json(const Report& r) {
  ordered_json j;
  j["baseline"] = r.baseline ? ordered_json(r.rows[*r.baseline].checkpoint) : ordered_json(nullptr);
  j["rows"] = ordered_json::array();
  for (size_t i = 0; i < r.rows.size(); ++i) j["rows"].push_back(row_json(r, i));
  j["crossovers"] = ordered_json::array();
  for (const Crossover& c : r.crossovers)
    j["crossovers"].push_back({{"checkpoint", r.rows[c.row].checkpoint},
                               {"reference", r.rows[c.reference].checkpoint},
                               {"batch", or_null(c.batch)},
                               {"up_to", c.up_to > 0 ? ordered_json(c.up_to) : ordered_json(nullptr)}});
  return j.dump(2) + "\n";
}

Status write_report(const Report& report, const ReportOptions& o) {
  if (o.out_dir.empty()) return Status::error("report: no output directory");
  LLMQ_RETURN_IF_ERROR(check_report_files_free(o.out_dir, o.force));
  std::error_code ec;
  fs::create_directories(o.out_dir, ec);
  if (ec) return Status::error(o.out_dir + ": cannot create the directory: " + ec.message());
  std::vector<Plot> plots;
  for (Plot p : {throughput_plot(report), ppl_plot(report), gsm8k_plot(report)})
    if (!p.series.empty()) plots.push_back(std::move(p));
  LLMQ_RETURN_IF_ERROR(remove_stale_plots(o.out_dir, plots));
  LLMQ_ASSIGN_OR_RETURN(std::string plot_note, write_plots(plots, o));
  LLMQ_RETURN_IF_ERROR(write_file_atomic((fs::path(o.out_dir) / "report.json").string(), report_json(report), o.force));
  // Last, so a report.md means the report is complete (make's target).
  return write_file_atomic((fs::path(o.out_dir) / "report.md").string(), report_markdown(report, plot_note), o.force);
}

}  // namespace llmq
