// pipeline/column_stats_gpu.h.
#include "pipeline/column_stats_gpu.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "core/numeric.h"
#include "quantizers/gpu/device_util.h"
#include "runner/cuda_check.h"

namespace llmq::gpu {
namespace {

constexpr int kThreads = 256;    // columns per block
constexpr int kRowsPerBlock = 64;  // rows one block reduces before its atomics

// Float min/max through integer atomics: for non-negative floats the int order is the float
// order, for negative floats the unsigned order is the reverse (the usual trick; NaN excluded
// by the caller's check).
__device__ void atomic_max_f32(float* a, float v) {
  v = v == 0.0f ? 0.0f : v;  // -0 as +0: its int pattern would sort below every negative
  if (v >= 0) atomicMax(reinterpret_cast<int*>(a), __float_as_int(v));
  else atomicMin(reinterpret_cast<unsigned*>(a), __float_as_uint(v));
}
__device__ void atomic_min_f32(float* a, float v) {
  v = v == 0.0f ? 0.0f : v;
  if (v >= 0) atomicMin(reinterpret_cast<int*>(a), __float_as_int(v));
  else atomicMax(reinterpret_cast<unsigned*>(a), __float_as_uint(v));
}

__global__ void column_ranges_kernel(const uint16_t* x, int64_t rows, int64_t cols, float* mn, float* mx) {
  const int64_t c = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (c >= cols) return;
  const int64_t r0 = int64_t(blockIdx.y) * kRowsPerBlock, r1 = min(rows, r0 + kRowsPerBlock);
  float lo = INFINITY, hi = -INFINITY;
  for (int64_t r = r0; r < r1; ++r) {
    const float v = __uint_as_float(uint32_t(x[r * cols + c]) << 16);
    lo = fminf(lo, v);
    hi = fmaxf(hi, v);
  }
  atomic_min_f32(&mn[c], lo);
  atomic_max_f32(&mx[c], hi);
}

}  // namespace

ColumnRanges::ColumnRanges(int64_t cols, cudaStream_t stream)
    : cols_(cols), stream_(stream), min_(size_t(cols) * 4), max_(size_t(cols) * 4) {
  const std::vector<float> inf(size_t(cols), std::numeric_limits<float>::infinity());
  const std::vector<float> ninf(size_t(cols), -std::numeric_limits<float>::infinity());
  LLMQ_CUDA_CHECK(cudaMemcpy(min_.as(), inf.data(), inf.size() * 4, cudaMemcpyHostToDevice));
  LLMQ_CUDA_CHECK(cudaMemcpy(max_.as(), ninf.data(), ninf.size() * 4, cudaMemcpyHostToDevice));
}

Status ColumnRanges::add(const uint16_t* x, int64_t rows) {
  if (rows == 0) return Status::ok();
  const int64_t bad = first_nonfinite(x, DType::kBF16, rows * cols_, stream_);
  if (bad >= 0)
    return Status::error("non-finite activation at token " + std::to_string(bad / cols_) + ", channel " +
                         std::to_string(bad % cols_));
  const dim3 grid(static_cast<unsigned>((cols_ + kThreads - 1) / kThreads),
                  static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock));
  column_ranges_kernel<<<grid, kThreads, 0, stream_>>>(x, rows, cols_, min_.as<float>(), max_.as<float>());
  LLMQ_CUDA_CHECK(cudaGetLastError());
  tokens_ += rows;
  return Status::ok();
}

void ColumnRanges::download(std::vector<float>* mn, std::vector<float>* mx, std::vector<float>* amax) const {
  LLMQ_CUDA_CHECK(cudaStreamSynchronize(stream_));
  *mn = min_.to_host<float>();
  *mx = max_.to_host<float>();
  amax->resize(mn->size());
  for (size_t c = 0; c < mn->size(); ++c) (*amax)[c] = std::max(std::fabs((*mn)[c]), std::fabs((*mx)[c]));
}

void column_ranges_ref(const uint16_t* x, int64_t rows, int64_t cols, std::vector<float>* mn, std::vector<float>* mx,
                       std::vector<float>* amax) {
  mn->assign(size_t(cols), std::numeric_limits<float>::infinity());
  mx->assign(size_t(cols), -std::numeric_limits<float>::infinity());
  amax->assign(size_t(cols), 0.0f);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const float v = bf16_to_f32(x[r * cols + c]);
      (*mn)[c] = std::min((*mn)[c], v);
      (*mx)[c] = std::max((*mx)[c], v);
      (*amax)[c] = std::max((*amax)[c], std::fabs(v));
    }
}

}  // namespace llmq::gpu
