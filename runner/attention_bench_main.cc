// llmq_attention_bench: attention alone at Llama-3.1-8B heads (32 query heads, 8 kv heads,
// head_dim 128), one layer's call (a decode step or a whole prefill makes 32 of them).
//  prefill: the per-row CUDA-core kernel (gpu::attention without spans) against the
//    tensor-core one (gpu::attention with the rows' spans), for batch x prompt length
//    1 x 2048, 16 x 512 and 64 x 512. Prints ms per call, the speed-up, TFLOP/s over the
//    causal work (4·hd FLOP per visible (row, key, head): q·k and p·v), and how far the two
//    kernels' outputs are apart.
//  decode: one row per sequence at position len - 1 (batch x len, cache capacity), the
//    one-block kernel (no workspace) against the split path (the default: clusters; then the
//    same with AttentionArgs::history_settled, the two-kernel pair at each forced chunk size,
//    then each forced cluster size, history settled). Calls are captured in a CUDA graph (as
//    the engine's decode steps are) and cycle over enough layers' caches that K/V come from
//    HBM, not L2.
//    Prints µs per call, the 32-layer step in ms, GB/s of K/V read (batch · len · n_kv · hd ·
//    2 bytes, K and V) and its share of the measured HBM read bandwidth, and the outputs'
//    distance to the one-block kernel's.
//   llmq_attention_bench [--iters N] [--mode prefill|decode|all]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/numeric.h"
#include "runner/attention_prefill.h"
#include "runner/bench.h"
#include "runner/bench_timer.h"
#include "runner/cuda_check.h"
#include "runner/device_buffer.h"
#include "runner/kernels.h"

namespace llmq {
namespace {

constexpr int kNq = 32, kNkv = 8, kHd = 128;

// Milliseconds per call of fn over `iters` calls after 2 warm-up calls.
template <class Fn>
double time_ms(Fn fn, int iters) {
  return gpu_ms_per_call(fn, iters, 2);
}

// Random bf16 in [-2, 2) from a fast generator (the caches hold tens of millions of values).
std::vector<uint16_t> random_values(size_t n, uint64_t seed) {
  std::vector<uint16_t> v(n);
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (auto& e : v) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    e = f32_to_bf16(static_cast<float>(static_cast<int64_t>(x >> 40) - (1 << 23)) / (1 << 22));
  }
  return v;
}

void bench(int batch, int len, int iters) {
  const int rows = batch * len, capacity = len, kv_dim = kNkv * kHd, q_stride = (kNq + 2 * kNkv) * kHd;
  std::vector<int32_t> pos, seq;
  for (int b = 0; b < batch; ++b)
    for (int p = 0; p < len; ++p) pos.push_back(p), seq.push_back(b);
  DeviceBuffer q = DeviceBuffer::from_host(random_values(static_cast<size_t>(rows) * q_stride, 1));
  DeviceBuffer kc = DeviceBuffer::from_host(random_values(static_cast<size_t>(batch) * capacity * kv_dim, 2));
  DeviceBuffer vc = DeviceBuffer::from_host(random_values(static_cast<size_t>(batch) * capacity * kv_dim, 3));
  DeviceBuffer dpos = DeviceBuffer::from_host(pos), dseq = DeviceBuffer::from_host(seq);
  DeviceBuffer out_row(static_cast<size_t>(rows) * kNq * kHd * 2), out_tc(out_row.bytes());
  gpu::AttentionArgs a{q.as<uint16_t>(), q_stride, kc.as<uint16_t>(), vc.as<uint16_t>(), dpos.as<int32_t>(),
                       dseq.as<int32_t>(), out_row.as<uint16_t>(), rows, kNq, kNkv, kHd, capacity};
  const double row_ms = time_ms([&] { gpu::attention(a, nullptr); }, iters);
  a.out = out_tc.as<uint16_t>();
  const std::vector<gpu::RowSpan> spans = gpu::row_spans(pos.data(), seq.data(), rows);
  const double tc_ms = time_ms([&] { gpu::attention(a, spans, nullptr); }, iters);

  const std::vector<uint16_t> x = out_row.to_host<uint16_t>(), y = out_tc.to_host<uint16_t>();
  double max_diff = 0.0;
  size_t differ = 0, nonfinite = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double u = bf16_to_f32(x[i]), v = bf16_to_f32(y[i]);
    if (!std::isfinite(u) || !std::isfinite(v)) ++nonfinite;
    else max_diff = std::max(max_diff, std::fabs(u - v));
    differ += x[i] != y[i];
  }
  const double flops = 4.0 * kHd * kNq * batch * (static_cast<double>(len) * (len + 1) / 2);
  std::printf("%4d x %-5d  per-row %9.3f ms %7.2f TFLOP/s   tensor-core %8.3f ms %7.2f TFLOP/s   x%6.1f   "
              "max|diff| %.3g, %zu of %zu differ, %zu non-finite\n",
              batch, len, row_ms, flops / row_ms * 1e-9, tc_ms, flops / tc_ms * 1e-9, row_ms / tc_ms, max_diff, differ,
              x.size(), nonfinite);
  // The tensor-core kernel with each count of K/V stages (its arithmetic does not change).
  for (int stages : {2, 3, 4}) {
    a.prefill_stages = stages;
    const double ms = time_ms([&] { gpu::attention(a, spans, nullptr); }, iters);
    std::printf("%4d x %-5d  tensor-core, %d K/V stages %8.3f ms %7.2f TFLOP/s   %s\n", batch, len, stages, ms,
                flops / ms * 1e-9, out_tc.to_host<uint16_t>() == y ? "same bits" : "OTHER BITS");
  }
}

// Distance between two bf16 outputs: max |x - y| over finite pairs, elements that differ,
// non-finite ones.
struct Diff {
  double max_abs = 0.0;
  size_t differ = 0, nonfinite = 0;
};

Diff compare(const std::vector<uint16_t>& x, const std::vector<uint16_t>& y) {
  Diff d;
  for (size_t i = 0; i < x.size(); ++i) {
    const double u = bf16_to_f32(x[i]), v = bf16_to_f32(y[i]);
    if (!std::isfinite(u) || !std::isfinite(v)) ++d.nonfinite;
    else d.max_abs = std::max(d.max_abs, std::fabs(u - v));
    d.differ += x[i] != y[i];
  }
  return d;
}

// Milliseconds per call of enqueue(i, stream), i = 0 .. calls - 1, captured once in a CUDA
// graph and replayed `reps` times after 2 warm-up replays.
template <class Enqueue>
double graph_ms_per_call(Enqueue enqueue, int calls, int reps) {
  cudaStream_t s;
  LLMQ_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  LLMQ_CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < calls; ++i) enqueue(i, s);
  LLMQ_CUDA_CHECK(cudaStreamEndCapture(s, &graph));
  LLMQ_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  for (int i = 0; i < 2; ++i) LLMQ_CUDA_CHECK(cudaGraphLaunch(exec, s));
  cudaEvent_t a, b;
  LLMQ_CUDA_CHECK(cudaEventCreate(&a));
  LLMQ_CUDA_CHECK(cudaEventCreate(&b));
  LLMQ_CUDA_CHECK(cudaEventRecord(a, s));
  for (int i = 0; i < reps; ++i) LLMQ_CUDA_CHECK(cudaGraphLaunch(exec, s));
  LLMQ_CUDA_CHECK(cudaEventRecord(b, s));
  LLMQ_CUDA_CHECK(cudaEventSynchronize(b));
  float ms = 0.0f;
  LLMQ_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
  LLMQ_CUDA_CHECK(cudaEventDestroy(a));
  LLMQ_CUDA_CHECK(cudaEventDestroy(b));
  LLMQ_CUDA_CHECK(cudaGraphExecDestroy(exec));
  LLMQ_CUDA_CHECK(cudaGraphDestroy(graph));
  LLMQ_CUDA_CHECK(cudaStreamDestroy(s));
  return ms / (static_cast<double>(calls) * reps);
}

struct DecodeCase {
  int batch, len, capacity;
};

void bench_decode(const DecodeCase& c, int iters, double hbm_gbps) {
  const int kv_dim = kNkv * kHd, q_stride = (kNq + 2 * kNkv) * kHd;
  const size_t cache_elems = static_cast<size_t>(c.batch) * c.capacity * kv_dim;
  // Enough layers (distinct caches with the same contents) for >= 512 MiB of K/V, 10x the L2.
  const int layers = static_cast<int>(std::clamp<size_t>((size_t(512) << 20) / (4 * cache_elems) + 1, 1, 64));
  const std::vector<uint16_t> k_host = random_values(cache_elems, 2), v_host = random_values(cache_elems, 3);
  std::vector<DeviceBuffer> kc, vc;
  for (int l = 0; l < layers; ++l) kc.push_back(DeviceBuffer::from_host(k_host)), vc.push_back(DeviceBuffer::from_host(v_host));
  std::vector<int32_t> pos(c.batch, c.len - 1), seq(c.batch);
  for (int b = 0; b < c.batch; ++b) seq[b] = b;
  DeviceBuffer q = DeviceBuffer::from_host(random_values(static_cast<size_t>(c.batch) * q_stride, 1));
  DeviceBuffer dpos = DeviceBuffer::from_host(pos), dseq = DeviceBuffer::from_host(seq);
  DeviceBuffer out(static_cast<size_t>(c.batch) * kNq * kHd * 2);
  DeviceBuffer ws(gpu::attention_workspace_floats(c.batch, kNq, kHd, c.capacity) * sizeof(float));
  gpu::AttentionArgs a{q.as<uint16_t>(), q_stride, nullptr, nullptr, dpos.as<int32_t>(), dseq.as<int32_t>(),
                       out.as<uint16_t>(), c.batch, kNq, kNkv, kHd, c.capacity};
  const double kv_bytes = 2.0 * c.batch * c.len * kv_dim * 2;
  const int calls = layers * std::max(1, 64 / layers);
  std::vector<uint16_t> one_block;
  const auto run = [&](const std::string& name, float* workspace, int chunk, int cluster = 0, bool settled = false,
                       int ring = 0) {
    a.history_settled = settled;  // no call writes a cache here, so the promise holds
    a.kv_ring = ring;
    a.workspace = workspace;
    a.workspace_rows = workspace ? c.batch : 0;
    a.split_chunk = chunk;
    a.cluster = cluster;
    const double ms = graph_ms_per_call(
        [&](int i, cudaStream_t s) {
          gpu::AttentionArgs b = a;
          b.k_cache = kc[i % layers].as<uint16_t>();
          b.v_cache = vc[i % layers].as<uint16_t>();
          gpu::attention(b, s);
        },
        calls, iters);
    const std::vector<uint16_t> y = out.to_host<uint16_t>();
    if (workspace == nullptr) one_block = y;
    const Diff d = compare(one_block, y);
    const double gbps = kv_bytes / (ms * 1e-3) * 1e-9;
    std::printf("%4d x %-5d cap %-5d %-10s %8.2f us  step x32 %6.3f ms  %7.0f GB/s  %5.1f%% of HBM   "
                "vs one-block max|diff| %.3g, %zu differ, %zu non-finite\n",
                c.batch, c.len, c.capacity, name.c_str(), ms * 1e3, ms * 32, gbps, hbm_gbps > 0 ? 100 * gbps / hbm_gbps : 0.0,
                d.max_abs, d.differ, d.nonfinite);
  };
  run("one-block", nullptr, 0);
  run("split", ws.as<float>(), 0);
  run("settled", ws.as<float>(), 0, 0, true);  // the default path, older rows read before pdl_wait
  run("regs", ws.as<float>(), 0, 0, true, -1);  // whole_row's K/V through registers, or a ring
  run("ring", ws.as<float>(), 0, 0, true, 1);
  for (int chunk : {64, 128, 192, 256, 320, 512, 640, 1024}) {
    if (chunk > 2 * c.capacity) break;
    run("split/" + std::to_string(chunk), ws.as<float>(), chunk);
  }
  for (int cluster : {1, 2, 4, 8}) run("cluster/" + std::to_string(cluster), ws.as<float>(), 0, cluster, true);
  std::printf("%4d x %-5d cap %-5d clusters running at once (C = 1, 2, 4, 8): %d %d %d %d; grid has %d\n", c.batch,
              c.len, c.capacity, gpu::attention_max_active_clusters(a, 1), gpu::attention_max_active_clusters(a, 2),
              gpu::attention_max_active_clusters(a, 4), gpu::attention_max_active_clusters(a, 8), c.batch * kNkv);
}

}  // namespace
}  // namespace llmq

int main(int argc, char** argv) {
  int iters = 10;
  std::string mode = "all";
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--iters") == 0) iters = std::max(1, std::atoi(argv[i + 1]));
    else if (std::strcmp(argv[i], "--mode") == 0) mode = argv[i + 1];
  }
  if (mode != "all" && mode != "prefill" && mode != "decode") {
    std::fprintf(stderr, "usage: llmq_attention_bench [--iters N] [--mode prefill|decode|all]\n");
    return 2;
  }
  if (mode != "decode") {
    std::printf("prefill attention, heads %d/%d, head_dim %d (one layer)\n", llmq::kNq, llmq::kNkv, llmq::kHd);
    llmq::bench(1, 2048, iters);
    llmq::bench(16, 512, iters);
    llmq::bench(64, 512, iters);
  }
  if (mode != "prefill") {
    const double hbm = llmq::measure_hbm_read_gbps();
    std::printf("decode attention, heads %d/%d, head_dim %d, one row per sequence at position len - 1 (one layer's "
                "call); measured HBM read %.0f GB/s\n",
                llmq::kNq, llmq::kNkv, llmq::kHd, hbm);
    using llmq::DecodeCase;
    for (const DecodeCase& c : {DecodeCase{1, 512, 640}, DecodeCase{1, 640, 640}, DecodeCase{2, 512, 640},
                                DecodeCase{4, 512, 640}, DecodeCase{8, 512, 640}, DecodeCase{12, 512, 640},
                                DecodeCase{16, 512, 640}, DecodeCase{16, 640, 640}, DecodeCase{32, 512, 640},
                                DecodeCase{64, 512, 640}, DecodeCase{64, 640, 640}, DecodeCase{1, 2048, 2048},
                                DecodeCase{4, 2048, 2048}, DecodeCase{8, 2048, 2048}, DecodeCase{16, 2048, 2048}})
      llmq::bench_decode(c, iters, hbm);
  }
  return 0;
}
