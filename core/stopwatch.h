// Wall-clock seconds for the stage timings in reports and progress lines.
#pragma once

#include <chrono>

namespace llmq {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

}  // namespace llmq
