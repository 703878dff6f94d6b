// Progress reporter; see progress.h.
#include "core/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <utility>

namespace llmq {

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const int64_t s = static_cast<int64_t>(std::llround(seconds));
  char buf[48];
  if (s >= 3600)
    std::snprintf(buf, sizeof(buf), "%lld:%02lld:%02lld", static_cast<long long>(s / 3600),
                  static_cast<long long>(s / 60 % 60), static_cast<long long>(s % 60));
  else
    std::snprintf(buf, sizeof(buf), "%lld:%02lld", static_cast<long long>(s / 60), static_cast<long long>(s % 60));
  return buf;
}

Progress::Progress(std::string label, int64_t total, std::string unit, std::FILE* out)
    : label_(std::move(label)), total_(total), unit_(std::move(unit)), out_(out),
      tty_(out != nullptr && ::isatty(::fileno(out)) == 1), start_(Clock::now()) {
  if (!tty_) last_draw_s_ = 0;  // logs: the first line after one interval, so short runs print one line
  draw(false);
}

// Destroyed before the loop completed: the command is failing, and its one-line error should
// stand alone. A TTY line is ended; a log gets nothing more.
Progress::~Progress() {
  if (finished_) return;
  if (total_ <= 0 || done_ >= total_) {
    finish();
  } else if (tty_ && out_ != nullptr && last_width_ > 0) {
    std::fputc('\n', out_);
    std::fflush(out_);
  }
}

void Progress::set_label(std::string label) { label_ = std::move(label); }

double Progress::elapsed_s() const {
  return seconds_since(start_);
}

void Progress::update(int64_t done) {
  if (finished_) return;
  done_ = done;
  draw(false);
}

void Progress::finish() {
  if (finished_) return;
  draw(true);
  finished_ = true;
}

std::string Progress::line() const {
  const double t = elapsed_s();
  std::string s = label_;
  const std::string unit = unit_.empty() ? "" : " " + unit_;
  s += "  " + std::to_string(done_);
  if (total_ > 0) s += "/" + std::to_string(total_);
  s += unit;
  if (t > 0 && done_ > 0) {
    const double rate = static_cast<double>(done_) / t;
    char buf[64];
    // Slow loops (one layer of a big model) read better as seconds per item.
    if (rate >= 1.0)
      std::snprintf(buf, sizeof(buf), "  %.2f%s/s", rate, unit_.empty() ? "" : (" " + unit_).c_str());
    else
      std::snprintf(buf, sizeof(buf), "  %.1f s each", 1.0 / rate);
    s += buf;
    if (total_ > 0 && done_ < total_) s += "  ETA " + format_duration(static_cast<double>(total_ - done_) / rate);
  }
  s += "  elapsed " + format_duration(t);
  return s;
}

void Progress::draw(bool final_line) {
  if (out_ == nullptr) return;
  const double t = elapsed_s();
  if (tty_) {
    if (!final_line && t - last_draw_s_ < kTtyIntervalS) return;
    std::string s;
    if (total_ > 0) {
      constexpr int kBar = 24;
      const int fill = static_cast<int>(std::clamp<double>(static_cast<double>(done_) / total_, 0.0, 1.0) * kBar);
      s = "[" + std::string(fill, '#') + std::string(kBar - fill, '.') + "] ";
    }
    s += line();
    const size_t width = s.size();
    if (width < last_width_) s += std::string(last_width_ - width, ' ');  // blank a longer old line
    last_width_ = width;
    std::fprintf(out_, "\r%s%s", s.c_str(), final_line ? "\n" : "");
  } else {
    if (!final_line && t - last_draw_s_ < kLogIntervalS) return;
    if (final_line && done_ == last_logged_done_) return;  // already the last line printed
    std::fprintf(out_, "%s\n", line().c_str());
    last_logged_done_ = done_;
  }
  std::fflush(out_);
  last_draw_s_ = t;
}

}  // namespace llmq
