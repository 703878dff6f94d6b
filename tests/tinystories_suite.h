// A GoogleTest suite over tinystories-656k with a scratch directory of its own, made before the
// suite's first test and removed after its last. Where the test data is absent both stay null
// and the tests skip through LLMQ_REQUIRE_TEST_DATA. Derived (CRTP) names the directory with a
// public `static constexpr const char* kScratchName`; a suite that prepares more calls
// TinyStoriesSuite::SetUpTestSuite / TearDownTestSuite from its own.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "tests/test_data.h"

namespace llmq::testing {

template <class Derived>
class TinyStoriesSuite : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!std::filesystem::exists(test_data_dir() + "/README.md")) return;
    dir_ = new std::string(scratch_dir(Derived::kScratchName));
    model_ = new std::string(test_data_dir() + "/models/tinystories-656k");
  }
  static void TearDownTestSuite() {
    if (dir_) std::filesystem::remove_all(*dir_);
    delete dir_;
    delete model_;
    dir_ = model_ = nullptr;
  }

  static inline std::string* dir_ = nullptr;    // the suite's scratch directory
  static inline std::string* model_ = nullptr;  // tinystories-656k
};

}  // namespace llmq::testing
