// The quantize pipeline end to end on a real trained model (tinystories-656k): every method
// writes a checkpoint that llmq reads back, with the quality the issue asks for, byte for byte
// reproducibly; plus the module plan's refusals and the config rewriting.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <tuple>

#include "calibration/calibrate.h"
#include "eval/perplexity.h"
#include "formats/checkpoint.h"
#include "formats/tokenizer.h"
#include "model/llama.h"
#include "pipeline/module_plan.h"
#include "pipeline/output_writer.h"
#include "pipeline/quantize.h"
#include "tests/test_data.h"
#include "tests/tinystories_suite.h"

namespace llmq {
namespace {

namespace fs = std::filesystem;

using testing::read_all;

LlamaConfig stories260k_shape() {
  LlamaConfig c;
  c.hidden_size = 64;
  c.intermediate_size = 172;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 8;
  c.num_key_value_heads = 4;
  c.head_dim = 8;
  c.vocab_size = 512;
  return c;
}

TEST(ModulePlan, RefusesMisfitsNamingThem) {
  const LlamaConfig c = stories260k_shape();
  auto plan = plan_modules(c, QuantMethod::kGptq, QuantFormat::kGptqV1, 128, true, {});
  ASSERT_FALSE(plan.has_value());
  EXPECT_NE(plan.status().message().find("model.layers.0.self_attn.q_proj: in_features 64 is not a multiple of the group size 128"),
            std::string::npos)
      << plan.status().message();
  // Group 64 fits the attention linears; the MLP (172 wide) does not fit 8-packing or groups.
  plan = plan_modules(c, QuantMethod::kGptq, QuantFormat::kGptqV1, 64, true, {});
  ASSERT_FALSE(plan.has_value());
  EXPECT_NE(plan.status().message().find("mlp.gate_proj: out_features 172 is not a multiple of 8"), std::string::npos)
      << plan.status().message();
  plan = plan_modules(c, QuantMethod::kGptq, QuantFormat::kGptqV1, 64, true, {"mlp\\."});
  ASSERT_TRUE(plan.has_value()) << plan.status().message();
  EXPECT_TRUE(plan->quantizes(1, LinearSlot::kO));
  EXPECT_FALSE(plan->quantizes(1, LinearSlot::kDown));
  EXPECT_EQ(plan->ignored.front(), "lm_head");
  EXPECT_EQ(plan->ignored.size(), 1u + 2 * 3);
  EXPECT_EQ(plan->warnings.size(), 2u * 3);  // every ignored MLP linear would not have fit
  // 8-bit methods have no group constraint.
  EXPECT_TRUE(plan_modules(c, QuantMethod::kFp8, QuantFormat::kCtFloat, 128, true, {}).has_value());
}

TEST(ModulePlan, FusedPartnersAndBadRegex) {
  const LlamaConfig c = stories260k_shape();
  auto plan = plan_modules(c, QuantMethod::kFp8, QuantFormat::kCtFloat, 128, true, {"layers\\.1\\.self_attn\\.q_proj"});
  ASSERT_FALSE(plan.has_value());
  EXPECT_NE(plan.status().message().find("must be ignored together"), std::string::npos) << plan.status().message();
  plan = plan_modules(c, QuantMethod::kFp8, QuantFormat::kCtFloat, 128, true, {"(unclosed"});
  ASSERT_FALSE(plan.has_value());
  EXPECT_NE(plan.status().message().find("--ignore '(unclosed'"), std::string::npos);
  plan = plan_modules(c, QuantMethod::kFp8, QuantFormat::kCtFloat, 128, true, {"layers\\.1\\.self_attn\\.[qkv]_proj"});
  ASSERT_TRUE(plan.has_value());
  EXPECT_FALSE(plan->quantizes(1, LinearSlot::kK));
  EXPECT_TRUE(plan->quantizes(0, LinearSlot::kK));
}

TEST(OutputConfig, KeepsKeysAndSetsDtype) {
  LLMQ_REQUIRE_TEST_DATA();
  const std::string src = testing::test_data_dir() + "/models/tinystories-656k/config.json";
  QuantConfigInfo info;
  info.format = QuantFormat::kAwqGemm;
  auto text = quantized_config_json(src, info);
  ASSERT_TRUE(text.has_value()) << text.status().message();
  const auto j = nlohmann::ordered_json::parse(*text);
  const auto orig = nlohmann::ordered_json::parse(read_all(src));
  EXPECT_EQ(j["torch_dtype"], "float16");
  EXPECT_EQ(j["quantization_config"]["quant_method"], "awq");
  EXPECT_EQ(j["hidden_size"], orig["hidden_size"]);
  EXPECT_EQ(j.begin().key(), orig.begin().key());  // key order kept
  info.format = QuantFormat::kCtFloat;
  text = quantized_config_json(src, info);
  ASSERT_TRUE(text.has_value());
  EXPECT_EQ(nlohmann::json::parse(*text)["torch_dtype"], "bfloat16");
}

// ---- end to end on tinystories-656k -------------------------------------------------------------

struct EvalText {
  const char* name;
  const char* file;
  size_t chars;
};
constexpr EvalText kTexts[] = {{"tinystories_val", "tinystories_val.txt", 60000},
                               {"wikitext2_test", "wikitext2_test.txt", 30000}};

class TinyStoriesPipeline : public testing::TinyStoriesSuite<TinyStoriesPipeline> {
 public:
  static constexpr const char* kScratchName = "pipeline";

 protected:
  static void SetUpTestSuite() {
    TinyStoriesSuite::SetUpTestSuite();
    if (!dir_) return;
    // The quality bars use the usual calibration (128 x 512, as AutoAWQ and GPTQ do; at 32 x
    // 256 GPTQ no longer beats RTN on TinyStories); format and determinism checks a small one.
    for (const auto& [name, samples, seq_len] :
         {std::tuple<const char*, int64_t, int64_t>{"calib", 128, 512}, {"calib-small", 32, 256}}) {
      CalibrateOptions co;
      co.model_dir = *model_;
      co.dataset.path = testing::test_data_dir() + "/text/calib_mixed.txt";
      co.samples = samples;
      co.seq_len = seq_len;
      co.out = *dir_ + "/" + name + ".safetensors";
      co.progress = false;
      auto r = calibrate(co);
      ASSERT_TRUE(r.has_value()) << r.status().message();
    }
    ppl_ = new std::map<std::string, std::map<std::string, double>>();
    (*ppl_)["bf16"] = eval(*model_);
  }
  static void TearDownTestSuite() {
    TinyStoriesSuite::TearDownTestSuite();
    delete ppl_;
    ppl_ = nullptr;
  }

  static std::map<std::string, double> eval(const std::string& dir) {
    std::map<std::string, double> out;
    auto ckpt = HfCheckpoint::open(dir);
    EXPECT_TRUE(ckpt.has_value()) << ckpt.status().message();
    if (!ckpt.has_value()) return out;
    auto model = LlamaModel::load(*ckpt);
    EXPECT_TRUE(model.has_value()) << model.status().message();
    auto tok = load_tokenizer(dir);
    EXPECT_TRUE(tok.has_value());
    if (!model.has_value() || !tok.has_value()) return out;
    for (const EvalText& t : kTexts) {
      const std::string text = read_all(testing::test_data_dir() + "/text/" + t.file).substr(0, t.chars);
      PerplexityConfig pc;
      pc.window = 256;
      auto r = perplexity(*model, (*tok)->encode(text), pc);
      EXPECT_TRUE(r.has_value());
      if (r.has_value()) out[t.name] = r->ppl;
    }
    return out;
  }

  static QuantizeOptions options(const std::string& method, const std::string& out, bool small_calib = false) {
    QuantizeOptions o;
    o.model_dir = *model_;
    o.method = method;
    o.calib = *dir_ + (small_calib ? "/calib-small.safetensors" : "/calib.safetensors");
    o.out = out;
    o.progress = false;
    return o;
  }

  // Quantizes with the method (once per suite) and returns its perplexities.
  static const std::map<std::string, double>& quantized_ppl(const std::string& method) {
    auto it = ppl_->find(method);
    if (it != ppl_->end()) return it->second;
    const std::string out = *dir_ + "/" + method;
    auto r = quantize(options(method, out));
    EXPECT_TRUE(r.has_value()) << method << ": " << r.status().message();
    (*ppl_)[method] = r.has_value() ? eval(out) : std::map<std::string, double>();
    for (const auto& [text, p] : (*ppl_)[method])
      std::printf("[ppl] %-9s %-16s %.4f (bf16 %.4f, %+.2f%%)\n", method.c_str(), text.c_str(), p,
                  (*ppl_)["bf16"][text], 100.0 * (p / (*ppl_)["bf16"][text] - 1));
    return (*ppl_)[method];
  }

  static std::map<std::string, std::map<std::string, double>>* ppl_;
};
std::map<std::string, std::map<std::string, double>>* TinyStoriesPipeline::ppl_ = nullptr;

TEST_F(TinyStoriesPipeline, Fp8WithinOnePercent) {
  LLMQ_REQUIRE_TEST_DATA();
  const auto& p = quantized_ppl("fp8");
  ASSERT_EQ(p.size(), 2u);
  for (const auto& [text, v] : p) EXPECT_LE(v, 1.01 * (*ppl_)["bf16"][text]) << text;
}

TEST_F(TinyStoriesPipeline, Int8SmoothQuantWithinTwoPercent) {
  LLMQ_REQUIRE_TEST_DATA();
  const auto& p = quantized_ppl("int8-sq");
  ASSERT_EQ(p.size(), 2u);
  for (const auto& [text, v] : p) EXPECT_LE(v, 1.02 * (*ppl_)["bf16"][text]) << text;
}

// On TinyStories, the model's own domain, both beat RTN (issue #3's bar). On WikiText (ppl ~470:
// far outside what a 656k-parameter story model knows) GPTQ still beats RTN, but AWQ's scales,
// fit to the calibration activations, transfer less well: measured +1.2% over RTN there (see
// DESIGN.md, "AWQ on tinystories-656k"); the bound catches a regression beyond that.
TEST_F(TinyStoriesPipeline, AwqAndGptqBeatRtnInt4) {
  LLMQ_REQUIRE_TEST_DATA();
  const auto& rtn = quantized_ppl("rtn-int4");
  const auto& awq = quantized_ppl("awq");
  const auto& gptq = quantized_ppl("gptq");
  ASSERT_EQ(rtn.size(), 2u);
  ASSERT_EQ(awq.size(), 2u);
  ASSERT_EQ(gptq.size(), 2u);
  for (const auto& [text, v] : rtn) {
    EXPECT_LT(gptq.at(text), v) << text;
    EXPECT_GT(v, (*ppl_)["bf16"][text]) << text;  // INT4 costs something, or the comparison is moot
  }
  EXPECT_LT(awq.at("tinystories_val"), rtn.at("tinystories_val"));
  EXPECT_LT(awq.at("wikitext2_test"), 1.02 * rtn.at("wikitext2_test"));
}

// The compressed-tensors container holds the same quantizer's output as the native one, but
// with BF16 group scales (formats.md: the model dtype) where AutoAWQ and GPTQ store F16: 8
// significant bits instead of 11. Measured: 0.4-1% (gptq) and 1-2.3% (awq) apart; a broken
// container would be far off.
TEST_F(TinyStoriesPipeline, CompressedTensorsMatchesNativeFormat) {
  LLMQ_REQUIRE_TEST_DATA();
  for (const std::string method : {"gptq", "awq"}) {
    const std::string native = *dir_ + "/" + method + "-small", ct = native + "-ct";
    ASSERT_TRUE(quantize(options(method, native, true)).has_value());
    QuantizeOptions o = options(method, ct, true);
    o.format = "compressed-tensors";
    auto r = quantize(o);
    ASSERT_TRUE(r.has_value()) << r.status().message();
    auto ckpt = HfCheckpoint::open(ct);
    ASSERT_TRUE(ckpt.has_value()) << ckpt.status().message();
    ASSERT_TRUE(ckpt->quantization().has_value());
    EXPECT_EQ(ckpt->quantization()->format, QuantFormat::kCtPack);
    EXPECT_TRUE(ckpt->is_quantized_linear("model.layers.1.mlp.down_proj"));
    const auto a = eval(native), b = eval(ct);
    ASSERT_EQ(a.size(), 2u);
    for (const auto& [text, v] : a) EXPECT_NEAR(b.at(text) / v, 1.0, 0.03) << method << " " << text;
  }
}

TEST_F(TinyStoriesPipeline, RtnInt8WithinTwoPercent) {
  LLMQ_REQUIRE_TEST_DATA();
  const auto& p = quantized_ppl("rtn-int8");
  ASSERT_EQ(p.size(), 2u);
  for (const auto& [text, v] : p) EXPECT_LE(v, 1.02 * (*ppl_)["bf16"][text]) << text;
}

TEST_F(TinyStoriesPipeline, DeterministicOutputDirectory) {
  LLMQ_REQUIRE_TEST_DATA();
  for (const std::string method : {"gptq", "awq", "int8-sq"}) {
    const std::string a = *dir_ + "/det-a-" + method, b = *dir_ + "/det-b-" + method;
    ASSERT_TRUE(quantize(options(method, a, true)).has_value());
    ASSERT_TRUE(quantize(options(method, b, true)).has_value());
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(a)) names.push_back(e.path().filename().string());
    size_t count_b = 0;
    for (const auto& e : fs::directory_iterator(b)) count_b += e.is_regular_file();
    EXPECT_EQ(names.size(), count_b);
    for (const std::string& n : names) {
      if (n == "llmq_report.json") {
        auto ja = nlohmann::json::parse(read_all(fs::path(a) / n)), jb = nlohmann::json::parse(read_all(fs::path(b) / n));
        ja.erase("timings");
        jb.erase("timings");
        EXPECT_EQ(ja, jb) << method;
      } else {
        EXPECT_TRUE(read_all(fs::path(a) / n) == read_all(fs::path(b) / n)) << method << ": " << n << " differs";
      }
    }
  }
}

TEST_F(TinyStoriesPipeline, ReportAndRefusals) {
  LLMQ_REQUIRE_TEST_DATA();
  const std::string out = *dir_ + "/gptq";
  quantized_ppl("gptq");
  const auto report = nlohmann::json::parse(read_all(out + "/llmq_report.json"));
  EXPECT_EQ(report["method"], "gptq");
  EXPECT_EQ(report["layers"].size(), 2u);
  EXPECT_EQ(report["quantized_linears"], 14);
  const auto& q = report["layers"][0]["linears"]["self_attn.q_proj"];
  EXPECT_GT(q["weight_rel_error"].get<double>(), 0.0);
  EXPECT_LT(q["output_rel_error"].get<double>(), q["weight_rel_error"].get<double>());
  EXPECT_TRUE(fs::exists(out + "/tokenizer.json"));
  EXPECT_TRUE(fs::exists(out + "/quantize_config.json"));
  // Memory high-water marks, and no spill files left behind by the shard writer.
  const auto& t = report["timings"];
  EXPECT_GT(t["peak_host_rss_bytes"].get<uint64_t>(), 0u);
  EXPECT_GT(t["peak_host_anon_bytes"].get<uint64_t>(), 0u);
  EXPECT_LE(t["peak_host_anon_bytes"].get<uint64_t>(), t["peak_host_rss_bytes"].get<uint64_t>());
  // Stage times of the overlapped layer loop, and the layer records (written by its write
  // worker) in layer order.
  for (const char* stage : {"load_s", "write_s", "deferred_s", "io_wait_s"}) {
    ASSERT_TRUE(t["stages"].contains(stage)) << stage;
    EXPECT_GE(t["stages"][stage].get<double>(), 0.0) << stage;
  }
  EXPECT_GT(t["stages"]["load_s"].get<double>(), 0.0);
  EXPECT_GT(t["stages"]["write_s"].get<double>(), 0.0);
  for (size_t l = 0; l < report["layers"].size(); ++l) EXPECT_EQ(report["layers"][l]["layer"], l);
  for (const auto& e : fs::directory_iterator(out))
    EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos) << e.path();

  // Existing output without --force: refused, output untouched.
  const auto before = read_all(out + "/config.json");
  auto r = quantize(options("fp8", out));
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.status().message().find("--force"), std::string::npos) << r.status().message();
  EXPECT_EQ(read_all(out + "/config.json"), before);
  // Quantizing a quantized checkpoint, an unknown method, a missing calibration.
  r = quantize([&] { auto o = options("fp8", *dir_ + "/x"); o.model_dir = out; return o; }());
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.status().message().find("already quantized"), std::string::npos) << r.status().message();
  r = quantize(options("int3", *dir_ + "/x"));
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.status().message().find("unknown method 'int3'"), std::string::npos);
  r = quantize([&] { auto o = options("awq", *dir_ + "/x"); o.calib.clear(); return o; }());
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.status().message().find("needs calibration"), std::string::npos) << r.status().message();
  EXPECT_FALSE(fs::exists(*dir_ + "/x"));
}

}  // namespace
}  // namespace llmq
