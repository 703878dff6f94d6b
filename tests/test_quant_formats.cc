// Quantized output formats (formats.md A-E): the worked bit examples through the real packers,
// every tensor's name/dtype/shape for Llama-shaped linears, the quantization_config blocks
// compared as JSON with the document's literals, pack -> safetensors file -> unpack round trips
// for all five formats, one bad checkpoint/config per failure kind, and the CPU linears used
// to evaluate quantized checkpoints (exact W8A8 emulation).
#include "formats/quant_formats.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <numeric>
#include <random>

#include "core/numeric.h"
#include "formats/int4_packing.h"
#include "model/quantized_linear.h"
#include "quantizers/fp8.h"
#include "quantizers/int_grid.h"
#include "quantizers/rtn.h"
#include "tests/test_data.h"

namespace llmq {
namespace {

using nlohmann::json;

::testing::AssertionResult HasSub(const std::string& msg, const std::string& part) {
  if (msg.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "\"" << msg << "\" does not contain \"" << part << "\"";
}

// ---- building QuantizedLinears ---------------------------------------------------------------

// Fluent description of a random int4 linear: Int4Spec().shape(24, 256).asym().act_order().
struct Int4Spec {
  int64_t out = 16, in = 256, group_size = 128;
  bool symmetric = true, with_act_order = false;
  DType scale_dtype = DType::kF16;
  unsigned rng_seed = 1;
  Int4Spec& shape(int64_t o, int64_t i) { out = o, in = i; return *this; }
  Int4Spec& group(int64_t g) { group_size = g; return *this; }
  Int4Spec& asym() { symmetric = false; return *this; }
  Int4Spec& act_order(bool on = true) { with_act_order = on; return *this; }
  Int4Spec& dtype(DType t) { scale_dtype = t; return *this; }
  Int4Spec& seed(unsigned s) { rng_seed = s; return *this; }
};

// Random but valid int4 linear: codes 0..15, zeros 8 (sym) or 1..15 (asym; GPTQ v1 cannot store
// 0), scales exactly representable in scale_dtype, and for act-order a g_idx from a random
// column permutation (groups formed along the permuted order, formats.md C.4).
QuantizedLinear random_int4(const Int4Spec& s) {
  std::mt19937 rng(s.rng_seed);
  QuantizedLinear q;
  q.scheme = QuantScheme::kInt4Group;
  q.out_features = s.out;
  q.in_features = s.in;
  q.group_size = s.group_size;
  q.symmetric = s.symmetric;
  q.scale_dtype = s.scale_dtype;
  const int64_t G = s.in / s.group_size;
  q.codes = Tensor(DType::kU8, {s.out, s.in});
  q.scales = Tensor(DType::kF32, {s.out, G});
  q.zeros = Tensor(DType::kU8, {s.out, G});
  std::uniform_int_distribution<int> code(0, 15), zero(1, 15);
  std::uniform_real_distribution<float> scale(1e-3f, 3e-2f);
  for (int64_t i = 0; i < q.codes.numel(); ++i) q.codes.data<uint8_t>()[i] = static_cast<uint8_t>(code(rng));
  for (int64_t i = 0; i < s.out * G; ++i) {
    q.scales.data<float>()[i] = round_scale_to(scale(rng), s.scale_dtype);
    q.zeros.data<uint8_t>()[i] = static_cast<uint8_t>(s.symmetric ? 8 : zero(rng));
  }
  if (s.with_act_order) {
    std::vector<int32_t> perm(s.in);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    q.g_idx = Tensor(DType::kI32, {s.in});
    for (int64_t pos = 0; pos < s.in; ++pos) q.g_idx.data<int32_t>()[perm[pos]] = static_cast<int32_t>(pos / s.group_size);
  }
  EXPECT_EQ(validate(q), "");
  return q;
}

Tensor random_weight(int64_t out, int64_t in, unsigned seed) {
  Tensor w(DType::kF32, {out, in});
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 0.02f);
  for (int64_t i = 0; i < w.numel(); ++i) w.data<float>()[i] = d(rng);
  return w;
}

QuantizedLinear random_fp8(int64_t out, int64_t in, unsigned seed) {
  return quantize_fp8_channel(random_weight(out, in, seed).view(), Fp8Config{DType::kBF16});
}
QuantizedLinear random_int8(int64_t out, int64_t in, unsigned seed) {
  return quantize_rtn_int8(random_weight(out, in, seed).view(), Int8Config{DType::kBF16});
}

QuantConfigInfo info_for(QuantFormat f, bool symmetric = true, bool act_order = false) {
  QuantConfigInfo info;
  info.format = f;
  info.symmetric = symmetric;
  info.act_order = act_order;
  return info;
}

std::vector<NamedTensor> pack_ok(const std::string& p, const QuantizedLinear& q, QuantFormat f) {
  auto r = pack_quantized_linear(p, q, f);
  EXPECT_TRUE(r.has_value()) << r.status().message();
  return r.has_value() ? std::move(r).value() : std::vector<NamedTensor>{};
}

const NamedTensor* find(const std::vector<NamedTensor>& ts, const std::string& name) {
  for (const auto& t : ts)
    if (t.name == name) return &t;
  return nullptr;
}

uint32_t word(const std::vector<NamedTensor>& ts, const std::string& name, int64_t i) {
  const NamedTensor* t = find(ts, name);
  EXPECT_NE(t, nullptr) << name;
  if (!t) return 0;
  EXPECT_EQ(t->tensor.dtype(), DType::kI32) << name;
  return static_cast<const uint32_t*>(t->tensor.raw())[i];
}

// ---- worked examples (formats.md B.3, C.2, C.5) ----------------------------------------------

TEST(QuantFormatsBits, AwqInterleaveWorkedExample) {
  // Output columns 0..7 hold codes 1..8 at input row 0 (and zeros 1..8): one AWQ word each.
  QuantizedLinear q = random_int4(Int4Spec().shape(8, 128).asym());
  for (int n = 0; n < 8; ++n) {
    q.codes.data<uint8_t>()[n * 128 + 0] = static_cast<uint8_t>(n + 1);
    q.zeros.data<uint8_t>()[n] = static_cast<uint8_t>(n + 1);
  }
  const auto ts = pack_ok("l", q, QuantFormat::kAwqGemm);
  EXPECT_EQ(word(ts, "l.qweight", 0), 0x86427531u);
  EXPECT_EQ(static_cast<int32_t>(word(ts, "l.qweight", 0)), -2042464975);
  EXPECT_EQ(word(ts, "l.qzeros", 0), 0x86427531u);
}

TEST(QuantFormatsBits, SequentialWorkedExampleGptqAndCt) {
  // Input columns 0..7 of output row 0 hold 1..8: GPTQ packs along in -> qweight[0, 0];
  // compressed-tensors also packs along in -> weight_packed[0, 0]; both sequential.
  // BF16 scales in the F16 normal range are exact in both formats' scale dtypes.
  QuantizedLinear q = random_int4(Int4Spec().shape(8, 128).dtype(DType::kBF16));
  for (int k = 0; k < 8; ++k) q.codes.data<uint8_t>()[k] = static_cast<uint8_t>(k + 1);
  EXPECT_EQ(word(pack_ok("l", q, QuantFormat::kGptqV1), "l.qweight", 0), 0x87654321u);
  EXPECT_EQ(word(pack_ok("l", q, QuantFormat::kCtPack), "l.weight_packed", 0), 0x87654321u);
}

TEST(QuantFormatsBits, SpreadNibblesIsEveryElementInItsByte) {
  EXPECT_EQ(spread_nibbles_sequential(0x87654321u), 0x0807060504030201ull);
  std::mt19937 rng(31);
  for (int i = 0; i < 1000; ++i) {
    const uint32_t w = static_cast<uint32_t>(rng());
    const uint64_t v = spread_nibbles_sequential(w);
    for (int j = 0; j < 8; ++j) ASSERT_EQ((v >> (8 * j)) & 0xFFu, unpack_nibble_sequential(w, j)) << std::hex << w;
  }
}

TEST(QuantFormatsBits, CompressedTensorsSignedWorkedExample) {
  // Signed -8,-1,0,1,7,3,-2,5 are codes (signed + 8) 0,7,8,9,15,11,6,13 -> 0xD6BF9870, both for
  // weight_packed (along in) and for weight_zero_point (along out, dim 0).
  const int signed_vals[8] = {-8, -1, 0, 1, 7, 3, -2, 5};
  QuantizedLinear q = random_int4(Int4Spec().shape(8, 128).asym().dtype(DType::kBF16));
  for (int j = 0; j < 8; ++j) {
    q.codes.data<uint8_t>()[j] = static_cast<uint8_t>(signed_vals[j] + 8);
    q.zeros.data<uint8_t>()[j] = static_cast<uint8_t>(signed_vals[j] + 8);  // rows 0..7, group 0
  }
  const auto ts = pack_ok("l", q, QuantFormat::kCtPack);
  EXPECT_EQ(word(ts, "l.weight_packed", 0), 0xD6BF9870u);
  EXPECT_EQ(static_cast<int32_t>(word(ts, "l.weight_packed", 0)), -692086672);
  EXPECT_EQ(word(ts, "l.weight_zero_point", 0), 0xD6BF9870u);
}

TEST(QuantFormatsBits, GptqSymmetricZerosAre0x77777777) {
  const QuantizedLinear q = random_int4(Int4Spec().shape(32, 512));
  const auto ts = pack_ok("l", q, QuantFormat::kGptqV1);
  const NamedTensor* qz = find(ts, "l.qzeros");
  ASSERT_NE(qz, nullptr);
  ASSERT_EQ(qz->tensor.shape(), (Shape{4, 4}));
  for (int64_t i = 0; i < qz->tensor.numel(); ++i) EXPECT_EQ(word(ts, "l.qzeros", i), 0x77777777u) << i;
}

TEST(QuantFormatsBits, GptqAsymStoresZeroMinusOneAndRefusesZeroZero) {
  QuantizedLinear q = random_int4(Int4Spec().shape(8, 128).asym().dtype(DType::kBF16));
  for (int n = 0; n < 8; ++n) q.zeros.data<uint8_t>()[n] = static_cast<uint8_t>(n + 1);
  EXPECT_EQ(word(pack_ok("l", q, QuantFormat::kGptqV1), "l.qzeros", 0), 0x76543210u);
  q.zeros.data<uint8_t>()[5] = 0;
  const auto r = pack_quantized_linear("model.layers.0.mlp.up_proj", q, QuantFormat::kGptqV1);
  ASSERT_FALSE(r.has_value());
  EXPECT_TRUE(HasSub(r.status().message(), "model.layers.0.mlp.up_proj"));
  EXPECT_TRUE(HasSub(r.status().message(), "zero point 0"));
  EXPECT_TRUE(HasSub(r.status().message(), "out 5"));
  // The same linear is fine in the formats that store true zeros.
  EXPECT_TRUE(pack_quantized_linear("l", q, QuantFormat::kAwqGemm).has_value());
  EXPECT_TRUE(pack_quantized_linear("l", q, QuantFormat::kCtPack).has_value());
}

// ---- tensor inventory ------------------------------------------------------------------------

struct Expect {
  std::string suffix;
  DType dtype;
  Shape shape;
};

void expect_inventory(const std::vector<NamedTensor>& ts, const std::string& p, const std::vector<Expect>& want) {
  ASSERT_EQ(ts.size(), want.size()) << p;
  for (const auto& e : want) {
    const NamedTensor* t = find(ts, p + e.suffix);
    ASSERT_NE(t, nullptr) << p + e.suffix;
    EXPECT_EQ(t->tensor.dtype(), e.dtype) << p + e.suffix;
    EXPECT_EQ(t->tensor.shape(), e.shape) << p + e.suffix;
  }
}

// Llama-3-8B has q_proj [4096, 4096] and down_proj [4096, 14336]; formats.md C.2 gives the GPTQ
// shapes for those exactly. Constant codes keep the full-size linears cheap.
QuantizedLinear constant_int4(int64_t out, int64_t in, bool act_order) {
  QuantizedLinear q;
  q.out_features = out;
  q.in_features = in;
  q.group_size = 128;
  q.scale_dtype = DType::kF16;
  q.codes = Tensor(DType::kU8, {out, in});
  std::memset(q.codes.raw(), 3, static_cast<size_t>(out * in));
  q.scales = Tensor(DType::kF32, {out, in / 128});
  std::fill(q.scales.data<float>(), q.scales.data<float>() + q.scales.numel(), 0.0078125f);
  q.zeros = Tensor(DType::kU8, {out, in / 128});
  std::memset(q.zeros.raw(), 8, static_cast<size_t>(q.zeros.numel()));
  if (act_order) {
    q.g_idx = Tensor(DType::kI32, {in});
    for (int64_t k = 0; k < in; ++k) q.g_idx.data<int32_t>()[k] = static_cast<int32_t>((in - 1 - k) / 128);
  }
  return q;
}

TEST(QuantFormatsInventory, GptqLlama3_8bShapesFromTheSpec) {
  const std::string q_p = "model.layers.0.self_attn.q_proj", d_p = "model.layers.0.mlp.down_proj";
  expect_inventory(pack_ok(q_p, constant_int4(4096, 4096, false), QuantFormat::kGptqV1), q_p,
                   {{".qweight", DType::kI32, {512, 4096}},
                    {".qzeros", DType::kI32, {32, 512}},
                    {".scales", DType::kF16, {32, 4096}},
                    {".g_idx", DType::kI32, {4096}}});
  expect_inventory(pack_ok(d_p, constant_int4(4096, 14336, false), QuantFormat::kGptqV1), d_p,
                   {{".qweight", DType::kI32, {1792, 4096}},
                    {".qzeros", DType::kI32, {112, 512}},
                    {".scales", DType::kF16, {112, 4096}},
                    {".g_idx", DType::kI32, {14336}}});
}

TEST(QuantFormatsInventory, EveryFormatOnLlamaShapedAnalogue) {
  // Llama-3-8B / 16: H = 256, I = 896, kv = 64; G = in / 128 (2 for q/k/v, 7 for down).
  struct Lin {
    std::string p;
    int64_t out, in;
  };
  for (const Lin& l : {Lin{"model.layers.3.self_attn.q_proj", 256, 256}, Lin{"model.layers.3.self_attn.k_proj", 64, 256},
                       Lin{"model.layers.3.mlp.down_proj", 256, 896}}) {
    SCOPED_TRACE(l.p);
    const int64_t out = l.out, in = l.in, G = in / 128;
    const QuantizedLinear sym = random_int4(Int4Spec().shape(out, in));
    const QuantizedLinear sym_bf = random_int4(Int4Spec().shape(out, in).dtype(DType::kBF16));
    const QuantizedLinear asym_ao = random_int4(Int4Spec().shape(out, in).asym().act_order().dtype(DType::kBF16));
    const QuantizedLinear asym = random_int4(Int4Spec().shape(out, in).asym());
    expect_inventory(pack_ok(l.p, random_fp8(out, in, 3), QuantFormat::kCtFloat), l.p,
                     {{".weight", DType::kF8E4M3, {out, in}}, {".weight_scale", DType::kBF16, {out, 1}}});
    expect_inventory(pack_ok(l.p, random_int8(out, in, 4), QuantFormat::kCtInt), l.p,
                     {{".weight", DType::kI8, {out, in}}, {".weight_scale", DType::kBF16, {out, 1}}});
    expect_inventory(pack_ok(l.p, sym_bf, QuantFormat::kCtPack), l.p,
                     {{".weight_packed", DType::kI32, {out, in / 8}},
                      {".weight_scale", DType::kBF16, {out, G}},
                      {".weight_shape", DType::kI64, {2}}});
    const auto ct_asym = pack_ok(l.p, asym_ao, QuantFormat::kCtPack);
    expect_inventory(ct_asym, l.p,
                     {{".weight_packed", DType::kI32, {out, in / 8}},
                      {".weight_scale", DType::kBF16, {out, G}},
                      {".weight_shape", DType::kI64, {2}},
                      {".weight_zero_point", DType::kI32, {out / 8, G}},
                      {".weight_g_idx", DType::kI32, {in}}});
    const int64_t* shape = find(ct_asym, l.p + ".weight_shape")->tensor.data<int64_t>();
    EXPECT_EQ(shape[0], out);
    EXPECT_EQ(shape[1], in);
    expect_inventory(pack_ok(l.p, asym, QuantFormat::kAwqGemm), l.p,
                     {{".qweight", DType::kI32, {in, out / 8}},
                      {".qzeros", DType::kI32, {G, out / 8}},
                      {".scales", DType::kF16, {G, out}}});
    const auto gptq = pack_ok(l.p, sym, QuantFormat::kGptqV1);
    expect_inventory(gptq, l.p,
                     {{".qweight", DType::kI32, {in / 8, out}},
                      {".qzeros", DType::kI32, {G, out / 8}},
                      {".scales", DType::kF16, {G, out}},
                      {".g_idx", DType::kI32, {in}}});
    // Without act-order g_idx is still written, as k / 128.
    const int32_t* g_idx = find(gptq, l.p + ".g_idx")->tensor.data<int32_t>();
    for (int64_t k = 0; k < in; ++k) ASSERT_EQ(g_idx[k], k / 128) << k;
    // F16 scales are transposed [G, out]: scales[g, n] == s[n, g].
    const uint16_t* sc = find(gptq, l.p + ".scales")->tensor.data<uint16_t>();
    for (int64_t n = 0; n < out; ++n)
      for (int64_t g = 0; g < G; ++g) ASSERT_EQ(f16_to_f32(sc[g * out + n]), sym.scales.data<float>()[n * G + g]);
  }
}

TEST(QuantFormatsInventory, PackRefusesWhatTheFormatCannotHold) {
  const auto msg = [](const QuantizedLinear& q, QuantFormat f) {
    auto r = pack_quantized_linear("model.layers.1.self_attn.o_proj", q, f);
    EXPECT_FALSE(r.has_value());
    return r.has_value() ? std::string() : r.status().message();
  };
  // Scheme / format mismatch.
  const QuantizedLinear fp8 = random_fp8(16, 64, 5);
  for (QuantFormat f : {QuantFormat::kCtInt, QuantFormat::kCtPack, QuantFormat::kAwqGemm, QuantFormat::kGptqV1})
    EXPECT_TRUE(HasSub(msg(fp8, f), "cannot be written as"));
  EXPECT_TRUE(HasSub(msg(random_int4(Int4Spec()), QuantFormat::kCtFloat), "cannot be written as"));
  // Widths not multiple of 8.
  EXPECT_TRUE(HasSub(msg(random_int4(Int4Spec().shape(12, 256).asym()), QuantFormat::kAwqGemm),
                     "out_features = 12 is not a multiple of 8"));
  EXPECT_TRUE(HasSub(msg(random_int4(Int4Spec().shape(12, 256)), QuantFormat::kGptqV1),
                     "out_features = 12 is not a multiple of 8"));
  EXPECT_TRUE(HasSub(msg(random_int4(Int4Spec().shape(16, 12).group(4)), QuantFormat::kCtPack),
                     "in_features = 12 is not a multiple of 8"));
  // Scales that the format's dtype cannot hold exactly (codes were computed with another scale).
  QuantizedLinear q = random_int4(Int4Spec());
  q.scales.data<float>()[3] = 1.0f + 1.0f / 1024;  // exact in F16, not in BF16
  EXPECT_TRUE(pack_quantized_linear("l", q, QuantFormat::kGptqV1).has_value());
  EXPECT_TRUE(HasSub(msg(q, QuantFormat::kCtPack), "not exactly representable in BF16"));
  q.scales.data<float>()[3] = 1.0f + 1.0f / 4096;  // in neither
  EXPECT_TRUE(HasSub(msg(q, QuantFormat::kGptqV1), "not exactly representable in F16"));
  // AWQ has no g_idx.
  EXPECT_TRUE(HasSub(msg(random_int4(Int4Spec().asym().act_order()), QuantFormat::kAwqGemm), "g_idx"));
  // Symmetric with a zero other than 8; and an invalid linear.
  q = random_int4(Int4Spec());
  q.zeros.data<uint8_t>()[0] = 7;
  EXPECT_TRUE(HasSub(msg(q, QuantFormat::kCtPack), "symmetric"));
  q = random_int4(Int4Spec());
  q.codes.data<uint8_t>()[9] = 16;
  EXPECT_TRUE(HasSub(msg(q, QuantFormat::kGptqV1), "out of range"));
}

// ---- quantization_config ---------------------------------------------------------------------

// The blocks of formats.md, verbatim (only the value of "quantization_config").
const char* kSpecA1 = R"({
  "quant_method": "compressed-tensors",
  "format": "float-quantized",
  "quantization_status": "compressed",
  "version": "0.9.4",
  "global_compression_ratio": null,
  "kv_cache_scheme": null,
  "sparsity_config": {},
  "ignore": ["lm_head"],
  "config_groups": {
    "group_0": {
      "targets": ["Linear"],
      "weights": {
        "num_bits": 8, "type": "float", "symmetric": true,
        "strategy": "channel", "group_size": null, "block_structure": null,
        "dynamic": false, "actorder": null,
        "observer": "minmax", "observer_kwargs": {}
      },
      "input_activations": {
        "num_bits": 8, "type": "float", "symmetric": true,
        "strategy": "token", "group_size": null, "block_structure": null,
        "dynamic": true, "actorder": null,
        "observer": null, "observer_kwargs": {}
      },
      "output_activations": null
    }
  }
})";

const char* kSpecB1 = R"({
  "quant_method": "awq",
  "bits": 4,
  "group_size": 128,
  "zero_point": true,
  "version": "gemm",
  "modules_to_not_convert": null
})";

const char* kSpecC1 = R"({
  "quant_method": "gptq",
  "bits": 4,
  "group_size": 128,
  "desc_act": false,
  "sym": true,
  "damp_percent": 0.01,
  "static_groups": false,
  "true_sequential": true,
  "checkpoint_format": "gptq",
  "model_name_or_path": null,
  "model_file_base_name": null
})";

const char* kSpecC5 = R"({
  "quant_method": "compressed-tensors",
  "format": "pack-quantized",
  "quantization_status": "compressed",
  "version": "0.9.4",
  "global_compression_ratio": null,
  "kv_cache_scheme": null,
  "sparsity_config": {},
  "ignore": ["lm_head"],
  "config_groups": {
    "group_0": {
      "targets": ["Linear"],
      "weights": {
        "num_bits": 4, "type": "int", "symmetric": true,
        "strategy": "group", "group_size": 128, "block_structure": null,
        "dynamic": false, "actorder": null,
        "observer": "minmax", "observer_kwargs": {}
      },
      "input_activations": null,
      "output_activations": null
    }
  }
})";

const char* kSpecD1 = R"({
  "quant_method": "compressed-tensors",
  "format": "int-quantized",
  "quantization_status": "compressed",
  "version": "0.9.4",
  "global_compression_ratio": null,
  "kv_cache_scheme": null,
  "sparsity_config": {},
  "ignore": ["lm_head"],
  "config_groups": {
    "group_0": {
      "targets": ["Linear"],
      "weights": {
        "num_bits": 8, "type": "int", "symmetric": true,
        "strategy": "channel", "group_size": null, "block_structure": null,
        "dynamic": false, "actorder": null,
        "observer": "minmax", "observer_kwargs": {}
      },
      "input_activations": {
        "num_bits": 8, "type": "int", "symmetric": true,
        "strategy": "token", "group_size": null, "block_structure": null,
        "dynamic": true, "actorder": null,
        "observer": null, "observer_kwargs": {}
      },
      "output_activations": null
    }
  }
})";

json produced(const QuantConfigInfo& info) { return json::parse(quantization_config_json(info).dump()); }

bool mentions_key(const json& j, const std::string& key) {
  if (j.is_object()) {
    for (auto it = j.begin(); it != j.end(); ++it)
      if (it.key() == key || mentions_key(it.value(), key)) return true;
  } else if (j.is_array()) {
    for (const auto& e : j)
      if (mentions_key(e, key)) return true;
  }
  return false;
}

TEST(QuantFormatsConfig, EqualsTheSpecBlocks) {
  EXPECT_EQ(produced(info_for(QuantFormat::kCtFloat)), json::parse(kSpecA1));
  EXPECT_EQ(produced(info_for(QuantFormat::kAwqGemm, false)), json::parse(kSpecB1));
  EXPECT_EQ(produced(info_for(QuantFormat::kGptqV1)), json::parse(kSpecC1));
  EXPECT_EQ(produced(info_for(QuantFormat::kCtPack)), json::parse(kSpecC5));
  EXPECT_EQ(produced(info_for(QuantFormat::kCtInt)), json::parse(kSpecD1));
  for (QuantFormat f : {QuantFormat::kCtFloat, QuantFormat::kCtInt, QuantFormat::kCtPack, QuantFormat::kAwqGemm,
                        QuantFormat::kGptqV1}) {
    const json j = produced(info_for(f, false, f != QuantFormat::kAwqGemm));
    EXPECT_FALSE(mentions_key(j, "scale_dtype")) << j.dump();  // formats.md 0.2
    EXPECT_FALSE(mentions_key(j, "zp_dtype")) << j.dump();
  }
}

TEST(QuantFormatsConfig, VariantsFollowTheInfo) {
  // CT W4A16 asym + act-order: symmetric false, actorder "group"; the ignore list is copied.
  QuantConfigInfo info = info_for(QuantFormat::kCtPack, false, true);
  info.ignore = {"lm_head", "model.layers.0.mlp.down_proj"};
  json want = json::parse(kSpecC5);
  want["config_groups"]["group_0"]["weights"]["symmetric"] = false;
  want["config_groups"]["group_0"]["weights"]["actorder"] = "group";
  want["ignore"] = {"lm_head", "model.layers.0.mlp.down_proj"};
  EXPECT_EQ(produced(info), want);
  // GPTQ asym + desc_act, other damping.
  info = info_for(QuantFormat::kGptqV1, false, true);
  info.damp_percent = 0.05;
  want = json::parse(kSpecC1);
  want["sym"] = false;
  want["desc_act"] = true;
  want["damp_percent"] = 0.05;
  EXPECT_EQ(produced(info), want);
  // Static per-tensor INT8 activations (D.1 text).
  info = info_for(QuantFormat::kCtInt);
  info.static_activations = true;
  want = json::parse(kSpecD1);
  want["config_groups"]["group_0"]["input_activations"] = json::parse(R"({
      "num_bits": 8, "type": "int", "symmetric": true, "strategy": "tensor", "group_size": null,
      "block_structure": null, "dynamic": false, "actorder": null, "observer": "minmax",
      "observer_kwargs": {}})");
  EXPECT_EQ(produced(info), want);
}

TEST(QuantFormatsConfig, ExtraConfigFiles) {
  EXPECT_TRUE(extra_config_files(info_for(QuantFormat::kCtFloat)).empty());
  EXPECT_TRUE(extra_config_files(info_for(QuantFormat::kCtPack)).empty());
  auto gptq = extra_config_files(info_for(QuantFormat::kGptqV1));
  ASSERT_EQ(gptq.size(), 1u);
  EXPECT_EQ(gptq[0].first, "quantize_config.json");
  EXPECT_EQ(json::parse(gptq[0].second), json::parse(kSpecC1));
  auto awq = extra_config_files(info_for(QuantFormat::kAwqGemm, false));
  ASSERT_EQ(awq.size(), 1u);
  EXPECT_EQ(awq[0].first, "quant_config.json");
  EXPECT_EQ(json::parse(awq[0].second), json::parse(R"({"zero_point":true,"q_group_size":128,"w_bit":4,"version":"GEMM"})"));
}

// config.json text holding the block under quantization_config.
json config_with(const json& qc) {
  json c = {{"architectures", {"LlamaForCausalLM"}}, {"hidden_size", 256}};
  c["quantization_config"] = qc;
  return c;
}

TEST(QuantFormatsConfig, ParseInvertsEveryProducedConfig) {
  struct Case {
    QuantFormat f;
    bool sym, act_order, static_act;
  };
  for (const Case& c : {Case{QuantFormat::kCtFloat, true, false, false}, Case{QuantFormat::kCtInt, true, false, false},
                        Case{QuantFormat::kCtInt, true, false, true}, Case{QuantFormat::kCtPack, true, false, false},
                        Case{QuantFormat::kCtPack, false, true, false}, Case{QuantFormat::kAwqGemm, false, false, false},
                        Case{QuantFormat::kGptqV1, true, false, false}, Case{QuantFormat::kGptqV1, false, true, false}}) {
    QuantConfigInfo info = info_for(c.f, c.sym, c.act_order);
    info.static_activations = c.static_act;
    info.damp_percent = 0.02;
    SCOPED_TRACE(quantization_config_json(info).dump());
    const auto r = parse_quantization_config(config_with(produced(info)), "out/config.json");
    ASSERT_TRUE(r.has_value()) << r.status().message();
    EXPECT_EQ(r->format, c.f);
    EXPECT_EQ(r->act_order, c.act_order);
    EXPECT_EQ(r->static_activations, c.static_act);
    if (c.f == QuantFormat::kCtPack || c.f == QuantFormat::kGptqV1 || c.f == QuantFormat::kAwqGemm) {
      EXPECT_EQ(r->symmetric, c.sym);
      EXPECT_EQ(r->group_size, 128);
    }
    if (c.f == QuantFormat::kGptqV1) {
      EXPECT_EQ(r->damp_percent, 0.02);
    }
    EXPECT_EQ(r->ignore, std::vector<std::string>{"lm_head"});
  }
  // quantize_config.json style (bare dict) and AutoAWQ's w_bit / q_group_size spelling.
  auto r = parse_quantization_config(json::parse(kSpecC1), "quantize_config.json");
  ASSERT_TRUE(r.has_value()) << r.status().message();
  EXPECT_EQ(r->format, QuantFormat::kGptqV1);
  r = parse_quantization_config(
      config_with(json::parse(R"({"quant_method":"awq","w_bit":4,"q_group_size":64,"zero_point":true,"version":"GEMM"})")),
      "config.json");
  ASSERT_TRUE(r.has_value()) << r.status().message();
  EXPECT_EQ(r->group_size, 64);
  // naive-quantized carries the same tensors as int-/float-quantized.
  json naive = json::parse(kSpecD1);
  naive["format"] = "naive-quantized";
  r = parse_quantization_config(config_with(naive), "config.json");
  ASSERT_TRUE(r.has_value()) << r.status().message();
  EXPECT_EQ(r->format, QuantFormat::kCtInt);
  naive = json::parse(kSpecA1);
  naive["format"] = "naive-quantized";
  r = parse_quantization_config(config_with(naive), "config.json");
  ASSERT_TRUE(r.has_value()) << r.status().message();
  EXPECT_EQ(r->format, QuantFormat::kCtFloat);
}

TEST(QuantFormatsConfig, ParseRefusesWhatLlmqCannotRead) {
  const auto refuse = [](const json& config, const std::string& part) {
    const auto r = parse_quantization_config(config, "ckpt/config.json");
    ASSERT_FALSE(r.has_value()) << part;
    EXPECT_TRUE(HasSub(r.status().message(), "ckpt/config.json")) << r.status().message();
    EXPECT_TRUE(HasSub(r.status().message(), part));
  };
  refuse(json{{"hidden_size", 256}}, "no quantization_config");
  json g = json::parse(kSpecC1);
  g["checkpoint_format"] = "gptq_v2";
  refuse(config_with(g), "gptq_v2");
  g = json::parse(kSpecC1);
  g["bits"] = 8;
  refuse(config_with(g), "8 bits");
  g = json::parse(kSpecC1);
  g.erase("desc_act");
  refuse(config_with(g), "desc_act");
  refuse(config_with(json{{"quant_method", "bitsandbytes"}}), "quant_method \"bitsandbytes\"");
  json a = json::parse(kSpecB1);
  a["zero_point"] = false;
  refuse(config_with(a), "zero_point false");
  a = json::parse(kSpecB1);
  a["version"] = "gemv";
  refuse(config_with(a), "\"gemv\"");
  json ct = json::parse(kSpecC5);
  ct["format"] = "float-quantized";
  refuse(config_with(ct), "pack-quantized");
  ct = json::parse(kSpecA1);
  ct["format"] = "pack-quantized";
  refuse(config_with(ct), "float-quantized");
  ct = json::parse(kSpecA1);
  ct["config_groups"]["group_0"]["input_activations"] = nullptr;
  refuse(config_with(ct), "weight-only");
  ct = json::parse(kSpecD1);
  ct["config_groups"]["group_0"]["input_activations"]["symmetric"] = false;
  refuse(config_with(ct), "asymmetric input");
  ct = json::parse(kSpecC5);
  ct["config_groups"]["group_0"]["weights"]["num_bits"] = 2;
  refuse(config_with(ct), "2-bit");
  ct = json::parse(kSpecC5);
  ct["config_groups"]["group_1"] = ct["config_groups"]["group_0"];
  refuse(config_with(ct), "exactly one group");
}

// ---- round trip through a safetensors file ---------------------------------------------------

void expect_same_tensor(const Tensor& a, const Tensor& b, const std::string& what) {
  EXPECT_EQ(a.empty(), b.empty()) << what;
  if (a.empty() || b.empty()) return;
  EXPECT_EQ(a.dtype(), b.dtype()) << what;
  ASSERT_EQ(a.shape(), b.shape()) << what;
  EXPECT_EQ(std::memcmp(a.raw(), b.raw(), static_cast<size_t>(a.nbytes())), 0) << what;
}

void expect_same_linear(const QuantizedLinear& a, const QuantizedLinear& b) {
  EXPECT_EQ(a.scheme, b.scheme);
  EXPECT_EQ(a.out_features, b.out_features);
  EXPECT_EQ(a.in_features, b.in_features);
  EXPECT_EQ(a.group_size, b.group_size);
  EXPECT_EQ(a.symmetric, b.symmetric);
  EXPECT_EQ(a.scale_dtype, b.scale_dtype);
  expect_same_tensor(a.codes, b.codes, "codes");
  expect_same_tensor(a.scales, b.scales, "scales");
  expect_same_tensor(a.zeros, b.zeros, "zeros");
  expect_same_tensor(a.g_idx, b.g_idx, "g_idx");
}

struct Written {
  std::string dir;
  std::vector<NamedTensor> tensors;  // what was packed (for byte comparisons)
};

// Packs each (prefix, linear) into one model.safetensors in a fresh directory.
Written write_checkpoint(const std::string& name, const std::vector<std::pair<std::string, const QuantizedLinear*>>& ls,
                         QuantFormat f) {
  Written w{::llmq::testing::scratch_dir(name), {}};
  SafetensorsWriter writer;
  for (const auto& [p, q] : ls)
    for (auto& t : pack_ok(p, *q, f)) {
      writer.add(t.name, t.tensor.view());
      w.tensors.push_back(std::move(t));
    }
  const Status s = writer.write(w.dir + "/model.safetensors");
  EXPECT_TRUE(s.is_ok()) << s.message();
  return w;
}

TEST(QuantFormatsRoundTrip, PackWriteReadUnpackIsIdenticalForEveryFormat) {
  const QuantizedLinear fp8 = random_fp8(24, 128, 21);
  const QuantizedLinear int8 = random_int8(24, 128, 22);
  // INT4 at 136 x 640: the unpacking walks tiles of 64 rows x 256 columns, so two whole tiles
  // and a partial one each way.
  const QuantizedLinear ct_sym = random_int4(Int4Spec().shape(136, 640).dtype(DType::kBF16).seed(23));
  const QuantizedLinear ct_asym_ao = random_int4(Int4Spec().shape(136, 640).group(64).asym().act_order().dtype(DType::kBF16).seed(24));
  const QuantizedLinear awq = random_int4(Int4Spec().shape(136, 640).asym().seed(25));
  const QuantizedLinear gptq_sym = random_int4(Int4Spec().shape(136, 640).seed(26));
  const QuantizedLinear gptq_asym_ao = random_int4(Int4Spec().shape(136, 640).group(32).asym().act_order().seed(27));
  ASSERT_EQ(validate(fp8), "");
  ASSERT_EQ(validate(int8), "");

  struct Case {
    const char* name;
    QuantFormat f;
    const QuantizedLinear* q;
    bool sym, act_order;
  };
  for (const Case& c : {Case{"fp8", QuantFormat::kCtFloat, &fp8, true, false},
                        Case{"int8", QuantFormat::kCtInt, &int8, true, false},
                        Case{"ct-sym", QuantFormat::kCtPack, &ct_sym, true, false},
                        Case{"ct-asym-ao", QuantFormat::kCtPack, &ct_asym_ao, false, true},
                        Case{"awq", QuantFormat::kAwqGemm, &awq, false, false},
                        Case{"gptq-sym", QuantFormat::kGptqV1, &gptq_sym, true, false},
                        Case{"gptq-asym-ao", QuantFormat::kGptqV1, &gptq_asym_ao, false, true}}) {
    SCOPED_TRACE(c.name);
    const std::string p = "model.layers.2.self_attn.v_proj";
    const Written w = write_checkpoint(std::string("rt-") + c.name, {{p, c.q}}, c.f);
    auto ckpt = CheckpointTensors::open(w.dir);
    ASSERT_TRUE(ckpt.has_value()) << ckpt.status().message();
    // The reader learns the settings from the config llmq writes, not from the test.
    QuantConfigInfo written = info_for(c.f, c.sym, c.act_order);
    written.group_size = c.q->group_size > 0 ? c.q->group_size : 128;
    auto info = parse_quantization_config(config_with(produced(written)), w.dir + "/config.json");
    ASSERT_TRUE(info.has_value()) << info.status().message();
    auto back = unpack_quantized_linear(*ckpt, p, *info, c.q->out_features, c.q->in_features);
    ASSERT_TRUE(back.has_value()) << back.status().message();
    expect_same_linear(*c.q, *back);
    // Unpacked -> packed again gives the same bytes.
    const auto again = pack_ok(p, *back, c.f);
    ASSERT_EQ(again.size(), w.tensors.size());
    for (const auto& t : again) {
      const NamedTensor* orig = find(w.tensors, t.name);
      ASSERT_NE(orig, nullptr) << t.name;
      expect_same_tensor(orig->tensor, t.tensor, t.name);
    }
    // And the dequantized weights agree (dequantize is what evaluation uses).
    expect_same_tensor(dequantize(*c.q), dequantize(*back), "dequantized");
    std::filesystem::remove_all(w.dir);
  }
}

// ---- unpack failures: one bad checkpoint per kind --------------------------------------------

// Writes the packed tensors of q after `edit` changed them, and unpacks with info.
Expected<QuantizedLinear> unpack_edited(const std::string& name, const QuantizedLinear& q, const QuantConfigInfo& info,
                                        const std::function<void(std::vector<NamedTensor>&)>& edit, std::string* dir) {
  auto ts = pack_ok("m.l", q, info.format);
  edit(ts);
  *dir = ::llmq::testing::scratch_dir(name);
  SafetensorsWriter writer;
  for (auto& t : ts) writer.add(t.name, std::move(t.tensor));
  EXPECT_TRUE(writer.write(*dir + "/model.safetensors").is_ok());
  auto ckpt = CheckpointTensors::open(*dir);
  EXPECT_TRUE(ckpt.has_value()) << ckpt.status().message();
  if (!ckpt.has_value()) return ckpt.status();
  return unpack_quantized_linear(*ckpt, "m.l", info, q.out_features, q.in_features);
}

void drop(std::vector<NamedTensor>& ts, const std::string& name) {
  ts.erase(std::remove_if(ts.begin(), ts.end(), [&](const NamedTensor& t) { return t.name == name; }), ts.end());
}
Tensor& get(std::vector<NamedTensor>& ts, const std::string& name) {
  for (auto& t : ts)
    if (t.name == name) return t.tensor;
  LLMQ_CHECK(false, "no tensor " << name);
  return ts[0].tensor;
}

TEST(QuantFormatsUnpack, EveryBadTensorIsNamedWithItsFile) {
  struct Bad {
    const char* name;
    QuantFormat f;
    bool sym, act_order;
    std::function<void(std::vector<NamedTensor>&)> edit;
    std::string expect;
  };
  const QuantizedLinear fp8 = random_fp8(16, 64, 31);
  const QuantizedLinear gptq_sym = random_int4(Int4Spec().shape(16, 256));
  const QuantizedLinear asym_f16 = random_int4(Int4Spec().shape(16, 256).asym());
  const QuantizedLinear asym_bf16 = random_int4(Int4Spec().shape(16, 256).asym().dtype(DType::kBF16));
  const std::vector<std::pair<const QuantizedLinear*, Bad>> cases = {
      {&fp8, {"missing", QuantFormat::kCtFloat, true, false, [](std::vector<NamedTensor>& ts) { drop(ts, "m.l.weight_scale"); },
              "tensor m.l.weight_scale is missing"}},
      {&fp8, {"dtype", QuantFormat::kCtFloat, true, false,
              [](std::vector<NamedTensor>& ts) { get(ts, "m.l.weight") = Tensor(DType::kI8, {16, 64}); }, "has dtype I8, expected F8_E4M3"}},
      {&fp8, {"nan", QuantFormat::kCtFloat, true, false,
              [](std::vector<NamedTensor>& ts) { static_cast<uint8_t*>(get(ts, "m.l.weight").raw())[5] = 0x7F; }, "NaN"}},
      {&fp8, {"scale-shape", QuantFormat::kCtFloat, true, false,
              [](std::vector<NamedTensor>& ts) { get(ts, "m.l.weight_scale") = Tensor(DType::kBF16, {16}); }, "has shape [16], expected [16, 1]"}},
      {&gptq_sym, {"qweight-shape", QuantFormat::kGptqV1, true, false,
                   [](std::vector<NamedTensor>& ts) { get(ts, "m.l.qweight") = Tensor(DType::kI32, {16, 32}); },
                   "m.l.qweight has shape [16, 32], expected [32, 16]"}},
      {&gptq_sym, {"sym-zero", QuantFormat::kGptqV1, true, false,
                   [](std::vector<NamedTensor>& ts) { static_cast<uint32_t*>(get(ts, "m.l.qzeros").raw())[0] = 0x77777776u; },
                   "zero other than 8 but sym is true"}},
      {&asym_f16, {"v1-overflow", QuantFormat::kGptqV1, false, false,
                   [](std::vector<NamedTensor>& ts) { static_cast<uint32_t*>(get(ts, "m.l.qzeros").raw())[1] |= 0xFu; }, "zero 16"}},
      {&asym_f16, {"g_idx-permuted", QuantFormat::kGptqV1, false, false,
                   [](std::vector<NamedTensor>& ts) { std::swap(get(ts, "m.l.g_idx").data<int32_t>()[0], get(ts, "m.l.g_idx").data<int32_t>()[255]); },
                   "desc_act/actorder is off"}},
      {&asym_f16, {"g_idx-range", QuantFormat::kGptqV1, false, true,
                   [](std::vector<NamedTensor>& ts) { get(ts, "m.l.g_idx").data<int32_t>()[7] = 2; }, "out of range"}},
      {&asym_f16, {"awq-scales", QuantFormat::kAwqGemm, false, false,
                   [](std::vector<NamedTensor>& ts) { get(ts, "m.l.scales") = Tensor(DType::kF16, {16, 2}); }, "m.l.scales has shape [16, 2], expected [2, 16]"}},
      {&asym_bf16, {"ct-shape", QuantFormat::kCtPack, false, false,
                    [](std::vector<NamedTensor>& ts) { get(ts, "m.l.weight_shape").data<int64_t>()[1] = 512; }, "weight_shape holds [16, 512]"}},
      {&asym_bf16, {"ct-zp-missing", QuantFormat::kCtPack, false, false, [](std::vector<NamedTensor>& ts) { drop(ts, "m.l.weight_zero_point"); },
                    "m.l.weight_zero_point is missing"}},
      {&asym_bf16, {"ct-g_idx-missing", QuantFormat::kCtPack, false, true, [](std::vector<NamedTensor>&) {}, "m.l.weight_g_idx is missing"}},
      {&asym_bf16, {"ct-scale-zero", QuantFormat::kCtPack, false, false,
                    [](std::vector<NamedTensor>& ts) { get(ts, "m.l.weight_scale").data<uint16_t>()[3] = 0; }, "not finite and positive"}},
  };
  for (const auto& [q, bad] : cases) {
    SCOPED_TRACE(bad.name);
    std::string dir;
    QuantConfigInfo info = info_for(bad.f, bad.sym, bad.act_order);
    const auto r = unpack_edited(std::string("bad-") + bad.name, *q, info, bad.edit, &dir);
    ASSERT_FALSE(r.has_value());
    EXPECT_TRUE(HasSub(r.status().message(), bad.expect));
    EXPECT_TRUE(HasSub(r.status().message(), dir)) << "message must name the file";
    std::filesystem::remove_all(dir);
  }
}

// ---- CPU linears for quantized checkpoints ---------------------------------------------------

Tensor forward(const Linear& l, const Tensor& x) {
  Tensor y(DType::kF32, {x.dim(0), l.out_features()});
  l.forward(x.view(), y.view());
  return y;
}

void expect_finite_nonzero(const Tensor& y) {
  double norm = 0;
  for (int64_t i = 0; i < y.numel(); ++i) {
    ASSERT_TRUE(std::isfinite(y.data<float>()[i])) << i;
    norm += double(y.data<float>()[i]) * y.data<float>()[i];
  }
  ASSERT_GT(norm, 0.0);
}

TEST(QuantizedLinearModel, WeightOnlyEqualsDenseDequantized) {
  for (bool act_order : {false, true}) {
    SCOPED_TRACE(act_order);
    const QuantizedLinear q = random_int4(Int4Spec().shape(40, 256).group(64).asym().act_order(act_order));
    const Tensor x = random_weight(17, 256, 41);
    const auto l = make_quantized_linear(q.clone(), false);
    ASSERT_NE(dynamic_cast<const WeightOnlyLinear*>(l.get()), nullptr);
    EXPECT_EQ(l->in_features(), 256);
    EXPECT_EQ(l->out_features(), 40);
    const Tensor y = forward(*l, x);
    expect_finite_nonzero(y);
    expect_same_tensor(y, forward(DenseLinear(dequantize(q)), x), "weight-only output");
  }
  // 8-bit schemes evaluated weight-only (w8a8 = false) are weight-only too.
  EXPECT_NE(dynamic_cast<const WeightOnlyLinear*>(make_quantized_linear(random_fp8(8, 64, 42), false).get()), nullptr);
}

// e4m3 values with |v| in [0.5, 8]: a product of two is exact in float32, and sums over 64
// terms (plus one term with 448) stay within 24 significant bits, so the float32 dense product
// of the dequantized weight is exact too and both sides must agree bit for bit.
std::vector<uint8_t> small_e4m3_codes() {
  std::vector<uint8_t> codes;
  for (int b = 0; b < 128; ++b) {
    const float v = fp8e4m3_to_f32(static_cast<uint8_t>(b));
    if (v >= 0.5f && v <= 8.0f) codes.push_back(static_cast<uint8_t>(b));
  }
  return codes;
}

// A W8A8 linear with power-of-two scales and codes from small_e4m3_codes() / [-127, 127].
QuantizedLinear grid_w8(QuantScheme scheme, int64_t out, int64_t in, std::mt19937* rng) {
  const std::vector<uint8_t> grid = small_e4m3_codes();
  std::uniform_int_distribution<size_t> pick(0, grid.size() - 1);
  std::uniform_int_distribution<int> i8(-127, 127), pow2(-6, -2);
  const bool fp8 = scheme == QuantScheme::kFp8Channel;
  QuantizedLinear q;
  q.scheme = scheme;
  q.out_features = out;
  q.in_features = in;
  q.codes = Tensor(fp8 ? DType::kU8 : DType::kI8, {out, in});
  q.scales = Tensor(DType::kF32, {out, 1});
  for (int64_t i = 0; i < out * in; ++i) {
    if (fp8) q.codes.data<uint8_t>()[i] = static_cast<uint8_t>(grid[pick(*rng)] | ((*rng)() & 0x80));
    else q.codes.data<int8_t>()[i] = static_cast<int8_t>(i8(*rng));
  }
  for (int64_t n = 0; n < out; ++n) q.scales.data<float>()[n] = std::ldexp(1.0f, pow2(*rng));
  EXPECT_EQ(validate(q), "");
  return q;
}

TEST(QuantizedLinearModel, W8A8OnGridInputsEqualsDenseExactly) {
  const int64_t out = 24, in = 64, T = 5;
  std::mt19937 rng(51);
  const std::vector<uint8_t> grid = small_e4m3_codes();
  ASSERT_EQ(grid.size(), 33u);  // exponents -1..2, 8 mantissas each, plus 8.0
  std::uniform_int_distribution<size_t> pick(0, grid.size() - 1);
  std::uniform_int_distribution<int> i8(-127, 127);
  for (QuantScheme scheme : {QuantScheme::kFp8Channel, QuantScheme::kInt8Channel}) {
    const bool fp8 = scheme == QuantScheme::kFp8Channel;
    SCOPED_TRACE(fp8 ? "fp8" : "int8");
    const QuantizedLinear q = grid_w8(scheme, out, in, &rng);
    // Token t = grid value * 2^e_t with one element at the full range (448 resp. 127), so the
    // token scale is exactly 2^e_t and x / s_t lands on the grid: quantization is lossless.
    Tensor x(DType::kF32, {T, in});
    for (int64_t t = 0; t < T; ++t) {
      const int e = static_cast<int>(t) - 3;
      float* row = x.data<float>() + t * in;
      for (int64_t k = 0; k < in; ++k) {
        const float g = fp8 ? fp8e4m3_to_f32(static_cast<uint8_t>(grid[pick(rng)] | (rng() & 0x80)))
                            : static_cast<float>(i8(rng));
        row[k] = std::ldexp(g, e);
      }
      row[(t * 7) % in] = std::ldexp(fp8 ? -448.0f : 127.0f, e);
      std::vector<double> xq(in);
      const float s = fp8 ? quantize_token_fp8(row, in, xq.data()) : quantize_token_int8(row, in, xq.data());
      ASSERT_EQ(s, std::ldexp(1.0f, e)) << t;
      for (int64_t k = 0; k < in; ++k) ASSERT_EQ(xq[k] * s, row[k]) << t << "," << k;
    }
    const auto l = make_quantized_linear(q.clone(), true);
    ASSERT_NE(dynamic_cast<const W8A8Linear*>(l.get()), nullptr);
    const Tensor y = forward(*l, x);
    expect_finite_nonzero(y);
    expect_same_tensor(y, forward(DenseLinear(dequantize(q)), x), "W8A8 output on grid inputs");
  }
}

// Spacing of the e4m3 grid at |v| (v already divided by the token scale): 2^(e-3) for normal
// values with exponent e, 2^-9 below the smallest normal 2^-6.
double e4m3_step(double v) {
  const int e = v < 0.015625 ? -6 : static_cast<int>(std::floor(std::log2(v)));
  return std::ldexp(1.0, e - 3);
}

TEST(QuantizedLinearModel, W8A8OnRandomInputsWithinOneActivationStep) {
  // Error of W8A8 against the exact product x · dequantize(q)ᵀ (in double) is the activation
  // rounding only: |Σ_k (x̂_k - x_k) w_nk| <= Σ_k step_k |w_nk| with step_k the grid spacing
  // at x_k (half a step is the rounding bound; the whole step covers the rounding of 1/s_t and
  // x·(127/amax)), plus float32 rounding of the output (2 eps relative to Σ|x||w|).
  const int64_t out = 40, in = 320, T = 131;  // T crosses W8A8Linear's 128-token pass
  for (QuantScheme scheme : {QuantScheme::kFp8Channel, QuantScheme::kInt8Channel}) {
    const bool fp8 = scheme == QuantScheme::kFp8Channel;
    const unsigned seed = fp8 ? 61 : 62;
    SCOPED_TRACE(std::string(fp8 ? "fp8" : "int8") + " seed " + std::to_string(seed));
    const QuantizedLinear q = fp8 ? random_fp8(out, in, seed) : random_int8(out, in, seed);
    Tensor x = random_weight(T, in, seed + 100);
    for (int64_t k = 0; k < in; ++k) x.data<float>()[3 * in + k] *= 1e-4f;  // a tiny token
    x.data<float>()[5 * in + 9] = 3.0f;                                    // an outlier token
    const Tensor w = dequantize(q);
    const auto l = make_quantized_linear(q.clone(), true);
    const Tensor y = forward(*l, x);
    expect_finite_nonzero(y);
    expect_same_tensor(y, forward(*l, x), "second forward (determinism)");
    double total_err = 0, max_ratio = 0;
    for (int64_t t = 0; t < T; ++t) {
      const float* xr = x.data<float>() + t * in;
      float amax = 0;
      for (int64_t k = 0; k < in; ++k) amax = std::max(amax, std::fabs(xr[k]));
      const double s_t = fp8 ? std::max(amax / 448.0, 1.0 / (448.0 * 512.0)) : amax / 127.0;
      for (int64_t n = 0; n < out; ++n) {
        const float* wr = w.data<float>() + n * in;
        double ref = 0, bound = 0, mag = 0;
        for (int64_t k = 0; k < in; ++k) {
          ref += double(xr[k]) * wr[k];
          const double step = fp8 ? e4m3_step(std::fabs(xr[k]) / s_t) * s_t : s_t;
          bound += step * std::fabs(wr[k]);
          mag += std::fabs(double(xr[k]) * wr[k]);
        }
        bound += 2 * 1.1920929e-07 * mag;
        const double err = std::fabs(y.data<float>()[t * out + n] - ref);
        ASSERT_LE(err, bound) << "token " << t << " out " << n;
        total_err += err;
        max_ratio = std::max(max_ratio, err / bound);
      }
    }
    // Two-sided: random activations are not on the grid, so some error must show, and the
    // half-step rounding keeps it clearly below the whole-step bound.
    EXPECT_GT(total_err, 0.0);
    EXPECT_LT(max_ratio, 0.75);
  }
}

TEST(QuantizedLinearModel, W8A8TokenScaleEdgeCases) {
  // FP8: vLLM's minimum scaling factor 1 / (448 · 512) for tiny tokens.
  std::vector<float> tiny(16, std::ldexp(1.0f, -12));
  std::vector<double> xq(16);
  EXPECT_EQ(quantize_token_fp8(tiny.data(), 16, xq.data()), 1.0f / (448.0f * 512.0f));
  EXPECT_EQ(xq[0], 56.0);  // 2^-12 · 448 · 512
  // INT8: 127, not 127.5 - the extreme value maps to ±127, never -128.
  std::vector<float> row = {-2.0f, 1.0f, 0.5f, 2.0f};
  std::vector<double> q8(4);
  EXPECT_EQ(quantize_token_int8(row.data(), 4, q8.data()), 2.0f / 127.0f);
  EXPECT_EQ(q8[0], -127.0);
  EXPECT_EQ(q8[3], 127.0);
  EXPECT_EQ(q8[2], 32.0);  // 31.75 -> 32
  // A zero token gives a zero output row (and no NaN) for both schemes.
  for (QuantScheme scheme : {QuantScheme::kFp8Channel, QuantScheme::kInt8Channel}) {
    std::mt19937 rng(71);
    const auto l = make_quantized_linear(grid_w8(scheme, 8, 32, &rng), true);
    Tensor x(DType::kF32, {2, 32});
    for (int64_t k = 0; k < 32; ++k) x.data<float>()[32 + k] = 0.25f;
    const Tensor y = forward(*l, x);
    for (int64_t n = 0; n < 8; ++n) {
      EXPECT_EQ(y.data<float>()[n], 0.0f);
      EXPECT_NE(y.data<float>()[8 + n], 0.0f);
    }
  }
}

}  // namespace
}  // namespace llmq
