// ops/metrics.h — accuracy counting, kept on the device until the caller reads it.
#pragma once

#include "engine/tensor.h"
#include "ops/slice.h"

namespace subliminal {

// counts[n] += number of samples b whose argmax over logits[n, b, classes] (first maximum
// wins, NaN counts as maximal — torch.argmax's rules) equals labels[n, b].
//   logits [N, B, C] float, labels [N, B] int32, counts [N] int64 on the same device.
// Nothing is recorded for autograd and nothing synchronises: read counts once per epoch.
void count_correct(const Tensor& logits, const Tensor& labels, ColumnRange classes, const Tensor& counts);

}  // namespace subliminal
