// ops/cuda/elementwise.cu — ReLU, scaling and column slices: one thread per element.
#include <cuda_runtime.h>

#include "engine/cuda/check.h"
#include "engine/cuda/launch.cuh"
#include "engine/cuda/runtime.h"
#include "ops/cuda/kernels_cuda.h"

namespace subliminal::cuda {
namespace {

#define GRID_STRIDE(i, n)                                                   \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); \
       i += int64_t(gridDim.x) * blockDim.x)

// x, y are (n,)
__global__ void relu_forward_kernel(const float* __restrict__ x, float* __restrict__ y, int64_t n) {
  GRID_STRIDE(i, n) y[i] = x[i] <= 0.0f ? 0.0f : x[i];  // NaN stays NaN, as torch.relu
}

// dy, y, dx are (n,)
__global__ void relu_backward_kernel(const float* __restrict__ dy, const float* __restrict__ y, float* dx,
                                     int64_t n, bool accumulate) {
  GRID_STRIDE(i, n) {
    float g = y[i] <= 0.0f ? 0.0f : dy[i];  // threshold_backward: a NaN output passes the gradient
    dx[i] = accumulate ? dx[i] + g : g;
  }
}

// x, y are (n,)
__global__ void scale_kernel(const float* __restrict__ x, float s, float* y, int64_t n, bool accumulate) {
  GRID_STRIDE(i, n) y[i] = accumulate ? y[i] + s * x[i] : s * x[i];
}

// x is (rows, cols), y is (rows, c1 − c0)
__global__ void slice_kernel(const float* __restrict__ x, float* __restrict__ y, int64_t rows, int64_t cols,
                             int64_t c0, int64_t width) {
  GRID_STRIDE(i, rows * width) y[i] = x[(i / width) * cols + c0 + i % width];
}

// dy is (rows, c1 − c0), dx is (rows, cols)
__global__ void slice_backward_kernel(const float* __restrict__ dy, float* dx, int64_t rows, int64_t cols,
                                      int64_t c0, int64_t width, bool accumulate) {
  GRID_STRIDE(i, rows * cols) {
    const int64_t r = i / cols, c = i % cols;
    const bool inside = c >= c0 && c < c0 + width;
    if (accumulate) {
      if (inside) dx[i] += dy[r * width + c - c0];
    } else {
      dx[i] = inside ? dy[r * width + c - c0] : 0.0f;
    }
  }
}

cudaStream_t stream() { return Runtime::get().stream(); }

}  // namespace

void relu_forward(const float* x, float* y, int64_t n) {
  if (n == 0) return;
  relu_forward_kernel<<<grid_for(n), kThreads, 0, stream()>>>(x, y, n);
  CUDA_CHECK_LAUNCH();
}

void relu_backward(const float* dy, const float* y, float* dx, int64_t n, bool accumulate) {
  if (n == 0) return;
  relu_backward_kernel<<<grid_for(n), kThreads, 0, stream()>>>(dy, y, dx, n, accumulate);
  CUDA_CHECK_LAUNCH();
}

void scale(const float* x, float s, float* y, int64_t n, bool accumulate) {
  if (n == 0) return;
  scale_kernel<<<grid_for(n), kThreads, 0, stream()>>>(x, s, y, n, accumulate);
  CUDA_CHECK_LAUNCH();
}

void slice_columns(const float* x, float* y, int64_t rows, int64_t cols, int64_t c0, int64_t c1) {
  if (rows * (c1 - c0) == 0) return;
  slice_kernel<<<grid_for(rows * (c1 - c0)), kThreads, 0, stream()>>>(x, y, rows, cols, c0, c1 - c0);
  CUDA_CHECK_LAUNCH();
}

void slice_columns_backward(const float* dy, float* dx, int64_t rows, int64_t cols, int64_t c0, int64_t c1,
                            bool accumulate) {
  if (rows * cols == 0) return;
  slice_backward_kernel<<<grid_for(rows * cols), kThreads, 0, stream()>>>(dy, dx, rows, cols, c0, c1 - c0,
                                                                          accumulate);
  CUDA_CHECK_LAUNCH();
}

}  // namespace subliminal::cuda
