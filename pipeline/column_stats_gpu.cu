// pipeline/column_stats_gpu.h.
#include "pipeline/column_stats_gpu.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include "core/numeric.h"
#include "quantizers/gpu/device_util.h"
#include "runner/cuda_check.h"

namespace llmq::gpu {
namespace {

constexpr int kThreads = 256;  // columns per block
constexpr int kRowsPerBlock = ColumnRanges::kRowsPerBlock;  // rows one block reduces before its atomics
constexpr int64_t kMaxRowsPerLaunch = 1024 * kRowsPerBlock;  // partial: <= 1024 x cols f32

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

// One block: kThreads columns x kRowsPerBlock rows. Min/max go straight to the accumulators
// (atomics, exact); the float32 sum of |x| over the block's rows, in row order, goes to
// partial[blockIdx.y, c] for column_abs_sum_kernel.
__global__ void column_ranges_kernel(const uint16_t* x, int64_t rows, int64_t cols, float* mn, float* mx,
                                     float* partial) {
  const int64_t c = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (c >= cols) return;
  const int64_t r0 = int64_t(blockIdx.y) * kRowsPerBlock, r1 = min(rows, r0 + kRowsPerBlock);
  float lo = INFINITY, hi = -INFINITY, sum = 0.0f;
  for (int64_t r = r0; r < r1; ++r) {
    const float v = __uint_as_float(uint32_t(x[r * cols + c]) << 16);
    lo = fminf(lo, v);
    hi = fmaxf(hi, v);
    sum += fabsf(v);
  }
  atomic_min_f32(&mn[c], lo);
  atomic_max_f32(&mx[c], hi);
  partial[int64_t(blockIdx.y) * cols + c] = sum;
}

// abs_sum[c] += partial[b, c] for b = 0, 1, ... in order (float64): a fixed summation order.
__global__ void column_abs_sum_kernel(const float* partial, int64_t blocks, int64_t cols, double* abs_sum) {
  const int64_t c = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (c >= cols) return;
  double s = abs_sum[c];
  for (int64_t b = 0; b < blocks; ++b) s += static_cast<double>(partial[b * cols + c]);
  abs_sum[c] = s;
}

}  // namespace

ColumnRanges::ColumnRanges(int64_t cols, cudaStream_t stream)
    : cols_(cols), stream_(stream), min_(size_t(cols) * 4), max_(size_t(cols) * 4), abs_sum_(size_t(cols) * 8) {
  const std::vector<float> inf(size_t(cols), std::numeric_limits<float>::infinity());
  const std::vector<float> ninf(size_t(cols), -std::numeric_limits<float>::infinity());
  // On stream_, so the kernels (queued there, which need not wait for the legacy stream) see them.
  // Pageable sources are staged before cudaMemcpyAsync returns.
  LLMQ_CUDA_CHECK(cudaMemcpyAsync(min_.as(), inf.data(), inf.size() * 4, cudaMemcpyHostToDevice, stream_));
  LLMQ_CUDA_CHECK(cudaMemcpyAsync(max_.as(), ninf.data(), ninf.size() * 4, cudaMemcpyHostToDevice, stream_));
  LLMQ_CUDA_CHECK(cudaMemsetAsync(abs_sum_.as(), 0, abs_sum_.bytes(), stream_));
}

Status ColumnRanges::add(const uint16_t* x, int64_t rows) {
  if (rows == 0) return Status::ok();
  const int64_t bad = first_nonfinite(x, DType::kBF16, rows * cols_, stream_);
  if (bad >= 0)
    return Status::error("non-finite activation at token " + std::to_string(bad / cols_) + ", channel " +
                         std::to_string(bad % cols_));
  // Launches of at most kMaxRowsPerLaunch rows (a multiple of kRowsPerBlock, so the blocks and
  // the sums are those of one launch over all rows) bound the partial buffer and grid.y.
  const unsigned col_blocks = static_cast<unsigned>((cols_ + kThreads - 1) / kThreads);
  for (int64_t r0 = 0; r0 < rows; r0 += kMaxRowsPerLaunch) {
    const int64_t n = std::min(kMaxRowsPerLaunch, rows - r0);
    const int64_t row_blocks = (n + kRowsPerBlock - 1) / kRowsPerBlock;
    if (partial_.bytes() < size_t(row_blocks * cols_) * 4) {
      LLMQ_CUDA_CHECK(cudaStreamSynchronize(stream_));  // the old buffer may still be read
      partial_ = DeviceBuffer(size_t(row_blocks * cols_) * 4);
    }
    const dim3 grid(col_blocks, static_cast<unsigned>(row_blocks));
    column_ranges_kernel<<<grid, kThreads, 0, stream_>>>(x + r0 * cols_, n, cols_, min_.as<float>(), max_.as<float>(),
                                                         partial_.as<float>());
    LLMQ_CUDA_CHECK_LAUNCH();
    column_abs_sum_kernel<<<col_blocks, kThreads, 0, stream_>>>(partial_.as<float>(), row_blocks, cols_,
                                                                abs_sum_.as<double>());
    LLMQ_CUDA_CHECK_LAUNCH();
  }
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

std::vector<float> ColumnRanges::abs_mean() const {
  LLMQ_CUDA_CHECK(cudaStreamSynchronize(stream_));
  const std::vector<double> sum = abs_sum_.to_host<double>();
  std::vector<float> mean(sum.size(), 0.0f);
  if (tokens_ > 0)
    for (size_t c = 0; c < sum.size(); ++c) mean[c] = static_cast<float>(sum[c] / static_cast<double>(tokens_));
  return mean;
}

InputStats ColumnRanges::input_stats() const {
  std::vector<float> mn, mx, amax;  // [cols] each
  download(&mn, &mx, &amax);
  InputStats s;
  s.tokens = tokens_;
  if (s.tokens == 0) {
    mn.assign(mn.size(), 0.0f);
    mx.assign(mx.size(), 0.0f);
    amax.assign(amax.size(), 0.0f);
  }
  const auto tensor = [](const std::vector<float>& v) {
    Tensor t(DType::kF32, {static_cast<int64_t>(v.size())});  // [cols]
    std::memcpy(t.raw(), v.data(), v.size() * sizeof(float));
    return t;
  };
  s.min = tensor(mn);
  s.max = tensor(mx);
  s.abs_max = tensor(amax);
  s.abs_mean = tensor(abs_mean());
  return s;
}

void column_ranges_ref(const uint16_t* x, int64_t rows, int64_t cols, std::vector<float>* mn, std::vector<float>* mx,
                       std::vector<float>* amax, std::vector<float>* amean) {
  mn->assign(size_t(cols), std::numeric_limits<float>::infinity());
  mx->assign(size_t(cols), -std::numeric_limits<float>::infinity());
  amax->assign(size_t(cols), 0.0f);
  std::vector<double> sum(size_t(cols), 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const float v = bf16_to_f32(x[r * cols + c]);
      (*mn)[c] = std::min((*mn)[c], v);
      (*mx)[c] = std::max((*mx)[c], v);
      (*amax)[c] = std::max((*amax)[c], std::fabs(v));
      sum[c] += std::fabs(v);
    }
  if (amean) {
    amean->assign(size_t(cols), 0.0f);
    if (rows > 0)
      for (int64_t c = 0; c < cols; ++c) (*amean)[c] = static_cast<float>(sum[c] / static_cast<double>(rows));
  }
}

}  // namespace llmq::gpu
