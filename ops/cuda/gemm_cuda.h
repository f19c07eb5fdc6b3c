// ops/cuda/gemm_cuda.h — the CUDA backend of ops/gemm.h: cuBLASLt GEMMs with fused
// epilogues (ops/cuda/gemm_cublaslt.cpp), the stand-alone epilogue kernels used when an
// epilogue is switched off or not supported (ops/cuda/epilogue.cu), and the tiled engine's
// own kernels (ops/cuda/gemm_tiled.cu). float32 device pointers.
#pragma once

#include <cstdint>
#include <string>

#include "ops/gemm.h"

namespace subliminal::cuda {

void linear_forward(const float* x, const float* w, const float* bias, bool relu, float* y, uint8_t* mask,
                    gemm::Dims d, const gemm::Settings& s);
void linear_backward_input(const float* dy, const float* w, const uint8_t* prev_mask,
                           const float* prev_output, float* dx, float* dbias_prev, bool accumulate,
                           gemm::Dims d, const gemm::Settings& s);
void linear_backward_weight(const float* dy, const float* x, float* dw, bool accumulate, float* dbias,
                            gemm::Dims d, const gemm::Settings& s);

// y[N,B,F] += bias[N,F] (bias may be null); relu: y = y <= 0 ? 0 : y (NaN stays) and mask bits !(y <= 0).
void bias_activation(float* y, const float* bias, bool relu, uint8_t* mask, int64_t models, int64_t batch,
                     int64_t features);
// dx[N,B,F] *= mask bit
void apply_relu_mask(float* dx, const uint8_t* mask, int64_t models, int64_t batch, int64_t features);
// db[N,F] = Σ_b d[N,b,F]
void bias_gradient(const float* d, float* db, int64_t models, int64_t batch, int64_t features);

std::string gemm_fallback_report();
// One line per autotuned cuBLASLt plan: which heuristic candidate won and its time.
std::string gemm_tuning_report();

// The cuDNN engine's attempts (ops/cuda/cudnn_route.cpp, built with SUBLIMINAL_HAS_CUDNN):
// each returns false, having written nothing, when cuDNN cannot run that graph here.
bool cudnn_linear_forward(const float* x, const float* w, const float* bias, bool relu, float* y,
                          gemm::Dims d);
bool cudnn_linear_backward_input(const float* dy, const float* w, const float* prev_output, float* dx,
                                 float* dbias_prev, gemm::Dims d);
bool cudnn_linear_backward_weight(const float* dy, const float* x, float* dw, bool accumulate, float* dbias,
                                  gemm::Dims d);
std::string cudnn_report();

// The tiled engine (ops/cuda/gemm_tiled.cu): the same three products as linear_*, every
// epilogue fused, fp32 only.
void tiled_linear_forward(const float* x, const float* w, const float* bias, bool relu, float* y,
                          uint8_t* mask, gemm::Dims d);
void tiled_linear_backward_input(const float* dy, const float* w, const uint8_t* prev_mask, float* dx,
                                 float* dbias_prev, bool accumulate, gemm::Dims d);
void tiled_linear_backward_weight(const float* dy, const float* x, float* dw, bool accumulate, float* dbias,
                                  gemm::Dims d);

}  // namespace subliminal::cuda
