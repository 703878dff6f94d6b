// The one owning tensor type (Tensor, move-only, host memory) and the one non-owning view
// (TensorView). Index convention, written once here: shapes are row-major (C order),
// the LAST dimension is contiguous, strides are in elements. Weights are [out, in].
// Packed sub-byte tensors (I4) are only handled as contiguous byte blobs.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/dtype.h"

namespace llmq {

enum class Device : uint8_t { kCpu, kCuda };

using Shape = std::vector<int64_t>;

int64_t shape_numel(const Shape& shape);
std::string shape_str(const Shape& shape);  // "[4096, 128]"
Shape contiguous_strides(const Shape& shape);

struct TensorView {
  DType dtype = DType::kF32;
  Shape shape;
  Shape strides;  // in elements; empty means contiguous
  void* data = nullptr;
  Device device = Device::kCpu;

  TensorView() = default;
  TensorView(DType t, Shape s, void* d, Device dev = Device::kCpu)
      : dtype(t), shape(std::move(s)), data(d), device(dev) {}

  int64_t numel() const { return shape_numel(shape); }
  int64_t nbytes() const { return dtype_nbytes(dtype, numel()); }
  int64_t dim(int i) const { return shape.at(i < 0 ? shape.size() + i : i); }
  int rank() const { return static_cast<int>(shape.size()); }
  bool is_contiguous() const { return strides.empty() || strides == contiguous_strides(shape); }

  template <class T>
  T* as() const {
    LLMQ_CHECK(static_cast<int>(sizeof(T) * 8) == dtype_bits(dtype),
               "element size mismatch for dtype " << dtype_name(dtype));
    return static_cast<T*>(data);
  }
};

class Tensor {
 public:
  Tensor() = default;
  Tensor(DType dtype, Shape shape);  // zero-initialised host memory
  Tensor(Tensor&&) noexcept = default;
  Tensor& operator=(Tensor&&) noexcept = default;
  Tensor(const Tensor&) = delete;
  Tensor& operator=(const Tensor&) = delete;

  static Tensor copy_of(const TensorView& v);  // deep copy of a contiguous host view

  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int64_t dim(int i) const { return shape_.at(i < 0 ? shape_.size() + i : i); }
  int64_t numel() const { return shape_numel(shape_); }
  int64_t nbytes() const { return dtype_nbytes(dtype_, numel()); }
  bool empty() const { return bytes_ == nullptr; }

  // Typed pointer; checks only that the element size matches. Hoist it out of loops.
  template <class T>
  T* data() {
    LLMQ_CHECK(static_cast<int>(sizeof(T) * 8) == dtype_bits(dtype_), "element size mismatch for dtype " << dtype_name(dtype_));
    return reinterpret_cast<T*>(bytes_.get());
  }
  template <class T>
  const T* data() const {
    LLMQ_CHECK(static_cast<int>(sizeof(T) * 8) == dtype_bits(dtype_), "element size mismatch for dtype " << dtype_name(dtype_));
    return reinterpret_cast<const T*>(bytes_.get());
  }
  void* raw() { return bytes_.get(); }
  const void* raw() const { return bytes_.get(); }

  TensorView view() const { return TensorView(dtype_, shape_, bytes_.get()); }
  // Same bytes, new shape with the same element count.
  void reshape(Shape shape);

 private:
  DType dtype_ = DType::kF32;
  Shape shape_;
  std::unique_ptr<uint8_t[]> bytes_;
};

// Converts any float (BF16/F16/F32/F64/F8_E4M3) contiguous host view to a float32 tensor.
Tensor to_f32(const TensorView& v);
// Converts a float32 view to bf16 / f16 with round-to-nearest-even.
Tensor f32_to(const TensorView& v, DType target);

// The parts stacked along dim 0 (same dtype and trailing dims, contiguous host tensors).
Tensor concat_rows(const std::vector<const Tensor*>& parts);

}  // namespace llmq
