// An attribute of the current CUDA device (SM count, shared memory per block, ...), for the
// runner's launch choices.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "runner/cuda_check.h"

namespace llmq::gpu {

inline int device_attribute(cudaDeviceAttr attr) {
  int dev = 0, value = 0;
  LLMQ_CUDA_CHECK(cudaGetDevice(&dev));
  LLMQ_CUDA_CHECK(cudaDeviceGetAttribute(&value, attr, dev));
  return value;
}

// The current device's compute capability as 10 * major + minor (80 Ampere, 89 Ada, 90
// Hopper), queried once: the runner uses a single device.
inline int compute_capability() {
  static const int cc = device_attribute(cudaDevAttrComputeCapabilityMajor) * 10 +
                        device_attribute(cudaDevAttrComputeCapabilityMinor);
  return cc;
}

// The blocks of a kernel that are resident on the whole device at once, at `threads` per block
// and `smem` bytes of dynamic shared memory (its attributes set first).
template <class Kernel>
int device_resident_blocks(Kernel kernel, int threads, size_t smem = 0) {
  int per_sm = 0;
  LLMQ_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem));
  return per_sm * device_attribute(cudaDevAttrMultiProcessorCount);
}

}  // namespace llmq::gpu
