// runner/layer.h: the decoder layer on the device and its forward.
#include "runner/layer.h"

#include <algorithm>

#include "runner/cuda_check.h"
#include "runner/gemm_skinny.h"
#include "runner/kernels_ref.h"

namespace llmq {
namespace {

int64_t max_linear_n(const LlamaConfig& c) { return std::max<int64_t>(2 * c.intermediate_size, c.q_dim() + 2 * c.kv_dim()); }
int64_t max_linear_k(const LlamaConfig& c) { return std::max<int64_t>({c.intermediate_size, c.hidden_size, c.q_dim()}); }

struct Fwd {
  const LayerEnv& env;
  LayerBuffers& b;
  bf16* x;      // the residual stream [M, hidden]: bf16 (x) or float32 (x32), one of them set
  float* x32;
  int M;
  LayerInputHook* hook;

  void mark(const char* op) const { env.marks.mark(op, env.stream); }
  void linear(const GpuLinear& L, LinearIn in, bf16* y, const gpu::GemvEpilogue& epi) const {
    L.forward(in, y, M, epi, b.scratch, *env.blas, env.stream);
  }
  // Calls the hook; true when the forward stops here.
  bool see(LayerInput input, const bf16* v, int cols) const {
    if (!hook) return false;
    hook->on_input(input, v, M, cols);
    return hook->stop_after == input;
  }

  // x += pending (if any), then RMSNorm of x with weight w for the linear `next`: into h, or
  // straight into the per-token codes when next is a W8A8 linear (and no hook needs h), or
  // (nothing pending, no hook) left to next's GEMV when it fuses the norm.
  LinearIn norm(const bf16* pending, const DeviceBuffer& w, const GpuLinear& next) const {
    const LlamaConfig& c = *env.config;
    if (x && !pending && !hook && next.fuses_norm(M)) {
      LinearIn in;
      in.x = x;
      in.norm_weight = w.as<const bf16>();
      in.norm_eps = static_cast<float>(c.rms_norm_eps);
      return in;
    }
    if (x32) {  // no fused quantization: a W8A8 linear quantizes the bf16 h itself, to the same codes
      gpu::RmsNormF32Args a;
      a.x = x32;
      a.delta = pending;
      a.w = w.as<const bf16>();
      a.rows = M;
      a.n = static_cast<int>(c.hidden_size);
      a.eps = static_cast<float>(c.rms_norm_eps);
      a.y = b.h.as<bf16>();
      gpu::rms_norm_f32(a, env.stream);
      mark("rms_norm");
      return {b.h.as<const bf16>(), false};
    }
    gpu::RmsNormArgs a;
    a.x = x;
    a.delta = pending;
    a.w = w.as<const bf16>();
    a.rows = M;
    a.n = static_cast<int>(c.hidden_size);
    a.eps = static_cast<float>(c.rms_norm_eps);
    a.quant = hook ? gpu::ActQuant::kNone : next.input_quant();
    if (a.quant == gpu::ActQuant::kNone) a.y = b.h.as<bf16>();
    a.codes = b.scratch.codes.as();
    a.ld_codes = next.K_pad;
    a.scales = b.scratch.scales.as<float>();
    gpu::rms_norm(a, env.stream);
    mark("rms_norm");
    return a.quant == gpu::ActQuant::kNone ? LinearIn{b.h.as<const bf16>(), false} : LinearIn{nullptr, true};
  }

  // x += in · Wᵀ: in the GEMV's or skinny GEMM's epilogue (bf16 x only), or returns the branch
  // (in h) for the next norm.
  const bf16* residual_linear(const GpuLinear& L, const bf16* in) const {
    if (x && L.applies_epilogue(M)) {
      gpu::GemvEpilogue e;
      e.residual = x;
      linear(L, {in, false}, x, e);
      return nullptr;
    }
    linear(L, {in, false}, b.h.as<bf16>(), {});
    return b.h.as<const bf16>();
  }

  // act = SwiGLU of the interleaved gate/up linear: in the GEMV's or skinny GEMM's epilogue, or
  // a pass after.
  void swiglu_linear(const GpuLinear& L, LinearIn in) const {
    if (L.applies_epilogue(M)) {
      gpu::GemvEpilogue e;
      e.swiglu = true;
      linear(L, in, b.act.as<bf16>(), e);
      mark("gate_up_proj");
      return;
    }
    linear(L, in, b.gate_up.as<bf16>(), {});
    mark("gate_up_proj");
    gpu::silu_mul_pairs(b.gate_up.as<const bf16>(), b.act.as<bf16>(), M,
                        static_cast<int>(env.config->intermediate_size), env.stream);
    mark("silu_mul");
  }
};

}  // namespace

RopeTables RopeTables::upload(const LlamaConfig& c, int capacity) {
  std::vector<float> cos_t, sin_t;
  ref::rope_tables_ref(c, capacity, &cos_t, &sin_t);
  return {DeviceBuffer::from_host(cos_t), DeviceBuffer::from_host(sin_t)};
}

GpuLinear& linear_reading(GpuLayer& L, LayerInput input) {
  switch (input) {
    case LayerInput::kAttnIn: return L.qkv;
    case LayerInput::kAttnOut: return L.o;
    case LayerInput::kMlpIn: return L.gate_up;
    case LayerInput::kMlpOut: return L.down;
  }
  return L.qkv;
}

const GpuLinear& linear_reading(const GpuLayer& L, LayerInput input) {
  return linear_reading(const_cast<GpuLayer&>(L), input);
}

void OpMarks::mark(const char* op, cudaStream_t stream) const {
  if (!events) return;
  cudaEvent_t e = nullptr;
  LLMQ_CUDA_CHECK(cudaEventCreate(&e));
  LLMQ_CUDA_CHECK(cudaEventRecord(e, stream));
  events->emplace_back(op, e);
}

Expected<GpuLayer> make_gpu_layer(std::array<HostLinear, 7> linears, const TensorView& input_layernorm,
                                  const TensorView& post_attention_layernorm, bool fp8_supported,
                                  const std::string& where) {
  std::vector<HostLinear> qkv, gu;
  qkv.push_back(std::move(linears[0]));
  qkv.push_back(std::move(linears[1]));
  qkv.push_back(std::move(linears[2]));
  gu.push_back(std::move(linears[4]));
  gu.push_back(std::move(linears[5]));
  LLMQ_ASSIGN_OR_RETURN(HostLinear fqkv, fuse(std::move(qkv), where + " q/k/v"));
  LLMQ_ASSIGN_OR_RETURN(HostLinear fgu, fuse(std::move(gu), where + " gate/up", /*interleave=*/true));
  GpuLayer g;
  LLMQ_ASSIGN_OR_RETURN(g.qkv, upload(fqkv, fp8_supported));
  LLMQ_ASSIGN_OR_RETURN(g.o, upload(linears[3], fp8_supported));
  LLMQ_ASSIGN_OR_RETURN(g.gate_up, upload(fgu, fp8_supported));
  LLMQ_ASSIGN_OR_RETURN(g.down, upload(linears[6], fp8_supported));
  g.ln1 = DeviceBuffer::from_host(to_bf16(input_layernorm));
  g.ln2 = DeviceBuffer::from_host(to_bf16(post_attention_layernorm));
  return g;
}

size_t LayerBuffers::activation_bytes(const LlamaConfig& c, int max_rows, int capacity) {
  const int ws_rows = std::min(max_rows, 64);
  const size_t ws = gpu::attention_workspace_floats(ws_rows, static_cast<int>(c.num_attention_heads),
                                                    static_cast<int>(c.head_dim), capacity) * sizeof(float);
  return size_t(max_rows) * 2 * (c.hidden_size + c.q_dim() + 2 * c.kv_dim() + c.q_dim() + 3 * c.intermediate_size) + ws +
         gpu::skinny_workspace_bytes(std::min(max_rows, gpu::kBf16SkinnyMaxM));
}

size_t LayerBuffers::scratch_bytes(const LlamaConfig& c, int max_rows) {
  const int64_t max_n = max_linear_n(c), max_k = max_linear_k(c);
  return size_t(max_rows) * (round_up(max_k, 16) + 4 + 4 * max_n + 2 * max_k) + size_t(max_n) * max_k * 2 +
         gpu::w4a16_split_bytes(static_cast<int>(max_n), std::min(max_rows, kW4A16MmaMaxM));
}

LayerBuffers LayerBuffers::create(const LlamaConfig& c, int max_rows, int capacity, bool quantized) {
  LayerBuffers b;
  const size_t rows = static_cast<size_t>(max_rows);
  b.h = DeviceBuffer(rows * c.hidden_size * 2);
  b.qkv = DeviceBuffer(rows * (c.q_dim() + 2 * c.kv_dim()) * 2);
  b.attn = DeviceBuffer(rows * c.q_dim() * 2);
  b.gate_up = DeviceBuffer(rows * 2 * c.intermediate_size * 2);
  b.act = DeviceBuffer(rows * c.intermediate_size * 2);
  b.attn_ws_rows = std::min(max_rows, 64);  // decode batches that cannot fill the GPU
  b.attn_ws = DeviceBuffer(gpu::attention_workspace_floats(b.attn_ws_rows, static_cast<int>(c.num_attention_heads),
                                                           static_cast<int>(c.head_dim), capacity) *
                           sizeof(float));
  b.scratch.skinny = DeviceBuffer(gpu::skinny_workspace_bytes(std::min(max_rows, gpu::kBf16SkinnyMaxM)));
  LLMQ_CUDA_CHECK(cudaMemset(b.scratch.skinny.as(), 0, b.scratch.skinny.bytes()));  // the kernel keeps it so
  if (quantized) {
    const int64_t max_n = max_linear_n(c), max_k = max_linear_k(c);
    b.scratch.codes = DeviceBuffer(rows * round_up(max_k, 16));
    b.scratch.scales = DeviceBuffer(rows * 4);
    b.scratch.acc = DeviceBuffer(rows * max_n * 4);
    b.scratch.x_perm = DeviceBuffer(rows * max_k * 2);
    b.scratch.w_bf16 = DeviceBuffer(size_t(max_n) * max_k * 2);
    b.scratch.split = DeviceBuffer(gpu::w4a16_split_bytes(static_cast<int>(max_n), std::min(max_rows, kW4A16MmaMaxM)));
    LLMQ_CUDA_CHECK(cudaMemset(b.scratch.split.as(), 0, b.scratch.split.bytes()));  // the kernel keeps it so
  }
  return b;
}

size_t LayerBuffers::bytes() const {
  return h.bytes() + qkv.bytes() + attn.bytes() + gate_up.bytes() + act.bytes() + attn_ws.bytes() +
         scratch.codes.bytes() + scratch.scales.bytes() + scratch.acc.bytes() + scratch.x_perm.bytes() +
         scratch.w_bf16.bytes() + scratch.split.bytes() + scratch.skinny.bytes();
}

namespace {

// RoPE on b.qkv's q and k of the rows, their k and v appended to the cache.
void rope_into_cache(const LayerEnv& env, LayerBuffers& b, const LayerRows& rows, bf16* k_cache, bf16* v_cache) {
  const LlamaConfig& c = *env.config;
  gpu::rope_and_cache({b.qkv.as<bf16>(), env.cos, env.sin, rows.pos, rows.seq, k_cache, v_cache, rows.M,
                       static_cast<int>(c.num_attention_heads), static_cast<int>(c.num_key_value_heads),
                       static_cast<int>(c.head_dim), env.capacity},
                      env.stream);
  env.marks.mark("rope_and_cache", env.stream);
}

// The layer's attention over its caches for M query rows q (row stride q_ld) at pos / seq,
// into b.attn.
gpu::AttentionArgs attention_args(const LayerEnv& env, LayerBuffers& b, const bf16* q, int q_ld, const int32_t* pos,
                                  const int32_t* seq, int M, const bf16* k_cache, const bf16* v_cache) {
  const LlamaConfig& c = *env.config;
  return gpu::AttentionArgs{q, q_ld, k_cache, v_cache, pos, seq, b.attn.as<bf16>(), M,
                            static_cast<int>(c.num_attention_heads), static_cast<int>(c.num_key_value_heads),
                            static_cast<int>(c.head_dim), env.capacity, b.attn_ws.as<float>(), b.attn_ws_rows};
}

}  // namespace

void attend(const LayerEnv& env, LayerBuffers& b, const LayerRows& rows, bf16* k_cache, bf16* v_cache) {
  const LlamaConfig& c = *env.config;
  rope_into_cache(env, b, rows, k_cache, v_cache);
  gpu::AttentionArgs args = attention_args(env, b, b.qkv.as<const bf16>(), static_cast<int>(c.q_dim() + 2 * c.kv_dim()),
                                           rows.pos, rows.seq, rows.M, k_cache, v_cache);
  args.history_settled = rows.one_row_per_slot;
  if (!rows.spans || rows.spans->empty()) gpu::attention(args, env.stream);
  else gpu::attention(args, *rows.spans, env.stream);
  env.marks.mark("attention", env.stream);
}

namespace {

// layer_forward on the residual stream f.x or f.x32.
const bf16* forward(const Fwd& f, const GpuLayer& L, const bf16* pending, const LayerRows& rows, bf16* k_cache,
                    bf16* v_cache) {
  const LayerEnv& env = f.env;
  LayerBuffers& b = f.b;
  const LlamaConfig& c = *env.config;
  const int q_dim = static_cast<int>(c.q_dim());

  const LinearIn qkv_in = f.norm(pending, L.ln1, L.qkv);
  if (f.see(LayerInput::kAttnIn, qkv_in.x, static_cast<int>(c.hidden_size))) return nullptr;
  f.linear(L.qkv, qkv_in, b.qkv.as<bf16>(), {});
  f.mark("qkv_proj");
  attend(env, b, rows, k_cache, v_cache);
  if (f.see(LayerInput::kAttnOut, b.attn.as<const bf16>(), q_dim)) return nullptr;
  pending = f.residual_linear(L.o, b.attn.as<const bf16>());
  f.mark("o_proj");
  const LinearIn mlp_in = f.norm(pending, L.ln2, L.gate_up);
  if (f.see(LayerInput::kMlpIn, mlp_in.x, static_cast<int>(c.hidden_size))) return nullptr;
  f.swiglu_linear(L.gate_up, mlp_in);
  f.see(LayerInput::kMlpOut, b.act.as<const bf16>(), static_cast<int>(c.intermediate_size));  // the last: no stop
  pending = f.residual_linear(L.down, b.act.as<const bf16>());
  f.mark("down_proj");
  return pending;
}

}  // namespace

const bf16* layer_forward(const LayerEnv& env, const GpuLayer& L, LayerBuffers& b, bf16* x, const bf16* pending,
                          const LayerRows& rows, bf16* k_cache, bf16* v_cache, LayerInputHook* hook) {
  return forward(Fwd{env, b, x, nullptr, rows.M, hook}, L, pending, rows, k_cache, v_cache);
}

const bf16* layer_forward_kept(const LayerEnv& env, const GpuLayer& L, LayerBuffers& b, bf16* x, const bf16* pending,
                               const LayerRows& rows, const KeptRows& kept, bf16* k_cache, bf16* v_cache) {
  const LlamaConfig& c = *env.config;
  const int hidden = static_cast<int>(c.hidden_size), q_dim = static_cast<int>(c.q_dim());
  const int qkv_dim = q_dim + 2 * static_cast<int>(c.kv_dim());
  const Fwd all{env, b, x, nullptr, rows.M, nullptr};
  const LinearIn qkv_in = all.norm(pending, L.ln1, L.qkv);
  all.linear(L.qkv, qkv_in, b.qkv.as<bf16>(), {});
  all.mark("qkv_proj");
  rope_into_cache(env, b, rows, k_cache, v_cache);
  if (kept.S == 0) return nullptr;
  // The kept rows' rotated q into gate_up's buffer (unused until the MLP), their residual rows
  // through h (free after q/k/v) to x's first rows.
  LLMQ_CHECK(size_t(kept.S) * qkv_dim * 2 <= b.gate_up.bytes() && kept.S <= rows.M,
             "layer_forward_kept: " << kept.S << " kept rows of " << rows.M << " do not fit the buffers");
  bf16* q_kept = b.gate_up.as<bf16>();
  gpu::embed(b.qkv.as<const bf16>(), kept.rows, q_kept, kept.S, qkv_dim, env.stream);
  gpu::embed(x, kept.rows, b.h.as<bf16>(), kept.S, hidden, env.stream);
  LLMQ_CUDA_CHECK(cudaMemcpyAsync(x, b.h.as(), size_t(kept.S) * hidden * 2, cudaMemcpyDeviceToDevice, env.stream));
  all.mark("keep_rows");
  gpu::attention(attention_args(env, b, q_kept, qkv_dim, kept.pos, kept.seq, kept.S, k_cache, v_cache), env.stream);
  all.mark("attention");
  const Fwd f{env, b, x, nullptr, kept.S, nullptr};
  pending = f.residual_linear(L.o, b.attn.as<const bf16>());
  f.mark("o_proj");
  f.swiglu_linear(L.gate_up, f.norm(pending, L.ln2, L.gate_up));
  pending = f.residual_linear(L.down, b.act.as<const bf16>());
  f.mark("down_proj");
  return pending;
}

const bf16* layer_forward(const LayerEnv& env, const GpuLayer& L, LayerBuffers& b, float* x32, const bf16* pending,
                          const LayerRows& rows, bf16* k_cache, bf16* v_cache, LayerInputHook* hook) {
  return forward(Fwd{env, b, nullptr, x32, rows.M, hook}, L, pending, rows, k_cache, v_cache);
}

}  // namespace llmq
