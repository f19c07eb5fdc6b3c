// ops/linear.h — a differentiable Linear layer, optionally with its ReLU fused.
#pragma once

#include "engine/tensor.h"
#include "ops/gemm.h"

namespace subliminal {

// y[N,B,O] = act(x[N,B,I] · w[N,O,I]ᵀ + b[N,O]) — torch.nn.Linear per model (b may be
// undefined). With act = relu the GEMM's epilogue applies the ReLU and keeps its bit-mask
// for backward, so no separate ReLU op or saved pre-activation is needed.
// Backward: dz = dy ⊙ mask; dx = dz·w; dw = dzᵀ·x; db = Σ_b dz.
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b,
              gemm::Activation act = gemm::Activation::none);

}  // namespace subliminal
