// apps/subliminal/progress.cpp — the bar: "[Teacher] ███████░░░░░  712/1175 steps  3.1 s, ~2.0 s left".
#include "apps/subliminal/progress.h"

#include <unistd.h>

#include <cstdio>

#include "apps/subliminal/interrupt.h"

namespace subliminal::app {

ProgressBar::ProgressBar(bool enabled, std::FILE* out) : out_(out), active_(enabled && isatty(fileno(out))) {}

void ProgressBar::begin(const std::string& label, int64_t total_steps) {
  label_ = label;
  total_ = total_steps;
  done_ = 0;
  started_ = last_draw_ = std::chrono::steady_clock::now();
  if (active_) draw();
}

void ProgressBar::advance() {
  ++done_;
  if (!active_) return;
  auto now = std::chrono::steady_clock::now();
  if (done_ == total_ || now - last_draw_ > std::chrono::milliseconds(100)) {
    last_draw_ = now;
    draw();
  }
}

void ProgressBar::clear() {
  if (!on_screen_) return;
  std::fprintf(out_, "\r\033[K");
  std::fflush(out_);
  on_screen_ = false;
  note_progress_bar_on_screen(false);
}

std::string progress_times(double elapsed_seconds, int64_t done, int64_t total) {
  char text[64];
  if (done <= 0 || done >= total || !(elapsed_seconds > 0)) {
    std::snprintf(text, sizeof text, "%.1f s", elapsed_seconds);
  } else {
    const double left = elapsed_seconds / double(done) * double(total - done);
    std::snprintf(text, sizeof text, "%.1f s, ~%.1f s left", elapsed_seconds, left);
  }
  return text;
}

void ProgressBar::draw() {
  constexpr int kWidth = 30;
  const int filled = total_ > 0 ? int(kWidth * done_ / total_) : kWidth;
  std::string bar;
  for (int i = 0; i < kWidth; ++i) bar += i < filled ? "\u2588" : "\u2591";
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
  note_progress_bar_on_screen(true);  // before it is drawn: a signal's message erases it first (interrupt.h)
  std::fprintf(out_, "\r\033[K[%s] %s %lld/%lld steps  %s", label_.c_str(), bar.c_str(), (long long)done_,
               (long long)total_, progress_times(elapsed, done_, total_).c_str());
  std::fflush(out_);
  on_screen_ = true;
}

}  // namespace subliminal::app
