// pipeline/calibrate_gpu.h in a build without CUDA: the GPU is never usable.
#include "pipeline/calibrate_gpu.h"

#include "runner/device.h"

namespace llmq {

CalibrationGpu calibration_gpu() {
  CalibrationGpu g;
  g.unavailable = query_gpu().why_not;  // "built without CUDA"
  g.open = [why = g.unavailable](const HfCheckpoint&, const std::vector<std::vector<int32_t>>&,
                                 bool) -> Expected<std::unique_ptr<LayerStatsRunner>> {
    return Status::error("--device gpu: " + why);
  };
  return g;
}

}  // namespace llmq
