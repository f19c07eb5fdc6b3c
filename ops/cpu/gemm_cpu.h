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

// How a batch of `models` products C[M,N] = A[M,K]·B[K,N] is cut for `threads` threads
// (ops/cpu/gemm_cpu.cpp). Each model's C is cut into `parts` slabs of rows (along_m) or of
// columns, whichever side is longer: a slab a thread, fewer where slabs would be thinner than
// kMinSlabExtent or smaller than kMinSlabMacs (waking a thread costs about a microsecond's
// work). The count does not depend on `models`: each model is cut as it would be alone, so
// model m of a batch gets the bits of its product computed alone. Slab i of the batch's
// models · parts is part i % parts of model i / parts; a thread takes at least `grain` of them
// (above 1 only where even whole products are too small to be worth a thread).
struct GemmPlan {
  int64_t parts = 1;
  bool along_m = true;
  int64_t slabs = 0;
  int64_t grain = 1;
};
inline constexpr int64_t kMinSlabExtent = 16;     // thinner slabs waste OpenBLAS's register blocks
inline constexpr int64_t kMinSlabMacs = 1 << 17;  // ≈ 2 µs of one core's multiply-adds
GemmPlan gemm_plan(int64_t models, int64_t m, int64_t n, int64_t k, int threads);

// Slab `index` of a plan for products C[M,N]: model `model`'s rows (along_m) or columns
// [from, to) of its C (empty only where C has no rows or no columns).
struct GemmSlab {
  int64_t model, from, to;
};
GemmSlab gemm_slab(const GemmPlan& plan, int64_t m, int64_t n, int64_t index);

// The threads OpenBLAS itself uses: 1 (the engine's threads split the products instead;
// engine/parallel.h's set_cpu_threads sets how many).
int blas_threads();
// The address space OpenBLAS maps for `threads` threads calling it at once: a work buffer of
// 128 MiB each (its BUFFER_SIZE on x86-64; 0.3.21 measured), mapped by the first call that
// finds every buffer mapped so far in use, and kept. OpenBLAS retries a mapping that fails
// forever — under an address-space limit (engine/storage.h) that is a hang, not an error — so
// a program under one keeps this much of it spare (apps/subliminal/main.cpp does), and keeps
// OpenBLAS's own threads from starting (apps/subliminal/openblas_env.h): each maps one too.
uint64_t blas_work_buffer_bytes(int threads);
// OpenBLAS's own description of itself: version, build options, kernels ("OpenBLAS 0.3.21
// NO_LAPACKE DYNAMIC_ARCH NO_AFFINITY SkylakeX MAX_THREADS=64").
std::string blas_config();
// The kernel family OpenBLAS chose for this CPU at load time ("Haswell", "SkylakeX", "Prescott"...).
std::string blas_core();

}  // namespace subliminal::cpu
