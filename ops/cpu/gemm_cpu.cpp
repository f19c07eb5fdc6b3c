// ops/cpu/gemm_cpu.cpp — Linear-layer GEMMs on the CPU through OpenBLAS (cblas), with the
// epilogues (bias, ReLU + bit-mask, ReLU gradient, bias gradient) as loops over the result.
//
// The GEMMs run on the engine's threads (engine/parallel.h), not OpenBLAS's: each model's
// product is cut into slabs of rows (or columns) and every thread takes its share of the slabs
// as single-threaded cblas calls. At this experiment's sizes (256 × 256 × 784 at most) OpenBLAS's
// threads, sharing one product, spend much of their time splitting and joining it: on the 2-core
// development machine a teacher step's GEMMs cut in two slabs, one a thread, run ≈ 13% faster
// than on OpenBLAS's two threads. Two pools would also fight over the cores between the GEMMs,
// where OpenBLAS's threads spin while the engine's loops run. (The default run: 8.6 → 7.5 s,
// docs/PERFORMANCE.md.)
#include "ops/cpu/gemm_cpu.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "engine/parallel.h"
#include "engine/simd.h"

namespace subliminal::cpu {
namespace {

// One product as cblas takes it, row-major: C[M,N] = op(A)[M,K]·op(B)[K,N] + beta·C.
template <class T>
struct Gemm {
  CBLAS_TRANSPOSE ta, tb;  // op(A) = A, or Aᵀ with A stored [K, M]; likewise B, stored [N, K] when transposed
  int64_t m, n, k;
  const T* a;
  int64_t lda;  // A's row stride as stored: ≥ K, or ≥ M when transposed
  const T* b;
  int64_t ldb;  // B's row stride as stored: ≥ N, or ≥ K when transposed
  T beta;       // 0: C is overwritten (whatever it held, NaN too); 1: the product is added to it
  T* c;
  int64_t ldc;  // C's row stride, ≥ N
};

// Rows [m0, m1) of C: op(A)'s rows are A's rows, or A's columns when A is transposed.
template <class T>
Gemm<T> rows_of(Gemm<T> g, int64_t m0, int64_t m1) {
  g.a += g.ta == CblasNoTrans ? m0 * g.lda : m0;
  g.c += m0 * g.ldc;
  g.m = m1 - m0;
  return g;
}
// Columns [n0, n1) of C: op(B)'s columns are B's columns, or B's rows when B is transposed.
template <class T>
Gemm<T> columns_of(Gemm<T> g, int64_t n0, int64_t n1) {
  g.b += g.tb == CblasNoTrans ? n0 : n0 * g.ldb;
  g.c += n0;
  g.n = n1 - n0;
  return g;
}

// cblas_?gemm for float and double behind one name.
void blas_gemm(const Gemm<float>& g) {
  cblas_sgemm(CblasRowMajor, g.ta, g.tb, int(g.m), int(g.n), int(g.k), 1.0f, g.a, int(g.lda), g.b, int(g.ldb),
              g.beta, g.c, int(g.ldc));
}
void blas_gemm(const Gemm<double>& g) {
  cblas_dgemm(CblasRowMajor, g.ta, g.tb, int(g.m), int(g.n), int(g.k), 1.0, g.a, int(g.lda), g.b, int(g.ldb),
              g.beta, g.c, int(g.ldc));
}

// OpenBLAS single-threaded, once, before the first product: its own threads would cut each
// slab again and compete with the engine's for the cores.
void use_blas_single_threaded() {
  static const bool once = [] {
    openblas_set_num_threads(1);
    return true;
  }();
  (void)once;
}

// Runs model_gemm(n)'s product for every model n < models, cut by gemm_plan into slabs shared
// out over the engine's threads in order (two models on two threads: a model each). A slab is
// one cblas call, and a model's slabs depend on its shape and the thread count only (gemm_plan),
// so model m of a batch gets the bits of a run of that model alone, and a run's bits are the
// same on every run at the same --threads.
template <class T, class ModelGemm>
void run_gemms(int64_t models, const ModelGemm& model_gemm) {
  if (models <= 0) return;
  use_blas_single_threaded();
  const Gemm<T> shape = model_gemm(0);  // every model's product has the same shape
  const GemmPlan plan = gemm_plan(models, shape.m, shape.n, shape.k, cpu_threads());
  parallel_for(plan.slabs, plan.grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const GemmSlab slab = gemm_slab(plan, shape.m, shape.n, i);
      if (slab.from == slab.to) continue;
      const Gemm<T> g = model_gemm(slab.model);
      blas_gemm(plan.along_m ? rows_of(g, slab.from, slab.to) : columns_of(g, slab.from, slab.to));
    }
  });
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
  // sets the bit at an exact 0 too — the one place its fused-epilogue path differs; docs/CUDNN.md.)
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
  run_gemms<T>(d.models, [&](int64_t n) {
    // y[B,O] = x[B,I] · w[O,I]ᵀ
    return Gemm<T>{.ta = CblasNoTrans,
                   .tb = CblasTrans,
                   .m = d.batch,
                   .n = d.out,
                   .k = d.in,
                   .a = x + n * d.batch * d.in,
                   .lda = d.in,
                   .b = w + n * d.out * d.in,
                   .ldb = d.in,
                   .beta = T(0),
                   .c = y + n * d.batch * d.out,
                   .ldc = d.out};
  });
  bias_activation(y, bias, relu, mask, d.models, d.batch, d.out);
}

template <class T>
void linear_backward_input(const T* dy, const T* w, const uint8_t* prev_mask, T* dx, T* dbias_prev,
                           bool accumulate, GemmDims d) {
  // Accumulating into dx while masking it would mask the old contents too; ops/gemm.cpp
  // routes that combination through a temporary, so here accumulate implies no mask.
  run_gemms<T>(d.models, [&](int64_t n) {
    // dx[B,I] (+)= dy[B,O] · w[O,I]
    return Gemm<T>{.ta = CblasNoTrans,
                   .tb = CblasNoTrans,
                   .m = d.batch,
                   .n = d.in,
                   .k = d.out,
                   .a = dy + n * d.batch * d.out,
                   .lda = d.out,
                   .b = w + n * d.out * d.in,
                   .ldb = d.in,
                   .beta = accumulate ? T(1) : T(0),
                   .c = dx + n * d.batch * d.in,
                   .ldc = d.in};
  });
  if (prev_mask) apply_relu_mask(dx, prev_mask, d.models, d.batch, d.in);
  if (dbias_prev) bias_gradient(dx, dbias_prev, d.models, d.batch, d.in);
}

template <class T>
void linear_backward_weight(const T* dy, const T* x, T* dw, bool accumulate, T* dbias, GemmDims d) {
  run_gemms<T>(d.models, [&](int64_t n) {
    // dw[O,I] (+)= dy[B,O]ᵀ · x[B,I]
    return Gemm<T>{.ta = CblasTrans,
                   .tb = CblasNoTrans,
                   .m = d.out,
                   .n = d.in,
                   .k = d.batch,
                   .a = dy + n * d.batch * d.out,
                   .lda = d.out,
                   .b = x + n * d.batch * d.in,
                   .ldb = d.in,
                   .beta = accumulate ? T(1) : T(0),
                   .c = dw + n * d.out * d.in,
                   .ldc = d.in};
  });
  if (dbias) bias_gradient(dy, dbias, d.models, d.batch, d.out);
}

GemmPlan gemm_plan(int64_t models, int64_t m, int64_t n, int64_t k, int threads) {
  GemmPlan plan;
  plan.along_m = m >= n;
  const int64_t extent = plan.along_m ? m : n;
  const double macs = double(m) * double(n) * double(k);  // (in double: no overflow at any size)
  // A slab per thread, as long as slabs stay worth one — whatever the number of models.
  plan.parts = std::max(1, threads);
  while (plan.parts > 1 && (extent / plan.parts < kMinSlabExtent || macs / double(plan.parts) < kMinSlabMacs))
    --plan.parts;
  plan.slabs = std::max<int64_t>(models, 0) * plan.parts;
  // Whole products too small for a thread of their own go several to a thread, or all on the
  // caller: which thread runs a slab changes no bits.
  const double slab_macs = std::max(1.0, macs / double(plan.parts));
  plan.grain = std::clamp<int64_t>(int64_t(std::ceil(double(kMinSlabMacs) / slab_macs)), 1,
                                   std::max<int64_t>(plan.slabs, 1));
  return plan;
}

GemmSlab gemm_slab(const GemmPlan& plan, int64_t m, int64_t n, int64_t index) {
  const int64_t part = index % plan.parts, extent = plan.along_m ? m : n;
  return GemmSlab{index / plan.parts, extent * part / plan.parts, extent * (part + 1) / plan.parts};
}

int blas_threads() {
  use_blas_single_threaded();
  return openblas_get_num_threads();
}
uint64_t blas_work_buffer_bytes(int threads) {
  return uint64_t(std::max(threads, 1)) * (uint64_t(128) << 20);
}
std::string blas_config() { return openblas_get_config(); }
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
