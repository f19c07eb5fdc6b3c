// apps/subliminal/progress.h — a one-line progress bar on stderr, only when stderr is a
// terminal (logs and pipes stay clean):
//   [Teacher] ███████░░░░░  712/1175 steps  3.1 s, ~2.0 s left
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace subliminal::app {

// The bar's times: "3.1 s" elapsed, and while steps remain, at the pace so far, "…, ~2.0 s left".
std::string progress_times(double elapsed_seconds, int64_t done, int64_t total);

class ProgressBar {
 public:
  // Draws when enabled and `out` is a terminal.
  explicit ProgressBar(bool enabled, std::FILE* out = stderr);
  // Erases a bar still on screen: when an error ends the run mid-epoch, its message starts
  // on a clean line.
  ~ProgressBar() { clear(); }
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  void begin(const std::string& label, int64_t total_steps);
  void advance();  // one step done; redraws at most every 100 ms
  void clear();    // erases the bar's line if it is drawn (before printing a result line)
  bool active() const { return active_; }

 private:
  void draw();
  std::FILE* out_;
  bool active_;
  bool on_screen_ = false;
  std::string label_;
  int64_t done_ = 0, total_ = 0;
  std::chrono::steady_clock::time_point started_, last_draw_;
};

}  // namespace subliminal::app
