// The one in-memory form of a quantized linear layer, shared by every quantizer (which
// produces it) and every format writer and reader (which pack and unpack it). Logical,
// unpacked, in the weight's own [out, in] orientation; packing lives in formats/.
//
//   scheme        codes [out, in]                      scales [out, G]   zeros [out, G]
//   kFp8Channel   U8: FP8 E4M3FN bit patterns           G = 1             -
//   kInt8Channel  I8: -128..127                         G = 1             -
//   kInt4Group    U8: unsigned 0..15                    G = in / group    U8 0..15 (sym: all 8)
//
// Dequantization: fp8 w = e4m3(code) * s;  int8 w = code * s;
//                 int4 w = (code - zero[g]) * s[g] with g = g_idx[k] (or k / group_size).
// Scales are float32 values that are exactly representable in scale_dtype (the dtype the
// format stores: BF16 for compressed-tensors, F16 for AWQ/GPTQ), because codes must be
// computed with the scale as stored (formats.md 1.2).
#pragma once

#include <cstdint>
#include <string>

#include "core/tensor.h"

namespace llmq {

enum class QuantScheme : uint8_t { kFp8Channel, kInt8Channel, kInt4Group };

struct QuantizedLinear {
  QuantScheme scheme = QuantScheme::kInt4Group;
  int64_t out_features = 0;
  int64_t in_features = 0;
  int64_t group_size = 0;  // kInt4Group only
  bool symmetric = true;   // kInt4Group: zeros all 8 when true
  DType scale_dtype = DType::kBF16;
  Tensor codes;   // [out, in]
  Tensor scales;  // [out, G] float32
  Tensor zeros;   // [out, G] U8, kInt4Group only
  Tensor g_idx;   // [in] I32, only with act-order; empty means k / group_size

  int64_t num_groups() const { return scales.empty() ? 0 : scales.dim(1); }
  QuantizedLinear clone() const;  // deep copy (Tensor is move-only)
  int32_t group_of(int64_t k) const {
    return g_idx.empty() ? static_cast<int32_t>(group_size > 0 ? k / group_size : 0) : g_idx.data<int32_t>()[k];
  }
};

// Quality of one quantized linear, for llmq_report.json.
struct QuantReport {
  double weight_rel_error = 0;  // ||W - deq(Q)||_F / ||W||_F
  double output_rel_error = -1;  // with a Hessian H: tr(E H E^T) / tr(W H W^T); -1 if none
  double damp = 0;               // GPTQ: final relative damping
  int fallbacks = 0;             // GPTQ: Cholesky retries with more damping
  double seconds = 0;
};

// Allocates the tensors of an empty quantized linear (zero codes, scales and zeros) for a
// quantizer to fill. Int4 needs in % group_size == 0.
QuantizedLinear make_int4_linear(int64_t out, int64_t in, int64_t group_size, bool symmetric, DType scale_dtype);
QuantizedLinear make_channel_linear(QuantScheme scheme, int64_t out, int64_t in, DType scale_dtype);

// Float32 [out, in] weight the quantized layer stands for.
Tensor dequantize(const QuantizedLinear& q);

// Structural checks (shapes, dtypes, code ranges, finite positive scales); a message naming
// the problem, or empty when consistent. Readers call it on what they load.
std::string validate(const QuantizedLinear& q);

}  // namespace llmq
