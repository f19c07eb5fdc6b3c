// ops/elementwise.h — differentiable elementwise ops.
#pragma once

#include "engine/tensor.h"

namespace subliminal {

// y = x <= 0 ? 0 : x (a NaN stays NaN, as torch.relu), any shape.
// Backward: dx = y <= 0 ? 0 : dy (relu'(0) = 0 and a NaN passes: PyTorch's threshold_backward).
Tensor relu(const Tensor& x);

// y = s · x, any shape. Backward: dx = s · dy.
Tensor scale(const Tensor& x, double s);

}  // namespace subliminal
