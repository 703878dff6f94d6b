// The llmq binary as a user meets it: exit codes, one-line errors naming the file and the
// problem, outputs that appear only complete, no overwrite without --force.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "tests/cli_util.h"
#include "tests/test_data.h"

namespace {
namespace fs = std::filesystem;

using llmq::testing::expect_one_line_error;
using llmq::testing::RunResult;
using llmq::testing::run_llmq;

class Cli : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = llmq::testing::scratch_dir(::testing::UnitTest::GetInstance()->current_test_info()->name()); }
  void TearDown() override { fs::remove_all(dir_); }
  std::string dir_;
};

TEST_F(Cli, SynthInspectAndNoOverwrite) {
  const std::string model = dir_ + "/tiny";
  RunResult r = run_llmq("synth --config tiny --seed 3 --out " + model);
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_TRUE(fs::exists(model + "/config.json"));
  EXPECT_TRUE(fs::exists(model + "/model.safetensors.index.json"));  // tiny is sharded on purpose
  EXPECT_TRUE(fs::exists(model + "/tokenizer.json"));
  for (const auto& e : fs::directory_iterator(dir_)) EXPECT_EQ(e.path().filename(), "tiny");  // no staging left

  r = run_llmq("inspect " + model);
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("hidden 256"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("39 tensors"), std::string::npos) << r.out;  // embed + 4*9 + norm + lm_head
  EXPECT_NE(r.out.find("quantization none"), std::string::npos) << r.out;

  const auto before = fs::last_write_time(model + "/config.json");
  expect_one_line_error(run_llmq("synth --config tiny --out " + model), "--force");
  EXPECT_EQ(fs::last_write_time(model + "/config.json"), before);
  ASSERT_EQ(run_llmq("synth --config tiny --seed 3 --out " + model + " --force").exit_code, 0);
}

TEST_F(Cli, SynthIsDeterministic) {
  ASSERT_EQ(run_llmq("synth --config tiny --seed 7 --out " + dir_ + "/a").exit_code, 0);
  ASSERT_EQ(run_llmq("synth --config tiny --seed 7 --out " + dir_ + "/b").exit_code, 0);
  ASSERT_EQ(run_llmq("synth --config tiny --seed 8 --out " + dir_ + "/c").exit_code, 0);
  auto slurp = [](const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  };
  int files = 0;
  for (const auto& e : fs::directory_iterator(dir_ + "/a")) {
    const auto name = e.path().filename();
    EXPECT_EQ(slurp(e.path()), slurp(fs::path(dir_) / "b" / name)) << name;
    if (name.string().find("safetensors") != std::string::npos && name.extension() == ".safetensors")
      EXPECT_NE(slurp(e.path()), slurp(fs::path(dir_) / "c" / name)) << name;
    ++files;
  }
  EXPECT_GE(files, 6);
}

// --layers cuts the model to its first N decoder layers (tests/test_checkpoint.cc: the same
// tensors bit for bit).
TEST_F(Cli, SynthLayersOption) {
  RunResult r = run_llmq("synth --config tiny --layers 1 --out " + dir_ + "/cut");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("1 layers"), std::string::npos) << r.out;
  const nlohmann::json cut = nlohmann::json::parse(std::ifstream(dir_ + "/cut/config.json"));
  EXPECT_EQ(cut["num_hidden_layers"].get<int>(), 1);
  expect_one_line_error(run_llmq("synth --config tiny --layers 0 --out " + dir_ + "/zero"), "--layers");
}

TEST_F(Cli, BadInputGivesOneLineErrorAndExitCode2) {
  expect_one_line_error(run_llmq("synth --config llama-9b --out " + dir_ + "/x"), "unknown synth config 'llama-9b'");
  expect_one_line_error(run_llmq("inspect " + dir_ + "/missing"), dir_ + "/missing/config.json");
  EXPECT_EQ(run_llmq("frobnicate").exit_code, 2);

  const std::string model = dir_ + "/m";
  ASSERT_EQ(run_llmq("synth --config tiny --out " + model).exit_code, 0);
  {  // a config without hidden_size
    std::ifstream in(model + "/config.json");
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const auto pos = text.find("\"hidden_size\"");
    ASSERT_NE(pos, std::string::npos);
    text.replace(pos, 13, "\"hidden_sizx\"");
    std::ofstream(model + "/config.json") << text;
  }
  expect_one_line_error(run_llmq("inspect " + model), "hidden_size");

  const std::string model2 = dir_ + "/m2";
  ASSERT_EQ(run_llmq("synth --config tiny --out " + model2).exit_code, 0);
  std::string shard;
  for (const auto& e : fs::directory_iterator(model2))
    if (e.path().filename().string().rfind("model-00001-of-", 0) == 0) shard = e.path().string();
  ASSERT_FALSE(shard.empty());
  fs::resize_file(shard, fs::file_size(shard) - 100);  // truncated shard
  expect_one_line_error(run_llmq("inspect " + model2), fs::path(shard).filename().string());
}

// The shard holding `tensor` and its first element's byte offset in that file.
std::pair<std::string, uint64_t> locate_tensor(const std::string& model, const std::string& tensor) {
  for (const auto& e : fs::directory_iterator(model)) {
    if (e.path().extension() != ".safetensors") continue;
    std::ifstream in(e.path(), std::ios::binary);
    uint64_t header_len = 0;
    in.read(reinterpret_cast<char*>(&header_len), 8);
    std::string header(header_len, '\0');
    in.read(header.data(), static_cast<std::streamsize>(header_len));
    const auto j = nlohmann::json::parse(header);
    if (j.contains(tensor)) return {e.path().string(), 8 + header_len + j[tensor]["data_offsets"][0].get<uint64_t>()};
  }
  return {"", 0};
}

TEST_F(Cli, CalibrateAndQuantizeFromTheCommandLine) {
  const std::string model = dir_ + "/m", calib = dir_ + "/calib.safetensors", out = dir_ + "/q";
  const std::string text = std::string(LLMQ_SOURCE_DIR) + "/examples/demo_text.txt";
  ASSERT_EQ(run_llmq("synth --config tiny --seed 1 --out " + model).exit_code, 0);
  RunResult r = run_llmq("calibrate --model " + model + " --dataset " + text + " --samples 4 --seq-len 64 --out " + calib);
  ASSERT_EQ(r.exit_code, 0) << r.out;
  r = run_llmq("quantize --model " + model + " --method gptq --calib " + calib + " --out " + out);
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_TRUE(fs::exists(out + "/config.json"));
  EXPECT_TRUE(fs::exists(out + "/llmq_report.json"));
  for (const auto& e : fs::directory_iterator(dir_))  // no staging directory left behind
    EXPECT_TRUE(e.path() == model || e.path() == calib || e.path() == out) << e.path();

  expect_one_line_error(run_llmq("quantize --model " + model + " --method gptq --calib " + calib + " --out " + out),
                        "--force");
  expect_one_line_error(run_llmq("quantize --model " + model + " --method int3 --out " + dir_ + "/x"),
                        "unknown method 'int3'");
  expect_one_line_error(run_llmq("quantize --model " + model + " --method awq --out " + dir_ + "/x"),
                        "needs calibration");
  expect_one_line_error(run_llmq("quantize --model " + model + " --method gptq --act-order --format compressed-tensors "
                                 "--calib " + calib + " --out " + dir_ + "/x"),
                        "--format gptq");
  expect_one_line_error(run_llmq("quantize --model " + out + " --method fp8 --out " + dir_ + "/x"),
                        "already quantized");

  // Statistics of another model are refused.
  const std::string other = dir_ + "/other";
  ASSERT_EQ(run_llmq("synth --config tiny --seed 2 --out " + other).exit_code, 0);
  expect_one_line_error(run_llmq("quantize --model " + other + " --method gptq --calib " + calib + " --out " + dir_ + "/x"),
                        "another model");

  // A NaN weight: refused, naming the shard and the tensor.
  const std::string tensor = "model.layers.1.mlp.down_proj.weight";
  const auto [shard, offset] = locate_tensor(other, tensor);
  ASSERT_FALSE(shard.empty());
  {
    std::fstream f(shard, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(offset + 2 * 5));
    const char bf16_nan[2] = {static_cast<char>(0xc0), 0x7f};
    f.write(bf16_nan, 2);
  }
  r = run_llmq("quantize --model " + other + " --method rtn-int8 --out " + dir_ + "/x");
  expect_one_line_error(r, fs::path(shard).filename().string());
  EXPECT_NE(r.out.find(tensor), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("NaN at element 5"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(dir_ + "/x"));
}

// Sets an environment variable for the children run_llmq starts, restoring it on scope exit.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) {
      had_ = true;
      old_ = old;
    }
    setenv(name, value, 1);
  }
  ~ScopedEnv() {
    if (had_) {
      setenv(name_.c_str(), old_.c_str(), 1);
    } else {
      unsetenv(name_.c_str());
    }
  }

 private:
  std::string name_, old_;
  bool had_ = false;
};

TEST_F(Cli, CalibrateDeviceOption) {
  const std::string model = dir_ + "/m", calib = dir_ + "/calib.safetensors";
  const std::string text = std::string(LLMQ_SOURCE_DIR) + "/examples/demo_text.txt";
  ASSERT_EQ(run_llmq("synth --config tiny --seed 1 --out " + model).exit_code, 0);
  const std::string args = "calibrate --model " + model + " --dataset " + text + " --samples 2 --seq-len 32 --out " + calib;
  RunResult r = run_llmq("calibrate --help");
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("--device"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("auto"), std::string::npos) << r.out;

  expect_one_line_error(run_llmq(args + " --device bogus"), "--device must be cpu, gpu or auto, not 'bogus'");
  EXPECT_FALSE(fs::exists(calib));

  const ScopedEnv hide("CUDA_VISIBLE_DEVICES", "");  // no GPU for the children, CUDA build or not
  expect_one_line_error(run_llmq(args + " --device gpu"), "--device gpu: ");
  EXPECT_FALSE(fs::exists(calib));
  r = run_llmq(args);  // auto without a GPU: the CPU path, and the summary says so
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find(" on cpu"), std::string::npos) << r.out;
  EXPECT_TRUE(fs::exists(calib));
}

}  // namespace
