// engine/adam.h — Adam with torch.optim.Adam's formula (no amsgrad, not maximize).
//
// Per parameter p with gradient g, step t = 1, 2, ...:
//   g  ← g + weight_decay · p                       (L2 penalty, as torch's weight_decay)
//   m  ← m + (1 − β1)(g − m)                        (= β1·m + (1−β1)·g; torch writes lerp)
//   v  ← β2·v + (1 − β2)·g²
//   p  ← p − (lr / (1 − β1^t)) · m / (√v / √(1 − β2^t) + eps)
//
// The same formula, not the same float32 roundings: torch's CPU kernels round the lerp once
// (fused multiply-add) and compute p + (−step_size·m) / denom, so a parameter can differ from
// torch's by an ulp or so after a step (against PyTorch 2.15 on 4096 parameters: 354 differ
// after 50 steps, by at most 1.5e-8). Both of our updates, here and engine/cuda/step_end.cuh,
// keep the plain order — one rounding per operation, no contraction — so they round alike.
//
// Works on a flat arena (engine/nn.h): one update over every parameter of every model —
// on the GPU a single kernel. The step count t lives in a one-element tensor on the
// parameters' device, advanced by a kernel, so a captured CUDA graph replays correct
// bias corrections without the host.
#pragma once

#include "engine/tensor.h"

namespace subliminal {

struct AdamOptions {
  double lr = 3e-4;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
};

class Adam {
 public:
  // values, grads: flat parameter and gradient arenas of the same shape (MlpParams::values/grads).
  Adam(const Tensor& values, const Tensor& grads, AdamOptions options);

  // One update from the gradients now in `grads`. Call after backward(). Like PyTorch's Adam
  // over parameters that all have a .grad, it updates the whole arena: a parameter that this
  // step's backward did not reach would be moved by its previous gradient (zero_grad only marks
  // gradients empty). Every parameter of an MLP receives a gradient on every step.
  void step();
  // Steps taken so far (reads the device counter: synchronises; not for the hot loop).
  int64_t steps_taken() const;

  const AdamOptions& options() const { return options_; }
  // The arenas it updates and its device step count (int64 [1]), for a caller that does the
  // update itself (the fused training step, ops/fused_step.h) — which must then advance the count.
  const Tensor& values() const { return values_; }
  const Tensor& grads() const { return grads_; }
  const Tensor& step_count() const { return t_; }
  const Tensor& exp_avg() const { return m_; }
  const Tensor& exp_avg_sq() const { return v_; }

 private:
  Tensor values_, grads_, m_, v_;
  Tensor t_;  // int64 [1], on the parameters' device
  AdamOptions options_;
};

namespace cpu {
// The update on host arrays of n elements; t is the step number after this update (≥ 1).
template <class T>
void adam_update(T* p, const T* g, T* m, T* v, int64_t n, int64_t t, const AdamOptions& o);
}  // namespace cpu

}  // namespace subliminal
