// GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative
// Pre-trained Transformers", Algorithm 1; formats.md C.6 and C.7): quantize W column by column,
// each rounding error spread over the not-yet-quantized columns through the upper Cholesky
// factor of H^-1, in lazy blocks of 128 columns.
//
// Steps, per linear (W [out, in], H = sum x x^T over calibration tokens, [in, in]):
//   1. dead columns (H[j,j] == 0): H[j,j] = 1, W[:, j] = 0;
//   2. act-order: perm = argsort(diag(H), descending), permute W's columns and H;
//   3. damping: H += damp * mean(diag(H)) * I; on Cholesky failure retry with damp += 0.01
//      (counted in QuantReport::fallbacks) while damp < 1;
//   4. Hinv = upper Cholesky factor of H^-1;
//   5. sweep columns in blocks of block_size; at each group start compute (scale, zero) of the
//      group from the CURRENT (error-compensated) weights (AutoGPTQ), optionally with the
//      MSE-optimal shrink search (C.7: p = 1 - i/grid for i < maxshrink*grid, error norm 2.4);
//      q = quant(w_i), err = (w_i - deq(q)) / Hinv[i,i], update the block's remaining columns,
//      then the columns after the block (W[:, end:] -= Err · Hinv[block, end:]);
//   6. undo the permutation; g_idx[k] = position of k in perm / group_size with act-order.
// With H = I this is exactly RTN (tested).
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "quantizers/int_grid.h"
#include "quantizers/quantized_linear.h"

namespace llmq {

struct GptqConfig {
  int64_t group_size = 128;
  Int4Range range = Int4Range::kSymmetric;
  DType scale_dtype = DType::kF16;
  int min_zero = 0;           // 1 for GPTQ v1 asymmetric files
  double damp_percent = 0.01;
  int64_t block_size = 128;
  bool act_order = false;
  bool mse_clip = false;      // grid search of shrink factors per group
  int mse_grid = 100;
  double mse_maxshrink = 0.8;
  double mse_norm = 2.4;
};

// w: float32 [out, in]; hessian: float32 or float64 [in, in] (symmetric, PSD up to rounding).
QuantizedLinear quantize_gptq(const TensorView& w, const TensorView& hessian, const GptqConfig& config,
                              QuantReport* report);

// Host-side decisions shared with the GPU implementation (quantizers/gpu/gptq_gpu.h), so both
// take exactly the same ones.
namespace gptq_detail {

constexpr double kDampStep = 0.01;  // GPTQModel's retry increment

// Steps 1 and 2 from diag(H) [in]: dead[j] = (diag[j] == 0); perm [in] maps position ->
// original column (identity, or diag descending with dead columns counted as 1, stable).
void plan_columns(const std::vector<double>& diag, bool act_order, std::vector<uint8_t>* dead,
                  std::vector<int64_t>* perm);

// mean(diag(H)) with dead columns counted as 1, summed in column order in float64.
double mean_diag(const std::vector<double>& diag, const std::vector<uint8_t>& dead);

// [i1, i2) column blocks of at most block_size, cut so that no group starting after a block's
// first column ends after the block (gptq.cc's file comment says why).
std::vector<std::pair<int64_t, int64_t>> column_blocks(int64_t in, int64_t block_size, int64_t group_size);

}  // namespace gptq_detail

}  // namespace llmq
