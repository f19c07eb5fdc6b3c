// ops/softmax.h — softmax and log-softmax over the last dimension.
#pragma once

#include "engine/tensor.h"

namespace subliminal {

// y = exp(x − logsumexp(x)) along the last dimension. Backward: dx = y ⊙ (dy − Σ dy⊙y).
Tensor softmax(const Tensor& x);
// y = x − logsumexp(x) along the last dimension. Backward: dx = dy − softmax(x)·Σ dy.
Tensor log_softmax(const Tensor& x);

}  // namespace subliminal
