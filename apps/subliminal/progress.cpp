// apps/subliminal/progress.cpp — the bar: "[Teacher] ███████░░░░░  712/1175 steps  3.1 s".
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

void ProgressBar::draw() {
  constexpr int kWidth = 30;
  const int filled = total_ > 0 ? int(kWidth * done_ / total_) : kWidth;
  std::string bar;
  for (int i = 0; i < kWidth; ++i) bar += i < filled ? "\u2588" : "\u2591";
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
  note_progress_bar_on_screen(true);  // before it is drawn: a signal's message erases it first (interrupt.h)
  std::fprintf(out_, "\r\033[K[%s] %s %lld/%lld steps  %.1f s", label_.c_str(), bar.c_str(), (long long)done_,
               (long long)total_, elapsed);
  std::fflush(out_);
  on_screen_ = true;
}

}  // namespace subliminal::app
