// Packing QuantizedLinear (quantizers/quantized_linear.h) into the on-disk tensors and
// config.json `quantization_config` of each output format, and unpacking them back
// (formats.md sections A-D; every byte as specified there):
//
//   format                     scheme        tensors per linear "<p>" (dtypes, shapes)
//   kCtFloat (float-quantized) kFp8Channel   <p>.weight F8_E4M3 [out,in], <p>.weight_scale BF16 [out,1]
//   kCtInt   (int-quantized)   kInt8Channel  <p>.weight I8 [out,in], <p>.weight_scale BF16 [out,1]
//   kCtPack  (pack-quantized)  kInt4Group    <p>.weight_packed I32 [out,in/8], <p>.weight_scale BF16 [out,G],
//                                            <p>.weight_shape I64 [2], asym: <p>.weight_zero_point I32 [out/8,G],
//                                            act-order: <p>.weight_g_idx I32 [in]
//   kAwqGemm                   kInt4Group    <p>.qweight I32 [in,out/8] (AWQ interleave), <p>.qzeros I32 [G,out/8],
//                                            <p>.scales F16 [G,out]
//   kGptqV1                    kInt4Group    <p>.qweight I32 [in/8,out], <p>.qzeros I32 [G,out/8] (zero-1),
//                                            <p>.scales F16 [G,out], <p>.g_idx I32 [in]
// Non-quantized tensors are written in the format's model dtype: BF16 for compressed-tensors,
// F16 for AWQ and GPTQ (formats.md 1.2).
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"
#include "formats/safetensors.h"
#include "quantizers/quantized_linear.h"

namespace llmq {

enum class QuantFormat : uint8_t { kCtFloat, kCtInt, kCtPack, kAwqGemm, kGptqV1 };

std::string_view quant_format_name(QuantFormat f);  // "compressed-tensors/float-quantized", "awq", "gptq"
DType format_model_dtype(QuantFormat f);             // BF16 or F16
DType format_scale_dtype(QuantFormat f);             // BF16 or F16

struct NamedTensor {
  std::string name;
  Tensor tensor;
};

// Settings recorded in quantization_config that are not visible in a single linear.
struct QuantConfigInfo {
  QuantFormat format = QuantFormat::kCtFloat;
  int64_t group_size = 128;
  bool symmetric = true;
  bool act_order = false;     // GPTQ desc_act / CT actorder "group"
  double damp_percent = 0.01;  // GPTQ
  bool static_activations = false;  // INT8: per-tensor static input scales (else dynamic per token)
  std::vector<std::string> ignore = {"lm_head"};  // module names left unquantized
};

// The tensors of one quantized linear at prefix p ("model.layers.0.self_attn.q_proj").
// Fails (Status) when the linear cannot be expressed in the format (e.g. GPTQ v1 with a zero
// point of 0, widths not multiples of 8, scheme/format mismatch).
Expected<std::vector<NamedTensor>> pack_quantized_linear(const std::string& prefix, const QuantizedLinear& q,
                                                         QuantFormat format);

// config.json["quantization_config"], exactly as formats.md gives it for the format.
nlohmann::ordered_json quantization_config_json(const QuantConfigInfo& info);
// Extra files some loaders look for (quantize_config.json for GPTQ, quant_config.json for AWQ);
// empty when the format has none.
std::vector<std::pair<std::string, std::string>> extra_config_files(const QuantConfigInfo& info);

// Reads quantization_config from a config.json text; nullopt-like error when absent or of a
// kind llmq does not read. The origin names the file in messages.
Expected<QuantConfigInfo> parse_quantization_config(const nlohmann::json& config_json, const std::string& origin);

// Unpacks the linear at prefix from a checkpoint into QuantizedLinear (validated: shapes,
// dtypes, code ranges, scales). out/in are the expected logical shape from config.json.
Expected<QuantizedLinear> unpack_quantized_linear(const CheckpointTensors& tensors, const std::string& prefix,
                                                  const QuantConfigInfo& info, int64_t out, int64_t in);

}  // namespace llmq
