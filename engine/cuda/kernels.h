// engine/cuda/kernels.h — CUDA halves of engine/kernels.h. Host-callable; every launch goes
// on the runtime's stream and is checked. Pointers are device pointers unless named host_.
#pragma once

#include <cstddef>
#include <cstdint>

#include "engine/dtype.h"

namespace subliminal::cuda {

// p[0..n) = value, converted to dtype.
void fill(void* p, DType dtype, int64_t n, double value);
// dst[0..n) += alpha · src[0..n), float32.
void add_into(float* dst, const float* src, int64_t n, float alpha);
// sum[n] += weight · values[n] for n < count; a NaN/Inf value lowers *first_bad to *step.
void accumulate_and_watch(float* sum, const float* values, int64_t count, float weight, const int64_t* step,
                          int64_t* first_bad);
// Number of NaN/Inf values among p[0..n) (synchronises to read the count).
int64_t count_nonfinite(const float* p, int64_t n);
// counters[k][0] += 1 for the non-null entries, in one launch on the stream, so a captured
// graph advances them on every replay.
void increment(int64_t* const counters[4]);
// Byte copies queued on the stream: device->device returns at once; any copy that
// touches host memory waits for the stream so the host side is safe to use.
void copy_device_to_device(void* dst, const void* src, size_t bytes);
void copy_host_to_device(void* dst, const void* host_src, size_t bytes);
void copy_device_to_host(void* host_dst, const void* src, size_t bytes);
// Waits for everything queued on the stream.
void synchronize();

}  // namespace subliminal::cuda
