// llmq_runner_bench: the runner's benchmarks as a standalone program, for GPU machines where
// the full CLI is not built. `llmq eval --bench` runs the same run_bench; this program also
// synthesizes checkpoints, quantizes them in memory (--rtn) and times the linear kernels alone.
//   llmq_runner_bench --synth llama-3.1-8b DIR [LAYERS]  write a random-weight checkpoint
//                                                 (its first LAYERS decoder layers only)
//   llmq_runner_bench --model DIR [--batches 1,16,64] [--in 512] [--out 128] [--json FILE]
//                     [--rtn fp8|int8|w4a16]   quantize a BF16 checkpoint in memory first
//                     [--profile 1]            and time one eager decode step and one prefill per op kind
//   llmq_runner_bench --kernels                   linear kernels on Llama-3.1-8B shapes, then the
//                                                 decode GEMVs (runner/gemv.h) against cuBLASLt
//   llmq_runner_bench --algos [normal|decode]     cuBLASLt's candidate algorithms for the BF16
//                                                 prefill GEMMs at Llama-3.1-8B shapes, each timed
//                                                 (normal: on Gaussian operands; decode: at the
//                                                 decode batches 17..64 it takes, Gaussian)
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "core/numeric.h"
#include "formats/synth.h"
#include "runner/bench.h"
#include "runner/device_buffer.h"
#include "runner/bench_timer.h"
#include "runner/device_attribute.h"
#include "runner/gemm.h"
#include "runner/gemm_skinny.h"
#include "runner/gemv.h"
#include "runner/kernels.h"
#include "runner/w4a16.h"

namespace llmq {
namespace {

// Times fn over `iters` calls after 3 warm-up calls; microseconds per call.
template <class Fn>
double time_us(Fn fn, int iters = 50) {
  return gpu_ms_per_call(fn, iters, 3) * 1e3;
}

DeviceBuffer random_bytes(size_t n, uint32_t seed) {
  std::vector<uint32_t> v((n + 3) / 4);
  std::mt19937 rng(seed);
  for (auto& x : v) x = rng() & 0x3C3C3C3Cu;  // small bf16/fp8/int8 magnitudes, no NaN codes
  DeviceBuffer b(v.size() * 4);
  LLMQ_CUDA_CHECK(cudaMemcpy(b.as(), v.data(), v.size() * 4, cudaMemcpyHostToDevice));
  return b;
}

// Copies of a weight of `bytes` that cycling through them reads more than three times the L2
// (else the smaller shapes would be served from L2 and beat HBM).
size_t l2_defeating_copies(size_t bytes) {
  const int l2_bytes = gpu::device_attribute(cudaDevAttrL2CacheSize);
  return std::min<size_t>(32, std::max<size_t>(1, (3 * size_t(l2_bytes) + bytes - 1) / bytes));
}

// l2_defeating_copies of one random weight buffer.
std::vector<DeviceBuffer> weight_copies(size_t bytes, uint32_t seed) {
  const size_t copies = l2_defeating_copies(bytes);
  std::vector<DeviceBuffer> out;
  out.push_back(random_bytes(bytes, seed));
  for (size_t i = 1; i < copies; ++i) {
    out.emplace_back(bytes);
    LLMQ_CUDA_CHECK(cudaMemcpy(out.back().as(), out.front().as(), bytes, cudaMemcpyDeviceToDevice));
  }
  return out;
}

// The five Llama-3.1-8B linears of a decode step, as the GEMV and skinny tables time them.
struct DecodeShape { const char* name; int N, K; };
constexpr DecodeShape kDecodeShapes[] = {{"qkv 6144x4096", 6144, 4096},
                                         {"o 4096x4096", 4096, 4096},
                                         {"gate_up 28672x4096", 28672, 4096},
                                         {"down 4096x14336", 4096, 14336},
                                         {"lm_head 128256x4096", 128256, 4096}};

// The decode GEMVs of runner/gemv.h (no epilogue) on the five Llama-3.1-8B linears for
// M = 1, 4, 8: microseconds and percent of the measured HBM read bandwidth (weight bytes,
// plus the per-channel scales for W8A8, over the time), BF16 next to cuBLASLt on the same
// shape. The W8A8 columns time the GEMV alone (activations already quantized).
void gemv_bench(double hbm_gbps, gpu::Blas& blas) {
  const int max_m = gpu::kGemvMaxM, max_n = 128256, max_k = 14336;
  DeviceBuffer x = random_bytes(size_t(max_m) * max_k * 2, 11), xq = random_bytes(size_t(max_m) * max_k, 12);
  DeviceBuffer y(size_t(max_m) * max_n * 2), sx(max_m * 4), sw(max_n * 4);
  const std::vector<float> scales(max_n, 0.01f);
  LLMQ_CUDA_CHECK(cudaMemcpy(sx.as(), scales.data(), max_m * 4, cudaMemcpyHostToDevice));
  LLMQ_CUDA_CHECK(cudaMemcpy(sw.as(), scales.data(), max_n * 4, cudaMemcpyHostToDevice));
  std::printf("\ndecode GEMVs (us, %% of HBM %.0f GB/s)\n", hbm_gbps);
  // The tensor-core W8A8 GEMVs (runner/gemv_mma.cu) last; FP8's where the device has FP8 MMAs.
  const bool fp8_mma = gpu::gemv_fp8_mma_supported(gpu::kGemvMmaLd);
  std::printf("%-22s %2s %18s %18s %18s %18s %18s %18s\n", "linear [N x K]", "M", "gemv_bf16", "cublasLt_bf16",
              "gemv_fp8", "gemv_int8", "gemv_int8_mma", fp8_mma ? "gemv_fp8_mma" : "");
  for (const DecodeShape& s : kDecodeShapes) {
    const std::vector<DeviceBuffer> w16 = weight_copies(size_t(s.N) * s.K * 2, 13);
    const std::vector<DeviceBuffer> w8 = weight_copies(size_t(s.N) * s.K, 14);
    for (int M : {1, 2, 4, 8}) {
      size_t i = 0;  // the next weight copy
      const auto* xs = x.as<const uint16_t>();
      auto* ys = y.as<uint16_t>();
      const double t[6] = {
          time_us([&] { gpu::gemv_bf16(xs, w16[i++ % w16.size()].as<const uint16_t>(), ys, M, s.N, s.K, {}, nullptr); }),
          time_us([&] { blas.gemm_bf16(xs, w16[i++ % w16.size()].as<const uint16_t>(), ys, M, s.N, s.K, nullptr); }),
          time_us([&] {
            gpu::gemv_w8a8_fp8(xq.as<const uint8_t>(), sx.as<const float>(), w8[i++ % w8.size()].as<const uint8_t>(),
                               sw.as<const float>(), ys, M, s.N, s.K, {}, nullptr);
          }),
          time_us([&] {
            gpu::gemv_w8a8_int8(xq.as<const int8_t>(), sx.as<const float>(), w8[i++ % w8.size()].as<const int8_t>(),
                                sw.as<const float>(), ys, M, s.N, s.K, {}, nullptr);
          }),
          time_us([&] {
            gpu::gemv_w8a8_int8_mma(xq.as<const int8_t>(), sx.as<const float>(), w8[i++ % w8.size()].as<const int8_t>(),
                                    sw.as<const float>(), ys, M, s.N, s.K, {}, nullptr);
          }),
          !fp8_mma ? 0.0 : time_us([&] {
            gpu::gemv_w8a8_fp8_mma(xq.as<const uint8_t>(), sx.as<const float>(), w8[i++ % w8.size()].as<const uint8_t>(),
                                   sw.as<const float>(), ys, M, s.N, s.K, {}, nullptr);
          }),
      };
      const double w8_bytes = double(s.N) * (s.K + 4.0);
      const double bytes[6] = {double(s.N) * s.K * 2, double(s.N) * s.K * 2, w8_bytes, w8_bytes, w8_bytes, w8_bytes};
      std::printf("%-22s %2d", s.name, M);
      for (int f = 0; f < (fp8_mma ? 6 : 5); ++f)
        std::printf(" %9.1f us %4.0f%%", t[f], 100.0 * bytes[f] / (t[f] * 1e-6) / 1e9 / hbm_gbps);
      std::printf("\n");
    }
  }
  // The fixed cost of a call: the same GEMVs on 4096 rows of 16 columns (at most 128 KiB of
  // weights, served from L2): launch, one round trip, the reduction and the store. A linear
  // takes at least about this plus its bytes at full bandwidth (an HBM round trip is longer
  // than an L2 one), which bounds its percent of HBM above, most for the small shapes.
  std::printf("%-22s %2s %18s %18s %18s %18s\n", "fixed cost [4096 x 16]", "M", "gemv_bf16", "", "gemv_fp8",
              "gemv_int8");
  const int fixed_n = 4096, fixed_k = 16;
  const std::vector<DeviceBuffer> w16 = weight_copies(size_t(fixed_n) * fixed_k * 2, 15);
  const std::vector<DeviceBuffer> w8 = weight_copies(size_t(fixed_n) * fixed_k, 16);
  for (int M : {1, 4, 8}) {
    size_t i = 0;
    auto* ys = y.as<uint16_t>();
    const double t16 = time_us([&] {
      gpu::gemv_bf16(x.as<const uint16_t>(), w16[i++ % w16.size()].as<const uint16_t>(), ys, M, fixed_n, fixed_k, {},
                     nullptr);
    });
    const double t8[2] = {
        time_us([&] {
          gpu::gemv_w8a8_fp8(xq.as<const uint8_t>(), sx.as<const float>(), w8[i++ % w8.size()].as<const uint8_t>(),
                             sw.as<const float>(), ys, M, fixed_n, fixed_k, {}, nullptr);
        }),
        time_us([&] {
          gpu::gemv_w8a8_int8(xq.as<const int8_t>(), sx.as<const float>(), w8[i++ % w8.size()].as<const int8_t>(),
                              sw.as<const float>(), ys, M, fixed_n, fixed_k, {}, nullptr);
        }),
    };
    std::printf("%-22s %2d %9.1f us %5s %18s %9.1f us %5s %9.1f us %5s\n", "", M, t16, "", "", t8[0], "", t8[1], "");
  }
}

// The skinny BF16 GEMM (runner/gemm_skinny.h) against cuBLASLt on the five Llama-3.1-8B
// linears for M = 5, 8, 9, 16, 32, 64: microseconds and percent of the measured HBM read bandwidth
// (weight bytes over the time) at the default K splits, in blocks of 128 and of 64 weight rows
// and stages of 64 and 128 k, then, for the shapes whose columns of 128 do not fill the GPU, the
// microseconds at 1, 2, 4 and 8 splits (blocks of 128, stages of 128 k), to tune skinny_splits
// and the block and stage sizes.
void skinny_bench(double hbm_gbps, gpu::Blas& blas) {
  const int max_m = gpu::kSkinnyMaxM, max_n = 128256, max_k = 14336, sweep[] = {1, 2, 4, 8};
  DeviceBuffer x = random_bytes(size_t(max_m) * max_k * 2, 21), y(size_t(max_m) * max_n * 2);
  // Room for 8 splits of every shape that splits at all (N < 128 SMs' columns).
  const int sms = gpu::device_attribute(cudaDevAttrMultiProcessorCount);
  DeviceBuffer ws(std::max(gpu::skinny_workspace_bytes(max_m),
                           gpu::skinny_split_workspace_bytes(max_m, sms * gpu::kSkinnyBlockN, 8)));
  LLMQ_CUDA_CHECK(cudaMemset(ws.as(), 0, ws.bytes()));  // the kernel keeps its counters at zero
  std::printf("\nskinny BF16 GEMM (us, %% of HBM %.0f GB/s)\n", hbm_gbps);
  std::printf("%-22s %2s %18s %18s %18s %18s %18s %7s %9s %9s %9s %9s\n", "linear [N x K]", "M", "cublasLt_bf16",
              "skinny 128x64k", "skinny 64x64k", "skinny 128x128k", "skinny 64x128k", "splits/k", "1 split", "2", "4",
              "8");
  for (const DecodeShape& s : kDecodeShapes) {
    const std::vector<DeviceBuffer> w16 = weight_copies(size_t(s.N) * s.K * 2, 22);
    const bool splits_k = (s.N + gpu::kSkinnyBlockN - 1) / gpu::kSkinnyBlockN < sms;
    for (int M : {5, 8, 9, 16, 32, 64}) {
      size_t i = 0;
      const auto* xs = x.as<const uint16_t>();
      auto* ys = y.as<uint16_t>();
      const auto skinny_us = [&](int splits, int block_n, int chunk_k) {
        return time_us([&] {
          gpu::gemm_bf16_skinny(xs, w16[i++ % w16.size()].as<const uint16_t>(), ys, M, s.N, s.K, ws.as(), ws.bytes(),
                                nullptr, splits, block_n, chunk_k);
        });
      };
      const double t[5] = {
          time_us([&] { blas.gemm_bf16(xs, w16[i++ % w16.size()].as<const uint16_t>(), ys, M, s.N, s.K, nullptr); }),
          skinny_us(0, 128, 64),
          skinny_us(0, 64, 64),
          skinny_us(0, 128, 128),
          skinny_us(0, 64, 128),
      };
      std::printf("%-22s %2d", s.name, M);
      for (double us : t) std::printf(" %9.1f us %4.0f%%", us, 100.0 * s.N * s.K * 2 / (us * 1e-6) / 1e9 / hbm_gbps);
      std::printf(" %3d/%3d", gpu::skinny_splits(M, s.N, s.K, sms, ws.bytes()),
                  gpu::skinny_chunk_k(M, s.N, s.K, sms, ws.bytes()));
      if (splits_k)
        for (int splits : sweep) std::printf(" %6.1f us", skinny_us(splits, 128, 128));
      std::printf("\n");
    }
  }
}

int kernels_bench() {
  const double bw = measure_hbm_read_gbps();
  std::printf("HBM read bandwidth %.0f GB/s\n", bw);
  std::printf("%-22s %4s %10s %10s %10s %10s\n", "linear [N x K]", "M", "format", "us", "GB/s", "of HBM");
  struct Shape { const char* name; int N, K; };
  const Shape shapes[] = {{"qkv 6144x4096", 6144, 4096}, {"o 4096x4096", 4096, 4096},
                          {"gate_up 28672x4096", 28672, 4096}, {"down 4096x14336", 4096, 14336}};
  gpu::Blas blas;
  const int max_m = 64;
  DeviceBuffer x = random_bytes(size_t(max_m) * 14336 * 2, 1), y(size_t(max_m) * 28672 * 2);
  DeviceBuffer codes(size_t(max_m) * 14336), scales_x(max_m * 4), acc(size_t(max_m) * 28672 * 4);
  DeviceBuffer wdeq(size_t(28672) * 4096 * 2);
  DeviceBuffer w4_split(gpu::w4a16_split_bytes(28672, max_m));  // zeroed once, as the kernel needs
  LLMQ_CUDA_CHECK(cudaMemset(w4_split.as(), 0, w4_split.bytes()));
  const gpu::W4A16Scratch w4_scratch{nullptr, wdeq.as<uint16_t>(), w4_split.as(), w4_split.bytes()};
  double step_us[4][4] = {};  // [format][M index]: one decoder layer's linears
  const char* names[4] = {"bf16", "fp8", "int8", "w4a16"};
  const int ms[4] = {1, 16, 32, 64};
  for (const Shape& s : shapes) {
    // Weights cycle through copies, as in gemv_bench: one copy of the smaller shapes would be
    // served from L2 after the first call.
    const std::vector<DeviceBuffer> w16 = weight_copies(size_t(s.N) * s.K * 2, 2), w8 = weight_copies(size_t(s.N) * s.K, 3);
    DeviceBuffer sw(s.N * 4);
    std::vector<float> ones(s.N, 0.01f);
    LLMQ_CUDA_CHECK(cudaMemcpy(sw.as(), ones.data(), s.N * 4, cudaMemcpyHostToDevice));
    // Random codes in the tensor-core layout (N is a multiple of 16, K of 64), group 128.
    W4A16Layout l;
    l.out_features = s.N;
    l.in_features = s.K;
    l.group_size = 128;
    l.num_groups = s.K / 128;
    l.mma = true;
    l.packed.resize(size_t(s.N) * s.K / 8);
    std::mt19937 rng(4);
    for (auto& v : l.packed) v = rng();
    l.params.assign(size_t(s.N) * l.num_groups, f32_to_bf16(0.01f) | (8u << 16));
    std::vector<gpu::W4A16Weights> w4;
    w4.push_back(gpu::W4A16Weights::upload(l));
    while (w4.size() < l2_defeating_copies(w4.front().bytes())) w4.push_back(gpu::W4A16Weights::upload(l));
    for (int mi = 0; mi < 4; ++mi) {
      const int M = ms[mi];
      size_t i = 0;  // the next weight copy
      const auto* xs = x.as<const uint16_t>();
      auto* ys = y.as<uint16_t>();
      const double t[4] = {
          time_us([&] { blas.gemm_bf16(xs, w16[i++ % w16.size()].as<const uint16_t>(), ys, M, s.N, s.K, nullptr); }),
          time_us([&] {
            gpu::quantize_fp8_per_token(xs, codes.as<uint8_t>(), s.K, scales_x.as<float>(), M, s.K, nullptr);
            if (gpu::w8a8_decode_gemv(true, M, s.K) != gpu::W8A8Gemv::kNone)  // as the engine
              return gpu::gemv_w8a8_fp8_decode(codes.as<const uint8_t>(), scales_x.as<const float>(),
                                                w8[i++ % w8.size()].as<const uint8_t>(), sw.as<const float>(), ys, M,
                                                s.N, s.K, gpu::GemvEpilogue{}, nullptr);
            blas.gemm_fp8(codes.as<const uint8_t>(), w8[i++ % w8.size()].as<const uint8_t>(), acc.as<float>(), M, s.N, s.K, nullptr);
            gpu::scale_rows_cols_f32(acc.as<const float>(), scales_x.as<const float>(), sw.as<const float>(), ys, M, s.N, nullptr);
          }),
          time_us([&] {
            gpu::quantize_int8_per_token(xs, codes.as<int8_t>(), s.K, scales_x.as<float>(), M, s.K, nullptr);
            if (gpu::w8a8_decode_gemv(false, M, s.K) != gpu::W8A8Gemv::kNone)
              return gpu::gemv_w8a8_int8_decode(codes.as<const int8_t>(), scales_x.as<const float>(),
                                                 w8[i++ % w8.size()].as<const int8_t>(), sw.as<const float>(), ys, M,
                                                 s.N, s.K, gpu::GemvEpilogue{}, nullptr);
            blas.gemm_int8(codes.as<const int8_t>(), w8[i++ % w8.size()].as<const int8_t>(), acc.as<int32_t>(), M, s.N, s.K, nullptr);
            gpu::scale_rows_cols_i32(acc.as<const int32_t>(), scales_x.as<const float>(), sw.as<const float>(), ys, M, s.N, nullptr);
          }),
          time_us([&] { gpu::w4a16_gemm(w4[i++ % w4.size()], xs, ys, M, w4_scratch, blas, nullptr); }),
      };
      const double bytes[4] = {double(s.N) * s.K * 2, double(s.N) * s.K, double(s.N) * s.K, double(w4.front().bytes())};
      for (int f = 0; f < 4; ++f) {
        const double gbps = bytes[f] / (t[f] * 1e-6) / 1e9;
        std::printf("%-22s %4d %10s %10.1f %10.0f %9.0f%%\n", s.name, M, names[f], t[f], gbps, 100.0 * gbps / bw);
        step_us[f][mi] += t[f];
      }
    }
  }
  std::printf("one decoder layer's linears (us): ");
  for (int f = 0; f < 4; ++f)
    std::printf("%s M=1 %.1f M=16 %.1f M=32 %.1f M=64 %.1f%s", names[f], step_us[f][0], step_us[f][1], step_us[f][2],
                step_us[f][3], f < 3 ? " | " : "\n");
  gemv_bench(bw, blas);
  skinny_bench(bw, blas);
  return 0;
}

// n bf16 values drawn from N(0, sigma²), as real activations and weights (and llmq synth's).
DeviceBuffer random_normal_bf16(size_t n, uint32_t seed, float sigma) {
  std::vector<uint16_t> v(n);
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, sigma);
  for (auto& x : v) x = f32_to_bf16(dist(rng));
  return DeviceBuffer::from_host(v);
}

// cuBLASLt's heuristic candidates (up to 16) for the BF16 prefill GEMMs of the four
// Llama-3.1-8B linears at the engine's prefill chunk sizes: ms per call, TFLOP/s and whether
// the output is bit-identical to the heuristic's first choice (the one the engine runs).
// Operands: random bits of small magnitude (few toggling bits), or with `normal` Gaussian
// values (the tensor cores then draw more power, and the clock may drop).
int algos_bench(bool normal, bool decode) {
  normal = normal || decode;
  struct Shape { const char* name; int N, K; };
  const Shape shapes[] = {{"qkv 6144x4096", 6144, 4096}, {"o 4096x4096", 4096, 4096},
                          {"gate_up 28672x4096", 28672, 4096}, {"down 4096x14336", 4096, 14336}};
  const int max_m = 8192;
  const size_t x_n = size_t(max_m) * 14336, w_n = size_t(28672) * 4096;
  DeviceBuffer x = normal ? random_normal_bf16(x_n, 31, 1.0f) : random_bytes(x_n * 2, 31);
  DeviceBuffer w = normal ? random_normal_bf16(w_n, 32, 0.02f) : random_bytes(w_n * 2, 32);
  std::printf("operands: %s\n", normal ? "N(0, 1) activations, N(0, 0.02^2) weights" : "random bits & 0x3C3C");
  DeviceBuffer y(size_t(max_m) * 28672 * 2);
  gpu::Blas blas;
  std::printf("%-22s %5s %4s %5s %6s %7s %8s %10s %9s %5s\n", "linear [N x K]", "M", "algo", "tile", "stages",
              "split-k", "cluster", "ms", "TFLOP/s", "bits");
  const std::vector<int> ms = decode ? std::vector<int>{17, 32, 64} : std::vector<int>{2048, 4096, 8192};
  for (const Shape& s : shapes)
    for (int M : ms) {
      const auto t = blas.time_bf16_algos(x.as<const uint16_t>(), w.as<const uint16_t>(), y.as<uint16_t>(), M, s.N, s.K,
                                          16, decode ? 200 : 20);
      for (size_t a = 0; a < t.size(); ++a)
        std::printf("%-22s %5d %4zu %5d %6d %7d %8d %10.3f %9.1f %5s\n", s.name, M, a, t[a].tile, t[a].stages,
                    t[a].splitk, t[a].cluster, t[a].ms, 2.0 * M * s.N * s.K / (t[a].ms * 1e-3) / 1e12,
                    t[a].same_bits ? "same" : "diff");
    }
  return 0;
}

std::vector<int> parse_list(const char* s) {
  std::vector<int> out;
  for (const char* p = s; *p;) {
    out.push_back(std::atoi(p));
    const char* comma = std::strchr(p, ',');
    if (!comma) break;
    p = comma + 1;
  }
  return out;
}

int main_impl(int argc, char** argv) {
  if (argc >= 4 && std::strcmp(argv[1], "--synth") == 0) {
    auto preset = find_synth_preset(argv[2]);
    if (!preset) return std::fprintf(stderr, "%s\n", preset.status().message().c_str()), 2;
    std::filesystem::create_directories(argv[3]);
    SynthOptions options;
    if (argc >= 5) options.num_layers = std::atoi(argv[4]);  // the first N layers only
    const Status st = write_synthetic_checkpoint(*preset, options, argv[3]);
    if (!st) return std::fprintf(stderr, "%s\n", st.message().c_str()), 2;
    return 0;
  }
  if (argc >= 2 && std::strcmp(argv[1], "--kernels") == 0) return kernels_bench();
  if (argc >= 2 && std::strcmp(argv[1], "--algos") == 0)
    return algos_bench(argc >= 3 && std::strcmp(argv[2], "normal") == 0, argc >= 3 && std::strcmp(argv[2], "decode") == 0);
  BenchOptions o;
  std::string json_path;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    if (k == "--model") o.model_dir = argv[i + 1];
    else if (k == "--batches") o.batches = parse_list(argv[i + 1]);
    else if (k == "--in") o.input_len = std::atoi(argv[i + 1]);
    else if (k == "--out") o.output_len = std::atoi(argv[i + 1]);
    else if (k == "--json") json_path = argv[i + 1];
    else if (k == "--rtn") o.quantize_in_memory = argv[i + 1];
    else if (k == "--profile") o.profile = std::atoi(argv[i + 1]) != 0;
    else return std::fprintf(stderr, "unknown option %s\n", k.c_str()), 2;
  }
  if (o.model_dir.empty()) return std::fprintf(stderr, "usage: see runner/bench_main.cc\n"), 2;
  auto r = run_bench(o);
  if (!r) return std::fprintf(stderr, "%s\n", r.status().message().c_str()), 2;
  std::printf("%s", bench_table(*r).c_str());
  if (!json_path.empty()) std::ofstream(json_path) << bench_json(*r) << "\n";
  return 0;
}

}  // namespace
}  // namespace llmq

int main(int argc, char** argv) { return llmq::main_impl(argc, argv); }
