// engine/adam.cpp — the CPU update and the dispatch to the CUDA kernel.
#include "engine/adam.h"

#include <cmath>

#include "engine/kernels.h"
#include "engine/parallel.h"
#include "engine/simd.h"

#ifdef SUBLIMINAL_HAS_CUDA
#include "engine/cuda/adam.h"
#endif

namespace subliminal {

namespace cpu {
template <class T>
SUBLIMINAL_HOT_LOOP void adam_update(T* __restrict p, const T* __restrict g, T* __restrict m, T* __restrict v,
                                     int64_t n, int64_t t, const AdamOptions& o) {
  // Scalars in double as torch computes them in Python, then used at the tensor's precision.
  const double bias_correction1 = 1.0 - std::pow(o.beta1, double(t));
  const double bias_correction2 = 1.0 - std::pow(o.beta2, double(t));
  const T step_size = T(o.lr / bias_correction1);
  const T bias_correction2_sqrt = T(std::sqrt(bias_correction2));
  const T one_minus_beta1 = T(1.0 - o.beta1), beta2 = T(o.beta2), one_minus_beta2 = T(1.0 - o.beta2);
  const T eps = T(o.eps), weight_decay = T(o.weight_decay);
  for (int64_t i = 0; i < n; ++i) {
    // As torch (and the GPU's step_end.cuh): no decay term at all when weight_decay is 0, so an
    // infinite parameter does not turn its gradient into 0·inf = NaN.
    const T grad = weight_decay != T(0) ? g[i] + weight_decay * p[i] : g[i];
    m[i] = m[i] + one_minus_beta1 * (grad - m[i]);
    v[i] = beta2 * v[i] + one_minus_beta2 * grad * grad;
    T denom = std::sqrt(v[i]) / bias_correction2_sqrt + eps;
    p[i] = p[i] - step_size * (m[i] / denom);
  }
}
template void adam_update<float>(float*, const float*, float*, float*, int64_t, int64_t, const AdamOptions&);
template void adam_update<double>(double*, const double*, double*, double*, int64_t, int64_t,
                                  const AdamOptions&);
}  // namespace cpu

Adam::Adam(const Tensor& values, const Tensor& grads, AdamOptions options)
    : values_(values), grads_(grads), options_(options) {
  if (values.shape() != grads.shape() || values.dtype() != grads.dtype() || values.device() != grads.device())
    throw ShapeError("Adam: values " + values.describe() + " and grads " + grads.describe() + " differ");
  if (values.rank() != 1) throw ShapeError("Adam: expects flat arenas, got " + values.describe());
  m_ = Tensor::zeros(values.shape(), values.dtype(), values.device());
  v_ = Tensor::zeros(values.shape(), values.dtype(), values.device());
  t_ = Tensor::zeros({1}, DType::i64, values.device());
}

void Adam::step() {
  if (values_.device() == Device::cuda) check_dtype("Adam", values_, DType::f32, "CUDA parameters");
  increment(t_);  // after the checks: a refused step is not counted
  if (values_.device() == Device::cuda) {
#ifdef SUBLIMINAL_HAS_CUDA
    cuda::adam_update(values_.data<float>(), grads_.data<float>(), m_.data<float>(), v_.data<float>(),
                      values_.numel(), t_.data<int64_t>(), options_);
    return;
#else
    throw NoGpuError("this build has no CUDA backend");
#endif
  }
  int64_t t = *t_.data<int64_t>();
  dispatch_floating(values_.dtype(), [&](auto zero) {
    using T = decltype(zero);
    T *p = values_.data<T>(), *m = m_.data<T>(), *v = v_.data<T>();
    const T* g = grads_.data<T>();
    // Each parameter's update is independent: the arena is split across the CPU's threads.
    parallel_for(values_.numel(), kMinParallelElements, [&](int64_t begin, int64_t end) {
      cpu::adam_update(p + begin, g + begin, m + begin, v + begin, end - begin, t, options_);
    });
  });
}

int64_t Adam::steps_taken() const { return static_cast<int64_t>(t_.item()); }

}  // namespace subliminal
