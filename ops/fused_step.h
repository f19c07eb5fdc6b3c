// ops/fused_step.h — a training step's forward pass, loss and gradients as one op.
//
// The same computation as
//     zero_grad(params); loss = cross_entropy(mlp_forward(x, params), y, classes); loss.backward();
// (or the distillation loss against frozen teachers), with the gradients left in the
// parameters' gradient buffers for Adam. On the GPU, for MLPs of 2 or 3 layers in float32, it
// is one persistent kernel with grid-wide barriers between the layers (ops/cuda/fused_step.cu):
// no autograd tape, no per-layer launches. Anywhere else it runs exactly the lines above.
#pragma once

#include "engine/nn.h"
#include "engine/tensor.h"
#include "ops/slice.h"

namespace subliminal {

// True when fused_*_step runs as the single GPU kernel for these parameters.
bool fused_step_on_gpu(const MlpParams& params);

// x [N, B, inputs], labels [N, B] (class index within `classes`). Writes params' gradients;
// returns the per-model mean cross-entropy [N] (no autograd graph).
Tensor fused_cross_entropy_step(const Tensor& x, const Tensor& labels, const MlpParams& params,
                                ColumnRange classes);

// x [S, B, inputs] for S students; teacher m (of N = teachers.models()) reads x[m] and student s
// learns from teacher s mod N, T²·KL(softmax(t/T) ‖ softmax(s/T)) over `cols`, batch mean, as
// distill_kl. Writes the students' gradients; returns their losses [S].
Tensor fused_distill_step(const Tensor& x, const MlpParams& students, const MlpParams& teachers, ColumnRange cols,
                          double temperature);

}  // namespace subliminal
