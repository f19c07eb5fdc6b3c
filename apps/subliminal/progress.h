// apps/subliminal/progress.h — a one-line progress bar on stderr, only when stderr is a
// terminal (logs and pipes stay clean).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace subliminal::app {

class ProgressBar {
 public:
  explicit ProgressBar(bool enabled);  // enabled and stderr is a TTY
  void begin(const std::string& label, int64_t total_steps);
  void advance();  // one step done; redraws at most every 100 ms
  void clear();    // erases the line (before printing a result line)
  bool active() const { return active_; }

 private:
  void draw();
  bool active_;
  std::string label_;
  int64_t done_ = 0, total_ = 0;
  std::chrono::steady_clock::time_point started_, last_draw_;
};

}  // namespace subliminal::app
