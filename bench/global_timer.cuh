// bench/global_timer.cuh — the GPU's global nanosecond timer, read from device code (the
// benchmarks' kernels time themselves with it; bench_latency measures its step).
#pragma once

namespace subliminal::bench {

__device__ inline unsigned long long global_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

}  // namespace subliminal::bench
