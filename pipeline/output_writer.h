// Writes a quantized checkpoint directory (formats.md 1.3): sharded safetensors with index,
// config.json = the source's config plus quantization_config and the format's torch_dtype,
// the format's extra config files, the source's tokenizer and generation files, and
// llmq_report.json. Everything goes to a staging directory that replaces the target only at
// finish() (core/output_dir.h), so a failed run leaves no partial output.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "core/output_dir.h"
#include "core/status.h"
#include "core/tensor.h"
#include "formats/quant_formats.h"
#include "formats/safetensors.h"
#include "quantizers/quantized_linear.h"

namespace llmq {

class QuantizedCheckpointWriter {
 public:
  // Refuses an existing target unless force (checked now, before any work).
  static Expected<QuantizedCheckpointWriter> create(const std::string& target, bool force, QuantConfigInfo info,
                                                    uint64_t max_shard_bytes);

  // A float tensor, stored in the format's model dtype (BF16 or F16). Values outside the dtype's
  // range are an error naming the tensor (F16 tops out at 65504).
  Status add_float(const std::string& name, const Tensor& f32);
  // The same from a float view of any dtype (e.g. the source checkpoint's mapped tensor):
  // stored as it is when the dtypes agree, else converted in row chunks (no float32 copy).
  Status add_float(const std::string& name, const TensorView& v);
  // A quantized linear's tensors at prefix ("model.layers.0.mlp.up_proj").
  Status add_linear(const std::string& prefix, const QuantizedLinear& q);

  // Writes the shards' index, the configs, copies the tokenizer/generation files from
  // source_dir, writes the report, and renames the directory into place.
  Status finish(const std::string& source_dir, const nlohmann::ordered_json& report);

  const std::string& target() const { return staged_.target(); }

 private:
  QuantizedCheckpointWriter(StagedOutputDir staged, QuantConfigInfo info, uint64_t max_shard_bytes);
  StagedOutputDir staged_;
  QuantConfigInfo info_;
  ShardedCheckpointWriter shards_;
};

// The source config.json text with quantization_config set and torch_dtype (or transformers
// v5's "dtype", whichever the source uses) set to the format's model dtype; key order kept.
Expected<std::string> quantized_config_json(const std::string& source_config_path, const QuantConfigInfo& info);

}  // namespace llmq
