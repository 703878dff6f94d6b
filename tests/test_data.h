// Locates ../shared/data (or $LLMQ_TEST_DATA). Tests that need it call LLMQ_REQUIRE_TEST_DATA():
// without the data they skip with a clear message, unless LLMQ_REQUIRE_TEST_DATA=1 (CI), where
// missing data is a failure.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <unistd.h>

namespace llmq::testing {

inline std::string test_data_dir() {
  if (const char* env = std::getenv("LLMQ_TEST_DATA"); env && *env) return env;
  return std::string(LLMQ_SOURCE_DIR) + "/../shared/data";
}

inline bool test_data_required() {
  const char* env = std::getenv("LLMQ_REQUIRE_TEST_DATA");
  return env && std::string(env) == "1";
}

// The whole file as bytes ("" when it cannot be read).
inline std::string read_all(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline std::string scratch_dir(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() / ("llmq-test-" + std::to_string(::getpid()) + "-" + name);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir.string();
}

}  // namespace llmq::testing

#define LLMQ_REQUIRE_TEST_DATA()                                                              \
  do {                                                                                        \
    const std::string llmq_dd_ = ::llmq::testing::test_data_dir();                            \
    if (!std::filesystem::exists(llmq_dd_ + "/README.md")) {                                  \
      if (::llmq::testing::test_data_required())                                              \
        FAIL() << "test data missing at " << llmq_dd_ << " and LLMQ_REQUIRE_TEST_DATA=1";     \
      GTEST_SKIP() << "test data not found at " << llmq_dd_                                   \
                   << " (set LLMQ_TEST_DATA to the shared/data folder)";                      \
    }                                                                                         \
  } while (0)
