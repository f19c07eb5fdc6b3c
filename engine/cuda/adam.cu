// engine/cuda/adam.cu — Adam over every parameter of every model in one launch.
#include "engine/cuda/adam.h"

#include <cuda_runtime.h>

#include "engine/cuda/step_end.cuh"
#include "engine/cuda/check.h"
#include "engine/cuda/launch.cuh"
#include "engine/cuda/runtime.h"

namespace subliminal::cuda {
namespace {

// p, g, m, v are (n,); t is the step number (device scalar).
__global__ void adam_kernel(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
                            float* __restrict__ v, int64_t n, const int64_t* __restrict__ t, AdamOptions o) {
  const AdamStepScalars s = adam_step_scalars(o, *t);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    float pi = p[i], mi = m[i], vi = v[i];
    adam_element(pi, g[i], mi, vi, s);
    p[i] = pi;
    m[i] = mi;
    v[i] = vi;
  }
}

}  // namespace

void adam_update(float* p, const float* g, float* m, float* v, int64_t n, const int64_t* t,
                 const AdamOptions& options) {
  if (n == 0) return;
  adam_kernel<<<grid_for(n), kThreads, 0, Runtime::get().stream()>>>(p, g, m, v, n, t, options);
  CUDA_CHECK_LAUNCH();
}

}  // namespace subliminal::cuda
