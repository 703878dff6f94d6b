#include "runner/device.h"

namespace llmq {

bool built_with_cuda() { return false; }

GpuInfo query_gpu() {
  GpuInfo info;
  info.why_not = "built without CUDA";
  return info;
}

}  // namespace llmq
