// engine/cuda/runtime.cpp — creating the CUDA context, the pool and the handles.
#include "engine/cuda/runtime.h"

#include <cstdint>
#include <mutex>

#include "engine/cuda/check.h"
#include "engine/error.h"

namespace subliminal::cuda {
namespace {

struct ProbeResult {
  bool ok = false;
  std::string why;
};

const ProbeResult& probe_once() {
  static const ProbeResult result = [] {
    ProbeResult r;
    int count = 0;
    cudaError_t status = cudaGetDeviceCount(&count);
    if (status != cudaSuccess) {
      r.why = std::string("the CUDA runtime found no usable GPU (") + cudaGetErrorString(status) + ")";
      cudaGetLastError();  // clear the sticky error so later calls start clean
      return r;
    }
    if (count == 0) {
      r.why = "the CUDA driver reports no GPU";
      return r;
    }
    // A device that exists but cannot take a context (e.g. driver too old) also counts as none.
    status = cudaFree(nullptr);
    if (status != cudaSuccess) {
      r.why = std::string("could not start a CUDA context (") + cudaGetErrorString(status) + ")";
      cudaGetLastError();
      return r;
    }
    r.ok = true;
    return r;
  }();
  return result;
}

}  // namespace

bool probe(std::string* why) {
  const ProbeResult& r = probe_once();
  if (!r.ok && why) *why = r.why;
  return r.ok;
}

Runtime& Runtime::get() {
  static Runtime* runtime = [] {
    std::string why;
    if (!probe(&why)) throw NoGpuError("no usable CUDA GPU: " + why);
    return new Runtime();  // never deleted; see the header
  }();
  return *runtime;
}

Runtime::Runtime() {
  CUDA_CHECK(cudaSetDevice(0));
  CUDA_CHECK(cudaGetDeviceProperties(&properties_, 0));
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  // Keep freed memory in the pool instead of returning it to the driver at every sync.
  CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool_, 0));
  uint64_t threshold = UINT64_MAX;
  CUDA_CHECK(cudaMemPoolSetAttribute(pool_, cudaMemPoolAttrReleaseThreshold, &threshold));
  CUBLAS_CHECK(cublasLtCreate(&cublaslt_));
  workspace_bytes_ = size_t(32) << 20;  // 32 MiB: NVIDIA's recommendation for Hopper
  CUDA_CHECK(cudaMalloc(&workspace_, workspace_bytes_));
}

bool Runtime::capturing() const {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  CUDA_CHECK(cudaStreamIsCapturing(stream_, &status));
  return status == cudaStreamCaptureStatusActive;
}

void* device_allocate(size_t bytes) {
  Runtime& rt = Runtime::get();
  void* p = nullptr;
  cudaError_t status = cudaMallocAsync(&p, bytes == 0 ? 1 : bytes, rt.stream());
  if (status == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    size_t free_bytes = 0, total_bytes = 0;
    cudaMemGetInfo(&free_bytes, &total_bytes);
    uint64_t in_pool = 0;
    cudaMemPoolGetAttribute(rt.pool(), cudaMemPoolAttrUsedMemCurrent, &in_pool);
    throw OutOfMemoryError("out of GPU memory: asked for " + std::to_string(bytes) + " bytes; " +
                           std::to_string(in_pool) + " bytes in use by subliminal, " +
                           std::to_string(free_bytes) + " free of " + std::to_string(total_bytes) + " on " +
                           rt.properties().name);
  }
  CUDA_CHECK(status);
  return p;
}

void device_release(void* p) noexcept {
  if (!p) return;
  // The runtime exists whenever a device pointer does.
  cudaError_t status = cudaFreeAsync(p, Runtime::get().stream());
  if (status != cudaSuccess) cudaGetLastError();  // e.g. cudaErrorCudartUnloading at exit
}

EventTimer::EventTimer() {
  Runtime::get();
  CUDA_CHECK(cudaEventCreate(&start_));
  CUDA_CHECK(cudaEventCreate(&stop_));
}

EventTimer::~EventTimer() {
  cudaEventDestroy(start_);
  cudaEventDestroy(stop_);
}

void EventTimer::start() { CUDA_CHECK(cudaEventRecord(start_, Runtime::get().stream())); }
void EventTimer::stop() { CUDA_CHECK(cudaEventRecord(stop_, Runtime::get().stream())); }

double EventTimer::seconds() {
  CUDA_CHECK(cudaEventSynchronize(stop_));
  float ms = 0;
  CUDA_CHECK(cudaEventElapsedTime(&ms, start_, stop_));
  return ms / 1000.0;
}

}  // namespace subliminal::cuda
