// ops/elementwise.cpp — relu and scale with their backward nodes.
#include "ops/elementwise.h"

#include "engine/autograd.h"
#include "engine/dispatch.h"
#include "ops/cpu/kernels_cpu.h"

#ifdef SUBLIMINAL_HAS_CUDA
#include "ops/cuda/kernels_cuda.h"
#endif

namespace subliminal {
namespace {

class ReluNode : public Node {
 public:
  const char* name() const override { return "relu"; }
  // saved[0] = y, the output: y > 0 exactly where x > 0.
  void backward(const Tensor& dy, std::vector<GradSink>& sinks) override {
    GradSink& dx = sinks[0];
    if (!dx.wanted()) return;
    const Tensor& y = saved[0];
    backend_dispatch(
        "relu backward", y,
        [&](auto zero) {
          using T = decltype(zero);
          cpu::relu_backward(dy.data<T>(), y.data<T>(), dx.target.data<T>(), y.numel(), dx.accumulate);
        },
        [&] {
          ON_CUDA(cuda::relu_backward(dy.data<float>(), y.data<float>(), dx.target.data<float>(), y.numel(),
                                      dx.accumulate));
        });
  }
};

class ScaleNode : public Node {
 public:
  explicit ScaleNode(double s) : s_(s) {}
  const char* name() const override { return "scale"; }
  void backward(const Tensor& dy, std::vector<GradSink>& sinks) override {
    GradSink& dx = sinks[0];
    if (!dx.wanted()) return;
    backend_dispatch(
        "scale backward", dy,
        [&](auto zero) {
          using T = decltype(zero);
          cpu::scale(dy.data<T>(), T(s_), dx.target.data<T>(), dy.numel(), dx.accumulate);
        },
        [&] {
          ON_CUDA(
              cuda::scale(dy.data<float>(), float(s_), dx.target.data<float>(), dy.numel(), dx.accumulate));
        });
  }

 private:
  double s_;
};

}  // namespace

Tensor relu(const Tensor& x) {
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  backend_dispatch(
      "relu", x,
      [&](auto zero) {
        using T = decltype(zero);
        cpu::relu_forward(x.data<T>(), y.data<T>(), x.numel());
      },
      [&] { ON_CUDA(cuda::relu_forward(x.data<float>(), y.data<float>(), x.numel())); });
  if (any_requires_grad({x})) {
    auto node = std::make_shared<ReluNode>();
    node->saved = {y.detach()};
    record(y, node, {x});
  }
  return y;
}

Tensor scale(const Tensor& x, double s) {
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  backend_dispatch(
      "scale", x,
      [&](auto zero) {
        using T = decltype(zero);
        cpu::scale(x.data<T>(), T(s), y.data<T>(), x.numel(), false);
      },
      [&] { ON_CUDA(cuda::scale(x.data<float>(), float(s), y.data<float>(), x.numel(), false)); });
  if (any_requires_grad({x})) record(y, std::make_shared<ScaleNode>(s), {x});
  return y;
}

}  // namespace subliminal
