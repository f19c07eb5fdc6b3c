// ops/cpu/gemm_cpu.h — the CPU backend of ops/gemm.h: OpenBLAS GEMMs plus epilogue loops.
// Raw host pointers; shapes as in ops/gemm.h. T is float or double.
#pragma once

#include <cstdint>
#include <string>

#include "ops/gemm.h"

namespace subliminal::cpu {

using GemmDims = gemm::Dims;

template <class T>
void linear_forward(const T* x, const T* w, const T* bias, bool relu, T* y, uint8_t* mask, GemmDims d);
template <class T>
void linear_backward_input(const T* dy, const T* w, const uint8_t* prev_mask, T* dx, T* dbias_prev,
                           bool accumulate, GemmDims d);
template <class T>
void linear_backward_weight(const T* dy, const T* x, T* dw, bool accumulate, T* dbias, GemmDims d);

// y[N,B,F] += bias[N,F] (bias may be null); relu: y = y <= 0 ? 0 : y (NaN stays), mask bit !(y <= 0).
template <class T>
void bias_activation(T* y, const T* bias, bool relu, uint8_t* mask, int64_t models, int64_t batch,
                     int64_t features);
// dx[N,B,F] *= mask bit
template <class T>
void apply_relu_mask(T* dx, const uint8_t* mask, int64_t models, int64_t batch, int64_t features);
// db[N,F] = Σ_b d[N,b,F]
template <class T>
void bias_gradient(const T* d, T* db, int64_t models, int64_t batch, int64_t features);

// How one model's product C[M,N] = A[M,K]·B[K,N] is cut for `threads` threads
// (ops/cpu/gemm_cpu.cpp): into `parts` slabs of rows (along_m) or of columns, whichever side is
// longer — a slab a thread, fewer where slabs would be thinner than kMinSlabExtent or smaller
// than kMinSlabMacs (waking a thread costs about a microsecond's work).
struct GemmSplit {
  int64_t parts = 1;
  bool along_m = true;
};
inline constexpr int64_t kMinSlabExtent = 16;     // thinner slabs waste OpenBLAS's register blocks
inline constexpr int64_t kMinSlabMacs = 1 << 17;  // ≈ 2 µs of one core's multiply-adds
GemmSplit gemm_split(int64_t m, int64_t n, int64_t k, int threads);

// The threads OpenBLAS itself uses: 1 (the engine's threads split the products instead;
// engine/parallel.h's set_cpu_threads sets how many).
int blas_threads();
// The kernel family OpenBLAS chose for this CPU at load time ("Haswell", "SkylakeX", "Prescott"...).
std::string blas_core();

}  // namespace subliminal::cpu
