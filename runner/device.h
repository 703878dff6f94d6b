// What GPU (if any) this process can use. The CUDA runner's kernels build on this; a CPU-only
// build answers "no GPU" so every caller can choose its path at run time.
#pragma once

#include <string>

namespace llmq {

struct GpuInfo {
  bool available = false;
  std::string name;        // e.g. "NVIDIA H100 80GB HBM3"
  int major = 0, minor = 0;  // compute capability
  size_t total_bytes = 0;
  std::string why_not;     // when !available: "built without CUDA", "no CUDA device", driver error
};

// Queries device 0 (once per call; cheap).
GpuInfo query_gpu();
bool built_with_cuda();

}  // namespace llmq
