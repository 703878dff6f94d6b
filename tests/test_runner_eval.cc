// Perplexity and GSM8K on the CUDA runner (runner/eval_gpu.h) against the CPU path (eval/), and
// `llmq eval --device`. The window planning and the CLI's device choice are tested in every
// build; the GPU cases build with CUDA (LLMQ_HAVE_CUDA) and skip without a GPU.
//
// Tolerance between GPU and CPU perplexity. The runner computes with Precision::kBFloat16
// semantics, so it is compared with the CPU path at kBFloat16 (not with float32, which differs
// by the bf16 arithmetic itself: 4.1657 vs 4.1688 for stories260k in the goldens). Both score
// the same windows with the same host code (window_nll, perplexity_result: checked exactly
// below), so only the logits differ: z_t (CPU) and z_t + δ_t (GPU) at scored position t.
//   NLL_t(z) = logsumexp(z) - z_y has gradient p - e_y, whose L1 norm is 2(1 - p_y) <= 2, so by
//   the mean value theorem |ΔNLL_t| <= 2 ‖δ_t‖∞, and for the mean over N scored tokens
//     |Δ mean NLL| = |Δ log ppl| <= B = (2/N) Σ_t ‖δ_t‖∞          (rigorous, from the logits).
//   tests/test_runner_engine.cc bounds each row: ‖δ_t‖∞ <= 2^-4 ‖z_t‖∞ (bf16 rounding flips
//   compounding through the layers), checked here again on every scored row, so a priori
//     B <= 2^-3 · mean_t ‖z_t‖∞.
// B is a worst case (every error aligned against the target); the measured difference is far
// smaller and printed. Two tighter checks pin the plumbing: the GPU result equals an
// independent host recomputation from the engine's own logits to double rounding
// (kSumOrderRel), and it is within 0.5% of transformers' bf16 golden, the bound
// tests/test_model.cc holds the CPU path to (what a wrong window, BOS, mask or RoPE moves is
// > 10%).
//
// GSM8K. Greedy tokens agree until a step where the CPU reference's margin between its token
// and the runner's is within the engine's per-row bound (a near tie either arithmetic could
// break, as in test_runner_engine.cc); samples that agree token for token must have the same
// output, extracted answers and scores, since the stop strings and scoring are the same code.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "eval/gsm8k.h"
#include "eval/perplexity.h"
#include "formats/checkpoint.h"
#include "formats/tokenizer.h"
#include "model/llama.h"
#include "runner/device.h"
#include "runner/eval_gpu.h"
#include "runner_test_util.h"
#include "tests/cli_util.h"
#include "tests/test_data.h"

namespace llmq {
namespace {

using testing::expect_one_line_error;
using testing::run_llmq;
using testing::RunResult;

constexpr double kSumOrderRel = 1e-12;  // two summation orders of ~1e4 double terms: ~1e4 · 2^-53 relative
constexpr double kGoldenRel = 0.005;    // tests/test_model.cc's bound for the CPU path vs transformers
constexpr double kRowMaxRel = 1.0 / 16;  // test_runner_engine.cc's per-row bound on the logits (kTolBf16)

std::string data(const std::string& rel) { return testing::test_data_dir() + "/" + rel; }
std::string model_dir(const std::string& name) { return data("models/" + name); }

// A tiny model's CPU forward and tokenizer: the reference side of the comparisons below (the
// model holds its own float copy of the weights, so the checkpoint need not stay open).
struct CpuReference {
  LlamaModel model;
  std::unique_ptr<Tokenizer> tok;
};
Expected<CpuReference> load_cpu_reference(const std::string& dir) {
  LLMQ_ASSIGN_OR_RETURN(HfCheckpoint ckpt, HfCheckpoint::open(dir));
  LLMQ_ASSIGN_OR_RETURN(LlamaModel model, LlamaModel::load(ckpt));
  LLMQ_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tok, load_tokenizer(dir));
  return CpuReference{std::move(model), std::move(tok)};
}

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The first n characters (code points, as Python's str[:n]) of UTF-8 text.
std::string utf8_prefix(const std::string& s, size_t n_chars) {
  size_t chars = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    if ((static_cast<unsigned char>(s[i]) & 0xC0) != 0x80) {
      if (chars == n_chars) return s.substr(0, i);
      ++chars;
    }
  }
  return s;
}

// Sets an environment variable for one child process and restores it.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    setenv(name, value, 1);
  }
  ~ScopedEnv() {
    if (old_) setenv(name_, old_->c_str(), 1);
    else unsetenv(name_);
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

// ---- the window planning the CPU and GPU paths share (every build) ----------------------------

TEST(PerplexityPlan, WindowsAndErrors) {
  LlamaConfig c;
  c.vocab_size = 100;
  c.max_position_embeddings = 64;
  const auto ids = [](int64_t n) { return std::vector<int32_t>(static_cast<size_t>(n), 7); };
  // s = 0, S, ... while s < n - W.
  for (auto [n, W, S, windows] : std::vector<std::array<int64_t, 4>>{
           {10, 4, 4, 2}, {9, 4, 4, 2}, {8, 4, 4, 1}, {5, 4, 0, 1}, {100, 32, 10, 7}, {65, 64, 0, 1}}) {
    PerplexityConfig pc;
    pc.window = W;
    pc.stride = S;
    auto plan = plan_perplexity(c, ids(n), pc);
    ASSERT_TRUE(plan) << plan.status().message();
    EXPECT_EQ(plan->windows, windows) << n << " " << W << " " << S;
    EXPECT_EQ(plan->window, W);
    EXPECT_EQ(plan->stride, S > 0 ? S : W);
    EXPECT_LT(plan->begin(plan->windows - 1), n - W);
    EXPECT_GE(plan->begin(plan->windows), n - W);
  }
  auto dflt = plan_perplexity(c, ids(100), PerplexityConfig{});
  ASSERT_TRUE(dflt);
  EXPECT_EQ(dflt->window, 64);  // min(2048, max_position_embeddings)
  const auto err = [&](int64_t n, int64_t W, int64_t S, std::vector<int32_t> v = {}) {
    PerplexityConfig pc;
    pc.window = W;
    pc.stride = S;
    auto plan = plan_perplexity(c, v.empty() ? ids(n) : v, pc);
    EXPECT_FALSE(plan) << n << " " << W << " " << S;
    return plan ? std::string() : plan.status().message();
  };
  EXPECT_NE(err(100, 65, 0).find("outside [2, max_position_embeddings 64]"), std::string::npos);
  EXPECT_NE(err(100, 1, 0).find("window 1"), std::string::npos);
  EXPECT_NE(err(100, 8, -1).find("negative stride"), std::string::npos);
  EXPECT_NE(err(8, 8, 0).find("do not fill one window"), std::string::npos);
  EXPECT_NE(err(0, 4, 0, {1, 2, 100, 3, 4, 5}).find("token id 100"), std::string::npos);
}

// window_nll: log(V) for uniform logits, and the same bytes for any thread count (its rows run
// in parallel on the GPU path, on one thread inside the CPU path's window loop).
TEST(PerplexityPlan, WindowNllIsExactAndThreadIndependent) {
  const int64_t T = 37, V = 1000;
  Tensor uniform(DType::kF32, {T, V});
  std::fill(uniform.data<float>(), uniform.data<float>() + T * V, 3.5f);
  const std::vector<int32_t> next(T, 5);
  EXPECT_NEAR(window_nll(uniform, next.data(), T - 1), (T - 1) * std::log(static_cast<double>(V)), 1e-9);

  Tensor logits(DType::kF32, {T, V});
  uint32_t s = 12345;
  for (int64_t i = 0; i < T * V; ++i) {
    s = s * 1664525u + 1013904223u;
    logits.data<float>()[i] = static_cast<float>((s >> 8) % 2000) / 100.0f - 10.0f;
  }
  std::vector<int32_t> targets(T);
  for (int64_t t = 0; t < T; ++t) targets[t] = static_cast<int32_t>((t * 131) % V);
  const int before = omp_get_max_threads();
  omp_set_num_threads(1);
  const double one = window_nll(logits, targets.data(), T - 1);
  omp_set_num_threads(4);
  const double four = window_nll(logits, targets.data(), T - 1);
  omp_set_num_threads(before);
  EXPECT_EQ(one, four);
  EXPECT_GT(one, 0.0);
}

// The CPU path through plan / window_nll / perplexity_result equals perplexity() to the byte.
TEST(PerplexityPlan, CpuPathIsPlanPlusWindowNll) {
  LLMQ_REQUIRE_TEST_DATA();
  auto ckpt = HfCheckpoint::open(model_dir("stories260k"));
  ASSERT_TRUE(ckpt) << ckpt.status().message();
  auto model = LlamaModel::load(*ckpt);
  auto tok = load_tokenizer(model_dir("stories260k"));
  ASSERT_TRUE(model && tok);
  std::vector<int32_t> ids = (*tok)->encode(utf8_prefix(slurp(data("text/tinystories_val.txt")), 6000));
  PerplexityConfig pc;
  pc.window = 100;
  pc.stride = 70;
  pc.precision = Precision::kBFloat16;
  auto direct = perplexity(*model, ids, pc);
  ASSERT_TRUE(direct) << direct.status().message();
  auto plan = plan_perplexity(model->config(), ids, pc);
  ASSERT_TRUE(plan);
  std::vector<double> nll;
  for (int64_t w = 0; w < plan->windows; ++w) {
    const std::vector<int32_t> win(ids.begin() + plan->begin(w), ids.begin() + plan->begin(w) + plan->window);
    KvCache cache = model->make_cache(plan->window);
    nll.push_back(window_nll(model->prefill(win, cache, LogitsFor::kAll, {pc.precision, nullptr}), win.data() + 1,
                             plan->window - 1));
  }
  const PerplexityResult r = perplexity_result(*plan, nll);
  EXPECT_EQ(r.mean_nll, direct->mean_nll);
  EXPECT_EQ(r.ppl, direct->ppl);
  EXPECT_EQ(r.scored_tokens, direct->scored_tokens);
  EXPECT_EQ(r.windows, direct->windows);
}

// ---- llmq eval --device (every build; the GPU is hidden where one is present) -----------------

class EvalDevice : public ::testing::Test {
 protected:
  void SetUp() override {
    LLMQ_REQUIRE_TEST_DATA();
    dir_ = testing::scratch_dir("runner-eval");
    text_ = dir_ + "/ts.txt";
    std::ofstream(text_, std::ios::binary) << utf8_prefix(slurp(data("text/tinystories_val.txt")), 8000);
  }
  void TearDown() override {
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }
  // The ids `eval --ppl text_ --limit-tokens n` scores.
  std::vector<int32_t> text_ids(const std::string& model, int64_t n) {
    auto tok = load_tokenizer(model_dir(model));
    EXPECT_TRUE(tok);
    std::vector<int32_t> ids = (*tok)->encode(slurp(text_));
    if (static_cast<int64_t>(ids.size()) > n) ids.resize(n);
    return ids;
  }
  std::string dir_, text_;
};

TEST_F(EvalDevice, OptionErrorsAreOneLine) {
  const std::string m = " --model " + model_dir("stories260k") + " --ppl " + text_;
  expect_one_line_error(run_llmq("eval" + m + " --device tpu"), "--device must be cpu, gpu or auto, not 'tpu'");
  expect_one_line_error(run_llmq("eval" + m + " --device gpu --precision f32"), "--precision f32 needs --device cpu");
  expect_one_line_error(run_llmq("eval" + m + " --device gpu --logits-out " + dir_ + "/l.st"),
                        "--logits-out writes the CPU reference forward's logits");
}

TEST_F(EvalDevice, GpuWithoutGpuFailsWithOneLine) {
  const ScopedEnv hide("CUDA_VISIBLE_DEVICES", "");  // no device for the child, CUDA build or not
  const std::string m = " --model " + model_dir("stories260k");
  const RunResult r = run_llmq("eval" + m + " --ppl " + text_ + " --seq-len 64 --device gpu --json " + dir_ + "/g.json");
  expect_one_line_error(r, "--device gpu: ");
  EXPECT_NE(r.out.find(built_with_cuda() ? "CUDA device" : "built without CUDA"), std::string::npos) << r.out;
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/g.json"));
  expect_one_line_error(run_llmq("eval" + m + " --gsm8k " + data("gsm8k/test.jsonl") + " --limit 1 --device gpu"),
                        "--device gpu: ");
  // auto without a GPU: the CPU path, float32 by default, labelled so.
  const RunResult a = run_llmq("eval" + m + " --ppl " + text_ + " --seq-len 64 --limit-tokens 400 --json " + dir_ + "/a.json");
  ASSERT_EQ(a.exit_code, 0) << a.out;
  const nlohmann::json j = nlohmann::json::parse(slurp(dir_ + "/a.json"));
  EXPECT_EQ(j.at("device"), "cpu");
  EXPECT_EQ(j.at("perplexity").at("device"), "cpu");
  EXPECT_EQ(j.at("precision"), "float32");
  EXPECT_NE(a.out.find("device: cpu (CPU reference forward, float32;"), std::string::npos) << a.out;
}

// --device cpu is the CPU path of before, to the byte, in either precision.
TEST_F(EvalDevice, CpuNumbersAreTheLibrarys) {
  const std::string dir = model_dir("tinystories-656k");
  auto ckpt = HfCheckpoint::open(dir);
  ASSERT_TRUE(ckpt);
  auto model = LlamaModel::load(*ckpt);
  ASSERT_TRUE(model);
  const std::vector<int32_t> ids = text_ids("tinystories-656k", 1000);
  for (auto [flag, precision] : {std::pair{"f32", Precision::kFloat32}, std::pair{"bf16", Precision::kBFloat16}}) {
    const std::string json = dir_ + "/cpu-" + flag + ".json";
    const RunResult r = run_llmq("eval --model " + dir + " --ppl " + text_ + " --seq-len 128 --limit-tokens 1000 " +
                                 "--device cpu --precision " + flag + " --json " + json);
    ASSERT_EQ(r.exit_code, 0) << r.out;
    const nlohmann::json j = nlohmann::json::parse(slurp(json));
    PerplexityConfig pc;
    pc.window = 128;
    pc.precision = precision;
    auto want = perplexity(*model, ids, pc);
    ASSERT_TRUE(want);
    EXPECT_EQ(j.at("perplexity").at("ppl").get<double>(), want->ppl) << flag;
    EXPECT_EQ(j.at("perplexity").at("mean_nll").get<double>(), want->mean_nll) << flag;
    EXPECT_EQ(j.at("device"), "cpu");
    EXPECT_EQ(j.at("perplexity").at("device"), "cpu");
    EXPECT_EQ(j.at("precision"), std::string(precision_name(precision)));
  }
}

#if LLMQ_HAVE_CUDA

// ---- the runner ------------------------------------------------------------------------------

// The goldens' perplexity setting for one model (golden/models.json, bfloat16).
struct GoldenPpl {
  std::vector<int32_t> ids;
  int64_t window = 0, stride = 0, scored_tokens = 0;
  double ppl = 0;
};

GoldenPpl golden_ppl(const std::string& model, const Tokenizer& tok) {
  const nlohmann::json all = nlohmann::json::parse(slurp(data("golden/models.json")));
  const nlohmann::json& want = all.at(model).at("bfloat16").at("ppl_tinystories");
  GoldenPpl g;
  g.ids = tok.encode(utf8_prefix(slurp(data("text/tinystories_val.txt")), want.at("chars").get<size_t>()));
  g.window = want.at("window").get<int64_t>();
  g.stride = want.at("stride").get<int64_t>();
  g.scored_tokens = want.at("scored_tokens").get<int64_t>();
  g.ppl = want.at("ppl").get<double>();
  EXPECT_EQ(static_cast<int64_t>(g.ids.size()), want.at("tokens").get<int64_t>()) << model;
  return g;
}

std::unique_ptr<Engine> load_engine(const std::string& dir, int capacity, int max_batch = 1) {
  EngineOptions opt;
  opt.capacity = capacity;
  opt.max_batch = max_batch;
  auto e = Engine::load(dir, opt);
  EXPECT_TRUE(e) << e.status().message();
  return e ? std::move(*e) : nullptr;
}

// perplexity_on_engine is the CPU convention over the engine's logits: an independent host loop
// (overlapping windows, n - W not a multiple of S, capacity above W) gives the same mean NLL to
// double rounding, and two runs give the same bytes (the runner is deterministic).
TEST(RunnerEval, PerplexityIsTheConventionOverEngineLogits) {
  LLMQ_REQUIRE_GPU();
  LLMQ_REQUIRE_TEST_DATA();
  const std::string dir = model_dir("stories260k");
  auto tok = load_tokenizer(dir);
  ASSERT_TRUE(tok);
  const std::vector<int32_t> ids = (*tok)->encode(utf8_prefix(slurp(data("text/tinystories_val.txt")), 6000));
  const int64_t n = static_cast<int64_t>(ids.size()), W = 100, S = 70;
  ASSERT_GT(n, 1000);
  auto engine = load_engine(dir, 128);
  ASSERT_TRUE(engine);
  PerplexityConfig pc;
  pc.window = W;
  pc.stride = S;
  pc.precision = Precision::kBFloat16;
  auto r = perplexity_on_engine(*engine, ids, pc);
  ASSERT_TRUE(r) << r.status().message();

  double total = 0;
  int64_t windows = 0, scored = 0;
  for (int64_t s = 0; s < n - W; s += S, ++windows) {
    auto logits = engine->prefill({std::vector<int32_t>(ids.begin() + s, ids.begin() + s + W)}, true);
    ASSERT_TRUE(logits) << logits.status().message();
    const int64_t V = logits->dim(1);
    for (int64_t t = 0; t + 1 < W; ++t, ++scored) {
      const float* z = logits->data<float>() + t * V;
      const double m = *std::max_element(z, z + V);
      double sum = 0;
      for (int64_t i = 0; i < V; ++i) sum += std::exp(static_cast<double>(z[i]) - m);
      ASSERT_TRUE(std::isfinite(sum));
      total += m + std::log(sum) - z[ids[s + t + 1]];
    }
  }
  EXPECT_EQ(r->windows, windows);
  EXPECT_EQ(r->scored_tokens, scored);
  EXPECT_EQ(r->window, W);
  EXPECT_EQ(r->stride, S);
  const double mean = total / static_cast<double>(scored);
  ASSERT_TRUE(std::isfinite(r->mean_nll) && r->mean_nll > 0.0);
  EXPECT_NEAR(r->mean_nll, mean, kSumOrderRel * mean);
  auto again = perplexity_on_engine(*engine, ids, pc);
  ASSERT_TRUE(again);
  EXPECT_EQ(again->mean_nll, r->mean_nll) << "the runner is not deterministic";

  pc.precision = Precision::kFloat32;
  auto f32 = perplexity_on_engine(*engine, ids, pc);
  ASSERT_FALSE(f32);
  EXPECT_NE(f32.status().message().find("computes in bfloat16"), std::string::npos) << f32.status().message();
  pc.precision = Precision::kBFloat16;
  pc.window = 200;
  auto wide = perplexity_on_engine(*engine, ids, pc);
  ASSERT_FALSE(wide);
  EXPECT_NE(wide.status().message().find("exceeds the engine's 128 positions"), std::string::npos)
      << wide.status().message();
}

// GPU perplexity against the CPU path at bf16 under the file comment's bound B, and against the
// transformers bf16 golden, on both tiny models.
TEST(RunnerEval, PerplexityMatchesCpuBf16) {
  LLMQ_REQUIRE_GPU();
  LLMQ_REQUIRE_TEST_DATA();
  for (const std::string name : {"stories260k", "tinystories-656k"}) {
    const std::string dir = model_dir(name);
    auto ref = load_cpu_reference(dir);
    ASSERT_TRUE(ref) << ref.status().message();
    const LlamaModel& model = ref->model;
    const Tokenizer& tok = *ref->tok;
    const GoldenPpl g = golden_ppl(name, tok);
    PerplexityConfig pc;
    pc.window = g.window;
    pc.stride = g.stride;
    pc.precision = Precision::kBFloat16;
    auto cpu = perplexity(model, g.ids, pc);
    auto gpu = perplexity_gpu(dir, g.ids, pc);
    ASSERT_TRUE(cpu) << cpu.status().message();
    ASSERT_TRUE(gpu) << gpu.status().message();
    EXPECT_EQ(gpu->scored_tokens, g.scored_tokens) << name;
    EXPECT_EQ(gpu->scored_tokens, cpu->scored_tokens) << name;
    EXPECT_EQ(gpu->windows, cpu->windows) << name;
    ASSERT_TRUE(std::isfinite(gpu->ppl) && gpu->ppl > 1.0) << name;

    // B = (2/N) Σ ‖δ_t‖∞ over the scored rows, and each row within the engine's bound.
    auto plan = plan_perplexity(model.config(), g.ids, pc);
    ASSERT_TRUE(plan);
    auto engine = load_engine(dir, static_cast<int>(plan->window));
    ASSERT_TRUE(engine);
    double bound = 0, sum_scale = 0, worst_row = 0;
    int64_t rows_outside = 0;
    for (int64_t w = 0; w < plan->windows; ++w) {
      const std::vector<int32_t> win(g.ids.begin() + plan->begin(w), g.ids.begin() + plan->begin(w) + plan->window);
      KvCache cache = model.make_cache(plan->window);
      const Tensor zc = model.prefill(win, cache, LogitsFor::kAll, {Precision::kBFloat16, nullptr});
      auto zg = engine->prefill({win}, true);
      ASSERT_TRUE(zg) << zg.status().message();
      ASSERT_EQ(zg->shape(), zc.shape());
      const int64_t V = zc.dim(1);
      for (int64_t t = 0; t + 1 < plan->window; ++t) {
        double err = 0, scale = 0;
        for (int64_t i = 0; i < V; ++i) {
          const double c = zc.data<float>()[t * V + i], d = zg->data<float>()[t * V + i];
          ASSERT_TRUE(std::isfinite(d)) << name << " window " << w << " row " << t;
          err = std::max(err, std::fabs(d - c));
          scale = std::max(scale, std::fabs(c));
        }
        ASSERT_GT(scale, 0.0) << name << ": all-zero logits";
        rows_outside += err > kRowMaxRel * scale;
        worst_row = std::max(worst_row, err / scale);
        bound += 2 * err;
        sum_scale += scale;
      }
    }
    const double N = static_cast<double>(gpu->scored_tokens);
    bound /= N;
    const double a_priori = 2 * kRowMaxRel * sum_scale / N, diff = std::fabs(gpu->mean_nll - cpu->mean_nll);
    std::printf("[ ppl      ] %-17s gpu %.6f  cpu bf16 %.6f  golden bf16 %.6f  |Δ mean NLL| %.3g  B %.3g  "
                "(a priori %.3g)  worst row ‖δ‖∞/‖z‖∞ %.3g\n",
                name.c_str(), gpu->ppl, cpu->ppl, g.ppl, diff, bound, a_priori, worst_row);
    EXPECT_EQ(rows_outside, 0) << name << ": rows beyond the engine's bound " << kRowMaxRel;
    EXPECT_LE(diff, bound) << name;
    EXPECT_LE(bound, a_priori) << name;
    EXPECT_NEAR(gpu->ppl, g.ppl, kGoldenRel * g.ppl) << name;
  }
}

// The prompt ids evaluate_gsm8k* fed the model for one sample (encode, then left truncation).
std::vector<int32_t> sample_prompt_ids(const Tokenizer& tok, const Gsm8kSample& s) {
  std::vector<int32_t> ids = tok.encode(s.request.prompt);
  ids.erase(ids.begin(), ids.begin() + s.truncated_tokens);
  return ids;
}

// GSM8K through the runner (batches of 4 over 6 docs: one short batch) against the CPU path at
// bf16: the same samples wherever the greedy tokens agree, and divergence only at near ties.
TEST(RunnerEval, Gsm8kMatchesCpuBf16) {
  LLMQ_REQUIRE_GPU();
  LLMQ_REQUIRE_TEST_DATA();
  auto test = load_gsm8k_jsonl(data("gsm8k/test.jsonl"));
  auto train = load_gsm8k_jsonl(data("gsm8k/train.jsonl"));
  ASSERT_TRUE(test && train);
  for (const std::string name : {"stories260k", "tinystories-656k"}) {
    const std::string dir = model_dir(name);
    auto ref = load_cpu_reference(dir);
    ASSERT_TRUE(ref) << ref.status().message();
    const LlamaModel& model = ref->model;
    const Tokenizer& tok = *ref->tok;
    Gsm8kConfig c;
    c.limit = 6;
    c.batch = 4;
    c.max_gen_toks = 48;
    c.precision = Precision::kBFloat16;
    c.progress = false;
    auto cpu = evaluate_gsm8k(model, tok, *test, *train, c);
    auto gpu = evaluate_gsm8k_gpu(dir, tok, *test, *train, c);
    ASSERT_TRUE(cpu) << cpu.status().message();
    ASSERT_TRUE(gpu) << gpu.status().message();
    ASSERT_EQ(gpu->samples.size(), 6u);
    ASSERT_EQ(cpu->samples.size(), 6u);
    EXPECT_EQ(gpu->batch, 4);
    EXPECT_EQ(gpu->until, cpu->until);
    int identical = 0;
    for (size_t i = 0; i < 6; ++i) {
      const Gsm8kSample& g = gpu->samples[i];
      const Gsm8kSample& r = cpu->samples[i];
      EXPECT_EQ(g.request.prompt, r.request.prompt) << name << " doc " << i;
      EXPECT_EQ(g.prompt_tokens, r.prompt_tokens) << name << " doc " << i;
      ASSERT_FALSE(g.tokens.empty()) << name << " doc " << i;
      if (g.tokens == r.tokens) {
        ++identical;
        EXPECT_EQ(g.output, r.output) << name << " doc " << i;
        EXPECT_EQ(g.stop, r.stop) << name << " doc " << i;
        EXPECT_EQ(g.extracted, r.extracted) << name << " doc " << i;
        EXPECT_EQ(g.correct, r.correct) << name << " doc " << i;
        continue;
      }
      size_t same = 0;
      while (same < g.tokens.size() && same < r.tokens.size() && g.tokens[same] == r.tokens[same]) ++same;
      ASSERT_LT(same, std::min(g.tokens.size(), r.tokens.size()))
          << name << " doc " << i << ": one continuation is a prefix of the other (the stops differ)";
      std::vector<int32_t> context = sample_prompt_ids(tok, r);
      ASSERT_EQ(static_cast<int64_t>(context.size()), r.prompt_tokens);
      context.insert(context.end(), r.tokens.begin(), r.tokens.begin() + same);
      KvCache kc = model.make_cache(static_cast<int64_t>(context.size()));
      const Tensor l = model.prefill(context, kc, LogitsFor::kLast, {Precision::kBFloat16, nullptr});
      const float* z = l.data<float>();
      const int64_t V = l.dim(1);
      double scale = 0;
      for (int64_t v = 0; v < V; ++v) scale = std::max(scale, std::fabs(static_cast<double>(z[v])));
      EXPECT_LE(z[r.tokens[same]] - z[g.tokens[same]], kRowMaxRel * scale)
          << name << " doc " << i << ": greedy continuations diverge at token " << same << " without a near tie";
      std::printf("[ gsm8k    ] %s doc %zu: diverges at token %zu of %zu at a near tie (margin %.3g, bound %.3g)\n",
                  name.c_str(), i, same, r.tokens.size(), z[r.tokens[same]] - z[g.tokens[same]], kRowMaxRel * scale);
    }
    std::printf("[ gsm8k    ] %s: %d of 6 samples identical to the CPU path\n", name.c_str(), identical);
    if (identical == 6) {
      for (size_t f = 0; f < cpu->metrics.size(); ++f)
        EXPECT_EQ(gpu->metrics[f].exact_match, cpu->metrics[f].exact_match) << name << " " << cpu->metrics[f].filter;
    }
  }
}

// `llmq eval` on a GPU: auto and --device gpu run the runner and say so; the numbers are the
// library's to the byte; --precision f32 under auto stays on the CPU.
TEST_F(EvalDevice, GpuThroughTheCli) {
  LLMQ_REQUIRE_GPU();
  const std::string dir = model_dir("stories260k");
  const std::vector<int32_t> ids = text_ids("stories260k", 2000);
  PerplexityConfig pc;
  pc.window = 256;
  pc.precision = Precision::kBFloat16;
  auto want = perplexity_gpu(dir, ids, pc);
  ASSERT_TRUE(want) << want.status().message();
  const std::string label = gpu_device_label();
  ASSERT_EQ(label.rfind("cuda:", 0), 0u) << label;
  for (const std::string device : {"gpu", "auto"}) {
    const std::string json = dir_ + "/" + device + ".json", samples = dir_ + "/" + device + ".jsonl";
    const RunResult r = run_llmq("eval --model " + dir + " --ppl " + text_ + " --seq-len 256 --limit-tokens 2000 --gsm8k " +
                                 data("gsm8k/test.jsonl") + " --limit 3 --batch 2 --max-gen-toks 32 --device " + device +
                                 " --json " + json + " --samples-out " + samples);
    ASSERT_EQ(r.exit_code, 0) << r.out;
    EXPECT_NE(r.out.find("device: " + label + " (GPU runner, bfloat16;"), std::string::npos) << r.out;
    const nlohmann::json j = nlohmann::json::parse(slurp(json));
    EXPECT_EQ(j.at("device"), label);
    EXPECT_EQ(j.at("perplexity").at("device"), label);
    EXPECT_EQ(j.at("gsm8k_device"), label);
    EXPECT_EQ(j.at("precision"), "bfloat16");
    EXPECT_EQ(j.at("perplexity").at("ppl").get<double>(), want->ppl) << device;
    EXPECT_EQ(j.at("configs").at("gsm8k").at("batch_size"), 2);
    const std::string lines = slurp(samples);
    EXPECT_EQ(std::count(lines.begin(), lines.end(), '\n'), 3) << device;
  }
  // The CLI's GSM8K samples are evaluate_gsm8k_gpu's.
  auto tok = load_tokenizer(dir);
  auto test = load_gsm8k_jsonl(data("gsm8k/test.jsonl"));
  auto train = load_gsm8k_jsonl(data("gsm8k/train.jsonl"));
  ASSERT_TRUE(tok && test && train);
  Gsm8kConfig c;
  c.limit = 3;
  c.batch = 2;
  c.max_gen_toks = 32;
  c.precision = Precision::kBFloat16;
  c.progress = false;
  auto lib = evaluate_gsm8k_gpu(dir, **tok, *test, *train, c);
  ASSERT_TRUE(lib) << lib.status().message();
  EXPECT_EQ(slurp(dir_ + "/gpu.jsonl"), gsm8k_samples_jsonl(*lib));

  const RunResult f32 = run_llmq("eval --model " + dir + " --ppl " + text_ + " --seq-len 256 --limit-tokens 2000 " +
                                 "--precision f32 --json " + dir_ + "/f32.json");
  ASSERT_EQ(f32.exit_code, 0) << f32.out;
  const nlohmann::json j = nlohmann::json::parse(slurp(dir_ + "/f32.json"));
  EXPECT_EQ(j.at("device"), "cpu");
  EXPECT_EQ(j.at("precision"), "float32");
}

#endif  // LLMQ_HAVE_CUDA

}  // namespace
}  // namespace llmq
