// Always-on invariant checks. A failing LLMQ_CHECK is a bug in llmq, never bad input:
// input validation returns a Status (core/status.h).
#pragma once

#include <sstream>
#include <string>

namespace llmq::detail {
[[noreturn]] void check_failed(const char* file, int line, const char* condition,
                               const std::string& message);
}  // namespace llmq::detail

// LLMQ_CHECK(cond) or LLMQ_CHECK(cond, "message " << value).
#define LLMQ_CHECK(cond, ...)                                                  \
  do {                                                                         \
    if (!(cond)) {                                                             \
      std::ostringstream llmq_check_msg_;                                      \
      llmq_check_msg_ << "" __VA_ARGS__;                                       \
      ::llmq::detail::check_failed(__FILE__, __LINE__, #cond,                  \
                                   llmq_check_msg_.str());                     \
    }                                                                          \
  } while (0)
