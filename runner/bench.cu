// run_bench (runner/bench.h) and the HBM read-bandwidth probe.
#include <algorithm>

#include "core/stopwatch.h"
#include "runner/bench.h"
#include "runner/cuda_check.h"
#include "runner/device.h"
#include "runner/device_attribute.h"
#include "runner/device_buffer.h"
#include "runner/engine.h"

namespace llmq {
namespace {

// Streams the buffer with 16-byte loads and folds it into one word per thread, written only
// if impossible, so the loads cannot be removed and nothing but the reads costs bandwidth.
__global__ void read_kernel(const uint4* __restrict__ p, size_t n, uint32_t* sink) {
  uint32_t acc = 0;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const uint4 v = __ldcs(p + i);  // streaming: no L2 reuse to flatter the number
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x9E3779B9u) *sink = acc;
}

double ms_since(Clock::time_point t) { return 1e3 * seconds_since(t); }

size_t used_bytes() {
  size_t free_b = 0, total_b = 0;
  LLMQ_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  return total_b - free_b;
}

}  // namespace

double measure_hbm_read_gbps() {
  const size_t bytes = size_t(2) << 30;
  DeviceBuffer buf(bytes), sink(4);
  LLMQ_CUDA_CHECK(cudaMemset(buf.as(), 1, bytes));
  const int sms = gpu::device_attribute(cudaDevAttrMultiProcessorCount);
  cudaEvent_t a, b;
  LLMQ_CUDA_CHECK(cudaEventCreate(&a));
  LLMQ_CUDA_CHECK(cudaEventCreate(&b));
  float best = 1e30f;
  for (int i = 0; i < 6; ++i) {  // the first run warms up and is not counted
    LLMQ_CUDA_CHECK(cudaEventRecord(a));
    read_kernel<<<sms * 8, 512>>>(buf.as<const uint4>(), bytes / 16, sink.as<uint32_t>());
    LLMQ_CUDA_CHECK_LAUNCH();
    LLMQ_CUDA_CHECK(cudaEventRecord(b));
    LLMQ_CUDA_CHECK(cudaEventSynchronize(b));
    float ms = 0;
    LLMQ_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    if (i > 0) best = std::min(best, ms);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return bytes / (best * 1e-3) / 1e9;
}

Expected<BenchResult> run_bench(const BenchOptions& o) {
  const GpuInfo gpu = query_gpu();
  if (!gpu.available) return Status::error("bench: " + gpu.why_not);
  if (o.batches.empty() || o.input_len < 1 || o.output_len < 2)
    return Status::error("bench: needs batch sizes, --in >= 1 and --out >= 2");
  BenchResult r;
  r.model_dir = o.model_dir;
  r.device = gpu.name;
  r.input_len = o.input_len;
  r.output_len = o.output_len;
  r.hbm_read_gbps = measure_hbm_read_gbps();
  const size_t used_before = used_bytes();

  EngineOptions eo;
  eo.max_batch = *std::max_element(o.batches.begin(), o.batches.end());
  eo.capacity = o.input_len + o.output_len + (o.profile ? 2 : 0);
  eo.max_rows = std::max(eo.max_batch, 8192);
  eo.cuda_graphs = o.cuda_graphs;
  eo.quantize_in_memory = o.quantize_in_memory;
  LLMQ_ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine, Engine::load(o.model_dir, eo));
  r.format = engine->format_name() + (o.quantize_in_memory.empty() ? "" : " (RTN in memory)");
  r.weight_bytes = engine->weight_bytes();
  r.step_weight_bytes = engine->step_weight_bytes();
  size_t peak = used_bytes();
  const LlamaConfig& c = engine->config();

  for (int B : o.batches) {
    std::vector<std::vector<int32_t>> prompts(B);
    uint32_t s = 12345u + B;
    for (auto& p : prompts)
      for (int t = 0; t < o.input_len; ++t) {
        s = s * 1664525u + 1013904223u;
        p.push_back(static_cast<int32_t>((s >> 8) % c.vocab_size));
      }
    // Warm-up (cuBLASLt plans, the decode graph of this batch size), then the timed run.
    LLMQ_RETURN_IF_ERROR(engine->prefill_greedy(prompts).status());
    std::vector<int32_t> next(B, 1);
    for (int i = 0; i < 3; ++i) {
      LLMQ_ASSIGN_OR_RETURN(next, engine->decode_greedy(next));
    }
    engine->synchronize();

    const auto t0 = Clock::now();
    LLMQ_ASSIGN_OR_RETURN(next, engine->prefill_greedy(prompts));
    const double prefill_ms = ms_since(t0);
    const auto t1 = Clock::now();
    for (int step = 1; step < o.output_len; ++step) {
      LLMQ_ASSIGN_OR_RETURN(next, engine->decode_greedy(next));
    }
    engine->synchronize();
    const double decode_ms = ms_since(t1);
    peak = std::max(peak, used_bytes());

    BenchRow row;
    if (o.profile) {
      // First: the profiles' prefill rewrites the rows (positions, slots) the graph reads.
      LLMQ_ASSIGN_OR_RETURN(row.replay_ms_per_step, engine->replay_decode_steps(B, o.output_len - 1));
      // The first profiled step also creates its events: keep the second.
      for (int i = 0; i < 2; ++i) {
        LLMQ_ASSIGN_OR_RETURN(row.step_profile, engine->profile_decode_step(next));
      }
      LLMQ_ASSIGN_OR_RETURN(row.prefill_profile, engine->profile_prefill(prompts));
    }
    row.batch = B;
    row.prefill_ms = prefill_ms;
    row.decode_ms_per_step = decode_ms / (o.output_len - 1);
    row.total_ms = prefill_ms + decode_ms;
    row.tokens_per_s = static_cast<double>(B) * o.output_len / (row.total_ms * 1e-3);
    // KV bytes read per step at the mean context of the decode phase.
    const double mean_ctx = o.input_len + o.output_len / 2.0;
    const double kv_bytes = 2.0 * c.num_hidden_layers * B * mean_ctx * c.kv_dim() * 2;
    row.floor_ms = (r.step_weight_bytes + kv_bytes) / (r.hbm_read_gbps * 1e9) * 1e3;
    row.floor_ratio = row.decode_ms_per_step / row.floor_ms;
    r.rows.push_back(row);
  }
  r.peak_gpu_bytes = peak > used_before ? peak - used_before : 0;
  return r;
}

}  // namespace llmq
