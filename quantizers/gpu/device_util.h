// Small device helpers shared by the GPU quantizers: a peak-tracking device allocation (so a
// quantizer can report its own high-water mark) and the non-finite scan that turns NaN/Inf
// in a device input into an error Status instead of a silently wrong result.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "core/dtype.h"
#include "runner/device_buffer.h"

namespace llmq::gpu {

// Bytes a computation holds on the device right now and at its peak.
struct DeviceBytes {
  size_t live = 0;
  size_t peak = 0;
};

// A DeviceBuffer whose size is counted in a DeviceBytes while it is held. Not movable: declare
// it where it lives, release() it early to end its count.
class TrackedBuffer {
 public:
  TrackedBuffer(DeviceBytes& tracker, size_t bytes) : tracker_(&tracker), buf_(bytes) {
    tracker_->live += bytes;
    tracker_->peak = std::max(tracker_->peak, tracker_->live);
  }
  ~TrackedBuffer() { release(); }
  TrackedBuffer(const TrackedBuffer&) = delete;
  TrackedBuffer& operator=(const TrackedBuffer&) = delete;

  void release() {
    tracker_->live -= buf_.bytes();
    buf_ = DeviceBuffer();
  }
  template <class T = void>
  T* as() const { return buf_.as<T>(); }
  size_t bytes() const { return buf_.bytes(); }

 private:
  DeviceBytes* tracker_;
  DeviceBuffer buf_;
};

// Index of the first NaN/Inf among n elements of x (device memory, F32 or BF16), or -1.
// Synchronises the stream (one 8-byte read back).
int64_t first_nonfinite(const void* x, DType dtype, int64_t n, cudaStream_t stream);

}  // namespace llmq::gpu
