// apps/subliminal/streams.h — the random streams of one run.
//
// Model m of a run draws everything from key seed + m (so model m of `--models N` draws the
// numbers of `--models 1 --seed seed+m`: on the CPU it is that run to the bit; on the GPU
// `--step auto` may pick another step design for N models, so only to rounding), each use on
// its own stream (engine/random.h). The
// one exception: the paper preset's cross-init students take another model's init
// (cross_init_partner, experiment.h).
#pragma once

#include <cstdint>

#include "engine/nn.h"
#include "engine/random.h"

namespace subliminal::app {

// kInitPurpose (engine/nn.h): variant 0 = the shared init, variant 1 = the cross-init control's
// (not drawn in the paper preset with ≥ 2 models, whose control takes another model's variant 0).
constexpr uint32_t kTeacherOrderPurpose = 2;  // MNIST order of teacher epoch e: stream_id(2, e)
constexpr uint32_t kNoisePurpose = 3;         // noise pixels: stream_id(3)
constexpr uint32_t kNoiseOrderPurpose =
    4;  // order of a fixed input set in distillation epoch e: stream_id(4, e)
constexpr uint32_t kPerturbPurpose = 5;  // student-init perturbation: stream_id(5, 0, tensor index)

inline RandomStream model_stream(uint64_t seed, int64_t model, uint32_t purpose, uint32_t a = 0,
                                 uint32_t b = 0) {
  return {seed + uint64_t(model), stream_id(purpose, a, b)};
}

}  // namespace subliminal::app
