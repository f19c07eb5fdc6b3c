// ops/cuda/loss_rows.cuh — the losses for one row of logits, computed by one warp: the
// row math shared by the loss kernels (ops/cuda/rowwise.cu) and both designs of the fused
// training step (ops/cuda/fused_program.cuh, ops/cuda/cluster_program.cuh), so all of them
// compute exactly the same thing.
//
// A row is a sample's logits (cols values); the loss reads the columns [c0, c1). Lanes stride
// over the columns and combine with shuffles. Loads go through L2 only (__ldcg), the fused
// step's rule for data written in the same kernel (there, by the warp's own lanes just before).
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "ops/divergence.h"

namespace subliminal::cuda::rows {

constexpr unsigned kFull = 0xffffffffu;

__device__ inline float warp_max(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(kFull, v, offset));
  return v;
}
__device__ inline float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFull, v, offset);
  return v;
}
__device__ inline double warp_sum_double(double v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFull, v, offset);
  return v;
}

// log Σ_j exp(scale·x[j]) over one row of n values, computed by a whole warp.
// A NaN with a finite entry beside it makes the sum NaN; fmaxf skips NaN, so a row of NaNs and
// −infs gives −inf — as on the CPU, and its callers' results (x − lse) are NaN all the same.
__device__ inline float warp_log_sum_exp(const float* x, int64_t n, float scale) {
  const int lane = threadIdx.x & 31;
  float m = -INFINITY;
  for (int64_t j = lane; j < n; j += 32) m = fmaxf(m, scale * __ldcg(&x[j]));
  m = warp_max(m);
  if (isinf(m)) return m;
  float s = 0.0f;
  for (int64_t j = lane; j < n; j += 32) s += expf(scale * __ldcg(&x[j]) - m);
  return m + logf(warp_sum(s));
}

// The same in double precision, for the distillation loss: KL between two nearly equal
// softmaxes is a small difference of logs (the parity check against PyTorch measured a 3e-4
// relative error with float row math on an H200; double brings it to the inputs' rounding).
__device__ inline double warp_log_sum_exp_double(const float* x, int64_t n, double scale) {
  const int lane = threadIdx.x & 31;
  double m = -INFINITY;
  for (int64_t j = lane; j < n; j += 32) m = fmax(m, scale * double(__ldcg(&x[j])));
  for (int offset = 16; offset > 0; offset >>= 1) m = fmax(m, __shfl_xor_sync(kFull, m, offset));
  if (isinf(m)) return m;
  double s = 0.0;
  for (int64_t j = lane; j < n; j += 32) s += exp(scale * double(__ldcg(&x[j])) - m);
  for (int offset = 16; offset > 0; offset >>= 1) s += __shfl_xor_sync(kFull, s, offset);
  return m + log(s);
}

// Cross-entropy of row z against `label` (a column index relative to c0): returns
// lse − z[c0 + label] (NaN for a label outside the range: a bad label poisons the loss), the
// same on every lane. With dz: dz[c] (+)= g·(softmax(z)[c] − onehot) on [c0, c1) and, when
// overwriting, 0 elsewhere.
__device__ inline double cross_entropy_row(const float* z, int64_t cols, int64_t c0, int64_t c1, int32_t label,
                                           float g, float* dz, bool accumulate) {
  const int lane = threadIdx.x & 31;
  const float lse = warp_log_sum_exp(z + c0, c1 - c0, 1.0f);
  const float picked = (label >= 0 && label < c1 - c0) ? __ldcg(&z[c0 + label]) : NAN;
  if (dz) {
    for (int64_t c = lane; c < cols; c += 32) {
      const bool inside = c >= c0 && c < c1;
      if (!inside && accumulate) continue;
      const float v = inside ? g * (expf(__ldcg(&z[c]) - lse) - (c - c0 == label ? 1.0f : 0.0f)) : 0.0f;
      dz[c] = accumulate ? dz[c] + v : v;
    }
  }
  return double(lse) - double(picked);
}

// KL(softmax(t/T) ‖ softmax(s/T)) over [c0, c1) of a student row s and a teacher row t,
// summed over the warp (the same on every lane). With ds: ds[c] (+)= g·(q − p)[c] on
// [c0, c1), q = softmax(s/T), p = softmax(t/T), and, when overwriting, 0 elsewhere.
__device__ inline double distill_kl_row(const float* s, const float* t, int64_t cols, int64_t c0, int64_t c1,
                                        double inv_t, double g, float* ds, bool accumulate) {
  const int lane = threadIdx.x & 31;
  const double lse_s = warp_log_sum_exp_double(s + c0, c1 - c0, inv_t);
  const double lse_t = warp_log_sum_exp_double(t + c0, c1 - c0, inv_t);
  double kl = 0.0;
  for (int64_t j = c0 + lane; j < c1; j += 32) {
    const double log_p = double(__ldcg(&t[j])) * inv_t - lse_t, log_q = double(__ldcg(&s[j])) * inv_t - lse_s;
    const double p = exp(log_p);
    if (p != 0.0) kl += p * (log_p - log_q);  // != 0, not > 0: a NaN p (a NaN teacher) stays in
  }
  if (ds) {
    for (int64_t c = lane; c < cols; c += 32) {
      const bool inside = c >= c0 && c < c1;
      if (!inside && accumulate) continue;
      const float v = inside ? float(g * (exp(double(__ldcg(&s[c])) * inv_t - lse_s) -
                                          exp(double(__ldcg(&t[c])) * inv_t - lse_t)))
                             : 0.0f;
      ds[c] = accumulate ? ds[c] + v : v;
    }
  }
  return warp_sum_double(kl);
}

// log m = log((p + q)/2) from log p and log q: hi + log1p(exp(lo − hi)) − log 2, as on the CPU
// (ops/cpu/kernels_cpu.cpp's log_mixture). A NaN in either gives NaN; both −inf, −inf.
__device__ inline double log_mixture(double log_p, double log_q) {
  const double hi = log_p > log_q ? log_p : log_q,
               lo = log_p > log_q ? log_q : log_p;  // a NaN lands in lo or hi
  constexpr double kLog2 = 0.69314718055994530942;
  if (lo == -INFINITY) return hi - kLog2;
  return hi + log1p(exp(lo - hi)) - kLog2;
}

// JS(p, q) = ½ Σ [p·(log p − log m) + q·(log q − log m)], m = (p + q)/2, p = softmax(t/T),
// q = softmax(s/T), over [c0, c1) of a student row s and a teacher row t, summed over the warp
// (the same on every lane; terms of a zero p or q left out). With ds: ds[c] (+)= g·q·(h − Σ q·h)[c]
// on [c0, c1), h = ½ log(q/m) (∂JS/∂q, then softmax's Jacobian), and, when overwriting, 0
// elsewhere. Two passes over the row: Σ q·h is needed before any ds.
__device__ inline double distill_js_row(const float* s, const float* t, int64_t cols, int64_t c0, int64_t c1,
                                        double inv_t, double g, float* ds, bool accumulate) {
  const int lane = threadIdx.x & 31;
  const double lse_s = warp_log_sum_exp_double(s + c0, c1 - c0, inv_t);
  const double lse_t = warp_log_sum_exp_double(t + c0, c1 - c0, inv_t);
  double js = 0.0, qh = 0.0;
  for (int64_t j = c0 + lane; j < c1; j += 32) {
    const double log_p = double(__ldcg(&t[j])) * inv_t - lse_t, log_q = double(__ldcg(&s[j])) * inv_t - lse_s;
    const double log_m = log_mixture(log_p, log_q), p = exp(log_p), q = exp(log_q);
    if (p != 0.0) js += p * (log_p - log_m);  // != 0, not > 0: a NaN stays in
    if (q != 0.0) {
      js += q * (log_q - log_m);
      qh += q * ((log_q - log_m) / 2);
    }
  }
  const double mean_h = warp_sum_double(qh);  // outside `if (ds)`: every lane reaches the shuffles
  if (ds) {
    for (int64_t c = lane; c < cols; c += 32) {
      const bool inside = c >= c0 && c < c1;
      if (!inside && accumulate) continue;
      float v = 0.0f;
      if (inside) {
        const double log_p = double(__ldcg(&t[c])) * inv_t - lse_t,
                     log_q = double(__ldcg(&s[c])) * inv_t - lse_s;
        const double q = exp(log_q), h = (log_q - log_mixture(log_p, log_q)) / 2;
        v = q == 0.0 ? 0.0f : float(g * q * (h - mean_h));
      }
      ds[c] = accumulate ? ds[c] + v : v;
    }
  }
  return warp_sum_double(js) / 2;
}

// The divergence's row (ops/divergence.h): distill_kl_row or distill_js_row.
__device__ inline double distill_row(Divergence divergence, const float* s, const float* t, int64_t cols,
                                     int64_t c0, int64_t c1, double inv_t, double g, float* ds,
                                     bool accumulate) {
  return divergence == Divergence::js ? distill_js_row(s, t, cols, c0, c1, inv_t, g, ds, accumulate)
                                      : distill_kl_row(s, t, cols, c0, c1, inv_t, g, ds, accumulate);
}

}  // namespace subliminal::cuda::rows
