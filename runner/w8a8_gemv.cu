// kernels.h's W8A8 decode GEMVs: the kernels of runner/gemv.cu without an epilogue (kept
// with their signatures for runner/engine.cc until it calls gemv.h directly).
#include "runner/gemv.h"
#include "runner/kernels.h"

namespace llmq::gpu {

static_assert(kW8A8GemvMaxM == kGemvMaxM, "kernels.h and gemv.h must agree on the decode batch");

void w8a8_gemv_int8(const int8_t* xq, const float* sx, const int8_t* wq, const float* sw, bf16* y, int M, int N,
                    int ld, cudaStream_t s) {
  gemv_w8a8_int8(xq, sx, wq, sw, y, M, N, ld, GemvEpilogue{}, s);
}

void w8a8_gemv_fp8(const uint8_t* xq, const float* sx, const uint8_t* wq, const float* sw, bf16* y, int M, int N,
                   int ld, cudaStream_t s) {
  gemv_w8a8_fp8(xq, sx, wq, sw, y, M, N, ld, GemvEpilogue{}, s);
}

}  // namespace llmq::gpu
