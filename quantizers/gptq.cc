// GPTQ for INT4 groups (the algorithm is described in gptq.h; formats.md C.4, C.6, C.7).
//
// Implementation notes:
//   - Precision: H, its damping and the upper Cholesky factor U of H^-1 are computed in
//     float64 (Eigen LLT), because H^-1 of a 14336-wide Hessian loses most of float32's
//     digits; U is then rounded to float32, and the column sweep runs in float32 like
//     AutoGPTQ's. U comes from one Cholesky of the reversed H and a triangular inverse (see
//     reversed_cholesky_inverse), equal to chol_upper(inverse(H)) without forming H^-1.
//   - Every output row is independent once U = chol_upper(H^-1) is known, so the sweep runs
//     over fixed chunks of kRowChunk rows (OpenMP), each chunk going through all blocks:
//     per-column work within the block, then one Eigen GEMM for the columns after the block.
//     Fixed chunks and a sequential GEMM per chunk make the bits independent of the thread
//     count (likewise the triangular inverse's independent column blocks).
//   - Group parameters at a group start come from the group's CURRENT weights, i.e. with every
//     earlier column's error compensation applied. Within a block the block's columns are
//     current; columns after the block are not (their update is the lazy GEMM). So a block
//     never lets a group that starts inside it run past its end: such a block is cut at that
//     group's start. The result is the unbatched Algorithm 1 up to float rounding, for every
//     block_size. (AutoGPTQ takes mid-block groups' parameters from the block-start snapshot
//     instead; both agree whenever groups start at block starts, e.g. block 128 / group 128.)
//   - Inputs must be finite (LLMQ_CHECK): NaN/Inf in a weight or a Hessian is the caller's bug.
//   - A Hessian still not positive definite at damping >= 1 is not PSD at all: LLMQ_CHECK.
#include "quantizers/gptq.h"

#include <Eigen/Dense>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "core/stopwatch.h"
#include "quantizers/rtn.h"

namespace llmq {
namespace {

using RowMajorF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using StridedMapF = Eigen::Map<RowMajorF, 0, Eigen::OuterStride<>>;
using ConstStridedMapF = Eigen::Map<const RowMajorF, 0, Eigen::OuterStride<>>;

constexpr int64_t kRowChunk = 128;  // rows per task; fixed, so bits do not depend on threads
using gptq_detail::kDampStep;

// Group (scale, zero) from the group's current weights v[0, gs).
Int4Params group_params(const float* v, int64_t gs, const GptqConfig& c) {
  const Int4Config rtn{gs, c.range, c.scale_dtype, c.min_zero};
  const Int4Params minmax = int4_group_params(v, 0, gs, rtn);  // exactly RTN's rule
  if (!c.mse_clip) return minmax;
  // AutoGPTQ find_params(mse=True): shrink (lo, hi) by p = 1 - i/grid, keep the lowest
  // sum |fq(w) - w|^norm; ties keep the larger range. Symmetric ranges keep zero 8.
  float lo = v[0], hi = v[0];
  for (int64_t k = 1; k < gs; ++k) {
    lo = std::min(lo, v[k]);
    hi = std::max(hi, v[k]);
  }
  const int steps = static_cast<int>(c.mse_maxshrink * c.mse_grid);
  Int4Params best = minmax;
  double best_err = std::numeric_limits<double>::infinity();
  const float norm = static_cast<float>(c.mse_norm);
  for (int i = 0; i < steps; ++i) {
    const float p = static_cast<float>(1.0 - static_cast<double>(i) / c.mse_grid);
    const Int4Params cand = int4_params(lo * p, hi * p, c.range, c.scale_dtype, c.min_zero);
    double err = 0;  // float32 terms like AutoGPTQ's (powf is ~3x cheaper than pow here)
    for (int64_t k = 0; k < gs; ++k) {
      const float d = std::fabs(int4_dequant(int4_code(v[k], cand), cand) - v[k]);
      err += norm == 2.0f ? d * d : std::pow(d, norm);
    }
    if (err < best_err) {
      best_err = err;
      best = cand;
    }
  }
  return best;
}

bool all_finite(const TensorView& v) {
  const int64_t n = v.numel();
  if (v.dtype == DType::kF64) {
    const double* p = v.as<double>();
    for (int64_t i = 0; i < n; ++i)
      if (!std::isfinite(p[i])) return false;
    return true;
  }
  const float* p = v.as<float>();
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(p[i])) return false;
  return true;
}

// hd[i, j] = H[perm[i], perm[j]] ([n, n] float64), dead diagonals set to 1, plus damp_abs on
// the diagonal. Column j of hd is read from row perm[j] of H (H is symmetric by contract).
template <class T>
void load_damped(const T* h, int64_t n, const std::vector<int64_t>& perm, const std::vector<uint8_t>& dead,
                 double damp_abs, Eigen::MatrixXd& hd) {
#pragma omp parallel for schedule(static)
  for (int64_t j = 0; j < n; ++j) {
    const T* hrow = h + perm[j] * n;
    double* col = hd.data() + j * n;
    for (int64_t i = 0; i < n; ++i) col[i] = static_cast<double>(hrow[perm[i]]);
    if (dead[perm[j]]) col[j] = 1.0;
    col[j] += damp_abs;
  }
}

// U = chol_upper(H^-1) without forming H^-1 (the "reversal" identity): with J the reversal
// permutation and J H J = Lr Lr^T (lower Cholesky), H = R R^T with R = J Lr J upper, so
// H^-1 = R^-T R^-1 and U = R^-1 = J Lr^-1 J (upper, positive diagonal: the unique factor
// torch.linalg.cholesky(H^-1, upper=True) returns). One Cholesky plus one triangular inverse
// (2n^3/3 flops) instead of Cholesky, inverse and a second Cholesky (about 8n^3/3 with Eigen),
// and no squared condition number from refactoring H^-1.
// hd: J (damped, permuted H) J, destroyed (its lower triangle becomes Lr); x: Lr^-1.
// False when H is not numerically positive definite.
bool reversed_cholesky_inverse(Eigen::MatrixXd& hd, Eigen::MatrixXd& x) {
  const int64_t n = hd.rows();
  const double max_diag = hd.diagonal().maxCoeff();
  Eigen::LLT<Eigen::Ref<Eigen::MatrixXd>> llt(hd);  // in place
  if (llt.info() != Eigen::Success) return false;
  // A pivot below LAPACK dpstrf's rank tolerance (n * eps * max diag) is rounding noise: the
  // matrix is singular to working precision even though no pivot came out negative.
  const double tol = static_cast<double>(n) * std::numeric_limits<double>::epsilon() * max_diag;
  for (int64_t j = 0; j < n; ++j)
    if (!(hd(j, j) * hd(j, j) > tol)) return false;  // also catches NaN
  // X = Lr^-1 by column blocks: block [j0, j0 + w) of X is zero above row j0 and solves
  // Lr[j0:, j0:] X[j0:, block] = I[j0:, block]; blocks are independent, n^3/3 flops in all.
  constexpr int64_t kInvBlock = 64;
  x.setZero();
  const int64_t blocks = (n + kInvBlock - 1) / kInvBlock;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t j0 = b * kInvBlock, w = std::min(kInvBlock, n - j0);
    auto xb = x.block(j0, j0, n - j0, w);
    xb.topRows(w).setIdentity();
    hd.bottomRightCorner(n - j0, n - j0).triangularView<Eigen::Lower>().solveInPlace(xb);
  }
  for (int64_t j = 0; j < n; ++j)
    for (int64_t i = j; i < n; ++i)
      if (!std::isfinite(x(i, j))) return false;
  return true;
}

// U = chol_upper((P^T H P + damp * mean(diag) * I)^-1) as float32 row-major [n, n] (lower
// triangle zero), retrying with more damping on failure.
template <class T>
std::vector<float> inverse_factor(const T* h, int64_t n, const std::vector<int64_t>& perm,
                                  const std::vector<uint8_t>& dead, double damp_percent, double* damp_out,
                                  int* fallbacks) {
  std::vector<double> diag(n);  // [n] diag(H) as given
  for (int64_t j = 0; j < n; ++j) diag[j] = static_cast<double>(h[j * n + j]);
  const double mean_diag = gptq_detail::mean_diag(diag, dead);
  const std::vector<int64_t> rperm(perm.rbegin(), perm.rend());  // [n] J P: reversed order
  Eigen::MatrixXd hd(n, n);  // [n, n] J (damped, permuted H) J; then Lr
  Eigen::MatrixXd x(n, n);   // [n, n] Lr^-1
  for (int attempt = 0;; ++attempt) {
    // From damp_percent, not by accumulation, so the sequence of tries is exact.
    const double damp = damp_percent + attempt * kDampStep;
    LLMQ_CHECK(attempt == 0 || damp < 1.0, "GPTQ: Hessian [" << n << ", " << n
                                                             << "] is not positive definite even with damping "
                                                             << damp - kDampStep << " (not PSD?)");
    load_damped(h, n, rperm, dead, damp * mean_diag, hd);
    if (reversed_cholesky_inverse(hd, x)) {
      *damp_out = damp;
      *fallbacks = attempt;
      break;
    }
  }
  hd = Eigen::MatrixXd();  // free before U: peak 2 n^2 doubles (3.3 GB at n = 14336)
  std::vector<float> u(static_cast<size_t>(n * n), 0.0f);  // [n, n] row-major, upper triangle
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = i; j < n; ++j) u[i * n + j] = static_cast<float>(x(n - 1 - i, n - 1 - j));
  return u;
}

// tr(A H A^T) for A [out, in] given row by row (fill(n, dst) writes row n), H [in, in].
template <class T, class RowFn>
double trace_aha(const T* h, int64_t out, int64_t in, RowFn fill) {
  using RowMajorT = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const Eigen::Map<const RowMajorT> hm(h, in, in);
  const int64_t chunks = (out + kRowChunk - 1) / kRowChunk;
  std::vector<double> partial(chunks, 0.0);  // summed in order afterwards: deterministic
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t r0 = c * kRowChunk, rows = std::min(out, r0 + kRowChunk) - r0;
    RowMajorT a(rows, in);  // [rows, in]
    for (int64_t r = 0; r < rows; ++r) fill(r0 + r, a.data() + r * in);
    const RowMajorT ah = a * hm;  // [rows, in]
    double s = 0;
    for (int64_t i = 0; i < rows * in; ++i) s += static_cast<double>(a.data()[i]) * static_cast<double>(ah.data()[i]);
    partial[c] = s;
  }
  return std::accumulate(partial.begin(), partial.end(), 0.0);
}

template <class T>
double output_rel_error(const T* h, const float* w, const float* deq, int64_t out, int64_t in) {
  const double num = trace_aha(h, out, in, [&](int64_t n, T* dst) {
    for (int64_t k = 0; k < in; ++k) dst[k] = static_cast<T>(w[n * in + k]) - static_cast<T>(deq[n * in + k]);
  });
  const double den = trace_aha(h, out, in, [&](int64_t n, T* dst) {
    for (int64_t k = 0; k < in; ++k) dst[k] = static_cast<T>(w[n * in + k]);
  });
  return den > 0 ? num / den : 0.0;
}

}  // namespace

namespace gptq_detail {

void plan_columns(const std::vector<double>& diag, bool act_order, std::vector<uint8_t>* dead,
                  std::vector<int64_t>* perm) {
  const int64_t in = static_cast<int64_t>(diag.size());
  std::vector<double> key(in);  // [in] diag(H) with dead columns set to 1
  dead->assign(in, 0);
  for (int64_t j = 0; j < in; ++j) {
    (*dead)[j] = diag[j] == 0.0;
    key[j] = (*dead)[j] ? 1.0 : diag[j];
  }
  perm->resize(in);
  std::iota(perm->begin(), perm->end(), 0);
  if (act_order)  // stable, so ties keep column order
    std::stable_sort(perm->begin(), perm->end(), [&](int64_t a, int64_t b) { return key[a] > key[b]; });
}

double mean_diag(const std::vector<double>& diag, const std::vector<uint8_t>& dead) {
  const int64_t n = static_cast<int64_t>(diag.size());
  double mean = 0;
  for (int64_t j = 0; j < n; ++j) mean += dead[j] ? 1.0 : diag[j];
  return mean / static_cast<double>(n);
}

std::vector<std::pair<int64_t, int64_t>> column_blocks(int64_t in, int64_t block_size, int64_t gs) {
  std::vector<std::pair<int64_t, int64_t>> blocks;
  for (int64_t i1 = 0; i1 < in;) {
    int64_t i2 = std::min(in, i1 + block_size);
    const int64_t last_start = ((i2 - 1) / gs) * gs;  // last group start inside [i1, i2)
    if (last_start > i1 && last_start + gs > i2) i2 = last_start;
    blocks.emplace_back(i1, i2);
    i1 = i2;
  }
  return blocks;
}

}  // namespace gptq_detail

// report may be null: it costs two O(out * in^2) traces, tr(E H E^T) and tr(W H W^T).
QuantizedLinear quantize_gptq(const TensorView& w, const TensorView& hessian, const GptqConfig& config,
                              QuantReport* report) {
  const auto t0 = Clock::now();
  LLMQ_CHECK(w.dtype == DType::kF32 && w.rank() == 2 && w.is_contiguous() && w.device == Device::kCpu,
             "quantize_gptq takes a contiguous host float32 [out, in] weight");
  const int64_t out = w.dim(0), in = w.dim(1), gs = config.group_size;
  LLMQ_CHECK((hessian.dtype == DType::kF32 || hessian.dtype == DType::kF64) && hessian.is_contiguous() &&
                 hessian.device == Device::kCpu && hessian.shape == (Shape{in, in}),
             "Hessian must be contiguous host F32/F64 [" << in << ", " << in << "], got " << shape_str(hessian.shape));
  LLMQ_CHECK(out > 0 && gs > 0 && in % gs == 0, "in " << in << " not a multiple of group " << gs);
  LLMQ_CHECK(config.block_size > 0 && config.damp_percent >= 0 && config.mse_grid > 0,
             "bad GPTQ config: block " << config.block_size << ", damp " << config.damp_percent);
  LLMQ_CHECK(all_finite(w), "quantize_gptq: weight has NaN/Inf");
  LLMQ_CHECK(all_finite(hessian), "quantize_gptq: Hessian has NaN/Inf");
  const int64_t G = in / gs;
  const bool h64 = hessian.dtype == DType::kF64;
  const float* src = w.as<float>();

  // 1. dead columns; 2. act-order permutation.
  std::vector<double> diag(in);  // [in] diag(H)
  for (int64_t j = 0; j < in; ++j) diag[j] = h64 ? hessian.as<double>()[j * in + j] : hessian.as<float>()[j * in + j];
  std::vector<uint8_t> dead;   // [in] H[j, j] == 0
  std::vector<int64_t> perm;   // [in] position -> original column
  gptq_detail::plan_columns(diag, config.act_order, &dead, &perm);

  // 3, 4. damping and U = chol_upper(H^-1) in float64.
  double damp = 0;
  int fallbacks = 0;
  const std::vector<float> u =  // [in, in] row-major upper triangle
      h64 ? inverse_factor(hessian.as<double>(), in, perm, dead, config.damp_percent, &damp, &fallbacks)
          : inverse_factor(hessian.as<float>(), in, perm, dead, config.damp_percent, &damp, &fallbacks);

  QuantizedLinear q = make_int4_linear(out, in, gs, config.range == Int4Range::kSymmetric, config.scale_dtype);
  uint8_t* codes = q.codes.data<uint8_t>();
  float* scales = q.scales.data<float>();
  uint8_t* zeros = q.zeros.data<uint8_t>();

  // Working weights in processing order, dead columns zeroed.
  std::vector<float> wp(static_cast<size_t>(out * in));  // [out, in] permuted
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < out; ++n)
    for (int64_t i = 0; i < in; ++i) wp[n * in + i] = dead[perm[i]] ? 0.0f : src[n * in + perm[i]];

  // 5. the sweep, chunk of rows by chunk of rows.
  const auto blocks = gptq_detail::column_blocks(in, config.block_size, gs);
  const int64_t chunks = (out + kRowChunk - 1) / kRowChunk;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t r0 = c * kRowChunk, rows = std::min(out, r0 + kRowChunk) - r0;
    std::vector<float> err(static_cast<size_t>(rows * config.block_size));  // [rows, count] scaled errors
    std::vector<Int4Params> params(rows);                                   // [rows] current group's
    for (const auto& [i1, i2] : blocks) {
      const int64_t count = i2 - i1;
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t n = r0 + r;
        float* row = wp.data() + n * in;
        Int4Params& p = params[r];
        for (int64_t i = i1; i < i2; ++i) {
          if (i % gs == 0) {
            p = group_params(row + i, gs, config);
            scales[n * G + i / gs] = p.scale;
            zeros[n * G + i / gs] = p.zero;
          }
          const uint8_t code = int4_code(row[i], p);
          codes[n * in + perm[i]] = code;
          const float* urow = u.data() + i * in;
          const float e = (row[i] - int4_dequant(code, p)) / urow[i];
          err[r * count + (i - i1)] = e;
          for (int64_t j = i + 1; j < i2; ++j) row[j] -= e * urow[j];
        }
      }
      if (i2 < in) {  // lazy update: W[:, i2:] -= Err [rows, count] . U[i1:i2, i2:] [count, in - i2]
        StridedMapF rest(wp.data() + r0 * in + i2, rows, in - i2, Eigen::OuterStride<>(in));
        const Eigen::Map<const RowMajorF> e(err.data(), rows, count);
        const ConstStridedMapF ub(u.data() + i1 * in + i2, count, in - i2, Eigen::OuterStride<>(in));
        rest.noalias() -= e * ub;  // sequential inside the parallel loop
      }
    }
  }

  // 6. codes/scales/zeros are already in original column order; groups follow positions.
  if (config.act_order) {
    q.g_idx = Tensor(DType::kI32, {in});
    int32_t* g_idx = q.g_idx.data<int32_t>();
    for (int64_t i = 0; i < in; ++i) g_idx[perm[i]] = static_cast<int32_t>(i / gs);
  }

  if (report != nullptr) {
    const Tensor deq = dequantize(q);
    const float* d = deq.data<float>();
    double err2 = 0, norm2 = 0;
    for (int64_t i = 0; i < out * in; ++i) {
      const double x = src[i], e = x - static_cast<double>(d[i]);
      err2 += e * e;
      norm2 += x * x;
    }
    report->weight_rel_error = norm2 > 0 ? std::sqrt(err2 / norm2) : 0.0;
    report->output_rel_error = h64 ? output_rel_error(hessian.as<double>(), src, d, out, in)
                                   : output_rel_error(hessian.as<float>(), src, d, out, in);
    report->damp = damp;
    report->fallbacks = fallbacks;
    report->seconds = seconds_since(t0);
  }
  return q;
}

}  // namespace llmq
