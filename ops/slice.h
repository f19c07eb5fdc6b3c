// ops/slice.h — a range of columns (the last dimension) as a new tensor.
#pragma once

#include <cstdint>

#include "engine/tensor.h"

namespace subliminal {

// A half-open range [begin, end) of the last dimension: the class logits are {0, 10},
// the ghost logits {10, 13}.
struct ColumnRange {
  int64_t begin = 0, end = 0;
  int64_t width() const { return end - begin; }
};

// Checks 0 ≤ begin < end ≤ columns; throws ShapeError naming `op` otherwise.
void check_columns(const char* op, ColumnRange cols, int64_t columns);

// y[..., j] = x[..., begin + j]; x has rank ≥ 1. Backward scatters dy into those columns
// (zeros elsewhere). Copies: tensors here never have strides.
Tensor slice_columns(const Tensor& x, ColumnRange cols);

}  // namespace subliminal
