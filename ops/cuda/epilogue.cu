// ops/cuda/epilogue.cu — bias, ReLU (+ bit-mask), ReLU gradient and bias gradient as
// stand-alone kernels: the unfused reference path, and the fallback when cuBLASLt has no
// fused epilogue for a shape.
//
// Mask words: one warp handles 32 consecutive features of one row, so __ballot_sync builds
// the row's 32-bit mask word directly (bit j = feature 32·word + j, little-endian, i.e. the
// same LSB-first byte layout the CPU backend writes).
#include <cuda_runtime.h>

#include <cstdint>  // uintptr_t
#include <string>

#include "engine/cuda/check.h"
#include "engine/cuda/launch.cuh"
#include "engine/cuda/runtime.h"
#include "engine/error.h"  // ShapeError
#include "ops/cuda/gemm_cuda.h"

namespace subliminal::cuda {
namespace {

constexpr int kWarpsPerBlock = kThreads / 32;

// y is (rows, F) with rows = N·B; bias is (N, F) or null; mask is (rows, words) of uint32.
__global__ void bias_activation_kernel(float* __restrict__ y, const float* __restrict__ bias, bool relu,
                                       uint32_t* __restrict__ mask, int64_t rows, int64_t batch,
                                       int64_t features, int64_t words) {
  const int lane = threadIdx.x & 31;
  const int64_t warps_total = int64_t(gridDim.x) * kWarpsPerBlock;
  for (int64_t item = blockIdx.x * int64_t(kWarpsPerBlock) + (threadIdx.x >> 5); item < rows * words;
       item += warps_total) {
    const int64_t row = item / words, word = item % words;
    const int64_t f = word * 32 + lane;
    const bool valid = f < features;
    float value = 0.0f;
    if (valid) {
      value = y[row * features + f];
      if (bias) value += bias[(row / batch) * features + f];
    }
    // PyTorch's relu and its backward gate: <= 0 → 0 and bit 0; NaN stays NaN with bit 1.
    const bool positive = valid && !(value <= 0.0f);
    if (relu) value = positive ? value : 0.0f;
    if (valid) y[row * features + f] = value;
    const uint32_t bits = __ballot_sync(0xffffffffu, positive);
    if (relu && lane == 0) mask[row * words + word] = bits;
  }
}

// dx is (rows, F); mask is (rows, words) of uint32.
__global__ void apply_relu_mask_kernel(float* __restrict__ dx, const uint32_t* __restrict__ mask,
                                       int64_t rows, int64_t features, int64_t words) {
  const int lane = threadIdx.x & 31;
  const int64_t warps_total = int64_t(gridDim.x) * kWarpsPerBlock;
  const int64_t feature_words = (features + 31) / 32;  // words past the features hold only padding
  for (int64_t item = blockIdx.x * int64_t(kWarpsPerBlock) + (threadIdx.x >> 5); item < rows * feature_words;
       item += warps_total) {
    const int64_t row = item / feature_words, word = item % feature_words;
    const int64_t f = word * 32 + lane;
    if (f >= features) continue;
    const uint32_t bits = mask[row * words + word];
    if (!((bits >> lane) & 1u)) dx[row * features + f] = 0.0f;
  }
}

// d is (N, B, F); db is (N, F): one thread per (model, feature) sums its column in order.
__global__ void bias_gradient_kernel(const float* __restrict__ d, float* __restrict__ db, int64_t models,
                                     int64_t batch, int64_t features) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < models * features;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = i / features, f = i % features;
    const float* column = d + n * batch * features + f;
    float sum = 0.0f;
    for (int64_t b = 0; b < batch; ++b) sum += column[b * features];
    db[i] = sum;
  }
}

unsigned warp_grid(int64_t items) { return grid_for(items * 32); }

// The kernels read and write the mask as 32-bit words: a mask view that does not start on 4
// bytes would fault on the GPU, so it is refused here (masks the ops allocate always do).
void check_mask_words(const char* op, const void* mask) {
  if (reinterpret_cast<uintptr_t>(mask) % alignof(uint32_t) != 0)
    throw ShapeError(std::string(op) +
                     ": the ReLU mask must start on a 4-byte boundary (a view into a mask "
                     "must begin at a multiple of 4 bytes)");
}

}  // namespace

void bias_activation(float* y, const float* bias, bool relu, uint8_t* mask, int64_t models, int64_t batch,
                     int64_t features) {
  const int64_t rows = models * batch, words = gemm::mask_row_bits(features) / 32;
  if (rows == 0) return;
  if (mask) check_mask_words("bias_activation", mask);
  bias_activation_kernel<<<warp_grid(rows * words), kThreads, 0, Runtime::get().stream()>>>(
      y, bias, relu, reinterpret_cast<uint32_t*>(mask), rows, batch, features, words);
  CUDA_CHECK_LAUNCH();
}

void apply_relu_mask(float* dx, const uint8_t* mask, int64_t models, int64_t batch, int64_t features) {
  const int64_t rows = models * batch, words = gemm::mask_row_bits(features) / 32;
  if (rows == 0) return;
  check_mask_words("apply_relu_mask", mask);
  apply_relu_mask_kernel<<<warp_grid(rows * ((features + 31) / 32)), kThreads, 0, Runtime::get().stream()>>>(
      dx, reinterpret_cast<const uint32_t*>(mask), rows, features, words);
  CUDA_CHECK_LAUNCH();
}

void bias_gradient(const float* d, float* db, int64_t models, int64_t batch, int64_t features) {
  if (models * features == 0) return;
  bias_gradient_kernel<<<grid_for(models * features), kThreads, 0, Runtime::get().stream()>>>(
      d, db, models, batch, features);
  CUDA_CHECK_LAUNCH();
}

}  // namespace subliminal::cuda
