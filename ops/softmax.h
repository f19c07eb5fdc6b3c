// ops/softmax.h — softmax and log-softmax over the last dimension.
#pragma once

#include "engine/tensor.h"

namespace subliminal {

// y = exp(x − logsumexp(x)) along the last dimension. Backward: dx = y ⊙ (dy − Σ dy⊙y),
// the Jacobian ∂y_i/∂x_j = y_i·([i = j] − y_j) applied to dy.
Tensor softmax(const Tensor& x);
// y = x − logsumexp(x) along the last dimension. Backward: dx = dy − softmax(x)·Σ dy, from
// ∂y_i/∂x_j = [i = j] − softmax_j. Both save only y (softmax(x) = exp(y) for the log form).
Tensor log_softmax(const Tensor& x);

}  // namespace subliminal
