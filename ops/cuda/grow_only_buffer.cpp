// ops/cuda/grow_only_buffer.cpp — see grow_only_buffer.h.
#include "ops/cuda/grow_only_buffer.h"

#include <cuda_runtime_api.h>

#include <algorithm>

#include "engine/cuda/check.h"
#include "engine/cuda/runtime.h"
#include "engine/error.h"

namespace subliminal::cuda {

void* GrowOnlyBuffer::reserve(size_t bytes) {
  if (bytes <= bytes_) return buffer_;
  if (Runtime::get().capturing())
    throw DeviceError(what_ + ": " + std::to_string(bytes) +
                      " bytes needed inside a CUDA graph capture (the step's eager first call should have sized it)");
  const size_t grown = std::max(bytes, 2 * bytes_);
  // From the runtime's stream-ordered pool (no device-wide synchronisation; running out is an
  // OutOfMemoryError that says how much is in use), never given back.
  void* fresh = device_allocate(grown);
  if (zeroed_) {
    try {
      CUDA_CHECK(cudaMemsetAsync(fresh, 0, grown, Runtime::get().stream()));
    } catch (...) {
      device_release(fresh);  // not yet ours to keep
      throw;
    }
  }
  if (buffer_) retired_.push_back(buffer_);  // a captured graph may still use it: keep it
  buffer_ = fresh;
  bytes_ = grown;
  return buffer_;
}

}  // namespace subliminal::cuda
