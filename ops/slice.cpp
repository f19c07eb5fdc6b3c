// ops/slice.cpp — column slices and their backward (a scatter into zeros).
#include "ops/slice.h"

#include "engine/autograd.h"
#include "engine/dispatch.h"
#include "ops/cpu/kernels_cpu.h"

#ifdef SUBLIMINAL_HAS_CUDA
#include "ops/cuda/kernels_cuda.h"
#endif

namespace subliminal {
namespace {

class SliceColumnsNode : public Node {
 public:
  SliceColumnsNode(ColumnRange cols, int64_t columns) : cols_(cols), columns_(columns) {}
  const char* name() const override { return "slice_columns"; }
  void backward(const Tensor& dy, std::vector<GradSink>& sinks) override {
    GradSink& dx = sinks[0];
    if (!dx.wanted()) return;
    const int64_t rows = dx.target.numel() / columns_;
    backend_dispatch(
        "slice_columns backward", dy,
        [&](auto zero) {
          using T = decltype(zero);
          cpu::slice_columns_backward(dy.data<T>(), dx.target.data<T>(), rows, columns_, cols_.begin,
                                      cols_.end, dx.accumulate);
        },
        [&] {
          ON_CUDA(cuda::slice_columns_backward(dy.data<float>(), dx.target.data<float>(), rows, columns_,
                                               cols_.begin, cols_.end, dx.accumulate));
        });
  }

 private:
  ColumnRange cols_;
  int64_t columns_;
};

}  // namespace

void check_columns(const char* op, ColumnRange cols, int64_t columns) {
  if (cols.begin < 0 || cols.end <= cols.begin || cols.end > columns)
    throw ShapeError(std::string(op) + ": column range [" + std::to_string(cols.begin) + ", " +
                     std::to_string(cols.end) + ") does not fit " + std::to_string(columns) + " columns");
}

Tensor slice_columns(const Tensor& x, ColumnRange cols) {
  if (x.rank() < 1) throw ShapeError("slice_columns of a scalar " + x.describe());
  const int64_t columns = x.dim(-1), rows = x.numel() / (columns ? columns : 1);
  check_columns("slice_columns", cols, columns);
  Shape shape = x.shape();
  shape.back() = cols.width();
  Tensor y = Tensor::empty(shape, x.dtype(), x.device());
  backend_dispatch(
      "slice_columns", x,
      [&](auto zero) {
        using T = decltype(zero);
        cpu::slice_columns(x.data<T>(), y.data<T>(), rows, columns, cols.begin, cols.end);
      },
      [&] {
        ON_CUDA(cuda::slice_columns(x.data<float>(), y.data<float>(), rows, columns, cols.begin, cols.end));
      });
  if (any_requires_grad({x})) record(y, std::make_shared<SliceColumnsNode>(cols, columns), {x});
  return y;
}

}  // namespace subliminal
