// How many warps share a 16-row tile in the direct decode GEMVs (W4A16's mma_direct,
// runner/w4a16.cu; the W8A8 tensor-core GEMV, runner/gemv_mma.cu). Host-only, so the rule is
// tested without a GPU.
#pragma once

#include <climits>
#include <utility>

namespace llmq::gpu {

// Resident blocks of a direct GEMV kernel at S = 4, 8 and 16 warps per tile.
struct DirectResidency {
  int s4 = 0, s8 = 0, s16 = 0;
};

// Warps per tile, S: the S whose tiles (one block each) run in the fewest waves of resident
// blocks, the larger S on a tie (more of a tile's loads in flight at once); S < 16 only where
// each warp has at least two iterations of four 64-column chunks (chunks >= 8 S). A partial
// last wave starts late and ends the kernel with few loads in flight: at Llama-3.1-8B shapes on
// an H200, q/k/v's 384 tiles would take two waves at S = 16 (two blocks per SM, 264
// resident). The rule keeps the measured choices elsewhere: 16 for o and down (256 tiles, one
// wave), 4 for gate_up (1792 tiles; W4A16 34.3 vs 37.4 us at M = 1 against S = 16).
inline int direct_gemv_warps(int tiles, int chunks, const DirectResidency& r) {
  const auto waves = [&](int resident) { return resident > 0 ? (tiles + resident - 1) / resident : INT_MAX; };
  int best = 16, best_waves = waves(r.s16);
  for (auto [S, resident] : {std::pair{8, r.s8}, std::pair{4, r.s4}})
    if (chunks >= 8 * S && waves(resident) < best_waves) best = S, best_waves = waves(resident);
  return best;
}

}  // namespace llmq::gpu
