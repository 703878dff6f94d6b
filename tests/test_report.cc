// The comparison report (eval/report.h, `llmq report`) on hand-made eval records: the table's
// values, the perplexity delta vs the BF16 row, the INT4 crossover (found, none found, not
// comparable), missing fields as "-", byte-identical outputs, one-line errors for bad records;
// and `llmq eval` with several --model and with --bench.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "eval/gsm8k.h"
#include "eval/report.h"
#include "runner/bench.h"
#include "runner/device.h"
#include "tests/cli_util.h"
#include "tests/test_data.h"

namespace {

namespace fs = std::filesystem;
using llmq::BenchResult;
using llmq::BenchRow;
using llmq::EvalSummary;
using llmq::Report;
using ordered_json = nlohmann::ordered_json;

constexpr uint64_t kGiB = 1ull << 30;

// ---- hand-made records, built with the writers `llmq eval` uses ----------------------------

ordered_json record(const std::string& model, const std::string& format, uint64_t weight_bytes) {
  return {{"model", model}, {"format", format}, {"device", "cpu"}, {"precision", "float32"},
          {"weight_bytes", weight_bytes}};
}

void add_ppl(ordered_json& j, double ppl, int64_t window = 2048, const std::string& file = "wiki.test.txt") {
  j["perplexity"] = {{"file", file}, {"tokens", 300000}, {"window", window}, {"ppl", ppl}};
}

struct BenchAt {
  int batch;
  double tokens_per_s, decode_ms_per_step, prefill_ms;
};

// bench_json's record (runner/bench_report.cc), as `eval --bench` stores it.
void add_bench(ordered_json& j, uint64_t peak_gpu_bytes, const std::vector<BenchAt>& points, int input_len = 512) {
  BenchResult r;
  r.model_dir = j["model"].get<std::string>();
  r.format = j["format"].get<std::string>();
  r.device = "NVIDIA H100 80GB HBM3";
  r.input_len = input_len;
  r.output_len = 128;
  r.weight_bytes = j["weight_bytes"].get<uint64_t>();
  r.peak_gpu_bytes = peak_gpu_bytes;
  for (const BenchAt& p : points) {
    BenchRow row;
    row.batch = p.batch;
    row.tokens_per_s = p.tokens_per_s;
    row.decode_ms_per_step = p.decode_ms_per_step;
    row.prefill_ms = p.prefill_ms;
    r.rows.push_back(row);
  }
  j["bench"] = ordered_json::parse(llmq::bench_json(r));
}

// gsm8k_results_json's lm-eval layout, merged into the record as `eval --gsm8k` does.
void add_gsm8k(ordered_json& j, double strict, double flexible, size_t docs = 40) {
  llmq::Gsm8kResult g;
  g.fewshot = 5;
  g.samples.resize(docs);
  g.metrics = {{"strict-match", strict, 0.01}, {"flexible-extract", flexible, 0.01}};
  const ordered_json r = llmq::gsm8k_results_json(g);
  for (auto it = r.begin(); it != r.end(); ++it) j[it.key()] = it.value();
}

std::vector<EvalSummary> parse(const ordered_json& j) {
  auto rows = llmq::parse_eval_json(j, "test.json");
  EXPECT_TRUE(rows.has_value()) << rows.status().message();
  return rows ? *rows : std::vector<EvalSummary>{};
}

Report report_of(const std::vector<ordered_json>& records) {
  std::vector<EvalSummary> rows;
  for (const ordered_json& j : records)
    for (EvalSummary& s : parse(j)) rows.push_back(std::move(s));
  return llmq::build_report(std::move(rows));
}

// A Llama-3.1-8B-like set: BF16, FP8 and three INT4 checkpoints.
std::vector<ordered_json> eight_b_records() {
  ordered_json bf16 = record("/models/Llama-3.1-8B/", "bf16", 16 * kGiB);
  add_bench(bf16, 20 * kGiB + kGiB / 2, {{1, 45.5, 20.0, 30.0}, {16, 700.0, 21.0, 300.0}, {64, 2400.0, 25.0, 1100.0}});
  add_ppl(bf16, 6.0);
  add_gsm8k(bf16, 0.25, 0.5);
  ordered_json fp8 = record("out/Llama-3.1-8B/fp8", "fp8", 8 * kGiB);
  add_bench(fp8, 12 * kGiB, {{1, 70.0, 11.0, 20.0}, {16, 1000.0, 13.0, 200.0}, {64, 3000.0, 16.0, 800.0}});
  add_ppl(fp8, 6.06);
  // AWQ: faster than FP8 at batch 1, slower from 16; faster than BF16 up to 16, slower at 64.
  ordered_json awq = record("out/Llama-3.1-8B/awq", "awq-g128", 4 * kGiB + kGiB / 2);
  add_bench(awq, 8 * kGiB, {{1, 120.0, 8.0, 40.0}, {16, 900.0, 12.0, 400.0}, {64, 2000.0, 30.0, 1500.0}});
  add_ppl(awq, 6.3);
  add_gsm8k(awq, 0.2, 0.45);
  // GPTQ: faster than both at every batch (as listed in the bench, out of order on purpose).
  ordered_json gptq = record("out/Llama-3.1-8B/gptq", "gptq-g128", 4 * kGiB + kGiB / 2);
  add_bench(gptq, 8 * kGiB, {{64, 3100.0, 15.0, 900.0}, {1, 130.0, 7.5, 35.0}, {16, 1100.0, 11.0, 350.0}});
  // W4 without a benchmark or perplexity.
  ordered_json w4 = record("out/Llama-3.1-8B/w4", "w4-g128", 4 * kGiB + kGiB / 2);
  return {bf16, fp8, awq, gptq, w4};
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

class ReportFiles : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = llmq::testing::scratch_dir(::testing::UnitTest::GetInstance()->current_test_info()->name()); }
  void TearDown() override { fs::remove_all(dir_); }
  std::string write(const std::string& name, const std::string& text) {
    const std::string path = dir_ + "/" + name;
    std::ofstream(path, std::ios::binary) << text;
    return path;
  }
  std::string dir_;
};

// ---- the tables ----------------------------------------------------------------------------

// The benchmark's profiles (--profile): one line per batch and kind in the table, with each
// op's share, and per-op objects in the JSON.
TEST(BenchReport, ProfilesInTableAndJson) {
  BenchResult r;
  r.model_dir = "/m";
  r.format = "bf16";
  BenchRow row;
  row.batch = 16;
  row.step_profile = {{"qkv_proj", 1.0}, {"attention", 3.0}};
  row.prefill_profile = {{"rows_in", 0.5}, {"gate_up_proj", 1.5}};
  r.rows.push_back(row);
  const std::string table = llmq::bench_table(r);
  EXPECT_NE(table.find("eager decode step, batch 16: 4.000 ms = qkv_proj 1.000 (25%) attention 3.000 (75%)"),
            std::string::npos) << table;
  EXPECT_NE(table.find("prefill, batch 16: 2.000 ms = rows_in 0.500 (25%) gate_up_proj 1.500 (75%)"),
            std::string::npos) << table;
  const ordered_json j = ordered_json::parse(llmq::bench_json(r));
  EXPECT_EQ(j["batches"][0]["eager_step_profile_ms"]["attention"], 3.0);
  EXPECT_EQ(j["batches"][0]["prefill_profile_ms"]["gate_up_proj"], 1.5);
  BenchResult plain = r;
  plain.rows[0].step_profile.clear();
  plain.rows[0].prefill_profile.clear();
  EXPECT_EQ(llmq::bench_table(plain).find("ms ="), std::string::npos);  // no profile, no line
  EXPECT_FALSE(ordered_json::parse(llmq::bench_json(plain))["batches"][0].contains("prefill_profile_ms"));
}

TEST(Report, TableValuesDeltaAndCrossover) {
  const Report r = report_of(eight_b_records());
  ASSERT_EQ(r.rows.size(), 5u);
  ASSERT_TRUE(r.baseline.has_value());
  EXPECT_EQ(*r.baseline, 0u);
  const std::string expected =
      "| checkpoint | format | weights GiB | peak GPU GiB | bs=1 ms/token | bs=1 tok/s | tok/s bs=16 | tok/s bs=64 | "
      "bs=1 prefill ms | perplexity | Δ ppl vs bf16 | GSM8K strict | GSM8K flexible |\n"
      "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
      "| Llama-3.1-8B | bf16 | 16.00 | 20.50 | 20.00 | 45.5 | 700.0 | 2400.0 | 30.0 | 6.000 | base | 0.2500 | 0.5000 |\n"
      "| fp8 | fp8 | 8.00 | 12.00 | 11.00 | 70.0 | 1000.0 | 3000.0 | 20.0 | 6.060 | +0.060 (+1.00%) | - | - |\n"
      "| awq | awq-g128 | 4.50 | 8.00 | 8.00 | 120.0 | 900.0 | 2000.0 | 40.0 | 6.300 | +0.300 (+5.00%) | 0.2000 | 0.4500 |\n"
      "| gptq | gptq-g128 | 4.50 | 8.00 | 7.50 | 130.0 | 1100.0 | 3100.0 | 35.0 | - | - | - | - |\n"
      "| w4 | w4-g128 | 4.50 | - | - | - | - | - | - | - | - | - | - |\n"
      "\n"
      "## INT4 crossover\n"
      "\n"
      "Smallest measured batch size at which the INT4 checkpoint generates fewer tokens/s than the reference "
      "(\"none up to B\": faster at every batch size both measured, up to B; \"-\": no common benchmark).\n"
      "\n"
      "| INT4 checkpoint | vs Llama-3.1-8B (bf16) | vs fp8 (fp8) |\n"
      "|---|---:|---:|\n"
      "| awq | 64 | 16 |\n"
      "| gptq | none up to 64 | none up to 64 |\n"
      "| w4 | - | - |\n";
  EXPECT_EQ(llmq::report_tables_markdown(r), expected);

  // The same numbers in report.json.
  const auto j = nlohmann::json::parse(llmq::report_json(r));
  EXPECT_EQ(j["baseline"], "Llama-3.1-8B");
  EXPECT_EQ(j["rows"][0]["weight_bytes"], 16 * kGiB);
  EXPECT_DOUBLE_EQ(j["rows"][0]["perplexity"]["delta"].get<double>(), 0.0);
  EXPECT_NEAR(j["rows"][2]["perplexity"]["delta"].get<double>(), 0.3, 1e-12);
  EXPECT_TRUE(j["rows"][3]["perplexity"].is_null());
  EXPECT_EQ(j["rows"][3]["bench"]["batches"][0]["batch"], 1);  // sorted
  EXPECT_EQ(j["rows"][2]["gsm8k"]["task"], "gsm8k");
  EXPECT_EQ(j["rows"][2]["gsm8k"]["docs"], 40);
  ASSERT_EQ(j["crossovers"].size(), 6u);  // 3 INT4 rows x (bf16, fp8)
  EXPECT_EQ(j["crossovers"][0]["checkpoint"], "awq");
  EXPECT_EQ(j["crossovers"][0]["reference"], "Llama-3.1-8B");
  EXPECT_EQ(j["crossovers"][0]["batch"], 64);
  EXPECT_EQ(j["crossovers"][1]["batch"], 16);
  EXPECT_TRUE(j["crossovers"][2]["batch"].is_null());
  EXPECT_EQ(j["crossovers"][2]["up_to"], 64);
  EXPECT_TRUE(j["crossovers"][4]["up_to"].is_null());  // w4: nothing measured
}

TEST(Report, CrossoverOnlyOverCommonComparableBatches) {
  ordered_json bf16 = record("m/bf16", "bf16", 16 * kGiB);
  add_bench(bf16, 20 * kGiB, {{1, 40.0, 25.0, 30.0}, {8, 300.0, 26.0, 200.0}, {32, 1000.0, 30.0, 700.0}});
  // Batch 4 and 16 have no BF16 counterpart, so they cannot be the crossover: the first common
  // batch where AWQ is slower is 32, and "none up to" counts only batches both measured.
  ordered_json awq = record("m/awq", "awq-g128", 5 * kGiB);
  add_bench(awq, 8 * kGiB, {{1, 100.0, 10.0, 50.0}, {4, 1.0, 99.0, 90.0}, {8, 350.0, 20.0, 300.0},
                            {16, 2.0, 99.0, 500.0}, {32, 900.0, 35.0, 900.0}});
  ordered_json gptq = record("m/gptq", "gptq-g128", 5 * kGiB);
  add_bench(gptq, 8 * kGiB, {{1, 100.0, 10.0, 50.0}, {4, 1.0, 99.0, 90.0}, {8, 350.0, 20.0, 300.0}});
  // Another prompt length: tokens/s do not compare.
  ordered_json w4 = record("m/w4", "w4-g128", 5 * kGiB);
  add_bench(w4, 8 * kGiB, {{1, 1.0, 900.0, 50.0}}, /*input_len=*/1024);
  const Report r = report_of({bf16, awq, gptq, w4});
  ASSERT_EQ(r.crossovers.size(), 3u);  // no FP8 row: BF16 is the only reference
  EXPECT_EQ(r.crossovers[0].batch, 32);
  EXPECT_FALSE(r.crossovers[1].batch.has_value());
  EXPECT_EQ(r.crossovers[1].up_to, 8);
  EXPECT_FALSE(r.crossovers[2].batch.has_value());
  EXPECT_EQ(r.crossovers[2].up_to, 0);
  const std::string md = llmq::report_tables_markdown(r);
  EXPECT_NE(md.find("| awq | 32 |\n| gptq | none up to 8 |\n| w4 | - |\n"), std::string::npos) << md;
  // Throughput columns: every batch measured anywhere but 1, ascending.
  EXPECT_NE(md.find("| tok/s bs=4 | tok/s bs=8 | tok/s bs=16 | tok/s bs=32 |"), std::string::npos) << md;

  const std::string notes = llmq::report_markdown(r, "");
  EXPECT_NE(notes.find("1024 input"), std::string::npos) << notes;
  EXPECT_NE(notes.find("compare their rows with care"), std::string::npos) << notes;
}

TEST(Report, CrossoverWithoutInt4OrReference) {
  ordered_json bf16 = record("m/bf16", "bf16", 16 * kGiB);
  ordered_json fp8 = record("m/fp8", "fp8", 8 * kGiB);
  EXPECT_NE(llmq::report_tables_markdown(report_of({bf16, fp8})).find("No INT4 checkpoint in the report."),
            std::string::npos);
  ordered_json int8 = record("m/int8", "int8", 8 * kGiB);
  ordered_json awq = record("m/awq", "awq-g128", 5 * kGiB);
  EXPECT_NE(llmq::report_tables_markdown(report_of({int8, awq})).find("No BF16 or FP8 checkpoint"), std::string::npos);
}

TEST(Report, DeltaVsTheBf16RowOnTheSameTextAndWindow) {
  ordered_json f32 = record("m/f32", "f32", 32 * kGiB);
  add_ppl(f32, 5.0);
  ordered_json fp8 = record("m/fp8", "fp8", 8 * kGiB);
  add_ppl(fp8, 11.0);
  ordered_json bf16 = record("m/bf16", "bf16", 16 * kGiB);
  add_ppl(bf16, 10.0);
  ordered_json other_window = record("m/awq", "awq-g128", 5 * kGiB);
  add_ppl(other_window, 12.0, /*window=*/512);
  ordered_json other_text = record("m/gptq", "gptq-g128", 5 * kGiB);
  add_ppl(other_text, 12.0, 2048, "c4.txt");
  // The bf16 row is the baseline even when a float32 row comes first.
  const Report r = report_of({f32, fp8, bf16, other_window, other_text});
  ASSERT_TRUE(r.baseline.has_value());
  EXPECT_EQ(*r.baseline, 2u);
  const std::string md = llmq::report_markdown(r, "");
  EXPECT_NE(md.find("| f32 | f32 | 32.00 | - | - | - | - | 5.000 | -5.000 (-50.00%) |"), std::string::npos) << md;
  EXPECT_NE(md.find("| fp8 | fp8 | 8.00 | - | - | - | - | 11.000 | +1.000 (+10.00%) |"), std::string::npos) << md;
  EXPECT_NE(md.find("| bf16 | bf16 | 16.00 | - | - | - | - | 10.000 | base |"), std::string::npos) << md;
  EXPECT_NE(md.find("| awq | awq-g128 | 5.00 | - | - | - | - | 12.000 | - |"), std::string::npos) << md;
  EXPECT_NE(md.find("| gptq | gptq-g128 | 5.00 | - | - | - | - | 12.000 | - |"), std::string::npos) << md;
  EXPECT_NE(md.find("No Δ for awq, gptq: measured on another text or window"), std::string::npos) << md;

  // Without a float row there is no delta at all.
  const std::string none = llmq::report_tables_markdown(report_of({fp8, other_window}));
  EXPECT_NE(none.find("| Δ ppl |"), std::string::npos) << none;
  EXPECT_NE(none.find("| fp8 | fp8 | 8.00 | - | - | - | - | 11.000 | - |"), std::string::npos) << none;
}

TEST(Report, MissingAndNullFieldsAreDashes) {
  ordered_json bare = {{"model", "m/bare"}, {"format", "bf16"}};
  ordered_json nulls = {{"model", "m/nulls"}, {"format", "fp8"}, {"weight_bytes", nullptr},
                        {"perplexity", nullptr}, {"bench", nullptr}};
  ordered_json partial = {{"model", "m/partial"}, {"format", "awq-g128"},
                          {"bench", {{"batches", {{{"batch", 1}, {"tokens_per_s", 50.0}}}}}}};
  const std::string md = llmq::report_tables_markdown(report_of({bare, nulls, partial}));
  EXPECT_NE(md.find("| bare | bf16 | - | - | - | - | - | - | - | - | - |\n"), std::string::npos) << md;
  EXPECT_NE(md.find("| nulls | fp8 | - | - | - | - | - | - | - | - | - |\n"), std::string::npos) << md;
  EXPECT_NE(md.find("| partial | awq-g128 | - | - | - | 50.0 | - | - | - | - | - |\n"), std::string::npos) << md;
}

TEST(Report, LabelsStayUnique) {
  const Report r = report_of({record("a/model", "bf16", 1), record("b/model", "fp8", 1), record("b/model", "fp8", 1),
                              record("c/solo/", "fp8", 1)});
  EXPECT_EQ(r.rows[0].checkpoint, "a/model");
  EXPECT_EQ(r.rows[1].checkpoint, "b/model #2");
  EXPECT_EQ(r.rows[2].checkpoint, "b/model #3");
  EXPECT_EQ(r.rows[3].checkpoint, "solo");
}

// ---- bad records ---------------------------------------------------------------------------

TEST_F(ReportFiles, BadRecordsGiveOneLineErrorsNamingFileAndField) {
  struct Case {
    std::string text, expected;
  };
  const std::vector<Case> cases = {
      {"{\"model\": \"m\",\n \"format\": ", "invalid JSON"},
      {"{\"model\": \"m\"}", "not an llmq eval record"},
      {"[{\"model\": \"m\", \"format\": \"bf16\"}, 7]", "[1] is not an llmq eval record"},
      {"[]", "no eval records"},
      {"{\"model\": \"m\", \"format\": \"bf16\", \"perplexity\": {\"ppl\": \"6.1\"}}", "perplexity.ppl is not a number"},
      {"{\"model\": \"m\", \"format\": \"bf16\", \"weight_bytes\": -5}", "weight_bytes is not a non-negative integer"},
      {"{\"model\": \"m\", \"format\": \"bf16\", \"bench\": []}", "bench is not an object"},
      {"{\"model\": \"m\", \"format\": \"bf16\", \"bench\": {\"batches\": [{\"batch\": 0, \"tokens_per_s\": 1}]}}",
       "bench.batches[0].batch is not a positive integer"},
      {"{\"model\": \"m\", \"format\": \"bf16\", \"bench\": {\"batches\": [{\"batch\": 2}]}}",
       "bench.batches[0].tokens_per_s is not given"},
      {"{\"model\": \"m\", \"format\": \"bf16\", \"bench\": {\"batches\": [{\"batch\": 2, \"tokens_per_s\": 1},"
       " {\"batch\": 2, \"tokens_per_s\": 3}]}}",
       "bench.batches is not unique (batch 2 twice)"},
      {"{\"model\": \"m\", \"format\": \"bf16\", \"results\": {\"gsm8k\": {\"exact_match,strict-match\": true}}}",
       "results.gsm8k.exact_match,strict-match is not a number"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const std::string path = write("bad" + std::to_string(i) + ".json", cases[i].text);
    const auto rows = llmq::load_eval_json(path);
    ASSERT_FALSE(rows.has_value()) << cases[i].text;
    const std::string m = rows.status().message();
    EXPECT_EQ(m.rfind(path + ": ", 0), 0u) << m;
    EXPECT_NE(m.find(cases[i].expected), std::string::npos) << m;
    EXPECT_EQ(m.find('\n'), std::string::npos) << m;
  }
  const auto missing = llmq::load_eval_json(dir_ + "/missing.json");
  ASSERT_FALSE(missing.has_value());
  EXPECT_EQ(missing.status().message(), dir_ + "/missing.json: cannot open");
}

// ---- report files --------------------------------------------------------------------------

TEST_F(ReportFiles, SameRecordsGiveTheSameBytes) {
  const Report r = report_of(eight_b_records());
  llmq::ReportOptions o;
  o.gnuplot = "none";
  for (const char* d : {"a", "b"}) {
    o.out_dir = dir_ + "/" + d;
    ASSERT_TRUE(llmq::write_report(r, o).is_ok());
  }
  int compared = 0;
  for (const auto& e : fs::directory_iterator(dir_ + "/a")) {
    EXPECT_EQ(slurp(e.path()), slurp(dir_ + "/b/" + e.path().filename().string())) << e.path();
    ++compared;
  }
  // report.md, report.json, and .gp + .dat for throughput, perplexity and GSM8K.
  EXPECT_EQ(compared, 8);
  for (const char* name : {"report_throughput.gp", "report_throughput.dat", "report_ppl.gp", "report_gsm8k.dat"})
    EXPECT_TRUE(fs::exists(dir_ + "/a/" + std::string(name))) << name;
  const std::string md = slurp(dir_ + "/a/report.md");
  EXPECT_EQ(md.rfind("# llmq report\n\n" + llmq::report_tables_markdown(r), 0), 0u) << md;
  EXPECT_NE(md.find("Plots not drawn (--gnuplot none)"), std::string::npos) << md;
  EXPECT_EQ(slurp(dir_ + "/a/report.json"), llmq::report_json(r));

  // The throughput data: one block per benchmarked row, batch and tokens/s.
  const std::string dat = slurp(dir_ + "/a/report_throughput.dat");
  EXPECT_EQ(dat.rfind("# Llama-3.1-8B (bf16)\n1 45.5 \"\"\n16 700 \"\"\n64 2400 \"\"\n\n\n# fp8 (fp8)\n", 0), 0u) << dat;
}

TEST_F(ReportFiles, RefusesToOverwriteWithoutForceAndDropsStalePlots) {
  llmq::ReportOptions o;
  o.out_dir = dir_ + "/out";
  o.gnuplot = dir_ + "/no-such-gnuplot";
  ASSERT_TRUE(llmq::write_report(report_of(eight_b_records()), o).is_ok());
  EXPECT_NE(slurp(o.out_dir + "/report.md").find("gnuplot was not found"), std::string::npos);
  const auto again = llmq::write_report(report_of(eight_b_records()), o);
  ASSERT_FALSE(again.is_ok());
  EXPECT_EQ(again.message(), o.out_dir + "/report.md: exists (use --force to replace it)");

  // With --force a report without benchmarks leaves no throughput plot of the earlier one.
  o.force = true;
  ordered_json bf16 = record("m/bf16", "bf16", 16 * kGiB);
  add_ppl(bf16, 10.0);
  ASSERT_TRUE(llmq::write_report(report_of({bf16}), o).is_ok());
  EXPECT_FALSE(fs::exists(o.out_dir + "/report_throughput.dat"));
  EXPECT_FALSE(fs::exists(o.out_dir + "/report_gsm8k.gp"));
  EXPECT_TRUE(fs::exists(o.out_dir + "/report_ppl.gp"));
}

TEST_F(ReportFiles, DrawsPngsWithGnuplot) {
  if (std::system("command -v gnuplot >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "gnuplot is not on the PATH (scripts/setup.sh installs gnuplot-nox)";
  llmq::ReportOptions o;
  o.out_dir = dir_ + "/out";
  ASSERT_TRUE(llmq::write_report(report_of(eight_b_records()), o).is_ok());
  for (const char* name : {"throughput", "ppl", "gsm8k"}) {
    const std::string png = slurp(o.out_dir + "/report_" + name + ".png");
    EXPECT_EQ(png.substr(0, 4), "\x89PNG") << name;
  }
  const std::string md = slurp(o.out_dir + "/report.md");
  EXPECT_NE(md.find("![Generated tokens/s vs batch size](report_throughput.png)"), std::string::npos) << md;
}

// ---- the CLI -------------------------------------------------------------------------------

using llmq::testing::expect_one_line_error;
using llmq::testing::RunResult;
using llmq::testing::run_llmq;

TEST_F(ReportFiles, CliReportsAndRejectsBadJson) {
  std::vector<std::string> paths;
  const auto records = eight_b_records();
  for (size_t i = 0; i < records.size(); ++i)
    paths.push_back(write("r" + std::to_string(i) + ".eval.json", records[i].dump(2)));
  std::string args;
  for (const std::string& p : paths) args += " " + p;

  RunResult r = run_llmq("report --gnuplot none --out " + dir_ + "/rep" + args);
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("| awq | 64 | 16 |"), std::string::npos) << r.out;
  EXPECT_TRUE(fs::exists(dir_ + "/rep/report.md"));
  expect_one_line_error(run_llmq("report --gnuplot none --out " + dir_ + "/rep" + args), "--force");
  EXPECT_EQ(run_llmq("report --gnuplot none --force --out " + dir_ + "/rep" + args).exit_code, 0);

  const std::string bad = write("bad.eval.json", "{\"model\": \"m\", \"format\": \"bf16\",\n  oops}");
  expect_one_line_error(run_llmq("report --out " + dir_ + "/rep2 " + paths[0] + " " + bad), bad + ": invalid JSON");
  EXPECT_FALSE(fs::exists(dir_ + "/rep2"));
  expect_one_line_error(run_llmq("report --out " + dir_ + "/rep2 " + dir_ + "/nope.json"), dir_ + "/nope.json");
}

TEST_F(ReportFiles, EvalSeveralModelsPrintsTheComparisonTable) {
  const std::string bf16 = dir_ + "/tiny", int4 = dir_ + "/rtn-int4";
  ASSERT_EQ(run_llmq("synth --config tiny --seed 1 --out " + bf16).exit_code, 0);
  ASSERT_EQ(run_llmq("quantize --model " + bf16 + " --method rtn-int4 --out " + int4).exit_code, 0);
  const std::string text = std::string(LLMQ_SOURCE_DIR) + "/examples/demo_text.txt";
  RunResult r = run_llmq("eval --model " + bf16 + " --model " + int4 + " --ppl " + text +
                         " --seq-len 64 --limit-tokens 256 --json " + dir_ + "/both.json");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("| checkpoint | format | weights GiB |"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("| tiny | bf16 |"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("| rtn-int4 | gptq-g128 |"), std::string::npos) << r.out;

  // --json holds both records; `llmq report` reads the array.
  const auto j = nlohmann::json::parse(slurp(dir_ + "/both.json"));
  ASSERT_TRUE(j.is_array());
  ASSERT_EQ(j.size(), 2u);
  EXPECT_GT(j[0]["weight_bytes"].get<uint64_t>(), j[1]["weight_bytes"].get<uint64_t>());
  r = run_llmq("report --gnuplot none --out " + dir_ + "/rep " + dir_ + "/both.json");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(slurp(dir_ + "/rep/report.md").find("| rtn-int4 | gptq-g128 |"), std::string::npos);

  expect_one_line_error(run_llmq("eval --model " + bf16 + " --model " + int4 + " --gsm8k x.jsonl --samples-out s.jsonl"),
                        "--samples-out needs a single --model");
}

TEST_F(ReportFiles, EvalBench) {
  const std::string model = dir_ + "/tiny";
  ASSERT_EQ(run_llmq("synth --config tiny --seed 1 --out " + model).exit_code, 0);
  expect_one_line_error(run_llmq("eval --model " + model + " --batches 1,2"), "--batches requires --bench");
  expect_one_line_error(run_llmq("eval --model " + model + " --bench --batches 1,0"), "--batches");
  expect_one_line_error(run_llmq("eval --model " + model + " --bench --bench-out 1"), "--bench-out must be >= 2");
  const std::string args = "eval --model " + model + " --bench --batches 1,2 --bench-in 16 --bench-out 4 --json " +
                           dir_ + "/bench.json";
  const llmq::GpuInfo gpu = llmq::query_gpu();
  if (!gpu.available) {
    // Built without CUDA or no GPU: one line naming the checkpoint, and no JSON.
    expect_one_line_error(run_llmq(args), model + ": ");
    EXPECT_FALSE(fs::exists(dir_ + "/bench.json"));
    return;
  }
  const RunResult r = run_llmq(args);
  ASSERT_EQ(r.exit_code, 0) << r.out;
  const auto j = nlohmann::json::parse(slurp(dir_ + "/bench.json"));
  ASSERT_TRUE(j.contains("bench")) << j.dump();
  EXPECT_EQ(j["bench"]["input_len"], 16);
  ASSERT_EQ(j["bench"]["batches"].size(), 2u);
  EXPECT_GT(j["bench"]["batches"][1]["tokens_per_s"].get<double>(), 0.0);
  EXPECT_GT(j["bench"]["peak_gpu_bytes"].get<uint64_t>(), 0u);
}

}  // namespace
