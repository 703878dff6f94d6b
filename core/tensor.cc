#include "core/tensor.h"

#include <cstring>
#include <sstream>

#include "core/numeric.h"

namespace llmq {

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string shape_str(const Shape& shape) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << "]";
  return os.str();
}

Shape contiguous_strides(const Shape& shape) {
  Shape s(shape.size());
  int64_t step = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    s[i] = step;
    step *= shape[i];
  }
  return s;
}

Tensor::Tensor(DType dtype, Shape shape) : dtype_(dtype), shape_(std::move(shape)) {
  for (int64_t d : shape_) LLMQ_CHECK(d >= 0, "negative dimension in " << shape_str(shape_));
  const int64_t n = nbytes();
  bytes_.reset(new uint8_t[n > 0 ? n : 1]());
}

Tensor Tensor::copy_of(const TensorView& v) {
  LLMQ_CHECK(v.device == Device::kCpu && v.is_contiguous(), "copy_of needs a contiguous host view");
  Tensor t(v.dtype, v.shape);
  if (v.nbytes() > 0) std::memcpy(t.raw(), v.data, v.nbytes());
  return t;
}

void Tensor::reshape(Shape shape) {
  LLMQ_CHECK(shape_numel(shape) == numel(), "reshape " << shape_str(shape_) << " -> " << shape_str(shape));
  shape_ = std::move(shape);
}

// Elementwise conversions of large tensors (a layer's weights: 10^8 values) run on all cores;
// each element is independent, so the result does not depend on the thread count.
constexpr int64_t kParallelElements = 1 << 16;

Tensor to_f32(const TensorView& v) {
  LLMQ_CHECK(v.device == Device::kCpu && v.is_contiguous(), "to_f32 needs a contiguous host view");
  Tensor out(DType::kF32, v.shape);
  float* dst = out.data<float>();
  const int64_t n = v.numel();
  switch (v.dtype) {
    case DType::kF32:
      std::memcpy(dst, v.data, n * 4);
      break;
    case DType::kF64:
#pragma omp parallel for schedule(static) if (n > kParallelElements)
      for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(static_cast<const double*>(v.data)[i]);
      break;
    case DType::kBF16:
#pragma omp parallel for schedule(static) if (n > kParallelElements)
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(static_cast<const uint16_t*>(v.data)[i]);
      break;
    case DType::kF16:
#pragma omp parallel for schedule(static) if (n > kParallelElements)
      for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(static_cast<const uint16_t*>(v.data)[i]);
      break;
    case DType::kF8E4M3:
#pragma omp parallel for schedule(static) if (n > kParallelElements)
      for (int64_t i = 0; i < n; ++i) dst[i] = fp8e4m3_to_f32(static_cast<const uint8_t*>(v.data)[i]);
      break;
    default:
      LLMQ_CHECK(false, "to_f32: not a float dtype: " << dtype_name(v.dtype));
  }
  return out;
}

Tensor f32_to(const TensorView& v, DType target) {
  LLMQ_CHECK(v.dtype == DType::kF32 && v.is_contiguous(), "f32_to needs a contiguous f32 view");
  Tensor out(target, v.shape);
  const float* src = v.as<float>();
  const int64_t n = v.numel();
  switch (target) {
    case DType::kF32:
      std::memcpy(out.raw(), src, n * 4);
      break;
    case DType::kBF16: {
      uint16_t* dst = out.data<uint16_t>();
#pragma omp parallel for schedule(static) if (n > kParallelElements)
      for (int64_t i = 0; i < n; ++i) dst[i] = f32_to_bf16(src[i]);
      break;
    }
    case DType::kF16: {
      uint16_t* dst = out.data<uint16_t>();
#pragma omp parallel for schedule(static) if (n > kParallelElements)
      for (int64_t i = 0; i < n; ++i) dst[i] = f32_to_f16(src[i]);
      break;
    }
    default:
      LLMQ_CHECK(false, "f32_to: unsupported target " << dtype_name(target));
  }
  return out;
}

Tensor concat_rows(const std::vector<const Tensor*>& parts) {
  LLMQ_CHECK(!parts.empty(), "concat_rows of nothing");
  Shape shape = parts.front()->shape();
  LLMQ_CHECK(!shape.empty(), "concat_rows of a scalar");
  int64_t rows = 0;
  for (const Tensor* p : parts) {
    Shape trailing = p->shape();
    LLMQ_CHECK(!trailing.empty() && p->dtype() == parts.front()->dtype(), "concat_rows: " << shape_str(p->shape()));
    rows += trailing[0];
    trailing[0] = shape[0];
    LLMQ_CHECK(trailing == shape, "concat_rows: " << shape_str(p->shape()) << " vs " << shape_str(shape));
  }
  shape[0] = rows;
  Tensor out(parts.front()->dtype(), shape);
  uint8_t* dst = static_cast<uint8_t*>(out.raw());
  for (const Tensor* p : parts) {
    std::memcpy(dst, p->raw(), static_cast<size_t>(p->nbytes()));
    dst += p->nbytes();
  }
  return out;
}

}  // namespace llmq
