// runner/linear.h: a linear on the device, and reading / fusing / uploading it.
#include "runner/linear.h"

#include <cstring>

#include "core/numeric.h"
#include "formats/quant_formats.h"
#include "quantizers/fp8.h"
#include "quantizers/rtn.h"
#include "runner/device_attribute.h"
#include "runner/gemm_skinny.h"

namespace llmq {

// A float host view as bf16 values: BF16 checkpoints are copied as they are (16 GB of an 8B
// model load in seconds), other float dtypes rounded from float32.
std::vector<bf16> to_bf16(const TensorView& v) {
  if (v.dtype == DType::kBF16) {
    const bf16* p = static_cast<const bf16*>(v.data);
    return std::vector<bf16>(p, p + v.numel());
  }
  // Float32 (the pipeline's layers) converts straight from the caller's buffer; other dtypes
  // go through a float32 copy.
  const Tensor f = v.dtype == DType::kF32 && v.is_contiguous() ? Tensor() : to_f32(v);
  const float* p = f.empty() ? static_cast<const float*>(v.data) : f.data<float>();
  const int64_t n = v.numel();
  std::vector<bf16> out(n);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = f32_to_bf16(p[i]);
  return out;
}

// Rows of a and b alternating, a's row i at 2i and b's at 2i + 1: the gate and up rows of the
// fused MLP input linear, so that one GEMV block holds both rows of a (gate, up) pair and can
// apply SwiGLU in its epilogue (runner/gemv.h). One pass on all cores, straight from the parts
// (concatenating first and interleaving in place took three copies of a 70B gate/up's codes).
void interleave_rows(const void* a, const void* b, void* out, int64_t rows, size_t row_bytes) {
  const auto* pa = static_cast<const uint8_t*>(a);
  const auto* pb = static_cast<const uint8_t*>(b);
  auto* po = static_cast<uint8_t*>(out);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < rows; ++i) {
    std::memcpy(po + static_cast<size_t>(2 * i) * row_bytes, pa + static_cast<size_t>(i) * row_bytes, row_bytes);
    std::memcpy(po + static_cast<size_t>(2 * i + 1) * row_bytes, pb + static_cast<size_t>(i) * row_bytes, row_bytes);
  }
}

Tensor interleave_rows(const Tensor& a, const Tensor& b) {
  LLMQ_CHECK(a.dtype() == b.dtype() && a.shape() == b.shape() && !a.shape().empty(),
             "interleave_rows: " << shape_str(a.shape()) << " and " << shape_str(b.shape()));
  Shape shape = a.shape();
  shape[0] *= 2;
  Tensor out(a.dtype(), shape);
  if (a.dim(0) > 0) interleave_rows(a.raw(), b.raw(), out.raw(), a.dim(0), static_cast<size_t>(a.nbytes() / a.dim(0)));
  return out;
}

bool GpuLinear::uses_gemv(int M) const {
  switch (kind) {
    case LinearKind::kBf16: return M <= gpu::kBf16GemvMaxM && K % 8 == 0;
    case LinearKind::kFp8:
    case LinearKind::kInt8: return gpu::w8a8_decode_gemv(kind == LinearKind::kFp8, M, K_pad) != gpu::W8A8Gemv::kNone;
    case LinearKind::kW4A16: return gpu::w4a16_fuses_epilogue(w4, M);
  }
  return false;
}

static_assert(gpu::kBf16SkinnyMinM > gpu::kBf16GemvMaxM, "the skinny GEMM takes over where the GEMV stops");

bool GpuLinear::uses_skinny(int M) const {
  if (kind != LinearKind::kBf16 || M < gpu::kBf16SkinnyMinM || M > gpu::kBf16SkinnyMaxM ||
      !gpu::skinny_bf16_supported(M, N, K))
    return false;
  static const int sms = gpu::device_attribute(cudaDevAttrMultiProcessorCount);
  return gpu::skinny_chunk_k(M, N, K, sms, gpu::skinny_workspace_bytes(M)) == 128;
}

bool GpuLinear::applies_epilogue(int M) const { return uses_gemv(M) || uses_skinny(M); }

gpu::ActQuant GpuLinear::input_quant() const {
  if (K_pad != K) return gpu::ActQuant::kNone;
  if (kind == LinearKind::kFp8) return gpu::ActQuant::kFp8;
  if (kind == LinearKind::kInt8) return gpu::ActQuant::kInt8;
  return gpu::ActQuant::kNone;
}


void GpuLinear::forward(LinearIn in, bf16* y, int M, const gpu::GemvEpilogue& epi, LinearScratch& s, gpu::Blas& blas,
                        cudaStream_t st) const {
  const bool gemv = uses_gemv(M), skinny = !gemv && uses_skinny(M);  // applies_epilogue(M), decided once
  LLMQ_CHECK(gemv || skinny || (!epi.residual && !epi.swiglu),
             "linear: an epilogue without a GEMV or the skinny GEMM (M " << M << ")");
  LLMQ_CHECK(!in.norm_weight || fuses_norm(M), "linear: a fused RMSNorm outside the BF16 GEMV (M " << M << ")");
  if (kind == LinearKind::kBf16) {
    const bf16* w = shared_weight ? shared_weight : weight.as<const bf16>();
    if (gemv) {
      gpu::GemvEpilogue e = epi;
      e.norm_weight = in.norm_weight;
      e.norm_eps = in.norm_eps;
      return gpu::gemv_bf16(in.x, w, y, M, N, K, e, st);
    }
    if (skinny)  // stages of 128 k, as uses_skinny found
      return gpu::gemm_bf16_skinny(in.x, w, y, M, N, K, s.skinny.as(), s.skinny.bytes(), st, 0, 0, 128, epi);
    return blas.gemm_bf16(in.x, w, y, M, N, K, st);
  }
  if (kind == LinearKind::kW4A16)
    return gpu::w4a16_gemm(w4, in.x, y, M, {s.x_perm.as<bf16>(), s.w_bf16.as<bf16>(), s.split.as(), s.split.bytes()}, blas, st, epi);
  const bool fp8 = kind == LinearKind::kFp8;
  if (!in.quantized) {
    if (K_pad != K) LLMQ_CUDA_CHECK(cudaMemsetAsync(s.codes.as(), 0, size_t(M) * K_pad, st));
    if (fp8) gpu::quantize_fp8_per_token(in.x, s.codes.as<uint8_t>(), K_pad, s.scales.as<float>(), M, K, st);
    else gpu::quantize_int8_per_token(in.x, s.codes.as<int8_t>(), K_pad, s.scales.as<float>(), M, K, st);
  }
  const float* sx = s.scales.as<const float>();
  const float* sw = scales.as<const float>();
  if (fp8) {
    if (gemv)
      return gpu::gemv_w8a8_fp8_decode(s.codes.as<const uint8_t>(), sx, weight.as<const uint8_t>(), sw, y, M, N, K_pad,
                                       epi, st);
    blas.gemm_fp8(s.codes.as<const uint8_t>(), weight.as<const uint8_t>(), s.acc.as<float>(), M, N, K_pad, st);
    return gpu::scale_rows_cols_f32(s.acc.as<const float>(), sx, sw, y, M, N, st);
  }
  if (gemv)
    return gpu::gemv_w8a8_int8_decode(s.codes.as<const int8_t>(), sx, weight.as<const int8_t>(), sw, y, M, N, K_pad, epi,
                                      st);
  blas.gemm_int8(s.codes.as<const int8_t>(), weight.as<const int8_t>(), s.acc.as<int32_t>(), M, N, K_pad, st);
  gpu::scale_rows_cols_i32(s.acc.as<const int32_t>(), sx, sw, y, M, N, st);
}

HostLinear dense_host_linear(const TensorView& w) {
  HostLinear h;
  h.dense = to_bf16(w);
  h.out = w.dim(0);
  h.in = w.dim(1);
  return h;
}

HostLinear quantized_host_linear(const QuantizedLinear& q) {
  HostLinear h;
  h.quantized = true;
  h.q = q.clone();
  return h;
}

Expected<HostLinear> read_linear(const HfCheckpoint& ckpt, const std::string& prefix, int64_t out, int64_t in,
                                 const std::string& rtn) {
  HostLinear h;
  if (ckpt.is_quantized_linear(prefix)) {
    h.quantized = true;
    LLMQ_ASSIGN_OR_RETURN(h.q, unpack_quantized_linear(ckpt.tensors(), prefix, *ckpt.quantization(), out, in));
    return h;
  }
  LLMQ_ASSIGN_OR_RETURN(TensorView v, ckpt.tensor(prefix + ".weight", {out, in}));
  if (!rtn.empty() && (rtn != "w4a16" || in % 128 == 0)) {
    const Tensor f = to_f32(v);
    h.quantized = true;
    if (rtn == "fp8") h.q = quantize_fp8_channel(f.view(), Fp8Config{});
    if (rtn == "int8") h.q = quantize_rtn_int8(f.view(), Int8Config{});
    if (rtn == "w4a16") h.q = quantize_rtn_int4(f.view(), Int4Config{128, Int4Range::kAsymWithZero, DType::kBF16, 0});
    return h;
  }
  h.dense = to_bf16(v);
  h.out = out;
  h.in = in;
  return h;
}

// q/k/v (or gate/up) as one linear with the outputs concatenated. Quantized parts must share
// scheme, group size and act-order permutation.
Expected<HostLinear> concat(std::vector<HostLinear> parts, const std::string& what, bool interleave) {
  if (interleave && (parts.size() != 2 || parts[0].out != parts[1].out || parts[0].in != parts[1].in ||
                     parts[0].q.out_features != parts[1].q.out_features || parts[0].q.in_features != parts[1].q.in_features))
    return Status::error(what + ": interleaving needs two parts of the same size");
  HostLinear out;
  out.quantized = parts[0].quantized;
  std::vector<const Tensor*> a, b, c;
  for (const HostLinear& p : parts) {
    if (p.quantized != out.quantized) return Status::error(what + ": mixes quantized and float linears (unsupported)");
    if (!p.quantized) {
      if (!interleave) out.dense.insert(out.dense.end(), p.dense.begin(), p.dense.end());
      out.out += p.out;
      out.in = p.in;
      continue;
    }
    const QuantizedLinear& q0 = parts[0].q;
    if (p.q.scheme != q0.scheme || p.q.group_size != q0.group_size || p.q.scale_dtype != q0.scale_dtype ||
        p.q.g_idx.empty() != q0.g_idx.empty() ||
        (!q0.g_idx.empty() && std::memcmp(p.q.g_idx.raw(), q0.g_idx.raw(), q0.g_idx.nbytes()) != 0))
      return Status::error(what + ": parts are quantized differently (scheme, group or g_idx); not supported yet");
    a.push_back(&p.q.codes);
    b.push_back(&p.q.scales);
    if (!p.q.zeros.empty()) c.push_back(&p.q.zeros);
  }
  if (!c.empty() && c.size() != parts.size()) return Status::error(what + ": only some parts have zero points (unsupported)");
  if (!out.quantized) {
    if (interleave) {
      out.dense.resize(parts[0].dense.size() * 2);
      interleave_rows(parts[0].dense.data(), parts[1].dense.data(), out.dense.data(), parts[0].out,
                      static_cast<size_t>(out.in) * sizeof(bf16));
    }
    return out;
  }
  QuantizedLinear& q = out.q;
  const QuantizedLinear& q0 = parts[0].q;
  q.scheme = q0.scheme;
  q.in_features = q0.in_features;
  q.group_size = q0.group_size;
  q.symmetric = q0.symmetric;
  q.scale_dtype = q0.scale_dtype;
  const auto stack = [&](const std::vector<const Tensor*>& t) {
    return interleave ? interleave_rows(*t[0], *t[1]) : concat_rows(t);
  };
  q.codes = stack(a);
  q.scales = stack(b);
  if (!c.empty()) q.zeros = stack(c);
  if (!q0.g_idx.empty()) q.g_idx = Tensor::copy_of(q0.g_idx.view());
  q.out_features = q.codes.dim(0);
  q.symmetric = true;
  for (const HostLinear& p : parts) q.symmetric = q.symmetric && p.q.symmetric;
  return out;
}

// With interleave (gate/up: two parts of equal size) the rows alternate between the parts.
Expected<HostLinear> fuse(std::vector<HostLinear> parts, const std::string& what, bool interleave) {
  if (parts.size() == 1) return std::move(parts[0]);
  return concat(std::move(parts), what, interleave);
}

Expected<GpuLinear> upload(const HostLinear& h, bool fp8_supported) {
  GpuLinear g;
  if (!h.quantized) {
    g.kind = LinearKind::kBf16;
    g.N = static_cast<int>(h.out);
    g.K = g.K_pad = static_cast<int>(h.in);
    g.weight = DeviceBuffer::from_host(h.dense);
    return g;
  }
  const QuantizedLinear& q = h.q;
  g.N = static_cast<int>(q.out_features);
  g.K = g.K_pad = static_cast<int>(q.in_features);
  if (q.scheme == QuantScheme::kInt4Group) {
    g.kind = LinearKind::kW4A16;
    LLMQ_ASSIGN_OR_RETURN(W4A16Layout layout, w4a16_layout(q));
    g.w4 = gpu::W4A16Weights::upload(layout);
    g.w4_desc = "w4a16 g" + std::to_string(q.group_size) + (q.g_idx.empty() ? "" : " act-order");
    return g;
  }
  const bool fp8 = q.scheme == QuantScheme::kFp8Channel;
  if (fp8 && !fp8_supported) return Status::error("FP8 W8A8 needs a GPU of compute capability 8.9 or newer");
  g.kind = fp8 ? LinearKind::kFp8 : LinearKind::kInt8;
  g.K_pad = static_cast<int>(round_up(g.K, fp8 ? 16 : 4));  // cuBLASLt's K multiple; zero columns add nothing
  std::vector<uint8_t> codes(static_cast<size_t>(g.N) * g.K_pad, 0);
  const uint8_t* src = static_cast<const uint8_t*>(q.codes.raw());
  for (int n = 0; n < g.N; ++n) std::memcpy(&codes[size_t(n) * g.K_pad], src + size_t(n) * g.K, g.K);
  g.weight = DeviceBuffer::from_host(codes);
  g.scales = DeviceBuffer::from_host(q.scales.data<float>(), g.N);
  return g;
}


}  // namespace llmq
