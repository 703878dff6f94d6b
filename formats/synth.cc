#include "formats/synth.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/numeric.h"
#include "core/tensor.h"
#include "formats/checkpoint.h"
#include "formats/safetensors.h"

namespace llmq {
namespace fs = std::filesystem;
using nlohmann::ordered_json;

namespace {

LlamaConfig llama3_shape(int64_t hidden, int64_t inter, int64_t layers, int64_t heads, int64_t kv,
                         int64_t vocab, double rope_factor, bool tied) {
  LlamaConfig c;
  c.hidden_size = hidden;
  c.intermediate_size = inter;
  c.num_hidden_layers = layers;
  c.num_attention_heads = heads;
  c.num_key_value_heads = kv;
  c.head_dim = hidden / heads;
  c.vocab_size = vocab;
  c.max_position_embeddings = 131072;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 500000.0;
  c.rope_scaling = RopeScaling{"llama3", rope_factor, 1.0, 4.0, 8192};
  c.tie_word_embeddings = tied;
  c.bos_token_ids = {128000};
  c.eos_token_ids = {128001, 128008, 128009};
  return c;
}

LlamaConfig tiny_shape() {
  // Widths are multiples of 128 so every group-128 quantizer applies; GQA 8/4; untied head.
  LlamaConfig c = llama3_shape(256, 768, 4, 8, 4, 512, 8.0, false);
  c.max_position_embeddings = 2048;
  c.bos_token_ids = {256};
  c.eos_token_ids = {257, 258};
  return c;
}

constexpr uint64_t kGB = 1000ull * 1000 * 1000;

// splitmix64: a counter-based generator, so element i of a tensor is computed independently
// (parallel and deterministic).
inline uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 0xCBF29CE484222325ull;
  for (unsigned char ch : s) h = (h ^ ch) * 0x100000001B3ull;
  return h;
}

// Normal(0, std) values rounded to BF16, by Box-Muller on two 32-bit uniforms per element.
Tensor random_bf16(const Shape& shape, uint64_t seed, const std::string& name, double std_dev) {
  Tensor t(DType::kBF16, shape);
  uint16_t* out = t.data<uint16_t>();
  const int64_t n = t.numel();
  const uint64_t stream = splitmix64(seed ^ fnv1a(name));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t r = splitmix64(stream + static_cast<uint64_t>(i));
    const double u1 = (static_cast<double>(r >> 32) + 0.5) * (1.0 / 4294967296.0);
    const double u2 = static_cast<double>(r & 0xFFFFFFFFu) * (1.0 / 4294967296.0);
    const double z = std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
    out[i] = f32_to_bf16(static_cast<float>(z * std_dev));
  }
  return t;
}

Tensor ones_bf16(int64_t n) {
  Tensor t(DType::kBF16, {n});
  for (int64_t i = 0; i < n; ++i) t.data<uint16_t>()[i] = f32_to_bf16(1.0f);
  return t;
}

ordered_json ids_json(const std::vector<int64_t>& ids) {
  if (ids.size() == 1) return ids[0];
  return ids;
}

// GPT-2 byte-level alphabet: printable bytes map to themselves, the rest to U+0100 onwards.
std::string byte_level_char(int b) {
  static std::vector<int> table = [] {
    std::vector<int> t(256, -1);
    int next = 256;
    for (int i = 0; i < 256; ++i) {
      const bool printable = (i >= 33 && i <= 126) || (i >= 161 && i <= 172) || (i >= 174);
      t[i] = printable ? i : next++;
    }
    return t;
  }();
  const int cp = table[b];
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

constexpr const char* kLlama3SplitPattern =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

Status write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  if (!out) return Status::error(path + ": write failed");
  return Status::ok();
}

Status write_byte_level_tokenizer(const LlamaConfig& c, const std::string& dir) {
  const int64_t bos = c.bos_token_ids.at(0);
  const int64_t eos = c.eos_token_ids.at(0);
  ordered_json vocab = ordered_json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_level_char(b)] = b;
  ordered_json added = ordered_json::array();
  auto add_special = [&](const std::string& text, int64_t id) {
    added.push_back({{"id", id}, {"content", text}, {"single_word", false}, {"lstrip", false},
                     {"rstrip", false}, {"normalized", false}, {"special", true}});
  };
  add_special("<|begin_of_text|>", bos);
  add_special("<|end_of_text|>", eos);
  if (c.eos_token_ids.size() > 1) add_special("<|eot_id|>", c.eos_token_ids.back());
  ordered_json tok = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"}, {"pattern", {{"Regex", kLlama3SplitPattern}}}, {"behavior", "Isolated"}, {"invert", false}},
          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}}}}}},
      {"post_processor", nullptr},
      {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
      {"model",
       {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr}, {"fuse_unk", false}, {"byte_fallback", false}, {"ignore_merges", true},
        {"vocab", vocab}, {"merges", ordered_json::array()}}}};
  LLMQ_RETURN_IF_ERROR(write_text(dir + "/tokenizer.json", tok.dump()));
  ordered_json cfg = {{"add_bos_token", true},
                      {"add_eos_token", false},
                      {"bos_token", "<|begin_of_text|>"},
                      {"eos_token", "<|end_of_text|>"},
                      {"clean_up_tokenization_spaces", true},
                      {"model_max_length", c.max_position_embeddings},
                      {"tokenizer_class", "PreTrainedTokenizerFast"}};
  return write_text(dir + "/tokenizer_config.json", cfg.dump(2) + "\n");
}

Status copy_tokenizer_files(const std::string& from, const std::string& dir) {
  int copied = 0;
  for (const char* name : {"tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"}) {
    const fs::path src = fs::path(from) / name;
    if (!fs::exists(src)) continue;
    std::error_code ec;
    fs::copy_file(src, fs::path(dir) / name, ec);
    if (ec) return Status::error(src.string() + ": cannot copy: " + ec.message());
    ++copied;
  }
  if (copied == 0) return Status::error(from + ": no tokenizer.json or tokenizer.model to copy");
  return Status::ok();
}

}  // namespace

const std::vector<SynthPreset>& synth_presets() {
  static const std::vector<SynthPreset> presets = {
      {"llama-3.1-8b", llama3_shape(4096, 14336, 32, 32, 8, 128256, 8.0, false), 5 * kGB},
      {"llama-3.1-70b", llama3_shape(8192, 28672, 80, 64, 8, 128256, 8.0, false), 5 * kGB},
      {"llama-3.2-1b", llama3_shape(2048, 8192, 16, 32, 8, 128256, 32.0, true), 5 * kGB},
      // Small enough for CI; the shard limit makes it sharded so that path is always exercised.
      {"tiny", tiny_shape(), 2'000'000},
  };
  return presets;
}

Expected<SynthPreset> find_synth_preset(const std::string& name) {
  std::string known;
  for (const auto& p : synth_presets()) {
    if (p.name == name) return p;
    known += (known.empty() ? "" : ", ") + p.name;
  }
  return Status::error("unknown synth config '" + name + "' (known: " + known + ")");
}

std::string llama_config_json(const LlamaConfig& c) {
  ordered_json j = {{"architectures", {"LlamaForCausalLM"}},
                    {"model_type", "llama"},
                    {"attention_bias", c.attention_bias},
                    {"attention_dropout", 0.0},
                    {"bos_token_id", ids_json(c.bos_token_ids)},
                    {"eos_token_id", ids_json(c.eos_token_ids)},
                    {"head_dim", c.head_dim},
                    {"hidden_act", "silu"},
                    {"hidden_size", c.hidden_size},
                    {"initializer_range", 0.02},
                    {"intermediate_size", c.intermediate_size},
                    {"max_position_embeddings", c.max_position_embeddings},
                    {"mlp_bias", c.mlp_bias},
                    {"num_attention_heads", c.num_attention_heads},
                    {"num_hidden_layers", c.num_hidden_layers},
                    {"num_key_value_heads", c.num_key_value_heads},
                    {"rms_norm_eps", c.rms_norm_eps}};
  if (c.rope_scaling) {
    j["rope_scaling"] = {{"factor", c.rope_scaling->factor},
                         {"high_freq_factor", c.rope_scaling->high_freq_factor},
                         {"low_freq_factor", c.rope_scaling->low_freq_factor},
                         {"original_max_position_embeddings", c.rope_scaling->original_max_position_embeddings},
                         {"rope_type", c.rope_scaling->type}};
  } else {
    j["rope_scaling"] = nullptr;
  }
  j["rope_theta"] = c.rope_theta;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["torch_dtype"] = c.torch_dtype;
  j["use_cache"] = true;
  j["vocab_size"] = c.vocab_size;
  return j.dump(2) + "\n";
}

Status write_synthetic_checkpoint(const SynthPreset& preset, const SynthOptions& options,
                                  const std::string& dir) {
  if (options.num_layers < 0)
    return Status::error("synth: the layer count must be positive, not " + std::to_string(options.num_layers));
  LlamaConfig c = preset.config;
  if (options.num_layers > 0) c.num_hidden_layers = options.num_layers;
  LLMQ_RETURN_IF_ERROR(write_text(dir + "/config.json", llama_config_json(c)));
  ordered_json gen = {{"bos_token_id", ids_json(c.bos_token_ids)},
                      {"eos_token_id", ids_json(c.eos_token_ids)},
                      {"do_sample", false}};
  LLMQ_RETURN_IF_ERROR(write_text(dir + "/generation_config.json", gen.dump(2) + "\n"));
  if (options.tokenizer_from.empty()) {
    LLMQ_RETURN_IF_ERROR(write_byte_level_tokenizer(c, dir));
  } else {
    LLMQ_RETURN_IF_ERROR(copy_tokenizer_files(options.tokenizer_from, dir));
  }

  // Tensors in HF state-dict order, one at a time, so memory stays at one shard.
  ShardedCheckpointWriter writer(dir, preset.max_shard_bytes);
  const double sd = options.weight_std;
  auto add_random = [&](const std::string& name, const Shape& shape) {
    return writer.add(name, random_bf16(shape, options.seed, name, sd));
  };
  const int64_t H = c.hidden_size, I = c.intermediate_size;
  LLMQ_RETURN_IF_ERROR(add_random("model.embed_tokens.weight", {c.vocab_size, H}));
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    LLMQ_RETURN_IF_ERROR(writer.add(layer_tensor_name(l, "input_layernorm.weight"), ones_bf16(H)));
    LLMQ_RETURN_IF_ERROR(add_random(layer_tensor_name(l, "self_attn.q_proj.weight"), {c.q_dim(), H}));
    LLMQ_RETURN_IF_ERROR(add_random(layer_tensor_name(l, "self_attn.k_proj.weight"), {c.kv_dim(), H}));
    LLMQ_RETURN_IF_ERROR(add_random(layer_tensor_name(l, "self_attn.v_proj.weight"), {c.kv_dim(), H}));
    LLMQ_RETURN_IF_ERROR(add_random(layer_tensor_name(l, "self_attn.o_proj.weight"), {H, c.q_dim()}));
    LLMQ_RETURN_IF_ERROR(writer.add(layer_tensor_name(l, "post_attention_layernorm.weight"), ones_bf16(H)));
    LLMQ_RETURN_IF_ERROR(add_random(layer_tensor_name(l, "mlp.gate_proj.weight"), {I, H}));
    LLMQ_RETURN_IF_ERROR(add_random(layer_tensor_name(l, "mlp.up_proj.weight"), {I, H}));
    LLMQ_RETURN_IF_ERROR(add_random(layer_tensor_name(l, "mlp.down_proj.weight"), {H, I}));
  }
  LLMQ_RETURN_IF_ERROR(writer.add("model.norm.weight", ones_bf16(H)));
  if (!c.tie_word_embeddings) LLMQ_RETURN_IF_ERROR(add_random("lm_head.weight", {c.vocab_size, H}));
  return writer.finish();
}

}  // namespace llmq
