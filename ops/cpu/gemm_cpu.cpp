// ops/cpu/gemm_cpu.cpp — Linear-layer GEMMs on the CPU through OpenBLAS (cblas), with the
// epilogues (bias, ReLU + bit-mask, ReLU gradient, bias gradient) as loops over the result.
#include "ops/cpu/gemm_cpu.h"

#include <cblas.h>

#include <algorithm>
#include <cstring>

#include "engine/parallel.h"
#include "engine/simd.h"

namespace subliminal::cpu {
namespace {

// cblas_?gemm for float and double behind one name.
void blas_gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int64_t m, int64_t n, int64_t k, float alpha,
               const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta, tb, int(m), int(n), int(k), alpha, a, int(lda), b, int(ldb), beta, c,
              int(ldc));
}
void blas_gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int64_t m, int64_t n, int64_t k, double alpha,
               const double* a, int64_t lda, const double* b, int64_t ldb, double beta, double* c,
               int64_t ldc) {
  cblas_dgemm(CblasRowMajor, ta, tb, int(m), int(n), int(k), alpha, a, int(lda), b, int(ldb), beta, c,
              int(ldc));
}

int64_t mask_row_bytes(int64_t features) { return (features + 127) / 128 * 16; }


}  // namespace

// The loops below are written to vectorise: one pass per row, no read-modify-write of
// mask bytes (each byte is assembled in a register from 8 comparisons, then stored once).

// One row of y (features) gets its bias and ReLU, and its mask bits (row_bytes) when relu.
template <class T>
SUBLIMINAL_HOT_LOOP void bias_activation_row(T* __restrict row, const T* __restrict b, bool relu,
                                             uint8_t* __restrict bits, int64_t features) {
  if (b && relu) {
    // PyTorch's relu: x <= 0 → 0; a NaN stays NaN (x <= 0 is false), as in cuBLASLt's epilogue.
    for (int64_t f = 0; f < features; ++f) row[f] = row[f] + b[f] <= T(0) ? T(0) : row[f] + b[f];
  } else if (b) {
    for (int64_t f = 0; f < features; ++f) row[f] += b[f];
  } else if (relu) {
    for (int64_t f = 0; f < features; ++f) row[f] = row[f] <= T(0) ? T(0) : row[f];
  }
  if (!relu) return;
  // The mask is PyTorch's threshold_backward gate: the gradient passes unless the output is
  // <= 0, so a NaN passes (bit 1) and an exact 0 does not (bit 0). (cuBLASLt's epilogue
  // sets the bit at an exact 0 too — the one place the fused GPU path differs; docs/CUDNN.md.)
  const int64_t full_bytes = features / 8, row_bytes = mask_row_bytes(features);
  for (int64_t j = 0; j < full_bytes; ++j) {
    uint8_t byte = 0;
    for (int t = 0; t < 8; ++t) byte |= uint8_t(!(row[8 * j + t] <= T(0))) << t;
    bits[j] = byte;
  }
  for (int64_t j = full_bytes; j < row_bytes; ++j) {
    uint8_t byte = 0;
    for (int t = 0; t < 8 && 8 * j + t < features; ++t) byte |= uint8_t(!(row[8 * j + t] <= T(0))) << t;
    bits[j] = byte;
  }
}

// Rows split across the CPU's threads (engine/parallel.h): each row is computed alone.
template <class T>
void bias_activation(T* y, const T* bias, bool relu, uint8_t* mask, int64_t models, int64_t batch,
                     int64_t features) {
  const int64_t row_bytes = mask_row_bytes(features);
  parallel_for(models * batch, items_per_thread(features), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      bias_activation_row(y + r * features, bias ? bias + r / batch * features : nullptr, relu,
                          relu ? mask + r * row_bytes : nullptr, features);
  });
}

template <class T>
SUBLIMINAL_HOT_LOOP void apply_relu_mask_row(T* __restrict row, const uint8_t* __restrict bits,
                                             int64_t features) {
  // Byte by byte, 8 features per byte: the inner loop has a constant trip count and vectorises.
  const int64_t full_bytes = features / 8;
  for (int64_t j = 0; j < full_bytes; ++j) {
    const unsigned byte = bits[j];
    for (int t = 0; t < 8; ++t) row[8 * j + t] = (byte >> t) & 1u ? row[8 * j + t] : T(0);
  }
  for (int64_t f = 8 * full_bytes; f < features; ++f) row[f] = (bits[f >> 3] >> (f & 7)) & 1 ? row[f] : T(0);
}

template <class T>
void apply_relu_mask(T* dx, const uint8_t* mask, int64_t models, int64_t batch, int64_t features) {
  const int64_t row_bytes = mask_row_bytes(features);
  parallel_for(models * batch, items_per_thread(features), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      apply_relu_mask_row(dx + r * features, mask + r * row_bytes, features);
  });
}

template <class T>
SUBLIMINAL_HOT_LOOP void bias_gradient(const T* d, T* db, int64_t models, int64_t batch, int64_t features) {
  for (int64_t n = 0; n < models; ++n) {
    T* __restrict out = db + n * features;
    std::fill(out, out + features, T(0));
    for (int64_t r = 0; r < batch; ++r) {
      const T* __restrict row = d + (n * batch + r) * features;
      for (int64_t f = 0; f < features; ++f) out[f] += row[f];
    }
  }
}

template <class T>
void linear_forward(const T* x, const T* w, const T* bias, bool relu, T* y, uint8_t* mask, GemmDims d) {
  for (int64_t n = 0; n < d.models; ++n) {
    // y[B,O] = x[B,I] · w[O,I]ᵀ
    blas_gemm(CblasNoTrans, CblasTrans, d.batch, d.out, d.in, T(1), x + n * d.batch * d.in, d.in,
              w + n * d.out * d.in, d.in, T(0), y + n * d.batch * d.out, d.out);
  }
  bias_activation(y, bias, relu, mask, d.models, d.batch, d.out);
}

template <class T>
void linear_backward_input(const T* dy, const T* w, const uint8_t* prev_mask, T* dx, T* dbias_prev,
                           bool accumulate, GemmDims d) {
  // Accumulating into dx while masking it would mask the old contents too; ops/gemm.cpp
  // routes that combination through a temporary, so here accumulate implies no mask.
  for (int64_t n = 0; n < d.models; ++n) {
    // dx[B,I] (+)= dy[B,O] · w[O,I]
    blas_gemm(CblasNoTrans, CblasNoTrans, d.batch, d.in, d.out, T(1), dy + n * d.batch * d.out, d.out,
              w + n * d.out * d.in, d.in, accumulate ? T(1) : T(0), dx + n * d.batch * d.in, d.in);
  }
  if (prev_mask) apply_relu_mask(dx, prev_mask, d.models, d.batch, d.in);
  if (dbias_prev) bias_gradient(dx, dbias_prev, d.models, d.batch, d.in);
}

template <class T>
void linear_backward_weight(const T* dy, const T* x, T* dw, bool accumulate, T* dbias, GemmDims d) {
  for (int64_t n = 0; n < d.models; ++n) {
    // dw[O,I] (+)= dy[B,O]ᵀ · x[B,I]
    blas_gemm(CblasTrans, CblasNoTrans, d.out, d.in, d.batch, T(1), dy + n * d.batch * d.out, d.out,
              x + n * d.batch * d.in, d.in, accumulate ? T(1) : T(0), dw + n * d.out * d.in, d.in);
  }
  if (dbias) bias_gradient(dy, dbias, d.models, d.batch, d.out);
}

void set_blas_threads(int threads) { openblas_set_num_threads(threads); }
int blas_threads() { return openblas_get_num_threads(); }
std::string blas_core() { return openblas_get_corename(); }

#define SUBLIMINAL_INSTANTIATE(T)                                                                     \
  template void linear_forward<T>(const T*, const T*, const T*, bool, T*, uint8_t*, GemmDims);        \
  template void linear_backward_input<T>(const T*, const T*, const uint8_t*, T*, T*, bool, GemmDims); \
  template void linear_backward_weight<T>(const T*, const T*, T*, bool, T*, GemmDims);                \
  template void bias_activation<T>(T*, const T*, bool, uint8_t*, int64_t, int64_t, int64_t);          \
  template void apply_relu_mask<T>(T*, const uint8_t*, int64_t, int64_t, int64_t);                    \
  template void bias_gradient<T>(const T*, T*, int64_t, int64_t, int64_t);
SUBLIMINAL_INSTANTIATE(float)
SUBLIMINAL_INSTANTIATE(double)
#undef SUBLIMINAL_INSTANTIATE

}  // namespace subliminal::cpu
