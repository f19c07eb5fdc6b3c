// ops/cuda/batch_cuda.h — CUDA backend of ops/batch.h. `step` is a device pointer read by
// the kernels, so a captured graph gathers the right batch on every replay.
#pragma once

#include <cstdint>

namespace subliminal::cuda {

void gather_batch(const uint8_t* images, const uint8_t* labels, const int32_t* order, const int64_t* step,
                  int64_t stride, int64_t models, int64_t batch, int64_t pixels, int64_t samples, float* x,
                  int32_t* y);
void noise_batch(uint64_t seed, uint64_t stream, const int32_t* order, const int64_t* step, int64_t stride,
                 int64_t first_image, int64_t models, int64_t sources, int64_t batch, int64_t pixels,
                 int64_t samples, bool gaussian, float* x);

}  // namespace subliminal::cuda
