// A small progress reporter for long loops (calibration layers, quantization, eval):
// "label  done/total  rate  ETA". On a TTY one line is redrawn in place with '\r' (at most
// ten times a second); otherwise (logs, CI, pipes) a plain line is printed at most every
// kLogIntervalS seconds plus a final one, so logs stay short. Writes to stderr by default;
// stdout stays free for results.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

#include "core/stopwatch.h"

namespace llmq {

class Progress {
 public:
  // total <= 0: unknown total (no bar, no ETA). unit names what is counted, e.g. "layers".
  Progress(std::string label, int64_t total, std::string unit = "", std::FILE* out = stderr);
  ~Progress();  // finish() if complete; an abandoned (failing) loop prints no final state
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  void set_label(std::string label);
  void update(int64_t done);  // absolute count
  void advance(int64_t n = 1) { update(done_ + n); }
  void finish();  // prints the final state and a newline; idempotent

  // The status text without bar or '\r', e.g. "layer 3  12/32 layers  1.50 layers/s  ETA 0:14".
  std::string line() const;

  static constexpr double kTtyIntervalS = 0.1;
  static constexpr double kLogIntervalS = 10.0;

 private:
  void draw(bool final_line);
  double elapsed_s() const;

  std::string label_;
  int64_t total_ = 0;
  std::string unit_;
  std::FILE* out_ = nullptr;
  bool tty_ = false;
  bool finished_ = false;
  int64_t done_ = 0;
  Clock::time_point start_;
  double last_draw_s_ = -1e30;
  size_t last_width_ = 0;  // length of the last TTY line, to blank leftovers
  int64_t last_logged_done_ = -1;  // non-TTY: the count of the last printed line
};

// "1:05:03" / "4:07" for a duration in seconds.
std::string format_duration(double seconds);

}  // namespace llmq
