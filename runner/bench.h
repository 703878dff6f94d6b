// `llmq eval --bench`: latency and throughput of the runner on one checkpoint, mirroring
// vLLM's benchmark_latency / benchmark_throughput columns (DESIGN.md "Evaluation
// conventions"). For each batch size: prefill of `input_len` random tokens per sequence, then
// output_len - 1 greedy decode steps (CUDA graphs); total latency, prefill ms, decode
// ms/step, generated tokens/s. Also weight bytes on the GPU, peak GPU memory, the measured
// HBM read bandwidth, and the decode step's ratio to its floor:
//   floor = (weights read per step + KV cache read at the mean context) / HBM bandwidth.
// No timing is asserted anywhere; these are measurements.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/status.h"

namespace llmq {

struct BenchOptions {
  std::string model_dir;
  std::vector<int> batches = {1, 16, 64};
  int input_len = 512;
  int output_len = 128;
  bool cuda_graphs = true;
  std::string quantize_in_memory;  // EngineOptions::quantize_in_memory ("" = as stored)
  bool profile = false;            // also time one eager decode step per op kind
};

struct BenchRow {
  int batch = 0;
  double prefill_ms = 0;
  double decode_ms_per_step = 0;
  double total_ms = 0;
  double tokens_per_s = 0;  // generated tokens (batch · output_len) / total latency
  double floor_ms = 0;      // bytes read per decode step / measured bandwidth
  double floor_ratio = 0;   // decode_ms_per_step / floor_ms
  // With BenchOptions::profile: ms per op kind of one eager decode step (no CUDA graph, so
  // launch gaps count), summed over layers, in forward order.
  std::vector<std::pair<std::string, double>> step_profile;
  // With BenchOptions::profile: ms per op kind of one prefill of the batch's prompts (eager, as
  // every prefill), summed over layers and row chunks, in forward order.
  std::vector<std::pair<std::string, double>> prefill_profile;
  // With BenchOptions::profile: ms per decode step replayed back to back from the step's CUDA
  // graph (Engine::replay_decode_steps), against decode_ms_per_step's loop with the host round
  // trip between steps.
  double replay_ms_per_step = 0;
};

struct BenchResult {
  std::string model_dir, format, device;
  int input_len = 0, output_len = 0;
  uint64_t weight_bytes = 0;       // on the GPU
  uint64_t step_weight_bytes = 0;  // read by one decode step
  uint64_t peak_gpu_bytes = 0;     // device memory in use at the peak (all of this process)
  double hbm_read_gbps = 0;        // measured read bandwidth (GB/s, 1e9)
  std::vector<BenchRow> rows;
};

// Errors: built without CUDA, no GPU, or the engine's load errors.
Expected<BenchResult> run_bench(const BenchOptions& options);
// A fixed-width table (one line per batch, header with the model facts) and a JSON record.
std::string bench_table(const BenchResult& r);
std::string bench_json(const BenchResult& r);

// The measured HBM read bandwidth in GB/s (a streaming read of a 2 GiB buffer, best of 5).
double measure_hbm_read_gbps();

}  // namespace llmq
