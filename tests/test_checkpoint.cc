// config.json parsing and HF checkpoint directories: defaults, contradictions, tied embeddings
// on both real tiny models, shape checks naming tensor/file/shapes, sharded round trip.
#include "formats/checkpoint.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/numeric.h"
#include "formats/synth.h"
#include "tests/test_data.h"

namespace llmq {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

::testing::AssertionResult HasSub(const std::string& msg, const std::string& part) {
  if (msg.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "\"" << msg << "\" does not contain \"" << part << "\"";
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  ASSERT_TRUE(out.good()) << path;
}

std::string model_dir(const std::string& name) { return testing::test_data_dir() + "/models/" + name; }

// A small valid config: hidden 16, 4 heads (head_dim 4), 2 kv heads, intermediate 24, 2 layers.
json small_config() {
  return json{{"hidden_size", 16},       {"intermediate_size", 24}, {"num_hidden_layers", 2},
              {"num_attention_heads", 4}, {"num_key_value_heads", 2}, {"vocab_size", 32},
              {"tie_word_embeddings", false}};
}

// Writes config.json and model.safetensors with every tensor small_config() needs (BF16 with a
// position-dependent pattern); `shape_override` replaces one tensor's shape, `drop` omits one.
void write_small_checkpoint(const std::string& dir, const json& config, const std::string& override_name = "",
                            const Shape& override_shape = {}, const std::string& drop = "") {
  write_text(dir + "/config.json", config.dump(2));
  const int64_t h = 16, q = 16, kv = 8, inter = 24, v = 32;
  std::map<std::string, Shape> shapes = {{"model.embed_tokens.weight", {v, h}},
                                         {"lm_head.weight", {v, h}},
                                         {"model.norm.weight", {h}}};
  for (int64_t i = 0; i < 2; ++i) {
    shapes[layer_tensor_name(i, "input_layernorm.weight")] = {h};
    shapes[layer_tensor_name(i, "self_attn.q_proj.weight")] = {q, h};
    shapes[layer_tensor_name(i, "self_attn.k_proj.weight")] = {kv, h};
    shapes[layer_tensor_name(i, "self_attn.v_proj.weight")] = {kv, h};
    shapes[layer_tensor_name(i, "self_attn.o_proj.weight")] = {h, q};
    shapes[layer_tensor_name(i, "post_attention_layernorm.weight")] = {h};
    shapes[layer_tensor_name(i, "mlp.gate_proj.weight")] = {inter, h};
    shapes[layer_tensor_name(i, "mlp.up_proj.weight")] = {inter, h};
    shapes[layer_tensor_name(i, "mlp.down_proj.weight")] = {h, inter};
  }
  if (!override_name.empty()) shapes[override_name] = override_shape;
  SafetensorsWriter w;
  int salt = 0;
  for (const auto& [name, shape] : shapes) {
    if (name == drop) continue;
    Tensor f(DType::kF32, shape);
    for (int64_t i = 0; i < f.numel(); ++i) f.data<float>()[i] = 0.25f * static_cast<float>((i + salt) % 9) - 1.0f;
    w.add(name, f32_to(f.view(), DType::kBF16));
    ++salt;
  }
  ASSERT_TRUE(w.write(dir + "/model.safetensors").is_ok());
}

// ---------------------------------------------------------------------------------------------
// config.json

TEST(HfConfig, Stories260kValues) {
  LLMQ_REQUIRE_TEST_DATA();
  auto c = load_llama_config(model_dir("stories260k") + "/config.json");
  ASSERT_TRUE(c.has_value()) << c.status().message();
  EXPECT_EQ(c->hidden_size, 64);
  EXPECT_EQ(c->intermediate_size, 172);
  EXPECT_EQ(c->num_hidden_layers, 5);
  EXPECT_EQ(c->num_attention_heads, 8);
  EXPECT_EQ(c->num_key_value_heads, 4);
  EXPECT_EQ(c->head_dim, 8);
  EXPECT_EQ(c->q_dim(), 64);
  EXPECT_EQ(c->kv_dim(), 32);
  EXPECT_EQ(c->vocab_size, 512);
  EXPECT_EQ(c->max_position_embeddings, 512);
  EXPECT_DOUBLE_EQ(c->rms_norm_eps, 1e-5);
  EXPECT_FALSE(c->rope_scaling.has_value());
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_EQ(c->bos_token_ids, std::vector<int64_t>{1});
  EXPECT_EQ(c->eos_token_ids, std::vector<int64_t>{2});
  EXPECT_EQ(c->torch_dtype, "bfloat16");
}

TEST(HfConfig, DefaultsFollowTransformers) {
  const json j = {{"hidden_size", 96}, {"intermediate_size", 256}, {"num_hidden_layers", 3},
                  {"num_attention_heads", 6}, {"vocab_size", 100}};
  auto c = parse_llama_config(j.dump(), "config.json");
  ASSERT_TRUE(c.has_value()) << c.status().message();
  EXPECT_EQ(c->num_key_value_heads, 6);
  EXPECT_EQ(c->head_dim, 16);
  EXPECT_DOUBLE_EQ(c->rms_norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(c->rope_theta, 10000.0);
  EXPECT_EQ(c->max_position_embeddings, 2048);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_TRUE(c->bos_token_ids.empty());
  EXPECT_TRUE(c->eos_token_ids.empty());
  EXPECT_EQ(c->torch_dtype, "bfloat16");

  json k = j;
  k["head_dim"] = 32;  // explicit head_dim need not be hidden / heads (q_dim != hidden)
  k["num_key_value_heads"] = nullptr;
  auto d = parse_llama_config(k.dump(), "config.json");
  ASSERT_TRUE(d.has_value()) << d.status().message();
  EXPECT_EQ(d->head_dim, 32);
  EXPECT_EQ(d->q_dim(), 192);
  EXPECT_EQ(d->num_key_value_heads, 6);
}

TEST(HfConfig, TokenIdsDtypeAndRopeScalingVariants) {
  json j = small_config();
  j["bos_token_id"] = 128000;
  j["eos_token_id"] = {128001, 128008, 128009};
  j["dtype"] = "float16";  // transformers v5 spelling
  j["rope_theta"] = 500000.0;
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
  auto c = parse_llama_config(j.dump(), "config.json");
  ASSERT_TRUE(c.has_value()) << c.status().message();
  EXPECT_EQ(c->bos_token_ids, std::vector<int64_t>{128000});
  EXPECT_EQ(c->eos_token_ids, (std::vector<int64_t>{128001, 128008, 128009}));
  EXPECT_EQ(c->torch_dtype, "float16");
  EXPECT_DOUBLE_EQ(c->rope_theta, 500000.0);
  ASSERT_TRUE(c->rope_scaling.has_value());
  EXPECT_EQ(c->rope_scaling->type, "llama3");
  EXPECT_EQ(c->rope_scaling->original_max_position_embeddings, 8192);

  // Older spelling "type", different values so defaults cannot pass for parsed ones.
  j["rope_scaling"] = {{"type", "llama3"}, {"factor", 32.0}, {"low_freq_factor", 2.0},
                       {"high_freq_factor", 6.0}, {"original_max_position_embeddings", 4096}};
  j.erase("dtype");
  j["torch_dtype"] = "float32";
  c = parse_llama_config(j.dump(), "config.json");
  ASSERT_TRUE(c.has_value()) << c.status().message();
  ASSERT_TRUE(c->rope_scaling.has_value());
  EXPECT_DOUBLE_EQ(c->rope_scaling->factor, 32.0);
  EXPECT_DOUBLE_EQ(c->rope_scaling->low_freq_factor, 2.0);
  EXPECT_DOUBLE_EQ(c->rope_scaling->high_freq_factor, 6.0);
  EXPECT_EQ(c->rope_scaling->original_max_position_embeddings, 4096);
  EXPECT_EQ(c->torch_dtype, "float32");

  // transformers v5 rope_parameters carries rope_theta; "default" means no scaling.
  j.erase("rope_scaling");
  j.erase("rope_theta");
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 250000.0}};
  c = parse_llama_config(j.dump(), "config.json");
  ASSERT_TRUE(c.has_value()) << c.status().message();
  EXPECT_FALSE(c->rope_scaling.has_value());
  EXPECT_DOUBLE_EQ(c->rope_theta, 250000.0);
}

TEST(HfConfig, ErrorsNameFileAndKey) {
  struct Case {
    const char* what;
    json config;
    const char* key_problem;
  };
  auto with = [](const char* key, json value) {
    json j = small_config();
    if (value.is_discarded())
      j.erase(key);
    else
      j[key] = std::move(value);
    return j;
  };
  const json removed = json(json::value_t::discarded);
  const std::vector<Case> cases = {
      {"missing vocab", with("vocab_size", removed), "\"vocab_size\" is missing"},
      {"missing hidden", with("hidden_size", removed), "\"hidden_size\" is missing"},
      {"kv heads do not divide heads", with("num_key_value_heads", 3),
       "\"num_key_value_heads\" (3) does not divide num_attention_heads (4)"},
      {"heads do not divide hidden", with("num_attention_heads", 5),
       "\"num_attention_heads\" (5) does not divide hidden_size (16)"},
      {"zero layers", with("num_hidden_layers", 0), "\"num_hidden_layers\" must be positive"},
      {"negative size", with("intermediate_size", -4), "\"intermediate_size\" must be positive"},
      {"float size", with("hidden_size", 16.5), "\"hidden_size\" must be an integer"},
      {"huge size", with("vocab_size", 1LL << 40), "\"vocab_size\" is implausibly large"},
      {"string size", with("hidden_size", "16"), "\"hidden_size\" must be an integer"},
      {"act", with("hidden_act", "gelu"), "\"hidden_act\" must be \"silu\""},
      {"linear rope", with("rope_scaling", json{{"type", "linear"}, {"factor", 2.0}}),
       "\"rope_scaling.type\" 'linear' is not supported"},
      {"rope missing factor",
       with("rope_scaling", json{{"rope_type", "llama3"}, {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                                 {"original_max_position_embeddings", 8192}}),
       "\"rope_scaling.factor\" is missing"},
      {"eos not id", with("eos_token_id", "x"), "\"eos_token_id\" must be a token id"},
      {"tie not bool", with("tie_word_embeddings", 1), "\"tie_word_embeddings\" must be true or false"},
  };
  const std::string dir = testing::scratch_dir("cfg_errors");
  const std::string path = dir + "/config.json";
  for (const Case& c : cases) {
    write_text(path, c.config.dump());
    auto r = load_llama_config(path);
    ASSERT_FALSE(r.has_value()) << c.what << " was accepted";
    const std::string msg = r.status().message();
    EXPECT_EQ(msg.rfind(path + ": ", 0), 0u) << c.what << ": " << msg;
    EXPECT_TRUE(HasSub(msg, c.key_problem)) << c.what;
  }
  write_text(path, "{\"hidden_size\": ");
  auto r = load_llama_config(path);
  ASSERT_FALSE(r.has_value());
  EXPECT_TRUE(HasSub(r.status().message(), path + ": invalid JSON"));
  auto missing = load_llama_config(dir + "/nope.json");
  ASSERT_FALSE(missing.has_value());
  EXPECT_EQ(missing.status().message(), dir + "/nope.json: cannot open");
}

// ---------------------------------------------------------------------------------------------
// Real checkpoints and tied embeddings

TEST(HfCheckpoint, Stories260kTiedStoresOnlyEmbedding) {
  LLMQ_REQUIRE_TEST_DATA();
  auto ck = HfCheckpoint::open(model_dir("stories260k"));
  ASSERT_TRUE(ck.has_value()) << ck.status().message();
  EXPECT_FALSE(ck->tensors().contains("lm_head.weight"));
  auto embed = ck->embed_tokens();
  auto head = ck->lm_head();
  ASSERT_TRUE(embed.has_value() && head.has_value());
  EXPECT_EQ(embed->shape, (Shape{512, 64}));
  EXPECT_EQ(head->data, embed->data);  // same stored bytes
  EXPECT_EQ(embed->data, ck->tensors().view("model.embed_tokens.weight")->data);
  auto via_name = ck->tensor("lm_head.weight", {512, 64});
  ASSERT_TRUE(via_name.has_value()) << via_name.status().message();
  EXPECT_EQ(via_name->data, embed->data);

  // load_f32 is the exact BF16 upcast.
  auto norm = ck->load_f32("model.layers.2.input_layernorm.weight", {64});
  ASSERT_TRUE(norm.has_value()) << norm.status().message();
  auto raw = ck->tensors().view("model.layers.2.input_layernorm.weight");
  ASSERT_TRUE(raw.has_value());
  double sum_abs = 0;
  for (int64_t i = 0; i < 64; ++i) {
    const float want = bf16_to_f32(static_cast<const uint16_t*>(raw->data)[i]);
    ASSERT_EQ(norm->data<float>()[i], want) << i;
    sum_abs += std::fabs(want);
  }
  EXPECT_GT(sum_abs, 0.0);

  auto wrong = ck->tensor("model.norm.weight", {65});
  ASSERT_FALSE(wrong.has_value());
  EXPECT_TRUE(HasSub(wrong.status().message(), "tensor 'model.norm.weight' has shape [64], expected [65]"));
}

TEST(HfCheckpoint, TinyStories656kTiedStoresOnlyLmHead) {
  LLMQ_REQUIRE_TEST_DATA();
  auto ck = HfCheckpoint::open(model_dir("tinystories-656k"));
  ASSERT_TRUE(ck.has_value()) << ck.status().message();
  EXPECT_EQ(ck->config().head_dim, 16);
  EXPECT_FALSE(ck->tensors().contains("model.embed_tokens.weight"));
  auto embed = ck->embed_tokens();
  auto head = ck->lm_head();
  ASSERT_TRUE(embed.has_value() && head.has_value());
  EXPECT_EQ(embed->shape, (Shape{2048, 128}));
  EXPECT_EQ(embed->data, head->data);
  EXPECT_EQ(embed->data, ck->tensors().view("lm_head.weight")->data);
  auto e32 = ck->load_f32("model.embed_tokens.weight", {2048, 128});
  ASSERT_TRUE(e32.has_value()) << e32.status().message();
  EXPECT_EQ(e32->data<float>()[129], bf16_to_f32(static_cast<const uint16_t*>(head->data)[129]));
}

// ---------------------------------------------------------------------------------------------
// Handcrafted checkpoints

TEST(HfCheckpoint, UntiedSmallCheckpointOpens) {
  const std::string dir = testing::scratch_dir("ck_small");
  write_small_checkpoint(dir, small_config());
  auto ck = HfCheckpoint::open(dir);
  ASSERT_TRUE(ck.has_value()) << ck.status().message();
  auto embed = ck->embed_tokens();
  auto head = ck->lm_head();
  ASSERT_TRUE(embed.has_value() && head.has_value());
  EXPECT_NE(embed->data, head->data);  // untied: both stored, distinct
  EXPECT_EQ(ck->tensors().names().size(), 2u + 1u + 2u * 9u);
}

TEST(HfCheckpoint, WrongShapeNamesTensorFileAndBothShapes) {
  const std::string dir = testing::scratch_dir("ck_wrong_shape");
  write_small_checkpoint(dir, small_config(), "model.layers.1.mlp.down_proj.weight", {24, 16});
  auto ck = HfCheckpoint::open(dir);
  ASSERT_FALSE(ck.has_value());
  EXPECT_EQ(ck.status().message(), dir + "/model.safetensors: tensor 'model.layers.1.mlp.down_proj.weight' has shape "
                                         "[24, 16], expected [16, 24] from config.json");

  // k_proj sized for the wrong number of kv heads.
  write_small_checkpoint(dir, small_config(), "model.layers.0.self_attn.k_proj.weight", {16, 16});
  ck = HfCheckpoint::open(dir);
  ASSERT_FALSE(ck.has_value());
  EXPECT_TRUE(HasSub(ck.status().message(), "'model.layers.0.self_attn.k_proj.weight' has shape [16, 16], expected [8, 16]"));
}

TEST(HfCheckpoint, MissingTensorsAndBadDtypes) {
  const std::string dir = testing::scratch_dir("ck_missing");
  write_small_checkpoint(dir, small_config(), "", {}, "lm_head.weight");
  auto ck = HfCheckpoint::open(dir);  // untied and no lm_head
  ASSERT_FALSE(ck.has_value());
  EXPECT_EQ(ck.status().message(),
            dir + ": missing tensor 'lm_head.weight' and config.json has tie_word_embeddings false");

  json tied = small_config();
  tied["tie_word_embeddings"] = true;
  write_small_checkpoint(dir, tied, "", {}, "lm_head.weight");
  ck = HfCheckpoint::open(dir);
  ASSERT_TRUE(ck.has_value()) << ck.status().message();
  EXPECT_EQ(ck->lm_head()->data, ck->embed_tokens()->data);

  write_small_checkpoint(dir, small_config(), "", {}, "model.layers.1.post_attention_layernorm.weight");
  ck = HfCheckpoint::open(dir);
  ASSERT_FALSE(ck.has_value());
  EXPECT_EQ(ck.status().message(),
            dir + ": missing tensor 'model.layers.1.post_attention_layernorm.weight'");

  // An integer tensor where a float weight belongs.
  write_small_checkpoint(dir, small_config());
  {
    auto src = SafetensorsFile::open(dir + "/model.safetensors");
    ASSERT_TRUE(src.has_value());
    SafetensorsWriter w;
    for (const auto& e : src->entries()) {
      if (e.name == "model.norm.weight")
        w.add(e.name, Tensor(DType::kI16, {16}));
      else
        w.add(e.name, *src->view(e.name));
    }
    ASSERT_TRUE(w.write(dir + "/model.tmp").is_ok());
  }
  fs::rename(dir + "/model.tmp", dir + "/model.safetensors");
  ck = HfCheckpoint::open(dir);
  ASSERT_FALSE(ck.has_value());
  EXPECT_EQ(ck.status().message(),
            dir + "/model.safetensors: tensor 'model.norm.weight' has dtype I16, expected BF16, F16 or F32");

  fs::remove(dir + "/config.json");
  ck = HfCheckpoint::open(dir);
  ASSERT_FALSE(ck.has_value());
  EXPECT_EQ(ck.status().message(), dir + "/config.json: cannot open");
}

TEST(HfCheckpoint, ContradictoryConfigRejectedAtOpen) {
  const std::string dir = testing::scratch_dir("ck_contradiction");
  json c = small_config();
  c["num_key_value_heads"] = 3;
  write_small_checkpoint(dir, c);
  auto ck = HfCheckpoint::open(dir);
  ASSERT_FALSE(ck.has_value());
  EXPECT_EQ(ck.status().message(),
            dir + "/config.json: \"num_key_value_heads\" (3) does not divide num_attention_heads (4)");
}

TEST(HfCheckpoint, IndexPointingToMissingShard) {
  const std::string dir = testing::scratch_dir("ck_missing_shard");
  write_small_checkpoint(dir, small_config());
  fs::rename(dir + "/model.safetensors", dir + "/model-00001-of-00002.safetensors");
  json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", json::object()}};
  auto f = SafetensorsFile::open(dir + "/model-00001-of-00002.safetensors");
  ASSERT_TRUE(f.has_value());
  for (const auto& e : f->entries()) index["weight_map"][e.name] = "model-00001-of-00002.safetensors";
  index["weight_map"]["model.norm.weight"] = "model-00002-of-00002.safetensors";
  write_text(dir + "/model.safetensors.index.json", index.dump(2));
  auto ck = HfCheckpoint::open(dir);
  ASSERT_FALSE(ck.has_value());
  EXPECT_EQ(ck.status().message(), dir + "/model.safetensors.index.json: shard 'model-00002-of-00002.safetensors' "
                                         "listed in weight_map does not exist");
}

TEST(HfCheckpoint, ShardedRewriteOfStories260kReadsBackIdentically) {
  LLMQ_REQUIRE_TEST_DATA();
  auto src = HfCheckpoint::open(model_dir("stories260k"));
  ASSERT_TRUE(src.has_value()) << src.status().message();
  const std::string dir = testing::scratch_dir("ck_sharded");
  fs::copy_file(model_dir("stories260k") + "/config.json", dir + "/config.json");
  // 100 KB shards: the 64 KB embedding plus ~36 KB per layer gives several shards.
  ShardedCheckpointWriter w(dir, 100'000);
  const std::vector<std::string> names = src->tensors().names();
  for (const auto& name : names) ASSERT_TRUE(w.add(name, *src->tensors().view(name)).is_ok()) << name;
  ASSERT_TRUE(w.finish().is_ok());
  ASSERT_TRUE(fs::exists(dir + "/model.safetensors.index.json"));
  ASSERT_FALSE(fs::exists(dir + "/model.safetensors"));

  auto out = HfCheckpoint::open(dir);
  ASSERT_TRUE(out.has_value()) << out.status().message();
  EXPECT_GE(out->tensors().files().size(), 4u);
  EXPECT_EQ(out->tensors().names(), names);
  uint64_t total = 0;
  for (const auto& name : names) {
    auto a = src->tensors().view(name);
    auto b = out->tensors().view(name);
    ASSERT_TRUE(a.has_value() && b.has_value()) << name;
    ASSERT_EQ(a->dtype, b->dtype) << name;
    ASSERT_EQ(a->shape, b->shape) << name;
    ASSERT_EQ(std::memcmp(a->data, b->data, a->nbytes()), 0) << name;
    total += static_cast<uint64_t>(a->nbytes());
  }
  const json index = json::parse(read_text(dir + "/model.safetensors.index.json"));
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), total);
  EXPECT_EQ(index["weight_map"].size(), names.size());
  EXPECT_EQ(out->lm_head()->data, out->embed_tokens()->data);
}

// SynthOptions::num_layers writes the full model's first layers, bit for bit: tensors are
// seeded by name, not by their place in the file.
TEST(HfCheckpoint, SynthCutToOneLayerHoldsTheFullModelsFirstLayer) {
  const std::string full_dir = testing::scratch_dir("synth_full"), cut_dir = testing::scratch_dir("synth_cut");
  auto preset = find_synth_preset("tiny");
  ASSERT_TRUE(preset.has_value());
  SynthOptions options;
  options.seed = 5;
  ASSERT_TRUE(write_synthetic_checkpoint(*preset, options, full_dir).is_ok());
  options.num_layers = 1;
  ASSERT_TRUE(write_synthetic_checkpoint(*preset, options, cut_dir).is_ok());
  auto full = HfCheckpoint::open(full_dir);
  auto cut = HfCheckpoint::open(cut_dir);
  ASSERT_TRUE(full.has_value()) << full.status().message();
  ASSERT_TRUE(cut.has_value()) << cut.status().message();
  ASSERT_GT(full->config().num_hidden_layers, 1);
  EXPECT_EQ(cut->config().num_hidden_layers, 1);
  EXPECT_FALSE(cut->tensors().find(layer_tensor_name(1, "mlp.down_proj.weight")));
  const std::vector<std::string> names = full->tensors().names();
  int compared = 0;
  for (const std::string& name : names) {
    if (name.rfind("model.layers.", 0) == 0 && name.rfind("model.layers.0.", 0) != 0) continue;
    const SafetensorsEntry* a = full->tensors().find(name);
    const SafetensorsEntry* b = cut->tensors().find(name);
    ASSERT_TRUE(b != nullptr) << name;
    auto va = full->tensor(name, a->shape), vb = cut->tensor(name, b->shape);
    ASSERT_TRUE(va.has_value() && vb.has_value()) << name;
    ASSERT_EQ(va->nbytes(), vb->nbytes()) << name;
    EXPECT_EQ(std::memcmp(va->data, vb->data, static_cast<size_t>(va->nbytes())), 0) << name;
    ++compared;
  }
  EXPECT_EQ(compared, 12);  // embed, layer 0's 9, the final norm, lm_head
  options.num_layers = -1;
  EXPECT_FALSE(write_synthetic_checkpoint(*preset, options, testing::scratch_dir("synth_negative")).is_ok());
}

TEST(HfCheckpoint, LayerTensorName) {
  EXPECT_EQ(layer_tensor_name(3, "mlp.up_proj.weight"), "model.layers.3.mlp.up_proj.weight");
  EXPECT_EQ(layer_tensor_name(12, "input_layernorm.weight"), "model.layers.12.input_layernorm.weight");
}

}  // namespace
}  // namespace llmq
