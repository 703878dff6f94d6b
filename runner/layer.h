// One Llama decoder layer on the device and its forward over token rows, shared by the engine
// (runner/engine.cc: prefill and decode over all layers) and the quantize pipeline
// (pipeline/quantize_gpu.h: calibration samples through one layer at a time).
//
// Forward semantics are model/llama.h's Precision::kBFloat16, as the engine's, except that a
// BF16 linear run as a GEMV (decode rows) normalizes its input itself with nothing pending
// and no hook (GpuLinear::fuses_norm): the normed rows are never rounded to bf16 there. Rows are
// (position, KV slot) pairs on the device; each slot is one sequence whose positions before
// pos[r] are already in the layer's cache. A residual branch that a GEMV did not add in its
// epilogue stays `pending` and is returned: the next layer's first RMSNorm adds it (one pass
// instead of two), or the caller does with gpu::add_inplace. The calibration forward may keep
// the residual stream in float32 instead (the layer_forward overload on float* x32).
//
// Linear-input hooks (LayerInputHook) see the bf16 input [rows, in] of each distinct linear
// input on the device (calibration/stats.h's four: attn_in, attn_out, mlp_in, mlp_out). With a
// hook the RMSNorms never fuse the W8A8 activation quantization (the hook needs the bf16 rows;
// the linear then quantizes them itself, to the same codes) nor move into a BF16 GEMV.
#pragma once

#include <cuda_runtime.h>

#include <array>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/status.h"
#include "formats/hf_config.h"
#include "runner/attention_prefill.h"
#include "runner/device_buffer.h"
#include "runner/linear.h"

namespace llmq {

// The decoder layer's weights on the device: q/k/v fused, gate/up fused with interleaved rows.
struct GpuLayer {
  GpuLinear qkv, o, gate_up, down;
  DeviceBuffer ln1, ln2;  // [hidden] bf16

  size_t bytes() const { return qkv.bytes() + o.bytes() + gate_up.bytes() + down.bytes() + ln1.bytes() + ln2.bytes(); }
};

// The seven linears of a layer as host linears (q, k, v, o, gate, up, down: model/llama.h's
// LinearSlot order) and the two norm weights ([hidden], any float dtype) -> the device layer.
// Fused partners must be all float or all quantized alike (fuse()). `where` names the layer in
// errors.
Expected<GpuLayer> make_gpu_layer(std::array<HostLinear, 7> linears, const TensorView& input_layernorm,
                                  const TensorView& post_attention_layernorm, bool fp8_supported,
                                  const std::string& where);

// The distinct linear inputs, in calibration/stats.h's LinearInput order.
enum class LayerInput : uint8_t { kAttnIn, kAttnOut, kMlpIn, kMlpOut };

// The (fused) linear of L that reads `input`: qkv, o, gate_up or down.
GpuLinear& linear_reading(GpuLayer& L, LayerInput input);
const GpuLinear& linear_reading(const GpuLayer& L, LayerInput input);

class LayerInputHook {
 public:
  virtual ~LayerInputHook() = default;
  // x: device bf16 [rows, cols] (row stride cols), valid during the call; enqueue work on the
  // forward's stream or synchronise it.
  virtual void on_input(LayerInput input, const bf16* x, int rows, int cols) = 0;
  // The forward stops after the hook saw this input (nothing after it is computed; x and the
  // cache hold a partial result). kMlpOut (default) runs the whole layer.
  LayerInput stop_after = LayerInput::kMlpOut;
};

// Per-op timing: with `events` set, each op of a forward records an event after itself.
struct OpMarks {
  std::vector<std::pair<const char*, cudaEvent_t>>* events = nullptr;
  void mark(const char* op, cudaStream_t stream) const;
};

// Activation buffers of one forward of up to max_rows rows (and the linears' scratch).
struct LayerBuffers {
  DeviceBuffer h;        // [rows, hidden]: norm outputs, residual branches
  DeviceBuffer qkv;      // [rows, q_dim + 2 kv_dim]
  DeviceBuffer attn;     // [rows, q_dim]
  DeviceBuffer gate_up;  // [rows, 2 inter]
  DeviceBuffer act;      // [rows, inter]
  DeviceBuffer attn_ws;  // split-attention scratch for up to attn_ws_rows rows (decode)
  int attn_ws_rows = 0;
  LinearScratch scratch; // allocated when quantized

  // quantized: the layers hold W8A8 or W4A16 linears (sizes the scratch).
  static LayerBuffers create(const LlamaConfig& c, int max_rows, int capacity, bool quantized);
  // The bytes create() allocates, for memory planning.
  static size_t activation_bytes(const LlamaConfig& c, int max_rows, int capacity);
  static size_t scratch_bytes(const LlamaConfig& c, int max_rows);
  size_t bytes() const;
};

// The RoPE cos/sin tables [capacity, hd/2] f32 on the device, as ref::rope_tables_ref makes
// them (model/llama.cc's values, Llama-3 scaling included).
struct RopeTables {
  DeviceBuffer cos, sin;
  static RopeTables upload(const LlamaConfig& c, int capacity);
};

// What every layer forward of a model shares.
struct LayerEnv {
  const LlamaConfig* config = nullptr;
  int capacity = 0;                 // positions per cache slot
  const float* cos = nullptr;       // [capacity, hd/2] f32 (ref::rope_tables_ref)
  const float* sin = nullptr;
  gpu::Blas* blas = nullptr;
  cudaStream_t stream = nullptr;
  OpMarks marks;

  static LayerEnv of(const LlamaConfig& c, int capacity, const RopeTables& rope, gpu::Blas* blas,
                     cudaStream_t stream) {
    LayerEnv e;
    e.config = &c;
    e.capacity = capacity;
    e.cos = rope.cos.as<const float>();
    e.sin = rope.sin.as<const float>();
    e.blas = blas;
    e.stream = stream;
    return e;
  }
};

// The rows of one forward: pos/seq [M] int32 on the device; spans (host) as runs of one slot
// for the tensor-core prefill attention, or empty (decode: per-row kernel).
struct LayerRows {
  const int32_t* pos = nullptr;
  const int32_t* seq = nullptr;
  int M = 0;
  const std::vector<gpu::RowSpan>* spans = nullptr;
  // Decode: row b at slot b's next position, so the RoPE kernel before attention writes no
  // older K/V row and attention may read those early (gpu::AttentionArgs::history_settled).
  bool one_row_per_slot = false;
};

// Rows of a forward whose layer output is wanted (prefill: each prompt's last row): indices
// into the forward's rows (ascending), their positions and slots; device int32 [S] each.
struct KeptRows {
  const int32_t* rows = nullptr;
  const int32_t* pos = nullptr;
  const int32_t* seq = nullptr;
  int S = 0;
};

// The attention of a layer after its q/k/v linear: b.qkv [M, q_dim + 2 kv_dim] gets RoPE, its
// k/v go to the cache, and the causal GQA attention writes b.attn [M, q_dim]. Part of
// layer_forward, and what the AWQ search runs for its attention-block loss.
void attend(const LayerEnv& env, LayerBuffers& b, const LayerRows& rows, bf16* k_cache, bf16* v_cache);

// x [M, hidden] (+ pending, if not null) through the layer: returns the new pending branch
// (x + it is the layer's output) or null when it was added in place. k_cache/v_cache
// [slots, capacity, kv_dim] bf16 of this layer.
const bf16* layer_forward(const LayerEnv& env, const GpuLayer& L, LayerBuffers& b, bf16* x, const bf16* pending,
                          const LayerRows& rows, bf16* k_cache, bf16* v_cache, LayerInputHook* hook = nullptr);

// layer_forward where only the kept rows' output is wanted (the model's last layer when a
// prefill wants each prompt's last logits): the RMSNorm, q/k/v and K/V cache append of every
// row (later forwards attend to them), then attention, o and the MLP of the kept rows alone,
// whose output ends compacted in x rows 0..S-1 (with the returned pending branch's rows
// 0..S-1, or null). Other bits than layer_forward's rows: the kept rows' attention runs as
// decode's kernels, and the linears at S rows may take other kernels.
const bf16* layer_forward_kept(const LayerEnv& env, const GpuLayer& L, LayerBuffers& b, bf16* x, const bf16* pending,
                               const LayerRows& rows, const KeptRows& kept, bf16* k_cache, bf16* v_cache);

// The same on a float32 residual stream x32 [M, hidden] (the calibration forward,
// pipeline/gpu_samples.h): the hidden state and the residual adds stay f32 instead of bf16
// (gpu::rms_norm_f32 adds a pending branch and writes the bf16 normed rows); every other op, and
// what the hooks see, is the bf16 forward's. A GEMV never adds a branch in its epilogue here (it
// would round x to bf16), so the result is the down_proj branch (in b.h) unless a hook stopped
// the forward (null); the caller adds it with gpu::add_bf16_to_f32.
const bf16* layer_forward(const LayerEnv& env, const GpuLayer& L, LayerBuffers& b, float* x32, const bf16* pending,
                          const LayerRows& rows, bf16* k_cache, bf16* v_cache, LayerInputHook* hook = nullptr);

}  // namespace llmq
