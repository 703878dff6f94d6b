// llmq_gptq_bench: seconds of GPU GPTQ (quantize_gptq_gpu) on Llama-3.1-8B linear shapes with a
// random correlated Hessian built on the device by HessianAccumulator (also timed), and the
// CPU quantize_gptq next to the GPU one on a smaller shape. Prints numbers; asserts nothing
// about time (style.md 12).
//
//   llmq_gptq_bench [--reps N] [--act-order] [--mse] [--asym] [--no-cpu]
//
// Shapes (8B: hidden 4096, intermediate 14336, 8 KV heads of 128): q|k|v fused [6144, 4096]
// (they share one Hessian, and GPTQ rows are independent given it, so fusing is exact), o
// [4096, 4096], gate|up fused [28672, 4096], down [4096, 14336].
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/numeric.h"
#include "core/stopwatch.h"
#include "quantizers/gpu/gptq_gpu.h"
#include "quantizers/gpu/hessian_gpu.h"
#include "runner/cuda_check.h"
#include "runner/device_buffer.h"

namespace {

using llmq::Clock;
using llmq::seconds_since;

using llmq::DType;
using llmq::Tensor;
using llmq::TensorView;


// Fast deterministic normals (xorshift64* + Box-Muller): the 14336-wide inputs need ~10^8.
struct Normal {
  uint64_t s;
  explicit Normal(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  double uniform() {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return ((s * 0x2545F4914F6CDD1Dull) >> 11) * (1.0 / 9007199254740992.0);
  }
  float operator()() {
    const double u1 = std::max(uniform(), 1e-300), u2 = uniform();
    return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
  }
};

// X [T, K]: AR(1)-correlated channels (rho 0.9) with log-normal channel scales, like
// tests/test_gptq.cc's correlated_hessian, so H is realistic (ill-conditioned, wide diagonal).
std::vector<float> correlated_inputs(int64_t T, int64_t K, uint64_t seed) {
  Normal z(seed);
  std::vector<float> scale(K);  // [K]
  for (auto& s : scale) s = std::exp(0.7f * z());
  std::vector<float> x(static_cast<size_t>(T * K));  // [T, K]
  const float rho = 0.9f, c = std::sqrt(1 - rho * rho);
  for (int64_t t = 0; t < T; ++t) {
    float prev = z();
    for (int64_t k = 0; k < K; ++k) {
      prev = rho * prev + c * z();
      x[t * K + k] = scale[k] * prev;
    }
  }
  return x;
}

// H [K, K] on the device from `adds` batches of T random tokens; prints the accumulation rate.
llmq::DeviceBuffer device_hessian(int64_t K, int64_t T, int adds, uint64_t seed) {
  llmq::gpu::HessianAccumulator acc(K);
  llmq::DeviceBuffer x_f32(static_cast<size_t>(T * K) * sizeof(float));   // [T, K]
  llmq::DeviceBuffer x_bf16(static_cast<size_t>(T * K) * sizeof(uint16_t));  // [T, K]
  double s_f32 = 0;
  for (int a = 0; a < adds; ++a) {
    const std::vector<float> x = correlated_inputs(T, K, seed + a);
    LLMQ_CUDA_CHECK(cudaMemcpy(x_f32.as(), x.data(), x_f32.bytes(), cudaMemcpyHostToDevice));
    if (a == 0) {  // warm-up (cuBLAS's first call)
      const TensorView v(DType::kF32, {T, K}, x_f32.as(), llmq::Device::kCuda);
      LLMQ_CHECK(acc.add(v).is_ok(), "warm-up add");
      LLMQ_CUDA_CHECK(cudaDeviceSynchronize());
      acc.reset();
    }
    const auto t = Clock::now();
    const llmq::Status st = acc.add(TensorView(DType::kF32, {T, K}, x_f32.as(), llmq::Device::kCuda));
    LLMQ_CUDA_CHECK(cudaDeviceSynchronize());
    s_f32 += seconds_since(t);
    LLMQ_CHECK(st.is_ok(), "hessian add: " << st.message());
    if (a == 0) {  // the bf16 path on the same tokens, timed separately (not accumulated)
      std::vector<uint16_t> xb(x.size());
      for (size_t i = 0; i < x.size(); ++i) xb[i] = llmq::f32_to_bf16(x[i]);
      LLMQ_CUDA_CHECK(cudaMemcpy(x_bf16.as(), xb.data(), x_bf16.bytes(), cudaMemcpyHostToDevice));
      llmq::gpu::HessianAccumulator acc_b(K);
      const TensorView vb(DType::kBF16, {T, K}, x_bf16.as(), llmq::Device::kCuda);
      LLMQ_CHECK(acc_b.add(vb).is_ok(), "bf16 warm-up");
      LLMQ_CUDA_CHECK(cudaDeviceSynchronize());
      const auto tb = Clock::now();
      LLMQ_CHECK(acc_b.add(vb).is_ok(), "bf16 add");
      LLMQ_CUDA_CHECK(cudaDeviceSynchronize());
      const double sb = seconds_since(tb);
      std::printf("hessian K=%-6lld  bf16 GEMM  %8.4f s per %lld tokens  (%.1f s per 262144 tokens)\n",
                  static_cast<long long>(K), sb, static_cast<long long>(T), sb * 262144.0 / T);
    }
  }
  std::printf("hessian K=%-6lld  f32 syrk   %8.4f s per %lld tokens  (%.1f s per 262144 tokens)\n",
              static_cast<long long>(K), s_f32 / adds, static_cast<long long>(T), s_f32 / adds * 262144.0 / T);
  const float* h = acc.finish();
  llmq::DeviceBuffer out(static_cast<size_t>(K * K) * sizeof(float));  // [K, K]
  LLMQ_CUDA_CHECK(cudaMemcpy(out.as(), h, out.bytes(), cudaMemcpyDeviceToDevice));
  return out;
}

Tensor random_weight(int64_t out, int64_t in, uint64_t seed) {
  Tensor w(DType::kF32, {out, in});
  Normal z(seed);
  float* p = w.data<float>();
  for (int64_t i = 0; i < w.numel(); ++i) p[i] = 0.02f * z();
  return w;
}

struct Shape2 {
  const char* name;
  int64_t out, in;
};

}  // namespace

int main(int argc, char** argv) {
  int reps = 3;
  bool cpu = true;
  llmq::GptqConfig cfg;  // group 128, block 128, damp 0.01: the defaults
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--reps" && i + 1 < argc) {
      reps = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--act-order") {
      cfg.act_order = true;
    } else if (a == "--mse") {
      cfg.mse_clip = true;
    } else if (a == "--asym") {
      cfg.range = llmq::Int4Range::kAsymWithZero;
    } else if (a == "--no-cpu") {
      cpu = false;
    } else {
      std::fprintf(stderr, "usage: llmq_gptq_bench [--reps N] [--act-order] [--mse] [--asym] [--no-cpu]\n");
      return 2;
    }
  }
  int dev = 0;
  cudaDeviceProp prop{};
  if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&prop, dev) != cudaSuccess) {
    std::fprintf(stderr, "llmq_gptq_bench: no CUDA device\n");
    return 1;
  }
  std::printf("device: %s; config: group %lld, block %lld, %s, act_order %d, mse %d; median of %d\n", prop.name,
              static_cast<long long>(cfg.group_size), static_cast<long long>(cfg.block_size),
              cfg.range == llmq::Int4Range::kSymmetric ? "sym" : "asym", cfg.act_order, cfg.mse_clip, reps);

  llmq::gpu::GptqGpuContext ctx;
  const int64_t kTokens = 4096;  // per add(); 4 adds = 16384 tokens >= every width here
  llmq::DeviceBuffer h4096 = device_hessian(4096, kTokens, 4, 1);
  llmq::DeviceBuffer h14336 = device_hessian(14336, kTokens, 4, 2);

  const Shape2 shapes[] = {{"qkv", 6144, 4096}, {"o", 4096, 4096}, {"gate_up", 28672, 4096}, {"down", 4096, 14336}};
  double layer_seconds = 0;
  for (const Shape2& sh : shapes) {
    const Tensor w = random_weight(sh.out, sh.in, 10 + sh.out);
    llmq::DeviceBuffer wd = llmq::DeviceBuffer::from_host(w.data<float>(), static_cast<size_t>(w.numel()));
    const TensorView wv(DType::kF32, {sh.out, sh.in}, wd.as(), llmq::Device::kCuda);
    const TensorView hv(DType::kF32, {sh.in, sh.in}, (sh.in == 4096 ? h4096 : h14336).as(), llmq::Device::kCuda);
    std::vector<double> total, factor, sweep;
    llmq::gpu::GptqGpuStats st;
    llmq::QuantReport rep;
    {  // warm-up (first-use costs), which also fills the error report
      auto q = llmq::gpu::quantize_gptq_gpu(ctx, wv, hv, cfg, &rep, &st);
      LLMQ_CHECK(q.has_value(), "quantize_gptq_gpu: " << q.status().message());
    }
    size_t peak = 0;
    for (int r = 0; r < reps; ++r) {  // timed without the report, as the pipeline would run
      const auto t = Clock::now();
      auto q = llmq::gpu::quantize_gptq_gpu(ctx, wv, hv, cfg, nullptr, &st);
      const double s = seconds_since(t);
      LLMQ_CHECK(q.has_value(), "quantize_gptq_gpu: " << q.status().message());
      total.push_back(s);
      factor.push_back(st.seconds_factor);
      sweep.push_back(st.seconds_sweep);
      peak = std::max(peak, st.peak_device_bytes);
    }
    auto median = [](std::vector<double> v) {
      std::sort(v.begin(), v.end());
      return v[v.size() / 2];
    };
    const double t = median(total);
    layer_seconds += t;
    std::printf("gptq gpu %-8s [%5lld, %5lld]  %7.3f s  (factor %.3f, sweep %.3f)  peak %.2f GB  "
                "out err %.5f  damp %.2f\n",
                sh.name, static_cast<long long>(sh.out), static_cast<long long>(sh.in), t, median(factor),
                median(sweep), peak / 1e9, rep.output_rel_error, rep.damp);
  }
  std::printf("gptq gpu 8B total (32 layers x the 4 shapes above): %.1f s\n", 32 * layer_seconds);

  if (cpu) {
    // CPU next to GPU on [1024, 4096] with the same H.
    const int64_t out = 1024, in = 4096;
    const Tensor w = random_weight(out, in, 99);
    Tensor h(DType::kF32, {in, in});
    LLMQ_CUDA_CHECK(cudaMemcpy(h.raw(), h4096.as(), h.nbytes(), cudaMemcpyDeviceToHost));
    llmq::QuantReport rc, rg;
    auto t = Clock::now();
    const llmq::QuantizedLinear qc = llmq::quantize_gptq(w.view(), h.view(), cfg, &rc);
    const double sc = seconds_since(t);
    t = Clock::now();
    auto qg = llmq::gpu::quantize_gptq_gpu(ctx, w.view(), h.view(), cfg, &rg);
    const double sg = seconds_since(t);
    LLMQ_CHECK(qg.has_value(), "quantize_gptq_gpu: " << qg.status().message());
    int64_t same = 0;
    for (int64_t i = 0; i < out * in; ++i) same += qc.codes.data<uint8_t>()[i] == qg->codes.data<uint8_t>()[i];
    std::printf("gptq cpu [%lld, %lld]  %7.3f s   gpu (host in/out) %7.3f s   codes equal %.4f%%   out err cpu %.5f gpu %.5f\n",
                static_cast<long long>(out), static_cast<long long>(in), sc, sg, 100.0 * same / (out * in),
                rc.output_rel_error, rg.output_rel_error);
  }
  return 0;
}
