#include "pipeline/method.h"

namespace llmq {

const std::vector<MethodInfo>& all_methods() {
  static const std::vector<MethodInfo> methods = {
      {QuantMethod::kFp8, "fp8", "FP8 E4M3 per-channel weights, dynamic per-token FP8 activations (W8A8); no calibration",
       false, {QuantFormat::kCtFloat}},
      {QuantMethod::kInt8Sq, "int8-sq",
       "SmoothQuant (--alpha) folded into the norms, then INT8 per-channel weights, dynamic per-token INT8 "
       "activations (W8A8)",
       true, {QuantFormat::kCtInt}},
      {QuantMethod::kAwq, "awq", "AWQ INT4 (scale and clip search on calibration activations), AutoAWQ GEMM packing",
       true, {QuantFormat::kAwqGemm, QuantFormat::kCtPack}},
      {QuantMethod::kGptq, "gptq", "GPTQ INT4 (Hessian, Cholesky, lazy block updates; sequential by default)", true,
       {QuantFormat::kGptqV1, QuantFormat::kCtPack}},
      {QuantMethod::kRtnInt4, "rtn-int4", "round-to-nearest INT4 baseline (symmetric, GPTQ v1 layout by default)",
       false, {QuantFormat::kGptqV1, QuantFormat::kCtPack, QuantFormat::kAwqGemm}},
      {QuantMethod::kRtnInt8, "rtn-int8", "round-to-nearest INT8 per-channel W8A8 baseline (no smoothing)", false,
       {QuantFormat::kCtInt}},
  };
  return methods;
}

const MethodInfo& method_info(QuantMethod m) {
  for (const MethodInfo& info : all_methods())
    if (info.method == m) return info;
  return all_methods().front();  // unreachable: every enum value has a row
}

Expected<QuantMethod> parse_method(const std::string& name) {
  std::string names;
  for (const MethodInfo& info : all_methods()) {
    if (info.name == name) return info.method;
    names += (names.empty() ? "" : ", ") + std::string(info.name);
  }
  return Status::error("unknown method '" + name + "' (expected one of: " + names + ")");
}

std::string_view format_option_name(QuantFormat f) {
  switch (f) {
    case QuantFormat::kCtFloat:
    case QuantFormat::kCtInt:
    case QuantFormat::kCtPack: return "compressed-tensors";
    case QuantFormat::kAwqGemm: return "awq";
    case QuantFormat::kGptqV1: return "gptq";
  }
  return "?";
}

Expected<QuantFormat> resolve_format(const MethodInfo& method, const std::string& format_option) {
  if (format_option.empty()) return method.formats.front();
  std::string allowed;
  for (QuantFormat f : method.formats) {
    if (format_option_name(f) == format_option) return f;
    allowed += (allowed.empty() ? "" : ", ") + std::string(format_option_name(f));
  }
  return Status::error("--method " + std::string(method.name) + " cannot be written as --format " + format_option +
                       " (possible: " + allowed + ")");
}

bool is_int4_method(QuantMethod m) {
  return m == QuantMethod::kAwq || m == QuantMethod::kGptq || m == QuantMethod::kRtnInt4;
}

}  // namespace llmq
