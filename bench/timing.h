// bench/timing.h — how the GPU benchmarks time device work: CUDA events around blocks of calls.
#pragma once

#include <algorithm>
#include <functional>
#include <vector>

#include "engine/cuda/runtime.h"

namespace subliminal::bench {

// The middle of a set of measurements (the upper one of an even count).
inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Median over `blocks` blocks of `reps` calls, in microseconds per call, after `warmup` calls
// (plans, autotuning, cuDNN graph builds, first-touch of memory).
inline double time_us(const std::function<void()>& call, int reps = 50, int blocks = 7, int warmup = 10) {
  for (int i = 0; i < warmup; ++i) call();
  cuda::EventTimer timer;
  std::vector<double> per_call;
  for (int b = 0; b < blocks; ++b) {
    timer.start();
    for (int i = 0; i < reps; ++i) call();
    timer.stop();
    per_call.push_back(1e6 * timer.seconds() / reps);
  }
  return median(per_call);
}

}  // namespace subliminal::bench
