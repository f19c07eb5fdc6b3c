// ops/cpu/kernels_cpu.h — the CPU backend of the non-GEMM ops: plain loops over host
// arrays, templated on float and double (double for gradient checks). Shapes use
//   R = N·B rows of C columns (logits), cols [c0, c1) = the column range an op looks at.
// "accumulate" means: add into the output instead of overwriting it.
#pragma once

#include <cstdint>

#include "ops/divergence.h"

namespace subliminal::cpu {

// ---- elementwise --------------------------------------------------------------------------
template <class T>
void relu_forward(const T* x, T* y, int64_t n);  // y = x <= 0 ? 0 : x (NaN stays)
template <class T>
void relu_backward(const T* dy, const T* y, T* dx, int64_t n, bool accumulate);  // dx = y <= 0 ? 0 : dy
template <class T>
void scale(const T* x, T scale, T* y, int64_t n, bool accumulate);  // y (+)= scale·x

// ---- column slices: x (R, C) → y (R, c1 − c0) -------------------------------------------
template <class T>
void slice_columns(const T* x, T* y, int64_t rows, int64_t cols, int64_t c0, int64_t c1);
// dx (R, C): dx[:, c0:c1] (+)= dy; when overwriting, columns outside the slice are zeroed.
template <class T>
void slice_columns_backward(const T* dy, T* dx, int64_t rows, int64_t cols, int64_t c0, int64_t c1,
                            bool accumulate);

// ---- softmax family over the last dimension (rows of C) ---------------------------------
template <class T>
void softmax(const T* x, T* y, int64_t rows, int64_t cols);
template <class T>
void log_softmax(const T* x, T* y, int64_t rows, int64_t cols);
// dx = y ⊙ (dy − Σ dy·y)           (y = softmax output)
template <class T>
void softmax_backward(const T* dy, const T* y, T* dx, int64_t rows, int64_t cols, bool accumulate);
// dx = dy − softmax(x)·Σ dy         (y = log_softmax output, softmax = exp(y))
template <class T>
void log_softmax_backward(const T* dy, const T* y, T* dx, int64_t rows, int64_t cols, bool accumulate);

// ---- losses, per model: N models × B rows × C columns ------------------------------------
// loss[n] = (1/B) Σ_b [logsumexp(z[c0:c1]) − z[c0 + label]]     (labels index the slice)
template <class T>
void cross_entropy(const T* logits, const int32_t* labels, T* loss, int64_t models, int64_t batch,
                   int64_t cols, int64_t c0, int64_t c1);
// dlogits[n,b,c0+j] (+)= g[n]·(softmax_j − [j = label])/B; other columns 0 (or untouched)
template <class T>
void cross_entropy_backward(const T* logits, const int32_t* labels, const T* grad_loss, T* dlogits,
                            int64_t models, int64_t batch, int64_t cols, int64_t c0, int64_t c1,
                            bool accumulate);
// loss[n] = T² (1/B) Σ_b D(softmax(t/T), softmax(s/T)) over columns [c0, c1), D the divergence
// (ops/divergence.h); student n learns from teacher n mod `teachers` (student arms sharing a
// teacher need no copies).
template <class T>
void distill(const T* student, const T* teacher, T* loss, int64_t models, int64_t teachers, int64_t batch,
             int64_t cols, int64_t c0, int64_t c1, double temperature, Divergence divergence);
// dstudent[n,b,c0+j] (+)= g[n]·T·∂D/∂z_j /B, z = s/T (T² of the loss times the 1/T inside s/T):
// KL's ∂D/∂z_j = q_j − p_j; JS's = q_j·(h_j − Σ_i q_i h_i), h = ½ log(q/m). Other columns 0 (or
// untouched).
template <class T>
void distill_backward(const T* student, const T* teacher, const T* grad_loss, T* dstudent, int64_t models,
                      int64_t teachers, int64_t batch, int64_t cols, int64_t c0, int64_t c1,
                      double temperature, Divergence divergence, bool accumulate);
// loss[n] = (1/B) Σ_b Σ_c p·(log p − log_q), with p·log p = 0 where p = 0 (PyTorch's kl_div, batchmean)
template <class T>
void kl_div(const T* log_q, const T* p, T* loss, int64_t models, int64_t batch, int64_t cols);
// dlog_q (+)= −g[n]·p/B
template <class T>
void kl_div_backward(const T* p, const T* grad_loss, T* dlog_q, int64_t models, int64_t batch, int64_t cols,
                     bool accumulate);

// counts[n] += #{b : argmax_{c ∈ [c0,c1)} logits[n,b,c] − c0 == labels[n,b]}  (first maximum wins; NaN is
// maximal)
template <class T>
void count_correct(const T* logits, const int32_t* labels, int64_t* counts, int64_t models, int64_t batch,
                   int64_t cols, int64_t c0, int64_t c1);

}  // namespace subliminal::cpu
