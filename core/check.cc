#include "core/check.h"

#include <cstdio>
#include <cstdlib>

namespace llmq::detail {

void check_failed(const char* file, int line, const char* condition, const std::string& message) {
  std::fprintf(stderr, "llmq: internal error at %s:%d: check failed: %s%s%s\n", file, line,
               condition, message.empty() ? "" : ": ", message.c_str());
  std::abort();
}

}  // namespace llmq::detail
