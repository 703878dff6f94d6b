// The hooks of the ecosystem check (scripts/ecosystem/): `llmq inspect` naming the loaders a
// quantized checkpoint is meant for and the compatibility traps of docs/formats.md in it (each
// trap made by hand in a copy of a real llmq output), `llmq dequantize` writing exactly llmq's
// own dequantization, and `llmq eval --logits-out` writing exactly the CPU forward's logits.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>

#include "core/numeric.h"
#include "formats/checkpoint.h"
#include "formats/quant_formats.h"
#include "formats/safetensors.h"
#include "formats/tokenizer.h"
#include "model/llama.h"
#include "tests/cli_util.h"
#include "tests/test_data.h"

namespace {
namespace fs = std::filesystem;
using llmq::testing::expect_one_line_error;
using llmq::testing::RunResult;
using llmq::testing::run_llmq;

// One tiny synthetic model and its quantized variants, made once for the suite.
class Compat : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = llmq::testing::scratch_dir("compat");
    model_ = dir_ + "/tiny";
    RunResult r = run_llmq("synth --config tiny --seed 5 --out " + model_);
    ASSERT_EQ(r.exit_code, 0) << r.out;
    for (const auto& [name, args] : std::vector<std::pair<std::string, std::string>>{
             {"fp8", "--method fp8"},
             {"int8", "--method rtn-int8"},
             {"gptq", "--method rtn-int4"},
             {"ct4", "--method rtn-int4 --format compressed-tensors"},
             {"ct4-asym", "--method rtn-int4 --asym --format compressed-tensors"},
             {"awq", "--method rtn-int4 --asym --format awq"},
             {"fp8-sharded", "--method fp8 --max-shard-bytes 200000"}}) {
      r = run_llmq("quantize --model " + model_ + " " + args + " --out " + dir_ + "/" + name);
      ASSERT_EQ(r.exit_code, 0) << name << ": " << r.out;
    }
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }

  // A fresh copy of a quantized variant, to break by hand.
  static std::string copy_of(const std::string& name, const std::string& as) {
    const std::string to = dir_ + "/" + as;
    fs::remove_all(to);
    fs::copy(dir_ + "/" + name, to, fs::copy_options::recursive);
    return to;
  }
  static void edit_config(const std::string& dir, const std::function<void(nlohmann::ordered_json&)>& edit) {
    nlohmann::ordered_json j;
    {
      std::ifstream in(dir + "/config.json");
      j = nlohmann::ordered_json::parse(in);
    }
    edit(j);
    std::ofstream(dir + "/config.json") << j.dump(2);
  }
  static RunResult inspect(const std::string& dir) {
    RunResult r = run_llmq("inspect " + dir);
    EXPECT_EQ(r.exit_code, 0) << r.out;
    return r;
  }
  static int count_lines_with(const std::string& out, const std::string& prefix) {
    int n = 0;
    for (size_t pos = 0; (pos = out.find("\n" + prefix, pos)) != std::string::npos; ++pos) ++n;
    return n;
  }

  static std::string dir_, model_;
};
std::string Compat::dir_, Compat::model_;

#define EXPECT_HAS(out, text) EXPECT_NE((out).find(text), std::string::npos) << "expected '" << (text) << "' in:\n" << (out)
#define EXPECT_LACKS(out, text) EXPECT_EQ((out).find(text), std::string::npos) << "unexpected '" << (text) << "' in:\n" << (out)

// The byte offset of a tensor's data in its file (one safetensors file per variant here).
std::pair<std::string, uint64_t> locate(const std::string& dir, const std::string& tensor) {
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() != ".safetensors") continue;
    auto f = llmq::SafetensorsFile::open(e.path().string());
    if (!f) continue;
    const llmq::SafetensorsEntry* entry = f->find(tensor);
    if (!entry) continue;
    std::ifstream in(e.path(), std::ios::binary);
    uint64_t header_len = 0;
    in.read(reinterpret_cast<char*>(&header_len), 8);
    return {e.path().string(), 8 + header_len + entry->begin};
  }
  return {"", 0};
}

void overwrite_u32(const std::pair<std::string, uint64_t>& at, uint32_t value) {
  ASSERT_FALSE(at.first.empty());
  std::fstream f(at.first, std::ios::binary | std::ios::in | std::ios::out);
  f.seekp(static_cast<std::streamoff>(at.second));
  f.write(reinterpret_cast<const char*>(&value), 4);
}

// ---- inspect: loaders ---------------------------------------------------------------------

TEST_F(Compat, InspectNamesTheLoadersOfEachFormat) {
  const std::string kNoTraps = "traps        none found";
  // The lines `inspect` must print for each quantized variant.
  const std::vector<std::pair<std::string, std::vector<std::string>>> expected_lines = {
      {"fp8",
       {"loader       vLLM / SGLang compressed-tensors CompressedTensorsW8A8Fp8",
        "loader       transformers + compressed-tensors", kNoTraps}},
      {"int8", {"CompressedTensorsW8A8Int8", kNoTraps}},
      {"ct4", {"CompressedTensorsWNA16 (Marlin)", kNoTraps}},
      {"ct4-asym",  // the loader line's caveat and a note
       {"asymmetric needs a vLLM with uint4 zero points", "note         asymmetric pack-quantized: transformers"}},
      {"gptq",
       {"loader       vLLM gptq_marlin (uint4b8)", "loader       AutoGPTQ / GPTQModel (v1 \"gptq\")",
        "loader       transformers GPTQConfig", kNoTraps}},
      {"awq", {"loader       vLLM awq_marlin", "loader       AutoAWQ WQLinear_GEMM", kNoTraps}},
      {"fp8-sharded", {kNoTraps}},  // several shards, all indexed
  };
  for (const auto& [variant, lines] : expected_lines) {
    SCOPED_TRACE(variant);
    const RunResult r = inspect(dir_ + "/" + variant);
    for (const std::string& line : lines) EXPECT_HAS(r.out, line);
  }

  const RunResult r = inspect(model_);  // a float checkpoint has no loader lines
  EXPECT_HAS(r.out, "quantization none");
  EXPECT_LACKS(r.out, "loader ");
  EXPECT_LACKS(r.out, "trap");
}

// ---- inspect: traps in the config -----------------------------------------------------------

TEST_F(Compat, InspectFlagsCompressedTensorsConfigTraps) {
  const std::string d = copy_of("fp8", "ct-traps");
  edit_config(d, [](nlohmann::ordered_json& j) {
    auto& w = j["quantization_config"]["config_groups"]["group_0"]["weights"];
    w["scale_dtype"] = nullptr;  // even null breaks compressed-tensors 0.11-0.12
    w["actorder"] = "static";    // with strategy "channel"
    j["quantization_config"]["ignore"] = nlohmann::ordered_json::array();
    j["quantization_config"]["format"] = "pack-quantized";
  });
  const RunResult r = inspect(d);
  EXPECT_HAS(r.out, "weights.scale_dtype: compressed-tensors 0.11-0.12 reject the key");
  EXPECT_HAS(r.out, "actorder is set with strategy \"channel\"");
  EXPECT_HAS(r.out, "does not list lm_head");
  EXPECT_HAS(r.out, "format \"pack-quantized\" for FP8 W8A8");
  EXPECT_EQ(count_lines_with(r.out, "trap         "), 4) << r.out;
  EXPECT_LACKS(r.out, "traps        none found");

  const std::string legacy = copy_of("int8", "ct-legacy");
  edit_config(legacy, [](nlohmann::ordered_json& j) {
    j["compression_config"] = j["quantization_config"];
    j.erase("quantization_config");
  });
  EXPECT_HAS(inspect(legacy).out, "stored under \"compression_config\"");
}

TEST_F(Compat, InspectFlagsActorderGroupWithAndWithoutGIdx) {
  const std::string d = copy_of("ct4", "ct-actorder");
  edit_config(d, [](nlohmann::ordered_json& j) {
    j["quantization_config"]["config_groups"]["group_0"]["weights"]["actorder"] = "group";
  });
  const RunResult r = inspect(d);
  EXPECT_HAS(r.out, "actorder \"group\": compressed-tensors removed it");
  EXPECT_HAS(r.out, "packed linears have no weight_g_idx");
}

// ---- inspect: traps in the tensors (GPTQ v1) --------------------------------------------------

TEST_F(Compat, InspectFlagsGptqZeroPointOverflowAndPermutedGIdx) {
  const std::string d = copy_of("gptq", "gptq-traps");
  // A true zero of 0 stored the v1 way (zero - 1 = -1) turns a nibble into 0xF.
  overwrite_u32(locate(d, "model.layers.1.mlp.up_proj.qzeros"), 0x7777777Fu);
  // g_idx that is not k / group_size while desc_act is false.
  overwrite_u32(locate(d, "model.layers.0.self_attn.q_proj.g_idx"), 1u);
  const RunResult r = inspect(d);
  EXPECT_HAS(r.out, "1 linear(s) have a qzeros nibble 0xF, e.g. model.layers.1.mlp.up_proj.qzeros");
  EXPECT_HAS(r.out, "1 linear(s) with sym true have qzeros words other than 0x77777777");
  EXPECT_HAS(r.out, "1 linear(s) have a permuted g_idx but desc_act is false");
}

TEST_F(Compat, InspectFlagsGptqAndAwqConfigTraps) {
  const std::string g = copy_of("gptq", "gptq-config");
  edit_config(g, [](nlohmann::ordered_json& j) {
    j["torch_dtype"] = "bfloat16";
    j["quantization_config"]["sym"] = false;
    j["quantization_config"]["checkpoint_format"] = "gptq_v2";
  });
  RunResult r = inspect(g);
  EXPECT_HAS(r.out, "dtype \"bfloat16\" for gptq");
  EXPECT_HAS(r.out, "checkpoint_format \"gptq_v2\"");
  EXPECT_HAS(r.out, "not Marlin: sym false");
  EXPECT_HAS(r.out, "GPTQModel (gptq_v2)");

  const std::string a = copy_of("awq", "awq-config");
  edit_config(a, [](nlohmann::ordered_json& j) {
    j["quantization_config"]["zero_point"] = false;
    j["quantization_config"]["version"] = "gemv";
  });
  r = inspect(a);
  EXPECT_HAS(r.out, "zero_point is not true");
  EXPECT_HAS(r.out, "version \"gemv\"");
  EXPECT_HAS(r.out, "not awq_marlin");
}

TEST_F(Compat, InspectFlagsContainerTraps) {
  const std::string d = copy_of("fp8-sharded", "container");
  std::string shard;
  for (const auto& e : fs::directory_iterator(d))
    if (e.path().filename().string().rfind("model-00001-of-", 0) == 0) shard = e.path().string();
  ASSERT_FALSE(shard.empty());
  fs::copy_file(shard, d + "/stray.safetensors");
  {  // {"format":"pt"} -> {"format":"xx"} in the first shard's header (same length).
    std::fstream f(shard, std::ios::binary | std::ios::in | std::ios::out);
    std::string head(4096, '\0');
    f.read(head.data(), static_cast<std::streamsize>(head.size()));
    const size_t pos = head.find("\"format\":\"pt\"");
    ASSERT_NE(pos, std::string::npos);
    f.clear();
    f.seekp(static_cast<std::streamoff>(pos + 10));
    f.write("xx", 2);
  }
  const RunResult r = inspect(d);
  EXPECT_HAS(r.out, "stray.safetensors is not in model.safetensors.index.json");
  EXPECT_HAS(r.out, "__metadata__ has no {\"format\": \"pt\"}");
}

// ---- dequantize -------------------------------------------------------------------------------

// Every linear of `deq` equals llmq's dequantization of `quant`, rounded to `dtype`; every other
// tensor equals the stored float value rounded to `dtype`.
void expect_dequantized(const std::string& quant, const std::string& deq, llmq::DType dtype) {
  auto q = llmq::HfCheckpoint::open(quant);
  ASSERT_TRUE(q) << q.status().message();
  auto d = llmq::CheckpointTensors::open(deq);
  ASSERT_TRUE(d) << d.status().message();
  const llmq::LlamaConfig& c = q->config();
  auto round = [dtype](float v) {
    if (dtype == llmq::DType::kBF16) return llmq::bf16_to_f32(llmq::f32_to_bf16(v));
    if (dtype == llmq::DType::kF16) return llmq::f16_to_f32(llmq::f32_to_f16(v));
    return v;
  };
  int linears = 0, others = 0;
  for (const std::string& name : d->names()) {
    auto v = d->view(name);
    ASSERT_TRUE(v);
    EXPECT_EQ(v->dtype, dtype) << name;
    const llmq::Tensor got = llmq::to_f32(*v);
    const std::string prefix = name.substr(0, name.size() - std::string(".weight").size());
    llmq::Tensor want;
    if (q->is_quantized_linear(prefix)) {
      const bool out_h = prefix.find("o_proj") != std::string::npos || prefix.find("down_proj") != std::string::npos;
      const int64_t out = prefix.find("q_proj") != std::string::npos ? c.q_dim()
                          : prefix.find("k_proj") != std::string::npos || prefix.find("v_proj") != std::string::npos
                              ? c.kv_dim()
                          : out_h ? c.hidden_size
                                  : c.intermediate_size;
      auto ql = llmq::unpack_quantized_linear(q->tensors(), prefix, *q->quantization(), out, got.dim(1));
      ASSERT_TRUE(ql) << ql.status().message();
      want = llmq::dequantize(*ql);
      ++linears;
    } else {
      auto stored = q->tensors().view(name);
      ASSERT_TRUE(stored) << name;
      want = llmq::to_f32(*stored);
      ++others;
    }
    ASSERT_EQ(got.shape(), want.shape()) << name;
    const float* g = got.data<float>();
    const float* w = want.data<float>();
    double norm = 0;
    int64_t bad = 0;
    for (int64_t i = 0; i < got.numel(); ++i) {
      bad += g[i] != round(w[i]);
      norm += double(g[i]) * g[i];
    }
    EXPECT_EQ(bad, 0) << name;
    EXPECT_GT(norm, 0.0) << name << " is all zero";
  }
  EXPECT_EQ(linears, 7 * c.num_hidden_layers);
  EXPECT_GE(others, 2 * c.num_hidden_layers + 1);
}

TEST_F(Compat, DequantizeWritesLlmqsOwnDequantization) {
  for (const std::string name : {"fp8", "int8", "gptq", "ct4-asym", "awq"}) {
    const std::string out = dir_ + "/" + name + ".deq";
    RunResult r = run_llmq("dequantize --model " + dir_ + "/" + name + " --out " + out);
    ASSERT_EQ(r.exit_code, 0) << r.out;
    expect_dequantized(dir_ + "/" + name, out, llmq::DType::kF32);
    std::ifstream in(out + "/config.json");
    const auto j = nlohmann::json::parse(in);
    EXPECT_FALSE(j.contains("quantization_config")) << name;
    EXPECT_EQ(j.value("torch_dtype", ""), "float32") << name;
    EXPECT_TRUE(fs::exists(out + "/tokenizer.json")) << name;
    EXPECT_FALSE(fs::exists(out + "/quantize_config.json")) << name;
    EXPECT_FALSE(fs::exists(out + "/llmq_report.json")) << name;
    // The float checkpoint loads like any other.
    EXPECT_TRUE(llmq::HfCheckpoint::open(out)) << name;
  }
  RunResult r = run_llmq("dequantize --model " + dir_ + "/awq --out " + dir_ + "/awq.deq16 --dtype f16");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  expect_dequantized(dir_ + "/awq", dir_ + "/awq.deq16", llmq::DType::kF16);
  r = run_llmq("dequantize --model " + dir_ + "/ct4 --out " + dir_ + "/ct4.deqbf16 --dtype bf16");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  expect_dequantized(dir_ + "/ct4", dir_ + "/ct4.deqbf16", llmq::DType::kBF16);
  for (const auto& e : fs::directory_iterator(dir_))
    EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();  // nothing staged left
}

TEST_F(Compat, DequantizeRefusesBadInput) {
  expect_one_line_error(run_llmq("dequantize --model " + model_ + " --out " + dir_ + "/x"),
                        "no quantization_config (not a quantized checkpoint)");
  expect_one_line_error(run_llmq("dequantize --model " + dir_ + "/fp8 --out " + dir_ + "/x --dtype f64"),
                        "--dtype must be f32, bf16 or f16");
  ASSERT_EQ(run_llmq("dequantize --model " + dir_ + "/fp8 --out " + dir_ + "/once").exit_code, 0);
  expect_one_line_error(run_llmq("dequantize --model " + dir_ + "/fp8 --out " + dir_ + "/once"), "--force");
  EXPECT_EQ(run_llmq("dequantize --model " + dir_ + "/fp8 --out " + dir_ + "/once --force").exit_code, 0);
  EXPECT_FALSE(fs::exists(dir_ + "/x"));
}

// ---- eval --logits-out ------------------------------------------------------------------------

TEST_F(Compat, LogitsOutHoldsTheCpuForwardOfTheFirstWindow) {
  const std::string text = std::string(LLMQ_SOURCE_DIR) + "/examples/demo_text.txt";
  for (const std::string name : {"tiny", "fp8", "int8", "ct4"}) {
    const std::string dir = dir_ + "/" + name, out = dir_ + "/" + name + ".logits.safetensors";
    RunResult r = run_llmq("eval --model " + dir + " --ppl " + text + " --seq-len 16 --limit-tokens 40 --logits-out " + out);
    ASSERT_EQ(r.exit_code, 0) << r.out;
    auto f = llmq::SafetensorsFile::open(out);
    ASSERT_TRUE(f) << f.status().message();
    auto ckpt = llmq::HfCheckpoint::open(dir);
    ASSERT_TRUE(ckpt);
    const int64_t vocab = ckpt->config().vocab_size;
    auto logits = f->view("logits");
    auto ids = f->view("input_ids");
    ASSERT_TRUE(logits && ids);
    ASSERT_EQ(logits->shape, (llmq::Shape{16, vocab}));
    ASSERT_EQ(ids->shape, (llmq::Shape{16}));
    ASSERT_EQ(logits->dtype, llmq::DType::kF32);
    ASSERT_EQ(ids->dtype, llmq::DType::kI64);

    // The same window through the library: the ids the tokenizer gives, the logits the model gives.
    auto tok = llmq::load_tokenizer(dir);
    ASSERT_TRUE(tok);
    std::ifstream in(text);
    const std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::vector<int32_t> want_ids = (*tok)->encode(s);
    want_ids.resize(16);
    std::vector<int32_t> got_ids(16);
    for (int t = 0; t < 16; ++t) {
      int64_t id;
      std::memcpy(&id, static_cast<const char*>(ids->data) + 8 * t, 8);
      got_ids[t] = static_cast<int32_t>(id);
    }
    EXPECT_EQ(got_ids, want_ids) << name;
    auto model = llmq::LlamaModel::load(*ckpt);
    ASSERT_TRUE(model) << model.status().message();
    llmq::KvCache cache = model->make_cache(16);
    const llmq::Tensor want = model->prefill(want_ids, cache, llmq::LogitsFor::kAll, llmq::ForwardOptions{});
    int64_t bad = 0, finite = 0;
    for (int64_t i = 0; i < want.numel(); ++i) {
      float g;
      std::memcpy(&g, static_cast<const char*>(logits->data) + 4 * i, 4);
      bad += g != want.data<float>()[i];
      finite += std::isfinite(g);
    }
    EXPECT_EQ(bad, 0) << name << ": logits differ from LlamaModel::prefill";
    EXPECT_EQ(finite, want.numel()) << name;
  }
  const std::string one = dir_ + "/tiny.logits.safetensors";
  expect_one_line_error(run_llmq("eval --model " + model_ + " --ppl " + text + " --seq-len 16 --logits-out " + one),
                        "--force");
  expect_one_line_error(run_llmq("eval --model " + model_ + " --bench --logits-out " + dir_ + "/y"),
                        "--logits-out needs --ppl");
  expect_one_line_error(run_llmq("eval --model " + model_ + " --model " + dir_ + "/fp8 --ppl " + text +
                                 " --logits-out " + dir_ + "/y"),
                        "--logits-out needs a single --model");
}

}  // namespace
