// ops/fused_step.h — a training step's forward pass, loss and gradients as one op.
//
// The same computation as
//     zero_grad(params); loss = cross_entropy(mlp_forward(x, params), y, classes); loss.backward();
// (or the distillation loss against frozen teachers), with the gradients left in the
// parameters' gradient buffers — and optionally the rest of the step (StepTail: Adam, the
// running loss sums, the step counters). On the GPU, for MLPs of 2 or 3 layers in float32, it
// runs as the chosen FusedStepDesign (below): by default one persistent kernel with grid-wide
// barriers between the layers (ops/cuda/fused_step.cu), or the batch's row blocks in
// thread-block clusters, two kernels (ops/cuda/cluster_step.cu) — no autograd tape, no
// per-layer launches. Anywhere else it runs exactly the lines above.
#pragma once

#include <vector>

#include "engine/adam.h"
#include "engine/nn.h"
#include "engine/tensor.h"
#include "ops/divergence.h"
#include "ops/slice.h"

namespace subliminal {

// The layers the GPU's fused-step kernels train: 2 to 3 (one or two hidden layers). A deeper MLP
// takes the autograd tape.
inline constexpr int kFusedStepMinLayers = 2, kFusedStepMaxLayers = 3;

// True when fused_*_step runs as a GPU kernel (of the design below) for these parameters.
bool fused_step_on_gpu(const MlpParams& params);

// Which GPU kernels a fused step runs (anywhere else it is the autograd composition either way):
//   grid     one persistent cooperative kernel, each layer a grid-wide GEMM phase between grid
//            barriers (ops/cuda/fused_step.cu): the default
//   cluster  the batch in row blocks, each row block's whole forward and backward in one
//            thread-block cluster, then a kernel that sums the row blocks' gradients and does
//            the tail (ops/cuda/cluster_step.cu); needs compute capability 9.0
// Both compute the same step to float32 rounding; each gives the same bits on every run.
enum class FusedStepDesign { grid, cluster };
void set_fused_step_design(FusedStepDesign design);
FusedStepDesign fused_step_design();

// What a training loop does after a step's gradients (each part optional):
//   adam->step()                                                    when adam is set
//   accumulate_and_watch(loss_sum, loss, loss_weight, step, first_bad)   when loss_sum is defined
//   increment(counters)                                             (engine/kernels.h)
// Handed to a fused step, the GPU kernel does all of it itself (no kernels of their own);
// anywhere else run_step_tail makes exactly these calls. Adam must update the stepped
// parameters' own arenas.
struct StepTail {
  Adam* adam = nullptr;
  Tensor loss_sum, step, first_bad;
  double loss_weight = 1.0;
  std::vector<Tensor> counters;  // at most 4
};

// The calls above, for a step that has its per-model losses in `loss`.
void run_step_tail(const StepTail& tail, const Tensor& loss);

// x [N, B, inputs], labels [N, B] (class index within `classes`). Writes params' gradients;
// returns the per-model mean cross-entropy [N] (no autograd graph); then does `tail`.
// loss_out: where the losses land, and what is returned — [N], the parameters' dtype and
// device, not overlapping the tail's loss sums — or undefined for a fresh tensor. (A training
// loop passes one that outlives the step: on the GPU the step then allocates nothing, and a
// CUDA graph of it holds no memory nodes.)
Tensor fused_cross_entropy_step(const Tensor& x, const Tensor& labels, const MlpParams& params,
                                ColumnRange classes, const StepTail& tail = {},
                                const Tensor& loss_out = Tensor());

// x [S, B, inputs] for S students; teacher m (of N = teachers.models()) reads x[m] and student s
// learns from teacher s mod N, T²·D(softmax(t/T), softmax(s/T)) over `cols` (D: KL or JS,
// ops/divergence.h), batch mean, as ops/loss.h's distill. Student s reads x[s] but its teacher's logits come
// from x[s mod N], so a caller tiles its inputs, x[s] = x[s mod N], as the app does (each arm's students see
// their teachers' noise); with other inputs a student would learn the answers to other images. Writes the
// students' gradients; returns their losses [S] (in loss_out, as above); then does `tail`.
Tensor fused_distill_step(const Tensor& x, const MlpParams& students, const MlpParams& teachers,
                          ColumnRange cols, double temperature, Divergence divergence,
                          const StepTail& tail = {}, const Tensor& loss_out = Tensor());

}  // namespace subliminal
