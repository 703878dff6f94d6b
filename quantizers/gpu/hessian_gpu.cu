// See hessian_gpu.h.
#include "quantizers/gpu/hessian_gpu.h"

#include <cublas_v2.h>

#include <climits>
#include <string>

#include "quantizers/gpu/device_util.h"
#include "runner/cuda_check.h"
#include "runner/device_buffer.h"

namespace llmq::gpu {
namespace {

constexpr int kThreads = 256;

// acc[i + j K] += prod[i + j K] for i >= j (the column-major lower triangle that syrk writes).
// One block row of threads per column j: grid (ceil(K / kThreads), K).
__global__ void accumulate_lower(const float* __restrict__ prod, double* __restrict__ acc, int64_t K) {
  const int64_t j = blockIdx.y;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < j || i >= K) return;
  acc[i + j * K] += static_cast<double>(prod[i + j * K]);
}

// h[i + j K] = h[j + i K] = float(acc[i + j K]) for i >= j: rounded once, exactly symmetric.
__global__ void mirror_lower(const double* __restrict__ acc, float* __restrict__ h, int64_t K) {
  const int64_t j = blockIdx.y;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < j || i >= K) return;
  const float v = static_cast<float>(acc[i + j * K]);
  h[i + j * K] = v;
  h[j + i * K] = v;
}

}  // namespace

struct HessianAccumulator::Impl {
  int64_t K = 0;
  int64_t tokens = 0;
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  DeviceBuffer acc;   // [K, K] f64, lower triangle (column-major) accumulated
  DeviceBuffer prod;  // [K, K] f32: one add()'s XᵀX, then finish()'s H
};

HessianAccumulator::HessianAccumulator(int64_t features, cudaStream_t stream) : impl_(std::make_unique<Impl>()) {
  // The kernels put one column per grid row (gridDim.y <= 65535); Llama's widest input is 28672.
  LLMQ_CHECK(features > 0 && features <= 65535, "HessianAccumulator: features " << features);
  impl_->K = features;
  impl_->stream = stream;
  LLMQ_CUBLAS_CHECK(cublasCreate(&impl_->blas));
  LLMQ_CUBLAS_CHECK(cublasSetStream(impl_->blas, stream));
  // DEFAULT_MATH: float32 GEMMs stay float32 (TF32 needs CUBLAS_TF32_TENSOR_OP_MATH).
  LLMQ_CUBLAS_CHECK(cublasSetMathMode(impl_->blas, CUBLAS_DEFAULT_MATH));
  const size_t n2 = static_cast<size_t>(features) * static_cast<size_t>(features);
  impl_->acc = DeviceBuffer(n2 * sizeof(double));
  impl_->prod = DeviceBuffer(n2 * sizeof(float));
  reset();
}

HessianAccumulator::~HessianAccumulator() {
  if (impl_ && impl_->blas) cublasDestroy(impl_->blas);
}

void HessianAccumulator::reset() {
  const size_t n2 = static_cast<size_t>(impl_->K) * static_cast<size_t>(impl_->K);
  LLMQ_CUDA_CHECK(cudaMemsetAsync(impl_->acc.as(), 0, n2 * sizeof(double), impl_->stream));
  impl_->tokens = 0;
}

Status HessianAccumulator::add(const TensorView& x) {
  Impl& m = *impl_;
  LLMQ_CHECK(x.device == Device::kCuda && x.rank() == 2 && x.is_contiguous() &&
                 (x.dtype == DType::kF32 || x.dtype == DType::kBF16),
             "HessianAccumulator::add takes a contiguous device F32/BF16 [T, K], got " << dtype_name(x.dtype) << " "
                                                                                     << shape_str(x.shape));
  LLMQ_CHECK(x.dim(1) == m.K, "input has " << x.dim(1) << " features, accumulator " << m.K);
  const int64_t T = x.dim(0);
  if (T == 0) return Status::ok();
  LLMQ_CHECK(T <= INT32_MAX, "HessianAccumulator::add: " << T << " tokens in one call (cuBLAS takes int)");
  const int64_t bad = first_nonfinite(x.data, x.dtype, T * m.K, m.stream);
  if (bad >= 0)
    return Status::error("non-finite activation at token " + std::to_string(bad / m.K) + ", channel " +
                         std::to_string(bad % m.K));
  const int K = static_cast<int>(m.K), n = static_cast<int>(T);
  const float one = 1.0f, zero = 0.0f;
  // Row-major X [T, K] is column-major Xᵀ [K, T] (ld K), so XᵀX = A Aᵀ with A that matrix.
  if (x.dtype == DType::kF32) {
    LLMQ_CUBLAS_CHECK(cublasSsyrk(m.blas, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, K, n, &one, x.as<float>(), K, &zero,
                                  m.prod.as<float>(), K));
  } else {
    LLMQ_CUBLAS_CHECK(cublasGemmEx(m.blas, CUBLAS_OP_N, CUBLAS_OP_T, K, K, n, &one, x.data, CUDA_R_16BF, K, x.data,
                                   CUDA_R_16BF, K, &zero, m.prod.as(), CUDA_R_32F, K, CUBLAS_COMPUTE_32F,
                                   CUBLAS_GEMM_DEFAULT));
  }
  const dim3 grid(static_cast<unsigned>((m.K + kThreads - 1) / kThreads), static_cast<unsigned>(m.K));
  accumulate_lower<<<grid, kThreads, 0, m.stream>>>(m.prod.as<float>(), m.acc.as<double>(), m.K);
  LLMQ_CUDA_CHECK_LAUNCH();
  m.tokens += T;
  return Status::ok();
}

const float* HessianAccumulator::finish() {
  Impl& m = *impl_;
  const dim3 grid(static_cast<unsigned>((m.K + kThreads - 1) / kThreads), static_cast<unsigned>(m.K));
  mirror_lower<<<grid, kThreads, 0, m.stream>>>(m.acc.as<double>(), m.prod.as<float>(), m.K);
  LLMQ_CUDA_CHECK_LAUNCH();
  return m.prod.as<float>();
}

Tensor HessianAccumulator::download() {
  const float* h = finish();
  Tensor out(DType::kF32, {impl_->K, impl_->K});
  LLMQ_CUDA_CHECK(cudaMemcpyAsync(out.raw(), h, out.nbytes(), cudaMemcpyDeviceToHost, impl_->stream));
  LLMQ_CUDA_CHECK(cudaStreamSynchronize(impl_->stream));
  return out;
}

int64_t HessianAccumulator::features() const { return impl_->K; }
int64_t HessianAccumulator::tokens() const { return impl_->tokens; }
size_t HessianAccumulator::device_bytes() const { return impl_->acc.bytes() + impl_->prod.bytes(); }

}  // namespace llmq::gpu
