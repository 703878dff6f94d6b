#include "pipeline/module_plan.h"

#include <regex>

namespace llmq {
namespace {

// Why a linear of this shape cannot be written as INT4 in the format ("" when it can).
std::string int4_misfit(int64_t out, int64_t in, QuantFormat format, int64_t group_size, bool symmetric) {
  if (in % group_size != 0)
    return "in_features " + std::to_string(in) + " is not a multiple of the group size " + std::to_string(group_size);
  const bool need_in8 = format == QuantFormat::kGptqV1 || format == QuantFormat::kCtPack;
  const bool need_out8 = format == QuantFormat::kAwqGemm || format == QuantFormat::kGptqV1 ||
                         (format == QuantFormat::kCtPack && !symmetric);
  if (need_in8 && in % 8 != 0)
    return "in_features " + std::to_string(in) + " is not a multiple of 8 (" + std::string(quant_format_name(format)) +
           " packs 8 codes per int32 along the input)";
  if (need_out8 && out % 8 != 0)
    return "out_features " + std::to_string(out) + " is not a multiple of 8 (" + std::string(quant_format_name(format)) +
           " packs 8 codes per int32 along the output)";
  return "";
}

// The slot groups vLLM fuses into one module.
constexpr LinearSlot kFusedGroups[][3] = {{LinearSlot::kQ, LinearSlot::kK, LinearSlot::kV},
                                          {LinearSlot::kGate, LinearSlot::kUp, LinearSlot::kUp}};

}  // namespace

std::string linear_module_name(int64_t layer, LinearSlot slot) {
  return layer_tensor_name(layer, std::string(linear_slot_name(slot)));
}

std::array<int64_t, 2> linear_shape(const LlamaConfig& c, LinearSlot slot) {
  const int64_t h = c.hidden_size, inter = c.intermediate_size;
  switch (slot) {
    case LinearSlot::kQ: return {c.q_dim(), h};
    case LinearSlot::kK:
    case LinearSlot::kV: return {c.kv_dim(), h};
    case LinearSlot::kO: return {h, c.q_dim()};
    case LinearSlot::kGate:
    case LinearSlot::kUp: return {inter, h};
    case LinearSlot::kDown: return {h, inter};
  }
  return {0, 0};
}

Expected<ModulePlan> plan_modules(const LlamaConfig& config, QuantMethod method, QuantFormat format,
                                  int64_t group_size, bool symmetric, const std::vector<std::string>& ignore_regexes) {
  std::vector<std::regex> patterns;
  for (const std::string& r : ignore_regexes) {
    try {
      patterns.emplace_back(r, std::regex::ECMAScript);
    } catch (const std::regex_error& e) {
      return Status::error("--ignore '" + r + "': invalid regular expression (" + e.what() + ")");
    }
  }
  const bool int4 = is_int4_method(method);
  if (int4 && group_size < 8)
    return Status::error("--group-size " + std::to_string(group_size) + ": must be at least 8");

  ModulePlan plan;
  plan.ignored.push_back("lm_head");
  plan.quantized.resize(static_cast<size_t>(config.num_hidden_layers));
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    for (int s = 0; s < kNumLinearSlots; ++s) {
      const LinearSlot slot = static_cast<LinearSlot>(s);
      const std::string name = linear_module_name(l, slot);
      bool ignored = false;
      for (const std::regex& p : patterns) ignored = ignored || std::regex_search(name, p);
      const auto [out, in] = linear_shape(config, slot);
      const std::string misfit = int4 ? int4_misfit(out, in, format, group_size, symmetric) : "";
      if (!misfit.empty() && !ignored)
        return Status::error(name + ": " + misfit + "; choose another --group-size or leave it unquantized with --ignore");
      if (!misfit.empty()) plan.warnings.push_back(name + " stays unquantized: " + misfit);
      plan.quantized[static_cast<size_t>(l)][static_cast<size_t>(s)] = !ignored;
      if (ignored) plan.ignored.push_back(name);
    }
    for (const auto& group : kFusedGroups) {
      const bool first = plan.quantizes(l, group[0]);
      for (LinearSlot s : group)
        if (plan.quantizes(l, s) != first)
          return Status::error("--ignore: " + linear_module_name(l, group[0]) + " and " + linear_module_name(l, s) +
                               " must be ignored together (vLLM loads them as one fused module)");
    }
  }
  return plan;
}

}  // namespace llmq
