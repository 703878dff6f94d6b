// The quantization methods `llmq quantize --method` offers, in one table: what each needs
// (calibration), what it produces (scheme) and which formats can hold it. The CLI's --help,
// option validation and the pipeline all read this table.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "formats/quant_formats.h"

namespace llmq {

enum class QuantMethod : uint8_t { kFp8, kInt8Sq, kAwq, kGptq, kRtnInt4, kRtnInt8 };

struct MethodInfo {
  QuantMethod method;
  std::string_view name;     // the --method spelling
  std::string_view summary;  // one line for --help
  bool needs_calibration;    // needs activation statistics or samples
  std::vector<QuantFormat> formats;  // allowed output formats, the default first
};

const std::vector<MethodInfo>& all_methods();
const MethodInfo& method_info(QuantMethod m);
Expected<QuantMethod> parse_method(const std::string& name);  // error lists the valid names

// --format spelling: "compressed-tensors", "awq", "gptq" (the scheme decides the CT variant).
std::string_view format_option_name(QuantFormat f);
// Resolves --format for a method ("" = the method's default); error when the method cannot be
// written in that format.
Expected<QuantFormat> resolve_format(const MethodInfo& method, const std::string& format_option);

// True for 4-bit weight-only methods (group-wise INT4).
bool is_int4_method(QuantMethod m);

}  // namespace llmq
