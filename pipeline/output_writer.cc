#include "pipeline/output_writer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/check.h"
#include "core/numeric.h"

namespace llmq {
namespace {

namespace fs = std::filesystem;

// Files of a source checkpoint that the output replaces rather than copies.
bool replaced_by_output(const std::string& name) {
  static const char* kReplaced[] = {"config.json", "model.safetensors.index.json", "quantize_config.json",
                                    "quant_config.json", "llmq_report.json"};
  for (const char* r : kReplaced)
    if (name == r) return true;
  return name.size() > 12 && name.compare(name.size() - 12, 12, ".safetensors") == 0;
}

Status write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  out.close();
  if (!out) return Status::error(path.string() + ": cannot write");
  return Status::ok();
}

}  // namespace

QuantizedCheckpointWriter::QuantizedCheckpointWriter(StagedOutputDir staged, QuantConfigInfo info,
                                                     uint64_t max_shard_bytes)
    : staged_(std::move(staged)), info_(std::move(info)), shards_(staged_.path(), max_shard_bytes) {}

Expected<QuantizedCheckpointWriter> QuantizedCheckpointWriter::create(const std::string& target, bool force,
                                                                      QuantConfigInfo info,
                                                                      uint64_t max_shard_bytes) {
  LLMQ_ASSIGN_OR_RETURN(StagedOutputDir staged, StagedOutputDir::create(target, force));
  return QuantizedCheckpointWriter(std::move(staged), std::move(info), max_shard_bytes);
}

Status QuantizedCheckpointWriter::add_float(const std::string& name, const Tensor& f32) {
  return add_float(name, f32.view());
}

Status QuantizedCheckpointWriter::add_float(const std::string& name, const TensorView& v) {
  LLMQ_CHECK(v.is_contiguous(), "add_float takes a contiguous view: " << name);
  const DType dtype = format_model_dtype(info_.format);
  if (v.dtype == dtype) {
    LLMQ_RETURN_IF_ERROR(shards_.add(name, v));  // its bytes are in the shard's spill file now
    release_mapped_pages(v.data, static_cast<size_t>(v.nbytes()));
    return Status::ok();
  }
  Tensor out(dtype, v.shape);
  const int64_t n = v.numel();
  const int64_t cols = v.shape.empty() ? 1 : std::max<int64_t>(1, v.shape.back());
  const int64_t chunk_rows = std::max<int64_t>(1, (int64_t{1} << 20) / cols);
  const auto* in = static_cast<const uint8_t*>(v.data);
  auto* dst = static_cast<uint8_t*>(out.raw());
  const size_t in_row = static_cast<size_t>(dtype_nbytes(v.dtype, cols)), out_row = static_cast<size_t>(dtype_nbytes(dtype, cols));
  for (int64_t r0 = 0; r0 * cols < n; r0 += chunk_rows) {
    const int64_t rows = std::min(chunk_rows, n / cols - r0);
    const Tensor f = to_f32(TensorView(v.dtype, {rows, cols}, const_cast<uint8_t*>(in + r0 * in_row)));
    if (dtype == DType::kF16) {
      const float* p = f.data<float>();
      for (int64_t i = 0; i < f.numel(); ++i)
        if (std::fabs(p[i]) > 65504.0f)
          return Status::error(name + ": value " + std::to_string(p[i]) + " does not fit the float16 model dtype of " +
                               std::string(quant_format_name(info_.format)) + " checkpoints");
    }
    const Tensor c = f32_to(f.view(), dtype);
    std::memcpy(dst + r0 * out_row, c.raw(), static_cast<size_t>(c.nbytes()));
  }
  return shards_.add(name, std::move(out));
}

Status QuantizedCheckpointWriter::add_linear(const std::string& prefix, const QuantizedLinear& q) {
  LLMQ_ASSIGN_OR_RETURN(std::vector<NamedTensor> tensors, pack_quantized_linear(prefix, q, info_.format));
  for (NamedTensor& t : tensors) LLMQ_RETURN_IF_ERROR(shards_.add(t.name, std::move(t.tensor)));
  return Status::ok();
}

Status QuantizedCheckpointWriter::finish(const std::string& source_dir, const nlohmann::ordered_json& report) {
  LLMQ_RETURN_IF_ERROR(shards_.finish());
  const fs::path dir = staged_.path();
  LLMQ_ASSIGN_OR_RETURN(std::string config, quantized_config_json((fs::path(source_dir) / "config.json").string(), info_));
  LLMQ_RETURN_IF_ERROR(write_text(dir / "config.json", config));
  for (const auto& [name, text] : extra_config_files(info_)) LLMQ_RETURN_IF_ERROR(write_text(dir / name, text));
  // Tokenizer, generation config and anything else that describes the model, in name order.
  std::vector<fs::path> copies;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(source_dir, ec))
    if (entry.is_regular_file() && !replaced_by_output(entry.path().filename().string())) copies.push_back(entry.path());
  if (ec) return Status::error(source_dir + ": cannot list (" + ec.message() + ")");
  std::sort(copies.begin(), copies.end());
  for (const fs::path& p : copies) {
    fs::copy_file(p, dir / p.filename(), fs::copy_options::overwrite_existing, ec);
    if (ec) return Status::error(p.string() + ": cannot copy (" + ec.message() + ")");
  }
  LLMQ_RETURN_IF_ERROR(write_text(dir / "llmq_report.json", report.dump(2) + "\n"));
  return staged_.commit();
}

Expected<std::string> quantized_config_json(const std::string& source_config_path, const QuantConfigInfo& info) {
  std::ifstream in(source_config_path, std::ios::binary);
  if (!in) return Status::error(source_config_path + ": cannot read");
  nlohmann::ordered_json j = nlohmann::ordered_json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return Status::error(source_config_path + ": not a JSON object");
  const char* dtype_key = j.contains("dtype") && !j.contains("torch_dtype") ? "dtype" : "torch_dtype";
  j[dtype_key] = format_model_dtype(info.format) == DType::kF16 ? "float16" : "bfloat16";
  j.erase("compression_config");
  j["quantization_config"] = quantization_config_json(info);
  return j.dump(2) + "\n";
}

}  // namespace llmq
