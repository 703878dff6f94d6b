// cuBLASLt plans for runner/gemm.h. One plan per (kind, M, N, K): matmul descriptor, the
// three layouts and the heuristic's first algorithm, created on first use.
#include "runner/gemm.h"

#include <cublasLt.h>

#include <map>
#include <tuple>
#include <vector>

#include "runner/bench_timer.h"
#include "runner/cuda_check.h"
#include "runner/device_buffer.h"

namespace llmq::gpu {
namespace {

// Enough for every cuBLASLt Hopper kernel's split-K workspace (NVIDIA recommends 32 MiB on
// sm_90).
constexpr size_t kWorkspaceBytes = 32u << 20;

enum class Kind { kBf16, kFp8, kInt8 };

struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
};

}  // namespace

struct Blas::Impl {
  cublasLtHandle_t handle = nullptr;
  DeviceBuffer workspace{kWorkspaceBytes};
  std::map<std::tuple<Kind, int, int, int>, Plan> plans;

  // Descriptor and layouts of a (kind, M, N, K) product; no algorithm yet.
  static Plan describe(Kind kind, int M, int N, int K) {
    cudaDataType_t ab = CUDA_R_16BF, cd = CUDA_R_16BF, scale = CUDA_R_32F;
    cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
    if (kind == Kind::kFp8) ab = CUDA_R_8F_E4M3, cd = CUDA_R_32F;
    if (kind == Kind::kInt8) ab = CUDA_R_8I, cd = CUDA_R_32I, scale = CUDA_R_32I, compute = CUBLAS_COMPUTE_32I;
    Plan p;
    LLMQ_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.desc, compute, scale));
    const cublasOperation_t trans_a = CUBLAS_OP_T, trans_b = CUBLAS_OP_N;
    LLMQ_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &trans_a, sizeof(trans_a)));
    LLMQ_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &trans_b, sizeof(trans_b)));
    // Column-major views: W is K x N (ld K), X is K x M (ld K), Y is N x M (ld N).
    LLMQ_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.a, ab, K, N, K));
    LLMQ_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.b, ab, K, M, K));
    LLMQ_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.c, cd, N, M, N));
    return p;
  }

  static void destroy(Plan& p) {
    cublasLtMatrixLayoutDestroy(p.a);
    cublasLtMatrixLayoutDestroy(p.b);
    cublasLtMatrixLayoutDestroy(p.c);
    cublasLtMatmulDescDestroy(p.desc);
  }

  // Up to `count` of the heuristic's algorithms for p, best first.
  std::vector<cublasLtMatmulHeuristicResult_t> heuristics(const Plan& p, int count) {
    cublasLtMatmulPreference_t pref = nullptr;
    LLMQ_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    const size_t ws = kWorkspaceBytes;
    LLMQ_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
    // Split-K partial sums only in the f32/int32 compute type: the default also allows
    // reducing in the output type (bf16), which rounds every partial sum to 8 bits.
    const uint32_t schemes = CUBLASLT_REDUCTION_SCHEME_NONE | CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
    LLMQ_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &schemes,
                                                           sizeof(schemes)));
    std::vector<cublasLtMatmulHeuristicResult_t> results(count);
    int found = 0;
    LLMQ_CUBLAS_CHECK(
        cublasLtMatmulAlgoGetHeuristic(handle, p.desc, p.a, p.b, p.c, p.c, pref, count, results.data(), &found));
    cublasLtMatmulPreferenceDestroy(pref);
    results.resize(found);
    return results;
  }

  const Plan& plan(Kind kind, int M, int N, int K) {
    const auto key = std::make_tuple(kind, M, N, K);
    auto it = plans.find(key);
    if (it != plans.end()) return it->second;
    Plan p = describe(kind, M, N, K);
    const auto results = heuristics(p, 1);
    LLMQ_CHECK(!results.empty(), "cuBLASLt has no algorithm for a "
                                     << (kind == Kind::kBf16 ? "bf16" : kind == Kind::kFp8 ? "fp8" : "int8")
                                     << " GEMM M=" << M << " N=" << N << " K=" << K);
    p.algo = results[0].algo;
    return plans.emplace(key, p).first->second;
  }

  void matmul(Kind kind, const Plan& p, const cublasLtMatmulAlgo_t& algo, const void* x, const void* w, void* y,
              cudaStream_t s) {
    const float alpha_f = 1.0f, beta_f = 0.0f;
    const int32_t alpha_i = 1, beta_i = 0;
    const void* alpha = kind == Kind::kInt8 ? static_cast<const void*>(&alpha_i) : &alpha_f;
    const void* beta = kind == Kind::kInt8 ? static_cast<const void*>(&beta_i) : &beta_f;
    LLMQ_CUBLAS_CHECK(cublasLtMatmul(handle, p.desc, alpha, w, p.a, x, p.b, beta, y, p.c, y, p.c, &algo,
                                     workspace.as(), kWorkspaceBytes, s));
  }

  void run(Kind kind, const void* x, const void* w, void* y, int M, int N, int K, cudaStream_t s) {
    if (M == 0) return;
    const Plan& p = plan(kind, M, N, K);
    matmul(kind, p, p.algo, x, w, y, s);
  }
};

Blas::Blas() : impl_(std::make_unique<Impl>()) { LLMQ_CUBLAS_CHECK(cublasLtCreate(&impl_->handle)); }

Blas::~Blas() {
  for (auto& [key, p] : impl_->plans) Impl::destroy(p);
  cublasLtDestroy(impl_->handle);
}

void Blas::gemm_bf16(const uint16_t* x, const uint16_t* w, uint16_t* y, int M, int N, int K, cudaStream_t s) {
  impl_->run(Kind::kBf16, x, w, y, M, N, K, s);
}

void Blas::gemm_fp8(const uint8_t* xq, const uint8_t* wq, float* acc, int M, int N, int K, cudaStream_t s) {
  LLMQ_CHECK(K % 16 == 0, "fp8 GEMM needs K % 16 == 0, got " << K);
  impl_->run(Kind::kFp8, xq, wq, acc, M, N, K, s);
}

void Blas::gemm_int8(const int8_t* xq, const int8_t* wq, int32_t* acc, int M, int N, int K, cudaStream_t s) {
  LLMQ_CHECK(K % 4 == 0, "int8 GEMM needs K % 4 == 0, got " << K);
  impl_->run(Kind::kInt8, xq, wq, acc, M, N, K, s);
}

std::vector<Blas::AlgoTiming> Blas::time_bf16_algos(const uint16_t* x, const uint16_t* w, uint16_t* y, int M, int N,
                                                    int K, int max_algos, int iters) {
  Plan p = Impl::describe(Kind::kBf16, M, N, K);
  const auto results = impl_->heuristics(p, max_algos);
  std::vector<AlgoTiming> out;
  std::vector<uint16_t> first, bits(size_t(M) * N);
  for (const auto& r : results) {
    AlgoTiming t;
    const auto attr = [&](cublasLtMatmulAlgoConfigAttributes_t which) {
      uint32_t v = 0;
      size_t written = 0;
      cublasLtMatmulAlgoConfigGetAttribute(&r.algo, which, &v, sizeof(v), &written);
      return int(v);
    };
    t.tile = attr(CUBLASLT_ALGO_CONFIG_TILE_ID);
    t.stages = attr(CUBLASLT_ALGO_CONFIG_STAGES_ID);
    t.splitk = attr(CUBLASLT_ALGO_CONFIG_SPLITK_NUM);
    t.cluster = attr(CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID);
    impl_->matmul(Kind::kBf16, p, r.algo, x, w, y, nullptr);
    LLMQ_CUDA_CHECK(cudaMemcpy(bits.data(), y, bits.size() * 2, cudaMemcpyDeviceToHost));
    if (first.empty()) first = bits;
    t.same_bits = bits == first;
    // The run above was the warm-up.
    t.ms = gpu_ms_per_call([&] { impl_->matmul(Kind::kBf16, p, r.algo, x, w, y, nullptr); }, iters, 0);
    out.push_back(t);
  }
  Impl::destroy(p);
  return out;
}

}  // namespace llmq::gpu
