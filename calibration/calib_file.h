// The calibration file: a canonical safetensors file (formats/safetensors.h) holding, for
// every decoder layer i and distinct linear input IN in {attn_in, attn_out, mlp_in, mlp_out}
// (stats.h):
//   layers.{i}.{IN}.abs_max    F32 [in]
//   layers.{i}.{IN}.abs_mean   F32 [in]
//   layers.{i}.{IN}.min        F32 [in]
//   layers.{i}.{IN}.max        F32 [in]
//   layers.{i}.{IN}.hessian    F32 [in, in]   sum over tokens of x x^T (absent with --no-hessian)
//   layers.{i}.{IN}.tokens     I64 [1]        tokens seen
// where in = hidden (attn_in, mlp_in), num_heads * head_dim (attn_out), intermediate (mlp_out).
// __metadata__ = {"format": "pt", "llmq_calibration": <manifest JSON>}, the manifest being
//   {"version": 1, "model_fingerprint": "16 hex", "model_dir", "dataset", "dataset_kind",
//    "dataset_field" (jsonl only), "dataset_sha": "16 hex FNV-1a-64 of the dataset bytes",
//    "samples", "seq_len", "tokens", "seed", "hessian": bool, "device"}
// "device" (optional; absent in files written before it existed) names where the statistics
// were computed: "cpu" (float32 forwards) or "cuda:<GPU name>" (bf16 forwards).
// model_fingerprint (model_fingerprint()) ties the statistics to one checkpoint:
// load_calibration refuses a file made for another model.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "calibration/stats.h"
#include "core/status.h"
#include "formats/checkpoint.h"
#include "formats/safetensors.h"

namespace llmq {

constexpr int kCalibrationVersion = 1;
constexpr const char* kCalibrationMetadataKey = "llmq_calibration";

// 64-bit FNV-1a; chain calls by passing the previous hash as h.
constexpr uint64_t kFnv1aOffset = 0xcbf29ce484222325ULL;
uint64_t fnv1a64(const void* data, size_t n, uint64_t h = kFnv1aOffset);
std::string hex64(uint64_t v);  // 16 lowercase hex digits

// Hash of config.json's shape fields, every tensor's name / dtype / shape (sorted by name) and
// the first 4 KiB of the embed_tokens and lm_head bytes; 16 hex digits.
Expected<std::string> model_fingerprint(const HfCheckpoint& ckpt);

struct CalibrationManifest {
  int64_t version = kCalibrationVersion;
  std::string model_fingerprint;
  std::string model_dir;
  std::string dataset;
  std::string dataset_kind;
  std::string dataset_field;  // jsonl only
  std::string dataset_sha;
  int64_t samples = 0;
  int64_t seq_len = 0;
  int64_t tokens = 0;
  uint64_t seed = 0;
  bool hessian = true;
  std::string device;  // "cpu" / "cuda:NAME"; empty when the file does not say

  std::string to_json() const;
  static Expected<CalibrationManifest> from_json(const std::string& text, const std::string& origin);
};

// "layers.3.attn_in.hessian"
std::string calib_tensor_name(int64_t layer, LinearInput input, std::string_view stat);

// Writes a calibration file with memory bounded by one input's statistics: add() appends each
// tensor's bytes to a spill file beside the target ("<path>.spill-<pid>"); finish() has
// SafetensorsWriter write the canonical file from it to "<path>.tmp-<pid>" (freeing the spill
// file's space as it goes: an 8B model's Hessians are 33 GB), then renames it into place. An existing target is refused at create() and again at finish() unless force.
// Spill and temporary files are removed when the writer dies unfinished.
class CalibrationWriter {
 public:
  static Expected<CalibrationWriter> create(const std::string& path, bool force);
  CalibrationWriter(CalibrationWriter&& other) noexcept;
  CalibrationWriter& operator=(CalibrationWriter&&) = delete;
  CalibrationWriter(const CalibrationWriter&) = delete;
  ~CalibrationWriter();

  // Adds one input's statistics under the names above (hessian only when present).
  Status add(int64_t layer, LinearInput input, const InputStats& stats);
  Status finish(const CalibrationManifest& manifest);

 private:
  CalibrationWriter(std::string path, bool force);
  Status add_tensor(const std::string& name, const TensorView& v);
  void cleanup();

  std::string path_;
  std::string spill_path_;
  std::string tmp_path_;
  bool force_ = false;
  bool active_ = false;  // owns the spill file (false after finish or a move)
  uint64_t spill_size_ = 0;
  SafetensorsWriter tensors_;  // names, shapes and spill offsets
};

class CalibrationData {
 public:
  const CalibrationManifest& manifest() const { return manifest_; }
  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }
  bool has_hessian() const { return manifest_.hessian; }
  // Statistics of one layer's input; hessian is empty when the file has none.
  const InputStats& stats(int64_t layer, LinearInput input) const;

 private:
  friend Expected<CalibrationData> load_calibration(const std::string& path, const HfCheckpoint& ckpt);
  CalibrationManifest manifest_;
  std::vector<std::array<InputStats, kNumLinearInputs>> layers_;  // [layer][input]
};

// Reads and validates a calibration file for `ckpt`: manifest present and of this version,
// fingerprint equal to the checkpoint's (else a message naming both models), every tensor
// present with its dtype and shape, token counts equal to the manifest's, all values finite.
Expected<CalibrationData> load_calibration(const std::string& path, const HfCheckpoint& ckpt);

}  // namespace llmq
