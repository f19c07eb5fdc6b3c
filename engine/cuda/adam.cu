// engine/cuda/adam.cu — Adam over every parameter of every model in one launch.
#include "engine/cuda/adam.h"

#include <cuda_runtime.h>

#include "engine/cuda/check.h"
#include "engine/cuda/launch.cuh"
#include "engine/cuda/runtime.h"

namespace subliminal::cuda {
namespace {

struct AdamScalars {
  double lr, beta1, beta2, eps, weight_decay;
};

// p, g, m, v are (n,); t is the step number (device scalar).
__global__ void adam_kernel(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
                            float* __restrict__ v, int64_t n, const int64_t* __restrict__ t, AdamScalars o) {
  // The same scalar arithmetic as the CPU version (double, then rounded to float). The device's
  // pow and sqrt may differ from glibc's in the last bit of a double, which can move a float step
  // size by one ulp: the tests compare with a tolerance, not bit for bit.
  const double step = double(*t);
  const float step_size = float(o.lr / (1.0 - pow(o.beta1, step)));
  const float bias_correction2_sqrt = float(sqrt(1.0 - pow(o.beta2, step)));
  const float one_minus_beta1 = float(1.0 - o.beta1), beta2 = float(o.beta2);
  const float one_minus_beta2 = float(1.0 - o.beta2), eps = float(o.eps), wd = float(o.weight_decay);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    float grad = wd != 0.0f ? __fadd_rn(g[i], __fmul_rn(wd, p[i])) : g[i];
    float mi = __fadd_rn(m[i], __fmul_rn(one_minus_beta1, __fsub_rn(grad, m[i])));
    float vi = __fadd_rn(__fmul_rn(beta2, v[i]), __fmul_rn(__fmul_rn(one_minus_beta2, grad), grad));
    float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), bias_correction2_sqrt), eps);
    p[i] = __fsub_rn(p[i], __fmul_rn(step_size, __fdiv_rn(mi, denom)));
    m[i] = mi;
    v[i] = vi;
  }
}

}  // namespace

void adam_update(float* p, const float* g, float* m, float* v, int64_t n, const int64_t* t,
                 const AdamOptions& options) {
  if (n == 0) return;
  AdamScalars o{options.lr, options.beta1, options.beta2, options.eps, options.weight_decay};
  adam_kernel<<<grid_for(n), kThreads, 0, Runtime::get().stream()>>>(p, g, m, v, n, t, o);
  CUDA_CHECK_LAUNCH();
}

}  // namespace subliminal::cuda
