// ops/cpu/kernels_cpu.cpp — loops for every non-GEMM op (see kernels_cpu.h for shapes).
//
// Row math (max, log-sum-exp, the loss of one sample) runs in double whatever T is: the
// rows are short (13 logits), and the per-model means then carry no summation-order noise
// worth talking about. The CUDA kernels use float row math with double batch sums, except the
// distillation loss (KL or JS), whose rows they also compute in double (a small difference of logs), and
// kl_div, which sums within each warp in float and only across warps in double.
#include "ops/cpu/kernels_cpu.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <utility>

#include "engine/error.h"
#include "engine/simd.h"

namespace subliminal::cpu {
namespace {

template <class T>
void store(T* out, double value, bool accumulate) {
  *out = accumulate ? T(*out + value) : T(value);
}

// log Σ exp(row[0..n)) computed as m + log Σ exp(row − m), m = max(row): every exp is then
// ≤ 1 (no overflow for large logits) and the largest is exactly 1 (no log of an underflowed
// 0 for very negative ones). A NaN with a finite entry beside it makes the sum NaN; std::max
// skips NaN, so a row of NaNs and −infs gives −inf here — its callers' results (x − lse,
// lse − x at the label) are NaN all the same.
template <class T>
double log_sum_exp(const T* row, int64_t n) {
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < n; ++j) m = std::max(m, double(row[j]));
  if (std::isinf(m)) return m;  // all −inf (or +inf): nothing to shift by
  double s = 0;
  for (int64_t j = 0; j < n; ++j) s += std::exp(double(row[j]) - m);
  return m + std::log(s);
}

void check_label(int32_t label, int64_t classes) {
  if (label < 0 || label >= classes)
    throw ShapeError("label " + std::to_string(label) + " outside the " + std::to_string(classes) +
                     " classes");
}

}  // namespace

template <class T>
SUBLIMINAL_HOT_LOOP void relu_forward(const T* x, T* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] <= T(0) ? T(0) : x[i];  // NaN stays NaN, as torch.relu
}

template <class T>
SUBLIMINAL_HOT_LOOP void relu_backward(const T* dy, const T* y, T* dx, int64_t n, bool accumulate) {
  for (int64_t i = 0; i < n; ++i)
    store(dx + i, y[i] <= T(0) ? 0.0 : double(dy[i]), accumulate);  // threshold_backward
}

template <class T>
SUBLIMINAL_HOT_LOOP void scale(const T* x, T s, T* y, int64_t n, bool accumulate) {
  for (int64_t i = 0; i < n; ++i) y[i] = accumulate ? y[i] + s * x[i] : s * x[i];
}

template <class T>
void slice_columns(const T* x, T* y, int64_t rows, int64_t cols, int64_t c0, int64_t c1) {
  const int64_t w = c1 - c0;
  for (int64_t r = 0; r < rows; ++r) std::copy(x + r * cols + c0, x + r * cols + c1, y + r * w);
}

template <class T>
void slice_columns_backward(const T* dy, T* dx, int64_t rows, int64_t cols, int64_t c0, int64_t c1,
                            bool accumulate) {
  const int64_t w = c1 - c0;
  for (int64_t r = 0; r < rows; ++r) {
    T* out = dx + r * cols;
    if (!accumulate) std::fill(out, out + cols, T(0));
    for (int64_t j = 0; j < w; ++j) out[c0 + j] += dy[r * w + j];
  }
}

template <class T>
void softmax(const T* x, T* y, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    double lse = log_sum_exp(x + r * cols, cols);
    for (int64_t j = 0; j < cols; ++j) y[r * cols + j] = T(std::exp(double(x[r * cols + j]) - lse));
  }
}

template <class T>
void log_softmax(const T* x, T* y, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    double lse = log_sum_exp(x + r * cols, cols);
    for (int64_t j = 0; j < cols; ++j) y[r * cols + j] = T(double(x[r * cols + j]) - lse);
  }
}

template <class T>
void softmax_backward(const T* dy, const T* y, T* dx, int64_t rows, int64_t cols, bool accumulate) {
  for (int64_t r = 0; r < rows; ++r) {
    const T *g = dy + r * cols, *s = y + r * cols;
    double dot = 0;
    for (int64_t j = 0; j < cols; ++j) dot += double(g[j]) * double(s[j]);
    for (int64_t j = 0; j < cols; ++j)
      store(dx + r * cols + j, double(s[j]) * (double(g[j]) - dot), accumulate);
  }
}

template <class T>
void log_softmax_backward(const T* dy, const T* y, T* dx, int64_t rows, int64_t cols, bool accumulate) {
  for (int64_t r = 0; r < rows; ++r) {
    const T *g = dy + r * cols, *l = y + r * cols;
    double total = 0;
    for (int64_t j = 0; j < cols; ++j) total += double(g[j]);
    for (int64_t j = 0; j < cols; ++j)
      store(dx + r * cols + j, double(g[j]) - std::exp(double(l[j])) * total, accumulate);
  }
}

template <class T>
void cross_entropy(const T* logits, const int32_t* labels, T* loss, int64_t models, int64_t batch,
                   int64_t cols, int64_t c0, int64_t c1) {
  for (int64_t n = 0; n < models; ++n) {
    double total = 0;
    for (int64_t b = 0; b < batch; ++b) {
      const T* z = logits + (n * batch + b) * cols + c0;
      int32_t label = labels[n * batch + b];
      check_label(label, c1 - c0);
      total += log_sum_exp(z, c1 - c0) - double(z[label]);
    }
    loss[n] = T(total / double(batch));
  }
}

template <class T>
void cross_entropy_backward(const T* logits, const int32_t* labels, const T* grad_loss, T* dlogits,
                            int64_t models, int64_t batch, int64_t cols, int64_t c0, int64_t c1,
                            bool accumulate) {
  for (int64_t n = 0; n < models; ++n) {
    const double g = double(grad_loss[n]) / double(batch);
    for (int64_t b = 0; b < batch; ++b) {
      const T* z = logits + (n * batch + b) * cols;
      T* dz = dlogits + (n * batch + b) * cols;
      int32_t label = labels[n * batch + b];
      check_label(label, c1 - c0);
      double lse = log_sum_exp(z + c0, c1 - c0);
      for (int64_t c = 0; c < cols; ++c) {
        if (c < c0 || c >= c1) {
          if (!accumulate) dz[c] = T(0);
          continue;
        }
        double p = std::exp(double(z[c]) - lse);
        store(dz + c, g * (p - (c - c0 == label ? 1.0 : 0.0)), accumulate);
      }
    }
  }
}

namespace {

// One sample's log-sum-exps of s/T (student) and t/T (teacher) over the slice, with the same
// max shift as log_sum_exp: log q_j = s_j/T − lse_student, log p_j = t_j/T − lse_teacher.
struct DistillRow {
  double lse_student, lse_teacher;
};
template <class T>
DistillRow distill_row(const T* s, const T* t, int64_t width, double temperature) {
  double ms = -std::numeric_limits<double>::infinity(), mt = ms;
  for (int64_t j = 0; j < width; ++j) {
    ms = std::max(ms, double(s[j]) / temperature);
    mt = std::max(mt, double(t[j]) / temperature);
  }
  double ss = 0, st = 0;
  for (int64_t j = 0; j < width; ++j) {
    ss += std::exp(double(s[j]) / temperature - ms);
    st += std::exp(double(t[j]) / temperature - mt);
  }
  return {ms + std::log(ss), mt + std::log(st)};
}

// log m = log((p + q)/2) from log p and log q, without exp's overflow or a log of an
// underflowed 0: hi + log1p(exp(lo − hi)) − log 2. A NaN in either gives NaN; both −inf, −inf.
inline double log_mixture(double log_p, double log_q) {
  const double hi = log_p > log_q ? log_p : log_q,
               lo = log_p > log_q ? log_q : log_p;  // a NaN lands in lo or hi
  constexpr double kLog2 = 0.69314718055994530942;
  if (lo == -std::numeric_limits<double>::infinity()) return hi - kLog2;
  return hi + std::log1p(std::exp(lo - hi)) - kLog2;
}

// One sample's divergence over the slice (before the T² and the batch mean).
//   kl: Σ p·(log p − log q), 0·log 0 = 0
//   js: ½ Σ [p·(log p − log m) + q·(log q − log m)], m = (p + q)/2, terms of a zero p or q left out
template <class T>
double distill_row_loss(const T* s, const T* t, int64_t width, double temperature, Divergence divergence) {
  const DistillRow row = distill_row(s, t, width, temperature);
  double total = 0;
  for (int64_t j = 0; j < width; ++j) {
    const double log_p = double(t[j]) / temperature - row.lse_teacher;
    const double log_q = double(s[j]) / temperature - row.lse_student;
    const double p = std::exp(log_p);
    if (divergence == Divergence::kl) {
      if (p != 0) total += p * (log_p - log_q);  // != 0, not > 0: a NaN p (a NaN teacher) stays in
      continue;
    }
    const double q = std::exp(log_q), log_m = log_mixture(log_p, log_q);
    if (p != 0) total += p * (log_p - log_m);
    if (q != 0) total += q * (log_q - log_m);
  }
  return divergence == Divergence::js ? total / 2 : total;
}

}  // namespace

template <class T>
void distill(const T* student, const T* teacher, T* loss, int64_t models, int64_t teachers, int64_t batch,
             int64_t cols, int64_t c0, int64_t c1, double temperature, Divergence divergence) {
  for (int64_t n = 0; n < models; ++n) {
    double total = 0;
    for (int64_t b = 0; b < batch; ++b)
      total += distill_row_loss(student + (n * batch + b) * cols + c0,
                                teacher + ((n % teachers) * batch + b) * cols + c0, c1 - c0, temperature,
                                divergence);
    loss[n] = T(temperature * temperature * total / double(batch));
  }
}

// ∂/∂s_c of T²·D(p, q) with q = softmax(s/T), over the slice:
//   kl: T·(q_c − p_c)
//   js: T·q_c·(h_c − Σ_j q_j h_j), h = ½ log(q/m)   (∂JS/∂q = h, then softmax's Jacobian)
template <class T>
void distill_backward(const T* student, const T* teacher, const T* grad_loss, T* dstudent, int64_t models,
                      int64_t teachers, int64_t batch, int64_t cols, int64_t c0, int64_t c1,
                      double temperature, Divergence divergence, bool accumulate) {
  const int64_t width = c1 - c0;
  for (int64_t n = 0; n < models; ++n) {
    const double g = double(grad_loss[n]) * temperature / double(batch);
    for (int64_t b = 0; b < batch; ++b) {
      const T* s = student + (n * batch + b) * cols;
      const T* t = teacher + ((n % teachers) * batch + b) * cols;
      T* ds = dstudent + (n * batch + b) * cols;
      const DistillRow row = distill_row(s + c0, t + c0, width, temperature);
      auto log_q_at = [&](int64_t c) { return double(s[c]) / temperature - row.lse_student; };
      auto log_p_at = [&](int64_t c) { return double(t[c]) / temperature - row.lse_teacher; };
      // JS: q_c and h_c = ½ log(q_c/m_c), needed twice: for Σ q·h, then for each column's ds
      auto q_and_h = [&](int64_t c) {
        const double log_q = log_q_at(c);
        return std::pair{std::exp(log_q), (log_q - log_mixture(log_p_at(c), log_q)) / 2};
      };
      double mean_h = 0;  // Σ_j q_j h_j (js only; an underflowed q adds nothing)
      if (divergence == Divergence::js)
        for (int64_t c = c0; c < c1; ++c)
          if (const auto [q, h] = q_and_h(c); q != 0) mean_h += q * h;
      for (int64_t c = 0; c < cols; ++c) {
        if (c < c0 || c >= c1) {
          if (!accumulate) ds[c] = T(0);
          continue;
        }
        double d;
        if (divergence == Divergence::kl) {
          d = std::exp(log_q_at(c)) - std::exp(log_p_at(c));
        } else {
          const auto [q, h] = q_and_h(c);
          d = q == 0 ? 0.0 : q * (h - mean_h);
        }
        store(ds + c, g * d, accumulate);
      }
    }
  }
}

template <class T>
void kl_div(const T* log_q, const T* p, T* loss, int64_t models, int64_t batch, int64_t cols) {
  for (int64_t n = 0; n < models; ++n) {
    double total = 0;
    for (int64_t i = n * batch * cols; i < (n + 1) * batch * cols; ++i)
      if (p[i] != T(0))
        total += double(p[i]) * (std::log(double(p[i])) - double(log_q[i]));  // a NaN stays in
    loss[n] = T(total / double(batch));
  }
}

template <class T>
void kl_div_backward(const T* p, const T* grad_loss, T* dlog_q, int64_t models, int64_t batch, int64_t cols,
                     bool accumulate) {
  for (int64_t n = 0; n < models; ++n) {
    const double g = double(grad_loss[n]) / double(batch);
    for (int64_t i = n * batch * cols; i < (n + 1) * batch * cols; ++i)
      store(dlog_q + i, -g * double(p[i]), accumulate);
  }
}

template <class T>
void count_correct(const T* logits, const int32_t* labels, int64_t* counts, int64_t models, int64_t batch,
                   int64_t cols, int64_t c0, int64_t c1) {
  for (int64_t n = 0; n < models; ++n) {
    int64_t correct = 0;
    for (int64_t b = 0; b < batch; ++b) {
      const T* z = logits + (n * batch + b) * cols;
      int64_t best = c0;
      for (int64_t c = c0 + 1; c < c1; ++c) {
        if (std::isnan(z[best])) break;  // a NaN is the maximum, and the first one wins
        if (std::isnan(z[c]) || z[c] > z[best]) best = c;
      }
      correct += (best - c0 == labels[n * batch + b]);
    }
    counts[n] += correct;
  }
}

#define SUBLIMINAL_INSTANTIATE(T)                                                                            \
  template void relu_forward<T>(const T*, T*, int64_t);                                                      \
  template void relu_backward<T>(const T*, const T*, T*, int64_t, bool);                                     \
  template void scale<T>(const T*, T, T*, int64_t, bool);                                                    \
  template void slice_columns<T>(const T*, T*, int64_t, int64_t, int64_t, int64_t);                          \
  template void slice_columns_backward<T>(const T*, T*, int64_t, int64_t, int64_t, int64_t, bool);           \
  template void softmax<T>(const T*, T*, int64_t, int64_t);                                                  \
  template void log_softmax<T>(const T*, T*, int64_t, int64_t);                                              \
  template void softmax_backward<T>(const T*, const T*, T*, int64_t, int64_t, bool);                         \
  template void log_softmax_backward<T>(const T*, const T*, T*, int64_t, int64_t, bool);                     \
  template void cross_entropy<T>(const T*, const int32_t*, T*, int64_t, int64_t, int64_t, int64_t, int64_t); \
  template void cross_entropy_backward<T>(const T*, const int32_t*, const T*, T*, int64_t, int64_t, int64_t, \
                                          int64_t, int64_t, bool);                                           \
  template void distill<T>(const T*, const T*, T*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,     \
                           double, Divergence);                                                              \
  template void distill_backward<T>(const T*, const T*, const T*, T*, int64_t, int64_t, int64_t, int64_t,    \
                                    int64_t, int64_t, double, Divergence, bool);                             \
  template void kl_div<T>(const T*, const T*, T*, int64_t, int64_t, int64_t);                                \
  template void kl_div_backward<T>(const T*, const T*, T*, int64_t, int64_t, int64_t, bool);                 \
  template void count_correct<T>(const T*, const int32_t*, int64_t*, int64_t, int64_t, int64_t, int64_t,     \
                                 int64_t);
SUBLIMINAL_INSTANTIATE(float)
SUBLIMINAL_INSTANTIATE(double)
#undef SUBLIMINAL_INSTANTIATE

}  // namespace subliminal::cpu
