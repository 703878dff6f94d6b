// Running the llmq binary from a test: its exit code and output, and the one-line error
// contract (exit code 2, one line starting "llmq: ", naming what it is about).
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <string>

namespace llmq::testing {

struct RunResult {
  int exit_code = -1;
  std::string out;  // stdout and stderr together
};

inline RunResult run_llmq(const std::string& args) {
  const std::string cmd = std::string(LLMQ_BINARY_DIR) + "/bin/llmq " + args + " 2>&1";
  RunResult r;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int status = pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

inline void expect_one_line_error(const RunResult& r, const std::string& must_contain) {
  EXPECT_EQ(r.exit_code, 2) << r.out;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
  EXPECT_EQ(r.out.rfind("llmq: ", 0), 0u) << r.out;
  EXPECT_NE(r.out.find(must_contain), std::string::npos) << "expected '" << must_contain << "' in: " << r.out;
}

}  // namespace llmq::testing
