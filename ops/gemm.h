// ops/gemm.h — the three matrix products of a Linear layer, with fused epilogues.
//
// Everything is row-major and batched over a leading "models" dimension N (N independent
// GEMMs with the same shape, one per model). Per model:
//
//   forward          y[B,O]  = act(x[B,I] · w[O,I]ᵀ + bias[O])      act ∈ {none, relu}
//                    relu also writes relu_mask: bit (b, o) = !(y <= 0)
//   backward_input   dx[B,I] = (dy[B,O] · w[O,I]) ⊙ relu'(mask of the layer that made x)
//                    and, if asked, dbias_prev[I] = Σ_b dx[b, :]   (that layer's bias gradient)
//   backward_weight  dw[O,I] = dy[B,O]ᵀ · x[B,I]    (overwrite, or accumulate into dw)
//                    and, if asked, dbias[O] = Σ_b dy[b, :]
//
// These are exactly the products cuBLASLt can fuse with its epilogues (RELU_AUX_BIAS,
// DRELU_BGRAD, BGRADB; see ops/cuda/gemm_cublaslt.cpp and ../shared/docs/REFERENCE.md §3). The CPU backend
// computes the same things with an OpenBLAS GEMM and a loop (ops/cpu/gemm_cpu.cpp).
//
// The ReLU mask is cuBLASLt's bit-mask format, used on both backends so masks can be
// compared: per model, per sample b, a row of ld = roundup(F, 128) bits (ld/8 bytes), bit
// f of the row (LSB-first within each byte) set when feature f passes the ReLU gate (below). Its tensor is
// uint8 [N, B, ld/8]. ReLU follows PyTorch: z <= 0 gives 0 and bit 0 (relu'(0) = 0); a NaN
// stays NaN with bit 1 (threshold_backward lets its gradient through). Measured on an H200,
// cuBLASLt's RELU_AUX epilogue agrees except at an exact 0, where it sets the bit — the
// cuBLASLt path with fused epilogues passes the gradient there (a measure-zero event in
// training; docs/CUDNN.md). Our own kernels (--gemm tiled, the fused step) gate as PyTorch does.
// cuBLASLt and our tiled kernels leave the padding bits of a row unwritten (the tiled GEMM
// writes its last tile's bytes up to ceil(F/8) only); the CPU and epilogue.cu write them as 0.
// Readers of a mask look at bits f < F only.
#pragma once

#include <cstdint>
#include <string>

#include "engine/tensor.h"

namespace subliminal::gemm {

enum class Activation { none, relu };

// The sizes of one batched Linear GEMM: N models, B samples, I inputs, O outputs.
struct Dims {
  int64_t models, batch, in, out;
};

// Which engine runs the GPU's Linear GEMMs. cuDNN (ops/cudnn) is tried first when chosen;
// any graph it cannot run on this GPU falls back to cuBLASLt and is reported once. tiled is
// subliminal's own fp32 kernel (ops/cuda/gemm_tiled.cu): one launch per GEMM, split-K across
// the whole GPU, every epilogue fused, reproducible bit for bit; it ignores tf32.
enum class GpuEngine { cublaslt, cudnn, tiled };

// Run-wide GEMM settings (set once from the app's flags; tests flip them).
struct Settings {
  bool tf32 = false;           // allow TF32 tensor cores for float32 (PyTorch's default is off)
  bool fuse_epilogues = true;  // false: plain GEMMs + separate bias/ReLU/bias-grad kernels
  GpuEngine engine = GpuEngine::cublaslt;
  bool cudnn_tf32 = true;  // cuDNN's fused fp32 graphs exist only as TF32 on Hopper (docs/CUDNN.md)
  // Time cuBLASLt's top heuristic candidates once per shape and keep the fastest. Off by
  // default: on an H200 the heuristic's first choice gave 133 µs per teacher step and the
  // tuned choices 149 µs (timed back to back, candidates that pipeline well are not the ones
  // that are fastest inside a CUDA graph). --autotune turns it on.
  bool autotune = false;
};
// True when this build has the cuDNN engine.
bool cudnn_compiled();
Settings& settings();

// Bits per mask row for F features, and the mask tensor's shape for [N, B, F] activations.
inline int64_t mask_row_bits(int64_t features) { return (features + 127) / 128 * 128; }
Shape mask_shape(int64_t models, int64_t batch, int64_t features);

// Shapes: x [N,B,I], w [N,O,I], bias [N,O] or undefined, y [N,B,O] (written),
// relu_mask uint8 mask_shape(N,B,O) — required iff act == relu.
void forward(const Tensor& x, const Tensor& w, const Tensor& bias, Activation act, const Tensor& y,
             const Tensor& relu_mask);

// Shapes: dy [N,B,O], w [N,O,I], dx [N,B,I] (written), prev_mask mask_shape(N,B,I) or
// undefined (no ReLU before this layer), dbias_prev [N,I] or undefined (needs prev_mask).
// accumulate: dx += result instead of dx = result. prev_output [N,B,I] (optional): the
// previous layer's post-ReLU output, which the cuDNN engine gates on instead of the mask.
void backward_input(const Tensor& dy, const Tensor& w, const Tensor& prev_mask, const Tensor& dx,
                    const Tensor& dbias_prev, bool accumulate, const Tensor& prev_output = Tensor());

// Shapes: dy [N,B,O], x [N,B,I], dw [N,O,I] (written or accumulated), dbias [N,O] or undefined
// (always overwritten).
void backward_weight(const Tensor& dy, const Tensor& x, const Tensor& dw, bool accumulate,
                     const Tensor& dbias);

// ---- epilogue pieces on their own (the unfused path and the CPU backend use them) --------
// y[N,B,O] += bias[N,O] (if defined); then, for relu, y = y <= 0 ? 0 : y and mask bits.
void bias_activation(const Tensor& y, const Tensor& bias, Activation act, const Tensor& relu_mask);
// dx[N,B,F] *= mask bit (b, f).
void apply_relu_mask(const Tensor& dx, const Tensor& mask);
// dbias[N,F] = Σ_b d[N,b,F]  (overwrite).
void bias_gradient(const Tensor& d, const Tensor& dbias);

// One line per distinct GEMM configuration the GPU engine fell back on (epilogue not
// supported by cuBLASLt on this GPU), for the run's log. Empty on the CPU.
std::string fallback_report();
// The GPU's autotuning decisions, one line per GEMM shape (empty on the CPU).
std::string tuning_report();

}  // namespace subliminal::gemm
