// config.json -> LlamaConfig; rules and defaults in hf_config.h.
#include "formats/hf_config.h"

#include <fstream>
#include <limits>
#include <sstream>

#include <nlohmann/json.hpp>

namespace llmq {
namespace {

using Json = nlohmann::json;

// Sizes above this are refused, so products such as heads * head_dim cannot overflow int64.
constexpr int64_t kMaxSize = std::numeric_limits<int32_t>::max();

class ConfigReader {
 public:
  ConfigReader(const Json& j, std::string origin) : j_(j), origin_(std::move(origin)) {}

  Status error(const std::string& key, const std::string& problem) const {
    return Status::error(origin_ + ": \"" + key + "\" " + problem);
  }
  // Absent and null both mean "use the default", as in transformers.
  const Json* get(const Json& obj, const std::string& key) const {
    const auto it = obj.find(key);
    return it == obj.end() || it->is_null() ? nullptr : &*it;
  }

  Status integer(const Json& obj, const std::string& key, const std::string& label, bool required,
                 int64_t* out) const {
    const Json* v = get(obj, key);
    if (!v) return required ? error(label, "is missing") : Status::ok();
    if (!v->is_number_integer()) return error(label, "must be an integer, got " + v->dump());
    if (v->is_number_unsigned() && v->get<uint64_t>() > static_cast<uint64_t>(kMaxSize))
      return error(label, "is implausibly large: " + v->dump());
    *out = v->get<int64_t>();
    return Status::ok();
  }
  // A required or defaulted size that must be in [1, kMaxSize].
  Status size(const std::string& key, bool required, int64_t* out) const {
    LLMQ_RETURN_IF_ERROR(integer(j_, key, key, required, out));
    if (*out <= 0) return error(key, "must be positive, got " + std::to_string(*out));
    if (*out > kMaxSize) return error(key, "is implausibly large: " + std::to_string(*out));
    return Status::ok();
  }
  Status number(const Json& obj, const std::string& key, const std::string& label, bool required,
                double* out) const {
    const Json* v = get(obj, key);
    if (!v) return required ? error(label, "is missing") : Status::ok();
    if (!v->is_number()) return error(label, "must be a number, got " + v->dump());
    *out = v->get<double>();
    return Status::ok();
  }
  Status boolean(const std::string& key, bool* out) const {
    const Json* v = get(j_, key);
    if (!v) return Status::ok();
    if (!v->is_boolean()) return error(key, "must be true or false, got " + v->dump());
    *out = v->get<bool>();
    return Status::ok();
  }
  // bos/eos ids: an int, a list of ints, or absent/null (empty).
  Status token_ids(const std::string& key, std::vector<int64_t>* out) const {
    out->clear();
    const Json* v = get(j_, key);
    if (!v) return Status::ok();
    if (v->is_number_integer() && v->get<int64_t>() >= 0) {
      out->push_back(v->get<int64_t>());
      return Status::ok();
    }
    if (v->is_array()) {
      for (const Json& id : *v) {
        if (!id.is_number_integer() || id.get<int64_t>() < 0)
          return error(key, "must be a token id or a list of token ids, got " + v->dump());
        out->push_back(id.get<int64_t>());
      }
      return Status::ok();
    }
    return error(key, "must be a token id or a list of token ids, got " + v->dump());
  }

  // rope_scaling (transformers 4.x) or rope_parameters (v5, also carries rope_theta).
  Status rope(const std::string& key, LlamaConfig* c) const {
    const Json* v = get(j_, key);
    if (!v) return Status::ok();
    if (!v->is_object()) return error(key, "must be an object or null, got " + v->dump());
    if (key == "rope_parameters") LLMQ_RETURN_IF_ERROR(number(*v, "rope_theta", key + ".rope_theta", false, &c->rope_theta));
    const Json* type = get(*v, "rope_type");
    std::string type_key = key + ".rope_type";
    if (!type) {
      type = get(*v, "type");
      type_key = key + ".type";
    }
    if (!type) return error(key, "has no \"rope_type\"");
    if (!type->is_string()) return error(type_key, "must be a string, got " + type->dump());
    const std::string t = type->get<std::string>();
    if (t == "default") return Status::ok();  // v5 spelling of "no scaling"
    if (t != "llama3") return error(type_key, "'" + t + "' is not supported (only llama3 scaling)");
    RopeScaling r;
    r.type = t;
    LLMQ_RETURN_IF_ERROR(number(*v, "factor", key + ".factor", true, &r.factor));
    LLMQ_RETURN_IF_ERROR(number(*v, "low_freq_factor", key + ".low_freq_factor", true, &r.low_freq_factor));
    LLMQ_RETURN_IF_ERROR(number(*v, "high_freq_factor", key + ".high_freq_factor", true, &r.high_freq_factor));
    LLMQ_RETURN_IF_ERROR(integer(*v, "original_max_position_embeddings", key + ".original_max_position_embeddings",
                                 true, &r.original_max_position_embeddings));
    if (!(r.factor > 0) || !(r.low_freq_factor > 0) || !(r.high_freq_factor > r.low_freq_factor) ||
        r.original_max_position_embeddings <= 0)
      return error(key, "has inconsistent llama3 parameters " + v->dump());
    c->rope_scaling = r;
    return Status::ok();
  }

 private:
  const Json& j_;
  std::string origin_;
};

}  // namespace

Expected<LlamaConfig> parse_llama_config(const std::string& json_text, const std::string& origin) {
  Json j;
  try {
    j = Json::parse(json_text);
  } catch (const Json::exception& e) {
    return Status::error(origin + ": invalid JSON: " + e.what());
  }
  if (!j.is_object()) return Status::error(origin + ": not a JSON object");
  const ConfigReader r(j, origin);
  LlamaConfig c;
  LLMQ_RETURN_IF_ERROR(r.size("hidden_size", true, &c.hidden_size));
  LLMQ_RETURN_IF_ERROR(r.size("intermediate_size", true, &c.intermediate_size));
  LLMQ_RETURN_IF_ERROR(r.size("num_hidden_layers", true, &c.num_hidden_layers));
  LLMQ_RETURN_IF_ERROR(r.size("num_attention_heads", true, &c.num_attention_heads));
  LLMQ_RETURN_IF_ERROR(r.size("vocab_size", true, &c.vocab_size));
  c.num_key_value_heads = c.num_attention_heads;
  LLMQ_RETURN_IF_ERROR(r.size("num_key_value_heads", false, &c.num_key_value_heads));
  if (r.get(j, "head_dim")) {
    LLMQ_RETURN_IF_ERROR(r.size("head_dim", false, &c.head_dim));
  } else {
    if (c.hidden_size % c.num_attention_heads != 0)
      return r.error("num_attention_heads", "(" + std::to_string(c.num_attention_heads) +
                                                ") does not divide hidden_size (" + std::to_string(c.hidden_size) +
                                                ") and there is no head_dim");
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    return r.error("num_key_value_heads", "(" + std::to_string(c.num_key_value_heads) +
                                              ") does not divide num_attention_heads (" +
                                              std::to_string(c.num_attention_heads) + ")");
  LLMQ_RETURN_IF_ERROR(r.size("max_position_embeddings", false, &c.max_position_embeddings));
  LLMQ_RETURN_IF_ERROR(r.number(j, "rms_norm_eps", "rms_norm_eps", false, &c.rms_norm_eps));
  if (!(c.rms_norm_eps > 0)) return r.error("rms_norm_eps", "must be positive");
  LLMQ_RETURN_IF_ERROR(r.number(j, "rope_theta", "rope_theta", false, &c.rope_theta));
  LLMQ_RETURN_IF_ERROR(r.rope("rope_scaling", &c));
  LLMQ_RETURN_IF_ERROR(r.rope("rope_parameters", &c));
  if (!(c.rope_theta > 0)) return r.error("rope_theta", "must be positive");
  LLMQ_RETURN_IF_ERROR(r.boolean("tie_word_embeddings", &c.tie_word_embeddings));
  LLMQ_RETURN_IF_ERROR(r.boolean("attention_bias", &c.attention_bias));
  LLMQ_RETURN_IF_ERROR(r.boolean("mlp_bias", &c.mlp_bias));
  LLMQ_RETURN_IF_ERROR(r.token_ids("bos_token_id", &c.bos_token_ids));
  LLMQ_RETURN_IF_ERROR(r.token_ids("eos_token_id", &c.eos_token_ids));
  if (const Json* act = r.get(j, "hidden_act")) {
    if (!act->is_string() || act->get<std::string>() != "silu")
      return r.error("hidden_act", "must be \"silu\" for Llama, got " + act->dump());
  }
  for (const char* key : {"torch_dtype", "dtype"}) {
    if (const Json* dt = r.get(j, key)) {
      if (!dt->is_string()) return r.error(key, "must be a string, got " + dt->dump());
      c.torch_dtype = dt->get<std::string>();
      break;
    }
  }
  return c;
}

Expected<LlamaConfig> load_llama_config(const std::string& config_json_path) {
  std::ifstream in(config_json_path, std::ios::binary);
  if (!in) return Status::error(config_json_path + ": cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return Status::error(config_json_path + ": read failed");
  return parse_llama_config(ss.str(), config_json_path);
}

}  // namespace llmq
