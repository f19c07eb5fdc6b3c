// engine/cuda/adam.h — the single Adam kernel over a flat parameter arena.
#pragma once

#include <cstdint>

#include "engine/adam.h"

namespace subliminal::cuda {

// p, g, m, v are (n,) float32 on the device; *t (device) is the step number after this
// update, read by the kernel so graph replays see the current step.
void adam_update(float* p, const float* g, float* m, float* v, int64_t n, const int64_t* t,
                 const AdamOptions& options);

}  // namespace subliminal::cuda
