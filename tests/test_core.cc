#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/numeric.h"
#include "core/output_dir.h"
#include "core/status.h"
#include "core/tensor.h"
#include "tests/test_data.h"

namespace llmq {
namespace {
namespace fs = std::filesystem;

Expected<int> parse_positive(int x) {
  if (x <= 0) return Status::error("value " + std::to_string(x) + " is not positive");
  return x;
}

Status doubled(int x, int* out) {
  LLMQ_ASSIGN_OR_RETURN(int v, parse_positive(x));
  *out = 2 * v;
  return Status::ok();
}

TEST(Status, MacrosPropagateErrorsAndValues) {
  int out = 0;
  EXPECT_TRUE(doubled(4, &out).is_ok());
  EXPECT_EQ(out, 8);
  const Status s = doubled(-1, &out);
  ASSERT_FALSE(s.is_ok());
  EXPECT_EQ(s.message(), "value -1 is not positive");
  EXPECT_EQ(s.with_context("f.json").message(), "f.json: value -1 is not positive");
}

TEST(Tensor, ShapesAndConversions) {
  Tensor t(DType::kBF16, {2, 3});
  EXPECT_EQ(t.numel(), 6);
  EXPECT_EQ(t.nbytes(), 12);
  const float values[6] = {1.0f, -2.5f, 3.0e-3f, 448.0f, -0.0f, 65504.0f};
  for (int i = 0; i < 6; ++i) t.data<uint16_t>()[i] = f32_to_bf16(values[i]);
  Tensor f = to_f32(t.view());
  for (int i = 0; i < 6; ++i) EXPECT_EQ(f.data<float>()[i], bf16_to_f32(f32_to_bf16(values[i])));
  Tensor back = f32_to(f.view(), DType::kBF16);
  EXPECT_EQ(std::memcmp(back.raw(), t.raw(), 12), 0);
  EXPECT_EQ(dtype_nbytes(DType::kI4, 7), 4);
  EXPECT_EQ(shape_str({4096, 128}), "[4096, 128]");
  EXPECT_EQ(contiguous_strides({2, 3, 4}), (Shape{12, 4, 1}));
  EXPECT_EQ(dtype_from_name("F8_E4M3"), DType::kF8E4M3);
  EXPECT_FALSE(dtype_from_name("F8_E5M2FNUZ").has_value());
}

TEST(StagedOutputDir, AppearsOnlyOnCommitAndRespectsForce) {
  const std::string root = testing::scratch_dir("staged");
  const std::string target = root + "/out";
  {
    auto staged = StagedOutputDir::create(target, false);
    ASSERT_TRUE(staged) << staged.status().message();
    std::ofstream(staged->path() + "/a.txt") << "x";
    EXPECT_FALSE(fs::exists(target));
    ASSERT_TRUE(staged->commit().is_ok());
  }
  EXPECT_TRUE(fs::exists(target + "/a.txt"));
  auto refused = StagedOutputDir::create(target, false);
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.status().message().find("--force"), std::string::npos);
  {
    // Abandoned (never committed): old output intact, staging removed.
    auto staged = StagedOutputDir::create(target, true);
    ASSERT_TRUE(staged);
    std::ofstream(staged->path() + "/b.txt") << "y";
  }
  EXPECT_TRUE(fs::exists(target + "/a.txt"));
  EXPECT_FALSE(fs::exists(target + "/b.txt"));
  for (const auto& e : fs::directory_iterator(root)) EXPECT_EQ(e.path().filename(), "out");
  {
    auto staged = StagedOutputDir::create(target, true);
    ASSERT_TRUE(staged);
    std::ofstream(staged->path() + "/b.txt") << "y";
    ASSERT_TRUE(staged->commit().is_ok());
  }
  EXPECT_FALSE(fs::exists(target + "/a.txt"));
  EXPECT_TRUE(fs::exists(target + "/b.txt"));
  EXPECT_FALSE(write_file_atomic(target + "/b.txt", "z", false).is_ok());
  EXPECT_TRUE(write_file_atomic(target + "/b.txt", "z", true).is_ok());
  fs::remove_all(root);
}

TEST(Tensor, ConcatRowsStacksPartsInOrder) {
  Tensor a(DType::kF32, {1, 3}), b(DType::kF32, {2, 3});
  for (int i = 0; i < 3; ++i) a.data<float>()[i] = static_cast<float>(i);
  for (int i = 0; i < 6; ++i) b.data<float>()[i] = static_cast<float>(10 + i);
  const Tensor c = concat_rows({&a, &b});
  ASSERT_EQ(c.shape(), (Shape{3, 3}));
  EXPECT_EQ(c.data<float>()[2], 2.0f);
  EXPECT_EQ(c.data<float>()[3], 10.0f);
  EXPECT_EQ(c.data<float>()[8], 15.0f);
  Tensor wrong(DType::kF32, {1, 4});
  EXPECT_DEATH_IF_SUPPORTED(concat_rows({&a, &wrong}), "concat_rows");
}

}  // namespace
}  // namespace llmq
