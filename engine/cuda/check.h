// engine/cuda/check.h — check macros for CUDA, cuBLAS(Lt), cuRAND and cuDNN calls.
//
// Every call into an NVIDIA library goes through one of these. A failure throws
// subliminal::DeviceError whose message carries the library, the call as written, the
// status, and the file (as the compiler was given it) and line — e.g.
//   cuBLAS call cublasLtMatmul(...) failed: CUBLAS_STATUS_NOT_SUPPORTED at ops/cuda/gemm_cublaslt.cpp:328
// Out-of-memory statuses throw OutOfMemoryError instead, so callers can say how much.
//
// Only include this from .cu files or from .cpp files compiled with the CUDA toolkit's
// headers on the include path (the CUDA backend's own sources).
#pragma once

#include <string>

#include "engine/error.h"

namespace subliminal::cuda_detail {

// Builds the message and throws; [[noreturn]] keeps the macros expression-like.
[[noreturn]] void throw_device_error(const char* library, const std::string& status, const char* call,
                                     const char* file, int line, bool out_of_memory);

}  // namespace subliminal::cuda_detail

// CUDA runtime: any cudaError_t other than cudaSuccess throws.
#define CUDA_CHECK(call)                                                                                  \
  do {                                                                                                    \
    cudaError_t status_ = (call);                                                                         \
    if (status_ != cudaSuccess)                                                                           \
      ::subliminal::cuda_detail::throw_device_error("CUDA", cudaGetErrorString(status_), #call, __FILE__, \
                                                    __LINE__, status_ == cudaErrorMemoryAllocation);      \
  } while (0)

// A kernel launch: checks the launch itself (bad configuration), not its completion.
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())

// cuBLAS and cuBLASLt share cublasStatus_t; cublasGetStatusString lives in libcublas.
#define CUBLAS_CHECK(call)                                                                           \
  do {                                                                                               \
    cublasStatus_t status_ = (call);                                                                 \
    if (status_ != CUBLAS_STATUS_SUCCESS)                                                            \
      ::subliminal::cuda_detail::throw_device_error("cuBLAS", cublasGetStatusString(status_), #call, \
                                                    __FILE__, __LINE__,                              \
                                                    status_ == CUBLAS_STATUS_ALLOC_FAILED);          \
  } while (0)

// cuRAND has no status-to-string function; the number is looked up in curand.h.
#define CURAND_CHECK(call)                                                                          \
  do {                                                                                              \
    curandStatus_t status_ = (call);                                                                \
    if (status_ != CURAND_STATUS_SUCCESS)                                                           \
      ::subliminal::cuda_detail::throw_device_error(                                                \
          "cuRAND", "curandStatus_t " + std::to_string(static_cast<int>(status_)), #call, __FILE__, \
          __LINE__, status_ == CURAND_STATUS_ALLOCATION_FAILED);                                    \
  } while (0)

// cuDNN backend/legacy status codes.
#define CUDNN_CHECK(call)                                                                                   \
  do {                                                                                                      \
    cudnnStatus_t status_ = (call);                                                                         \
    if (status_ != CUDNN_STATUS_SUCCESS)                                                                    \
      ::subliminal::cuda_detail::throw_device_error("cuDNN", cudnnGetErrorString(status_), #call, __FILE__, \
                                                    __LINE__, status_ == CUDNN_STATUS_ALLOC_FAILED);        \
  } while (0)
