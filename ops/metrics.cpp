// ops/metrics.cpp — shape checks and dispatch for count_correct.
#include "ops/metrics.h"

#include "engine/dispatch.h"
#include "ops/cpu/kernels_cpu.h"

#ifdef SUBLIMINAL_HAS_CUDA
#include "ops/cuda/kernels_cuda.h"
#endif

namespace subliminal {

void count_correct(const Tensor& logits, const Tensor& labels, ColumnRange classes, const Tensor& counts) {
  const char* op = "count_correct";
  check_rank(op, logits, 3, "the logits");
  const int64_t N = logits.dim(0), B = logits.dim(1), C = logits.dim(2);
  check_columns(op, classes, C);
  check_dtype(op, labels, DType::i32, "the labels");
  check_dtype(op, counts, DType::i64, "the counts");
  check_same_device(op, logits, labels);
  check_same_device(op, logits, counts);
  if (labels.shape() != Shape{N, B} || counts.shape() != Shape{N})
    throw ShapeError(std::string(op) + ": labels " + labels.describe() + " / counts " + counts.describe() +
                     " do not match logits " + logits.describe());
  backend_dispatch(
      op, logits,
      [&](auto zero) {
        using T = decltype(zero);
        cpu::count_correct(logits.data<T>(), labels.data<int32_t>(), counts.data<int64_t>(), N, B, C,
                           classes.begin, classes.end);
      },
      [&] {
        ON_CUDA(cuda::count_correct(logits.data<float>(), labels.data<int32_t>(), counts.data<int64_t>(), N,
                                    B, C, classes.begin, classes.end));
      });
}

}  // namespace subliminal
