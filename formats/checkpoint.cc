// HF Llama checkpoint directory: config + tensors, tied-embedding resolution, shape checks.
#include "formats/checkpoint.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <vector>

namespace llmq {
namespace {

namespace fs = std::filesystem;

constexpr const char* kEmbed = "model.embed_tokens.weight";
constexpr const char* kLmHead = "lm_head.weight";

std::string quote(const std::string& s) { return "'" + s + "'"; }

// A name the checkpoint stores, or an alias declared in some file's __metadata__ (transformers
// writes {"model.embed_tokens.weight": "lm_head.weight"} when it drops a tied duplicate).
std::string resolve_alias(const CheckpointTensors& t, const std::string& name) {
  if (t.contains(name)) return name;
  for (const auto& f : t.files()) {
    const auto it = f.metadata().find(name);
    if (it != f.metadata().end() && t.contains(it->second)) return it->second;
  }
  return "";
}

struct Required {
  std::string name;
  Shape shape;
  bool linear = false;  // a linear's weight: may be stored quantized in a quantized checkpoint
};

std::vector<Required> required_tensors(const LlamaConfig& c) {
  const int64_t h = c.hidden_size, q = c.q_dim(), kv = c.kv_dim(), inter = c.intermediate_size;
  std::vector<Required> r;
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    r.push_back({layer_tensor_name(i, "input_layernorm.weight"), {h}});
    r.push_back({layer_tensor_name(i, "self_attn.q_proj.weight"), {q, h}, true});
    r.push_back({layer_tensor_name(i, "self_attn.k_proj.weight"), {kv, h}, true});
    r.push_back({layer_tensor_name(i, "self_attn.v_proj.weight"), {kv, h}, true});
    r.push_back({layer_tensor_name(i, "self_attn.o_proj.weight"), {h, q}, true});
    if (c.attention_bias) {
      r.push_back({layer_tensor_name(i, "self_attn.q_proj.bias"), {q}});
      r.push_back({layer_tensor_name(i, "self_attn.k_proj.bias"), {kv}});
      r.push_back({layer_tensor_name(i, "self_attn.v_proj.bias"), {kv}});
      r.push_back({layer_tensor_name(i, "self_attn.o_proj.bias"), {h}});
    }
    r.push_back({layer_tensor_name(i, "post_attention_layernorm.weight"), {h}});
    r.push_back({layer_tensor_name(i, "mlp.gate_proj.weight"), {inter, h}, true});
    r.push_back({layer_tensor_name(i, "mlp.up_proj.weight"), {inter, h}, true});
    r.push_back({layer_tensor_name(i, "mlp.down_proj.weight"), {h, inter}, true});
    if (c.mlp_bias) {
      r.push_back({layer_tensor_name(i, "mlp.gate_proj.bias"), {inter}});
      r.push_back({layer_tensor_name(i, "mlp.up_proj.bias"), {inter}});
      r.push_back({layer_tensor_name(i, "mlp.down_proj.bias"), {h}});
    }
  }
  r.push_back({"model.norm.weight", {h}});
  return r;
}

// config.json's quantization_config, when there is one.
Expected<std::optional<QuantConfigInfo>> read_quantization(const std::string& dir) {
  const std::string path = (fs::path(dir) / "config.json").string();
  std::ifstream in(path);
  nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return Status::error(path + ": not a JSON object");
  if (!j.contains("quantization_config") && !j.contains("compression_config")) return std::optional<QuantConfigInfo>();
  LLMQ_ASSIGN_OR_RETURN(QuantConfigInfo info, parse_quantization_config(j, path));
  return std::optional<QuantConfigInfo>(std::move(info));
}

bool is_checkpoint_float(DType t) { return t == DType::kBF16 || t == DType::kF16 || t == DType::kF32; }

// Checks a stored tensor's shape and dtype; `name` is the stored name.
Status check_entry(const CheckpointTensors& t, const std::string& name, const Shape& expected) {
  const SafetensorsEntry* e = t.find(name);
  if (!e) return Status::error(t.file_of(name) + ": missing tensor " + quote(name));
  if (e->shape != expected)
    return Status::error(t.file_of(name) + ": tensor " + quote(name) + " has shape " + shape_str(e->shape) +
                         ", expected " + shape_str(expected) + " from config.json");
  if (!is_checkpoint_float(e->dtype))
    return Status::error(t.file_of(name) + ": tensor " + quote(name) + " has dtype " +
                         std::string(dtype_name(e->dtype)) + ", expected BF16, F16 or F32");
  return Status::ok();
}

}  // namespace

std::string layer_tensor_name(int64_t layer, const std::string& suffix) {
  return "model.layers." + std::to_string(layer) + "." + suffix;
}

Expected<HfCheckpoint> HfCheckpoint::open(const std::string& dir) {
  HfCheckpoint ck;
  ck.dir_ = dir;
  LLMQ_ASSIGN_OR_RETURN(ck.config_, load_llama_config((fs::path(dir) / "config.json").string()));
  LLMQ_ASSIGN_OR_RETURN(ck.tensors_, CheckpointTensors::open(dir));
  const LlamaConfig& c = ck.config_;

  // Embedding and head: stored under their own name, under an alias, or (tied) under the other.
  ck.embed_name_ = resolve_alias(ck.tensors_, kEmbed);
  ck.lm_head_name_ = resolve_alias(ck.tensors_, kLmHead);
  if (c.tie_word_embeddings) {
    if (ck.embed_name_.empty()) ck.embed_name_ = ck.lm_head_name_;
    if (ck.lm_head_name_.empty()) ck.lm_head_name_ = ck.embed_name_;
  }
  if (ck.embed_name_.empty())
    return Status::error(dir + ": missing tensor " + quote(kEmbed) +
                         (c.tie_word_embeddings ? std::string(" (and no lm_head.weight to tie it to)") : std::string()));
  if (ck.lm_head_name_.empty())
    return Status::error(dir + ": missing tensor " + quote(kLmHead) +
                         " and config.json has tie_word_embeddings false");
  const Shape vh = {c.vocab_size, c.hidden_size};
  LLMQ_RETURN_IF_ERROR(check_entry(ck.tensors_, ck.embed_name_, vh));
  LLMQ_RETURN_IF_ERROR(check_entry(ck.tensors_, ck.lm_head_name_, vh));
  LLMQ_ASSIGN_OR_RETURN(ck.quantization_, read_quantization(dir));
  for (const Required& r : required_tensors(c)) {
    if (r.linear && ck.is_quantized_linear(r.name.substr(0, r.name.size() - std::string(".weight").size())))
      continue;  // checked by unpack_quantized_linear when the layer is loaded
    LLMQ_RETURN_IF_ERROR(check_entry(ck.tensors_, r.name, r.shape));
  }
  return ck;
}

bool HfCheckpoint::is_quantized_linear(const std::string& prefix) const {
  if (!quantization_) return false;
  const SafetensorsEntry* w = tensors_.find(prefix + ".weight");
  return w == nullptr || !is_checkpoint_float(w->dtype);
}

Expected<TensorView> HfCheckpoint::embed_tokens() const { return tensors_.view(embed_name_); }

Expected<TensorView> HfCheckpoint::lm_head() const { return tensors_.view(lm_head_name_); }

std::string HfCheckpoint::stored_name(const std::string& name) const {
  if (name == kEmbed) return embed_name_;
  if (name == kLmHead) return lm_head_name_;
  return name;
}

Expected<TensorView> HfCheckpoint::tensor(const std::string& name, const Shape& expected) const {
  const std::string stored = stored_name(name);
  const SafetensorsEntry* e = tensors_.find(stored);
  if (!e) return Status::error(tensors_.file_of(stored) + ": missing tensor " + quote(name));
  if (e->shape != expected)
    return Status::error(tensors_.file_of(stored) + ": tensor " + quote(stored) + " has shape " +
                         shape_str(e->shape) + ", expected " + shape_str(expected));
  return tensors_.view(stored);
}

namespace {

// Index of the first NaN/Inf of p[0..n), or -1. A NaN/Inf weight would poison every statistic
// and quantizer downstream, so the loaders refuse it naming the element.
int64_t first_non_finite(const float* p, int64_t n) {
  int64_t first = n;
#pragma omp parallel for schedule(static) reduction(min : first) if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(p[i]) && i < first) first = i;
  return first < n ? first : -1;
}

}  // namespace

Expected<TensorView> HfCheckpoint::float_view(const std::string& name, const Shape& expected) const {
  LLMQ_ASSIGN_OR_RETURN(const TensorView v, tensor(name, expected));
  const std::string where = tensors_.file_of(stored_name(name)) + ": tensor " + quote(name);
  if (!dtype_is_float(v.dtype))
    return Status::error(where + " has dtype " + std::string(dtype_name(v.dtype)) + ", not a float dtype");
  // Checked in row chunks, so a large table costs no float32 copy of itself.
  const int64_t n = v.numel();
  const int64_t cols = v.shape.empty() ? 1 : std::max<int64_t>(1, v.shape.back());
  const int64_t chunk_rows = std::max<int64_t>(1, (int64_t{1} << 20) / cols);
  const size_t row_bytes = static_cast<size_t>(dtype_nbytes(v.dtype, cols));
  for (int64_t r0 = 0; r0 * cols < n; r0 += chunk_rows) {
    const int64_t rows = std::min(chunk_rows, n / cols - r0);
    const Tensor f = to_f32(TensorView(v.dtype, {rows, cols}, static_cast<uint8_t*>(v.data) + r0 * row_bytes));
    const int64_t bad = first_non_finite(f.data<float>(), f.numel());
    if (bad >= 0)
      return Status::error(where + " holds " + (std::isnan(f.data<float>()[bad]) ? "NaN" : "Inf") + " at element " +
                           std::to_string(r0 * cols + bad));
  }
  return v;
}

Expected<Tensor> HfCheckpoint::load_f32(const std::string& name, const Shape& expected) const {
  LLMQ_ASSIGN_OR_RETURN(const TensorView v, tensor(name, expected));
  if (!dtype_is_float(v.dtype))
    return Status::error(tensors_.file_of(stored_name(name)) + ": tensor " + quote(name) + " has dtype " +
                         std::string(dtype_name(v.dtype)) + ", not a float dtype");
  Tensor t = to_f32(v);
  release_mapped_pages(v.data, static_cast<size_t>(v.nbytes()));  // read once: keep resident memory one layer
  const int64_t bad = first_non_finite(t.data<float>(), t.numel());
  if (bad >= 0)
    return Status::error(tensors_.file_of(stored_name(name)) + ": tensor " + quote(name) + " holds " +
                         (std::isnan(t.data<float>()[bad]) ? "NaN" : "Inf") + " at element " + std::to_string(bad));
  return t;
}

}  // namespace llmq
