// ops/cudnn/cudnn_linear.h — the MLP's Linear layers through cuDNN's graph API (cudnn-frontend):
// a second GPU engine beside the cuBLASLt path, built to be compared with it.
//
// Every tensor is float32, contiguous, row-major, with a leading "models" dimension n (n independent
// models trained at once; n = 1 normally). For one Linear layer with i inputs and o outputs:
//   x[n,b,i]  w[n,o,i]  bias[n,o]  y[n,b,o]      (b = batch rows)
//
// Each call returns false — without throwing and without writing anything — when cuDNN cannot run
// the graph on this GPU and cuDNN version (no engine config, check_support or build_plans fails, or
// a pointer is not 16-byte aligned); the caller then falls back to cuBLASLt
// (ops/cuda/cudnn_route.cpp lists each such graph once in gemm::fallback_report()). Real faults (a failed
// execution, CUDA errors) throw DeviceError. Dimensions ≤ 0 or a missing required pointer throw ShapeError.
//
// Graphs are built once per (op, shape, flags) and cached; building costs milliseconds to seconds
// (some engines compile kernels at run time), running costs microseconds. All cuDNN code lives in
// cudnn_linear.cpp, one translation unit, because the frontend headers are slow to compile; this
// header includes none of them.
#pragma once

#include <cuda_runtime_api.h>  // cudaStream_t

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace subliminal::cudnn {

struct Options {
  // Allow TF32 tensor-core engines for the matmuls (≈ 10-bit mantissa inputs, float32 accumulate).
  // Off: only engines without cuDNN's TENSOR_CORE numerical note are kept, i.e. true fp32 math.
  bool tf32 = false;
};

// One engine per CUDA stream. Owns a cudnnHandle_t bound to the stream, a workspace grown on demand
// (stream-ordered allocations), and the graph caches. Not thread-safe; not copyable. Destroy it
// before its stream (its buffers are freed on that stream).
class Engine {
 public:
  // Throws DeviceError when cuDNN cannot start (e.g. no GPU: cudnnCreate fails).
  explicit Engine(cudaStream_t stream);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // y[n,b,o] = act(x[n,b,i] · w[n,o,i]ᵀ + bias[n,o]),  act = relu (relu == true) or identity.
  bool linear_forward(const float* x, const float* w, const float* bias, float* y, int64_t n, int64_t b,
                      int64_t i, int64_t o, bool relu, Options options);

  // dx[n,b,i] = (dy[n,b,o] · w[n,o,i]) ⊙ [y_prev[n,b,i] > 0]
  //   y_prev is the previous layer's post-ReLU output (y_prev > 0 exactly where its pre-activation
  //   is > 0, so relu'(0) = 0). When dbias_prev != nullptr, also
  // dbias_prev[n,i] = Σ_b dx[n,b,i]   (overwritten, not accumulated)
  bool linear_backward_input(const float* dy, const float* w, const float* y_prev, float* dx,
                             float* dbias_prev, int64_t n, int64_t b, int64_t i, int64_t o, Options options);

  // dw[n,o,i] = dy[n,b,o]ᵀ · x[n,b,i] + beta · dw[n,o,i]   (beta = 0 overwrites, beta = 1
  //   accumulates; any other beta returns false). When dbias != nullptr, also
  // dbias[n,o] = Σ_b dy[n,b,o]   (overwritten)
  bool linear_backward_weight(const float* dy, const float* x, float* dw, float* dbias, float beta, int64_t n,
                              int64_t b, int64_t i, int64_t o, Options options);

  // One line: cuDNN version, GPU, and for every (op, shape, flags) seen so far which strategy ran
  // (fused / split, with the engine name) or why none could.
  std::string describe_support() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The cuDNN library this process loaded and the frontend it was built with: "cuDNN 9.19.0
// (frontend 1.8.0)". Needs no GPU.
std::string library_version();

// Builds every graph this engine can use for one shape and runs validate() only: no GPU needed
// (cudnnCreate is not called). Returns (graph name, "ok" or the frontend's error message) pairs.
std::vector<std::pair<std::string, std::string>> validate_graphs_without_gpu(int64_t n, int64_t b, int64_t i,
                                                                             int64_t o);

}  // namespace subliminal::cudnn
