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

// Number of threads OpenBLAS uses (its own pool); set once by the app's --threads.
void set_blas_threads(int threads);
int blas_threads();
// The kernel family OpenBLAS chose for this CPU at load time ("Haswell", "SkylakeX", "Prescott"...).
std::string blas_core();

}  // namespace subliminal::cpu
