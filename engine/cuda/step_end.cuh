// engine/cuda/step_end.cuh — the per-element work at the end of a training step on the GPU:
// Adam's update of one parameter (engine/adam.h) and the running loss sum with its fault watch
// (engine/kernels.h's accumulate_and_watch). Shared by the engine's own kernels
// (engine/cuda/adam.cu, engine/cuda/kernels.cu) and the fused training step, which does this
// work itself (ops/cuda/fused_program.cuh): one definition, so both give the same bits.
//
// Adam: the scalars are computed in double as torch computes them in Python, then rounded to float;
// the element update is float with every operation rounded on its own (no FMA contraction), in
// the CPU update's order. The device's pow may differ from glibc's in the last bit of a double
// (sqrt is correctly rounded on both), which can move a float step size by one ulp: tests
// against the CPU use a tolerance.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "engine/adam.h"  // AdamOptions

namespace subliminal::cuda {

// What every element of step t (t ≥ 1, the step number after this update) shares.
struct AdamStepScalars {
  float step_size, bias_correction2_sqrt, one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay;
};

__device__ inline AdamStepScalars adam_step_scalars(const AdamOptions& o, int64_t t) {
  const double step = double(t);
  AdamStepScalars s;
  s.step_size = float(o.lr / (1.0 - pow(o.beta1, step)));
  s.bias_correction2_sqrt = float(sqrt(1.0 - pow(o.beta2, step)));
  s.one_minus_beta1 = float(1.0 - o.beta1), s.beta2 = float(o.beta2);
  s.one_minus_beta2 = float(1.0 - o.beta2), s.eps = float(o.eps), s.weight_decay = float(o.weight_decay);
  return s;
}

// One parameter p with gradient g and moments m, v (updated in place).
__device__ inline void adam_element(float& p, float g, float& m, float& v, const AdamStepScalars& s) {
  const float grad = s.weight_decay != 0.0f ? __fadd_rn(g, __fmul_rn(s.weight_decay, p)) : g;
  m = __fadd_rn(m, __fmul_rn(s.one_minus_beta1, __fsub_rn(grad, m)));
  v = __fadd_rn(__fmul_rn(s.beta2, v), __fmul_rn(__fmul_rn(s.one_minus_beta2, grad), grad));
  const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), s.bias_correction2_sqrt), s.eps);
  p = __fsub_rn(p, __fmul_rn(s.step_size, __fdiv_rn(m, denom)));
}

// One model's loss joins its running sum (the product and the sum rounded separately, as on the
// CPU); a NaN/Inf loss marks the step: first_bad = min(first_bad, step).
__device__ inline void accumulate_loss(float* sum, float loss, float weight, int64_t step, int64_t* first_bad) {
  *sum = __fadd_rn(*sum, __fmul_rn(weight, loss));
  if (!isfinite(loss))  // steps are ≥ 0 and first_bad starts large and positive: unsigned min = signed min
    atomicMin(reinterpret_cast<unsigned long long*>(first_bad), static_cast<unsigned long long>(step));
}

}  // namespace subliminal::cuda
