// CPython's random.Random, the part lm-evaluation-harness uses to pick few-shot exemplars
// (ContextSampler.sample -> rnd.sample(docs, k) with rnd = random.Random(fewshot_seed)), so the
// same seed selects the same training documents here as in the harness.
//
// What is reproduced (CPython Modules/_randommodule.c and Lib/random.py, unchanged 3.2 - 3.13):
//   seed(int a): key = |a| as 32-bit words, least significant first ([0] for 0), then the
//     reference MT19937 init_by_array(key) (init_genrand(19650218) and the two mixing loops);
//   getrandbits(k), 0 < k <= 32: genrand_uint32() >> (32 - k);
//   _randbelow(n) = _randbelow_with_getrandbits: k = n.bit_length(), draw getrandbits(k)
//     until the value is < n;
//   sample(population of n, k): setsize = 21, plus 4 ** ceil(log(3k, 4)) when k > 5; if
//     n <= setsize, the pool algorithm (j = _randbelow(n - i), take pool[j], move the last
//     live entry into the hole), else the set algorithm (j = _randbelow(n), redrawn while
//     already chosen). sample_indices returns the indices into the population, in order.
// std::mt19937 has the same generator but seeds through seed_seq, not init_by_array, so the
// generator is written out here (about 40 lines) instead.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "core/status.h"

namespace llmq {

class PyRandom {
 public:
  // random.Random(seed) for an int seed (negative seeds use |seed|, as CPython does).
  explicit PyRandom(int64_t seed);

  uint32_t genrand_uint32();
  uint32_t getrandbits(int k);  // 1 <= k <= 32 (LLMQ_CHECK)
  uint64_t randbelow(uint64_t n);  // 1 <= n < 2^32 (LLMQ_CHECK)
  // random.sample(range(n), k). Errors: k < 0, k > n or n >= 2^32.
  Expected<std::vector<int64_t>> sample_indices(int64_t n, int64_t k);

 private:
  void init_genrand(uint32_t s);
  void init_by_array(const std::vector<uint32_t>& key);

  static constexpr int kN = 624;
  static constexpr int kM = 397;
  std::array<uint32_t, kN> mt_{};
  int mti_ = kN + 1;
};

}  // namespace llmq
