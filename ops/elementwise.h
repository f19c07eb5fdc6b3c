// ops/elementwise.h — differentiable elementwise ops.
#pragma once

#include "engine/tensor.h"

namespace subliminal {

// y = x > 0 ? x : 0 (NaN → 0, like cuBLASLt's ReLU epilogue), any shape.
// Backward: dx = dy where y > 0, else 0 (relu'(0) = 0, PyTorch's convention).
Tensor relu(const Tensor& x);

// y = s · x, any shape. Backward: dx = s · dy.
Tensor scale(const Tensor& x, double s);

}  // namespace subliminal
