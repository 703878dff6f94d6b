// Small device helpers shared by the GPU quantizers: a peak-tracking device allocation (so a
// quantizer can report its own high-water mark) and the non-finite scan that turns NaN/Inf
// in a device input into an error Status instead of a silently wrong result; float32 rows to
// bf16 on the device (weights uploaded as float32 and rounded there).
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

// Rows of a device F32 [rows, cols] matrix rounded to bf16 (round to nearest even, as
// core/numeric.h's f32_to_bf16 for finite values) into row dst_row0 + r * dst_row_step of a
// bf16 matrix with the same number of columns: a part of a fused weight (q/k/v concatenated
// with step 1, gate/up interleaved with step 2). CPU reference: f32_to_bf16 per element.
// Asynchronous on `stream`.
void f32_rows_to_bf16(const float* src, int64_t rows, int64_t cols, uint16_t* dst, int64_t dst_row0,
                      int64_t dst_row_step, cudaStream_t stream);

}  // namespace llmq::gpu
