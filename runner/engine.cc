// The engine (runner/engine.h): loading, one forward over token rows, prefill, decode with
// CUDA graphs, greedy generation.
#include "runner/engine.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <sstream>

#include "core/numeric.h"
#include "formats/checkpoint.h"
#include "formats/quant_formats.h"
#include "quantizers/fp8.h"
#include "quantizers/rtn.h"
#include "runner/device.h"
#include "runner/device_buffer.h"
#include "runner/gemm.h"
#include "runner/gemv.h"
#include "runner/attention_prefill.h"
#include "runner/kernels.h"
#include "runner/kernels_ref.h"
#include "runner/w4a16.h"

namespace llmq {
namespace {

using bf16 = uint16_t;

// A float host view as bf16 values: BF16 checkpoints are copied as they are (16 GB of an 8B
// model load in seconds), other float dtypes rounded from float32.
std::vector<bf16> to_bf16(const TensorView& v) {
  if (v.dtype == DType::kBF16) {
    const bf16* p = static_cast<const bf16*>(v.data);
    return std::vector<bf16>(p, p + v.numel());
  }
  const Tensor f = to_f32(v);
  std::vector<bf16> out(f.numel());
  const float* p = f.data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < f.numel(); ++i) out[i] = f32_to_bf16(p[i]);
  return out;
}

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// Rows [0, n) and [n, 2n) of a row-major buffer of 2n rows become 0, n, 1, n + 1, ...: the
// gate and up rows of the fused MLP input linear, interleaved so that one GEMV block holds
// both rows of a (gate, up) pair and can apply SwiGLU in its epilogue (runner/gemv.h).
void interleave_halves(void* data, int64_t rows, size_t row_bytes) {
  LLMQ_CHECK(rows % 2 == 0, "interleave_halves: odd row count " << rows);
  const auto* src = static_cast<const uint8_t*>(data);
  std::vector<uint8_t> out(static_cast<size_t>(rows) * row_bytes);
  const int64_t n = rows / 2;
  for (int64_t i = 0; i < n; ++i) {
    std::memcpy(&out[static_cast<size_t>(2 * i) * row_bytes], src + static_cast<size_t>(i) * row_bytes, row_bytes);
    std::memcpy(&out[static_cast<size_t>(2 * i + 1) * row_bytes], src + static_cast<size_t>(n + i) * row_bytes, row_bytes);
  }
  std::memcpy(data, out.data(), out.size());
}

void interleave_halves(Tensor& t) {
  if (t.empty()) return;  // e.g. the zeros of a symmetric or 8-bit linear
  interleave_halves(t.raw(), t.dim(0), static_cast<size_t>(t.nbytes() / t.dim(0)));
}

// What one forward needs besides the layer buffers: activation-quantization codes and scales,
// the W8A8 accumulator and the W4A16 scratch, sized for the largest linear at max_rows.
struct LinearScratch {
  DeviceBuffer codes;   // [rows, max padded K] int8 / e4m3
  DeviceBuffer scales;  // [rows] f32
  DeviceBuffer acc;     // [rows, max N] int32 / f32
  DeviceBuffer x_perm;  // [rows, max K] bf16 (act-order W4A16)
  DeviceBuffer w_bf16;  // [max N * max K] bf16 (W4A16 at M > kW4A16GemvMaxM)
};

enum class LinearKind { kBf16, kFp8, kInt8, kW4A16 };

// A linear's input: bf16 activations, or already quantized per token into the scratch codes
// and scales (W8A8 after an RMSNorm that fused the quantization in).
struct LinearIn {
  const bf16* x = nullptr;
  bool quantized = false;
};

// One linear on the device in its checkpoint form.
struct GpuLinear {
  LinearKind kind = LinearKind::kBf16;
  int N = 0, K = 0, K_pad = 0;  // K_pad: K rounded up to the W8A8 GEMM's multiple (zeros)
  DeviceBuffer weight;          // bf16 [N, K] or codes [N, K_pad]
  const bf16* shared_weight = nullptr;  // tied lm_head: the embedding table
  DeviceBuffer scales;          // W8A8: [N] f32
  gpu::W4A16Weights w4;
  std::string w4_desc;

  size_t bytes() const { return weight.bytes() + scales.bytes() + w4.bytes() + (shared_weight ? size_t(N) * K * 2 : 0); }

  // Decode shapes run as GEMVs (one pass over the weights at HBM bandwidth instead of GEMM
  // tiles made for large M), which also apply the epilogue (residual add, SwiGLU) in-kernel.
  bool uses_gemv(int M) const {
    switch (kind) {
      case LinearKind::kBf16: return M <= gpu::kGemvMaxM && K % 8 == 0;
      case LinearKind::kFp8:
      case LinearKind::kInt8: return M <= gpu::kGemvMaxM && K_pad % 16 == 0;
      case LinearKind::kW4A16: return gpu::w4a16_fuses_epilogue(w4, M);
    }
    return false;
  }
  // The per-token quantization the RMSNorm before this linear may produce for it (W8A8 inputs
  // that need no zero padding).
  gpu::ActQuant input_quant() const {
    if (K_pad != K) return gpu::ActQuant::kNone;
    if (kind == LinearKind::kFp8) return gpu::ActQuant::kFp8;
    if (kind == LinearKind::kInt8) return gpu::ActQuant::kInt8;
    return gpu::ActQuant::kNone;
  }

  // y = epi(in · Wᵀ); a non-empty epilogue only where uses_gemv(M).
  void forward(LinearIn in, bf16* y, int M, const gpu::GemvEpilogue& epi, LinearScratch& s, gpu::Blas& blas,
               cudaStream_t st) const {
    const bool gemv = uses_gemv(M);
    LLMQ_CHECK(gemv || (!epi.residual && !epi.swiglu), "linear: epilogue without a GEMV (M " << M << ")");
    if (kind == LinearKind::kBf16) {
      const bf16* w = shared_weight ? shared_weight : weight.as<const bf16>();
      if (gemv) return gpu::gemv_bf16(in.x, w, y, M, N, K, epi, st);
      return blas.gemm_bf16(in.x, w, y, M, N, K, st);
    }
    if (kind == LinearKind::kW4A16)
      return gpu::w4a16_gemm(w4, in.x, y, M, {s.x_perm.as<bf16>(), s.w_bf16.as<bf16>()}, blas, st, epi);
    const bool fp8 = kind == LinearKind::kFp8;
    if (!in.quantized) {
      if (K_pad != K) LLMQ_CUDA_CHECK(cudaMemsetAsync(s.codes.as(), 0, size_t(M) * K_pad, st));
      if (fp8) gpu::quantize_fp8_per_token(in.x, s.codes.as<uint8_t>(), K_pad, s.scales.as<float>(), M, K, st);
      else gpu::quantize_int8_per_token(in.x, s.codes.as<int8_t>(), K_pad, s.scales.as<float>(), M, K, st);
    }
    const float* sx = s.scales.as<const float>();
    const float* sw = scales.as<const float>();
    if (fp8) {
      if (gemv) return gpu::gemv_w8a8_fp8(s.codes.as<const uint8_t>(), sx, weight.as<const uint8_t>(), sw, y, M, N, K_pad, epi, st);
      blas.gemm_fp8(s.codes.as<const uint8_t>(), weight.as<const uint8_t>(), s.acc.as<float>(), M, N, K_pad, st);
      return gpu::scale_rows_cols_f32(s.acc.as<const float>(), sx, sw, y, M, N, st);
    }
    if (gemv) return gpu::gemv_w8a8_int8(s.codes.as<const int8_t>(), sx, weight.as<const int8_t>(), sw, y, M, N, K_pad, epi, st);
    blas.gemm_int8(s.codes.as<const int8_t>(), weight.as<const int8_t>(), s.acc.as<int32_t>(), M, N, K_pad, st);
    gpu::scale_rows_cols_i32(s.acc.as<const int32_t>(), sx, sw, y, M, N, st);
  }
};

// A linear as read from the checkpoint, before upload: dense (float32) or quantized.
struct HostLinear {
  bool quantized = false;
  std::vector<bf16> dense;  // [out, in]
  int64_t out = 0, in = 0;
  QuantizedLinear q;        // when quantized
};

Expected<HostLinear> read_linear(const HfCheckpoint& ckpt, const std::string& prefix, int64_t out, int64_t in,
                                 const std::string& rtn) {
  HostLinear h;
  if (ckpt.is_quantized_linear(prefix)) {
    h.quantized = true;
    LLMQ_ASSIGN_OR_RETURN(h.q, unpack_quantized_linear(ckpt.tensors(), prefix, *ckpt.quantization(), out, in));
    return h;
  }
  LLMQ_ASSIGN_OR_RETURN(TensorView v, ckpt.tensor(prefix + ".weight", {out, in}));
  if (!rtn.empty() && (rtn != "w4a16" || in % 128 == 0)) {
    const Tensor f = to_f32(v);
    h.quantized = true;
    if (rtn == "fp8") h.q = quantize_fp8_channel(f.view(), Fp8Config{});
    if (rtn == "int8") h.q = quantize_rtn_int8(f.view(), Int8Config{});
    if (rtn == "w4a16") h.q = quantize_rtn_int4(f.view(), Int4Config{128, Int4Range::kAsymWithZero, DType::kBF16, 0});
    return h;
  }
  h.dense = to_bf16(v);
  h.out = out;
  h.in = in;
  return h;
}

// q/k/v (or gate/up) as one linear with the outputs concatenated. Quantized parts must share
// scheme, group size and act-order permutation.
Expected<HostLinear> concat(std::vector<HostLinear> parts, const std::string& what) {
  HostLinear out;
  out.quantized = parts[0].quantized;
  std::vector<const Tensor*> a, b, c;
  for (const HostLinear& p : parts) {
    if (p.quantized != out.quantized) return Status::error(what + ": mixes quantized and float linears (unsupported)");
    if (!p.quantized) {
      out.dense.insert(out.dense.end(), p.dense.begin(), p.dense.end());
      out.out += p.out;
      out.in = p.in;
      continue;
    }
    const QuantizedLinear& q0 = parts[0].q;
    if (p.q.scheme != q0.scheme || p.q.group_size != q0.group_size || p.q.scale_dtype != q0.scale_dtype ||
        p.q.g_idx.empty() != q0.g_idx.empty() ||
        (!q0.g_idx.empty() && std::memcmp(p.q.g_idx.raw(), q0.g_idx.raw(), q0.g_idx.nbytes()) != 0))
      return Status::error(what + ": parts are quantized differently (scheme, group or g_idx); not supported yet");
    a.push_back(&p.q.codes);
    b.push_back(&p.q.scales);
    if (!p.q.zeros.empty()) c.push_back(&p.q.zeros);
  }
  if (!out.quantized) return out;
  QuantizedLinear& q = out.q;
  const QuantizedLinear& q0 = parts[0].q;
  q.scheme = q0.scheme;
  q.in_features = q0.in_features;
  q.group_size = q0.group_size;
  q.symmetric = q0.symmetric;
  q.scale_dtype = q0.scale_dtype;
  q.codes = concat_rows(a);
  q.scales = concat_rows(b);
  if (!c.empty()) q.zeros = concat_rows(c);
  if (!q0.g_idx.empty()) q.g_idx = Tensor::copy_of(q0.g_idx.view());
  q.out_features = q.codes.dim(0);
  q.symmetric = true;
  for (const HostLinear& p : parts) q.symmetric = q.symmetric && p.q.symmetric;
  return out;
}

// With interleave (gate/up: two parts of equal size) the rows alternate between the parts.
Expected<HostLinear> fuse(std::vector<HostLinear> parts, const std::string& what, bool interleave = false) {
  if (parts.size() == 1) return std::move(parts[0]);
  LLMQ_ASSIGN_OR_RETURN(HostLinear out, concat(std::move(parts), what));
  if (!interleave) return out;
  if (!out.quantized) {
    interleave_halves(out.dense.data(), out.out, static_cast<size_t>(out.in) * sizeof(bf16));
    return out;
  }
  interleave_halves(out.q.codes);
  interleave_halves(out.q.scales);
  interleave_halves(out.q.zeros);
  return out;
}

Expected<GpuLinear> upload(const HostLinear& h, bool fp8_supported) {
  GpuLinear g;
  if (!h.quantized) {
    g.kind = LinearKind::kBf16;
    g.N = static_cast<int>(h.out);
    g.K = g.K_pad = static_cast<int>(h.in);
    g.weight = DeviceBuffer::from_host(h.dense);
    return g;
  }
  const QuantizedLinear& q = h.q;
  g.N = static_cast<int>(q.out_features);
  g.K = g.K_pad = static_cast<int>(q.in_features);
  if (q.scheme == QuantScheme::kInt4Group) {
    g.kind = LinearKind::kW4A16;
    LLMQ_ASSIGN_OR_RETURN(W4A16Layout layout, w4a16_layout(q));
    g.w4 = gpu::W4A16Weights::upload(layout);
    g.w4_desc = "w4a16 g" + std::to_string(q.group_size) + (q.g_idx.empty() ? "" : " act-order");
    return g;
  }
  const bool fp8 = q.scheme == QuantScheme::kFp8Channel;
  if (fp8 && !fp8_supported) return Status::error("FP8 W8A8 needs a GPU of compute capability 8.9 or newer");
  g.kind = fp8 ? LinearKind::kFp8 : LinearKind::kInt8;
  g.K_pad = static_cast<int>(round_up(g.K, fp8 ? 16 : 4));  // cuBLASLt's K multiple; zero columns add nothing
  std::vector<uint8_t> codes(static_cast<size_t>(g.N) * g.K_pad, 0);
  const uint8_t* src = static_cast<const uint8_t*>(q.codes.raw());
  for (int n = 0; n < g.N; ++n) std::memcpy(&codes[size_t(n) * g.K_pad], src + size_t(n) * g.K, g.K);
  g.weight = DeviceBuffer::from_host(codes);
  g.scales = DeviceBuffer::from_host(q.scales.data<float>(), g.N);
  return g;
}

struct GpuLayer {
  GpuLinear qkv, o, gate_up, down;
  DeviceBuffer ln1, ln2;  // [hidden] bf16
};

}  // namespace

struct Engine::Impl {
  LlamaConfig c;
  EngineOptions opt;
  int capacity = 0;
  cudaStream_t stream = nullptr;
  std::unique_ptr<gpu::Blas> blas;

  std::vector<GpuLayer> layers;
  DeviceBuffer embed;       // [vocab, hidden] bf16
  DeviceBuffer final_norm;  // [hidden] bf16
  GpuLinear lm_head;
  DeviceBuffer cos_t, sin_t;                  // [capacity, hd/2] f32
  std::vector<DeviceBuffer> k_cache, v_cache;  // per layer [max_batch, capacity, kv_dim] bf16
  std::vector<int> length;                    // per slot: positions in the cache

  // Activations for up to max_rows token rows.
  int logit_rows = 0;
  DeviceBuffer x, h;          // [rows, hidden]
  DeviceBuffer qkv;           // [rows, q_dim + 2 kv_dim]
  DeviceBuffer attn;          // [rows, q_dim]
  DeviceBuffer gate_up;       // [rows, 2 inter]
  DeviceBuffer act;           // [rows, inter]
  DeviceBuffer logits;        // [logit_rows, vocab] bf16
  DeviceBuffer ids, pos, seq;  // [rows] int32
  DeviceBuffer sel;           // [rows] int32: rows whose logits are wanted
  DeviceBuffer decode_sel;    // [max_batch] int32: 0..B-1
  DeviceBuffer next;          // [logit_rows] int32 argmax
  DeviceBuffer argmax_ws;     // gpu::argmax_rows' workspace for logit_rows rows (kept zeroed)
  DeviceBuffer attn_ws;       // split-attention scratch for up to attn_ws_rows rows (decode)
  std::vector<gpu::RowSpan> spans;  // prefill: the forward's rows as runs of one slot (tensor-core attention); empty in decode
  int attn_ws_rows = 0;
  LinearScratch scratch;

  std::map<int, cudaGraphExec_t> graphs;  // decode step per batch size
  bool graphs_ok = true;

  // Per-op timing (Engine::profile_decode_step): with `marks` set, each op of a forward
  // records an event after itself, named by the op.
  std::vector<std::pair<const char*, cudaEvent_t>>* marks = nullptr;
  void mark(const char* op) {
    if (!marks) return;
    cudaEvent_t e = nullptr;
    LLMQ_CUDA_CHECK(cudaEventCreate(&e));
    LLMQ_CUDA_CHECK(cudaEventRecord(e, stream));
    marks->emplace_back(op, e);
  }

  ~Impl() {
    for (auto& [b, g] : graphs) cudaGraphExecDestroy(g);
    if (stream) cudaStreamDestroy(stream);
  }

  int q_dim() const { return static_cast<int>(c.q_dim()); }
  int kv_dim() const { return static_cast<int>(c.kv_dim()); }

  // The decoder on rows ids/pos/seq [M] (already on the device); leaves the final hidden
  // states (before the final norm) in x. A residual branch that a GEMV did not add in its
  // epilogue stays `pending` and the next RMSNorm adds it (one pass instead of two).
  void forward_rows(int M) {
    const int n_q = static_cast<int>(c.num_attention_heads), n_kv = static_cast<int>(c.num_key_value_heads);
    const int hd = static_cast<int>(c.head_dim);
    bf16* xs = x.as<bf16>();
    gpu::embed(embed.as<const bf16>(), ids.as<const int32_t>(), xs, M, static_cast<int>(c.hidden_size), stream);
    mark("embed");
    const bf16* pending = nullptr;
    for (size_t l = 0; l < layers.size(); ++l) {
      const GpuLayer& L = layers[l];
      const LinearIn qkv_in = norm(pending, L.ln1, L.qkv, M);
      linear(L.qkv, qkv_in, qkv.as<bf16>(), M, {});
      mark("qkv_proj");
      gpu::rope_and_cache({qkv.as<bf16>(), cos_t.as<const float>(), sin_t.as<const float>(), pos.as<const int32_t>(),
                           seq.as<const int32_t>(), k_cache[l].as<bf16>(), v_cache[l].as<bf16>(), M, n_q, n_kv, hd,
                           capacity},
                          stream);
      mark("rope_and_cache");
      const gpu::AttentionArgs args{qkv.as<const bf16>(), q_dim() + 2 * kv_dim(), k_cache[l].as<const bf16>(),
                                    v_cache[l].as<const bf16>(), pos.as<const int32_t>(), seq.as<const int32_t>(),
                                    attn.as<bf16>(), M, n_q, n_kv, hd, capacity, attn_ws.as<float>(), attn_ws_rows};
      if (spans.empty()) gpu::attention(args, stream);
      else gpu::attention(args, spans, stream);
      mark("attention");
      pending = residual_linear(L.o, attn.as<const bf16>(), M);
      mark("o_proj");
      const LinearIn mlp_in = norm(pending, L.ln2, L.gate_up, M);
      swiglu_linear(L.gate_up, mlp_in, M);
      pending = residual_linear(L.down, act.as<const bf16>(), M);
      mark("down_proj");
    }
    if (pending) {
      gpu::add_inplace(xs, pending, int64_t(M) * c.hidden_size, stream);
      mark("residual_add");
    }
  }

  void linear(const GpuLinear& L, LinearIn in, bf16* y, int M, const gpu::GemvEpilogue& epi) {
    L.forward(in, y, M, epi, scratch, *blas, stream);
  }

  // x += pending (if any), then RMSNorm of x with weight w for the linear `next`: into h, or
  // straight into the per-token codes when next is a W8A8 linear.
  LinearIn norm(const bf16* pending, const DeviceBuffer& w, const GpuLinear& next, int M) {
    gpu::RmsNormArgs a;
    a.x = x.as<bf16>();
    a.delta = pending;
    a.w = w.as<const bf16>();
    a.rows = M;
    a.n = static_cast<int>(c.hidden_size);
    a.eps = static_cast<float>(c.rms_norm_eps);
    a.quant = next.input_quant();
    if (a.quant == gpu::ActQuant::kNone) a.y = h.as<bf16>();
    a.codes = scratch.codes.as();
    a.ld_codes = next.K_pad;
    a.scales = scratch.scales.as<float>();
    gpu::rms_norm(a, stream);
    mark("rms_norm");
    return a.quant == gpu::ActQuant::kNone ? LinearIn{h.as<const bf16>(), false} : LinearIn{nullptr, true};
  }

  // x += in · Wᵀ: in the GEMV's epilogue, or returns the branch (in h) for the next norm.
  const bf16* residual_linear(const GpuLinear& L, const bf16* in, int M) {
    if (L.uses_gemv(M)) {
      gpu::GemvEpilogue e;
      e.residual = x.as<const bf16>();
      linear(L, {in, false}, x.as<bf16>(), M, e);
      return nullptr;
    }
    linear(L, {in, false}, h.as<bf16>(), M, {});
    return h.as<const bf16>();
  }

  // act = SwiGLU of the interleaved gate/up linear: in the GEMV's epilogue, or a pass after.
  void swiglu_linear(const GpuLinear& L, LinearIn in, int M) {
    if (L.uses_gemv(M)) {
      gpu::GemvEpilogue e;
      e.swiglu = true;
      linear(L, in, act.as<bf16>(), M, e);
      mark("gate_up_proj");
      return;
    }
    linear(L, in, gate_up.as<bf16>(), M, {});
    mark("gate_up_proj");
    gpu::silu_mul_pairs(gate_up.as<const bf16>(), act.as<bf16>(), M, static_cast<int>(c.intermediate_size), stream);
    mark("silu_mul");
  }

  // Final norm and lm_head on the rows of x listed in `rows` [S] (device), S <= logit_rows.
  void head(const int32_t* rows, int S) {
    const int hidden = static_cast<int>(c.hidden_size);
    gpu::embed(x.as<const bf16>(), rows, h.as<bf16>(), S, hidden, stream);  // gather the rows
    gpu::rms_norm(h.as<const bf16>(), final_norm.as<const bf16>(), h.as<bf16>(), S, hidden,
                  static_cast<float>(c.rms_norm_eps), stream);
    mark("final_norm");
    linear(lm_head, {h.as<const bf16>(), false}, logits.as<bf16>(), S, {});
    mark("lm_head");
  }

  // Checks a decode step's tokens, appends a position to each slot 0..B-1 and uploads the rows.
  Status begin_decode(const std::vector<int32_t>& tokens);

  void copy_rows_in(const std::vector<int32_t>& i, const std::vector<int32_t>& p, const std::vector<int32_t>& s) {
    const size_t bytes = i.size() * sizeof(int32_t);
    LLMQ_CUDA_CHECK(cudaMemcpyAsync(ids.as(), i.data(), bytes, cudaMemcpyHostToDevice, stream));
    LLMQ_CUDA_CHECK(cudaMemcpyAsync(pos.as(), p.data(), bytes, cudaMemcpyHostToDevice, stream));
    LLMQ_CUDA_CHECK(cudaMemcpyAsync(seq.as(), s.data(), bytes, cudaMemcpyHostToDevice, stream));
  }

  // Appends S rows of logits (bf16 on the device) to out as float32.
  void logits_to_host(int S, std::vector<float>& out) {
    std::vector<bf16> host(size_t(S) * c.vocab_size);
    LLMQ_CUDA_CHECK(cudaMemcpyAsync(host.data(), logits.as(), host.size() * 2, cudaMemcpyDeviceToHost, stream));
    LLMQ_CUDA_CHECK(cudaStreamSynchronize(stream));
    for (bf16 v : host) out.push_back(bf16_to_f32(v));
  }

  // One decode step for slots 0..B-1: forward + head + argmax, replayed from a CUDA graph
  // after the first (eager) step of this batch size.
  void decode_step(int B) {
    auto it = graphs.find(B);
    if (it != graphs.end()) {
      LLMQ_CUDA_CHECK(cudaGraphLaunch(it->second, stream));
      return;
    }
    const auto enqueue = [&] {
      forward_rows(B);
      head(decode_sel.as<const int32_t>(), B);
      gpu::argmax_rows(logits.as<const bf16>(), next.as<int32_t>(), B, static_cast<int>(c.vocab_size), argmax_ws.as(), stream);
      mark("argmax");
    };
    enqueue();  // eager: also creates the cuBLASLt plans and kernel attributes outside capture
    if (!opt.cuda_graphs || !graphs_ok) return;
    // Capture for the next steps; any failure just leaves this batch size eager.
    LLMQ_CUDA_CHECK(cudaStreamSynchronize(stream));
    cudaGraph_t graph = nullptr;
    if (cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
      graphs_ok = false;
      cudaGetLastError();
      return;
    }
    enqueue();
    cudaGraphExec_t exec = nullptr;
    if (cudaStreamEndCapture(stream, &graph) != cudaSuccess || cudaGraphInstantiate(&exec, graph, 0) != cudaSuccess) {
      graphs_ok = false;
      cudaGetLastError();
    } else {
      graphs[B] = exec;
    }
    if (graph) cudaGraphDestroy(graph);
  }
};

Engine::Engine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Engine::~Engine() = default;

const LlamaConfig& Engine::config() const { return impl_->c; }
int Engine::capacity() const { return impl_->capacity; }
int Engine::max_batch() const { return impl_->opt.max_batch; }
void Engine::synchronize() { LLMQ_CUDA_CHECK(cudaStreamSynchronize(impl_->stream)); }

size_t Engine::step_weight_bytes() const {
  size_t b = impl_->lm_head.bytes() + impl_->final_norm.bytes();
  for (const GpuLayer& l : impl_->layers)
    b += l.qkv.bytes() + l.o.bytes() + l.gate_up.bytes() + l.down.bytes() + l.ln1.bytes() + l.ln2.bytes();
  return b;
}

size_t Engine::weight_bytes() const {
  return step_weight_bytes() + impl_->embed.bytes() - (impl_->lm_head.shared_weight ? impl_->embed.bytes() : 0);
}

std::string Engine::format_name() const {
  const GpuLinear& l = impl_->layers.at(0).qkv;
  switch (l.kind) {
    case LinearKind::kBf16: return "bf16";
    case LinearKind::kFp8: return "fp8 w8a8";
    case LinearKind::kInt8: return "int8 w8a8";
    case LinearKind::kW4A16: return l.w4_desc;
  }
  return "?";
}

Expected<std::unique_ptr<Engine>> Engine::load(const std::string& dir, const EngineOptions& options) {
  const GpuInfo gpu_info = query_gpu();
  if (!gpu_info.available) return Status::error("runner: " + gpu_info.why_not);
  const std::string& rtn = options.quantize_in_memory;
  if (!rtn.empty() && rtn != "fp8" && rtn != "int8" && rtn != "w4a16")
    return Status::error("runner: in-memory quantization '" + rtn + "' unknown (fp8, int8, w4a16)");
  LLMQ_ASSIGN_OR_RETURN(HfCheckpoint ckpt, HfCheckpoint::open(dir));
  auto impl = std::make_unique<Impl>();
  Impl& e = *impl;
  e.c = ckpt.config();
  e.opt = options;
  const LlamaConfig& c = e.c;
  if (c.attention_bias || c.mlp_bias) return Status::error(dir + "/config.json: attention/MLP biases are not supported");
  if (options.max_batch < 1 || options.max_rows < options.max_batch)
    return Status::error("runner: max_batch must be >= 1 and <= max_rows");
  e.capacity = options.capacity > 0 ? options.capacity : static_cast<int>(std::min<int64_t>(c.max_position_embeddings, 2048));
  const int n_q = static_cast<int>(c.num_attention_heads), n_kv = static_cast<int>(c.num_key_value_heads);
  const int max_cap = gpu::attention_max_capacity(n_q, n_kv, static_cast<int>(c.head_dim));
  if (max_cap == 0)
    return Status::error(dir + ": head_dim " + std::to_string(c.head_dim) + " / GQA group " + std::to_string(n_q / n_kv) +
                         " not supported by the attention kernel (head_dim 8..256 power-of-two multiple of 8, group 1/2/4/8)");
  if (e.capacity > max_cap)
    return Status::error("runner: capacity " + std::to_string(e.capacity) + " exceeds the attention kernel's " +
                         std::to_string(max_cap) + " positions for this model");

  // Memory: weights (~ the checkpoint's bytes) + KV cache + activations must fit.
  size_t ckpt_bytes = 0;
  for (const std::string& name : ckpt.tensors().names()) {
    const SafetensorsEntry* en = ckpt.tensors().find(name);
    ckpt_bytes += en->end - en->begin;
  }
  const int64_t hidden = c.hidden_size, inter = c.intermediate_size;
  const int64_t rows = options.max_rows;
  const size_t kv_bytes = size_t(c.num_hidden_layers) * 2 * options.max_batch * e.capacity * c.kv_dim() * 2;
  e.logit_rows = std::max(options.max_batch, 64);
  const int64_t max_n = std::max<int64_t>(2 * inter, c.q_dim() + 2 * c.kv_dim());
  const int64_t max_k = std::max<int64_t>({inter, hidden, c.q_dim()});
  e.attn_ws_rows = static_cast<int>(std::min<int64_t>(rows, 64));  // decode batches that cannot fill the GPU
  const size_t attn_ws_bytes = gpu::attention_workspace_floats(e.attn_ws_rows, n_q, static_cast<int>(c.head_dim),
                                                               e.capacity) * sizeof(float);
  const size_t act_bytes = size_t(rows) * 2 * (2 * hidden + c.q_dim() + 2 * c.kv_dim() + c.q_dim() + 3 * inter) +
                           size_t(e.logit_rows) * c.vocab_size * 2 + attn_ws_bytes;
  const bool quantized = ckpt.quantization().has_value() || !rtn.empty();
  const size_t scratch_bytes =
      quantized ? size_t(rows) * (round_up(max_k, 16) + 4 + 4 * max_n + 2 * max_k) + size_t(max_n) * max_k * 2 : 0;
  size_t free_b = 0, total_b = 0;
  LLMQ_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  const size_t need = ckpt_bytes + kv_bytes + act_bytes + scratch_bytes + (64u << 20);
  if (need > free_b) {
    std::ostringstream m;
    m << "runner: out of GPU memory: needs about " << need / (1 << 20) << " MiB (weights " << ckpt_bytes / (1 << 20)
      << ", KV cache " << kv_bytes / (1 << 20) << ", activations " << (act_bytes + scratch_bytes) / (1 << 20) << "), "
      << free_b / (1 << 20) << " MiB free";
    return Status::error(m.str());
  }

  LLMQ_CUDA_CHECK(cudaStreamCreateWithFlags(&e.stream, cudaStreamNonBlocking));
  e.blas = std::make_unique<gpu::Blas>();
  const bool fp8_ok = gpu_info.major * 10 + gpu_info.minor >= 89;
  const int64_t q_dim = c.q_dim(), kv_dim = c.kv_dim();
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const auto prefix = [&](const char* s) { return layer_tensor_name(l, s); };
    const std::string where = dir + " layer " + std::to_string(l);
    std::vector<HostLinear> qkv, gu;
    LLMQ_ASSIGN_OR_RETURN(HostLinear hq, read_linear(ckpt, prefix("self_attn.q_proj"), q_dim, hidden, options.quantize_in_memory));
    LLMQ_ASSIGN_OR_RETURN(HostLinear hk, read_linear(ckpt, prefix("self_attn.k_proj"), kv_dim, hidden, options.quantize_in_memory));
    LLMQ_ASSIGN_OR_RETURN(HostLinear hv, read_linear(ckpt, prefix("self_attn.v_proj"), kv_dim, hidden, options.quantize_in_memory));
    LLMQ_ASSIGN_OR_RETURN(HostLinear ho, read_linear(ckpt, prefix("self_attn.o_proj"), hidden, q_dim, options.quantize_in_memory));
    LLMQ_ASSIGN_OR_RETURN(HostLinear hg, read_linear(ckpt, prefix("mlp.gate_proj"), inter, hidden, options.quantize_in_memory));
    LLMQ_ASSIGN_OR_RETURN(HostLinear hu, read_linear(ckpt, prefix("mlp.up_proj"), inter, hidden, options.quantize_in_memory));
    LLMQ_ASSIGN_OR_RETURN(HostLinear hd, read_linear(ckpt, prefix("mlp.down_proj"), hidden, inter, options.quantize_in_memory));
    qkv.push_back(std::move(hq));
    qkv.push_back(std::move(hk));
    qkv.push_back(std::move(hv));
    gu.push_back(std::move(hg));
    gu.push_back(std::move(hu));
    LLMQ_ASSIGN_OR_RETURN(HostLinear fqkv, fuse(std::move(qkv), where + " q/k/v"));
    LLMQ_ASSIGN_OR_RETURN(HostLinear fgu, fuse(std::move(gu), where + " gate/up", /*interleave=*/true));
    GpuLayer g;
    LLMQ_ASSIGN_OR_RETURN(g.qkv, upload(fqkv, fp8_ok));
    LLMQ_ASSIGN_OR_RETURN(g.o, upload(ho, fp8_ok));
    LLMQ_ASSIGN_OR_RETURN(g.gate_up, upload(fgu, fp8_ok));
    LLMQ_ASSIGN_OR_RETURN(g.down, upload(hd, fp8_ok));
    LLMQ_ASSIGN_OR_RETURN(TensorView ln1, ckpt.tensor(prefix("input_layernorm.weight"), {hidden}));
    LLMQ_ASSIGN_OR_RETURN(TensorView ln2, ckpt.tensor(prefix("post_attention_layernorm.weight"), {hidden}));
    g.ln1 = DeviceBuffer::from_host(to_bf16(ln1));
    g.ln2 = DeviceBuffer::from_host(to_bf16(ln2));
    e.layers.push_back(std::move(g));
  }
  LLMQ_ASSIGN_OR_RETURN(TensorView emb, ckpt.embed_tokens());
  LLMQ_ASSIGN_OR_RETURN(TensorView head, ckpt.lm_head());
  LLMQ_ASSIGN_OR_RETURN(TensorView norm, ckpt.tensor("model.norm.weight", {hidden}));
  e.embed = DeviceBuffer::from_host(to_bf16(emb));
  e.final_norm = DeviceBuffer::from_host(to_bf16(norm));
  e.lm_head.N = static_cast<int>(c.vocab_size);
  e.lm_head.K = e.lm_head.K_pad = static_cast<int>(hidden);
  if (head.data == emb.data)
    e.lm_head.shared_weight = e.embed.as<const bf16>();  // tied: one table serves both
  else
    e.lm_head.weight = DeviceBuffer::from_host(to_bf16(head));

  std::vector<float> cos_t, sin_t;
  ref::rope_tables_ref(c, e.capacity, &cos_t, &sin_t);
  e.cos_t = DeviceBuffer::from_host(cos_t);
  e.sin_t = DeviceBuffer::from_host(sin_t);
  const size_t slot_bytes = size_t(options.max_batch) * e.capacity * kv_dim * 2;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    e.k_cache.emplace_back(slot_bytes);
    e.v_cache.emplace_back(slot_bytes);
    LLMQ_CUDA_CHECK(cudaMemset(e.k_cache.back().as(), 0, slot_bytes));
    LLMQ_CUDA_CHECK(cudaMemset(e.v_cache.back().as(), 0, slot_bytes));
  }
  e.length.assign(options.max_batch, 0);

  e.x = DeviceBuffer(size_t(rows) * hidden * 2);
  e.h = DeviceBuffer(size_t(rows) * hidden * 2);
  e.qkv = DeviceBuffer(size_t(rows) * (q_dim + 2 * kv_dim) * 2);
  e.attn = DeviceBuffer(size_t(rows) * q_dim * 2);
  e.gate_up = DeviceBuffer(size_t(rows) * 2 * inter * 2);
  e.act = DeviceBuffer(size_t(rows) * inter * 2);
  e.logits = DeviceBuffer(size_t(e.logit_rows) * c.vocab_size * 2);
  e.ids = DeviceBuffer(size_t(rows) * 4);
  e.pos = DeviceBuffer(size_t(rows) * 4);
  e.seq = DeviceBuffer(size_t(rows) * 4);
  e.sel = DeviceBuffer(size_t(rows) * 4);
  std::vector<int32_t> iota(options.max_batch);
  for (int i = 0; i < options.max_batch; ++i) iota[i] = i;
  e.decode_sel = DeviceBuffer::from_host(iota);
  e.next = DeviceBuffer(size_t(e.logit_rows) * 4);
  e.argmax_ws = DeviceBuffer(gpu::argmax_workspace_bytes(e.logit_rows));
  LLMQ_CUDA_CHECK(cudaMemset(e.argmax_ws.as(), 0, e.argmax_ws.bytes()));
  e.attn_ws = DeviceBuffer(attn_ws_bytes);
  if (quantized) {
    e.scratch.codes = DeviceBuffer(size_t(rows) * round_up(max_k, 16));
    e.scratch.scales = DeviceBuffer(size_t(rows) * 4);
    e.scratch.acc = DeviceBuffer(size_t(rows) * max_n * 4);
    e.scratch.x_perm = DeviceBuffer(size_t(rows) * max_k * 2);
    e.scratch.w_bf16 = DeviceBuffer(size_t(max_n) * max_k * 2);
  }
  LLMQ_CUDA_CHECK(cudaDeviceSynchronize());
  return std::unique_ptr<Engine>(new Engine(std::move(impl)));
}

Expected<Tensor> Engine::prefill(const std::vector<std::vector<int32_t>>& prompts, bool all_logits) {
  Impl& e = *impl_;
  const int B = static_cast<int>(prompts.size());
  if (B < 1 || B > e.opt.max_batch)
    return Status::error("prefill: " + std::to_string(B) + " prompts for " + std::to_string(e.opt.max_batch) + " slots");
  std::vector<int32_t> ids, pos, seq;  // all rows, slot by slot
  std::vector<int> last_row(B);
  for (int b = 0; b < B; ++b) {
    const auto& p = prompts[b];
    if (p.empty() || static_cast<int>(p.size()) > e.capacity)
      return Status::error("prefill: prompt " + std::to_string(b) + " has " + std::to_string(p.size()) +
                           " tokens (1.." + std::to_string(e.capacity) + " allowed)");
    for (size_t t = 0; t < p.size(); ++t) {
      if (p[t] < 0 || p[t] >= e.c.vocab_size) return Status::error("prefill: token id " + std::to_string(p[t]) + " out of range");
      ids.push_back(p[t]);
      pos.push_back(static_cast<int32_t>(t));
      seq.push_back(b);
    }
    last_row[b] = static_cast<int>(ids.size()) - 1;
  }
  for (int b = 0; b < B; ++b) e.length[b] = static_cast<int>(prompts[b].size());
  const int total = static_cast<int>(ids.size());
  std::vector<float> out;
  out.reserve(size_t(all_logits ? total : B) * e.c.vocab_size);
  for (int r0 = 0; r0 < total; r0 += e.opt.max_rows) {
    const int M = std::min(e.opt.max_rows, total - r0);
    e.copy_rows_in({ids.begin() + r0, ids.begin() + r0 + M}, {pos.begin() + r0, pos.begin() + r0 + M},
                   {seq.begin() + r0, seq.begin() + r0 + M});
    e.spans = gpu::row_spans(pos.data() + r0, seq.data() + r0, M);
    e.forward_rows(M);
    e.spans.clear();
    std::vector<int32_t> want;  // rows of this chunk whose logits are returned, chunk-relative
    for (int r = r0; r < r0 + M; ++r)
      if (all_logits || std::find(last_row.begin(), last_row.end(), r) != last_row.end()) want.push_back(r - r0);
    for (size_t w0 = 0; w0 < want.size(); w0 += e.logit_rows) {
      const int S = static_cast<int>(std::min<size_t>(e.logit_rows, want.size() - w0));
      LLMQ_CUDA_CHECK(cudaMemcpyAsync(e.sel.as(), want.data() + w0, S * 4, cudaMemcpyHostToDevice, e.stream));
      e.head(e.sel.as<const int32_t>(), S);
      e.logits_to_host(S, out);
    }
  }
  const int64_t n = all_logits ? total : B;
  Tensor t(DType::kF32, {n, e.c.vocab_size});
  std::memcpy(t.raw(), out.data(), out.size() * sizeof(float));
  return t;
}

namespace {
Status check_decode(const std::vector<int32_t>& tokens, const std::vector<int>& length, int capacity, int64_t vocab) {
  if (tokens.empty() || tokens.size() > length.size())
    return Status::error("decode: " + std::to_string(tokens.size()) + " tokens for " + std::to_string(length.size()) + " slots");
  for (size_t b = 0; b < tokens.size(); ++b) {
    if (length[b] < 1) return Status::error("decode: slot " + std::to_string(b) + " was not prefilled");
    if (length[b] >= capacity) return Status::error("decode: slot " + std::to_string(b) + " is full (" + std::to_string(capacity) + " positions)");
    if (tokens[b] < 0 || tokens[b] >= vocab) return Status::error("decode: token id " + std::to_string(tokens[b]) + " out of range");
  }
  return Status::ok();
}
}  // namespace

Status Engine::Impl::begin_decode(const std::vector<int32_t>& tokens) {
  LLMQ_RETURN_IF_ERROR(check_decode(tokens, length, capacity, c.vocab_size));
  const int B = static_cast<int>(tokens.size());
  std::vector<int32_t> p(B), sq(B);
  for (int b = 0; b < B; ++b) p[b] = length[b]++, sq[b] = b;
  copy_rows_in(tokens, p, sq);
  return Status::ok();
}

Expected<std::vector<int32_t>> Engine::decode_greedy(const std::vector<int32_t>& tokens) {
  Impl& e = *impl_;
  LLMQ_RETURN_IF_ERROR(e.begin_decode(tokens));
  const int B = static_cast<int>(tokens.size());
  e.decode_step(B);
  std::vector<int32_t> next(B);
  LLMQ_CUDA_CHECK(cudaMemcpyAsync(next.data(), e.next.as(), B * 4, cudaMemcpyDeviceToHost, e.stream));
  LLMQ_CUDA_CHECK(cudaStreamSynchronize(e.stream));
  return next;
}

Expected<std::vector<std::pair<std::string, double>>> Engine::profile_decode_step(const std::vector<int32_t>& tokens) {
  Impl& e = *impl_;
  LLMQ_RETURN_IF_ERROR(e.begin_decode(tokens));
  const int B = static_cast<int>(tokens.size());
  std::vector<std::pair<const char*, cudaEvent_t>> marks;
  e.marks = &marks;
  e.mark("start");
  e.forward_rows(B);
  e.head(e.decode_sel.as<const int32_t>(), B);
  gpu::argmax_rows(e.logits.as<const bf16>(), e.next.as<int32_t>(), B, static_cast<int>(e.c.vocab_size), e.argmax_ws.as(), e.stream);
  e.mark("argmax");
  e.marks = nullptr;
  LLMQ_CUDA_CHECK(cudaStreamSynchronize(e.stream));
  std::vector<std::pair<std::string, double>> per_op;  // first-seen order
  for (size_t i = 1; i < marks.size(); ++i) {
    float ms = 0;
    LLMQ_CUDA_CHECK(cudaEventElapsedTime(&ms, marks[i - 1].second, marks[i].second));
    auto it = std::find_if(per_op.begin(), per_op.end(), [&](const auto& p) { return p.first == marks[i].first; });
    if (it == per_op.end()) per_op.emplace_back(marks[i].first, ms);
    else it->second += ms;
  }
  for (auto& [op, ev] : marks) cudaEventDestroy(ev);
  return per_op;
}

Expected<Tensor> Engine::decode(const std::vector<int32_t>& tokens) {
  Impl& e = *impl_;
  LLMQ_RETURN_IF_ERROR(decode_greedy(tokens).status());
  std::vector<float> out;
  e.logits_to_host(static_cast<int>(tokens.size()), out);
  Tensor t(DType::kF32, {static_cast<int64_t>(tokens.size()), e.c.vocab_size});
  std::memcpy(t.raw(), out.data(), out.size() * sizeof(float));
  return t;
}

Expected<GreedyResult> Engine::generate_greedy(const std::vector<std::vector<int32_t>>& prompts, int max_new,
                                               const std::vector<int32_t>& eos_ids) {
  Impl& e = *impl_;
  for (const auto& p : prompts)
    if (static_cast<int>(p.size()) + max_new > e.capacity)
      return Status::error("generate: prompt of " + std::to_string(p.size()) + " + " + std::to_string(max_new) +
                           " new tokens exceeds the cache capacity " + std::to_string(e.capacity));
  LLMQ_ASSIGN_OR_RETURN(Tensor logits, prefill(prompts));
  const int B = static_cast<int>(prompts.size());
  const int64_t V = e.c.vocab_size;
  GreedyResult r;
  r.tokens.resize(B);
  std::vector<int32_t> next(B);
  for (int b = 0; b < B; ++b) {
    const float* l = logits.data<float>() + b * V;
    next[b] = static_cast<int32_t>(std::max_element(l, l + V) - l);  // first maximum, as torch.argmax
  }
  std::vector<bool> done(B, max_new <= 0);
  const auto is_eos = [&](int32_t t) { return std::find(eos_ids.begin(), eos_ids.end(), t) != eos_ids.end(); };
  for (int step = 0; step < max_new; ++step) {
    bool all_done = true;
    for (int b = 0; b < B; ++b) {
      if (done[b]) continue;
      r.tokens[b].push_back(next[b]);
      done[b] = is_eos(next[b]) || static_cast<int>(r.tokens[b].size()) >= max_new;
      all_done = all_done && done[b];
    }
    if (all_done) break;
    LLMQ_ASSIGN_OR_RETURN(next, decode_greedy(next));  // finished slots run along, unread
  }
  return r;
}

}  // namespace llmq
