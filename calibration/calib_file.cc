// The calibration file; see calib_file.h.
#include "calibration/calib_file.h"

#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/check.h"

namespace llmq {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kFingerprintHeadBytes = 4096;  // of embed_tokens / lm_head
constexpr std::array<std::string_view, 4> kVectorStats = {"abs_max", "abs_mean", "min", "max"};

uint64_t hash_i64(uint64_t h, int64_t v) {
  uint8_t b[8];
  for (int i = 0; i < 8; ++i) b[i] = static_cast<uint8_t>(static_cast<uint64_t>(v) >> (8 * i));
  return fnv1a64(b, 8, h);
}

uint64_t hash_str(uint64_t h, std::string_view s) {
  h = hash_i64(h, static_cast<int64_t>(s.size()));  // length prefix: "ab"+"c" != "a"+"bc"
  return fnv1a64(s.data(), s.size(), h);
}

uint64_t hash_head(uint64_t h, const TensorView& v) {
  const int64_t n = std::min<int64_t>(v.nbytes(), kFingerprintHeadBytes);
  return fnv1a64(v.data, static_cast<size_t>(n), h);
}

Status check_finite(const Tensor& t, const std::string& what) {
  const float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i)
    if (!std::isfinite(p[i])) return Status::error(what + ": non-finite value at element " + std::to_string(i));
  return Status::ok();
}

}  // namespace

uint64_t fnv1a64(const void* data, size_t n, uint64_t h) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ULL;
  }
  return h;
}

std::string hex64(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

Expected<std::string> model_fingerprint(const HfCheckpoint& ckpt) {
  const LlamaConfig& c = ckpt.config();
  uint64_t h = kFnv1aOffset;
  for (int64_t v : {c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads,
                    c.num_key_value_heads, c.head_dim, c.vocab_size})
    h = hash_i64(h, v);
  for (const std::string& name : ckpt.tensors().names()) {
    const SafetensorsEntry* e = ckpt.tensors().find(name);
    LLMQ_CHECK(e != nullptr, "tensor listed but not found: " << name);
    h = hash_str(h, name);
    h = hash_str(h, dtype_name(e->dtype));
    h = hash_i64(h, static_cast<int64_t>(e->shape.size()));
    for (int64_t d : e->shape) h = hash_i64(h, d);
  }
  LLMQ_ASSIGN_OR_RETURN(TensorView embed, ckpt.embed_tokens());
  LLMQ_ASSIGN_OR_RETURN(TensorView head, ckpt.lm_head());
  h = hash_head(h, embed);
  h = hash_head(h, head);
  return hex64(h);
}

// ---- manifest ------------------------------------------------------------------------------

std::string CalibrationManifest::to_json() const {
  nlohmann::json j;  // keys sorted by nlohmann: the dump is deterministic
  j["version"] = version;
  j["model_fingerprint"] = model_fingerprint;
  j["model_dir"] = model_dir;
  j["dataset"] = dataset;
  j["dataset_kind"] = dataset_kind;
  if (!dataset_field.empty()) j["dataset_field"] = dataset_field;
  j["dataset_sha"] = dataset_sha;
  j["samples"] = samples;
  j["seq_len"] = seq_len;
  j["tokens"] = tokens;
  j["seed"] = seed;
  j["hessian"] = hessian;
  if (!device.empty()) j["device"] = device;
  return j.dump();
}

Expected<CalibrationManifest> CalibrationManifest::from_json(const std::string& text, const std::string& origin) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception&) {
    return Status::error(origin + ": " + kCalibrationMetadataKey + " metadata is not valid JSON");
  }
  if (!j.is_object()) return Status::error(origin + ": " + kCalibrationMetadataKey + " metadata is not a JSON object");
  const auto bad = [&](const char* key, const char* type) {
    return Status::error(origin + ": calibration manifest: \"" + key + "\" missing or not " + type);
  };
  CalibrationManifest m;
  const auto get_int = [&](const char* key, int64_t& out) -> bool {
    const auto it = j.find(key);
    if (it == j.end() || !it->is_number_integer()) return false;
    out = it->get<int64_t>();
    return true;
  };
  const auto get_str = [&](const char* key, std::string& out) -> bool {
    const auto it = j.find(key);
    if (it == j.end() || !it->is_string()) return false;
    out = it->get<std::string>();
    return true;
  };
  if (!get_int("version", m.version)) return bad("version", "an integer");
  if (m.version != kCalibrationVersion)
    return Status::error(origin + ": calibration file version " + std::to_string(m.version) + ", this llmq reads " +
                         std::to_string(kCalibrationVersion));
  for (auto [key, field] : {std::pair<const char*, std::string*>{"model_fingerprint", &m.model_fingerprint},
                            {"model_dir", &m.model_dir},
                            {"dataset", &m.dataset},
                            {"dataset_kind", &m.dataset_kind},
                            {"dataset_sha", &m.dataset_sha}})
    if (!get_str(key, *field)) return bad(key, "a string");
  if (j.contains("dataset_field") && !get_str("dataset_field", m.dataset_field)) return bad("dataset_field", "a string");
  for (auto [key, field] : {std::pair<const char*, int64_t*>{"samples", &m.samples},
                            {"seq_len", &m.seq_len},
                            {"tokens", &m.tokens}})
    if (!get_int(key, *field) || *field < 0) return bad(key, "a non-negative integer");
  const auto seed = j.find("seed");
  if (seed == j.end() || !seed->is_number_unsigned()) return bad("seed", "an unsigned integer");
  m.seed = seed->get<uint64_t>();
  const auto hess = j.find("hessian");
  if (hess == j.end() || !hess->is_boolean()) return bad("hessian", "a boolean");
  m.hessian = hess->get<bool>();
  if (j.contains("device") && !get_str("device", m.device)) return bad("device", "a string");
  return m;
}

// ---- writing -------------------------------------------------------------------------------

std::string calib_tensor_name(int64_t layer, LinearInput input, std::string_view stat) {
  return "layers." + std::to_string(layer) + "." + std::string(linear_input_name(input)) + "." + std::string(stat);
}

CalibrationWriter::CalibrationWriter(std::string path, bool force)
    : path_(std::move(path)),
      spill_path_(path_ + ".spill-" + std::to_string(::getpid())),
      tmp_path_(path_ + ".tmp-" + std::to_string(::getpid())),
      force_(force) {}

CalibrationWriter::CalibrationWriter(CalibrationWriter&& other) noexcept
    : path_(std::move(other.path_)),
      spill_path_(std::move(other.spill_path_)),
      tmp_path_(std::move(other.tmp_path_)),
      force_(other.force_),
      active_(other.active_),
      spill_size_(other.spill_size_),
      tensors_(std::move(other.tensors_)) {
  other.active_ = false;
}

CalibrationWriter::~CalibrationWriter() { cleanup(); }

void CalibrationWriter::cleanup() {
  if (!active_) return;
  std::error_code ec;
  fs::remove(spill_path_, ec);
  fs::remove(tmp_path_, ec);
  active_ = false;
}

Expected<CalibrationWriter> CalibrationWriter::create(const std::string& path, bool force) {
  std::error_code ec;
  if (fs::exists(path, ec) && !force) return Status::error(path + ": output exists (pass --force to replace it)");
  CalibrationWriter w(path, force);
  std::ofstream spill(w.spill_path_, std::ios::binary | std::ios::trunc);
  if (!spill) return Status::error(w.spill_path_ + ": cannot open for writing");
  w.active_ = true;
  return w;
}

Status CalibrationWriter::add_tensor(const std::string& name, const TensorView& v) {
  LLMQ_CHECK(active_, "CalibrationWriter used after finish");
  LLMQ_CHECK(v.is_contiguous() && v.device == Device::kCpu, "tensor " << name << " is not a contiguous host tensor");
  LLMQ_CHECK(!tensors_.contains(name), "tensor " << name << " added twice");
  std::ofstream spill(spill_path_, std::ios::binary | std::ios::app);
  const uint64_t nbytes = static_cast<uint64_t>(v.nbytes());
  spill.write(static_cast<const char*>(v.data), static_cast<std::streamsize>(nbytes));
  spill.flush();
  if (!spill) return Status::error(spill_path_ + ": write failed (disk full?)");
  tensors_.add_spilled(name, v.dtype, v.shape, spill_size_);
  spill_size_ += nbytes;
  return Status::ok();
}

Status CalibrationWriter::add(int64_t layer, LinearInput input, const InputStats& stats) {
  Tensor tokens(DType::kI64, {1});
  tokens.data<int64_t>()[0] = stats.tokens;
  LLMQ_RETURN_IF_ERROR(add_tensor(calib_tensor_name(layer, input, "tokens"), tokens.view()));
  LLMQ_RETURN_IF_ERROR(add_tensor(calib_tensor_name(layer, input, "abs_max"), stats.abs_max.view()));
  LLMQ_RETURN_IF_ERROR(add_tensor(calib_tensor_name(layer, input, "abs_mean"), stats.abs_mean.view()));
  LLMQ_RETURN_IF_ERROR(add_tensor(calib_tensor_name(layer, input, "min"), stats.min.view()));
  LLMQ_RETURN_IF_ERROR(add_tensor(calib_tensor_name(layer, input, "max"), stats.max.view()));
  if (!stats.hessian.empty())
    LLMQ_RETURN_IF_ERROR(add_tensor(calib_tensor_name(layer, input, "hessian"), stats.hessian.view()));
  return Status::ok();
}

Status CalibrationWriter::finish(const CalibrationManifest& manifest) {
  LLMQ_CHECK(active_, "CalibrationWriter::finish called twice");
  tensors_.set_metadata(kCalibrationMetadataKey, manifest.to_json());
  LLMQ_RETURN_IF_ERROR(tensors_.write(tmp_path_, spill_path_));
  std::error_code ec;
  if (fs::exists(path_, ec) && !force_) return Status::error(path_ + ": output exists (pass --force to replace it)");
  fs::rename(tmp_path_, path_, ec);
  if (ec) return Status::error(path_ + ": cannot move into place (" + ec.message() + ")");
  cleanup();  // removes the spill file; the temporary is gone (renamed)
  return Status::ok();
}

// ---- reading -------------------------------------------------------------------------------

const InputStats& CalibrationData::stats(int64_t layer, LinearInput input) const {
  LLMQ_CHECK(layer >= 0 && layer < num_layers(), "layer " << layer << " outside [0, " << num_layers() << ")");
  return layers_[static_cast<size_t>(layer)][static_cast<size_t>(input)];
}

Expected<CalibrationData> load_calibration(const std::string& path, const HfCheckpoint& ckpt) {
  LLMQ_ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::open(path));
  const auto meta = file.metadata().find(kCalibrationMetadataKey);
  if (meta == file.metadata().end())
    return Status::error(path + ": not an llmq calibration file (no \"" + kCalibrationMetadataKey + "\" metadata)");
  CalibrationData data;
  LLMQ_ASSIGN_OR_RETURN(data.manifest_, CalibrationManifest::from_json(meta->second, path));
  const CalibrationManifest& m = data.manifest_;
  LLMQ_ASSIGN_OR_RETURN(const std::string fingerprint, model_fingerprint(ckpt));
  if (fingerprint != m.model_fingerprint)
    return Status::error(path + ": statistics were collected for another model (" + m.model_dir + ", fingerprint " +
                         m.model_fingerprint + "), not " + ckpt.dir() + " (fingerprint " + fingerprint +
                         "); run llmq calibrate on this model");

  const LlamaConfig& c = ckpt.config();
  const size_t per_input = kVectorStats.size() + 1 + (m.hessian ? 1 : 0);
  const size_t expected = static_cast<size_t>(c.num_hidden_layers) * kNumLinearInputs * per_input;
  if (file.entries().size() != expected)
    return Status::error(path + ": " + std::to_string(file.entries().size()) + " tensors, expected " +
                         std::to_string(expected) + " for " + std::to_string(c.num_hidden_layers) + " layers" +
                         (m.hessian ? " with" : " without") + " Hessians");

  const auto load = [&](const std::string& name, DType dtype, const Shape& shape) -> Expected<Tensor> {
    const SafetensorsEntry* e = file.find(name);
    if (e == nullptr) return Status::error(path + ": missing tensor " + name);
    if (e->dtype != dtype || e->shape != shape)
      return Status::error(path + ": tensor " + name + " is " + std::string(dtype_name(e->dtype)) + " " +
                           shape_str(e->shape) + ", expected " + std::string(dtype_name(dtype)) + " " + shape_str(shape));
    LLMQ_ASSIGN_OR_RETURN(TensorView v, file.view(name));
    return Tensor::copy_of(v);
  };

  data.layers_.resize(static_cast<size_t>(c.num_hidden_layers));
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    for (LinearInput in : kAllLinearInputs) {
      const int64_t F = input_features(c, in);
      InputStats& s = data.layers_[static_cast<size_t>(l)][static_cast<size_t>(in)];
      const std::string tokens_name = calib_tensor_name(l, in, "tokens");
      LLMQ_ASSIGN_OR_RETURN(Tensor tokens, load(tokens_name, DType::kI64, {1}));
      s.tokens = tokens.data<int64_t>()[0];
      if (s.tokens != m.tokens)
        return Status::error(path + ": " + tokens_name + " = " + std::to_string(s.tokens) + ", manifest says " +
                             std::to_string(m.tokens) + " tokens");
      Tensor* vecs[] = {&s.abs_max, &s.abs_mean, &s.min, &s.max};
      for (size_t k = 0; k < kVectorStats.size(); ++k) {
        const std::string name = calib_tensor_name(l, in, kVectorStats[k]);
        LLMQ_ASSIGN_OR_RETURN(*vecs[k], load(name, DType::kF32, {F}));
        LLMQ_RETURN_IF_ERROR(check_finite(*vecs[k], path + ": " + name));
      }
      if (m.hessian) {
        const std::string name = calib_tensor_name(l, in, "hessian");
        LLMQ_ASSIGN_OR_RETURN(s.hessian, load(name, DType::kF32, {F, F}));
        LLMQ_RETURN_IF_ERROR(check_finite(s.hessian, path + ": " + name));
      }
    }
  }
  return data;
}

}  // namespace llmq
