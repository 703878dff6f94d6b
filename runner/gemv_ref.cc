// CPU references of the decode GEMVs: kernels_ref.h's GEMMs and elementwise ops composed.
#include "runner/gemv_ref.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/check.h"
#include "core/numeric.h"
#include "runner/kernels_ref.h"

namespace llmq::ref {

void gemv_epilogue_ref(const bf16* o, const bf16* residual, bool swiglu, bf16* y, int M, int N) {
  LLMQ_CHECK(!(swiglu && residual), "the swiglu and residual epilogues are exclusive");
  const int64_t n_out = static_cast<int64_t>(M) * N;
  if (residual) {
    if (y != residual) std::copy(residual, residual + n_out, y);
    add_inplace_ref(y, o, n_out);
  } else if (swiglu) {
    LLMQ_CHECK(N % 2 == 0, "swiglu: N " << N << " is odd");
    // Interleaved (gate_i, up_i) columns -> silu_mul_ref's [gate | up] rows.
    const int inter = N / 2;
    std::vector<bf16> gate_up(static_cast<size_t>(n_out));
    for (int m = 0; m < M; ++m)
      for (int i = 0; i < inter; ++i) {
        gate_up[static_cast<size_t>(m) * N + i] = o[static_cast<int64_t>(m) * N + 2 * i];
        gate_up[static_cast<size_t>(m) * N + inter + i] = o[static_cast<int64_t>(m) * N + 2 * i + 1];
      }
    silu_mul_ref(gate_up.data(), y, M, inter);
  } else {
    std::copy(o, o + n_out, y);
  }
}

void gemv_bf16_ref(const bf16* x, const bf16* w, const bf16* residual, bool swiglu, bf16* y, int M, int N, int K) {
  std::vector<bf16> o(static_cast<size_t>(M) * N);
  gemm_bf16_ref(x, w, o.data(), M, N, K);
  gemv_epilogue_ref(o.data(), residual, swiglu, y, M, N);
}

void gemv_bf16_norm_ref(const bf16* x, const bf16* g, float eps, const bf16* w, const bf16* residual, bool swiglu,
                        bf16* y, int M, int N, int K) {
  std::vector<bf16> o(static_cast<size_t>(M) * N);
  for (int m = 0; m < M; ++m) {
    const bf16* xm = x + static_cast<int64_t>(m) * K;
    double sum_sq = 0.0;
    for (int k = 0; k < K; ++k) sum_sq += static_cast<double>(bf16_to_f32(xm[k])) * bf16_to_f32(xm[k]);
    const double r = 1.0 / std::sqrt(sum_sq / K + eps);
    for (int n = 0; n < N; ++n) {
      const bf16* wn = w + static_cast<int64_t>(n) * K;
      double dot = 0.0;
      for (int k = 0; k < K; ++k)
        dot += static_cast<double>(bf16_to_f32(xm[k])) * bf16_to_f32(g[k]) * bf16_to_f32(wn[k]);
      o[static_cast<size_t>(m) * N + n] = f32_to_bf16(static_cast<float>(dot * r));
    }
  }
  gemv_epilogue_ref(o.data(), residual, swiglu, y, M, N);
}

void gemv_w8a8_int8_ref(const int8_t* xq, const float* sx, const int8_t* wq, const float* sw, const bf16* residual,
                        bool swiglu, bf16* y, int M, int N, int ld) {
  std::vector<bf16> o(static_cast<size_t>(M) * N);
  gemm_w8a8_int8_ref(xq, sx, wq, sw, o.data(), M, N, ld);
  gemv_epilogue_ref(o.data(), residual, swiglu, y, M, N);
}

void gemv_w8a8_fp8_ref(const uint8_t* xq, const float* sx, const uint8_t* wq, const float* sw, const bf16* residual,
                       bool swiglu, bf16* y, int M, int N, int ld) {
  std::vector<bf16> o(static_cast<size_t>(M) * N);
  gemm_w8a8_fp8_ref(xq, sx, wq, sw, o.data(), M, N, ld);
  gemv_epilogue_ref(o.data(), residual, swiglu, y, M, N);
}

}  // namespace llmq::ref
