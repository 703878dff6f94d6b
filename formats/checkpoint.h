// A Hugging Face Llama checkpoint directory: config.json, safetensors (sharded or not),
// tokenizer and generation files. Resolves tensor names (tied embeddings: a checkpoint may
// store only model.embed_tokens.weight, only lm_head.weight — tinystories-656k — or both)
// and checks every tensor the model needs against the config's shapes, so a wrong file
// fails at open with the tensor, file and shapes named.
#pragma once

#include <optional>
#include <string>

#include "core/status.h"
#include "core/tensor.h"
#include "formats/hf_config.h"
#include "formats/quant_formats.h"
#include "formats/safetensors.h"

namespace llmq {

// HF names for layer i's tensors.
std::string layer_tensor_name(int64_t layer, const std::string& suffix);  // "model.layers.3." + suffix

class HfCheckpoint {
 public:
  // Validates config and that every required tensor exists with the expected shape and a
  // float dtype (BF16/F16/F32). In a quantized checkpoint (config.json has a
  // quantization_config llmq reads) a linear may instead be stored quantized: its tensors are
  // validated when the linear is unpacked (unpack_quantized_linear).
  static Expected<HfCheckpoint> open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  const LlamaConfig& config() const { return config_; }
  const CheckpointTensors& tensors() const { return tensors_; }
  // config.json's quantization_config; empty for a float checkpoint.
  const std::optional<QuantConfigInfo>& quantization() const { return quantization_; }
  // True when the linear at prefix ("model.layers.0.mlp.up_proj") is stored quantized, i.e. the
  // checkpoint is quantized and has no float "<prefix>.weight".
  bool is_quantized_linear(const std::string& prefix) const;

  // The input embedding / output head, honouring tied embeddings.
  Expected<TensorView> embed_tokens() const;
  Expected<TensorView> lm_head() const;
  // Any tensor by full name, checked to have `expected` shape.
  Expected<TensorView> tensor(const std::string& name, const Shape& expected) const;
  // Loads a float tensor as float32 (BF16/F16/F32/F8 upcast exactly).
  Expected<Tensor> load_f32(const std::string& name, const Shape& expected) const;
  // The same checks (a float dtype, every value finite) on the stored tensor, without a copy.
  Expected<TensorView> float_view(const std::string& name, const Shape& expected) const;

 private:
  // The stored name behind a requested one (tied / aliased embeddings), else the name itself.
  std::string stored_name(const std::string& name) const;

  std::string dir_;
  LlamaConfig config_;
  CheckpointTensors tensors_;
  std::optional<QuantConfigInfo> quantization_;
  std::string embed_name_;    // stored tensor that serves as model.embed_tokens.weight
  std::string lm_head_name_;  // stored tensor that serves as lm_head.weight
};

}  // namespace llmq
