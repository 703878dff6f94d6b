// llmq inspect: a checkpoint's shape, tensors and bytes by dtype, its quantization_config, and
// for a quantized checkpoint the loaders it is meant for and the compatibility traps of
// docs/formats.md found in it (each trap line names the section that explains it). Traps are
// reported, not refused: inspect also looks at checkpoints llmq did not write.
#include <cctype>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "formats/hf_config.h"
#include "formats/int4_packing.h"
#include "formats/safetensors.h"
#include "tools/commands.h"

namespace llmq::cli {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

std::string human_bytes(double b) {
  const char* units[] = {"B", "KB", "MB", "GB", "TB"};
  int u = 0;
  while (b >= 1000 && u < 4) {
    b /= 1000;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.2f %s", b, units[u]);
  return buf;
}

// ---- compatibility: what a checkpoint is meant for, and the traps in it ---------------------

struct CompatReport {
  std::vector<std::string> loaders;  // who is meant to load it
  std::vector<std::string> traps;    // what makes some loader refuse or misread it
  std::vector<std::string> notes;    // limits of a kernel, not of the file
};

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string str_or(const json& j, const char* key, const std::string& fallback) {
  return j.is_object() && j.contains(key) && j.at(key).is_string() ? j.at(key).get<std::string>() : fallback;
}
int64_t int_or(const json& j, const char* key, int64_t fallback) {
  return j.is_object() && j.contains(key) && j.at(key).is_number_integer() ? j.at(key).get<int64_t>() : fallback;
}
bool bool_or(const json& j, const char* key, bool fallback) {
  return j.is_object() && j.contains(key) && j.at(key).is_boolean() ? j.at(key).get<bool>() : fallback;
}

// Quantized linears by the tensor that holds their codes: prefix -> ".qweight" (AWQ, GPTQ),
// ".weight_packed" (compressed-tensors int4) or ".weight_scale" (compressed-tensors 8-bit,
// whose codes sit in ".weight" beside it).
std::map<std::string, std::string> quantized_prefixes(const CheckpointTensors& t) {
  std::map<std::string, std::string> out;
  for (const std::string& n : t.names())
    for (const char* suffix : {".qweight", ".weight_packed", ".weight_scale"})
      if (ends_with(n, suffix)) {
        std::string& slot = out[n.substr(0, n.size() - std::strlen(suffix))];
        if (slot.empty() || slot == ".weight_scale") slot = suffix;  // the packed codes win over the scale
      }
  return out;
}

// One 32-bit word of an I32 tensor (the mapped bytes need not be aligned).
uint32_t word_at(const TensorView& v, int64_t i) {
  uint32_t w;
  std::memcpy(&w, static_cast<const uint8_t*>(v.data) + 4 * i, 4);
  return w;
}

// vLLM fuses q/k/v and gate/up (formats.md 1.1): partners must all be quantized or none.
void check_fused_partners(const std::map<std::string, std::string>& quantized, int64_t layers, CompatReport& r) {
  const std::vector<std::vector<std::string>> fused = {{"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"},
                                                       {"mlp.gate_proj", "mlp.up_proj"}};
  for (int64_t i = 0; i < layers; ++i)
    for (const auto& group : fused) {
      std::string on, off;  // comma-separated module names
      for (const std::string& m : group) {
        const std::string name = "model.layers." + std::to_string(i) + "." + m;
        std::string& list = quantized.count(name) ? on : off;
        list += (list.empty() ? "" : ", ") + name;
      }
      if (!on.empty() && !off.empty())
        r.traps.push_back("fused partners differ: " + on + " quantized but " + off +
                          " not; vLLM fuses them and raises \"Found different quantization schemes\" (formats.md 1.1)");
    }
}

// Marlin's shape limits at tensor parallel 1 (formats.md 1.1): out % 64, in % 128, in % group.
void check_marlin_shapes(const std::map<std::string, std::string>& quantized, const CheckpointTensors& t,
                         const std::string& fmt, int64_t group, CompatReport& r) {
  int bad = 0;
  std::string first;
  for (const auto& [p, suffix] : quantized) {
    const SafetensorsEntry* e = t.find(p + suffix);
    if (!e || e->shape.size() != 2) continue;
    // Logical [out, in] from the packed shape of each format.
    const int64_t out = fmt == "awq" ? e->shape[1] * 8 : fmt == "gptq" ? e->shape[1] : e->shape[0];
    const int64_t in = fmt == "awq" ? e->shape[0] : fmt == "gptq" ? e->shape[0] * 8 : e->shape[1] * 8;
    if (out % 64 != 0 || in % 128 != 0 || (group > 0 && in % group != 0)) {
      if (first.empty()) first = p + " [" + std::to_string(out) + ", " + std::to_string(in) + "]";
      ++bad;
    }
  }
  if (bad > 0)
    r.notes.push_back(std::to_string(bad) + " int4 linear(s) outside Marlin's shapes (out % 64, in % 128), e.g. " + first +
                      ": vLLM falls back to a non-Marlin kernel or refuses (formats.md 1.1)");
}

void compressed_tensors_compat(const json& qc, const CheckpointTensors& t, int64_t layers, CompatReport& r) {
  const std::string format = str_or(qc, "format", "");
  const json groups = qc.contains("config_groups") ? qc.at("config_groups") : json();
  if (!groups.is_object() || groups.empty()) {
    r.traps.push_back("compressed-tensors config has no config_groups: nothing would be quantized");
    return;
  }
  bool has_g_idx_scheme = false;
  for (auto it = groups.begin(); it != groups.end(); ++it) {
    const std::string where = "config_groups." + it.key();
    const json& g = it.value();
    for (const char* args_key : {"weights", "input_activations", "output_activations"}) {
      if (!g.is_object() || !g.contains(args_key) || !g.at(args_key).is_object()) continue;
      const json& a = g.at(args_key);
      for (const char* k : {"scale_dtype", "zp_dtype"})
        if (a.contains(k))
          r.traps.push_back(where + "." + args_key + "." + k + ": compressed-tensors 0.11-0.12 reject the key "
                            "(extra=\"forbid\"; added in 0.13), even when null (formats.md 0.2.1)");
      if (a.contains("actorder") && !a.at("actorder").is_null() && str_or(a, "strategy", "") != "group")
        r.traps.push_back(where + "." + args_key + ".actorder is set with strategy \"" + str_or(a, "strategy", "") +
                          "\": compressed-tensors <= 0.10 only allow it with \"group\" (formats.md 0.2.2)");
    }
    if (!g.is_object() || !g.contains("weights") || !g.at("weights").is_object()) continue;
    const json& w = g.at("weights");
    const int64_t bits = int_or(w, "num_bits", 0);
    const std::string type = str_or(w, "type", "");
    const bool inputs = g.contains("input_activations") && g.at("input_activations").is_object();
    const std::string in_type = inputs ? str_or(g.at("input_activations"), "type", "") : "";
    if (str_or(w, "actorder", "") == "group") {
      has_g_idx_scheme = true;
      r.traps.push_back(where + ".weights.actorder \"group\": compressed-tensors removed it (PR #840, Aug 2026; "
                        "0.20.1 refuses the config), so transformers cannot load this checkpoint; GPTQ v1 with "
                        "desc_act true carries act-order instead (docs/compat/loaders.md)");
    }
    if (bits == 8 && type == "float" && inputs && in_type == "float") {
      r.loaders.push_back("vLLM / SGLang compressed-tensors CompressedTensorsW8A8Fp8 (SM89+; FP8 Marlin W8A16 on SM80-86)");
      if (format != "float-quantized" && format != "naive-quantized")
        r.traps.push_back("format \"" + format + "\" for FP8 W8A8: vLLM expects \"float-quantized\" or "
                          "\"naive-quantized\" (formats.md A.1)");
    } else if (bits == 8 && type == "int" && inputs && in_type == "int") {
      r.loaders.push_back("vLLM / SGLang compressed-tensors CompressedTensorsW8A8Int8 (SM75+, CUTLASS scaled_mm)");
      if (format != "int-quantized" && format != "naive-quantized")
        r.traps.push_back("format \"" + format + "\" for INT8 W8A8: vLLM expects \"int-quantized\" or "
                          "\"naive-quantized\" (formats.md D.1)");
    } else if ((bits == 4 || bits == 8) && type == "int" && !inputs) {
      const bool sym = bool_or(w, "symmetric", true);
      r.loaders.push_back(std::string("vLLM / SGLang compressed-tensors CompressedTensorsWNA16 (Marlin") +
                          (sym ? ")" : "; asymmetric needs a vLLM with uint4 zero points, old ones refuse it)"));
      if (!sym)
        r.notes.push_back("asymmetric pack-quantized: transformers 5.24 + compressed-tensors 0.20.1 fail to load it "
                          "(weight_zero_point allocated unpacked on the meta device; a loader bug, the packed layout "
                          "is compressed-tensors' own: docs/compat/loaders.md)");
      if (format != "pack-quantized")
        r.traps.push_back("format \"" + format + "\" for " + std::to_string(bits) +
                          "-bit weight-only: vLLM's WNA16 needs \"pack-quantized\" (formats.md C.5)");
      check_marlin_shapes(quantized_prefixes(t), t, "ct", int_or(w, "group_size", -1), r);
    } else {
      r.loaders.push_back("compressed-tensors scheme " + std::to_string(bits) + "-bit " + type +
                          " (not one of the schemes llmq writes; loaders not classified)");
    }
  }
  r.loaders.push_back("transformers + compressed-tensors (CompressedTensorsHfQuantizer)");

  // Tensors against the config: g_idx present exactly when actorder "group" ships it.
  const auto quantized = quantized_prefixes(t);
  int with_g = 0, packed = 0;
  for (const auto& [p, suffix] : quantized) {
    if (suffix != ".weight_packed") continue;
    ++packed;
    with_g += t.contains(p + ".weight_g_idx") ? 1 : 0;
  }
  if (has_g_idx_scheme && with_g < packed)
    r.traps.push_back("actorder \"group\" but " + std::to_string(packed - with_g) + " of " + std::to_string(packed) +
                      " packed linears have no weight_g_idx: loaders fail on the missing tensor (formats.md 0.2.2, C.5)");
  if (!has_g_idx_scheme && with_g > 0)
    r.traps.push_back(std::to_string(with_g) + " linears carry weight_g_idx but actorder is not \"group\": loaders "
                      "ignore the permutation and dequantize wrongly (formats.md 0.2.2)");
  // lm_head is a Linear: without an ignore entry transformers / compressed-tensors try to
  // quantize it (formats.md A.1).
  bool lm_head_ignored = false;
  if (qc.contains("ignore") && qc.at("ignore").is_array())
    for (const json& e : qc.at("ignore"))
      if (e.is_string() && (e.get<std::string>() == "lm_head" || e.get<std::string>().find("lm_head") != std::string::npos))
        lm_head_ignored = true;
  if (!lm_head_ignored && !quantized.count("lm_head"))
    r.traps.push_back("\"ignore\" does not list lm_head and lm_head is not stored quantized: transformers / "
                      "compressed-tensors would try to quantize it (formats.md A.1)");
  check_fused_partners(quantized, layers, r);
}

void awq_compat(const json& qc, const CheckpointTensors& t, int64_t layers, CompatReport& r) {
  const int64_t group = int_or(qc, "group_size", int_or(qc, "q_group_size", 0));
  const bool zero_point = bool_or(qc, "zero_point", false);
  const std::string version = str_or(qc, "version", "gemm");
  std::string v = version;
  for (char& ch : v) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  const bool marlin = zero_point && (group == -1 || group == 32 || group == 64 || group == 128);
  r.loaders.push_back(std::string("vLLM ") + (marlin ? "awq_marlin (CUDA; bits 4, zero_point) or awq (GEMM, fp16)"
                                                    : "awq (GEMM, fp16; not awq_marlin: needs zero_point true and "
                                                      "group -1/32/64/128)"));
  r.loaders.push_back("AutoAWQ WQLinear_GEMM");
  r.loaders.push_back("transformers AwqConfig (autoawq / gptqmodel kernels)");
  if (!zero_point)
    r.traps.push_back("zero_point is not true: neither awq_marlin nor the AWQ GEMM kernel loads it (formats.md B.1)");
  if (v != "gemm")
    r.traps.push_back("version \"" + version + "\": vLLM and the GEMM layout expect \"gemm\" (formats.md B.1)");
  check_fused_partners(quantized_prefixes(t), layers, r);
}

void gptq_compat(const json& qc, const CheckpointTensors& t, int64_t layers, CompatReport& r) {
  const bool sym = bool_or(qc, "sym", true);
  const bool desc_act = bool_or(qc, "desc_act", false);
  const int64_t group = int_or(qc, "group_size", -1);
  const std::string fmt = str_or(qc, "checkpoint_format", str_or(qc, "format", "gptq"));
  r.loaders.push_back(sym ? std::string("vLLM gptq_marlin (uint4b8) or gptq (exllama, fp16)")
                          : std::string("vLLM gptq (exllama / gptq_gemm, fp16 only; not Marlin: sym false)"));
  r.loaders.push_back(fmt == "gptq_v2" ? "GPTQModel (gptq_v2)" : "AutoGPTQ / GPTQModel (v1 \"gptq\")");
  r.loaders.push_back("transformers GPTQConfig (optimum + auto-gptq / gptqmodel)");
  if (fmt == "gptq_v2")
    r.traps.push_back("checkpoint_format \"gptq_v2\": only recent vLLM / GPTQModel read zero points without the -1 "
                      "(formats.md C.3)");
  const auto quantized = quantized_prefixes(t);
  int zero0 = 0, not_sym = 0, no_g = 0, bad_g = 0;
  std::string zero0_at;
  for (const auto& [p, suffix] : quantized) {
    if (suffix != ".qweight") continue;
    if (auto z = t.view(p + ".qzeros"); z && z->dtype == DType::kI32) {
      bool any0 = false, any_not7 = false;
      for (int64_t i = 0; i < z->numel(); ++i) {
        const uint32_t w = word_at(*z, i);
        if (w != 0x77777777u) any_not7 = true;
        for (int j = 0; j < kNibblesPerWord; ++j)
          if (fmt != "gptq_v2" && unpack_nibble_sequential(w, j) == 0xF) any0 = true;
      }
      if (any0 && zero0_at.empty()) zero0_at = p + ".qzeros";
      zero0 += any0 ? 1 : 0;
      not_sym += sym && any_not7 ? 1 : 0;
    }
    auto g = t.view(p + ".g_idx");
    if (!g) {
      ++no_g;
    } else if (!desc_act && g->dtype == DType::kI32 && group > 0) {
      for (int64_t k = 0; k < g->numel(); ++k)
        if (static_cast<int64_t>(word_at(*g, k)) != k / group) {
          ++bad_g;
          break;
        }
    }
  }
  if (zero0 > 0)
    r.traps.push_back(std::to_string(zero0) + " linear(s) have a qzeros nibble 0xF, e.g. " + zero0_at +
                      ": a v1 zero point of 0 stored as -1 (overflow; readers see zero 16) (formats.md C.3)");
  if (not_sym > 0)
    r.traps.push_back(std::to_string(not_sym) + " linear(s) with sym true have qzeros words other than 0x77777777: "
                      "Marlin assumes zero 8 and ignores them (formats.md C.2)");
  if (no_g > 0)
    r.traps.push_back(std::to_string(no_g) + " linear(s) without g_idx" +
                      (desc_act ? std::string(" although desc_act is true: act-order cannot be undone")
                                : std::string(": AutoGPTQ always writes it and vLLM registers the parameter")) +
                      " (formats.md C.2, C.4)");
  if (bad_g > 0)
    r.traps.push_back(std::to_string(bad_g) + " linear(s) have a permuted g_idx but desc_act is false: runtimes may "
                      "ignore it (formats.md C.4)");
  check_marlin_shapes(quantized, t, "gptq", group, r);
  check_fused_partners(quantized, layers, r);
}

CompatReport compatibility(const json& config, const std::string& dir, const CheckpointTensors& t, int64_t layers) {
  CompatReport r;
  const bool legacy_key = !config.contains("quantization_config") && config.contains("compression_config");
  const json& qc = config.at(legacy_key ? "compression_config" : "quantization_config");
  if (legacy_key)
    r.traps.push_back("quantization stored under \"compression_config\" (older compressed-tensors key): vLLM falls "
                      "back to it, transformers reads quantization_config (formats.md 0.2.5)");
  const std::string method = str_or(qc, "quant_method", "");
  const std::string dtype = str_or(config, "torch_dtype", str_or(config, "dtype", ""));
  if (method == "compressed-tensors") {
    compressed_tensors_compat(qc, t, layers, r);
  } else if (method == "awq" || method == "gptq") {
    if (method == "awq") awq_compat(qc, t, layers, r);
    else gptq_compat(qc, t, layers, r);
    if (dtype != "float16")
      r.traps.push_back("dtype " + (dtype.empty() ? std::string("(none)") : "\"" + dtype + "\"") + " for " + method + ": vLLM's non-Marlin " + method +
                        " kernels take only fp16 activations and transformers defaults to fp16 (formats.md 1.2)");
  } else if (method == "fp8") {
    r.loaders.push_back("vLLM fp8 (per-tensor weight scales)");
    r.traps.push_back("quant_method \"fp8\": transformers maps it to FineGrainedFP8 (block scales named "
                      "weight_scale_inv); per-channel FP8 belongs in compressed-tensors (formats.md A.3)");
  } else {
    r.loaders.push_back("quant_method \"" + method + "\" is not one llmq knows (no loaders listed)");
  }
  // Container rules (formats.md 1.4, 1.5).
  for (const SafetensorsFile& f : t.files()) {
    const auto it = f.metadata().find("format");
    if (it == f.metadata().end() || it->second != "pt")
      r.traps.push_back(f.path() + ": __metadata__ has no {\"format\": \"pt\"}; transformers 4.x raises OSError "
                        "(formats.md 1.4)");
  }
  if (fs::exists(fs::path(dir) / "model.safetensors.index.json")) {
    std::set<std::string> indexed;
    for (const SafetensorsFile& f : t.files()) indexed.insert(fs::path(f.path()).filename().string());
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir, ec)) {
      const std::string name = e.path().filename().string();
      if (ends_with(name, ".safetensors") && !indexed.count(name))
        r.traps.push_back(name + " is not in model.safetensors.index.json: loaders that glob *.safetensors load it "
                          "too (formats.md 1.5)");
    }
  }
  return r;
}

Status run_inspect(const std::string& dir) {
  const std::string config_path = dir + "/config.json";
  std::ifstream in(config_path);
  if (!in) return Status::error(config_path + ": cannot open");
  std::stringstream text;
  text << in.rdbuf();
  LLMQ_ASSIGN_OR_RETURN(LlamaConfig c, parse_llama_config(text.str(), config_path));
  const json raw = json::parse(text.str(), nullptr, false);
  LLMQ_ASSIGN_OR_RETURN(CheckpointTensors tensors, CheckpointTensors::open(dir));

  std::printf("checkpoint   %s\n", dir.c_str());
  std::printf("shape        hidden %lld, intermediate %lld, layers %lld, heads %lld/%lld kv, head_dim %lld, vocab %lld\n",
              (long long)c.hidden_size, (long long)c.intermediate_size, (long long)c.num_hidden_layers,
              (long long)c.num_attention_heads, (long long)c.num_key_value_heads, (long long)c.head_dim,
              (long long)c.vocab_size);
  std::printf("rope         theta %g%s, max positions %lld, rms_norm_eps %g, tied embeddings %s\n", c.rope_theta,
              c.rope_scaling ? (", scaling " + c.rope_scaling->type).c_str() : "",
              (long long)c.max_position_embeddings, c.rms_norm_eps, c.tie_word_embeddings ? "yes" : "no");
  std::map<std::string, std::pair<int64_t, uint64_t>> by_dtype;  // dtype -> (tensors, bytes)
  int64_t count = 0;
  uint64_t total = 0;
  for (const auto& f : tensors.files()) {
    for (const auto& e : f.entries()) {
      auto& slot = by_dtype[std::string(dtype_name(e.dtype))];
      slot.first += 1;
      slot.second += e.end - e.begin;
      total += e.end - e.begin;
      ++count;
    }
  }
  std::printf("files        %zu safetensors, %lld tensors, %s\n", tensors.files().size(), (long long)count,
              human_bytes(static_cast<double>(total)).c_str());
  for (const auto& [name, slot] : by_dtype)
    std::printf("  %-8s   %6lld tensors  %s\n", name.c_str(), (long long)slot.first,
                human_bytes(static_cast<double>(slot.second)).c_str());
  const bool quantized = raw.is_object() && ((raw.contains("quantization_config") && raw["quantization_config"].is_object()) ||
                                             (raw.contains("compression_config") && raw["compression_config"].is_object()));
  if (!quantized) {
    std::printf("quantization none (%s weights)\n", c.torch_dtype.c_str());
    return Status::ok();
  }
  const char* key = raw.contains("quantization_config") ? "quantization_config" : "compression_config";
  std::printf("%s\n%s\n", key, raw[key].dump(2).c_str());
  const CompatReport r = compatibility(raw, dir, tensors, c.num_hidden_layers);
  for (const std::string& l : r.loaders) std::printf("loader       %s\n", l.c_str());
  for (const std::string& n : r.notes) std::printf("note         %s\n", n.c_str());
  for (const std::string& t : r.traps) std::printf("trap         %s\n", t.c_str());
  if (r.traps.empty()) std::printf("traps        none found (formats.md 0.2, 1.1-1.5, A-D)\n");
  return Status::ok();
}

}  // namespace

void add_inspect_command(CLI::App& app, CommandRunner& run) {
  auto dir = std::make_shared<std::string>();
  CLI::App* sub = app.add_subcommand(
      "inspect", "Summarise a checkpoint: shape, tensors, bytes by dtype, quantization, loaders and compatibility traps");
  sub->add_option("dir", *dir, "Checkpoint directory")->required();
  sub->callback([dir, &run] { run = [dir] { return run_inspect(*dir); }; });
}

}  // namespace llmq::cli
