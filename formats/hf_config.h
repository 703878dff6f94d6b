// config.json of a Hugging Face Llama checkpoint -> LlamaConfig.
// Required: hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
// vocab_size. Defaults follow transformers' LlamaConfig: num_key_value_heads = heads,
// head_dim = hidden/heads, rms_norm_eps 1e-6, rope_theta 10000, max_position_embeddings 2048,
// tie_word_embeddings false. rope_scaling: null, or {"rope_type"|"type": "llama3", factor,
// low_freq_factor, high_freq_factor, original_max_position_embeddings}; "linear" and
// "dynamic" are refused with a clear message (not Llama-3 checkpoints; not needed yet).
// Contradictions (heads not dividing hidden without head_dim, kv heads not dividing heads,
// non-positive sizes, hidden_act other than silu) are errors naming config.json and the key.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"

namespace llmq {

struct RopeScaling {
  std::string type;  // "llama3"
  double factor = 8.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

struct LlamaConfig {
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;
  int64_t vocab_size = 0;
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  std::optional<RopeScaling> rope_scaling;
  bool tie_word_embeddings = false;
  bool attention_bias = false;
  bool mlp_bias = false;
  std::vector<int64_t> bos_token_ids;
  std::vector<int64_t> eos_token_ids;  // config's eos_token_id, int or list
  std::string torch_dtype = "bfloat16";  // "torch_dtype" or transformers v5 "dtype"

  int64_t q_dim() const { return num_attention_heads * head_dim; }
  int64_t kv_dim() const { return num_key_value_heads * head_dim; }
};

// `origin` names the file in error messages.
Expected<LlamaConfig> parse_llama_config(const std::string& json_text, const std::string& origin);
Expected<LlamaConfig> load_llama_config(const std::string& config_json_path);

}  // namespace llmq
