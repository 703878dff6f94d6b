// Activation statistics; see stats.h.
#include "calibration/stats.h"

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <limits>

#include "core/check.h"

namespace llmq {
namespace {

using MatF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstMapF = Eigen::Map<const MatF>;

constexpr int64_t kChannelBlock = 256;  // channels per thread in the per-channel pass
// Below this many elements a parallel region costs more than the work it splits.
constexpr int64_t kParallelMinElements = 1 << 16;

}  // namespace

std::string_view linear_input_name(LinearInput input) {
  switch (input) {
    case LinearInput::kAttnIn: return "attn_in";
    case LinearInput::kAttnOut: return "attn_out";
    case LinearInput::kMlpIn: return "mlp_in";
    case LinearInput::kMlpOut: return "mlp_out";
  }
  return "?";
}

LinearInput input_of(LinearSlot slot) {
  switch (slot) {
    case LinearSlot::kQ:
    case LinearSlot::kK:
    case LinearSlot::kV: return LinearInput::kAttnIn;
    case LinearSlot::kO: return LinearInput::kAttnOut;
    case LinearSlot::kGate:
    case LinearSlot::kUp: return LinearInput::kMlpIn;
    case LinearSlot::kDown: return LinearInput::kMlpOut;
  }
  LLMQ_CHECK(false, "unknown linear slot " << static_cast<int>(slot));
  return LinearInput::kAttnIn;
}

LinearSlot first_slot_of(LinearInput input) {
  switch (input) {
    case LinearInput::kAttnIn: return LinearSlot::kQ;
    case LinearInput::kAttnOut: return LinearSlot::kO;
    case LinearInput::kMlpIn: return LinearSlot::kGate;
    case LinearInput::kMlpOut: return LinearSlot::kDown;
  }
  LLMQ_CHECK(false, "unknown linear input " << static_cast<int>(input));
  return LinearSlot::kQ;
}

bool all_finite(const Tensor& t) {
  const float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i)
    if (!std::isfinite(p[i])) return false;
  return true;
}

int64_t input_features(const LlamaConfig& config, LinearInput input) {
  switch (input) {
    case LinearInput::kAttnIn: return config.hidden_size;
    case LinearInput::kAttnOut: return config.q_dim();
    case LinearInput::kMlpIn: return config.hidden_size;
    case LinearInput::kMlpOut: return config.intermediate_size;
  }
  return 0;
}

// ---- InputStatsAccumulator -----------------------------------------------------------------

InputStatsAccumulator::InputStatsAccumulator(int64_t features, bool hessian)
    : features_(features), hessian_(hessian),
      abs_max_(static_cast<size_t>(features), 0.0f),
      abs_sum_(static_cast<size_t>(features), 0.0),
      min_(static_cast<size_t>(features), std::numeric_limits<float>::infinity()),
      max_(static_cast<size_t>(features), -std::numeric_limits<float>::infinity()) {
  LLMQ_CHECK(features > 0, "features " << features);
  if (hessian_) hessian_lo_.assign(static_cast<size_t>(features * features), 0.0);
}

Status InputStatsAccumulator::add(const TensorView& x) {
  LLMQ_CHECK(x.dtype == DType::kF32 && x.rank() == 2 && x.is_contiguous() && x.device == Device::kCpu,
             "expected a contiguous float32 host matrix, got " << dtype_name(x.dtype) << " " << shape_str(x.shape));
  LLMQ_CHECK(x.dim(1) == features_, "input has " << x.dim(1) << " features, accumulator " << features_);
  const int64_t T = x.dim(0);
  const int64_t F = features_;
  const float* px = x.as<float>();  // [T, F]
  if (T == 0) return Status::ok();

  // Validate before touching the accumulators, so a bad sample leaves them as they were.
  const bool big = T * F >= kParallelMinElements;
  bool bad = false;
#pragma omp parallel for reduction(|| : bad) schedule(static) if (big)
  for (int64_t i = 0; i < T * F; ++i) bad = bad || !std::isfinite(px[i]);
  if (bad) {
    for (int64_t i = 0; i < T * F; ++i)
      if (!std::isfinite(px[i]))
        return Status::error("non-finite activation " + std::to_string(px[i]) + " at token " +
                             std::to_string(i / F) + ", channel " + std::to_string(i % F));
  }

  // Per-channel pass: each thread owns a block of channels and walks the tokens in order.
  const int64_t n_cblocks = (F + kChannelBlock - 1) / kChannelBlock;
#pragma omp parallel for schedule(static) if (big && n_cblocks > 1)
  for (int64_t b = 0; b < n_cblocks; ++b) {
    const int64_t c0 = b * kChannelBlock;
    const int64_t c1 = std::min(F, c0 + kChannelBlock);
    for (int64_t t = 0; t < T; ++t) {
      const float* row = px + t * F;
      for (int64_t c = c0; c < c1; ++c) {
        const float v = row[c];
        const float a = std::fabs(v);
        abs_max_[c] = std::max(abs_max_[c], a);
        abs_sum_[c] += a;
        min_[c] = std::min(min_[c], v);
        max_[c] = std::max(max_[c], v);
      }
    }
  }

  if (hessian_) {
    // Lower-triangle blocks (bi >= bj) of X^T X; each computed by one thread in float32 and
    // added to the float64 accumulator.
    const ConstMapF X(px, T, F);
    const int64_t nb = (F + kHessianBlock - 1) / kHessianBlock;
    const int64_t n_pairs = nb * (nb + 1) / 2;
    // Always a parallel region, even for one block: inside one, Eigen's GEMM runs single-
    // threaded, so its blocking (and the bits of the result) never depends on the thread count.
#pragma omp parallel
    {
      MatF block;  // [<=128, <=128] float32
#pragma omp for schedule(dynamic, 1)
      for (int64_t p = 0; p < n_pairs; ++p) {
        // p -> (bi, bj) with bj <= bi, row-major over the lower triangle.
        int64_t bi = static_cast<int64_t>((std::sqrt(8.0 * static_cast<double>(p) + 1.0) - 1.0) / 2.0);
        while (bi * (bi + 1) / 2 > p) --bi;
        while ((bi + 1) * (bi + 2) / 2 <= p) ++bi;
        const int64_t bj = p - bi * (bi + 1) / 2;
        const int64_t i0 = bi * kHessianBlock, ni = std::min(kHessianBlock, F - i0);
        const int64_t j0 = bj * kHessianBlock, nj = std::min(kHessianBlock, F - j0);
        block.noalias() = X.middleCols(i0, ni).transpose() * X.middleCols(j0, nj);
        for (int64_t r = 0; r < ni; ++r) {
          double* dst = hessian_lo_.data() + (i0 + r) * F + j0;
          const float* src = block.data() + r * nj;
          const int64_t cols = (bi == bj) ? r + 1 : nj;  // diagonal blocks: only j <= i
          for (int64_t c = 0; c < cols; ++c) dst[c] += static_cast<double>(src[c]);
        }
      }
    }
  }
  tokens_ += T;
  return Status::ok();
}

InputStats InputStatsAccumulator::finish() const {
  const int64_t F = features_;
  InputStats s;
  s.tokens = tokens_;
  s.abs_max = Tensor(DType::kF32, {F});
  s.abs_mean = Tensor(DType::kF32, {F});
  s.min = Tensor(DType::kF32, {F});
  s.max = Tensor(DType::kF32, {F});
  float* amax = s.abs_max.data<float>();
  float* amean = s.abs_mean.data<float>();
  float* mn = s.min.data<float>();
  float* mx = s.max.data<float>();
  for (int64_t c = 0; c < F; ++c) {
    amax[c] = abs_max_[c];
    // No tokens: zeros rather than +-inf / NaN, so nothing non-finite is ever stored.
    amean[c] = tokens_ > 0 ? static_cast<float>(abs_sum_[c] / static_cast<double>(tokens_)) : 0.0f;
    mn[c] = tokens_ > 0 ? min_[c] : 0.0f;
    mx[c] = tokens_ > 0 ? max_[c] : 0.0f;
  }
  if (hessian_) {
    s.hessian = Tensor(DType::kF32, {F, F});
    float* h = s.hessian.data<float>();  // [F, F]
#pragma omp parallel for schedule(static) if (F * F >= kParallelMinElements)
    for (int64_t i = 0; i < F; ++i) {
      for (int64_t j = 0; j <= i; ++j) {
        const float v = static_cast<float>(hessian_lo_[i * F + j]);
        h[i * F + j] = v;
        h[j * F + i] = v;
      }
    }
  }
  return s;
}

// ---- LayerStatsCollector -------------------------------------------------------------------

LayerStatsCollector::LayerStatsCollector(const LlamaConfig& config, int64_t layer, bool hessian)
    : layer_(layer) {
  acc_.reserve(kNumLinearInputs);
  for (LinearInput in : kAllLinearInputs) acc_.emplace_back(input_features(config, in), hessian);
}

void LayerStatsCollector::on_linear_input(int64_t layer, LinearSlot slot, const TensorView& x) {
  if (layer != layer_) return;
  const LinearInput input = input_of(slot);
  if (slot != first_slot_of(input)) return;  // k/v and up see the same input as q and gate
  add(input, x);
}

void LayerStatsCollector::add(LinearInput input, const TensorView& x) {
  if (!status_.is_ok()) return;  // keep the first error
  const Status s = acc_[static_cast<int>(input)].add(x);
  if (!s.is_ok())
    status_ = s.with_context("layer " + std::to_string(layer_) + " " + std::string(linear_input_name(input)));
}

}  // namespace llmq
