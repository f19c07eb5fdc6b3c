// ops/cuda/rowwise.cu — softmax, log-softmax, the losses (cross-entropy, distillation KL or JS,
// and PyTorch's plain kl_div) and accuracy counting.
//
// One warp per row (a sample's logits): lanes stride over the columns and combine with
// shuffles. Per-model losses use one block per model: its warps take rows in turn, lane 0
// of each keeps a double running sum, and thread 0 adds the warps' sums in a fixed order —
// the same bits on every run (no float atomics). kl_div, elementwise, differs only in its
// first step: each thread sums its elements in float, then a warp sum.
#include <cuda_runtime.h>

#include <cmath>

#include "engine/cuda/check.h"
#include "engine/cuda/launch.cuh"
#include "engine/cuda/runtime.h"
#include "ops/cuda/kernels_cuda.h"
#include "ops/cuda/loss_rows.cuh"

namespace subliminal::cuda {
namespace {

using rows::kFull;
using rows::warp_log_sum_exp;
using rows::warp_sum;
constexpr int kWarps = kThreads / 32;

// Adds each warp's lane-0 `value` in warp order; thread 0 gets the block's total.
__device__ double block_sum_in_order(double value) {
  __shared__ double partial[kWarps];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) partial[warp] = value;
  __syncthreads();
  double total = 0;
  if (threadIdx.x == 0)
    for (int w = 0; w < kWarps; ++w) total += partial[w];
  return total;
}

#define WARP_PER_ROW(row, rows)                                                       \
  for (int64_t row = blockIdx.x * int64_t(kWarps) + (threadIdx.x >> 5); row < (rows); \
       row += int64_t(gridDim.x) * kWarps)

unsigned row_grid(int64_t rows) { return grid_for(rows * 32); }
cudaStream_t stream() { return Runtime::get().stream(); }

// ---- softmax family: x, y, dy, dx are (rows, cols) ----------------------------------------

template <bool kLog>
__global__ void softmax_kernel(const float* __restrict__ x, float* __restrict__ y, int64_t rows,
                               int64_t cols) {
  const int lane = threadIdx.x & 31;
  WARP_PER_ROW(r, rows) {
    const float lse = warp_log_sum_exp(x + r * cols, cols, 1.0f);
    for (int64_t j = lane; j < cols; j += 32) {
      const float shifted = x[r * cols + j] - lse;
      y[r * cols + j] = kLog ? shifted : expf(shifted);
    }
  }
}

template <bool kLog>
__global__ void softmax_backward_kernel(const float* __restrict__ dy, const float* __restrict__ y, float* dx,
                                        int64_t rows, int64_t cols, bool accumulate) {
  const int lane = threadIdx.x & 31;
  WARP_PER_ROW(r, rows) {
    const float* g = dy + r * cols;
    const float* out = y + r * cols;
    float reduce = 0.0f;  // Σ dy (log-softmax) or Σ dy·y (softmax)
    for (int64_t j = lane; j < cols; j += 32) reduce += kLog ? g[j] : g[j] * out[j];
    reduce = warp_sum(reduce);
    for (int64_t j = lane; j < cols; j += 32) {
      const float v = kLog ? g[j] - expf(out[j]) * reduce : out[j] * (g[j] - reduce);
      dx[r * cols + j] = accumulate ? dx[r * cols + j] + v : v;
    }
  }
}

// ---- losses: logits (N, B, cols); loss, grad_loss (N,) --------------------------------------

__global__ void cross_entropy_kernel(const float* __restrict__ logits, const int32_t* __restrict__ labels,
                                     float* __restrict__ loss, int64_t batch, int64_t cols, int64_t c0,
                                     int64_t c1) {
  const int64_t n = blockIdx.x;
  const int lane = threadIdx.x & 31;
  double sum = 0;
  for (int64_t b = threadIdx.x >> 5; b < batch; b += kWarps) {
    const double row = rows::cross_entropy_row(logits + (n * batch + b) * cols, cols, c0, c1, labels[n * batch + b],
                                               0.0f, nullptr, false);
    if (lane == 0) sum += row;
  }
  const double total = block_sum_in_order(sum);
  if (threadIdx.x == 0) loss[n] = float(total / double(batch));
}

__global__ void cross_entropy_backward_kernel(const float* __restrict__ logits,
                                              const int32_t* __restrict__ labels,
                                              const float* __restrict__ grad_loss, float* dlogits,
                                              int64_t models, int64_t batch, int64_t cols, int64_t c0,
                                              int64_t c1, bool accumulate) {
  WARP_PER_ROW(r, models * batch) {
    rows::cross_entropy_row(logits + r * cols, cols, c0, c1, labels[r], grad_loss[r / batch] / float(batch),
                            dlogits + r * cols, accumulate);
  }
}

// Student model n learns from teacher model n mod `teachers`.
__global__ void distill_kernel(const float* __restrict__ student, const float* __restrict__ teacher,
                               float* __restrict__ loss, int64_t teachers, int64_t batch, int64_t cols,
                               int64_t c0, int64_t c1, double inv_t, double t_squared,
                               Divergence divergence) {
  const int64_t n = blockIdx.x;
  const int lane = threadIdx.x & 31;
  double sum = 0;
  for (int64_t b = threadIdx.x >> 5; b < batch; b += kWarps) {
    const double row = rows::distill_row(divergence, student + (n * batch + b) * cols,
                                         teacher + ((n % teachers) * batch + b) * cols, cols, c0, c1, inv_t,
                                         0.0, nullptr, false);
    if (lane == 0) sum += row;
  }
  const double total = block_sum_in_order(sum);
  if (threadIdx.x == 0) loss[n] = float(t_squared * total / double(batch));
}

// q − p (or JS's q·(h − Σ q·h)) of two nearly equal softmaxes: double row math, as in the forward.
__global__ void distill_backward_kernel(const float* __restrict__ student, const float* __restrict__ teacher,
                                        const float* __restrict__ grad_loss, float* dstudent, int64_t models,
                                        int64_t teachers, int64_t batch, int64_t cols, int64_t c0, int64_t c1,
                                        double inv_t, double temperature, Divergence divergence,
                                        bool accumulate) {
  WARP_PER_ROW(r, models * batch) {
    const double g = double(grad_loss[r / batch]) * temperature / double(batch);
    rows::distill_row(divergence, student + r * cols,
                      teacher + (((r / batch) % teachers) * batch + r % batch) * cols, cols, c0, c1, inv_t, g,
                      dstudent + r * cols, accumulate);
  }
}

__global__ void kl_div_kernel(const float* __restrict__ log_q, const float* __restrict__ p,
                              float* __restrict__ loss, int64_t batch, int64_t per_model) {
  const int64_t n = blockIdx.x;
  float sum = 0.0f;
  for (int64_t i = threadIdx.x; i < per_model; i += blockDim.x) {
    const float pi = p[n * per_model + i];
    if (pi != 0.0f) sum += pi * (logf(pi) - log_q[n * per_model + i]);  // != 0: a NaN or negative p stays in
  }
  sum = warp_sum(sum);
  const double total = block_sum_in_order(double(sum));
  if (threadIdx.x == 0) loss[n] = float(total / double(batch));
}

__global__ void kl_div_backward_kernel(const float* __restrict__ p, const float* __restrict__ grad_loss,
                                       float* dlog_q, int64_t batch, int64_t per_model, int64_t total,
                                       bool accumulate) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float v = -grad_loss[i / per_model] / float(batch) * p[i];
    dlog_q[i] = accumulate ? dlog_q[i] + v : v;
  }
}

// Is (va, ia) a better argmax candidate than (vb, ib)? NaN is maximal; ties go to the lower index.
__device__ bool better(float va, int64_t ia, float vb, int64_t ib) {
  const bool na = isnan(va), nb = isnan(vb);
  if (na || nb) return na && (!nb || ia < ib);
  return va > vb || (va == vb && ia < ib);
}

// logits (N, B, cols), labels (N, B), counts (N,): one warp per row finds the argmax over
// [c0, c1) (lanes, then a shuffle tree with `better`'s tie rule) and lane 0 adds a hit to its
// model's count — an integer atomic, so the order does not matter.
__global__ void count_correct_kernel(const float* __restrict__ logits, const int32_t* __restrict__ labels,
                                     unsigned long long* counts, int64_t models, int64_t batch, int64_t cols,
                                     int64_t c0, int64_t c1) {
  const int lane = threadIdx.x & 31;
  WARP_PER_ROW(r, models * batch) {
    const float* z = logits + r * cols;
    float best_value = NAN;
    int64_t best = -1;
    for (int64_t c = c0 + lane; c < c1; c += 32)
      if (best < 0 || better(z[c], c, best_value, best)) best_value = z[c], best = c;
    for (int offset = 16; offset > 0; offset >>= 1) {
      const float other_value = __shfl_xor_sync(kFull, best_value, offset);
      const int64_t other = __shfl_xor_sync(kFull, best, offset);
      if (other >= 0 && (best < 0 || better(other_value, other, best_value, best)))
        best_value = other_value, best = other;
    }
    if (lane == 0 && best - c0 == labels[r]) atomicAdd(counts + r / batch, 1ull);
  }
}

}  // namespace

void softmax(const float* x, float* y, int64_t rows, int64_t cols) {
  if (rows == 0) return;
  softmax_kernel<false><<<row_grid(rows), kThreads, 0, stream()>>>(x, y, rows, cols);
  CUDA_CHECK_LAUNCH();
}

void log_softmax(const float* x, float* y, int64_t rows, int64_t cols) {
  if (rows == 0) return;
  softmax_kernel<true><<<row_grid(rows), kThreads, 0, stream()>>>(x, y, rows, cols);
  CUDA_CHECK_LAUNCH();
}

void softmax_backward(const float* dy, const float* y, float* dx, int64_t rows, int64_t cols,
                      bool accumulate) {
  if (rows == 0) return;
  softmax_backward_kernel<false>
      <<<row_grid(rows), kThreads, 0, stream()>>>(dy, y, dx, rows, cols, accumulate);
  CUDA_CHECK_LAUNCH();
}

void log_softmax_backward(const float* dy, const float* y, float* dx, int64_t rows, int64_t cols,
                          bool accumulate) {
  if (rows == 0) return;
  softmax_backward_kernel<true><<<row_grid(rows), kThreads, 0, stream()>>>(dy, y, dx, rows, cols, accumulate);
  CUDA_CHECK_LAUNCH();
}

void cross_entropy(const float* logits, const int32_t* labels, float* loss, int64_t models, int64_t batch,
                   int64_t cols, int64_t c0, int64_t c1) {
  if (models == 0) return;
  cross_entropy_kernel<<<unsigned(models), kThreads, 0, stream()>>>(logits, labels, loss, batch, cols, c0,
                                                                    c1);
  CUDA_CHECK_LAUNCH();
}

void cross_entropy_backward(const float* logits, const int32_t* labels, const float* grad_loss,
                            float* dlogits, int64_t models, int64_t batch, int64_t cols, int64_t c0,
                            int64_t c1, bool accumulate) {
  if (models * batch == 0) return;
  cross_entropy_backward_kernel<<<row_grid(models * batch), kThreads, 0, stream()>>>(
      logits, labels, grad_loss, dlogits, models, batch, cols, c0, c1, accumulate);
  CUDA_CHECK_LAUNCH();
}

void distill(const float* student, const float* teacher, float* loss, int64_t models, int64_t teachers,
             int64_t batch, int64_t cols, int64_t c0, int64_t c1, double temperature, Divergence divergence) {
  if (models == 0) return;
  distill_kernel<<<unsigned(models), kThreads, 0, stream()>>>(student, teacher, loss, teachers, batch, cols,
                                                              c0, c1, 1.0 / temperature,
                                                              temperature * temperature, divergence);
  CUDA_CHECK_LAUNCH();
}

void distill_backward(const float* student, const float* teacher, const float* grad_loss, float* dstudent,
                      int64_t models, int64_t teachers, int64_t batch, int64_t cols, int64_t c0, int64_t c1,
                      double temperature, Divergence divergence, bool accumulate) {
  if (models * batch == 0) return;
  distill_backward_kernel<<<row_grid(models * batch), kThreads, 0, stream()>>>(
      student, teacher, grad_loss, dstudent, models, teachers, batch, cols, c0, c1, 1.0 / temperature,
      temperature, divergence, accumulate);
  CUDA_CHECK_LAUNCH();
}

void kl_div(const float* log_q, const float* p, float* loss, int64_t models, int64_t batch, int64_t cols) {
  if (models == 0) return;
  kl_div_kernel<<<unsigned(models), kThreads, 0, stream()>>>(log_q, p, loss, batch, batch * cols);
  CUDA_CHECK_LAUNCH();
}

void kl_div_backward(const float* p, const float* grad_loss, float* dlog_q, int64_t models, int64_t batch,
                     int64_t cols, bool accumulate) {
  const int64_t total = models * batch * cols;
  if (total == 0) return;
  kl_div_backward_kernel<<<grid_for(total), kThreads, 0, stream()>>>(p, grad_loss, dlog_q, batch,
                                                                     batch * cols, total, accumulate);
  CUDA_CHECK_LAUNCH();
}

void count_correct(const float* logits, const int32_t* labels, int64_t* counts, int64_t models, int64_t batch,
                   int64_t cols, int64_t c0, int64_t c1) {
  if (models * batch == 0) return;
  static_assert(sizeof(unsigned long long) == sizeof(int64_t));
  count_correct_kernel<<<row_grid(models * batch), kThreads, 0, stream()>>>(
      logits, labels, reinterpret_cast<unsigned long long*>(counts), models, batch, cols, c0, c1);
  CUDA_CHECK_LAUNCH();
}

}  // namespace subliminal::cuda
