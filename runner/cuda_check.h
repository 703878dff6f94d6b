// LLMQ_CUDA_CHECK / LLMQ_CUBLAS_CHECK: every CUDA and cuBLAS call goes through one of them.
// A failure here is a bug or a broken device, never bad input, so it aborts like LLMQ_CHECK
// with the call, file and line. Kernel launches are followed by LLMQ_CUDA_CHECK_LAUNCH().
#pragma once

#include <cuda_runtime.h>

#include "core/check.h"

#define LLMQ_CUDA_CHECK(call)                                                       \
  do {                                                                              \
    const cudaError_t llmq_cuda_err_ = (call);                                      \
    LLMQ_CHECK(llmq_cuda_err_ == cudaSuccess, #call << ": " << cudaGetErrorString(llmq_cuda_err_)); \
  } while (0)

#define LLMQ_CUDA_CHECK_LAUNCH() LLMQ_CUDA_CHECK(cudaGetLastError())

#define LLMQ_CUBLAS_CHECK(call)                                                     \
  do {                                                                              \
    const int llmq_cublas_st_ = static_cast<int>(call);                             \
    LLMQ_CHECK(llmq_cublas_st_ == 0, #call << ": cuBLAS status " << llmq_cublas_st_); \
  } while (0)
