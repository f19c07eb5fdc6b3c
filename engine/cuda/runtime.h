// engine/cuda/runtime.h — the process's one CUDA context.
//
// One GPU (device 0), one stream that every op is queued on (so ops need no events between
// them and the whole training step can be captured as a CUDA graph), one cuBLASLt handle
// with a 32 MiB workspace (Hopper's recommendation), and the stream-ordered memory pool
// that tensors come from: cudaMallocAsync/cudaFreeAsync with the pool's release threshold
// raised, so freed blocks stay in the pool and a steady training loop never reaches the
// driver's allocator.
//
// The runtime is created on first use and deliberately never destroyed: tensors can die
// during static destruction, after which CUDA may already be unloading.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <string>

namespace subliminal::cuda {

class Runtime {
 public:
  // The runtime, created on the first call. Throws NoGpuError when there is no usable GPU.
  static Runtime& get();

  cudaStream_t stream() const { return stream_; }
  cublasLtHandle_t cublaslt() const { return cublaslt_; }
  void* workspace() const { return workspace_; }
  size_t workspace_bytes() const { return workspace_bytes_; }
  const cudaDeviceProp& properties() const { return properties_; }
  cudaMemPool_t pool() const { return pool_; }

  // True while the stream is being captured into a CUDA graph (no host syncs allowed then).
  bool capturing() const;

 private:
  Runtime();
  cudaStream_t stream_ = nullptr;
  cublasLtHandle_t cublaslt_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  cudaMemPool_t pool_ = nullptr;
  cudaDeviceProp properties_{};
};

// Asks the driver whether a usable GPU exists; any error means "no". Cached after the first call.
bool probe(std::string* why);

// Stream-ordered allocation on the runtime's stream. Throws OutOfMemoryError naming the bytes
// requested and what the pool and the device hold.
void* device_allocate(size_t bytes);
// Never throws (called from destructors); errors after CUDA has unloaded are ignored.
void device_release(void* p) noexcept;

// Times device work between start() and stop() with CUDA events on the runtime's stream.
class EventTimer {
 public:
  EventTimer();
  ~EventTimer();
  EventTimer(const EventTimer&) = delete;
  EventTimer& operator=(const EventTimer&) = delete;
  void start();
  void stop();
  double seconds();  // waits for the stop event; device seconds between the two events
 private:
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
};

}  // namespace subliminal::cuda
