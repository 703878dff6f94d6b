// Host side of W4A16: the load-time re-layout (runner/w4a16.h) and the CPU reference.
#include <algorithm>
#include <numeric>
#include <string>

#include "core/numeric.h"
#include "runner/w4a16.h"

namespace llmq {

Expected<W4A16Layout> w4a16_layout(const QuantizedLinear& q) {
  const auto fail = [&](const std::string& why) {
    return Status::error("W4A16 linear [" + std::to_string(q.out_features) + ", " + std::to_string(q.in_features) +
                         "]: " + why);
  };
  if (q.scheme != QuantScheme::kInt4Group) return fail("not an int4 group-quantized linear");
  const int64_t N = q.out_features, K = q.in_features, gs = q.group_size;
  if (gs <= 0 || gs % 8 != 0 || K % gs != 0) return fail("group size " + std::to_string(gs) + " must be a multiple of 8 dividing K");
  if (q.scale_dtype != DType::kBF16 && q.scale_dtype != DType::kF16) return fail("scales must be BF16 or F16");
  const std::string problem = validate(q);
  if (!problem.empty()) return fail(problem);

  W4A16Layout l;
  l.out_features = N;
  l.in_features = K;
  l.group_size = gs;
  l.num_groups = K / gs;
  l.scale_f16 = q.scale_dtype == DType::kF16;
  std::vector<int32_t> order(K);  // column of the layout -> original column
  std::iota(order.begin(), order.end(), 0);
  if (!q.g_idx.empty()) {
    const int32_t* g = q.g_idx.data<int32_t>();
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return g[a] < g[b]; });
    for (int64_t j = 0; j < K; ++j)
      if (g[order[j]] != j / gs) return fail("g_idx does not give every group exactly " + std::to_string(gs) + " columns");
    l.perm = order;
  }
  const uint8_t* codes = q.codes.data<uint8_t>();
  const float* scales = q.scales.data<float>();
  const uint8_t* zeros = q.zeros.data<uint8_t>();
  const auto code = [&](int64_t n, int64_t j) -> uint32_t {  // layout column j of row n; 0 past N
    return n < N ? codes[n * K + order[j]] & 0xFu : 0u;
  };
  l.mma = gs % 64 == 0 && K % 64 == 0;
  const int64_t n_rows = l.mma ? (N + 15) / 16 * 16 : N;
  if (l.mma) {
    // A fragment of mma.m16n8k16 (PTX ISA, "Matrix fragments for mma.m16n8k16", .bf16):
    // lane l holds rows l/4 and l/4 + 8, columns 2(l%4) + {0, 1} and + 8, as
    // {a0 a1}{a2 a3}{a4 a5}{a6 a7} = {r, c}{r+8, c}{r, c+8}{r+8, c+8}.
    const int64_t chunks = K / 64;
    l.packed.assign(n_rows / 16 * chunks * 128, 0u);
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < n_rows / 16; ++t)
      for (int64_t c = 0; c < chunks; ++c)
        for (int lane = 0; lane < 32; ++lane)
          for (int s = 0; s < 4; ++s) {
            const int64_t ra = 16 * t + lane / 4, rb = ra + 8;
            const int64_t k = 64 * c + 16 * s + 2 * (lane % 4);
            const uint32_t a[8] = {code(ra, k),     code(ra, k + 1), code(rb, k),     code(rb, k + 1),
                                   code(ra, k + 8), code(ra, k + 9), code(rb, k + 8), code(rb, k + 9)};
            uint32_t word = 0;
            for (int i = 0; i < 4; ++i) word |= a[2 * i] << (4 * i) | a[2 * i + 1] << (16 + 4 * i);
            l.packed[((t * chunks + c) * 32 + lane) * 4 + s] = word;
          }
  } else {
    const int64_t words = K / 8;
    l.packed.assign(N * words, 0u);
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t j = 0; j < K; ++j) l.packed[n * words + j / 8] |= code(n, j) << (4 * (j % 8));
  }
  l.params.assign(n_rows * l.num_groups, 0u);  // padded rows: scale 0
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t g = 0; g < l.num_groups; ++g) {
      const float s = scales[n * l.num_groups + g];
      const uint16_t bits = l.scale_f16 ? f32_to_f16(s) : f32_to_bf16(s);
      if ((l.scale_f16 ? f16_to_f32(bits) : bf16_to_f32(bits)) != s)
        return fail("scale " + std::to_string(s) + " is not exact in the scale dtype");
      l.params[n * l.num_groups + g] = bits | (static_cast<uint32_t>(zeros[n * l.num_groups + g] & 0xF) << 16);
    }
  }
  return l;
}

void w4a16_gemm_ref(const QuantizedLinear& q, const uint16_t* x, uint16_t* y, int M) {
  const Tensor w = dequantize(q);  // [N, K] f32
  const int64_t N = q.out_features, K = q.in_features;
  const float* wp = w.data<float>();
  for (int m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double acc = 0.0;
      for (int64_t k = 0; k < K; ++k) acc += static_cast<double>(bf16_to_f32(x[m * K + k])) * wp[n * K + k];
      y[m * N + n] = f32_to_bf16(static_cast<float>(acc));
    }
}

}  // namespace llmq
