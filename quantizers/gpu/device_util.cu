// See device_util.h.
#include "quantizers/gpu/device_util.h"

#include <climits>

#include "core/check.h"
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

}  // namespace

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
