// llmq_attention_bench: prefill attention alone at Llama-3.1-8B heads (32 query heads, 8 kv
// heads, head_dim 128), the per-row CUDA-core kernel (gpu::attention without spans) against
// the tensor-core one (gpu::attention with the rows' spans), for batch x prompt length
// 1 x 2048, 16 x 512 and 64 x 512 (one layer's call; a whole prefill makes 32 of them).
// Prints ms per call, the speed-up, TFLOP/s over the causal work (4·hd FLOP per visible
// (row, key, head): q·k and p·v), and how far the two kernels' outputs are apart.
//   llmq_attention_bench [--iters N]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "core/numeric.h"
#include "runner/attention_prefill.h"
#include "runner/cuda_check.h"
#include "runner/device_buffer.h"
#include "runner/kernels.h"

namespace llmq {
namespace {

constexpr int kNq = 32, kNkv = 8, kHd = 128;

// Milliseconds per call of fn over `iters` calls after 2 warm-up calls.
template <class Fn>
double time_ms(Fn fn, int iters) {
  for (int i = 0; i < 2; ++i) fn();
  cudaEvent_t a, b;
  LLMQ_CUDA_CHECK(cudaEventCreate(&a));
  LLMQ_CUDA_CHECK(cudaEventCreate(&b));
  LLMQ_CUDA_CHECK(cudaEventRecord(a));
  for (int i = 0; i < iters; ++i) fn();
  LLMQ_CUDA_CHECK(cudaEventRecord(b));
  LLMQ_CUDA_CHECK(cudaEventSynchronize(b));
  float ms = 0.0f;
  LLMQ_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
  LLMQ_CUDA_CHECK(cudaEventDestroy(a));
  LLMQ_CUDA_CHECK(cudaEventDestroy(b));
  return ms / iters;
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
}

}  // namespace
}  // namespace llmq

int main(int argc, char** argv) {
  int iters = 10;
  for (int i = 1; i + 1 < argc; i += 2)
    if (std::strcmp(argv[i], "--iters") == 0) iters = std::max(1, std::atoi(argv[i + 1]));
  std::printf("prefill attention, heads %d/%d, head_dim %d (one layer)\n", llmq::kNq, llmq::kNkv, llmq::kHd);
  llmq::bench(1, 2048, iters);
  llmq::bench(16, 512, iters);
  llmq::bench(64, 512, iters);
  return 0;
}
