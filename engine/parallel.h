// engine/parallel.h — the CPU backend's threads: the GEMMs and the loops between them on
// every core.
//
// parallel_for splits a loop into contiguous ranges, one per thread of a small pool, and
// returns when all are done. The CPU GEMMs run on it as slabs of single-threaded OpenBLAS calls
// (ops/cpu/gemm_cpu.cpp), and so do the loops between them — Adam over the arena, the GEMM
// epilogues, the noise — which would otherwise run on the calling thread alone while the other
// cores waited for the next GEMM.
//
// The elementwise loops give the same bits for any number of threads: a range runs exactly the
// code the whole loop would (each element is computed alone, with no sum across the split), and
// the workers take the caller's floating-point control word (its flush-to-zero setting,
// engine/device.h). The GEMMs do not: their slabs follow the thread count (gemm_plan).
//
//   parallel_for(n, grain, [&](int64_t begin, int64_t end) { for (i = begin; i < end; ++i) … });
//
// grain: the fewest elements worth a thread (waking one costs microseconds). A parallel_for
// inside another, or from a second thread while one runs, runs its loop on the caller.
#pragma once

#include <cstdint>

namespace subliminal {

// The cores this process may run on: its CPU affinity (taskset, a container's cpuset), else
// the hardware's threads. A pool larger than this would only take turns on the same cores.
int usable_cpu_cores();

// How many threads parallel_for uses, the caller included (≥ 1; 1: no pool). The default is
// usable_cpu_cores(); the app sets it with its --threads. cpu_threads() takes no lock, so
// it may be asked inside a parallel_for body.
void set_cpu_threads(int threads);
int cpu_threads();

// A loop over fewer elements than this (of simple arithmetic: a few µs) runs on the caller
// alone; waking a thread would cost about as much as it saves.
inline constexpr int64_t kMinParallelElements = 32768;

// The grain for a loop over items (rows, images) of `elements_per_item` such elements each.
inline int64_t items_per_thread(int64_t elements_per_item) {
  if (elements_per_item >= kMinParallelElements) return 1;
  return kMinParallelElements / (elements_per_item > 0 ? elements_per_item : 1);
}

namespace detail {
using RangeBody = void (*)(const void* body, int64_t begin, int64_t end);
void run_parallel(int64_t n, int64_t grain, const void* body, RangeBody call);
}  // namespace detail

template <class Body>
void parallel_for(int64_t n, int64_t grain, const Body& body) {
  detail::run_parallel(n, grain, &body, [](const void* b, int64_t begin, int64_t end) {
    (*static_cast<const Body*>(b))(begin, end);
  });
}

}  // namespace subliminal
