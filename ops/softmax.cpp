// ops/softmax.cpp — softmax / log-softmax forward and backward.
#include "ops/softmax.h"

#include "engine/autograd.h"
#include "engine/dispatch.h"
#include "ops/cpu/kernels_cpu.h"

#ifdef SUBLIMINAL_HAS_CUDA
#include "ops/cuda/kernels_cuda.h"
#endif

namespace subliminal {
namespace {

// Both ops save their output and differ only in which backward formula applies.
class SoftmaxNode : public Node {
 public:
  explicit SoftmaxNode(bool log) : log_(log) {}
  const char* name() const override { return log_ ? "log_softmax" : "softmax"; }
  void backward(const Tensor& dy, std::vector<GradSink>& sinks) override {
    GradSink& dx = sinks[0];
    if (!dx.wanted()) return;
    const Tensor& y = saved[0];
    const int64_t cols = y.dim(-1), rows = y.numel() / cols;
    backend_dispatch(
        name(), y,
        [&](auto zero) {
          using T = decltype(zero);
          (log_ ? cpu::log_softmax_backward<T> : cpu::softmax_backward<T>)(dy.data<T>(), y.data<T>(),
                                                                           dx.target.data<T>(), rows, cols,
                                                                           dx.accumulate);
        },
        [&] {
          ON_CUDA((log_ ? cuda::log_softmax_backward : cuda::softmax_backward)(
              dy.data<float>(), y.data<float>(), dx.target.data<float>(), rows, cols, dx.accumulate));
        });
  }

 private:
  bool log_;
};

Tensor softmax_op(const Tensor& x, bool log) {
  if (x.rank() < 1 || x.dim(-1) == 0) throw ShapeError("softmax of " + x.describe());
  const int64_t cols = x.dim(-1), rows = x.numel() / cols;
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  backend_dispatch(
      log ? "log_softmax" : "softmax", x,
      [&](auto zero) {
        using T = decltype(zero);
        (log ? cpu::log_softmax<T> : cpu::softmax<T>)(x.data<T>(), y.data<T>(), rows, cols);
      },
      [&] {
        ON_CUDA((log ? cuda::log_softmax : cuda::softmax)(x.data<float>(), y.data<float>(), rows, cols));
      });
  if (any_requires_grad({x})) {
    auto node = std::make_shared<SoftmaxNode>(log);
    node->saved = {y.detach()};
    record(y, node, {x});
  }
  return y;
}

}  // namespace

Tensor softmax(const Tensor& x) { return softmax_op(x, false); }
Tensor log_softmax(const Tensor& x) { return softmax_op(x, true); }

}  // namespace subliminal
