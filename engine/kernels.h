// engine/kernels.h — the few elementwise primitives the engine itself needs
// (factories, copies, gradient accumulation). Each dispatches on the tensor's device to a
// CPU loop or a CUDA kernel (engine/cuda/kernels.cu). Everything a model computes with
// lives in ops/ instead.
#pragma once

#include <vector>

#include "engine/tensor.h"

namespace subliminal {

// t[...] = value, for any dtype.
void fill(const Tensor& t, double value);

// dst[...] += alpha · src[...]; same shape, floating dtype, same device.
void add_into(const Tensor& dst, const Tensor& src, double alpha = 1.0);

// dst[...] = src[...]; same numel and dtype; devices may differ (a copy that touches host
// memory goes through the run's stream and has finished when this returns; device to device
// is only queued on it).
void copy_into(const Tensor& dst, const Tensor& src);

// Running per-model loss sums with a watch for numerical faults, all on the device:
//   sum[n] += weight · values[n];  if values[n] is NaN/Inf: first_bad = min(first_bad, *step)
// values, sum: [N] floating (float32 on the GPU); step, first_bad: int64 [1] (first_bad starts
// above any step).
void accumulate_and_watch(const Tensor& sum, const Tensor& values, double weight, const Tensor& step,
                          const Tensor& first_bad);
// What accumulate_and_watch requires of its sums, step and marker (a ShapeError naming
// `op` otherwise) — for callers that do the same work elsewhere (ops/fused_step.h).
void check_loss_watch(const char* op, const Tensor& sum, const Tensor& step, const Tensor& first_bad);

// Number of NaN/Inf elements of a floating tensor (synchronises).
int64_t count_nonfinite(const Tensor& t);

// counter[0] += 1 for each int64 one-element tensor (at most 4, one launch) — device-resident
// step counters that CUDA-graph replays advance without the host.
void increment(const std::vector<Tensor>& counters);
// What increment requires of its counters (a ShapeError naming `op` otherwise).
void check_counters(const char* op, const std::vector<Tensor>& counters);
inline void increment(const Tensor& counter) { increment(std::vector<Tensor>{counter}); }

}  // namespace subliminal
