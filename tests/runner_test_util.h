// Helpers shared by the runner's GPU tests: skipping without a GPU, random bf16 data, and
// the bf16 comparison with a tolerance in units of the reference's last place.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "core/numeric.h"
#include "runner/device.h"

// Skips without a GPU, or fails where LLMQ_REQUIRE_GPU=1 says the machine has one (the GPU
// check script sets it, so a broken driver cannot pass as a skip).
#define LLMQ_REQUIRE_GPU()                                                           \
  do {                                                                               \
    const ::llmq::GpuInfo llmq_gpu_ = ::llmq::query_gpu();                           \
    if (!llmq_gpu_.available) {                                                      \
      const char* llmq_req_ = std::getenv("LLMQ_REQUIRE_GPU");                       \
      if (llmq_req_ && std::string(llmq_req_) == "1") FAIL() << "no GPU (LLMQ_REQUIRE_GPU=1): " << llmq_gpu_.why_not; \
      GTEST_SKIP() << "no GPU: " << llmq_gpu_.why_not;                               \
    }                                                                                \
  } while (0)

namespace llmq::testing {

inline std::vector<uint16_t> random_bf16(size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<uint16_t> v(n);
  for (auto& x : v) x = f32_to_bf16(d(rng));
  return v;
}

// One unit in the last place of a bf16 value of magnitude |v| (normal range).
inline double bf16_ulp(double v) {
  const double a = std::max(std::fabs(v), 1e-30);
  return std::ldexp(1.0, std::ilogb(a) - 7);
}

// Every element finite, some non-zero (so an all-zero result cannot pass), and
// |gpu - ref| <= ulps * ulp(ref) + abs_tol[i] (abs_tol may be empty).
inline void expect_bf16_near(const std::vector<uint16_t>& gpu, const std::vector<uint16_t>& ref, double ulps,
                             const std::vector<double>& abs_tol = {}, const char* what = "") {
  ASSERT_EQ(gpu.size(), ref.size()) << what;
  size_t bad = 0, nonzero = 0, first_bad = 0;
  for (size_t i = 0; i < gpu.size(); ++i) {
    const double g = bf16_to_f32(gpu[i]), r = bf16_to_f32(ref[i]);
    ASSERT_TRUE(std::isfinite(g)) << what << ": element " << i << " is " << g;
    nonzero += g != 0.0;
    const double tol = ulps * bf16_ulp(r) + (abs_tol.empty() ? 0.0 : abs_tol[i]);
    if (std::fabs(g - r) > tol) {
      if (bad++ == 0) first_bad = i;
    }
  }
  EXPECT_GT(nonzero, 0u) << what << ": all zero";
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << gpu.size() << " outside tolerance, first at " << first_bad
                     << ": gpu " << bf16_to_f32(gpu[first_bad]) << " ref " << bf16_to_f32(ref[first_bad]);
}

}  // namespace llmq::testing
