// engine/cuda/kernels.cu — fill, accumulate, counters and copies on the GPU.
#include "engine/cuda/kernels.h"

#include <cuda_runtime.h>

#include "engine/cuda/check.h"
#include "engine/cuda/launch.cuh"
#include "engine/cuda/runtime.h"
#include "engine/cuda/step_end.cuh"

namespace subliminal::cuda {
namespace {

// p is (n,) of T
template <class T>
__global__ void fill_kernel(T* p, int64_t n, T value) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    p[i] = value;
}

// dst, src are (n,)
__global__ void add_into_kernel(float* dst, const float* src, int64_t n, float alpha) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    dst[i] += alpha * src[i];
}

struct Counters {
  int64_t* p[4];
};
// *c.p[k] += 1 for each of the (up to 4) int64 device scalars, null entries skipped; <<<1, 4>>>.
__global__ void increment_kernel(Counters c) {
  if (threadIdx.x < 4 && c.p[threadIdx.x]) *c.p[threadIdx.x] += 1;
}

// sum, values are (count,); step, first_bad are device scalars
__global__ void accumulate_and_watch_kernel(float* sum, const float* values, int64_t count, float weight,
                                            const int64_t* step, int64_t* first_bad) {
  for (int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; n < count;
       n += int64_t(gridDim.x) * blockDim.x)
    accumulate_loss(&sum[n], values[n], weight, *step, first_bad);
}

// p is (n,); *count (device) += number of non-finite values
__global__ void count_nonfinite_kernel(const float* p, int64_t n, unsigned long long* count) {
  unsigned long long local = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    local += !isfinite(p[i]);
  if (local) atomicAdd(count, local);
}

template <class T>
void launch_fill(void* p, int64_t n, double value) {
  if (n == 0) return;
  fill_kernel<T>
      <<<grid_for(n), kThreads, 0, Runtime::get().stream()>>>(static_cast<T*>(p), n, static_cast<T>(value));
  CUDA_CHECK_LAUNCH();
}

}  // namespace

void fill(void* p, DType dtype, int64_t n, double value) {
  switch (dtype) {
    case DType::f32:
      return launch_fill<float>(p, n, value);
    case DType::f64:
      return launch_fill<double>(p, n, value);
    case DType::i32:
      return launch_fill<int32_t>(p, n, value);
    case DType::i64:
      return launch_fill<int64_t>(p, n, value);
    case DType::u8:
      return launch_fill<uint8_t>(p, n, value);
  }
}

void add_into(float* dst, const float* src, int64_t n, float alpha) {
  if (n == 0) return;
  add_into_kernel<<<grid_for(n), kThreads, 0, Runtime::get().stream()>>>(dst, src, n, alpha);
  CUDA_CHECK_LAUNCH();
}

void increment(int64_t* const counters[4]) {
  Counters c{{counters[0], counters[1], counters[2], counters[3]}};
  increment_kernel<<<1, 4, 0, Runtime::get().stream()>>>(c);
  CUDA_CHECK_LAUNCH();
}

void accumulate_and_watch(float* sum, const float* values, int64_t count, float weight, const int64_t* step,
                          int64_t* first_bad) {
  if (count == 0) return;
  accumulate_and_watch_kernel<<<grid_for(count), kThreads, 0, Runtime::get().stream()>>>(
      sum, values, count, weight, step, first_bad);
  CUDA_CHECK_LAUNCH();
}

int64_t count_nonfinite(const float* p, int64_t n) {
  if (n == 0) return 0;
  cudaStream_t s = Runtime::get().stream();
  unsigned long long* device_count = nullptr;
  CUDA_CHECK(cudaMallocAsync(&device_count, sizeof(*device_count), s));
  CUDA_CHECK(cudaMemsetAsync(device_count, 0, sizeof(*device_count), s));
  count_nonfinite_kernel<<<grid_for(n), kThreads, 0, s>>>(p, n, device_count);
  CUDA_CHECK_LAUNCH();
  unsigned long long host_count = 0;
  CUDA_CHECK(cudaMemcpyAsync(&host_count, device_count, sizeof(host_count), cudaMemcpyDeviceToHost, s));
  CUDA_CHECK(cudaFreeAsync(device_count, s));
  CUDA_CHECK(cudaStreamSynchronize(s));
  return static_cast<int64_t>(host_count);
}

void copy_device_to_device(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, Runtime::get().stream()));
}

void copy_host_to_device(void* dst, const void* host_src, size_t bytes) {
  if (bytes == 0) return;
  cudaStream_t s = Runtime::get().stream();
  CUDA_CHECK(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, s));
  // Pageable host memory: the copy has been staged once the stream reaches it; waiting keeps
  // the caller free to reuse or free its buffer at once.
  CUDA_CHECK(cudaStreamSynchronize(s));
}

void copy_device_to_host(void* host_dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  cudaStream_t s = Runtime::get().stream();
  CUDA_CHECK(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, s));
  CUDA_CHECK(cudaStreamSynchronize(s));
}

void synchronize() { CUDA_CHECK(cudaStreamSynchronize(Runtime::get().stream())); }

}  // namespace subliminal::cuda
