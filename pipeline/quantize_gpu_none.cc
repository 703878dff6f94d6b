// pipeline/quantize_gpu.h in a build without CUDA: no session can be created.
#include "pipeline/quantize_gpu.h"

namespace llmq {

struct GpuQuantizeSession::Impl {};

GpuQuantizeSession::GpuQuantizeSession(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
GpuQuantizeSession::~GpuQuantizeSession() = default;

Expected<std::unique_ptr<GpuQuantizeSession>> GpuQuantizeSession::create(const HfCheckpoint&,
                                                                         const std::vector<std::vector<int32_t>>&) {
  return Status::error("--device gpu: built without CUDA");
}

Expected<LayerResult> GpuQuantizeSession::run_layer(LayerWeights&, LayerContext&) {
  return Status::error("--device gpu: built without CUDA");
}
std::string GpuQuantizeSession::device_label() const { return "cpu"; }
size_t GpuQuantizeSession::peak_device_bytes() const { return 0; }
nlohmann::ordered_json GpuQuantizeSession::stage_seconds() const { return nlohmann::ordered_json::object(); }

}  // namespace llmq
