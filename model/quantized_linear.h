// CPU linears that stand for quantized checkpoints in the reference forward (model/llama.h),
// so perplexity measured on CPU is the loss the runtime (vLLM) would see.
//
//   WeightOnlyLinear  AWQ / GPTQ / compressed-tensors W4A16 (and any scheme evaluated
//                     weight-only): y = x · dequantize(q)ᵀ in float32; activations stay in
//                     the model precision.
//   W8A8Linear        FP8 / INT8 per-channel weights with DYNAMIC PER-TOKEN activation
//                     quantization, emulated exactly as vLLM's CUDA kernels do it:
//       FP8  (csrc/quantization/fp8/common.cu, dynamic_per_token_scaled_fp8_quant):
//            s_t = max(amax_t / 448, 1 / (448 · 512)) in float32, x_q = e4m3_rne(clamp(x / s_t))
//            (a division, not a multiply by 1/s_t: vLLM divides here "to match FBGEMM").
//       INT8 (csrc/quantization/compressed_tensors/int8_quant_kernels.cu,
//            dynamic_scaled_int8_quant): s_t = amax_t / 127 (symmetric, 127 not 127.5, so
//            x_q never reaches -128), x_q = round_half_even(sat(x · (127 / amax_t))) — a
//            multiply by the float32 inverse, as the kernel does. A zero row has no scale in
//            vLLM (0 · inf -> code 0); we use s_t = 1, which gives the same zero output.
//       y[t, n] = (Σ_k x_q[t, k] · w_q[n, k]) · s_t · s_w[n]. The sum is EXACT: int8·int8 and
//       e4m3·e4m3 products are exact in double and every partial sum is a multiple of the
//       smallest product (1 resp. 2^-18) below 2^53, so a double GEMM gives the integer /
//       fixed-point result whatever its order. Scaling is done in double and rounded once to
//       float32 (the GPU epilogue rounds the fp32/int32 accumulator first; the difference is
//       below float32 resolution of the result and does not depend on the evaluation order).
#pragma once

#include <memory>

#include "core/tensor.h"
#include "model/llama.h"
#include "quantizers/quantized_linear.h"

namespace llmq {

class WeightOnlyLinear final : public Linear {
 public:
  explicit WeightOnlyLinear(const QuantizedLinear& q);
  int64_t in_features() const override { return dense_.in_features(); }
  int64_t out_features() const override { return dense_.out_features(); }
  void forward(const TensorView& x, const TensorView& y) const override { dense_.forward(x, y); }
  const Tensor& weight() const { return dense_.weight(); }

 private:
  DenseLinear dense_;  // dequantize(q), [out, in] float32
};

// Per-token activation quantizers (exposed for tests). x: n values of one token; writes the
// quantized values on the unscaled grid (e4m3 values resp. integers -128..127) into xq and
// returns the token scale s_t, so x ≈ xq · s_t.
float quantize_token_fp8(const float* x, int64_t n, double* xq);
float quantize_token_int8(const float* x, int64_t n, double* xq);

class W8A8Linear final : public Linear {
 public:
  // q.scheme must be kFp8Channel or kInt8Channel (LLMQ_CHECK).
  explicit W8A8Linear(const QuantizedLinear& q);
  int64_t in_features() const override { return in_; }
  int64_t out_features() const override { return out_; }
  void forward(const TensorView& x, const TensorView& y) const override;

 private:
  QuantScheme scheme_;
  int64_t out_ = 0, in_ = 0;
  Tensor weight_grid_;  // [out, in] float32: e4m3 value or int8 integer of each code (exact)
  Tensor scales_;       // [out] float32 per-channel weight scale s_w
};

// W8A8Linear for 8-bit schemes when w8a8, else WeightOnlyLinear. Asking for W8A8 of an int4
// linear is a caller bug (LLMQ_CHECK).
std::unique_ptr<Linear> make_quantized_linear(QuantizedLinear q, bool w8a8);

}  // namespace llmq
