// Packing / unpacking of QuantizedLinear for the five output formats, and their
// quantization_config blocks (formats.md A.1, B.1-B.3, C.1-C.5, D.1-D.2; layouts summarised in
// quant_formats.h and formats/int4_packing.h). The nibble packers of int4_packing.h are the
// only place bits are arranged; this file only walks tensors.
//
// Act-order of a linear is carried by QuantizedLinear::g_idx being non-empty: then GPTQ writes
// it as g_idx and compressed-tensors as weight_g_idx; AWQ has no g_idx and refuses anything but
// the trivial k / group_size. Without act-order GPTQ still writes g_idx = k / group_size.
#include "formats/quant_formats.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <sstream>

#include "core/numeric.h"
#include "formats/int4_packing.h"

namespace llmq {

namespace {

using ojson = nlohmann::ordered_json;

bool is_ct(QuantFormat f) { return f == QuantFormat::kCtFloat || f == QuantFormat::kCtInt || f == QuantFormat::kCtPack; }

QuantScheme scheme_of(QuantFormat f) {
  switch (f) {
    case QuantFormat::kCtFloat: return QuantScheme::kFp8Channel;
    case QuantFormat::kCtInt: return QuantScheme::kInt8Channel;
    default: return QuantScheme::kInt4Group;
  }
}

std::string_view scheme_name(QuantScheme s) {
  switch (s) {
    case QuantScheme::kFp8Channel: return "fp8 per-channel";
    case QuantScheme::kInt8Channel: return "int8 per-channel";
    case QuantScheme::kInt4Group: return "int4 per-group";
  }
  return "?";
}

// Value of a float32 stored in dtype t and read back (F32 is the identity).
float stored_value(float x, DType t) {
  if (t == DType::kBF16) return bf16_to_f32(f32_to_bf16(x));
  if (t == DType::kF16) return f16_to_f32(f32_to_f16(x));
  return x;
}

// float32 [rows, cols] -> dtype [rows, cols] (or transposed: dtype [cols, rows]), refusing any
// value that the dtype would change: codes were computed with the scale as stored (1.2).
Expected<Tensor> convert_scales(const Tensor& scales, DType t, bool transpose, Shape shape, const std::string& what) {
  const int64_t rows = scales.dim(0), cols = scales.dim(1);
  const float* s = scales.data<float>();
  Tensor out(t, std::move(shape));
  LLMQ_CHECK(out.numel() == rows * cols, "scale shape mismatch for " << what);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const float v = s[r * cols + c];
      if (stored_value(v, t) != v) {
        std::ostringstream msg;
        msg.precision(9);
        msg << what << ": scale [" << r << ", " << c << "] = " << v << " is not exactly representable in "
            << dtype_name(t) << " (quantize with scale_dtype " << dtype_name(t) << ")";
        return Status::error(msg.str());
      }
      const int64_t i = transpose ? c * rows + r : r * cols + c;
      if (t == DType::kBF16) out.data<uint16_t>()[i] = f32_to_bf16(v);
      else if (t == DType::kF16) out.data<uint16_t>()[i] = f32_to_f16(v);
      else out.data<float>()[i] = v;
    }
  return out;
}

bool g_idx_is_trivial(const QuantizedLinear& q) {
  if (q.g_idx.empty()) return true;
  const int32_t* g = q.g_idx.data<int32_t>();
  for (int64_t k = 0; k < q.in_features; ++k)
    if (g[k] != k / q.group_size) return false;
  return true;
}

Status require_multiple_of_8(const std::string& what, const char* dim, int64_t n) {
  if (n % kNibblesPerWord == 0) return Status::ok();
  return Status::error(what + ": " + dim + " = " + std::to_string(n) +
                       " is not a multiple of 8 (8 int4 values per int32 word)");
}

// ---- per-format packers --------------------------------------------------------------------

Expected<std::vector<NamedTensor>> pack_channel(const std::string& p, const QuantizedLinear& q, QuantFormat f) {
  const int64_t out = q.out_features, in = q.in_features;
  std::vector<NamedTensor> t;
  Tensor w(f == QuantFormat::kCtFloat ? DType::kF8E4M3 : DType::kI8, {out, in});
  std::memcpy(w.raw(), q.codes.raw(), static_cast<size_t>(out * in));
  LLMQ_ASSIGN_OR_RETURN(Tensor s, convert_scales(q.scales, format_scale_dtype(f), false, {out, 1}, p));
  t.push_back({p + ".weight", std::move(w)});
  t.push_back({p + ".weight_scale", std::move(s)});
  return t;
}

Expected<std::vector<NamedTensor>> pack_awq(const std::string& p, const QuantizedLinear& q) {
  const int64_t out = q.out_features, in = q.in_features, G = q.num_groups();
  LLMQ_RETURN_IF_ERROR(require_multiple_of_8(p, "out_features", out));
  if (!g_idx_is_trivial(q))
    return Status::error(p + ": AWQ has no g_idx; an act-order (permuted-group) linear cannot be written as AWQ");
  const uint8_t* c = q.codes.data<uint8_t>();
  const uint8_t* z = q.zeros.data<uint8_t>();
  Tensor qweight(DType::kI32, {in, out / 8});  // [in, out/8], packed along out
  Tensor qzeros(DType::kI32, {G, out / 8});    // [G, out/8]
  uint32_t* qw = static_cast<uint32_t*>(qweight.raw());
  uint32_t* qz = static_cast<uint32_t*>(qzeros.raw());
  uint8_t v[8];
  for (int64_t w = 0; w < out / 8; ++w)  // 8 code rows read in step, k innermost
    for (int64_t k = 0; k < in; ++k) {
      for (int j = 0; j < 8; ++j) v[j] = c[(8 * w + j) * in + k];
      qw[k * (out / 8) + w] = pack_nibbles_awq(v);
    }
  for (int64_t g = 0; g < G; ++g)
    for (int64_t w = 0; w < out / 8; ++w) {
      for (int j = 0; j < 8; ++j) v[j] = z[(8 * w + j) * G + g];
      qz[g * (out / 8) + w] = pack_nibbles_awq(v);
    }
  LLMQ_ASSIGN_OR_RETURN(Tensor scales, convert_scales(q.scales, DType::kF16, true, {G, out}, p));
  std::vector<NamedTensor> t;
  t.push_back({p + ".qweight", std::move(qweight)});
  t.push_back({p + ".qzeros", std::move(qzeros)});
  t.push_back({p + ".scales", std::move(scales)});
  return t;
}

Expected<std::vector<NamedTensor>> pack_gptq(const std::string& p, const QuantizedLinear& q) {
  const int64_t out = q.out_features, in = q.in_features, G = q.num_groups();
  LLMQ_RETURN_IF_ERROR(require_multiple_of_8(p, "in_features", in));
  LLMQ_RETURN_IF_ERROR(require_multiple_of_8(p, "out_features", out));
  const uint8_t* c = q.codes.data<uint8_t>();
  const uint8_t* z = q.zeros.data<uint8_t>();
  for (int64_t n = 0; n < out; ++n)
    for (int64_t g = 0; g < G; ++g)
      if (z[n * G + g] == 0)
        return Status::error(p + ": zero point 0 at [out " + std::to_string(n) + ", group " + std::to_string(g) +
                             "] cannot be stored in GPTQ v1 (stores zero - 1; formats.md C.3): quantize with "
                             "min_zero = 1 or write compressed-tensors pack-quantized");
  Tensor qweight(DType::kI32, {in / 8, out});  // [in/8, out], packed along in
  Tensor qzeros(DType::kI32, {G, out / 8});    // [G, out/8], stored zero - 1
  Tensor g_idx(DType::kI32, {in});             // [in]
  uint32_t* qw = static_cast<uint32_t*>(qweight.raw());
  uint32_t* qz = static_cast<uint32_t*>(qzeros.raw());
  uint8_t v[8];
  for (int64_t n = 0; n < out; ++n)
    for (int64_t r = 0; r < in / 8; ++r) qw[r * out + n] = pack_nibbles_sequential(c + n * in + 8 * r);
  for (int64_t g = 0; g < G; ++g)
    for (int64_t w = 0; w < out / 8; ++w) {
      for (int j = 0; j < 8; ++j) v[j] = static_cast<uint8_t>(z[(8 * w + j) * G + g] - 1);
      qz[g * (out / 8) + w] = pack_nibbles_sequential(v);
    }
  for (int64_t k = 0; k < in; ++k) g_idx.data<int32_t>()[k] = q.group_of(k);
  LLMQ_ASSIGN_OR_RETURN(Tensor scales, convert_scales(q.scales, DType::kF16, true, {G, out}, p));
  std::vector<NamedTensor> t;
  t.push_back({p + ".qweight", std::move(qweight)});
  t.push_back({p + ".qzeros", std::move(qzeros)});
  t.push_back({p + ".scales", std::move(scales)});
  t.push_back({p + ".g_idx", std::move(g_idx)});
  return t;
}

Expected<std::vector<NamedTensor>> pack_ct_int4(const std::string& p, const QuantizedLinear& q) {
  const int64_t out = q.out_features, in = q.in_features, G = q.num_groups();
  LLMQ_RETURN_IF_ERROR(require_multiple_of_8(p, "in_features", in));
  if (!q.symmetric) LLMQ_RETURN_IF_ERROR(require_multiple_of_8(p, "out_features", out));
  const uint8_t* c = q.codes.data<uint8_t>();
  const uint8_t* z = q.zeros.data<uint8_t>();
  // Unsigned code = signed q + 8, which is exactly the stored nibble (C.5).
  Tensor packed(DType::kI32, {out, in / 8});  // [out, in/8], packed along in
  uint32_t* pw = static_cast<uint32_t*>(packed.raw());
  for (int64_t n = 0; n < out; ++n)
    for (int64_t w = 0; w < in / 8; ++w) pw[n * (in / 8) + w] = pack_nibbles_sequential(c + n * in + 8 * w);
  LLMQ_ASSIGN_OR_RETURN(Tensor scales, convert_scales(q.scales, DType::kBF16, false, {out, G}, p));
  Tensor shape(DType::kI64, {2});  // [2] = [out, in]
  shape.data<int64_t>()[0] = out;
  shape.data<int64_t>()[1] = in;
  std::vector<NamedTensor> t;
  t.push_back({p + ".weight_packed", std::move(packed)});
  t.push_back({p + ".weight_scale", std::move(scales)});
  t.push_back({p + ".weight_shape", std::move(shape)});
  if (!q.symmetric) {
    Tensor zp(DType::kI32, {out / 8, G});  // [out/8, G], packed along out (dim 0) of zp + 8
    uint32_t* zw = static_cast<uint32_t*>(zp.raw());
    uint8_t v[8];
    for (int64_t r = 0; r < out / 8; ++r)
      for (int64_t g = 0; g < G; ++g) {
        for (int j = 0; j < 8; ++j) v[j] = z[(8 * r + j) * G + g];
        zw[r * G + g] = pack_nibbles_sequential(v);
      }
    t.push_back({p + ".weight_zero_point", std::move(zp)});
  }
  if (!q.g_idx.empty()) t.push_back({p + ".weight_g_idx", Tensor::copy_of(q.g_idx.view())});
  return t;
}

// ---- reading helpers -------------------------------------------------------------------------

std::string format_label(QuantFormat f) { return std::string(quant_format_name(f)); }

// The tensor `name`, checked for presence, dtype (one of `dtypes`) and exact shape; copied out
// so the words are aligned regardless of the file's layout.
Expected<Tensor> fetch(const CheckpointTensors& ts, const std::string& name, std::initializer_list<DType> dtypes,
                       const Shape& shape, QuantFormat f) {
  if (!ts.contains(name))
    return Status::error(ts.file_of(name) + ": tensor " + name + " is missing (required by the " + format_label(f) +
                         " format)");
  LLMQ_ASSIGN_OR_RETURN(TensorView v, ts.view(name));
  bool ok = false;
  std::string allowed;
  for (DType d : dtypes) {
    ok = ok || v.dtype == d;
    allowed += (allowed.empty() ? "" : " or ") + std::string(dtype_name(d));
  }
  if (!ok)
    return Status::error(ts.file_of(name) + ": tensor " + name + " has dtype " + std::string(dtype_name(v.dtype)) +
                         ", expected " + allowed);
  if (v.shape != shape)
    return Status::error(ts.file_of(name) + ": tensor " + name + " has shape " + shape_str(v.shape) + ", expected " +
                         shape_str(shape));
  return Tensor::copy_of(v);
}

// Float scales as float32 [rows, cols] (optionally transposing a stored [cols, rows]).
Tensor scales_f32(const Tensor& stored, bool transpose) {
  Tensor f = to_f32(stored.view());
  if (!transpose) return f;
  const int64_t rows = f.dim(1), cols = f.dim(0);
  Tensor t(DType::kF32, {rows, cols});
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) t.data<float>()[r * cols + c] = f.data<float>()[c * rows + r];
  return t;
}

// Scale dtypes accepted on read: llmq writes the format's dtype (1.2), but every runtime
// copy-casts scales, so checkpoints from other tools with F32 or F16/BF16 scales load too.
const std::initializer_list<DType> kFloatScaleDtypes = {DType::kBF16, DType::kF16, DType::kF32};

// codes [out, in] = code_at(n, k), in tiles of 64 rows x 256 columns on all cores (AWQ). AWQ
// and GPTQ pack their codes across the rows ([in, out / 8], [in / 8, out]); walking n inside k,
// as the loops here once did, wrote one byte per cache line on one thread (about 7 ns a weight,
// most of a W4A16 checkpoint's load into the runner). In tiles both sides stay in cache.
template <class CodeAt>
void unpack_codes_tiled(uint8_t* codes, int64_t out, int64_t in, const CodeAt& code_at) {
  constexpr int64_t kTileRows = 64, kTileCols = 256;
#pragma omp parallel for schedule(static)
  for (int64_t n0 = 0; n0 < out; n0 += kTileRows)
    for (int64_t k0 = 0; k0 < in; k0 += kTileCols)
      for (int64_t n = n0; n < std::min(out, n0 + kTileRows); ++n)
        for (int64_t k = k0; k < std::min(in, k0 + kTileCols); ++k) codes[n * in + k] = code_at(n, k);
}

// The same for layouts that pack along k (GPTQ, compressed-tensors): word_at(n, c) holds codes
// 8c..8c+7 of row n, written eight at a time (spread_nibbles_sequential), where the per-code loop
// took 40% of a load's host time (a 70B-shaped cut on 2 cores: reading 2.55 -> 1.74 s).
template <class WordAt>
void unpack_sequential_rows_tiled(uint8_t* codes, int64_t out, int64_t in, const WordAt& word_at) {
  static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "a uint64 store puts byte j at address j");
  constexpr int64_t kTileRows = 64, kTileWords = 32;
  const int64_t words = in / 8;
#pragma omp parallel for schedule(static)
  for (int64_t n0 = 0; n0 < out; n0 += kTileRows)
    for (int64_t c0 = 0; c0 < words; c0 += kTileWords)
      for (int64_t n = n0; n < std::min(out, n0 + kTileRows); ++n)
        for (int64_t c = c0; c < std::min(words, c0 + kTileWords); ++c) {
          const uint64_t eight = spread_nibbles_sequential(word_at(n, c));
          std::memcpy(codes + n * in + 8 * c, &eight, sizeof(eight));
        }
}

// The tensor that holds the codes; messages about the linear as a whole name its file.
std::string main_tensor(QuantFormat f) {
  switch (f) {
    case QuantFormat::kCtPack: return ".weight_packed";
    case QuantFormat::kAwqGemm:
    case QuantFormat::kGptqV1: return ".qweight";
    default: return ".weight";
  }
}

Status check_trivial_g_idx(const CheckpointTensors& ts, const std::string& name, const Tensor& g_idx,
                           int64_t group_size) {
  const int32_t* g = g_idx.data<int32_t>();
  for (int64_t k = 0; k < g_idx.numel(); ++k)
    if (g[k] != k / group_size)
      return Status::error(ts.file_of(name) + ": tensor " + name + "[" + std::to_string(k) + "] = " +
                           std::to_string(g[k]) + " but desc_act/actorder is off (expected k / group_size = " +
                           std::to_string(k / group_size) + "); runtimes would ignore this permutation");
  return Status::ok();
}

// ---- config helpers ----------------------------------------------------------------------

ojson ct_args(int bits, const char* type, bool symmetric, const char* strategy, ojson group_size, bool dynamic,
              ojson actorder, ojson observer) {
  ojson a;
  a["num_bits"] = bits;
  a["type"] = type;
  a["symmetric"] = symmetric;
  a["strategy"] = strategy;
  a["group_size"] = std::move(group_size);
  a["block_structure"] = nullptr;
  a["dynamic"] = dynamic;
  a["actorder"] = std::move(actorder);
  a["observer"] = std::move(observer);
  a["observer_kwargs"] = ojson::object();
  return a;
}

std::string regex_escape(const std::string& s) {
  std::string out;
  for (char ch : s) {
    if (std::string_view(".^$|()[]{}*+?\\").find(ch) != std::string_view::npos) out += '\\';
    out += ch;
  }
  return out;
}

// HF module name plus the fused name vLLM gives it (qkv_proj, gate_up_proj).
std::vector<std::string> gptq_module_aliases(const std::string& m) {
  std::vector<std::string> names = {m};
  for (const auto& [part, fused] : {std::pair<std::string, std::string>{"q_proj", "qkv_proj"}, {"k_proj", "qkv_proj"},
                                    {"v_proj", "qkv_proj"}, {"gate_proj", "gate_up_proj"}, {"up_proj", "gate_up_proj"}}) {
    if (m.size() > part.size() && m.compare(m.size() - part.size(), part.size(), part) == 0 && m[m.size() - part.size() - 1] == '.')
      names.push_back(m.substr(0, m.size() - part.size()) + fused);
  }
  return names;
}

ojson gptq_dict(const QuantConfigInfo& info) {
  ojson c;
  c["quant_method"] = "gptq";
  c["bits"] = 4;
  c["group_size"] = info.group_size;
  c["desc_act"] = info.act_order;
  c["sym"] = info.symmetric;
  c["damp_percent"] = info.damp_percent;
  c["static_groups"] = false;
  c["true_sequential"] = true;
  c["checkpoint_format"] = "gptq";
  c["model_name_or_path"] = nullptr;
  c["model_file_base_name"] = nullptr;
  // Decoder linears left unquantized: GPTQModel's per-module `dynamic` overrides, "-:" = skip,
  // matched with re.match against vLLM's module names, where q/k/v and gate/up are fused.
  ojson dynamic = ojson::object();
  for (const std::string& m : info.ignore) {
    if (m == "lm_head") continue;
    std::string pattern;
    for (const std::string& alias : gptq_module_aliases(m)) pattern += (pattern.empty() ? "" : "|") + regex_escape(alias);
    dynamic["-:^(" + pattern + ")$"] = ojson::object();
  }
  if (!dynamic.empty()) c["dynamic"] = std::move(dynamic);
  return c;
}

// Typed look-ups for parse_quantization_config; every failure names the file and the key.
struct ConfigReader {
  const nlohmann::json& j;
  std::string where;  // "config.json: quantization_config"

  Status error(const std::string& msg) const { return Status::error(where + ": " + msg); }
  bool has(const char* key) const { return j.contains(key) && !j.at(key).is_null(); }
  Expected<int64_t> integer(const char* key) const {
    if (!has(key) || !j.at(key).is_number_integer()) return error(std::string("\"") + key + "\" must be an integer");
    return j.at(key).get<int64_t>();
  }
  Expected<bool> boolean(const char* key) const {
    if (!has(key) || !j.at(key).is_boolean()) return error(std::string("\"") + key + "\" must be true or false");
    return j.at(key).get<bool>();
  }
  Expected<std::string> string(const char* key) const {
    if (!has(key) || !j.at(key).is_string()) return error(std::string("\"") + key + "\" must be a string");
    return j.at(key).get<std::string>();
  }
  // First present key of a list of aliases.
  const char* first_of(std::initializer_list<const char*> keys) const {
    for (const char* k : keys)
      if (has(k)) return k;
    return *keys.begin();
  }
};

std::string lower(std::string s) {
  for (char& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return s;
}

Expected<std::vector<std::string>> string_list(const ConfigReader& r, const char* key) {
  std::vector<std::string> out;
  if (!r.has(key)) return out;
  const nlohmann::json& v = r.j.at(key);
  if (!v.is_array()) return r.error(std::string("\"") + key + "\" must be a list of module names");
  for (const auto& e : v) {
    if (!e.is_string()) return r.error(std::string("\"") + key + "\" must be a list of module names");
    out.push_back(e.get<std::string>());
  }
  return out;
}

Expected<QuantConfigInfo> parse_compressed_tensors(const ConfigReader& r) {
  QuantConfigInfo info;
  LLMQ_ASSIGN_OR_RETURN(const std::string format, r.string("format"));
  LLMQ_ASSIGN_OR_RETURN(info.ignore, string_list(r, "ignore"));
  if (!r.has("config_groups") || !r.j.at("config_groups").is_object() || r.j.at("config_groups").size() != 1)
    return r.error("\"config_groups\" must hold exactly one group (llmq reads uniform schemes only)");
  const nlohmann::json& group = r.j.at("config_groups").begin().value();
  const std::string gname = r.j.at("config_groups").begin().key();
  ConfigReader g{group, r.where + ": config_groups." + gname};
  if (!group.is_object() || !g.has("weights") || !group.at("weights").is_object())
    return g.error("\"weights\" must be an object");
  ConfigReader w{group.at("weights"), g.where + ".weights"};
  LLMQ_ASSIGN_OR_RETURN(const int64_t bits, w.integer("num_bits"));
  LLMQ_ASSIGN_OR_RETURN(const std::string type, w.string("type"));
  LLMQ_ASSIGN_OR_RETURN(const bool symmetric, w.boolean("symmetric"));
  LLMQ_ASSIGN_OR_RETURN(const std::string strategy, w.string("strategy"));
  if (w.has("dynamic") && w.j.at("dynamic") != false) return w.error("dynamic weights are not a stored format");
  const bool has_inputs = g.has("input_activations");
  if (g.has("output_activations")) return g.error("output activation quantization is not supported");

  if (bits == 8 && (type == "float" || type == "int")) {
    const bool is_float = type == "float";
    const std::string expect_format = is_float ? "float-quantized" : "int-quantized";
    if (format != expect_format && format != "naive-quantized")
      return r.error("format \"" + format + "\" does not match 8-bit " + type + " weights (expected \"" +
                     expect_format + "\" or \"naive-quantized\")");
    if (strategy != "channel") return w.error("strategy \"" + strategy + "\" not supported (llmq reads \"channel\")");
    if (!symmetric) return w.error("asymmetric 8-bit weights are not supported");
    if (!has_inputs) return g.error("8-bit weight-only checkpoints are not supported (input_activations is null)");
    ConfigReader a{group.at("input_activations"), g.where + ".input_activations"};
    LLMQ_ASSIGN_OR_RETURN(const int64_t abits, a.integer("num_bits"));
    LLMQ_ASSIGN_OR_RETURN(const std::string atype, a.string("type"));
    LLMQ_ASSIGN_OR_RETURN(const std::string astrategy, a.string("strategy"));
    LLMQ_ASSIGN_OR_RETURN(const bool adynamic, a.boolean("dynamic"));
    LLMQ_ASSIGN_OR_RETURN(const bool asym, a.boolean("symmetric"));
    if (abits != 8 || atype != type) return a.error("activations must be 8-bit " + type + " like the weights");
    if (!asym) return a.error("asymmetric input activations are not supported");
    info.format = is_float ? QuantFormat::kCtFloat : QuantFormat::kCtInt;
    if (adynamic && astrategy == "token") {
      info.static_activations = false;
    } else if (!is_float && !adynamic && astrategy == "tensor") {
      info.static_activations = true;
    } else {
      return a.error(std::string("activation scheme (strategy \"") + astrategy + "\", dynamic " +
                     (adynamic ? "true" : "false") + ") not supported: llmq reads dynamic per-token" +
                     (is_float ? "" : " or static per-tensor"));
    }
    return info;
  }
  if (bits == 4 && type == "int") {
    if (format != "pack-quantized")
      return r.error("format \"" + format + "\" with 4-bit int weights is not supported (expected \"pack-quantized\")");
    if (has_inputs) return g.error("4-bit weights with quantized input activations are not supported");
    info.format = QuantFormat::kCtPack;
    info.symmetric = symmetric;
    if (strategy == "group") {
      LLMQ_ASSIGN_OR_RETURN(info.group_size, w.integer("group_size"));
      if (info.group_size <= 0) return w.error("group_size must be positive");
    } else if (strategy == "channel") {
      info.group_size = -1;
    } else {
      return w.error("strategy \"" + strategy + "\" not supported (llmq reads \"group\" or \"channel\")");
    }
    // Only "group" ships weight_g_idx; "weight"/"static" changed the quantization order only.
    if (w.has("actorder")) {
      const nlohmann::json& ao = w.j.at("actorder");
      if (!ao.is_string()) return w.error("\"actorder\" must be null or a string");
      const std::string a = ao.get<std::string>();
      if (a == "group") info.act_order = true;
      else if (a != "weight" && a != "static") return w.error("unknown actorder \"" + a + "\"");
    }
    return info;
  }
  return w.error("weights of " + std::to_string(bits) + "-bit " + type +
                 " are not supported (llmq reads 8-bit float/int per channel and 4-bit int per group)");
}

Expected<QuantConfigInfo> parse_awq(const ConfigReader& r) {
  QuantConfigInfo info;
  info.format = QuantFormat::kAwqGemm;
  info.symmetric = false;
  LLMQ_ASSIGN_OR_RETURN(const int64_t bits, r.integer(r.first_of({"bits", "w_bit"})));
  if (bits != 4) return r.error("AWQ with " + std::to_string(bits) + " bits is not supported (only 4)");
  LLMQ_ASSIGN_OR_RETURN(info.group_size, r.integer(r.first_of({"group_size", "q_group_size"})));
  if (info.group_size == 0 || info.group_size < -1) return r.error("invalid group_size " + std::to_string(info.group_size));
  LLMQ_ASSIGN_OR_RETURN(const bool zero_point, r.boolean("zero_point"));
  if (!zero_point) return r.error("AWQ with zero_point false is not supported (no runtime kernel loads it)");
  if (r.has("version")) {
    LLMQ_ASSIGN_OR_RETURN(const std::string version, r.string("version"));
    if (lower(version) != "gemm") return r.error("AWQ version \"" + version + "\" is not supported (only \"gemm\")");
  }
  LLMQ_ASSIGN_OR_RETURN(std::vector<std::string> skip, string_list(r, "modules_to_not_convert"));
  info.ignore = {"lm_head"};
  for (auto& m : skip)
    if (m != "lm_head") info.ignore.push_back(std::move(m));
  return info;
}

Expected<QuantConfigInfo> parse_gptq(const ConfigReader& r) {
  QuantConfigInfo info;
  info.format = QuantFormat::kGptqV1;
  LLMQ_ASSIGN_OR_RETURN(const int64_t bits, r.integer("bits"));
  if (bits != 4) return r.error("GPTQ with " + std::to_string(bits) + " bits is not supported (only 4)");
  LLMQ_ASSIGN_OR_RETURN(info.group_size, r.integer("group_size"));
  if (info.group_size == 0 || info.group_size < -1) return r.error("invalid group_size " + std::to_string(info.group_size));
  LLMQ_ASSIGN_OR_RETURN(info.act_order, r.boolean("desc_act"));
  if (info.group_size == -1) info.act_order = false;  // formats.md C.4: desc_act without groups is moot
  info.symmetric = true;
  if (r.has("sym")) {
    LLMQ_ASSIGN_OR_RETURN(info.symmetric, r.boolean("sym"));
  }
  if (r.has("damp_percent") && r.j.at("damp_percent").is_number()) info.damp_percent = r.j.at("damp_percent").get<double>();
  const char* fmt_key = r.first_of({"checkpoint_format", "format"});
  if (r.has(fmt_key)) {
    LLMQ_ASSIGN_OR_RETURN(const std::string cf, r.string(fmt_key));
    if (cf == "gptq_v2")
      return r.error("checkpoint_format \"gptq_v2\" (zero points stored without the -1) is not supported; llmq reads v1 \"gptq\"");
    if (cf != "gptq") return r.error(std::string(fmt_key) + " \"" + cf + "\" is not supported (only \"gptq\")");
  }
  info.ignore = {"lm_head"};
  return info;
}

}  // namespace

// ---- public ---------------------------------------------------------------------------------

std::string_view quant_format_name(QuantFormat f) {
  switch (f) {
    case QuantFormat::kCtFloat: return "compressed-tensors/float-quantized";
    case QuantFormat::kCtInt: return "compressed-tensors/int-quantized";
    case QuantFormat::kCtPack: return "compressed-tensors/pack-quantized";
    case QuantFormat::kAwqGemm: return "awq";
    case QuantFormat::kGptqV1: return "gptq";
  }
  return "?";
}

DType format_model_dtype(QuantFormat f) { return is_ct(f) ? DType::kBF16 : DType::kF16; }
DType format_scale_dtype(QuantFormat f) { return is_ct(f) ? DType::kBF16 : DType::kF16; }

Expected<std::vector<NamedTensor>> pack_quantized_linear(const std::string& prefix, const QuantizedLinear& q,
                                                         QuantFormat format) {
  const std::string what = prefix + " (" + format_label(format) + ")";
  if (q.scheme != scheme_of(format))
    return Status::error(what + ": a " + std::string(scheme_name(q.scheme)) + " linear cannot be written as " +
                         format_label(format) + " (needs " + std::string(scheme_name(scheme_of(format))) + ")");
  const std::string problem = validate(q);
  if (!problem.empty()) return Status::error(what + ": inconsistent quantized linear: " + problem);
  if (q.scheme == QuantScheme::kInt4Group && q.symmetric) {
    const uint8_t* z = q.zeros.data<uint8_t>();
    for (int64_t i = 0; i < q.zeros.numel(); ++i)
      if (z[i] != 8) return Status::error(what + ": symmetric linear with a zero point other than 8 at index " + std::to_string(i));
  }
  switch (format) {
    case QuantFormat::kCtFloat:
    case QuantFormat::kCtInt: return pack_channel(prefix, q, format);
    case QuantFormat::kCtPack: return pack_ct_int4(prefix, q);
    case QuantFormat::kAwqGemm: return pack_awq(prefix, q);
    case QuantFormat::kGptqV1: return pack_gptq(prefix, q);
  }
  return Status::error(what + ": unknown format");
}

nlohmann::ordered_json quantization_config_json(const QuantConfigInfo& info) {
  ojson c;
  switch (info.format) {
    case QuantFormat::kAwqGemm: {
      c["quant_method"] = "awq";
      c["bits"] = 4;
      c["group_size"] = info.group_size;
      c["zero_point"] = true;
      c["version"] = "gemm";
      // AutoAWQ only converts decoder-layer linears, so lm_head needs no entry (B.1 writes null).
      ojson skip = ojson::array();
      for (const auto& m : info.ignore)
        if (m != "lm_head") skip.push_back(m);
      c["modules_to_not_convert"] = skip.empty() ? ojson(nullptr) : skip;
      return c;
    }
    case QuantFormat::kGptqV1: return gptq_dict(info);
    default: break;
  }
  ojson group;
  group["targets"] = ojson::array({"Linear"});
  const char* format = "";
  switch (info.format) {
    case QuantFormat::kCtFloat:
      format = "float-quantized";
      group["weights"] = ct_args(8, "float", true, "channel", nullptr, false, nullptr, "minmax");
      group["input_activations"] = ct_args(8, "float", true, "token", nullptr, true, nullptr, nullptr);
      break;
    case QuantFormat::kCtInt:
      format = "int-quantized";
      group["weights"] = ct_args(8, "int", true, "channel", nullptr, false, nullptr, "minmax");
      group["input_activations"] = info.static_activations
                                       ? ct_args(8, "int", true, "tensor", nullptr, false, nullptr, "minmax")
                                       : ct_args(8, "int", true, "token", nullptr, true, nullptr, nullptr);
      break;
    default:  // kCtPack
      format = "pack-quantized";
      group["weights"] = info.group_size > 0
                             ? ct_args(4, "int", info.symmetric, "group", info.group_size, false,
                                       info.act_order ? ojson("group") : ojson(nullptr), "minmax")
                             : ct_args(4, "int", info.symmetric, "channel", nullptr, false, nullptr, "minmax");
      group["input_activations"] = nullptr;
      break;
  }
  group["output_activations"] = nullptr;
  c["quant_method"] = "compressed-tensors";
  c["format"] = format;
  c["quantization_status"] = "compressed";
  c["version"] = "0.9.4";
  c["global_compression_ratio"] = nullptr;
  c["kv_cache_scheme"] = nullptr;
  c["sparsity_config"] = ojson::object();
  c["ignore"] = info.ignore;
  c["config_groups"]["group_0"] = std::move(group);
  return c;
}

std::vector<std::pair<std::string, std::string>> extra_config_files(const QuantConfigInfo& info) {
  if (info.format == QuantFormat::kGptqV1) return {{"quantize_config.json", gptq_dict(info).dump(2) + "\n"}};
  if (info.format == QuantFormat::kAwqGemm) {
    ojson c;
    c["zero_point"] = true;
    c["q_group_size"] = info.group_size;
    c["w_bit"] = 4;
    c["version"] = "GEMM";
    return {{"quant_config.json", c.dump(2) + "\n"}};
  }
  return {};
}

Expected<QuantConfigInfo> parse_quantization_config(const nlohmann::json& config_json, const std::string& origin) {
  if (!config_json.is_object()) return Status::error(origin + ": not a JSON object");
  // config.json["quantization_config"], the older CT key "compression_config", or a bare
  // quantize_config.json-style dict.
  const char* key = nullptr;
  for (const char* k : {"quantization_config", "compression_config"})
    if (config_json.contains(k)) {
      key = k;
      break;
    }
  const nlohmann::json& qc = key ? config_json.at(key) : config_json;
  ConfigReader r{qc, origin + (key ? std::string(": ") + key : std::string())};
  if (!qc.is_object()) return r.error("must be a JSON object");
  if (!r.has("quant_method")) {
    if (!key) return Status::error(origin + ": no quantization_config (not a quantized checkpoint)");
    return r.error("\"quant_method\" is missing");
  }
  LLMQ_ASSIGN_OR_RETURN(const std::string method, r.string("quant_method"));
  if (method == "compressed-tensors") return parse_compressed_tensors(r);
  if (method == "awq") return parse_awq(r);
  if (method == "gptq") return parse_gptq(r);
  return r.error("quant_method \"" + method + "\" is not supported (llmq reads compressed-tensors, awq, gptq)");
}

Expected<QuantizedLinear> unpack_quantized_linear(const CheckpointTensors& tensors, const std::string& prefix,
                                                  const QuantConfigInfo& info, int64_t out, int64_t in) {
  const QuantFormat f = info.format;
  QuantizedLinear q;
  q.scheme = scheme_of(f);
  q.out_features = out;
  q.in_features = in;
  const std::string p = prefix;
  const std::string what = tensors.file_of(p + main_tensor(f)) + ": " + p;
  if (out <= 0 || in <= 0)
    return Status::error(what + ": non-positive shape [" + std::to_string(out) +
                         ", " + std::to_string(in) + "]");

  if (q.scheme != QuantScheme::kInt4Group) {
    const bool fp8 = f == QuantFormat::kCtFloat;
    LLMQ_ASSIGN_OR_RETURN(Tensor w, fetch(tensors, p + ".weight", {fp8 ? DType::kF8E4M3 : DType::kI8}, {out, in}, f));
    LLMQ_ASSIGN_OR_RETURN(Tensor s, fetch(tensors, p + ".weight_scale", kFloatScaleDtypes, {out, 1}, f));
    q.scale_dtype = s.dtype();
    q.codes = Tensor(fp8 ? DType::kU8 : DType::kI8, {out, in});
    std::memcpy(q.codes.raw(), w.raw(), static_cast<size_t>(out * in));
    q.scales = scales_f32(s, false);
  } else {
    const int64_t group = info.group_size > 0 ? info.group_size : in;
    if (in % group != 0)
      return Status::error(what + ": in_features " + std::to_string(in) +
                           " is not a multiple of group_size " + std::to_string(group));
    const int64_t G = in / group;
    q.group_size = group;
    q.symmetric = info.symmetric;
    q.codes = Tensor(DType::kU8, {out, in});
    q.zeros = Tensor(DType::kU8, {out, G});
    uint8_t* c = q.codes.data<uint8_t>();
    uint8_t* z = q.zeros.data<uint8_t>();
    switch (f) {
      case QuantFormat::kAwqGemm: {
        if (out % 8 != 0) return Status::error(what + ": out_features " + std::to_string(out) + " is not a multiple of 8");
        LLMQ_ASSIGN_OR_RETURN(Tensor qw, fetch(tensors, p + ".qweight", {DType::kI32}, {in, out / 8}, f));
        LLMQ_ASSIGN_OR_RETURN(Tensor qz, fetch(tensors, p + ".qzeros", {DType::kI32}, {G, out / 8}, f));
        LLMQ_ASSIGN_OR_RETURN(Tensor s, fetch(tensors, p + ".scales", kFloatScaleDtypes, {G, out}, f));
        const uint32_t* w = static_cast<const uint32_t*>(qw.raw());
        const uint32_t* wz = static_cast<const uint32_t*>(qz.raw());
        unpack_codes_tiled(c, out, in, [&](int64_t n, int64_t k) {
          return unpack_nibble_awq(w[k * (out / 8) + n / 8], static_cast<int>(n % 8));
        });
        for (int64_t g = 0; g < G; ++g)
          for (int64_t n = 0; n < out; ++n) z[n * G + g] = unpack_nibble_awq(wz[g * (out / 8) + n / 8], n % 8);
        q.scale_dtype = s.dtype();
        q.scales = scales_f32(s, true);
        break;
      }
      case QuantFormat::kGptqV1: {
        if (out % 8 != 0 || in % 8 != 0)
          return Status::error(what + ": shape [" + std::to_string(out) + ", " + std::to_string(in) +
                               "] is not a multiple of 8 in both dimensions");
        LLMQ_ASSIGN_OR_RETURN(Tensor qw, fetch(tensors, p + ".qweight", {DType::kI32}, {in / 8, out}, f));
        LLMQ_ASSIGN_OR_RETURN(Tensor qz, fetch(tensors, p + ".qzeros", {DType::kI32}, {G, out / 8}, f));
        LLMQ_ASSIGN_OR_RETURN(Tensor s, fetch(tensors, p + ".scales", kFloatScaleDtypes, {G, out}, f));
        const uint32_t* w = static_cast<const uint32_t*>(qw.raw());
        const uint32_t* wz = static_cast<const uint32_t*>(qz.raw());
        unpack_sequential_rows_tiled(c, out, in, [&](int64_t n, int64_t word) { return w[word * out + n]; });
        for (int64_t g = 0; g < G; ++g)
          for (int64_t n = 0; n < out; ++n) {
            const int stored = unpack_nibble_sequential(wz[g * (out / 8) + n / 8], n % 8);
            if (stored == 15)
              return Status::error(tensors.file_of(p + ".qzeros") + ": tensor " + p + ".qzeros [" + std::to_string(g) +
                                   ", out " + std::to_string(n) + "] stores 15, i.e. zero 16 (a v1 zero of 0 that overflowed)");
            z[n * G + g] = static_cast<uint8_t>(stored + 1);  // v1 stores zero - 1
          }
        q.scale_dtype = s.dtype();
        q.scales = scales_f32(s, true);
        const std::string gname = p + ".g_idx";
        if (tensors.contains(gname)) {
          LLMQ_ASSIGN_OR_RETURN(Tensor g_idx, fetch(tensors, gname, {DType::kI32}, {in}, f));
          if (info.act_order) q.g_idx = std::move(g_idx);
          else LLMQ_RETURN_IF_ERROR(check_trivial_g_idx(tensors, gname, g_idx, group));
        } else if (info.act_order) {
          return Status::error(tensors.file_of(gname) + ": tensor " + gname + " is missing (required with desc_act true)");
        }
        if (info.symmetric)
          for (int64_t i = 0; i < out * G; ++i)
            if (z[i] != 8)
              return Status::error(tensors.file_of(p + ".qzeros") + ": tensor " + p +
                                   ".qzeros holds a zero other than 8 but sym is true (Marlin would assume 8)");
        break;
      }
      default: {  // kCtPack
        if (in % 8 != 0) return Status::error(what + ": in_features " + std::to_string(in) + " is not a multiple of 8");
        LLMQ_ASSIGN_OR_RETURN(Tensor qw, fetch(tensors, p + ".weight_packed", {DType::kI32}, {out, in / 8}, f));
        LLMQ_ASSIGN_OR_RETURN(Tensor s, fetch(tensors, p + ".weight_scale", kFloatScaleDtypes, {out, G}, f));
        LLMQ_ASSIGN_OR_RETURN(Tensor shape, fetch(tensors, p + ".weight_shape", {DType::kI64, DType::kI32}, {2}, f));
        const int64_t s0 = shape.dtype() == DType::kI64 ? shape.data<int64_t>()[0] : shape.data<int32_t>()[0];
        const int64_t s1 = shape.dtype() == DType::kI64 ? shape.data<int64_t>()[1] : shape.data<int32_t>()[1];
        if (s0 != out || s1 != in)
          return Status::error(tensors.file_of(p + ".weight_shape") + ": tensor " + p + ".weight_shape holds [" +
                               std::to_string(s0) + ", " + std::to_string(s1) + "], expected [" + std::to_string(out) +
                               ", " + std::to_string(in) + "]");
        const uint32_t* w = static_cast<const uint32_t*>(qw.raw());
        unpack_sequential_rows_tiled(c, out, in, [&](int64_t n, int64_t word) { return w[n * (in / 8) + word]; });
        if (info.symmetric) {
          std::memset(z, 8, static_cast<size_t>(out * G));
        } else {
          if (out % 8 != 0)
            return Status::error(what + ": out_features " + std::to_string(out) + " is not a multiple of 8");
          LLMQ_ASSIGN_OR_RETURN(Tensor zp, fetch(tensors, p + ".weight_zero_point", {DType::kI32}, {out / 8, G}, f));
          const uint32_t* wz = static_cast<const uint32_t*>(zp.raw());
          for (int64_t n = 0; n < out; ++n)
            for (int64_t g = 0; g < G; ++g) z[n * G + g] = unpack_nibble_sequential(wz[(n / 8) * G + g], n % 8);
        }
        if (info.act_order) {
          LLMQ_ASSIGN_OR_RETURN(q.g_idx, fetch(tensors, p + ".weight_g_idx", {DType::kI32}, {in}, f));
        }
        q.scale_dtype = s.dtype();
        q.scales = scales_f32(s, false);
        break;
      }
    }
  }
  const std::string problem = validate(q);
  if (!problem.empty()) return Status::error(what + ": " + problem);
  return q;
}

}  // namespace llmq
