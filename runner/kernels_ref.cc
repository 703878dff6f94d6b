// CPU references of the runner's kernels; each mirrors the rounding points of model/llama.cc
// (Precision::kBFloat16), see runner/kernels_ref.h.
#include "runner/kernels_ref.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/numeric.h"
#include "model/llama.h"
#include "model/quantized_linear.h"

namespace llmq::ref {
namespace {

float f(bf16 v) { return bf16_to_f32(v); }
bf16 b(float v) { return f32_to_bf16(v); }
float round_bf16(float v) { return bf16_to_f32(f32_to_bf16(v)); }

}  // namespace

void rms_norm_ref(const bf16* x, const bf16* w, bf16* y, int rows, int n, float eps) {
  for (int r = 0; r < rows; ++r) {
    const bf16* xr = x + static_cast<int64_t>(r) * n;
    double sum_sq = 0.0;
    for (int i = 0; i < n; ++i) sum_sq += static_cast<double>(f(xr[i])) * f(xr[i]);
    const float variance = static_cast<float>(sum_sq / static_cast<double>(n));
    const float inv_rms = 1.0f / std::sqrt(variance + eps);
    for (int i = 0; i < n; ++i) y[static_cast<int64_t>(r) * n + i] = b(f(w[i]) * round_bf16(f(xr[i]) * inv_rms));
  }
}

void rms_norm_f32_ref(float* x, const bf16* delta, const bf16* w, bf16* y, int rows, int n, float eps) {
  for (int r = 0; r < rows; ++r) {
    float* xr = x + static_cast<int64_t>(r) * n;
    if (delta)
      for (int i = 0; i < n; ++i) xr[i] += f(delta[static_cast<int64_t>(r) * n + i]);
    double sum_sq = 0.0;
    for (int i = 0; i < n; ++i) sum_sq += static_cast<double>(xr[i]) * xr[i];
    const float variance = static_cast<float>(sum_sq / static_cast<double>(n));
    const float inv_rms = 1.0f / std::sqrt(variance + eps);
    for (int i = 0; i < n; ++i) y[static_cast<int64_t>(r) * n + i] = b(f(w[i]) * round_bf16(xr[i] * inv_rms));
  }
}

void add_bf16_to_f32_ref(float* x, const bf16* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] += f(y[i]);
}

void add_inplace_ref(bf16* x, const bf16* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = b(f(x[i]) + f(y[i]));
}

void silu_mul_ref(const bf16* gate_up, bf16* out, int rows, int inter) {
  for (int r = 0; r < rows; ++r) {
    const bf16* g = gate_up + static_cast<int64_t>(r) * 2 * inter;
    for (int i = 0; i < inter; ++i) {
      const float gv = f(g[i]);
      const float s = round_bf16(gv / (1.0f + std::exp(-gv)));
      out[static_cast<int64_t>(r) * inter + i] = b(s * f(g[inter + i]));
    }
  }
}

void embed_ref(const bf16* table, const int32_t* ids, bf16* out, int rows, int n) {
  for (int r = 0; r < rows; ++r)
    std::copy(table + static_cast<int64_t>(ids[r]) * n, table + static_cast<int64_t>(ids[r] + 1) * n,
              out + static_cast<int64_t>(r) * n);
}

void rope_tables_ref(const LlamaConfig& c, int capacity, std::vector<float>* cos_t, std::vector<float>* sin_t) {
  const std::vector<float> inv_freq = rope_inv_freq(c);
  const int half = static_cast<int>(inv_freq.size());
  cos_t->resize(static_cast<size_t>(capacity) * half);
  sin_t->resize(static_cast<size_t>(capacity) * half);
  for (int p = 0; p < capacity; ++p)
    for (int i = 0; i < half; ++i) {
      const float fr = inv_freq[i] * static_cast<float>(p);  // freqs = inv_freq * position, f32
      (*cos_t)[static_cast<size_t>(p) * half + i] = round_bf16(std::cos(fr));
      (*sin_t)[static_cast<size_t>(p) * half + i] = round_bf16(std::sin(fr));
    }
}

void rope_and_cache_ref(bf16* qkv, const float* cos, const float* sin, const int32_t* pos, const int32_t* seq,
                        bf16* k_cache, bf16* v_cache, int rows, int n_q, int n_kv, int hd, int capacity) {
  const int half = hd / 2;
  const int width = (n_q + 2 * n_kv) * hd;
  const int kv_dim = n_kv * hd;
  for (int r = 0; r < rows; ++r) {
    bf16* row = qkv + static_cast<int64_t>(r) * width;
    const float* c = cos + static_cast<int64_t>(pos[r]) * half;
    const float* s = sin + static_cast<int64_t>(pos[r]) * half;
    // q and k heads are contiguous: n_q + n_kv heads from the start of the row.
    for (int h = 0; h < n_q + n_kv; ++h) {
      bf16* v = row + h * hd;
      for (int i = 0; i < half; ++i) {
        const float a = f(v[i]), bb = f(v[i + half]);
        v[i] = b(round_bf16(a * c[i]) + round_bf16(-bb * s[i]));
        v[i + half] = b(round_bf16(bb * c[i]) + round_bf16(a * s[i]));
      }
    }
    const int64_t dst = (static_cast<int64_t>(seq[r]) * capacity + pos[r]) * kv_dim;
    std::copy(row + n_q * hd, row + (n_q + n_kv) * hd, k_cache + dst);
    std::copy(row + (n_q + n_kv) * hd, row + width, v_cache + dst);
  }
}

void attention_ref(const bf16* q, int q_stride, const bf16* k_cache, const bf16* v_cache, const int32_t* pos,
                   const int32_t* seq, bf16* out, int rows, int n_q, int n_kv, int hd, int capacity) {
  const int group = n_q / n_kv;
  const int kv_dim = n_kv * hd;
  const float scale = static_cast<float>(std::pow(static_cast<double>(hd), -0.5));
  std::vector<float> p;
  std::vector<float> o(hd);
  for (int r = 0; r < rows; ++r) {
    const int L = pos[r] + 1;
    const bf16* kb = k_cache + static_cast<int64_t>(seq[r]) * capacity * kv_dim;
    const bf16* vb = v_cache + static_cast<int64_t>(seq[r]) * capacity * kv_dim;
    p.assign(L, 0.0f);
    for (int h = 0; h < n_q; ++h) {
      const int g = h / group;
      const bf16* qh = q + static_cast<int64_t>(r) * q_stride + h * hd;
      float m = -std::numeric_limits<float>::infinity();
      for (int j = 0; j < L; ++j) {
        double dot = 0.0;  // the f32 dot of bf16 values; double makes the reference order-free
        for (int d = 0; d < hd; ++d) dot += static_cast<double>(f(qh[d])) * f(kb[static_cast<int64_t>(j) * kv_dim + g * hd + d]);
        p[j] = static_cast<float>(dot) * scale;
        m = std::max(m, p[j]);
      }
      float l = 0.0f;
      for (int j = 0; j < L; ++j) {
        const float e = std::exp(p[j] - m);
        l += e;
        p[j] = round_bf16(e);
      }
      std::fill(o.begin(), o.end(), 0.0f);
      for (int j = 0; j < L; ++j)
        for (int d = 0; d < hd; ++d) o[d] += p[j] * f(vb[static_cast<int64_t>(j) * kv_dim + g * hd + d]);
      const float inv_sum = 1.0f / l;
      for (int d = 0; d < hd; ++d) out[static_cast<int64_t>(r) * n_q * hd + h * hd + d] = b(o[d] * inv_sum);
    }
  }
}

void quantize_fp8_per_token_ref(const bf16* x, uint8_t* codes, float* scales, int rows, int k) {
  std::vector<float> xf(k);
  std::vector<double> grid(k);
  for (int r = 0; r < rows; ++r) {
    for (int i = 0; i < k; ++i) xf[i] = f(x[static_cast<int64_t>(r) * k + i]);
    scales[r] = quantize_token_fp8(xf.data(), k, grid.data());
    for (int i = 0; i < k; ++i) codes[static_cast<int64_t>(r) * k + i] = f32_to_fp8e4m3(static_cast<float>(grid[i]));
  }
}

void quantize_int8_per_token_ref(const bf16* x, int8_t* codes, float* scales, int rows, int k) {
  std::vector<float> xf(k);
  std::vector<double> grid(k);
  for (int r = 0; r < rows; ++r) {
    for (int i = 0; i < k; ++i) xf[i] = f(x[static_cast<int64_t>(r) * k + i]);
    scales[r] = quantize_token_int8(xf.data(), k, grid.data());
    for (int i = 0; i < k; ++i) codes[static_cast<int64_t>(r) * k + i] = static_cast<int8_t>(grid[i]);
  }
}

void gemm_bf16_ref(const bf16* x, const bf16* w, bf16* y, int M, int N, int K) {
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      double acc = 0.0;
      for (int k = 0; k < K; ++k)
        acc += static_cast<double>(f(x[static_cast<int64_t>(m) * K + k])) * f(w[static_cast<int64_t>(n) * K + k]);
      y[static_cast<int64_t>(m) * N + n] = b(static_cast<float>(acc));
    }
}

namespace {
template <class Code, class Value>
void gemm_w8a8_ref(const Code* xq, const float* sx, const Code* wq, const float* sw, bf16* y, int M, int N, int K,
                   Value value) {
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      double acc = 0.0;  // exact: see model/quantized_linear.h
      for (int k = 0; k < K; ++k)
        acc += static_cast<double>(value(xq[static_cast<int64_t>(m) * K + k])) * value(wq[static_cast<int64_t>(n) * K + k]);
      y[static_cast<int64_t>(m) * N + n] =
          b(static_cast<float>(acc * static_cast<double>(sx[m]) * static_cast<double>(sw[n])));
    }
}
}  // namespace

void gemm_w8a8_int8_ref(const int8_t* xq, const float* sx, const int8_t* wq, const float* sw, bf16* y, int M, int N,
                        int K) {
  gemm_w8a8_ref(xq, sx, wq, sw, y, M, N, K, [](int8_t c) { return static_cast<float>(c); });
}

void gemm_w8a8_fp8_ref(const uint8_t* xq, const float* sx, const uint8_t* wq, const float* sw, bf16* y, int M, int N,
                       int K) {
  gemm_w8a8_ref(xq, sx, wq, sw, y, M, N, K, [](uint8_t c) { return fp8e4m3_to_f32(c); });
}

void argmax_rows_ref(const bf16* logits, int32_t* out, int rows, int vocab) {
  for (int r = 0; r < rows; ++r) {
    const bf16* l = logits + static_cast<int64_t>(r) * vocab;
    int best = 0;
    for (int i = 1; i < vocab; ++i)
      if (f(l[i]) > f(l[best])) best = i;
    out[r] = best;
  }
}

}  // namespace llmq::ref
