// Calibration: dataset windowing and sampling, the Llama-3 chat template against tiktoken's
// ids, the statistics collector against a direct float64 computation, and `calibrate` end to
// end on tinystories-656k (file contents, determinism, model fingerprint, --force, errors).
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <array>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "calibration/calib_file.h"
#include "calibration/calibrate.h"
#include "calibration/chat_template.h"
#include "calibration/dataset.h"
#include "calibration/stats.h"
#include "core/progress.h"
#include "formats/tokenizer.h"
#include "test_data.h"

namespace llmq {
namespace {

using ::llmq::testing::scratch_dir;
using ::llmq::testing::test_data_dir;

constexpr double kEpsF32 = std::numeric_limits<float>::epsilon();

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string tiny_dir() { return test_data_dir() + "/models/tinystories-656k"; }
std::string calib_text() { return test_data_dir() + "/text/calib_mixed.txt"; }

// ---- sampling and windowing ------------------------------------------------------------------

TEST(ChooseIndices, DistinctSortedDeterministic) {
  for (uint64_t seed : {0ULL, 1ULL, 12345ULL}) {
    const std::vector<int64_t> a = choose_indices(1000, 37, seed);
    const std::vector<int64_t> b = choose_indices(1000, 37, seed);
    ASSERT_EQ(a.size(), 37u);
    EXPECT_EQ(a, b) << "seed " << seed;
    EXPECT_TRUE(std::is_sorted(a.begin(), a.end()));
    EXPECT_EQ(std::set<int64_t>(a.begin(), a.end()).size(), a.size()) << "duplicates, seed " << seed;
    for (int64_t i : a) EXPECT_TRUE(i >= 0 && i < 1000);
  }
  EXPECT_NE(choose_indices(1000, 37, 0), choose_indices(1000, 37, 1));
  // Not simply the first indices.
  EXPECT_NE(choose_indices(1000, 37, 0).back(), 36);
  // All of them, in order, when not enough are available.
  EXPECT_EQ(choose_indices(5, 8, 3), (std::vector<int64_t>{0, 1, 2, 3, 4}));
  EXPECT_EQ(choose_indices(5, 5, 3), (std::vector<int64_t>{0, 1, 2, 3, 4}));
}

TEST(ChooseIndices, RoughlyUniform) {
  // Each of 20 indices is picked by ~half of 2000 draws of 10; a biased draw shows as a count
  // far from 1000 (binomial sd ~22, the bound is ~7 sd).
  std::vector<int> count(20, 0);
  for (uint64_t seed = 0; seed < 2000; ++seed)
    for (int64_t i : choose_indices(20, 10, seed)) ++count[static_cast<size_t>(i)];
  for (int c : count) EXPECT_NEAR(c, 1000, 150);
}

TEST(TextSamples, WindowsWithBos) {
  std::vector<int32_t> ids(1005);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(100 + i);
  const int64_t seq_len = 11;  // windows of 10 text tokens + BOS
  auto r = text_samples(ids, 7, 8, seq_len, 42, "mem");
  ASSERT_TRUE(r) << r.status().message();
  EXPECT_EQ(r->available, 100);  // 1005 / 10, ragged tail dropped
  EXPECT_TRUE(r->warning.empty());
  ASSERT_EQ(r->samples.size(), 8u);
  EXPECT_EQ(r->tokens(), 8 * seq_len);
  const std::vector<int64_t> chosen = choose_indices(100, 8, 42);
  for (size_t s = 0; s < 8; ++s) {
    const auto& x = r->samples[s];
    ASSERT_EQ(static_cast<int64_t>(x.size()), seq_len);
    EXPECT_EQ(x[0], 7);
    for (int64_t t = 1; t < seq_len; ++t) EXPECT_EQ(x[t], 100 + chosen[s] * 10 + (t - 1));
  }
  auto again = text_samples(ids, 7, 8, seq_len, 42, "mem");
  ASSERT_TRUE(again);
  EXPECT_EQ(again->samples, r->samples);
}

TEST(TextSamples, NoBosFewerThanAsked) {
  std::vector<int32_t> ids(35);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(i);
  auto r = text_samples(ids, std::nullopt, 8, 10, 0, "mem");
  ASSERT_TRUE(r) << r.status().message();
  ASSERT_EQ(r->samples.size(), 3u);  // 35 / 10
  EXPECT_FALSE(r->warning.empty());
  for (size_t s = 0; s < 3; ++s) {
    ASSERT_EQ(r->samples[s].size(), 10u);
    EXPECT_EQ(r->samples[s][0], static_cast<int32_t>(10 * s));  // all of them, in order
  }
  auto none = text_samples(std::vector<int32_t>(5, 1), std::nullopt, 8, 10, 0, "tiny.txt");
  ASSERT_FALSE(none);
  EXPECT_NE(none.status().message().find("tiny.txt"), std::string::npos) << none.status().message();
}

TEST(Dataset, TextOnTinyStories) {
  LLMQ_REQUIRE_TEST_DATA();
  auto tok = load_tokenizer(tiny_dir());
  ASSERT_TRUE(tok) << tok.status().message();
  ASSERT_TRUE((*tok)->adds_bos());
  auto r = load_dataset({calib_text(), DatasetKind::kText, ""}, **tok, tiny_dir(), 16, 64, 9);
  ASSERT_TRUE(r) << r.status().message();
  ASSERT_EQ(r->samples.size(), 16u);
  EXPECT_EQ(r->tokens(), 16 * 64);
  const std::vector<int32_t> all = (*tok)->encode_ordinary(read_bytes(calib_text()));
  EXPECT_EQ(r->available, static_cast<int64_t>(all.size()) / 63);
  const std::vector<int64_t> chosen = choose_indices(r->available, 16, 9);
  for (size_t s = 0; s < 16; ++s) {
    EXPECT_EQ(r->samples[s][0], *(*tok)->bos_id());
    EXPECT_TRUE(std::equal(r->samples[s].begin() + 1, r->samples[s].end(), all.begin() + chosen[s] * 63));
  }
}

TEST(Dataset, JsonlField) {
  LLMQ_REQUIRE_TEST_DATA();
  auto tok = load_tokenizer(tiny_dir());
  ASSERT_TRUE(tok) << tok.status().message();
  const std::string dir = scratch_dir("cal-jsonl");
  const std::string path = dir + "/d.jsonl";
  write_text(path,
             "{\"text\": \"Once upon a time there was a cat.\", \"id\": 1}\n"
             "\n"
             "{\"text\": \"\"}\n"
             "{\"text\": \"The dog ran to the park and played all day long.\"}\r\n");
  auto r = load_dataset({path, DatasetKind::kJsonl, "text"}, **tok, tiny_dir(), 8, 512, 0);
  ASSERT_TRUE(r) << r.status().message();
  EXPECT_EQ(r->available, 2);
  EXPECT_FALSE(r->warning.empty());
  ASSERT_EQ(r->samples.size(), 2u);
  EXPECT_EQ(r->samples[0], (*tok)->encode("Once upon a time there was a cat."));
  // The "\r" of a CRLF line is JSON whitespace outside the string, not part of the text.
  EXPECT_EQ(r->samples[1], (*tok)->encode("The dog ran to the park and played all day long."));
  // Truncation to seq_len keeps the BOS and the first tokens.
  auto t = load_dataset({path, DatasetKind::kJsonl, "text"}, **tok, tiny_dir(), 8, 4, 0);
  ASSERT_TRUE(t) << t.status().message();
  ASSERT_EQ(t->samples[0].size(), 4u);
  const auto full = (*tok)->encode("Once upon a time there was a cat.");
  EXPECT_TRUE(std::equal(t->samples[0].begin(), t->samples[0].end(), full.begin()));
  // Choosing 1 of 2 with a seed is deterministic.
  auto a = load_dataset({path, DatasetKind::kJsonl, "text"}, **tok, tiny_dir(), 1, 512, 5);
  auto b = load_dataset({path, DatasetKind::kJsonl, "text"}, **tok, tiny_dir(), 1, 512, 5);
  ASSERT_TRUE(a && b);
  EXPECT_EQ(a->samples, b->samples);
}

TEST(Dataset, BadInputsNameFileAndLine) {
  LLMQ_REQUIRE_TEST_DATA();
  auto tok = load_tokenizer(tiny_dir());
  ASSERT_TRUE(tok) << tok.status().message();
  const std::string dir = scratch_dir("cal-bad");
  const auto expect_error = [&](const DatasetSpec& spec, const std::string& needle) {
    auto r = load_dataset(spec, **tok, tiny_dir(), 4, 64, 0);
    ASSERT_FALSE(r) << "expected an error containing: " << needle;
    const std::string msg = r.status().message();
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "multi-line message: " << msg;
  };
  expect_error({dir + "/missing.txt", DatasetKind::kText, ""}, dir + "/missing.txt");
  const std::string bad_json = dir + "/bad.jsonl";
  write_text(bad_json, "{\"text\": \"ok\"}\n\n{\"text\": \"oops\"\n");
  expect_error({bad_json, DatasetKind::kJsonl, "text"}, bad_json + ": line 3: invalid JSON");
  const std::string no_field = dir + "/nofield.jsonl";
  write_text(no_field, "{\"text\": \"ok\"}\n{\"body\": \"x\"}\n");
  expect_error({no_field, DatasetKind::kJsonl, "text"}, no_field + ": line 2: no string field \"text\"");
  const std::string not_obj = dir + "/array.jsonl";
  write_text(not_obj, "[1, 2]\n");
  expect_error({not_obj, DatasetKind::kJsonl, "text"}, not_obj + ": line 1: expected a JSON object");
  const std::string empty = dir + "/empty.txt";
  write_text(empty, "  \n");
  expect_error({empty, DatasetKind::kText, ""}, empty + ": empty dataset");
  // A chat dataset needs the Llama-3 special tokens, which the tiny tokenizer lacks.
  const std::string chat = dir + "/chat.jsonl";
  write_text(chat, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n");
  expect_error({chat, DatasetKind::kChat, ""}, tiny_dir() + ": tokenizer has no special token <|begin_of_text|>");
}

// ---- chat template -----------------------------------------------------------------------------

// The Llama-3 tokenizer.json ships without added_tokens; real checkpoints list the specials
// there. Writes that copy once per test binary.
const Tokenizer& llama3_chat_tokenizer() {
  static std::unique_ptr<Tokenizer> tok = [] {
    const nlohmann::json golden =
        nlohmann::json::parse(read_bytes(test_data_dir() + "/golden/tok_llama3.json"));
    nlohmann::json tj = nlohmann::json::parse(read_bytes(test_data_dir() + "/tokenizers/llama3/tokenizer.json"));
    nlohmann::json added = nlohmann::json::array();
    for (const auto& [content, id] : golden["special_tokens"].items())
      added.push_back({{"id", id}, {"content", content}, {"single_word", false}, {"lstrip", false},
                       {"rstrip", false}, {"normalized", false}, {"special", true}});
    std::sort(added.begin(), added.end(),
              [](const nlohmann::json& a, const nlohmann::json& b) { return a["id"] < b["id"]; });
    tj["added_tokens"] = added;
    const std::string path = scratch_dir("cal-llama3-tok") + "/tokenizer.json";
    write_text(path, tj.dump());
    auto t = load_tokenizer_json(path);
    if (!t) ADD_FAILURE() << t.status().message();
    return t ? std::move(*t) : nullptr;
  }();
  return *tok;
}

TEST(ChatTemplate, RenderAndGoldenIds) {
  LLMQ_REQUIRE_TEST_DATA();
  const nlohmann::json golden = nlohmann::json::parse(read_bytes(test_data_dir() + "/golden/tok_llama3.json"));
  const std::string text = render_llama3_chat({{"user", "  What is 2+3?\n"}}, /*add_generation_prompt=*/true);
  EXPECT_EQ(text, golden["chat_example"]["text"].get<std::string>());
  const Tokenizer& tok = llama3_chat_tokenizer();
  ASSERT_TRUE(check_llama3_chat_tokens(tok, "llama3").is_ok());
  EXPECT_EQ(tok.encode_with_specials(text), golden["chat_example"]["ids"].get<std::vector<int32_t>>());
  EXPECT_EQ(strip_whitespace(" \t a b \r\n"), "a b");
  EXPECT_EQ(strip_whitespace(" \n "), "");
}

TEST(ChatTemplate, ChatDataset) {
  LLMQ_REQUIRE_TEST_DATA();
  const Tokenizer& tok = llama3_chat_tokenizer();
  const std::string path = scratch_dir("cal-chat") + "/chat.jsonl";
  write_text(path,
             "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief. \"}, {\"role\": \"user\", "
             "\"content\": \"What is 2+3?\"}, {\"role\": \"assistant\", \"content\": \"\\n5\"}]}\n"
             "{\"messages\": []}\n");
  auto r = load_dataset({path, DatasetKind::kChat, ""}, tok, "llama3", 4, 2048, 0);
  ASSERT_TRUE(r) << r.status().message();
  ASSERT_EQ(r->samples.size(), 1u);  // the empty conversation is skipped
  const std::string expected_text =
      "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
      "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+3?<|eot_id|>"
      "<|start_header_id|>assistant<|end_header_id|>\n\n5<|eot_id|>";
  const std::vector<int32_t> expected = tok.encode_with_specials(expected_text);
  EXPECT_EQ(r->samples[0], expected);
  EXPECT_EQ(r->samples[0][0], 128000);  // exactly one BOS, from the template
  EXPECT_NE(r->samples[0][1], 128000);
  EXPECT_EQ(r->samples[0].back(), 128009);

  const std::string bad = scratch_dir("cal-chat-bad") + "/chat.jsonl";
  write_text(bad, "{\"messages\": [{\"role\": \"user\"}]}\n");
  auto e = load_dataset({bad, DatasetKind::kChat, ""}, tok, "llama3", 4, 2048, 0);
  ASSERT_FALSE(e);
  EXPECT_NE(e.status().message().find(bad + ": line 1: messages[0] has no string \"content\""), std::string::npos)
      << e.status().message();
}

// ---- statistics --------------------------------------------------------------------------------

LlamaConfig small_config(int64_t hidden, int64_t q_dim, int64_t inter) {
  LlamaConfig c;
  c.hidden_size = hidden;
  c.num_attention_heads = 2;
  c.head_dim = q_dim / 2;
  c.num_key_value_heads = 2;
  c.intermediate_size = inter;
  c.num_hidden_layers = 4;
  c.vocab_size = 16;
  return c;
}

Tensor random_matrix(int64_t rows, int64_t cols, uint64_t seed, float offset) {
  Tensor t(DType::kF32, {rows, cols});
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = dist(rng) * (1.0f + 0.1f * static_cast<float>(i % 7)) + offset;
  return t;
}

TEST(Stats, SlotMapping) {
  EXPECT_EQ(input_of(LinearSlot::kQ), LinearInput::kAttnIn);
  EXPECT_EQ(input_of(LinearSlot::kK), LinearInput::kAttnIn);
  EXPECT_EQ(input_of(LinearSlot::kV), LinearInput::kAttnIn);
  EXPECT_EQ(input_of(LinearSlot::kO), LinearInput::kAttnOut);
  EXPECT_EQ(input_of(LinearSlot::kGate), LinearInput::kMlpIn);
  EXPECT_EQ(input_of(LinearSlot::kUp), LinearInput::kMlpIn);
  EXPECT_EQ(input_of(LinearSlot::kDown), LinearInput::kMlpOut);
  for (LinearInput in : kAllLinearInputs) EXPECT_EQ(input_of(first_slot_of(in)), in);
  EXPECT_EQ(linear_input_name(LinearInput::kMlpOut), "mlp_out");
}

// The collector against float64 sums over random samples whose widths straddle the 128-wide
// Hessian blocks (150 = 128 + 22, 300 = 2 * 128 + 44, 64 < 128).
TEST(Stats, CollectorMatchesDirectComputation) {
  const LlamaConfig config = small_config(150, 64, 300);
  const int64_t layer = 2;
  const std::vector<int64_t> sample_tokens = {37, 1, 64};
  LayerStatsCollector collector(config, layer, /*hessian=*/true);
  std::vector<std::vector<Tensor>> inputs(kNumLinearInputs);  // [input][sample]
  uint64_t seed = 100;
  for (int64_t T : sample_tokens) {
    for (LinearInput in : kAllLinearInputs) {
      Tensor x = random_matrix(T, input_features(config, in), ++seed, in == LinearInput::kMlpOut ? 0.5f : 0.0f);
      collector.on_linear_input(layer, first_slot_of(in), x.view());
      inputs[static_cast<size_t>(in)].push_back(std::move(x));
    }
    // Calls that must be ignored: the second and third linears of a shared input, other layers.
    Tensor junk = random_matrix(T, 150, 7, 100.0f);
    collector.on_linear_input(layer, LinearSlot::kK, junk.view());
    collector.on_linear_input(layer, LinearSlot::kUp, junk.view());
    collector.on_linear_input(layer + 1, LinearSlot::kQ, junk.view());
  }
  ASSERT_TRUE(collector.status().is_ok()) << collector.status().message();

  int64_t total = 0;
  for (int64_t T : sample_tokens) total += T;
  for (LinearInput in : kAllLinearInputs) {
    SCOPED_TRACE(std::string(linear_input_name(in)));
    const int64_t F = input_features(config, in);
    const InputStats s = collector.finish(in);
    EXPECT_EQ(s.tokens, total);
    ASSERT_EQ(s.hessian.shape(), (Shape{F, F}));
    std::vector<double> amax(F, 0), asum(F, 0), mn(F, 1e30), mx(F, -1e30);
    std::vector<double> H(F * F, 0), Habs(F * F, 0);  // exact-ish reference and sum |x_i x_j|
    int64_t max_T = 0;
    for (const Tensor& x : inputs[static_cast<size_t>(in)]) {
      const int64_t T = x.dim(0);
      max_T = std::max(max_T, T);
      const float* p = x.data<float>();
      for (int64_t t = 0; t < T; ++t)
        for (int64_t i = 0; i < F; ++i) {
          const double v = p[t * F + i];
          amax[i] = std::max(amax[i], std::fabs(v));
          asum[i] += std::fabs(v);
          mn[i] = std::min(mn[i], v);
          mx[i] = std::max(mx[i], v);
          for (int64_t j = 0; j < F; ++j) {
            H[i * F + j] += v * p[t * F + j];
            Habs[i * F + j] += std::fabs(v * p[t * F + j]);
          }
        }
    }
    double hnorm = 0;
    for (int64_t i = 0; i < F; ++i) {
      EXPECT_EQ(s.abs_max.data<float>()[i], static_cast<float>(amax[i])) << "channel " << i;
      EXPECT_EQ(s.min.data<float>()[i], static_cast<float>(mn[i])) << "channel " << i;
      EXPECT_EQ(s.max.data<float>()[i], static_cast<float>(mx[i])) << "channel " << i;
      // float64 sum, one division, one rounding to float32.
      EXPECT_NEAR(s.abs_mean.data<float>()[i], asum[i] / total, 2 * kEpsF32 * asum[i] / total) << "channel " << i;
    }
    const float* h = s.hessian.data<float>();
    for (int64_t i = 0; i < F; ++i)
      for (int64_t j = 0; j < F; ++j) {
        const double ref = H[i * F + j];
        hnorm += ref * ref;
        ASSERT_TRUE(std::isfinite(h[i * F + j]));
        ASSERT_EQ(h[i * F + j], h[j * F + i]) << "not exactly symmetric at " << i << "," << j;
        // A float32 dot product of length T errs by at most ~T eps sum |x_i x_j| (each
        // sample's block is float32, the sum over samples float64), plus the final rounding.
        const double tol = (max_T + 2) * kEpsF32 * Habs[i * F + j] + kEpsF32 * std::fabs(ref);
        ASSERT_NEAR(h[i * F + j], ref, tol) << "H[" << i << "," << j << "]";
      }
    ASSERT_GT(hnorm, 0.0);
  }
}

TEST(Stats, NoHessianAndNonFinite) {
  const LlamaConfig config = small_config(150, 64, 300);
  LayerStatsCollector collector(config, 0, /*hessian=*/false);
  Tensor x = random_matrix(5, 150, 3, 0.0f);
  collector.on_linear_input(0, LinearSlot::kQ, x.view());
  EXPECT_TRUE(collector.finish(LinearInput::kAttnIn).hessian.empty());
  EXPECT_EQ(collector.finish(LinearInput::kAttnIn).tokens, 5);
  // No tokens: zeros, never +-inf.
  EXPECT_EQ(collector.finish(LinearInput::kMlpOut).min.data<float>()[0], 0.0f);

  x.data<float>()[2 * 150 + 7] = std::numeric_limits<float>::quiet_NaN();
  collector.on_linear_input(0, LinearSlot::kGate, x.view());
  ASSERT_FALSE(collector.status().is_ok());
  const std::string msg = collector.status().message();
  EXPECT_NE(msg.find("layer 0 mlp_in"), std::string::npos) << msg;
  EXPECT_NE(msg.find("token 2, channel 7"), std::string::npos) << msg;
  EXPECT_EQ(collector.finish(LinearInput::kMlpIn).tokens, 0);  // the bad sample was not added
}

TEST(Stats, IndependentOfThreadCount) {
  const int64_t F = 300;
  Tensor x = random_matrix(77, F, 11, 0.25f);
  const auto run = [&](int threads) {
    const int saved = omp_get_max_threads();
    omp_set_num_threads(threads);
    InputStatsAccumulator acc(F, true);
    EXPECT_TRUE(acc.add(x.view()).is_ok());
    EXPECT_TRUE(acc.add(x.view()).is_ok());
    omp_set_num_threads(saved);
    return acc.finish();
  };
  const InputStats a = run(1);
  const InputStats b = run(std::max(2, omp_get_max_threads()));
  EXPECT_EQ(0, std::memcmp(a.hessian.raw(), b.hessian.raw(), static_cast<size_t>(a.hessian.nbytes())));
  EXPECT_EQ(0, std::memcmp(a.abs_mean.raw(), b.abs_mean.raw(), static_cast<size_t>(a.abs_mean.nbytes())));
}

// ---- calibrate end to end ----------------------------------------------------------------------

CalibrateOptions tiny_options(const std::string& out) {
  CalibrateOptions o;
  o.model_dir = tiny_dir();
  o.dataset = {calib_text(), DatasetKind::kText, ""};
  o.samples = 8;
  o.seq_len = 128;
  o.seed = 3;
  o.out = out;
  o.progress = false;
  return o;
}

// Σ x² per channel of every distinct input, in float64, by an observer of our own.
class SumSquares final : public LinearInputObserver {
 public:
  explicit SumSquares(const LlamaConfig& c) {
    for (LinearInput in : kAllLinearInputs) sums[static_cast<size_t>(in)].assign(input_features(c, in), 0.0);
  }
  void on_linear_input(int64_t, LinearSlot slot, const TensorView& x) override {
    if (slot != first_slot_of(input_of(slot))) return;
    auto& s = sums[static_cast<size_t>(input_of(slot))];
    const float* p = x.as<float>();
    for (int64_t t = 0; t < x.dim(0); ++t)
      for (int64_t c = 0; c < x.dim(1); ++c) s[c] += static_cast<double>(p[t * x.dim(1) + c]) * p[t * x.dim(1) + c];
  }
  std::array<std::vector<double>, kNumLinearInputs> sums;
};

TEST(Calibrate, TinyStoriesEndToEnd) {
  LLMQ_REQUIRE_TEST_DATA();
  const std::string dir = scratch_dir("cal-e2e");
  const CalibrateOptions opts = tiny_options(dir + "/a.safetensors");
  auto r = calibrate(opts);
  ASSERT_TRUE(r) << r.status().message();
  EXPECT_EQ(r->samples, 8);
  EXPECT_EQ(r->tokens, 8 * 128);
  ASSERT_TRUE(std::filesystem::exists(opts.out));

  auto ckpt = HfCheckpoint::open(tiny_dir());
  ASSERT_TRUE(ckpt) << ckpt.status().message();
  const LlamaConfig& config = ckpt->config();
  auto data = load_calibration(opts.out, *ckpt);
  ASSERT_TRUE(data) << data.status().message();
  const CalibrationManifest& m = data->manifest();
  EXPECT_EQ(m.samples, 8);
  EXPECT_EQ(m.seq_len, 128);
  EXPECT_EQ(m.tokens, 8 * 128);
  EXPECT_EQ(m.seed, 3u);
  EXPECT_TRUE(m.hessian);
  EXPECT_EQ(m.dataset_kind, "text");
  EXPECT_EQ(m.dataset_sha.size(), 16u);
  EXPECT_EQ(data->num_layers(), config.num_hidden_layers);

  // Independent reference: the same samples through the layers with our own observer.
  auto tok = load_tokenizer(tiny_dir());
  ASSERT_TRUE(tok);
  auto samples = load_dataset(opts.dataset, **tok, tiny_dir(), opts.samples, opts.seq_len, opts.seed);
  ASSERT_TRUE(samples);
  auto acts = embed_samples(*ckpt, samples->samples);
  ASSERT_TRUE(acts);
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    auto layer = load_decoder_layer(*ckpt, l);
    ASSERT_TRUE(layer) << layer.status().message();
    SumSquares ref(config);
    for (Tensor& x : *acts) decoder_layer_forward(*layer, config, x.view(), ForwardOptions{Precision::kFloat32, &ref});
    for (LinearInput in : kAllLinearInputs) {
      SCOPED_TRACE("layer " + std::to_string(l) + " " + std::string(linear_input_name(in)));
      const InputStats& s = data->stats(l, in);
      const int64_t F = input_features(config, in);
      EXPECT_EQ(s.tokens, 8 * 128);
      ASSERT_EQ(s.hessian.shape(), (Shape{F, F}));
      const float* h = s.hessian.data<float>();
      double trace = 0, ref_trace = 0;
      for (int64_t i = 0; i < F; ++i) {
        const double want = ref.sums[static_cast<size_t>(in)][i];
        // diag(H) = Σ x², positive terms: relative error ≤ ~T eps per float32 sample sum.
        ASSERT_NEAR(h[i * F + i], want, (128 + 2) * kEpsF32 * want) << "channel " << i;
        trace += h[i * F + i];
        ref_trace += want;
        const float amax = s.abs_max.data<float>()[i];
        EXPECT_EQ(amax, std::max(std::fabs(s.min.data<float>()[i]), std::fabs(s.max.data<float>()[i])));
        EXPECT_LE(s.abs_mean.data<float>()[i], amax);
        EXPECT_LE(s.min.data<float>()[i], s.max.data<float>()[i]);
        // abs_mean² ≤ mean(x²) (Jensen), a cross-check between two accumulators.
        EXPECT_LE(double(s.abs_mean.data<float>()[i]) * s.abs_mean.data<float>()[i], want / 1024 * (1 + 1e-5));
      }
      ASSERT_GT(trace, 0.0);
      EXPECT_NEAR(trace, ref_trace, 1e-5 * ref_trace);
      // Symmetric and PSD-ish: every 2x2 principal minor is non-negative (Cauchy-Schwarz).
      for (int64_t i = 0; i < F; ++i)
        for (int64_t j = 0; j < i; ++j) {
          ASSERT_EQ(h[i * F + j], h[j * F + i]);
          ASSERT_LE(double(h[i * F + j]) * h[i * F + j], double(h[i * F + i]) * h[j * F + j] * (1 + 1e-4))
              << i << "," << j;
        }
    }
  }
}

TEST(Calibrate, DeterministicAndThreadIndependent) {
  LLMQ_REQUIRE_TEST_DATA();
  const std::string dir = scratch_dir("cal-det");
  ASSERT_TRUE(calibrate(tiny_options(dir + "/a.safetensors")));
  ASSERT_TRUE(calibrate(tiny_options(dir + "/b.safetensors")));
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  auto one = calibrate(tiny_options(dir + "/c.safetensors"));
  omp_set_num_threads(saved);
  ASSERT_TRUE(one) << one.status().message();
  const std::string a = read_bytes(dir + "/a.safetensors");
  ASSERT_GT(a.size(), 1000u);
  EXPECT_TRUE(a == read_bytes(dir + "/b.safetensors")) << "two runs differ";
  EXPECT_TRUE(a == read_bytes(dir + "/c.safetensors")) << "1 thread vs " << saved << " differ";
  // The streamed file is canonical: read -> SafetensorsWriter -> write gives the same bytes.
  auto file = SafetensorsFile::open(dir + "/a.safetensors");
  ASSERT_TRUE(file) << file.status().message();
  SafetensorsWriter w;
  for (const auto& [k, v] : file->metadata()) w.set_metadata(k, v);
  for (const SafetensorsEntry& e : file->entries()) w.add(e.name, *file->view(e.name));
  ASSERT_TRUE(w.write(dir + "/rewritten.safetensors").is_ok());
  EXPECT_TRUE(a == read_bytes(dir + "/rewritten.safetensors")) << "not the canonical safetensors layout";
  // Nothing left beside the outputs (spill and temporary files).
  for (const auto& f : std::filesystem::directory_iterator(dir))
    EXPECT_EQ(f.path().extension(), ".safetensors") << f.path();
  // Another seed picks other windows: a different file.
  CalibrateOptions other = tiny_options(dir + "/d.safetensors");
  other.seed = 4;
  ASSERT_TRUE(calibrate(other));
  EXPECT_FALSE(a == read_bytes(dir + "/d.safetensors"));
}

TEST(Calibrate, ForceNoHessianAndOtherModel) {
  LLMQ_REQUIRE_TEST_DATA();
  const std::string dir = scratch_dir("cal-force");
  CalibrateOptions opts = tiny_options(dir + "/calib.safetensors");
  opts.hessian = false;
  ASSERT_TRUE(calibrate(opts));
  const std::string first = read_bytes(opts.out);

  opts.seed = 99;
  auto refused = calibrate(opts);
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.status().message().find(opts.out + ": output exists (pass --force"), std::string::npos)
      << refused.status().message();
  EXPECT_EQ(read_bytes(opts.out), first);  // untouched
  opts.force = true;
  ASSERT_TRUE(calibrate(opts));
  EXPECT_NE(read_bytes(opts.out), first);

  auto tiny = HfCheckpoint::open(tiny_dir());
  ASSERT_TRUE(tiny);
  auto data = load_calibration(opts.out, *tiny);
  ASSERT_TRUE(data) << data.status().message();
  EXPECT_FALSE(data->has_hessian());
  EXPECT_TRUE(data->stats(1, LinearInput::kMlpOut).hessian.empty());
  EXPECT_EQ(data->stats(1, LinearInput::kMlpOut).abs_max.dim(0), tiny->config().intermediate_size);

  auto other = HfCheckpoint::open(test_data_dir() + "/models/stories260k");
  ASSERT_TRUE(other) << other.status().message();
  auto wrong = load_calibration(opts.out, *other);
  ASSERT_FALSE(wrong);
  const std::string msg = wrong.status().message();
  EXPECT_NE(msg.find("another model"), std::string::npos) << msg;
  EXPECT_NE(msg.find("stories260k"), std::string::npos) << msg;
  EXPECT_NE(msg.find(opts.out), std::string::npos) << msg;

  // A safetensors file that is not a calibration file.
  SafetensorsWriter w;
  w.add("x", Tensor(DType::kF32, {2}));
  ASSERT_TRUE(w.write(dir + "/plain.safetensors").is_ok());
  auto plain = load_calibration(dir + "/plain.safetensors", *tiny);
  ASSERT_FALSE(plain);
  EXPECT_NE(plain.status().message().find("not an llmq calibration file"), std::string::npos)
      << plain.status().message();
}

TEST(Calibrate, BadInputs) {
  LLMQ_REQUIRE_TEST_DATA();
  const std::string dir = scratch_dir("cal-badin");
  CalibrateOptions opts = tiny_options(dir + "/out.safetensors");
  opts.dataset.path = dir + "/nope.txt";
  auto missing = calibrate(opts);
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.status().message().find(dir + "/nope.txt"), std::string::npos) << missing.status().message();

  opts.dataset = {dir + "/d.jsonl", DatasetKind::kJsonl, "text"};
  write_text(opts.dataset.path, "{\"text\": \"a\"}\n{\"text\": \"b\"}\n{text: c}\n");
  auto bad = calibrate(opts);
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.status().message().find(opts.dataset.path + ": line 3: invalid JSON"), std::string::npos)
      << bad.status().message();
  EXPECT_FALSE(std::filesystem::exists(opts.out));
  for (const auto& f : std::filesystem::directory_iterator(dir))
    EXPECT_EQ(f.path().extension(), ".jsonl") << "left behind: " << f.path();

  // seq-len above max_position_embeddings (512) is capped.
  opts = tiny_options(dir + "/capped.safetensors");
  opts.samples = 1;
  opts.seq_len = 100000;
  auto capped = calibrate(opts);
  ASSERT_TRUE(capped) << capped.status().message();
  EXPECT_EQ(capped->seq_len, 512);
  EXPECT_EQ(capped->tokens, 512);
}

TEST(Progress, LineAndDuration) {
  EXPECT_EQ(format_duration(0), "0:00");
  EXPECT_EQ(format_duration(65), "1:05");
  EXPECT_EQ(format_duration(3723), "1:02:03");
  Progress p("calibrate", 10, "layers", nullptr);
  p.update(3);
  const std::string line = p.line();
  EXPECT_NE(line.find("calibrate  3/10 layers"), std::string::npos) << line;
  p.finish();
}

// In a log (not a TTY) a short loop prints one final line, and an abandoned one (the command
// is failing) none, so the error message stands alone.
TEST(Progress, LogOutputIsOneFinalLineOrNothing) {
  auto logged = [](int64_t reached) {
    std::FILE* f = std::tmpfile();
    {
      Progress p("quantize", 4, "layers", f);
      for (int64_t i = 1; i <= reached; ++i) p.update(i);
    }
    std::rewind(f);
    std::string text;
    for (int c; (c = std::fgetc(f)) != EOF;) text += static_cast<char>(c);
    std::fclose(f);
    return text;
  };
  const std::string done = logged(4);
  EXPECT_EQ(std::count(done.begin(), done.end(), '\n'), 1) << done;
  EXPECT_EQ(done.rfind("quantize  4/4 layers", 0), 0u) << done;
  EXPECT_EQ(logged(2), "");
}

}  // namespace
}  // namespace llmq
