// See device_util.h.
#include "quantizers/gpu/device_util.h"

#include <climits>

#include "core/check.h"
#include "core/numeric.h"
#include "runner/cuda_check.h"

namespace llmq::gpu {
namespace {

constexpr int kThreads = 256;

// first[0] = min index i with x[i] not finite (stays ULLONG_MAX when none).
template <class T>
__global__ void first_nonfinite_kernel(const T* __restrict__ x, int64_t n, unsigned long long* first) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    bool bad;
    if constexpr (sizeof(T) == 4) {
      bad = !isfinite(x[i]);
    } else {  // bf16 bits: exponent all ones is Inf or NaN
      bad = (x[i] & 0x7F80u) == 0x7F80u;
    }
    if (bad) atomicMin(first, static_cast<unsigned long long>(i));
  }
}

__global__ void f32_rows_to_bf16_kernel(const float* __restrict__ src, int64_t rows, int64_t cols,
                                        uint16_t* __restrict__ dst, int64_t row0, int64_t step) {
  const int64_t n = rows * cols;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t r = i / cols, c = i - r * cols;
    dst[(row0 + r * step) * cols + c] = f32_to_bf16(src[i]);
  }
}

}  // namespace

void f32_rows_to_bf16(const float* src, int64_t rows, int64_t cols, uint16_t* dst, int64_t dst_row0,
                      int64_t dst_row_step, cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return;
  const int blocks = static_cast<int>(std::min<int64_t>((rows * cols + kThreads - 1) / kThreads, 8192));
  f32_rows_to_bf16_kernel<<<blocks, kThreads, 0, stream>>>(src, rows, cols, dst, dst_row0, dst_row_step);
  LLMQ_CUDA_CHECK_LAUNCH();
}

int64_t first_nonfinite(const void* x, DType dtype, int64_t n, cudaStream_t stream) {
  LLMQ_CHECK(dtype == DType::kF32 || dtype == DType::kBF16, "first_nonfinite: F32 or BF16, got " << dtype_name(dtype));
  if (n <= 0) return -1;
  DeviceBuffer flag(sizeof(unsigned long long));  // [1] first bad index
  LLMQ_CUDA_CHECK(cudaMemsetAsync(flag.as(), 0xFF, sizeof(unsigned long long), stream));
  // Enough blocks to fill any current GPU; the grid-stride loop covers the rest.
  const int blocks = static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 4096));
  if (dtype == DType::kF32) {
    first_nonfinite_kernel<<<blocks, kThreads, 0, stream>>>(static_cast<const float*>(x), n,
                                                            flag.as<unsigned long long>());
  } else {
    first_nonfinite_kernel<<<blocks, kThreads, 0, stream>>>(static_cast<const uint16_t*>(x), n,
                                                            flag.as<unsigned long long>());
  }
  LLMQ_CUDA_CHECK_LAUNCH();
  unsigned long long first = 0;
  LLMQ_CUDA_CHECK(cudaMemcpyAsync(&first, flag.as(), sizeof(first), cudaMemcpyDeviceToHost, stream));
  LLMQ_CUDA_CHECK(cudaStreamSynchronize(stream));
  return first == ULLONG_MAX ? -1 : static_cast<int64_t>(first);
}

}  // namespace llmq::gpu
