// engine/device.cpp — is there a GPU, and what is it called.
#include "engine/device.h"

#include <thread>

#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#endif

#ifdef SUBLIMINAL_HAS_CUDA
#include "engine/cuda/kernels.h"
#include "engine/cuda/runtime.h"
#endif

namespace subliminal {

bool cuda_compiled() {
#ifdef SUBLIMINAL_HAS_CUDA
  return true;
#else
  return false;
#endif
}

bool cuda_available(std::string* why) {
#ifdef SUBLIMINAL_HAS_CUDA
  return cuda::probe(why);
#else
  if (why) *why = "this build has no CUDA backend (configured without a CUDA compiler)";
  return false;
#endif
}

std::string device_description(Device d) {
  if (d == Device::cpu)
    return "cpu (" + std::to_string(std::thread::hardware_concurrency()) + " hardware threads)";
#ifdef SUBLIMINAL_HAS_CUDA
  return cuda::Runtime::get().properties().name;
#else
  return "cuda (not compiled)";
#endif
}

void flush_denormals_on_this_thread() {
#if defined(__SSE__) || defined(__x86_64__)
  _mm_setcsr(_mm_getcsr() | 0x8040);  // bit 15: flush to zero; bit 6: denormals are zero
#endif
}

bool device_capturing() {
#ifdef SUBLIMINAL_HAS_CUDA
  std::string why;
  return cuda::probe(&why) && cuda::Runtime::get().capturing();
#else
  return false;
#endif
}

void synchronize(Device d) {
#ifdef SUBLIMINAL_HAS_CUDA
  if (d == Device::cuda) cuda::synchronize();
#endif
}

}  // namespace subliminal
