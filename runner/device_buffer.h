// DeviceBuffer: one owning, move-only allocation of GPU memory (the runner's counterpart of
// core/tensor.h's Tensor for bytes that live on the device). Typed access is by pointer
// casts at the call site, where the shape comment of the buffer says what it holds.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "runner/cuda_check.h"

namespace llmq {

class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
    if (bytes_ > 0) LLMQ_CUDA_CHECK(cudaMalloc(&ptr_, bytes_));
  }
  ~DeviceBuffer() { release(); }
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      release();
      ptr_ = std::exchange(o.ptr_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  // A buffer holding a copy of n host elements.
  template <class T>
  static DeviceBuffer from_host(const T* data, size_t n) {
    DeviceBuffer b(n * sizeof(T));
    if (n > 0) LLMQ_CUDA_CHECK(cudaMemcpy(b.ptr_, data, n * sizeof(T), cudaMemcpyHostToDevice));
    return b;
  }
  template <class T>
  static DeviceBuffer from_host(const std::vector<T>& v) { return from_host(v.data(), v.size()); }

  template <class T>
  std::vector<T> to_host() const {
    std::vector<T> out(bytes_ / sizeof(T));
    if (!out.empty()) LLMQ_CUDA_CHECK(cudaMemcpy(out.data(), ptr_, out.size() * sizeof(T), cudaMemcpyDeviceToHost));
    return out;
  }

  template <class T = void>
  T* as() const { return static_cast<T*>(ptr_); }
  size_t bytes() const { return bytes_; }
  bool empty() const { return ptr_ == nullptr; }

 private:
  void release() {
    if (ptr_ != nullptr) cudaFree(ptr_);  // no check: destructors must not abort on teardown
    ptr_ = nullptr;
    bytes_ = 0;
  }
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace llmq
