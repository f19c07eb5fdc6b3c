// ops/cuda/kernels_cuda.h — the CUDA backend of the non-GEMM ops. Same functions and shapes
// as ops/cpu/kernels_cpu.h, float32 device pointers, queued on the runtime's stream.
// Row-wise kernels give each row (one sample's logits) to one warp; per-model losses are
// reduced by one block per model in a fixed order, so results are deterministic.
#pragma once

#include <cstdint>

#include "ops/divergence.h"

namespace subliminal::cuda {

void relu_forward(const float* x, float* y, int64_t n);
void relu_backward(const float* dy, const float* y, float* dx, int64_t n, bool accumulate);
void scale(const float* x, float s, float* y, int64_t n, bool accumulate);

void slice_columns(const float* x, float* y, int64_t rows, int64_t cols, int64_t c0, int64_t c1);
void slice_columns_backward(const float* dy, float* dx, int64_t rows, int64_t cols, int64_t c0, int64_t c1,
                            bool accumulate);

void softmax(const float* x, float* y, int64_t rows, int64_t cols);
void log_softmax(const float* x, float* y, int64_t rows, int64_t cols);
void softmax_backward(const float* dy, const float* y, float* dx, int64_t rows, int64_t cols,
                      bool accumulate);
void log_softmax_backward(const float* dy, const float* y, float* dx, int64_t rows, int64_t cols,
                          bool accumulate);

void cross_entropy(const float* logits, const int32_t* labels, float* loss, int64_t models, int64_t batch,
                   int64_t cols, int64_t c0, int64_t c1);
void cross_entropy_backward(const float* logits, const int32_t* labels, const float* grad_loss,
                            float* dlogits, int64_t models, int64_t batch, int64_t cols, int64_t c0,
                            int64_t c1, bool accumulate);
void distill(const float* student, const float* teacher, float* loss, int64_t models, int64_t teachers,
             int64_t batch, int64_t cols, int64_t c0, int64_t c1, double temperature, Divergence divergence);
void distill_backward(const float* student, const float* teacher, const float* grad_loss, float* dstudent,
                      int64_t models, int64_t teachers, int64_t batch, int64_t cols, int64_t c0, int64_t c1,
                      double temperature, Divergence divergence, bool accumulate);
void kl_div(const float* log_q, const float* p, float* loss, int64_t models, int64_t batch, int64_t cols);
void kl_div_backward(const float* p, const float* grad_loss, float* dlog_q, int64_t models, int64_t batch,
                     int64_t cols, bool accumulate);

void count_correct(const float* logits, const int32_t* labels, int64_t* counts, int64_t models, int64_t batch,
                   int64_t cols, int64_t c0, int64_t c1);

}  // namespace subliminal::cuda
