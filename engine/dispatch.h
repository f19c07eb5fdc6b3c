// engine/dispatch.h — the one place that picks a backend for an op.
//
//   backend_dispatch(op, x,
//       [&](auto zero) { using T = decltype(zero); cpu::thing<T>(...); },   // CPU, float or double
//       [&] { ON_CUDA(cuda::thing(...)); });                                // CUDA, float32
//
// ON_CUDA(...) compiles its argument only in CUDA builds, so op files need no #ifdefs; in a
// CPU-only build a CUDA tensor cannot exist (allocating one throws), so that branch is dead.
#pragma once

#include <string>

#include "engine/tensor.h"

#ifdef SUBLIMINAL_HAS_CUDA
#define ON_CUDA(...) __VA_ARGS__
#else
#define ON_CUDA(...) ((void)0)
#endif

namespace subliminal {

template <class CpuFn, class CudaFn>
void backend_dispatch(const char* op, const Tensor& ref, CpuFn&& cpu_fn, CudaFn&& cuda_fn) {
  if (ref.device() == Device::cuda) {
    if (ref.dtype() != DType::f32)
      throw ShapeError(std::string(op) + ": the CUDA backend computes in float32, got " + ref.describe());
    cuda_fn();
    return;
  }
  dispatch_floating(ref.dtype(), cpu_fn);
}

}  // namespace subliminal
