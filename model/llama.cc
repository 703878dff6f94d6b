// CPU reference Llama forward; llama.h describes the semantics and the bf16 rounding points.
// Each step names the line of transformers' modeling_llama.py it reproduces.
#include "model/llama.h"

#include <omp.h>

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/check.h"
#include "core/numeric.h"
#include "model/quantized_linear.h"

namespace llmq {
namespace {

using MatF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MapF = Eigen::Map<MatF>;
using ConstMapF = Eigen::Map<const MatF>;
using StridedMapF = Eigen::Map<const MatF, 0, Eigen::OuterStride<>>;

// A contiguous float32 host view [rows, cols] as an Eigen matrix.
MapF as_matrix(const TensorView& v) {
  LLMQ_CHECK(v.dtype == DType::kF32 && v.rank() == 2 && v.is_contiguous() && v.device == Device::kCpu,
             "expected a contiguous float32 host matrix, got " << dtype_name(v.dtype) << " "
                                                               << shape_str(v.shape));
  return MapF(static_cast<float*>(v.data), v.dim(0), v.dim(1));
}

float round_bf16(float x) { return bf16_to_f32(f32_to_bf16(x)); }

// Where torch would materialise a bf16 tensor, kBFloat16 rounds the float32 values.
void round_if_bf16(float* p, int64_t n, Precision precision) {
  if (precision != Precision::kBFloat16) return;
  for (int64_t i = 0; i < n; ++i) p[i] = round_bf16(p[i]);
}

// Observer, then y = linear(x), then the output rounding of the precision mode
// (a bf16 nn.Linear accumulates in fp32 and writes bf16).
void run_linear(const DecoderLayer& layer, LinearSlot slot, const Tensor& x, Tensor& y,
                const ForwardOptions& opt) {
  if (opt.observer != nullptr) opt.observer->on_linear_input(layer.index, slot, x.view());
  layer.linear(slot).forward(x.view(), y.view());
  round_if_bf16(y.data<float>(), y.numel(), opt.precision);
}

// x = x + y (residual = residual + hidden_states), rounded per precision.
void add_residual(const TensorView& x, const Tensor& y, Precision precision) {
  float* px = static_cast<float*>(x.data);
  const float* py = y.data<float>();
  const int64_t n = x.numel();
  for (int64_t i = 0; i < n; ++i) px[i] += py[i];
  round_if_bf16(px, n, precision);
}

// cos/sin [T, head_dim/2] for positions pos0.. (LlamaRotaryEmbedding.forward: freqs = inv_freq
// * position in fp32, cos/sin in fp32, then cast to the activation dtype).
void rope_tables(const std::vector<float>& inv_freq, int64_t pos0, int64_t T, Precision precision,
                 std::vector<float>* cos_t, std::vector<float>* sin_t) {
  const int64_t half = static_cast<int64_t>(inv_freq.size());
  cos_t->resize(T * half);
  sin_t->resize(T * half);
  for (int64_t t = 0; t < T; ++t) {
    const float pos = static_cast<float>(pos0 + t);
    for (int64_t i = 0; i < half; ++i) {
      const float f = inv_freq[i] * pos;
      (*cos_t)[t * half + i] = std::cos(f);
      (*sin_t)[t * half + i] = std::sin(f);
    }
  }
  round_if_bf16(cos_t->data(), T * half, precision);
  round_if_bf16(sin_t->data(), T * half, precision);
}

// In place on x [T, n_heads * head_dim] (HF head layout): x*cos + rotate_half(x)*sin with
// rotate_half(x) = [-x2, x1] over the two halves of each head. In bf16 each product and the
// sum are separate bf16 tensors in torch, so each is rounded.
void apply_rope(Tensor& x, int64_t n_heads, int64_t head_dim, const std::vector<float>& cos_t,
                const std::vector<float>& sin_t, Precision precision) {
  const int64_t T = x.dim(0);
  const int64_t width = x.dim(1);
  const int64_t half = head_dim / 2;
  const bool bf16 = precision == Precision::kBFloat16;
  float* data = x.data<float>();
  for (int64_t t = 0; t < T; ++t) {
    const float* c = cos_t.data() + t * half;
    const float* s = sin_t.data() + t * half;
    for (int64_t h = 0; h < n_heads; ++h) {
      float* v = data + t * width + h * head_dim;
      for (int64_t i = 0; i < half; ++i) {
        const float a = v[i];
        const float b = v[i + half];
        if (bf16) {
          v[i] = round_bf16(round_bf16(a * c[i]) + round_bf16(-b * s[i]));
          v[i + half] = round_bf16(round_bf16(b * c[i]) + round_bf16(a * s[i]));
        } else {
          const float ac = a * c[i], bs = b * s[i], bc = b * c[i], as = a * s[i];
          v[i] = ac - bs;
          v[i + half] = bc + as;
        }
      }
    }
  }
}

// Causal GQA attention of q [T, q_dim] (positions pos0..) over kv rows 0 .. pos0+T-1,
// written to out [T, q_dim]. Computed like torch's flash SDPA kernels (the CPU one in
// aten/src/ATen/native/cpu/FlashAttentionKernel.cpp, and FA2 on CUDA): fp32 scores and
// softmax; the unnormalised probabilities exp(s - max) are the operand of the P·V product
// (bf16 in kBFloat16), accumulated in fp32 and scaled by 1 / (fp32 row sum).
void attention(const Tensor& q, int64_t pos0, const LayerKv& kv, const LlamaConfig& c,
               Tensor& out, Precision precision) {
  const int64_t T = q.dim(0);
  const int64_t hd = c.head_dim;
  const int64_t n_heads = c.num_attention_heads;
  const int64_t group = c.num_attention_heads / c.num_key_value_heads;
  const int64_t q_dim = c.q_dim();
  const int64_t kv_dim = c.kv_dim();
  const int64_t L = pos0 + T;
  const float scale = static_cast<float>(std::pow(static_cast<double>(hd), -0.5));  // head_dim**-0.5
  const float* kp = static_cast<const float*>(kv.k.data);
  const float* vp = static_cast<const float*>(kv.v.data);
  const float* qp = q.data<float>();
  float* op = out.data<float>();

  // Heads are independent; no nested team when the caller already runs in parallel.
#pragma omp parallel for schedule(static) if (!omp_in_parallel() && T * L * n_heads > 4096)
  for (int64_t h = 0; h < n_heads; ++h) {
    const int64_t g = h / group;  // the kv head this query head reads (GQA)
    StridedMapF qh(qp + h * hd, T, hd, Eigen::OuterStride<>(q_dim));
    StridedMapF kh(kp + g * hd, L, hd, Eigen::OuterStride<>(kv_dim));
    StridedMapF vh(vp + g * hd, L, hd, Eigen::OuterStride<>(kv_dim));
    MatF p = qh * kh.transpose();  // [T, L] raw scores, then probabilities
    std::vector<float> row_sum(T);
    for (int64_t t = 0; t < T; ++t) {
      const int64_t visible = pos0 + t + 1;  // causal: keys 0 .. pos0+t
      float m = -std::numeric_limits<float>::infinity();
      for (int64_t j = 0; j < visible; ++j) m = std::max(m, p(t, j) * scale);
      float l = 0.0f;
      for (int64_t j = 0; j < visible; ++j) {
        const float e = std::exp(p(t, j) * scale - m);
        l += e;
        p(t, j) = precision == Precision::kBFloat16 ? round_bf16(e) : e;
      }
      for (int64_t j = visible; j < L; ++j) p(t, j) = 0.0f;
      row_sum[t] = l;
    }
    const MatF o = p * vh;  // [T, hd]
    for (int64_t t = 0; t < T; ++t) {
      float* dst = op + t * q_dim + h * hd;
      const float inv_sum = 1.0f / row_sum[t];  // the kernels multiply by the reciprocal
      for (int64_t i = 0; i < hd; ++i) dst[i] = o(t, i) * inv_sum;
      round_if_bf16(dst, hd, precision);
    }
  }
}

// gate = silu(gate) * up (LlamaMLP: act_fn(gate_proj(x)) * up_proj(x)); in bf16 the SiLU
// output and the product are each a bf16 tensor.
void silu_mul(Tensor& gate, const Tensor& up, Precision precision) {
  float* g = gate.data<float>();
  const float* u = up.data<float>();
  const int64_t n = gate.numel();
  const bool bf16 = precision == Precision::kBFloat16;
  for (int64_t i = 0; i < n; ++i) {
    float s = g[i] / (1.0f + std::exp(-g[i]));
    if (bf16) s = round_bf16(s);
    g[i] = bf16 ? round_bf16(s * u[i]) : s * u[i];
  }
}

void copy_rows(const TensorView& src, Tensor& dst) {
  LLMQ_CHECK(src.numel() == dst.numel());
  std::memcpy(dst.raw(), src.data, static_cast<size_t>(src.numel()) * sizeof(float));
}

Expected<Tensor> load_weight(const HfCheckpoint& ckpt, int64_t layer, std::string_view suffix,
                             const Shape& shape) {
  return ckpt.load_f32(layer_tensor_name(layer, std::string(suffix)), shape);
}

}  // namespace

std::string_view precision_name(Precision p) {
  return p == Precision::kBFloat16 ? "bfloat16" : "float32";
}

// ---- linears -----------------------------------------------------------------------------

DenseLinear::DenseLinear(Tensor weight) : weight_(std::move(weight)) {
  LLMQ_CHECK(weight_.dtype() == DType::kF32 && weight_.shape().size() == 2,
             "DenseLinear needs a float32 [out, in] weight, got " << shape_str(weight_.shape()));
}

void DenseLinear::forward(const TensorView& x, const TensorView& y) const {
  MapF xm = as_matrix(x);
  MapF ym = as_matrix(y);
  ConstMapF w(weight_.data<float>(), out_features(), in_features());
  LLMQ_CHECK(xm.cols() == in_features() && ym.rows() == xm.rows() && ym.cols() == out_features(),
             "linear [" << out_features() << ", " << in_features() << "]: x " << shape_str(x.shape)
                        << ", y " << shape_str(y.shape));
  ym.noalias() = xm * w.transpose();
}

std::string_view linear_slot_name(LinearSlot slot) {
  switch (slot) {
    case LinearSlot::kQ: return "self_attn.q_proj";
    case LinearSlot::kK: return "self_attn.k_proj";
    case LinearSlot::kV: return "self_attn.v_proj";
    case LinearSlot::kO: return "self_attn.o_proj";
    case LinearSlot::kGate: return "mlp.gate_proj";
    case LinearSlot::kUp: return "mlp.up_proj";
    case LinearSlot::kDown: return "mlp.down_proj";
  }
  return "?";
}

// ---- one decoder layer -------------------------------------------------------------------

Expected<DecoderLayer> load_decoder_layer(const HfCheckpoint& ckpt, int64_t layer) {
  const LlamaConfig& c = ckpt.config();
  if (c.attention_bias || c.mlp_bias)
    return Status::error(ckpt.dir() + "/config.json: attention_bias / mlp_bias are not supported");
  if (layer < 0 || layer >= c.num_hidden_layers)
    return Status::error(ckpt.dir() + ": layer " + std::to_string(layer) + " out of range");
  const int64_t h = c.hidden_size, inter = c.intermediate_size;
  const Shape shapes[kNumLinearSlots] = {{c.q_dim(), h}, {c.kv_dim(), h}, {c.kv_dim(), h}, {h, c.q_dim()},
                                         {inter, h},     {inter, h},      {h, inter}};
  DecoderLayer out;
  out.index = layer;
  for (int s = 0; s < kNumLinearSlots; ++s) {
    const std::string prefix = layer_tensor_name(layer, std::string(linear_slot_name(static_cast<LinearSlot>(s))));
    if (ckpt.is_quantized_linear(prefix)) {
      LLMQ_ASSIGN_OR_RETURN(QuantizedLinear q, unpack_quantized_linear(ckpt.tensors(), prefix, *ckpt.quantization(),
                                                                       shapes[s][0], shapes[s][1]));
      // FP8 / INT8 checkpoints are W8A8: activations are quantized per token at run time too.
      const bool w8a8 = q.scheme != QuantScheme::kInt4Group;
      out.linears[s] = make_quantized_linear(std::move(q), w8a8);
      continue;
    }
    LLMQ_ASSIGN_OR_RETURN(Tensor w, ckpt.load_f32(prefix + ".weight", shapes[s]));
    out.linears[s] = std::make_unique<DenseLinear>(std::move(w));
  }
  LLMQ_ASSIGN_OR_RETURN(out.input_layernorm, load_weight(ckpt, layer, "input_layernorm.weight", {h}));
  LLMQ_ASSIGN_OR_RETURN(out.post_attention_layernorm,
                        load_weight(ckpt, layer, "post_attention_layernorm.weight", {h}));
  return out;
}

std::vector<float> rope_inv_freq(const LlamaConfig& c) {
  const int64_t dim = c.head_dim;
  std::vector<float> inv(dim / 2);
  // _compute_default_rope_parameters: 1.0 / (base ** (arange(0, dim, 2).float() / dim)), fp32.
  for (int64_t i = 0; i < dim / 2; ++i) {
    const float e = static_cast<float>(2 * i) / static_cast<float>(dim);
    inv[i] = 1.0f / std::pow(static_cast<float>(c.rope_theta), e);
  }
  if (!c.rope_scaling) return inv;
  // _compute_llama3_parameters, op for op in float32 (python scalars become float operands).
  const RopeScaling& rs = *c.rope_scaling;
  LLMQ_CHECK(rs.type == "llama3", "rope_scaling type " << rs.type);
  const float factor = static_cast<float>(rs.factor);
  const float low = static_cast<float>(rs.low_freq_factor);
  const double old_ctx = static_cast<double>(rs.original_max_position_embeddings);
  const float low_freq_wavelen = static_cast<float>(old_ctx / rs.low_freq_factor);
  const float high_freq_wavelen = static_cast<float>(old_ctx / rs.high_freq_factor);
  const float two_pi = static_cast<float>(2.0 * 3.14159265358979323846);  // 2 * math.pi
  const float high_minus_low = static_cast<float>(rs.high_freq_factor - rs.low_freq_factor);
  for (float& f : inv) {
    const float wavelen = (1.0f / f) * two_pi;  // 2 * math.pi / inv_freq
    float llama = wavelen > low_freq_wavelen ? f / factor : f;
    const bool medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
    if (medium) {
      const float smooth = ((1.0f / wavelen) * static_cast<float>(old_ctx) - low) / high_minus_low;
      llama = (1.0f - smooth) * llama / factor + smooth * llama;
    }
    f = llama;
  }
  return inv;
}

void rms_norm(const TensorView& x, const Tensor& weight, double eps, Precision precision) {
  MapF xm = as_matrix(x);
  const int64_t n = xm.cols();
  LLMQ_CHECK(weight.numel() == n, "norm weight " << shape_str(weight.shape()) << " vs rows of " << n);
  const float* w = weight.data<float>();
  const bool bf16 = precision == Precision::kBFloat16;
  const float eps_f = static_cast<float>(eps);
  for (int64_t r = 0; r < xm.rows(); ++r) {
    float* row = xm.row(r).data();
    // variance = x.pow(2).mean(-1) in fp32; summed in double so only the final rounding is ours.
    double sum_sq = 0.0;
    for (int64_t i = 0; i < n; ++i) sum_sq += static_cast<double>(row[i]) * row[i];
    const float variance = static_cast<float>(sum_sq / static_cast<double>(n));
    const float inv_rms = 1.0f / std::sqrt(variance + eps_f);
    for (int64_t i = 0; i < n; ++i) {
      float y = row[i] * inv_rms;
      if (bf16) y = round_bf16(y);  // hidden_states.to(input_dtype)
      y = w[i] * y;
      row[i] = bf16 ? round_bf16(y) : y;
    }
  }
}

namespace {

// o_proj(attn(rope(q(h)), rope(k(h)), v(h))) for h [T, hidden], the normalised input of the
// attention block, at positions pos0..; K/V are written to rows pos0.. of kv.
Tensor attention_part(const DecoderLayer& layer, const LlamaConfig& c, const Tensor& h, int64_t pos0,
                      const LayerKv& kv, const ForwardOptions& opt) {
  const Precision pr = opt.precision;
  const int64_t T = h.dim(0);
  const int64_t kv_dim = c.kv_dim();
  LLMQ_CHECK(kv.k.rank() == 2 && kv.k.dim(1) == kv_dim && kv.v.shape == kv.k.shape,
             "kv cache " << shape_str(kv.k.shape) << " / " << shape_str(kv.v.shape));
  LLMQ_CHECK(pos0 >= 0 && pos0 + T <= kv.k.dim(0),
             "kv cache of " << kv.k.dim(0) << " rows cannot hold positions up to " << pos0 + T);
  Tensor q(DType::kF32, {T, c.q_dim()});  // [T, q_dim]
  Tensor k(DType::kF32, {T, kv_dim});     // [T, kv_dim]
  Tensor v(DType::kF32, {T, kv_dim});     // [T, kv_dim]
  run_linear(layer, LinearSlot::kQ, h, q, opt);
  run_linear(layer, LinearSlot::kK, h, k, opt);
  run_linear(layer, LinearSlot::kV, h, v, opt);

  std::vector<float> cos_t, sin_t;  // [T, head_dim / 2] each
  rope_tables(rope_inv_freq(c), pos0, T, pr, &cos_t, &sin_t);
  apply_rope(q, c.num_attention_heads, c.head_dim, cos_t, sin_t, pr);
  apply_rope(k, c.num_key_value_heads, c.head_dim, cos_t, sin_t, pr);

  float* k_rows = static_cast<float*>(kv.k.data) + pos0 * kv_dim;
  float* v_rows = static_cast<float*>(kv.v.data) + pos0 * kv_dim;
  std::memcpy(k_rows, k.data<float>(), static_cast<size_t>(T * kv_dim) * sizeof(float));
  std::memcpy(v_rows, v.data<float>(), static_cast<size_t>(T * kv_dim) * sizeof(float));

  Tensor attn(DType::kF32, {T, c.q_dim()});  // [T, q_dim] heads concatenated
  attention(q, pos0, kv, c, attn, pr);
  Tensor o(DType::kF32, {T, c.hidden_size});  // [T, hidden] block output
  run_linear(layer, LinearSlot::kO, attn, o, opt);
  return o;
}

// down(silu(gate(h)) * up(h)) for h [T, hidden], the normalised input of the MLP block.
Tensor mlp_part(const DecoderLayer& layer, const LlamaConfig& c, const Tensor& h, const ForwardOptions& opt) {
  const int64_t T = h.dim(0);
  Tensor gate(DType::kF32, {T, c.intermediate_size});  // [T, intermediate]
  Tensor up(DType::kF32, {T, c.intermediate_size});    // [T, intermediate]
  run_linear(layer, LinearSlot::kGate, h, gate, opt);
  run_linear(layer, LinearSlot::kUp, h, up, opt);
  silu_mul(gate, up, opt.precision);
  Tensor o(DType::kF32, {T, c.hidden_size});  // [T, hidden]
  run_linear(layer, LinearSlot::kDown, gate, o, opt);
  return o;
}

Tensor copy_of_rows(const TensorView& x, int64_t cols) {
  LLMQ_CHECK(x.rank() == 2 && x.dim(1) == cols, "block input " << shape_str(x.shape) << ", expected width " << cols);
  Tensor h(DType::kF32, {x.dim(0), cols});
  copy_rows(x, h);
  return h;
}

}  // namespace

void decoder_layer_forward(const DecoderLayer& layer, const LlamaConfig& c, const TensorView& x,
                           int64_t pos0, const LayerKv& kv, const ForwardOptions& opt) {
  const Precision pr = opt.precision;
  LLMQ_CHECK(x.rank() == 2 && x.dim(1) == c.hidden_size, "layer input " << shape_str(x.shape));

  // --- self-attention block: x = x + o_proj(attn(rope(q), rope(k), v)) on norm(x).
  Tensor h = copy_of_rows(x, c.hidden_size);  // [T, hidden] normalised input of the block
  rms_norm(h.view(), layer.input_layernorm, c.rms_norm_eps, pr);
  add_residual(x, attention_part(layer, c, h, pos0, kv, opt), pr);

  // --- MLP block: x = x + down(silu(gate(norm(x))) * up(norm(x))).
  copy_rows(x, h);
  rms_norm(h.view(), layer.post_attention_layernorm, c.rms_norm_eps, pr);
  add_residual(x, mlp_part(layer, c, h, opt), pr);
}

Tensor attention_block(const DecoderLayer& layer, const LlamaConfig& c, const TensorView& h,
                       const ForwardOptions& opt) {
  const Tensor in = copy_of_rows(h, c.hidden_size);
  Tensor k(DType::kF32, {h.dim(0), c.kv_dim()});  // [T, kv_dim]
  Tensor v(DType::kF32, {h.dim(0), c.kv_dim()});  // [T, kv_dim]
  return attention_part(layer, c, in, 0, LayerKv{k.view(), v.view()}, opt);
}

Tensor mlp_block(const DecoderLayer& layer, const LlamaConfig& c, const TensorView& h, const ForwardOptions& opt) {
  return mlp_part(layer, c, copy_of_rows(h, c.hidden_size), opt);
}

void decoder_layer_forward(const DecoderLayer& layer, const LlamaConfig& c, const TensorView& x,
                           const ForwardOptions& opt) {
  Tensor k(DType::kF32, {x.dim(0), c.kv_dim()});  // [T, kv_dim]
  Tensor v(DType::kF32, {x.dim(0), c.kv_dim()});  // [T, kv_dim]
  decoder_layer_forward(layer, c, x, 0, LayerKv{k.view(), v.view()}, opt);
}

// ---- KV cache ----------------------------------------------------------------------------

KvCache::KvCache(const LlamaConfig& config, int64_t capacity) : capacity_(capacity) {
  LLMQ_CHECK(capacity > 0, "KV cache capacity " << capacity);
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) {
    k_.emplace_back(DType::kF32, Shape{capacity, config.kv_dim()});
    v_.emplace_back(DType::kF32, Shape{capacity, config.kv_dim()});
  }
}

void KvCache::advance(int64_t n) {
  LLMQ_CHECK(n >= 0 && length_ + n <= capacity_, "KV cache overflow: " << length_ << " + " << n
                                                                       << " > " << capacity_);
  length_ += n;
}

// ---- the model ---------------------------------------------------------------------------

LlamaModel::LlamaModel(LlamaConfig config, Tensor embed_tokens, std::vector<DecoderLayer> layers,
                       Tensor norm, std::unique_ptr<Linear> lm_head)
    : config_(std::move(config)),
      embed_tokens_(std::move(embed_tokens)),
      layers_(std::move(layers)),
      norm_(std::move(norm)),
      lm_head_(std::move(lm_head)) {
  const LlamaConfig& c = config_;
  LLMQ_CHECK(c.head_dim % 2 == 0 && c.num_key_value_heads > 0 &&
             c.num_attention_heads % c.num_key_value_heads == 0);
  LLMQ_CHECK(embed_tokens_.dtype() == DType::kF32 &&
                 embed_tokens_.shape() == (Shape{c.vocab_size, c.hidden_size}),
             "embed_tokens " << shape_str(embed_tokens_.shape()));
  LLMQ_CHECK(norm_.dtype() == DType::kF32 && norm_.numel() == c.hidden_size);
  LLMQ_CHECK(static_cast<int64_t>(layers_.size()) == c.num_hidden_layers);
  LLMQ_CHECK(lm_head_ && lm_head_->in_features() == c.hidden_size &&
             lm_head_->out_features() == c.vocab_size);
  for (const DecoderLayer& l : layers_)
    for (const auto& lin : l.linears) LLMQ_CHECK(lin != nullptr, "layer " << l.index << " lacks a linear");
}

Expected<LlamaModel> LlamaModel::load(const HfCheckpoint& ckpt) {
  const LlamaConfig& c = ckpt.config();
  const Shape vocab_shape{c.vocab_size, c.hidden_size};
  LLMQ_ASSIGN_OR_RETURN(Tensor embed, ckpt.load_f32("model.embed_tokens.weight", vocab_shape));
  LLMQ_ASSIGN_OR_RETURN(Tensor head, ckpt.load_f32("lm_head.weight", vocab_shape));
  LLMQ_ASSIGN_OR_RETURN(Tensor norm, ckpt.load_f32("model.norm.weight", {c.hidden_size}));
  std::vector<DecoderLayer> layers;
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    LLMQ_ASSIGN_OR_RETURN(DecoderLayer layer, load_decoder_layer(ckpt, i));
    layers.push_back(std::move(layer));
  }
  return LlamaModel(c, std::move(embed), std::move(layers), std::move(norm),
                    std::make_unique<DenseLinear>(std::move(head)));
}

Tensor LlamaModel::embed(const std::vector<int32_t>& tokens, Precision precision) const {
  const int64_t T = static_cast<int64_t>(tokens.size());
  const int64_t hidden = config_.hidden_size;
  Tensor x(DType::kF32, {T, hidden});  // [T, hidden]
  for (int64_t t = 0; t < T; ++t) {
    LLMQ_CHECK(tokens[t] >= 0 && tokens[t] < config_.vocab_size, "token id " << tokens[t]);
    std::memcpy(x.data<float>() + t * hidden, embed_tokens_.data<float>() + tokens[t] * hidden,
                static_cast<size_t>(hidden) * sizeof(float));
  }
  round_if_bf16(x.data<float>(), x.numel(), precision);
  return x;
}

Tensor LlamaModel::head(const TensorView& x, Precision precision) const {
  rms_norm(x, norm_, config_.rms_norm_eps, precision);
  Tensor logits(DType::kF32, {x.dim(0), config_.vocab_size});  // [T, vocab]
  lm_head_->forward(x, logits.view());
  round_if_bf16(logits.data<float>(), logits.numel(), precision);  // bf16 logits, then .float()
  return logits;
}

Tensor LlamaModel::forward(const std::vector<int32_t>& tokens, KvCache& cache, LogitsFor which,
                           const ForwardOptions& opt) const {
  const int64_t T = static_cast<int64_t>(tokens.size());
  LLMQ_CHECK(T > 0, "forward of no tokens");
  LLMQ_CHECK(cache.length() + T <= cache.capacity(),
             "KV cache of " << cache.capacity() << " cannot take " << T << " more after " << cache.length());
  Tensor x = embed(tokens, opt.precision);  // [T, hidden]
  for (size_t l = 0; l < layers_.size(); ++l)
    decoder_layer_forward(layers_[l], config_, x.view(), cache.length(), cache.layer(l), opt);
  cache.advance(T);
  if (which == LogitsFor::kAll) return head(x.view(), opt.precision);
  Tensor last(DType::kF32, {1, config_.hidden_size});  // [1, hidden]
  std::memcpy(last.raw(), x.data<float>() + (T - 1) * config_.hidden_size,
              static_cast<size_t>(config_.hidden_size) * sizeof(float));
  return head(last.view(), opt.precision);
}

Tensor LlamaModel::prefill(const std::vector<int32_t>& tokens, KvCache& cache, LogitsFor which,
                           const ForwardOptions& opt) const {
  cache.clear();
  return forward(tokens, cache, which, opt);
}

Tensor LlamaModel::decode_step(int32_t token, KvCache& cache, const ForwardOptions& opt) const {
  return forward({token}, cache, LogitsFor::kLast, opt);
}

}  // namespace llmq
