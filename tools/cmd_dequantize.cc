// llmq dequantize: a quantized checkpoint (any format llmq reads) back to a float checkpoint,
// with every quantized linear replaced by llmq's own dequantization of it (`<p>.weight` =
// dequantize(unpack_quantized_linear(<p>)), quantizers/quantized_linear.h) and every other tensor
// converted to the chosen dtype. It is the reference side of the ecosystem check
// (scripts/ecosystem/check_loaders.py): the weights another loader reconstructs from the same
// files must equal these. --dtype f32 (the default) is exact: a dequantized weight is an int4 /
// int8 / e4m3 code times a BF16 or F16 scale (at most 4 + 11 significant bits, so the float32
// product is exact); bf16 / f16 round it once.
//
// Output: config.json without quantization_config and with the dtype set, safetensors sharded
// like HF's (model.safetensors or model-*-of-*.safetensors + index), the tokenizer and
// generation files copied; staged and renamed into place, nothing replaced without --force.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>

#include "core/output_dir.h"
#include "formats/checkpoint.h"
#include "formats/quant_formats.h"
#include "formats/safetensors.h"
#include "model/llama.h"
#include "tools/commands.h"

namespace llmq::cli {

namespace {

namespace fs = std::filesystem;

struct DequantizeArgs {
  std::string model;
  std::string out;
  std::string dtype = "f32";
  uint64_t max_shard_bytes = 5'000'000'000ULL;  // huggingface_hub's default (formats.md 1.5)
  bool force = false;
};

Expected<DType> parse_out_dtype(const std::string& name) {
  if (name == "f32") return DType::kF32;
  if (name == "bf16") return DType::kBF16;
  if (name == "f16") return DType::kF16;
  return Status::error("--dtype must be f32, bf16 or f16, not '" + name + "'");
}

const char* torch_dtype_name(DType t) {
  return t == DType::kF32 ? "float32" : t == DType::kBF16 ? "bfloat16" : "float16";
}

// Files of a quantized checkpoint that describe its storage, not the model: not copied.
bool is_storage_file(const std::string& name) {
  static const std::set<std::string> kNames = {"config.json", "model.safetensors.index.json", "quantize_config.json",
                                               "quant_config.json", "llmq_report.json"};
  return kNames.count(name) != 0 || (name.size() > 12 && name.compare(name.size() - 12, 12, ".safetensors") == 0);
}

// float32 -> the output dtype; F16 refuses what it cannot hold instead of writing Inf.
Expected<Tensor> to_out_dtype(const std::string& name, Tensor f32, DType dtype) {
  if (dtype == DType::kF32) return f32;
  if (dtype == DType::kF16) {
    const float* p = f32.data<float>();
    for (int64_t i = 0; i < f32.numel(); ++i)
      if (std::fabs(p[i]) > 65504.0f)
        return Status::error(name + ": value " + std::to_string(p[i]) + " does not fit float16 (use --dtype f32)");
  }
  return f32_to(f32.view(), dtype);
}

// config.json with quantization_config dropped and the dtype key (torch_dtype, or v5's dtype)
// set; key order kept.
Expected<std::string> float_config_json(const std::string& path, DType dtype) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::error(path + ": cannot read");
  nlohmann::ordered_json j = nlohmann::ordered_json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return Status::error(path + ": not a JSON object");
  j.erase("quantization_config");
  j.erase("compression_config");
  const char* key = j.contains("dtype") && !j.contains("torch_dtype") ? "dtype" : "torch_dtype";
  j[key] = torch_dtype_name(dtype);
  return j.dump(2) + "\n";
}

Status write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  if (!out) return Status::error(path.string() + ": write failed");
  return Status::ok();
}

Status run_dequantize(const DequantizeArgs& a) {
  LLMQ_ASSIGN_OR_RETURN(const DType dtype, parse_out_dtype(a.dtype));
  LLMQ_ASSIGN_OR_RETURN(const HfCheckpoint ckpt, HfCheckpoint::open(a.model));
  if (!ckpt.quantization())
    return Status::error(a.model + "/config.json: no quantization_config (not a quantized checkpoint)");
  const LlamaConfig& c = ckpt.config();
  const QuantConfigInfo& info = *ckpt.quantization();
  LLMQ_ASSIGN_OR_RETURN(StagedOutputDir staged, StagedOutputDir::create(a.out, a.force));
  ShardedCheckpointWriter shards(staged.path(), a.max_shard_bytes);

  // Quantized linears, in layer order; every stored tensor under "<prefix>." belongs to them.
  std::set<std::string> consumed;
  const std::vector<std::string> names = ckpt.tensors().names();
  int64_t linears = 0;
  for (int64_t layer = 0; layer < c.num_hidden_layers; ++layer) {
    for (int s = 0; s < kNumLinearSlots; ++s) {
      const std::string prefix = layer_tensor_name(layer, std::string(linear_slot_name(static_cast<LinearSlot>(s))));
      if (!ckpt.is_quantized_linear(prefix)) continue;
      const bool q_dim = s == static_cast<int>(LinearSlot::kQ);
      const bool kv_dim = s == static_cast<int>(LinearSlot::kK) || s == static_cast<int>(LinearSlot::kV);
      const bool mlp_in = s == static_cast<int>(LinearSlot::kGate) || s == static_cast<int>(LinearSlot::kUp);
      const int64_t out = q_dim ? c.q_dim() : kv_dim ? c.kv_dim() : mlp_in ? c.intermediate_size : c.hidden_size;
      const int64_t in = s == static_cast<int>(LinearSlot::kO)      ? c.q_dim()
                         : s == static_cast<int>(LinearSlot::kDown) ? c.intermediate_size
                                                                    : c.hidden_size;
      LLMQ_ASSIGN_OR_RETURN(QuantizedLinear q, unpack_quantized_linear(ckpt.tensors(), prefix, info, out, in));
      LLMQ_ASSIGN_OR_RETURN(Tensor w, to_out_dtype(prefix + ".weight", dequantize(q), dtype));
      LLMQ_RETURN_IF_ERROR(shards.add(prefix + ".weight", std::move(w)));
      for (const std::string& n : names)
        if (n.rfind(prefix + ".", 0) == 0 && n != prefix + ".bias") consumed.insert(n);
      ++linears;
    }
  }
  // Everything else (embeddings, norms, lm_head, biases) is float: converted as stored.
  for (const std::string& n : names) {
    if (consumed.count(n)) continue;
    LLMQ_ASSIGN_OR_RETURN(const TensorView v, ckpt.tensors().view(n));
    if (!dtype_is_float(v.dtype))
      return Status::error(ckpt.tensors().file_of(n) + ": tensor '" + n + "' has dtype " +
                           std::string(dtype_name(v.dtype)) + " but is not part of a quantized linear");
    LLMQ_ASSIGN_OR_RETURN(Tensor t, to_out_dtype(n, to_f32(v), dtype));
    LLMQ_RETURN_IF_ERROR(shards.add(n, std::move(t)));
  }
  LLMQ_RETURN_IF_ERROR(shards.finish());

  const fs::path dir = staged.path();
  LLMQ_ASSIGN_OR_RETURN(const std::string config, float_config_json((fs::path(a.model) / "config.json").string(), dtype));
  LLMQ_RETURN_IF_ERROR(write_text(dir / "config.json", config));
  std::vector<fs::path> copies;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(a.model, ec))
    if (e.is_regular_file() && !is_storage_file(e.path().filename().string())) copies.push_back(e.path());
  if (ec) return Status::error(a.model + ": cannot list (" + ec.message() + ")");
  std::sort(copies.begin(), copies.end());
  for (const fs::path& p : copies) {
    fs::copy_file(p, dir / p.filename(), fs::copy_options::overwrite_existing, ec);
    if (ec) return Status::error(p.string() + ": cannot copy (" + ec.message() + ")");
  }
  LLMQ_RETURN_IF_ERROR(staged.commit());
  std::printf("wrote %s (%s, %lld dequantized linears from %s)\n", a.out.c_str(), torch_dtype_name(dtype),
              static_cast<long long>(linears), std::string(quant_format_name(info.format)).c_str());
  return Status::ok();
}

}  // namespace

void add_dequantize_command(CLI::App& app, CommandRunner& run) {
  auto args = std::make_shared<DequantizeArgs>();
  CLI::App* sub = app.add_subcommand(
      "dequantize", "Write a float checkpoint holding llmq's dequantization of a quantized checkpoint's linears");
  sub->add_option("--model", args->model, "Quantized checkpoint directory")->required();
  sub->add_option("--out", args->out, "Output checkpoint directory")->required();
  sub->add_option("--dtype", args->dtype, "f32 (exact), bf16 or f16")->capture_default_str();
  sub->add_option("--max-shard-bytes", args->max_shard_bytes, "Shard size limit")->capture_default_str();
  sub->add_flag("--force", args->force, "Replace an existing output");
  sub->callback([args, &run] { run = [args] { return run_dequantize(*args); }; });
}

}  // namespace llmq::cli
