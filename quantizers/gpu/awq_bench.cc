// llmq_awq_bench: seconds of AWQ's GPU kernels (awq_gpu.h) at Llama-3.1-8B shapes: the five
// clip searches of one layer (v, o, gate, up, down) on T = 512 sub-sampled tokens,
// awq_fake_quant_scaled on the fused gate|up weight [28672, 4096] and sum_squared_diff on a
// [16384, 4096] block output; optionally the CPU search next to the GPU one on v. Prints
// numbers; asserts nothing about time (style.md 12).
//
//   llmq_awq_bench [--reps N] [--tokens T] [--cpu]
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "core/numeric.h"
#include "core/stopwatch.h"
#include "quantizers/awq.h"
#include "quantizers/gpu/awq_gpu.h"
#include "runner/cuda_check.h"
#include "runner/device_buffer.h"

namespace {

using llmq::Clock;
using llmq::seconds_since;

using llmq::DType;
using llmq::Tensor;

// Normal(0, std) values with log-normal column scales when col_sigma > 0 (activations).
Tensor random_matrix(int64_t rows, int64_t cols, unsigned seed, float std_dev, float col_sigma) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> scale(cols, 1.0f);  // [cols]
  if (col_sigma > 0)
    for (float& s : scale) s = std::exp(col_sigma * nd(rng));
  Tensor m(DType::kF32, {rows, cols});
  float* p = m.data<float>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) p[r * cols + c] = std_dev * scale[c] * nd(rng);
  return m;
}

llmq::DeviceBuffer upload(const Tensor& t) {
  return llmq::DeviceBuffer::from_host(t.data<float>(), static_cast<size_t>(t.numel()));
}

// Median seconds of `reps` runs of f on the default stream (after one warm-up run).
template <class F>
double time_median(int reps, F f) {
  f();
  LLMQ_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<double> s;
  cudaEvent_t a, b;
  LLMQ_CUDA_CHECK(cudaEventCreate(&a));
  LLMQ_CUDA_CHECK(cudaEventCreate(&b));
  for (int r = 0; r < reps; ++r) {
    LLMQ_CUDA_CHECK(cudaEventRecord(a));
    f();
    LLMQ_CUDA_CHECK(cudaEventRecord(b));
    LLMQ_CUDA_CHECK(cudaEventSynchronize(b));
    float ms = 0;
    LLMQ_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    s.push_back(ms * 1e-3);
  }
  LLMQ_CUDA_CHECK(cudaEventDestroy(a));
  LLMQ_CUDA_CHECK(cudaEventDestroy(b));
  std::sort(s.begin(), s.end());
  return s[s.size() / 2];
}

struct Linear {
  const char* name;
  int64_t out, in;
};

}  // namespace

int main(int argc, char** argv) {
  int reps = 5;
  int64_t T = 512;
  bool cpu = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--reps" && i + 1 < argc) {
      reps = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--tokens" && i + 1 < argc) {
      T = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--cpu") {
      cpu = true;
    } else {
      std::fprintf(stderr, "usage: llmq_awq_bench [--reps N] [--tokens T] [--cpu]\n");
      return 2;
    }
  }
  int dev = 0;
  cudaDeviceProp prop{};
  if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&prop, dev) != cudaSuccess) {
    std::fprintf(stderr, "llmq_awq_bench: no CUDA device\n");
    return 1;
  }
  const llmq::AwqConfig cfg;  // group 128, 10 clip candidates, F16 scales: the defaults
  const int n_shrink = static_cast<int>(cfg.max_shrink * cfg.clip_grid);
  std::printf("device: %s; group %lld, %d clip candidates, T %lld; median of %d\n", prop.name,
              static_cast<long long>(cfg.group_size), n_shrink, static_cast<long long>(T), reps);

  const Tensor x4096 = random_matrix(T, 4096, 1, 1.0f, 0.8f), x14336 = random_matrix(T, 14336, 2, 1.0f, 0.8f);
  const llmq::DeviceBuffer x4096_d = upload(x4096), x14336_d = upload(x14336);
  const Linear linears[] = {{"v", 1024, 4096}, {"o", 4096, 4096}, {"gate", 14336, 4096}, {"up", 14336, 4096},
                            {"down", 4096, 14336}};
  double layer = 0;
  for (const Linear& l : linears) {
    const Tensor w = random_matrix(l.out, l.in, 10 + static_cast<unsigned>(l.out), 0.02f, 0.0f);
    const llmq::DeviceBuffer wd = upload(w);
    llmq::DeviceBuffer best(static_cast<size_t>(l.out * (l.in / cfg.group_size)) * sizeof(float));  // [out, G]
    const float* xd = (l.in == 4096 ? x4096_d : x14336_d).as<float>();
    const double s = time_median(reps, [&] {
      llmq::gpu::awq_search_clip(wd.as<float>(), l.out, l.in, xd, T, cfg, best.as<float>(), nullptr);
    });
    layer += s;
    const double flop = 2.0 * l.out * l.in * T * n_shrink;
    std::printf("clip search %-5s [%5lld, %5lld]  %8.4f s  %6.1f TFLOP/s\n", l.name, static_cast<long long>(l.out),
                static_cast<long long>(l.in), s, flop / s * 1e-12);
  }
  std::printf("clip search, one 8B layer: %.4f s (32 layers: %.2f s)\n", layer, 32 * layer);

  {  // fake quantization of the fused gate|up weight, interleaved rows
    const int64_t out = 28672, in = 4096;
    const Tensor w = random_matrix(out, in, 3, 0.02f, 0.0f);
    const Tensor s = random_matrix(1, in, 4, 1.0f, 0.0f);
    std::vector<float> sv(s.data<float>(), s.data<float>() + in);
    for (float& v : sv) v = std::exp(v);  // positive scales
    const llmq::DeviceBuffer wd = upload(w), sd = llmq::DeviceBuffer::from_host(sv);
    llmq::DeviceBuffer dst(static_cast<size_t>(out * in) * sizeof(uint16_t));  // [out, in] bf16
    const double t = time_median(reps, [&] {
      llmq::gpu::awq_fake_quant_scaled(wd.as<float>(), out / 2, in, sd.as<float>(), cfg, dst.as<uint16_t>(), 0, 2,
                                       nullptr);
      llmq::gpu::awq_fake_quant_scaled(wd.as<float>() + out / 2 * in, out / 2, in, sd.as<float>(), cfg,
                                       dst.as<uint16_t>(), 1, 2, nullptr);
    });
    std::printf("fake quant [%lld, %lld]  %8.5f s  %6.0f GB/s (f32 read + bf16 write)\n", static_cast<long long>(out),
                static_cast<long long>(in), t, out * in * 6.0 / t * 1e-9);
  }
  {  // squared difference of two bf16 block outputs
    const int64_t n = int64_t{16384} * 4096;
    llmq::DeviceBuffer a(static_cast<size_t>(n) * 2), b(static_cast<size_t>(n) * 2), acc(sizeof(double));
    LLMQ_CUDA_CHECK(cudaMemset(a.as(), 0x3C, a.bytes()));
    LLMQ_CUDA_CHECK(cudaMemset(b.as(), 0x3D, b.bytes()));
    LLMQ_CUDA_CHECK(cudaMemset(acc.as(), 0, acc.bytes()));
    const double t = time_median(reps, [&] {
      llmq::gpu::sum_squared_diff(a.as<uint16_t>(), b.as<uint16_t>(), n, acc.as<double>(), nullptr);
    });
    std::printf("sum_squared_diff n = %lld  %8.5f s  %6.0f GB/s\n", static_cast<long long>(n), t, n * 4.0 / t * 1e-9);
  }

  if (cpu) {  // the CPU search on v's shape, and how often the two choose the same clip
    const int64_t out = 1024, in = 4096, G = in / cfg.group_size;
    const Tensor w = random_matrix(out, in, 10 + out, 0.02f, 0.0f);
    const auto t0 = Clock::now();
    const Tensor ref = llmq::awq_search_clip_rows(w, x4096.view(), cfg);
    const double sc = seconds_since(t0);
    const llmq::DeviceBuffer wd = upload(w);
    llmq::DeviceBuffer best(static_cast<size_t>(out * G) * sizeof(float));  // [out, G]
    llmq::gpu::awq_search_clip(wd.as<float>(), out, in, x4096_d.as<float>(), T, cfg, best.as<float>(), nullptr);
    const std::vector<float> got = best.to_host<float>();
    int64_t same = 0;
    for (int64_t i = 0; i < out * G; ++i) same += got[i] == ref.data<float>()[i];
    std::printf("clip search cpu [%lld, %lld]  %8.3f s   choices equal to the gpu's: %.3f%%\n",
                static_cast<long long>(out), static_cast<long long>(in), sc, 100.0 * same / (out * G));
  }
  return 0;
}
