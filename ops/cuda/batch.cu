// ops/cuda/batch.cu — gathering MNIST batches and drawing noise with cuRAND's Philox.
#include <cuda_runtime.h>
#include <curand_kernel.h>

#include <cstdint>  // uintptr_t

#include "engine/cuda/check.h"
#include "engine/cuda/launch.cuh"
#include "engine/cuda/runtime.h"
#include "ops/cuda/batch_cuda.h"

namespace subliminal::cuda {
namespace {

// images (S, P) uint8, labels (S,), order (N, S); x (N, B, P), y (N, B). One thread per pixel.
__global__ void gather_batch_kernel(const uint8_t* __restrict__ images, const uint8_t* __restrict__ labels,
                                    const int32_t* __restrict__ order, const int64_t* __restrict__ step,
                                    int64_t stride, int64_t models, int64_t batch, int64_t pixels,
                                    int64_t samples, float* __restrict__ x, int32_t* __restrict__ y) {
  const int64_t first = *step * stride;
  const int64_t total = models * batch * pixels;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t k = e % pixels, row = e / pixels, b = row % batch, n = row / batch;
    const int64_t position = first + b;
    if (position >= samples) {  // past the epoch's end: poison rather than read out of bounds
      x[e] = NAN;
      if (k == 0) y[row] = -1;
      continue;
    }
    const int64_t i = order[n * samples + position];
    // Exactly the CPU's float32 arithmetic: IEEE division (nvcc's default without fast math).
    x[e] = __fdiv_rn(__fsub_rn(__fdiv_rn(float(images[i * pixels + k]), 255.0f), 0.5f), 0.5f);
    if (k == 0) y[row] = labels[i];
  }
}

__device__ float unit_float(uint32_t w) { return float(w >> 8) * (1.0f / 16777216.0f); }
__device__ float uniform_pixel(uint32_t w) {
  return unit_float(w) * 2.0f - 1.0f;
}  // exact: CPU agrees bit for bit
// Box–Muller, as ops/cpu/batch_cpu.cpp's gaussian_pair (libm and CUDA's math differ in the last bits).
__device__ float2 gaussian_pair(uint32_t w1, uint32_t w2) {
  const float radius = sqrtf(-2.0f * logf(1.0f - unit_float(w1)));
  float s, c;
  sincosf(2.0f * 3.14159265358979f * unit_float(w2), &s, &c);
  return make_float2(radius * c, radius * s);
}

// The image id of row b of model n's batch.
// Returns −1 when an ordered batch runs past the order (the caller then writes NaN rather
// than reading out of bounds; the CPU path throws for the same request).
__device__ int64_t noise_image(const int32_t* order, int64_t n, int64_t samples, int64_t first,
                               int64_t first_image, int64_t b) {
  if (!order) return first_image + first + b;
  return first + b < samples ? int64_t(order[n * samples + first + b]) : -1;
}

// x (N, B, P) with P % 4 == 0 (so P' = P: images lie P words apart). One thread per group of
// four pixels = one Philox block, whose offset 4·q is a multiple of 4 so curand4 returns it whole.
__global__ void noise_batch_kernel(uint64_t seed, uint64_t stream, const int32_t* __restrict__ order,
                                   const int64_t* __restrict__ step, int64_t stride, int64_t first_image,
                                   int64_t models, int64_t sources, int64_t batch, int64_t pixels,
                                   int64_t samples, bool gaussian, float* __restrict__ x) {
  const int64_t first = *step * stride;
  const int64_t per_row = pixels / 4, total = models * batch * per_row;
  for (int64_t g = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; g < total;
       g += int64_t(gridDim.x) * blockDim.x) {
    const int64_t q = g % per_row, row = g / per_row, b = row % batch, n = row / batch;
    const int64_t source = n % sources;
    const int64_t image = noise_image(order, source, samples, first, first_image, b);
    if (image < 0) {
      reinterpret_cast<float4*>(x)[g] = make_float4(NAN, NAN, NAN, NAN);
      continue;
    }
    curandStatePhilox4_32_10_t state;
    // Key seed + source (model n draws source n mod sources' noise), subsequence `stream`,
    // offset = the pixel's position: cuRAND's layout is the one engine/philox.h reproduces.
    curand_init(seed + uint64_t(source), stream, uint64_t(image) * uint64_t(pixels) + uint64_t(4 * q),
                &state);
    const uint4 r = curand4(&state);
    float4 out;
    if (gaussian) {
      const float2 a = gaussian_pair(r.x, r.y), c = gaussian_pair(r.z, r.w);
      out = make_float4(a.x, a.y, c.x, c.y);
    } else {
      out = make_float4(uniform_pixel(r.x), uniform_pixel(r.y), uniform_pixel(r.z), uniform_pixel(r.w));
    }
    reinterpret_cast<float4*>(x)[g] = out;
  }
}

// The general case (P not a multiple of 4): one thread per pixel; images are P' = P rounded
// up to even positions apart, as on the CPU.
__global__ void noise_batch_scalar_kernel(uint64_t seed, uint64_t stream, const int32_t* __restrict__ order,
                                          const int64_t* __restrict__ step, int64_t stride,
                                          int64_t first_image, int64_t models, int64_t sources, int64_t batch,
                                          int64_t pixels, int64_t samples, bool gaussian,
                                          float* __restrict__ x) {
  const int64_t first = *step * stride;
  const int64_t image_stride = pixels + (pixels & 1), total = models * batch * pixels;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t k = e % pixels, row = e / pixels, b = row % batch, n = row / batch;
    const int64_t image = noise_image(order, n % sources, samples, first, first_image, b);
    if (image < 0) {
      x[e] = NAN;
      continue;
    }
    const uint64_t base = uint64_t(image) * uint64_t(image_stride);
    curandStatePhilox4_32_10_t state;
    if (gaussian) {
      curand_init(seed + uint64_t(n % sources), stream, base + uint64_t(k & ~int64_t(1)), &state);
      const uint32_t w1 = curand(&state), w2 = curand(&state);
      const float2 z = gaussian_pair(w1, w2);
      x[e] = (k & 1) ? z.y : z.x;
    } else {
      curand_init(seed + uint64_t(n % sources), stream, base + uint64_t(k), &state);
      x[e] = uniform_pixel(curand(&state));
    }
  }
}

}  // namespace

void gather_batch(const uint8_t* images, const uint8_t* labels, const int32_t* order, const int64_t* step,
                  int64_t stride, int64_t models, int64_t batch, int64_t pixels, int64_t samples, float* x,
                  int32_t* y) {
  const int64_t total = models * batch * pixels;
  if (total == 0) return;
  gather_batch_kernel<<<grid_for(total), kThreads, 0, Runtime::get().stream()>>>(
      images, labels, order, step, stride, models, batch, pixels, samples, x, y);
  CUDA_CHECK_LAUNCH();
}

void noise_batch(uint64_t seed, uint64_t stream, const int32_t* order, const int64_t* step, int64_t stride,
                 int64_t first_image, int64_t models, int64_t sources, int64_t batch, int64_t pixels,
                 int64_t samples, bool gaussian, float* x) {
  if (models * batch * pixels == 0) return;
  cudaStream_t s = Runtime::get().stream();
  // float4 stores need x on 16 bytes; a view that starts elsewhere takes the scalar kernel, which
  // draws the same words for the same pixels (P' = P when P is a multiple of 4).
  if (pixels % 4 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0) {
    noise_batch_kernel<<<grid_for(models * batch * pixels / 4), kThreads, 0, s>>>(
        seed, stream, order, step, stride, first_image, models, sources, batch, pixels, samples, gaussian, x);
  } else {
    noise_batch_scalar_kernel<<<grid_for(models * batch * pixels), kThreads, 0, s>>>(
        seed, stream, order, step, stride, first_image, models, sources, batch, pixels, samples, gaussian, x);
  }
  CUDA_CHECK_LAUNCH();
}

}  // namespace subliminal::cuda
