// The rounding points of the linear epilogues (GemvEpilogue, runner/gemv.h), shared by the
// decode GEMVs and the skinny GEMM so that both give the bits of ref::gemv_epilogue_ref.
#pragma once

#include <cstdint>

#include "core/numeric.h"

namespace llmq::gpu {

__device__ __forceinline__ float bf16_value(float v) { return bf16_to_f32(f32_to_bf16(v)); }

// Output o (unrounded) plus the residual value r: bf16(r + bf16(o)).
__device__ __forceinline__ uint16_t residual_add_out(float o, uint16_t r) {
  return f32_to_bf16(bf16_to_f32(r) + bf16_value(o));
}

// Output o (unrounded), with the residual *r added when there is one.
__device__ __forceinline__ uint16_t residual_out(float o, const uint16_t* r) {
  return r ? residual_add_out(o, *r) : f32_to_bf16(o);
}

// SwiGLU of a (gate, up) pair of unrounded outputs: bf16(bf16(silu(bf16(g))) · bf16(u)).
__device__ __forceinline__ uint16_t swiglu_out(float gate, float up) {
  const float g = bf16_value(gate), u = bf16_value(up);
  return f32_to_bf16(bf16_value(g / (1.0f + expf(-g))) * u);
}

}  // namespace llmq::gpu
