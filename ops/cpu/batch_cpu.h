// ops/cpu/batch_cpu.h — CPU backend of ops/batch.h (host pointers; shapes there).
#pragma once

#include <cstdint>

namespace subliminal::cpu {

void gather_batch(const uint8_t* images, const uint8_t* labels, const int32_t* order, int64_t first,
                  int64_t models, int64_t batch, int64_t pixels, int64_t samples, float* x, int32_t* y);
// Model n of x draws from noise source n mod `sources` (its key and its row of `order`).
void noise_batch(uint64_t seed, uint64_t stream, const int32_t* order, int64_t first, int64_t models,
                 int64_t sources, int64_t batch, int64_t pixels, int64_t samples, bool gaussian, float* x);

// The two noise distributions from raw Philox words (shared with the CUDA kernels' formulas).
inline float uniform_pixel(uint32_t w) { return (float(w >> 8) * (1.0f / 16777216.0f)) * 2.0f - 1.0f; }
// Box–Muller: u1 ∈ (0, 1] from the first word keeps the log finite, u2 ∈ [0, 1) the angle.
void gaussian_pair(uint32_t w1, uint32_t w2, float out[2]);

}  // namespace subliminal::cpu
