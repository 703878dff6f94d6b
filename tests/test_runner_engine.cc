// The runner end to end on the tiny real models: logits of prefill and decode, and greedy
// continuations, against the CPU reference LlamaModel in Precision::kBFloat16 (the same
// rounding points), for the BF16 checkpoints and for FP8 / INT8 / W4A16 copies written here
// (RTN, quantized in memory and packed by formats/quant_formats.h).
//
// Tolerance. Every kernel reproduces the reference's rounding points; the forwards differ
// only where an f32 summation order (GEMM tiles, attention, the norm's sum) puts a value on the
// other side of a bf16 rounding boundary, which moves it by one bf16 ulp (2^-8 relative).
// Such flips compound through the layers and the residual stream (measured on H100: max
// 2^-6.7, mean 2^-7.7 of max|logit| for stories260k), so we allow per row
//   BF16, INT8, W4A16: max |Δ| <= 2^-4 · max|ref| (16 bf16 ulps of the largest logit),
//                      mean |Δ| <= 2^-6 · max|ref|;
//   FP8:               a bf16-level difference that moves an activation across an e4m3
//                      rounding boundary changes its code by one e4m3 step (2^-3 relative, 32x
//                      a bf16 ulp), and Hopper's FP8 MMA keeps ~14 bits: max <= 2^-2, mean <= 2^-5.
// The argmax agrees wherever the reference's top-2 margin exceeds the max bound, and greedy
// continuations agree token for token until a step where the reference's margin between its
// token and ours is within the max bound (a near tie that either order could break).
// The measured values are printed.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <tuple>

#include "formats/checkpoint.h"
#include "formats/quant_formats.h"
#include "formats/safetensors.h"
#include "model/generate.h"
#include "model/llama.h"
#include "pipeline/quantize.h"
#include "quantizers/fp8.h"
#include "quantizers/rtn.h"
#include "runner/engine.h"
#include "runner/linear.h"
#include "gptq_test_util.h"
#include "runner_test_util.h"
#include "tests/test_data.h"

namespace llmq {
namespace {

std::string model_dir(const std::string& name) { return testing::test_data_dir() + "/models/" + name; }

std::vector<int32_t> prompt_ids(int n, int64_t vocab, uint32_t seed) {
  std::vector<int32_t> ids = {1};  // BOS
  uint32_t s = seed;
  while (static_cast<int>(ids.size()) < n) {
    s = s * 1664525u + 1013904223u;
    ids.push_back(static_cast<int32_t>(3 + (s >> 8) % (vocab - 3)));
  }
  return ids;
}

// Sequences in the widest batch check_against_cpu runs: more decode rows than a GEMV takes.
constexpr int kWideBatch = 12;

struct Tolerance {
  double max_rel, mean_rel;  // of max|ref| per row
};
constexpr Tolerance kTolBf16{1.0 / 16, 1.0 / 64};
constexpr Tolerance kTolFp8{1.0 / 4, 1.0 / 32};

struct Diff {
  double max_rel = 0, mean_rel = 0;  // relative to max|ref| of the row, worst row
  int argmax_mismatch = 0;
};

// Compares logits row by row under the file comment's bounds.
Diff compare_logits(const Tensor& gpu, const Tensor& cpu, const Tolerance& tol, const char* what) {
  EXPECT_EQ(gpu.shape(), cpu.shape()) << what;
  Diff d;
  const int64_t rows = cpu.dim(0), V = cpu.dim(1);
  for (int64_t r = 0; r < rows; ++r) {
    const float* g = gpu.data<float>() + r * V;
    const float* c = cpu.data<float>() + r * V;
    double scale = 0, sum = 0, mx = 0;
    for (int64_t i = 0; i < V; ++i) {
      EXPECT_TRUE(std::isfinite(g[i])) << what << " row " << r;
      scale = std::max(scale, std::fabs(static_cast<double>(c[i])));
    }
    EXPECT_GT(scale, 0.0) << what << ": all-zero reference row";
    for (int64_t i = 0; i < V; ++i) {
      const double e = std::fabs(static_cast<double>(g[i]) - c[i]);
      mx = std::max(mx, e);
      sum += e;
    }
    d.max_rel = std::max(d.max_rel, mx / scale);
    d.mean_rel = std::max(d.mean_rel, sum / V / scale);
    const int64_t ag = std::max_element(g, g + V) - g, ac = std::max_element(c, c + V) - c;
    std::vector<float> sorted(c, c + V);
    std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<float>());
    if (ag != ac && sorted[0] - sorted[1] > tol.max_rel * scale) ++d.argmax_mismatch;
  }
  EXPECT_LE(d.max_rel, tol.max_rel) << what;
  EXPECT_LE(d.mean_rel, tol.mean_rel) << what;
  EXPECT_EQ(d.argmax_mismatch, 0) << what;
  std::printf("[ logits   ] %-40s max|Δ|/max|ref| %.3g  mean %.3g\n", what, d.max_rel, d.mean_rel);
  return d;
}

// The engine against LlamaModel on the checkpoint in `dir`: prefill logits of every position,
// eight decode steps, a batch of three prompts of different lengths, greedy continuations.
void check_against_cpu(const std::string& dir, const std::string& label, const Tolerance& tol) {
  auto ckpt = HfCheckpoint::open(dir);
  ASSERT_TRUE(ckpt.has_value()) << ckpt.status().message();
  auto model = LlamaModel::load(*ckpt);
  ASSERT_TRUE(model.has_value()) << model.status().message();
  EngineOptions opt;
  opt.max_batch = kWideBatch;
  opt.capacity = 128;
  opt.max_rows = 40;  // smaller than the batched prefill: exercises chunking across sequences
  auto engine = Engine::load(dir, opt);
  ASSERT_TRUE(engine.has_value()) << engine.status().message();
  Engine& e = **engine;
  const ForwardOptions fo{Precision::kBFloat16, nullptr};
  const int64_t V = model->vocab_size();

  const std::vector<int32_t> p0 = prompt_ids(24, V, 7), p1 = prompt_ids(5, V, 8), p2 = prompt_ids(33, V, 9);
  KvCache cache = model->make_cache(128);
  const Tensor cpu_all = model->prefill(p0, cache, LogitsFor::kAll, fo);
  auto gpu_all = e.prefill({p0}, /*all_logits=*/true);
  ASSERT_TRUE(gpu_all.has_value()) << gpu_all.status().message();
  compare_logits(*gpu_all, cpu_all, tol, (label + " prefill, all positions").c_str());

  int32_t tok = 5;
  for (int step = 0; step < 8; ++step) {
    const Tensor cpu_step = model->decode_step(tok, cache, fo);
    auto gpu_step = e.decode({tok});
    ASSERT_TRUE(gpu_step.has_value()) << gpu_step.status().message();
    compare_logits(*gpu_step, cpu_step, tol, (label + " decode step " + std::to_string(step)).c_str());
    tok = static_cast<int32_t>(std::max_element(cpu_step.data<float>(), cpu_step.data<float>() + V) - cpu_step.data<float>());
  }

  // Three sequences in one batch: each must see only its own slot.
  auto gpu_batch = e.prefill({p0, p1, p2});
  ASSERT_TRUE(gpu_batch.has_value()) << gpu_batch.status().message();
  std::vector<int32_t> next(3);
  Tensor cpu_last(DType::kF32, {3, V});
  std::vector<KvCache> caches;
  for (int b = 0; b < 3; ++b) {
    caches.push_back(model->make_cache(128));
    const Tensor l = model->prefill(b == 0 ? p0 : b == 1 ? p1 : p2, caches.back(), LogitsFor::kLast, fo);
    std::copy(l.data<float>(), l.data<float>() + V, cpu_last.data<float>() + b * V);
    next[b] = static_cast<int32_t>(std::max_element(l.data<float>(), l.data<float>() + V) - l.data<float>());
  }
  compare_logits(*gpu_batch, cpu_last, tol, (label + " batched prefill (3 prompts)").c_str());
  auto gpu_dec = e.decode(next);
  ASSERT_TRUE(gpu_dec.has_value()) << gpu_dec.status().message();
  Tensor cpu_dec(DType::kF32, {3, V});
  for (int b = 0; b < 3; ++b) {
    const Tensor l = model->decode_step(next[b], caches[b], fo);
    std::copy(l.data<float>(), l.data<float>() + V, cpu_dec.data<float>() + b * V);
  }
  compare_logits(*gpu_dec, cpu_dec, tol, (label + " batched decode").c_str());

  // Greedy continuations, batched on the GPU, one by one on the CPU.
  const std::vector<int32_t> eos(ckpt->config().eos_token_ids.begin(), ckpt->config().eos_token_ids.end());
  auto gen = e.generate_greedy({p0, p1, p2}, 40, eos);
  ASSERT_TRUE(gen.has_value()) << gen.status().message();
  for (int b = 0; b < 3; ++b) {
    GenerateConfig gc;
    gc.max_new_tokens = 40;
    gc.eos_ids = eos;
    gc.precision = Precision::kBFloat16;
    const std::vector<int32_t>& prompt = b == 0 ? p0 : b == 1 ? p1 : p2;
    auto cpu_gen = generate_greedy(*model, prompt, gc);
    ASSERT_TRUE(cpu_gen.has_value()) << cpu_gen.status().message();
    const std::vector<int32_t>& g = gen->tokens[b];
    const std::vector<int32_t>& r = cpu_gen->tokens;
    size_t same = 0;
    while (same < g.size() && same < r.size() && g[same] == r[same]) ++same;
    if (same < std::min(g.size(), r.size())) {
      // Diverged: only acceptable at a near tie of the reference.
      std::vector<int32_t> context = prompt;
      context.insert(context.end(), r.begin(), r.begin() + same);
      KvCache kc = model->make_cache(static_cast<int64_t>(context.size()));
      const Tensor l = model->prefill(context, kc, LogitsFor::kLast, fo);
      const float* lp = l.data<float>();
      const double scale = std::fabs(*std::max_element(lp, lp + V, [](float x, float y) { return std::fabs(x) < std::fabs(y); }));
      EXPECT_LE(lp[r[same]] - lp[g[same]], tol.max_rel * scale)
          << label << " prompt " << b << ": greedy continuations diverge at token " << same << " without a near tie";
    } else {
      EXPECT_EQ(g, r) << label << " greedy continuation of prompt " << b;
    }
    std::printf("[ greedy   ] %s prompt %d: %zu of %zu tokens identical\n", label.c_str(), b, same, r.size());
  }

  // Twelve sequences: decode rows beyond the GEMVs' 8 (cuBLASLt with its separate residual add
  // and SwiGLU, or W4A16's tensor-core kernels); two steps, the second replayed from the graph.
  std::vector<std::vector<int32_t>> wide;
  for (int b = 0; b < kWideBatch; ++b) wide.push_back(prompt_ids(3 + 2 * b, V, 20 + b));
  auto wide_prefill = e.prefill(wide);
  ASSERT_TRUE(wide_prefill.has_value()) << wide_prefill.status().message();
  std::vector<KvCache> wide_caches;
  std::vector<int32_t> wide_next(kWideBatch);
  const auto argmax_of = [&](const float* l) { return static_cast<int32_t>(std::max_element(l, l + V) - l); };
  for (int b = 0; b < kWideBatch; ++b) {
    wide_caches.push_back(model->make_cache(128));
    wide_next[b] = argmax_of(model->prefill(wide[b], wide_caches.back(), LogitsFor::kLast, fo).data<float>());
  }
  for (int step = 0; step < 2; ++step) {
    auto gpu_wide = e.decode(wide_next);
    ASSERT_TRUE(gpu_wide.has_value()) << gpu_wide.status().message();
    Tensor cpu_wide(DType::kF32, {kWideBatch, V});
    for (int b = 0; b < kWideBatch; ++b) {
      const Tensor l = model->decode_step(wide_next[b], wide_caches[b], fo);
      std::copy(l.data<float>(), l.data<float>() + V, cpu_wide.data<float>() + b * V);
      wide_next[b] = argmax_of(l.data<float>());
    }
    compare_logits(*gpu_wide, cpu_wide, tol, (label + " decode of 12, step " + std::to_string(step)).c_str());
  }
  std::printf("[ engine   ] %s: %s, %.1f KiB of weights\n", label.c_str(), e.format_name().c_str(), e.weight_bytes() / 1024.0);
}

TEST(RunnerEngine, Bf16MatchesCpuReference) {
  LLMQ_REQUIRE_GPU();
  LLMQ_REQUIRE_TEST_DATA();
  for (const char* name : {"stories260k", "tinystories-656k"}) check_against_cpu(model_dir(name), name, kTolBf16);
}

// Writes an RTN-quantized copy of a BF16 checkpoint in `format` (linears whose in_features
// the group does not divide stay BF16, listed in "ignore").
void write_quantized_copy(const std::string& src, const std::string& dst, QuantFormat format) {
  auto ckpt = HfCheckpoint::open(src);
  ASSERT_TRUE(ckpt.has_value()) << ckpt.status().message();
  QuantConfigInfo info;
  info.format = format;
  info.group_size = 128;
  info.symmetric = false;
  SafetensorsWriter w;
  for (const std::string& name : ckpt->tensors().names()) {
    auto view = ckpt->tensors().view(name);
    ASSERT_TRUE(view.has_value());
    const bool linear = name.find("model.layers.") == 0 && name.find("_proj.weight") != std::string::npos;
    const int64_t in = view->rank() == 2 ? view->dim(1) : 0;
    if (!linear || (format == QuantFormat::kCtPack && in % info.group_size != 0)) {
      if (linear) info.ignore.push_back(name.substr(0, name.size() - 7));
      w.add(name, *view);
      continue;
    }
    const Tensor f = to_f32(*view);
    QuantizedLinear q;
    if (format == QuantFormat::kCtFloat) q = quantize_fp8_channel(f.view(), Fp8Config{});
    if (format == QuantFormat::kCtInt) q = quantize_rtn_int8(f.view(), Int8Config{});
    if (format == QuantFormat::kCtPack) q = quantize_rtn_int4(f.view(), Int4Config{128, Int4Range::kAsymWithZero, DType::kBF16, 0});
    auto packed = pack_quantized_linear(name.substr(0, name.size() - 7), q, format);
    ASSERT_TRUE(packed.has_value()) << packed.status().message();
    for (NamedTensor& t : *packed) w.add(t.name, std::move(t.tensor));
  }
  std::filesystem::create_directories(dst);
  ASSERT_TRUE(w.write(dst + "/model.safetensors").is_ok());
  std::ifstream in(src + "/config.json");
  nlohmann::json config = nlohmann::json::parse(in);
  config["quantization_config"] = nlohmann::json::parse(quantization_config_json(info).dump());
  std::ofstream(dst + "/config.json") << config.dump(2);
}

TEST(RunnerEngine, QuantizedMatchCpuReference) {
  LLMQ_REQUIRE_GPU();
  LLMQ_REQUIRE_TEST_DATA();
  const std::string scratch = testing::scratch_dir("runner-engine");
  for (auto [format, label] : {std::pair{QuantFormat::kCtFloat, "fp8"}, std::pair{QuantFormat::kCtInt, "int8"},
                               std::pair{QuantFormat::kCtPack, "w4a16"}}) {
    const Tolerance tol = format == QuantFormat::kCtFloat ? kTolFp8 : kTolBf16;
    const std::string dst = scratch + "/" + label;
    write_quantized_copy(model_dir("tinystories-656k"), dst, format);
    if (::testing::Test::HasFatalFailure()) return;
    check_against_cpu(dst, std::string("tinystories-656k ") + label, tol);
  }
  std::filesystem::remove_all(scratch);
}

// Checkpoints made by `llmq quantize` with the real methods (so with AWQ's F16 scales and zero
// points, GPTQ v1's offset zeros and act-order g_idx, SmoothQuant's folded norms) in each of
// their formats, through the runner against LlamaModel on the same files.
TEST(RunnerEngine, PipelineCheckpointsMatchCpuReference) {
  LLMQ_REQUIRE_GPU();
  LLMQ_REQUIRE_TEST_DATA();
  const std::string scratch = testing::scratch_dir("runner-engine-pipeline");
  struct Case { const char* label; const char* method; const char* format; bool act_order; };
  const Case cases[] = {{"int8-sq", "int8-sq", "", false},
                        {"gptq-v1 act-order", "gptq", "gptq", true},
                        {"gptq compressed-tensors", "gptq", "compressed-tensors", false},
                        {"awq", "awq", "", false}};
  for (const Case& k : cases) {
    QuantizeOptions o;
    o.model_dir = model_dir("tinystories-656k");
    o.method = k.method;
    o.format = k.format;
    o.out = scratch + "/" + std::string(k.method) + "-" + std::to_string(&k - cases);
    o.dataset.path = testing::test_data_dir() + "/text/calib_mixed.txt";
    o.samples = 16;
    o.seq_len = 256;
    o.act_order = k.act_order;
    o.awq_grid = 10;
    o.progress = false;
    auto r = quantize(o);
    ASSERT_TRUE(r.has_value()) << k.label << ": " << r.status().message();
    check_against_cpu(o.out, std::string("tinystories-656k ") + k.label, kTolBf16);
  }
  std::filesystem::remove_all(scratch);
}

// stories260k in an engine of two slots of 64 positions, forwards of up to max_rows rows.
Expected<std::unique_ptr<Engine>> two_slot_stories260k(int max_rows = EngineOptions{}.max_rows) {
  EngineOptions opt;
  opt.max_batch = 2;
  opt.capacity = 64;
  opt.max_rows = max_rows;
  return Engine::load(model_dir("stories260k"), opt);
}

// The benchmark's prefill_greedy and per-op profiles: a profiled prefill (chunked: max_rows
// below the prompts) and decode step name the forward's ops, and leave the same logits as
// unprofiled calls.
TEST(RunnerEngine, ProfilesNameTheOpsAndChangeNothing) {
  LLMQ_REQUIRE_GPU();
  LLMQ_REQUIRE_TEST_DATA();
  auto e = two_slot_stories260k(/*max_rows=*/24);
  ASSERT_TRUE(e.has_value()) << e.status().message();
  Engine& engine = **e;
  const std::vector<std::vector<int32_t>> prompts = {prompt_ids(20, 512, 3), prompt_ids(13, 512, 4)};
  auto plain = engine.prefill(prompts);
  ASSERT_TRUE(plain.has_value()) << plain.status().message();
  // prefill_greedy's device argmax (the two last rows fall in different chunks) is the first
  // maximum of prefill's logits.
  auto greedy = engine.prefill_greedy(prompts);
  ASSERT_TRUE(greedy.has_value()) << greedy.status().message();
  const int64_t vocab = plain->dim(1);
  for (size_t b = 0; b < prompts.size(); ++b) {
    const float* l = plain->data<float>() + b * vocab;
    EXPECT_EQ((*greedy)[b], std::max_element(l, l + vocab) - l) << "prompt " << b;
  }
  auto prefill = engine.profile_prefill(prompts);
  ASSERT_TRUE(prefill.has_value()) << prefill.status().message();
  auto again = engine.prefill(prompts);  // the profiled prefill left the cache as a plain one
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(std::memcmp(again->raw(), plain->raw(), plain->nbytes()), 0);
  auto step = engine.profile_decode_step({1, 2});
  ASSERT_TRUE(step.has_value()) << step.status().message();
  const auto names = [](const std::vector<std::pair<std::string, double>>& ops) {
    std::vector<std::string> n;
    for (const auto& [op, ms] : ops) {
      EXPECT_GE(ms, 0.0) << op;
      n.push_back(op);
    }
    return n;
  };
  const std::vector<std::string> p = names(*prefill), d = names(*step);
  for (const char* op : {"rows_in", "embed", "qkv_proj", "attention", "o_proj", "down_proj", "lm_head", "argmax"})
    EXPECT_NE(std::find(p.begin(), p.end(), op), p.end()) << "prefill profile lacks " << op;
  for (const char* op : {"embed", "qkv_proj", "attention", "down_proj", "lm_head", "argmax"})
    EXPECT_NE(std::find(d.begin(), d.end(), op), d.end()) << "decode profile lacks " << op;
}

// The benchmark's graph replays (Engine::replay_decode_steps): none before a decode made the
// graph of its batch size; after one, positive times, and the step after them gives the same
// logits as without the replays (they rewrite the last step's cache rows with the same values).
TEST(RunnerEngine, ReplayedDecodeStepsChangeNothing) {
  LLMQ_REQUIRE_GPU();
  LLMQ_REQUIRE_TEST_DATA();
  auto e = two_slot_stories260k();
  ASSERT_TRUE(e.has_value()) << e.status().message();
  Engine& engine = **e;
  const std::vector<std::vector<int32_t>> prompts = {prompt_ids(20, 512, 5), prompt_ids(13, 512, 6)};
  EXPECT_FALSE(engine.replay_decode_steps(2, 3).has_value()) << "a replay before any decode of batch 2";
  const auto run = [&](int replays) {
    EXPECT_TRUE(engine.prefill(prompts).has_value());
    auto first = engine.decode_greedy({1, 2});
    EXPECT_TRUE(first.has_value());
    if (replays > 0) {
      auto ms = engine.replay_decode_steps(2, replays);
      EXPECT_TRUE(ms.has_value()) << ms.status().message();
      if (ms) {
        EXPECT_GT(*ms, 0.0);
      }
    }
    auto logits = engine.decode(*first);
    EXPECT_TRUE(logits.has_value());
    return std::move(*logits);
  };
  run(0);  // the first decode of batch 2 runs eagerly and captures its graph
  const Tensor plain = run(0), replayed = run(3);
  ASSERT_EQ(plain.nbytes(), replayed.nbytes());
  EXPECT_EQ(std::memcmp(plain.raw(), replayed.raw(), plain.nbytes()), 0);
}

TEST(RunnerEngine, ClearErrors) {
  LLMQ_REQUIRE_GPU();
  LLMQ_REQUIRE_TEST_DATA();
  EngineOptions opt;
  opt.capacity = 16;
  auto e = Engine::load(model_dir("stories260k"), opt);
  ASSERT_TRUE(e.has_value()) << e.status().message();
  EXPECT_FALSE((*e)->decode({1}).has_value());  // nothing prefilled
  EXPECT_FALSE((*e)->prefill({std::vector<int32_t>(17, 1)}).has_value());  // longer than the cache
  EXPECT_FALSE((*e)->prefill({{1, 99999}}).has_value());  // id outside the vocabulary
  EXPECT_FALSE((*e)->generate_greedy({{1, 2}}, 15, {}).has_value());  // 2 + 15 > 16
  opt.capacity = 1 << 20;
  auto big = Engine::load(model_dir("stories260k"), opt);
  ASSERT_FALSE(big.has_value());
  EXPECT_NE(big.status().message().find("capacity"), std::string::npos) << big.status().message();
}


// Gate and up fused for the SwiGLU epilogue (host side, no GPU): row i of gate at 2i, of up at
// 2i + 1, for bf16 rows and for every tensor of an int4 linear; q/k/v concatenated.
TEST(RunnerLinear, FuseInterleavesGateUpAndConcatenatesQkv) {
  const Tensor gate_w = testing::random_weight(6, 128, 1), up_w = testing::random_weight(6, 128, 2);
  std::vector<HostLinear> dense;
  dense.push_back(dense_host_linear(gate_w.view()));
  dense.push_back(dense_host_linear(up_w.view()));
  auto fused = fuse(std::move(dense), "gate/up", /*interleave=*/true);
  ASSERT_TRUE(fused.has_value()) << fused.status().message();
  ASSERT_EQ(fused->out, 12);
  const std::vector<bf16> g = dense_host_linear(gate_w.view()).dense, u = dense_host_linear(up_w.view()).dense;
  for (int64_t r = 0; r < 12; ++r)
    EXPECT_EQ(std::memcmp(&fused->dense[r * 128], (r % 2 == 0 ? g : u).data() + (r / 2) * 128, 128 * sizeof(bf16)), 0) << r;

  const Int4Config cfg{128, Int4Range::kAsymWithZero, DType::kBF16, 0};
  const QuantizedLinear qg = quantize_rtn_int4(testing::random_weight(6, 256, 3).view(), cfg);
  const QuantizedLinear qu = quantize_rtn_int4(testing::random_weight(6, 256, 4).view(), cfg);
  std::vector<HostLinear> quantized;
  quantized.push_back(quantized_host_linear(qg));
  quantized.push_back(quantized_host_linear(qu));
  auto fq = fuse(std::move(quantized), "gate/up", /*interleave=*/true);
  ASSERT_TRUE(fq.has_value()) << fq.status().message();
  ASSERT_EQ(fq->q.out_features, 12);
  for (const auto& [fused_t, part_g, part_u] : {std::tuple{&fq->q.codes, &qg.codes, &qu.codes},
                                                std::tuple{&fq->q.scales, &qg.scales, &qu.scales},
                                                std::tuple{&fq->q.zeros, &qg.zeros, &qu.zeros}}) {
    const size_t row = static_cast<size_t>(part_g->nbytes() / part_g->dim(0));
    for (int64_t r = 0; r < 12; ++r)
      EXPECT_EQ(std::memcmp(static_cast<const uint8_t*>(fused_t->raw()) + r * row,
                            static_cast<const uint8_t*>((r % 2 == 0 ? part_g : part_u)->raw()) + (r / 2) * row, row), 0) << r;
  }

  std::vector<HostLinear> qkv;
  for (int i = 0; i < 3; ++i) qkv.push_back(quantized_host_linear(i == 0 ? qg : qu));
  auto fc = fuse(std::move(qkv), "q/k/v");
  ASSERT_TRUE(fc.has_value()) << fc.status().message();
  ASSERT_EQ(fc->q.out_features, 18);
  const size_t row = 256;
  EXPECT_EQ(std::memcmp(fc->q.codes.raw(), qg.codes.raw(), 6 * row), 0);
  EXPECT_EQ(std::memcmp(static_cast<const uint8_t*>(fc->q.codes.raw()) + 12 * row, qu.codes.raw(), 6 * row), 0);

  std::vector<HostLinear> uneven;
  uneven.push_back(quantized_host_linear(qg));
  uneven.push_back(quantized_host_linear(quantize_rtn_int4(testing::random_weight(8, 256, 5).view(), cfg)));
  EXPECT_FALSE(fuse(std::move(uneven), "gate/up", /*interleave=*/true).has_value());
}

}  // namespace
}  // namespace llmq
