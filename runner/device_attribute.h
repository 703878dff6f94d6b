// An attribute of the current CUDA device (SM count, shared memory per block, ...), for the
// runner's launch choices.
#pragma once

#include <cuda_runtime.h>

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

}  // namespace llmq::gpu
