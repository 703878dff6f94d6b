// The engine (runner/engine.h): loading, one forward over token rows, prefill, decode with
// CUDA graphs, greedy generation.
#include "runner/engine.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <functional>
#include <map>
#include <sstream>

#include "core/numeric.h"
#include "formats/checkpoint.h"
#include "runner/attention_prefill.h"
#include "runner/bench_timer.h"
#include "runner/device.h"
#include "runner/device_buffer.h"
#include "runner/gemm.h"
#include "runner/kernels.h"
#include "runner/layer.h"
#include "runner/linear.h"

namespace llmq {

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
  RopeTables rope;                            // [capacity, hd/2]
  std::vector<DeviceBuffer> k_cache, v_cache;  // per layer [max_batch, capacity, kv_dim] bf16
  std::vector<int> length;                    // per slot: positions in the cache

  // Activations for up to max_rows token rows.
  int logit_rows = 0;
  DeviceBuffer x;             // [rows, hidden]
  LayerBuffers bufs;          // the layer forward's activations (h, qkv, attn, gate_up, act) and scratch
  DeviceBuffer logits;        // [logit_rows, vocab] bf16
  DeviceBuffer ids, pos, seq;  // [rows] int32
  DeviceBuffer sel;           // [rows] int32: rows whose logits are wanted
  DeviceBuffer decode_sel;    // [max_batch] int32: 0..B-1
  DeviceBuffer kept;          // [3, max_batch] int32: a prefill chunk's kept rows, their pos, their seq
  DeviceBuffer next;          // [logit_rows] int32 argmax
  DeviceBuffer argmax_ws;     // gpu::argmax_rows' workspace for logit_rows rows (kept zeroed)
  std::vector<gpu::RowSpan> spans;  // prefill: the forward's rows as runs of one slot (tensor-core attention); empty in decode

  std::map<int, cudaGraphExec_t> graphs;  // decode step per batch size
  bool graphs_ok = true;

  // Per-op timing (Engine::profile_decode_step): with `marks` set, each op of a forward
  // records an event after itself, named by the op.
  std::vector<std::pair<const char*, cudaEvent_t>>* marks = nullptr;
  void mark(const char* op) { OpMarks{marks}.mark(op, stream); }

  ~Impl() {
    for (auto& [b, g] : graphs) cudaGraphExecDestroy(g);
    if (stream) cudaStreamDestroy(stream);
  }

  int q_dim() const { return static_cast<int>(c.q_dim()); }
  int kv_dim() const { return static_cast<int>(c.kv_dim()); }

  // The decoder on rows ids/pos/seq [M] (already on the device); leaves the final hidden
  // states (before the final norm) in x. Each layer may leave its residual branch pending for
  // the next layer's first RMSNorm (runner/layer.h); the last one is added here. With `keep`,
  // the last layer finishes only those rows (layer_forward_kept), left in x rows 0..S-1.
  void forward_rows(int M, const KeptRows* keep = nullptr) {
    bf16* xs = x.as<bf16>();
    gpu::embed(embed.as<const bf16>(), ids.as<const int32_t>(), xs, M, static_cast<int>(c.hidden_size), stream);
    mark("embed");
    LayerEnv env = LayerEnv::of(c, capacity, rope, blas.get(), stream);
    env.marks.events = marks;
    // Decode (no spans): begin_decode puts row b at slot b.
    const LayerRows rows{pos.as<const int32_t>(), seq.as<const int32_t>(), M, &spans, spans.empty()};
    const bf16* pending = nullptr;
    for (size_t l = 0; l < layers.size(); ++l) {
      bf16* kc = k_cache[l].as<bf16>();
      bf16* vc = v_cache[l].as<bf16>();
      if (keep && l + 1 == layers.size()) pending = layer_forward_kept(env, layers[l], bufs, xs, pending, rows, *keep, kc, vc);
      else pending = layer_forward(env, layers[l], bufs, xs, pending, rows, kc, vc);
    }
    if (pending) {
      gpu::add_inplace(xs, pending, int64_t(keep ? keep->S : M) * c.hidden_size, stream);
      mark("residual_add");
    }
  }

  void linear(const GpuLinear& L, LinearIn in, bf16* y, int M, const gpu::GemvEpilogue& epi) {
    L.forward(in, y, M, epi, bufs.scratch, *blas, stream);
  }

  // Final norm and lm_head on the rows of x listed in `rows` [S] (device), S <= logit_rows.
  void head(const int32_t* rows, int S) {
    const int hidden = static_cast<int>(c.hidden_size);
    bf16* h = bufs.h.as<bf16>();
    gpu::embed(x.as<const bf16>(), rows, h, S, hidden, stream);  // gather the rows
    LinearIn in{h, false};
    if (lm_head.fuses_norm(S)) {  // the GEMV normalizes (decode)
      in.norm_weight = final_norm.as<const bf16>();
      in.norm_eps = static_cast<float>(c.rms_norm_eps);
    } else {
      gpu::rms_norm(h, final_norm.as<const bf16>(), h, S, hidden, static_cast<float>(c.rms_norm_eps), stream);
      mark("final_norm");
    }
    linear(lm_head, in, logits.as<bf16>(), S, {});
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

  Status prefill_rows(const std::vector<std::vector<int32_t>>& prompts, bool all_logits,
                      const std::function<void(int S)>& on_logits);

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
  const size_t act_bytes = size_t(rows) * 2 * hidden + size_t(e.logit_rows) * c.vocab_size * 2 +
                           LayerBuffers::activation_bytes(c, static_cast<int>(rows), e.capacity);
  const bool quantized = ckpt.quantization().has_value() || !rtn.empty();
  const size_t scratch_bytes = quantized ? LayerBuffers::scratch_bytes(c, static_cast<int>(rows)) : 0;
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
    const auto read = [&](const char* name, int64_t out, int64_t in) {
      return read_linear(ckpt, prefix(name), out, in, options.quantize_in_memory);
    };
    std::array<HostLinear, 7> linears;  // q, k, v, o, gate, up, down
    LLMQ_ASSIGN_OR_RETURN(linears[0], read("self_attn.q_proj", q_dim, hidden));
    LLMQ_ASSIGN_OR_RETURN(linears[1], read("self_attn.k_proj", kv_dim, hidden));
    LLMQ_ASSIGN_OR_RETURN(linears[2], read("self_attn.v_proj", kv_dim, hidden));
    LLMQ_ASSIGN_OR_RETURN(linears[3], read("self_attn.o_proj", hidden, q_dim));
    LLMQ_ASSIGN_OR_RETURN(linears[4], read("mlp.gate_proj", inter, hidden));
    LLMQ_ASSIGN_OR_RETURN(linears[5], read("mlp.up_proj", inter, hidden));
    LLMQ_ASSIGN_OR_RETURN(linears[6], read("mlp.down_proj", hidden, inter));
    LLMQ_ASSIGN_OR_RETURN(TensorView ln1, ckpt.tensor(prefix("input_layernorm.weight"), {hidden}));
    LLMQ_ASSIGN_OR_RETURN(TensorView ln2, ckpt.tensor(prefix("post_attention_layernorm.weight"), {hidden}));
    LLMQ_ASSIGN_OR_RETURN(GpuLayer g, make_gpu_layer(std::move(linears), ln1, ln2, fp8_ok, where));
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

  e.rope = RopeTables::upload(c, e.capacity);
  const size_t slot_bytes = size_t(options.max_batch) * e.capacity * kv_dim * 2;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    e.k_cache.emplace_back(slot_bytes);
    e.v_cache.emplace_back(slot_bytes);
    LLMQ_CUDA_CHECK(cudaMemset(e.k_cache.back().as(), 0, slot_bytes));
    LLMQ_CUDA_CHECK(cudaMemset(e.v_cache.back().as(), 0, slot_bytes));
  }
  e.length.assign(options.max_batch, 0);

  e.x = DeviceBuffer(size_t(rows) * hidden * 2);
  e.bufs = LayerBuffers::create(c, static_cast<int>(rows), e.capacity, quantized);
  e.logits = DeviceBuffer(size_t(e.logit_rows) * c.vocab_size * 2);
  e.ids = DeviceBuffer(size_t(rows) * 4);
  e.pos = DeviceBuffer(size_t(rows) * 4);
  e.seq = DeviceBuffer(size_t(rows) * 4);
  e.sel = DeviceBuffer(size_t(rows) * 4);
  std::vector<int32_t> iota(options.max_batch);
  for (int i = 0; i < options.max_batch; ++i) iota[i] = i;
  e.decode_sel = DeviceBuffer::from_host(iota);
  e.kept = DeviceBuffer(size_t(3) * options.max_batch * 4);
  e.next = DeviceBuffer(size_t(e.logit_rows) * 4);
  e.argmax_ws = DeviceBuffer(gpu::argmax_workspace_bytes(e.logit_rows));
  LLMQ_CUDA_CHECK(cudaMemset(e.argmax_ws.as(), 0, e.argmax_ws.bytes()));
  LLMQ_CUDA_CHECK(cudaDeviceSynchronize());
  return std::unique_ptr<Engine>(new Engine(std::move(impl)));
}

// Prefills prompts[i] into slot i in row chunks; after each chunk, the logits of its rows that
// are wanted (every row with all_logits, else each prompt's last) are computed in groups of at
// most logit_rows and handed to on_logits(S) in e.logits, in row order. Without all_logits the
// last layer finishes only the wanted rows (their attention, o and MLP; forward_rows' keep):
// a batch-64 prefill of 512 tokens a prompt spends 1/32 of its work on the rest at 8B.
Status Engine::Impl::prefill_rows(const std::vector<std::vector<int32_t>>& prompts, bool all_logits,
                                  const std::function<void(int S)>& on_logits) {
  const int B = static_cast<int>(prompts.size());
  if (B < 1 || B > opt.max_batch)
    return Status::error("prefill: " + std::to_string(B) + " prompts for " + std::to_string(opt.max_batch) + " slots");
  std::vector<int32_t> ids, pos, seq;  // all rows, slot by slot
  std::vector<int> last_row(B);
  for (int b = 0; b < B; ++b) {
    const auto& p = prompts[b];
    if (p.empty() || static_cast<int>(p.size()) > capacity)
      return Status::error("prefill: prompt " + std::to_string(b) + " has " + std::to_string(p.size()) +
                           " tokens (1.." + std::to_string(capacity) + " allowed)");
    for (size_t t = 0; t < p.size(); ++t) {
      if (p[t] < 0 || p[t] >= c.vocab_size) return Status::error("prefill: token id " + std::to_string(p[t]) + " out of range");
      ids.push_back(p[t]);
      pos.push_back(static_cast<int32_t>(t));
      seq.push_back(b);
    }
    last_row[b] = static_cast<int>(ids.size()) - 1;
  }
  for (int b = 0; b < B; ++b) length[b] = static_cast<int>(prompts[b].size());
  const int total = static_cast<int>(ids.size());
  for (int r0 = 0; r0 < total; r0 += opt.max_rows) {
    const int M = std::min(opt.max_rows, total - r0);
    copy_rows_in({ids.begin() + r0, ids.begin() + r0 + M}, {pos.begin() + r0, pos.begin() + r0 + M},
                 {seq.begin() + r0, seq.begin() + r0 + M});
    mark("rows_in");
    std::vector<int32_t> want;  // rows of this chunk whose logits are wanted, chunk-relative
    for (int r = r0; r < r0 + M; ++r)
      if (all_logits || std::find(last_row.begin(), last_row.end(), r) != last_row.end()) want.push_back(r - r0);
    spans = gpu::row_spans(pos.data() + r0, seq.data() + r0, M);
    const int S = static_cast<int>(want.size());
    if (!all_logits && S < M) {  // the last layer on the wanted rows only (S <= B <= max_batch)
      std::vector<int32_t> k(want);  // rows | pos | seq
      for (int32_t w : want) k.push_back(pos[r0 + w]);
      for (int32_t w : want) k.push_back(seq[r0 + w]);
      LLMQ_CUDA_CHECK(cudaMemcpyAsync(kept.as(), k.data(), k.size() * 4, cudaMemcpyHostToDevice, stream));
      const int32_t* d = kept.as<const int32_t>();
      const KeptRows keep{d, d + S, d + 2 * S, S};
      forward_rows(M, &keep);
      spans.clear();
      if (S > 0) {  // they are x's first rows (S <= logit_rows: one group)
        head(decode_sel.as<const int32_t>(), S);
        on_logits(S);
      }
      continue;
    }
    forward_rows(M);
    spans.clear();
    for (size_t w0 = 0; w0 < want.size(); w0 += logit_rows) {
      const int n = static_cast<int>(std::min<size_t>(logit_rows, want.size() - w0));
      LLMQ_CUDA_CHECK(cudaMemcpyAsync(sel.as(), want.data() + w0, n * 4, cudaMemcpyHostToDevice, stream));
      head(sel.as<const int32_t>(), n);
      on_logits(n);
    }
  }
  return Status::ok();
}

Expected<Tensor> Engine::prefill(const std::vector<std::vector<int32_t>>& prompts, bool all_logits) {
  Impl& e = *impl_;
  std::vector<float> out;
  LLMQ_RETURN_IF_ERROR(e.prefill_rows(prompts, all_logits, [&](int S) {
    e.logits_to_host(S, out);
    e.mark("logits_out");
  }));
  const int64_t n = static_cast<int64_t>(out.size()) / e.c.vocab_size;
  Tensor t(DType::kF32, {n, e.c.vocab_size});
  std::memcpy(t.raw(), out.data(), out.size() * sizeof(float));
  return t;
}

Expected<std::vector<int32_t>> Engine::prefill_greedy(const std::vector<std::vector<int32_t>>& prompts) {
  Impl& e = *impl_;
  int done = 0;  // prompts whose next token is in e.next
  LLMQ_RETURN_IF_ERROR(e.prefill_rows(prompts, /*all_logits=*/false, [&](int S) {
    gpu::argmax_rows(e.logits.as<const bf16>(), e.next.as<int32_t>() + done, S, static_cast<int>(e.c.vocab_size),
                     e.argmax_ws.as(), e.stream);
    e.mark("argmax");
    done += S;
  }));
  std::vector<int32_t> next(prompts.size());
  LLMQ_CUDA_CHECK(cudaMemcpyAsync(next.data(), e.next.as(), next.size() * 4, cudaMemcpyDeviceToHost, e.stream));
  LLMQ_CUDA_CHECK(cudaStreamSynchronize(e.stream));
  return next;
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

namespace {
using OpEvents = std::vector<std::pair<const char*, cudaEvent_t>>;

// Milliseconds between consecutive events, each interval given to the later event's op,
// summed per op in first-seen order; destroys the events.
std::vector<std::pair<std::string, double>> per_op_ms(OpEvents& marks) {
  std::vector<std::pair<std::string, double>> per_op;
  for (size_t i = 1; i < marks.size(); ++i) {
    float ms = 0;
    LLMQ_CUDA_CHECK(cudaEventElapsedTime(&ms, marks[i - 1].second, marks[i].second));
    auto it = std::find_if(per_op.begin(), per_op.end(), [&](const auto& p) { return p.first == marks[i].first; });
    if (it == per_op.end()) per_op.emplace_back(marks[i].first, ms);
    else it->second += ms;
  }
  for (auto& [op, ev] : marks) cudaEventDestroy(ev);
  marks.clear();
  return per_op;
}
}  // namespace

Expected<std::vector<std::pair<std::string, double>>> Engine::profile_decode_step(const std::vector<int32_t>& tokens) {
  Impl& e = *impl_;
  LLMQ_RETURN_IF_ERROR(e.begin_decode(tokens));
  const int B = static_cast<int>(tokens.size());
  OpEvents marks;
  e.marks = &marks;
  e.mark("start");
  e.forward_rows(B);
  e.head(e.decode_sel.as<const int32_t>(), B);
  gpu::argmax_rows(e.logits.as<const bf16>(), e.next.as<int32_t>(), B, static_cast<int>(e.c.vocab_size), e.argmax_ws.as(), e.stream);
  e.mark("argmax");
  e.marks = nullptr;
  LLMQ_CUDA_CHECK(cudaStreamSynchronize(e.stream));
  return per_op_ms(marks);
}

Expected<double> Engine::replay_decode_steps(int B, int n) {
  Impl& e = *impl_;
  const auto it = e.graphs.find(B);
  if (it == e.graphs.end() || n < 1) return Status::error("replay_decode_steps: no decode graph of batch " + std::to_string(B));
  return gpu_ms_per_call([&] { LLMQ_CUDA_CHECK(cudaGraphLaunch(it->second, e.stream)); }, n, 0, e.stream);
}

Expected<std::vector<std::pair<std::string, double>>> Engine::profile_prefill(const std::vector<std::vector<int32_t>>& prompts) {
  Impl& e = *impl_;
  OpEvents marks;
  e.marks = &marks;
  e.mark("start");
  const Expected<std::vector<int32_t>> next = prefill_greedy(prompts);
  e.marks = nullptr;
  LLMQ_CUDA_CHECK(cudaStreamSynchronize(e.stream));
  if (!next) {
    for (auto& [op, ev] : marks) cudaEventDestroy(ev);
    return next.status();
  }
  return per_op_ms(marks);
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
  LLMQ_ASSIGN_OR_RETURN(std::vector<int32_t> next, prefill_greedy(prompts));
  const int B = static_cast<int>(prompts.size());
  GreedyResult r;
  r.tokens.resize(B);
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
