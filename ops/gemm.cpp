// ops/gemm.cpp — shape checks for the Linear GEMMs and dispatch to the CPU or CUDA backend.
#include "ops/gemm.h"

#include "engine/dispatch.h"
#include "engine/kernels.h"
#include "ops/cpu/gemm_cpu.h"

#ifdef SUBLIMINAL_HAS_CUDA
#include "ops/cuda/gemm_cuda.h"
#endif

namespace subliminal::gemm {
namespace {

void expect_shape(const char* op, const Tensor& t, const Shape& shape, const char* what) {
  if (t.shape() != shape)
    throw ShapeError(std::string(op) + ": " + what + " must be " + shape_string(shape) + ", got " +
                     t.describe());
}

// A floating operand (if given): on ref's device, of ref's dtype.
void expect_same(const char* op, const Tensor& ref, const Tensor& t) {
  if (!t.defined()) return;
  if (t.device() != ref.device()) check_same_device(op, ref, t);
  if (t.dtype() != ref.dtype())
    throw ShapeError(std::string(op) + ": mixed dtypes " + ref.describe() + " and " + t.describe());
}

// A ReLU bit-mask (if given): uint8, on ref's device.
void expect_mask(const char* op, const Tensor& ref, const Tensor& mask) {
  if (!mask.defined()) return;
  if (mask.device() != ref.device()) check_same_device(op, ref, mask);
  if (mask.dtype() != DType::u8)
    throw ShapeError(std::string(op) + ": the ReLU mask must be uint8, got " + mask.describe());
}

// Dims from x [N,B,I] and w [N,O,I].
Dims dims_of(const char* op, const Tensor& x, const Tensor& w) {
  check_rank(op, x, 3, "the input");
  check_rank(op, w, 3, "the weight");
  if (x.dim(0) != w.dim(0) || x.dim(2) != w.dim(2))
    throw ShapeError(std::string(op) + ": input " + x.describe() + " does not match weight " + w.describe());
  return {x.dim(0), x.dim(1), x.dim(2), w.dim(1)};
}

template <class T>
const T* ptr_or_null(const Tensor& t) {
  return t.defined() ? t.data<T>() : nullptr;
}
template <class T>
T* mut_ptr_or_null(const Tensor& t) {
  return t.defined() ? t.data<T>() : nullptr;
}

}  // namespace

Settings& settings() {
  static Settings s;
  return s;
}

Shape mask_shape(int64_t models, int64_t batch, int64_t features) {
  return {models, batch, mask_row_bits(features) / 8};
}

void forward(const Tensor& x, const Tensor& w, const Tensor& bias, Activation act, const Tensor& y,
             const Tensor& relu_mask) {
  const char* op = "gemm::forward";
  Dims d = dims_of(op, x, w);
  expect_shape(op, y, {d.models, d.batch, d.out}, "the output");
  if (bias.defined()) expect_shape(op, bias, {d.models, d.out}, "the bias");
  const bool relu = act == Activation::relu;
  if (relu) expect_shape(op, relu_mask, mask_shape(d.models, d.batch, d.out), "the ReLU mask");
  for (const Tensor* t : {&w, &bias, &y}) expect_same(op, x, *t);
  expect_mask(op, x, relu_mask);

  backend_dispatch(
      op, x,
      [&](auto zero) {
        using T = decltype(zero);
        cpu::linear_forward(x.data<T>(), w.data<T>(), ptr_or_null<T>(bias), relu, y.data<T>(),
                            relu ? relu_mask.data<uint8_t>() : nullptr, d);
      },
      [&] {
        ON_CUDA(cuda::linear_forward(x.data<float>(), w.data<float>(), ptr_or_null<float>(bias), relu,
                                     y.data<float>(), relu ? relu_mask.data<uint8_t>() : nullptr, d,
                                     settings()));
      });
}

bool cudnn_compiled() {
#ifdef SUBLIMINAL_HAS_CUDNN
  return true;
#else
  return false;
#endif
}

void backward_input(const Tensor& dy, const Tensor& w, const Tensor& prev_mask, const Tensor& dx,
                    const Tensor& dbias_prev, bool accumulate, const Tensor& prev_output) {
  const char* op = "gemm::backward_input";
  check_rank(op, dy, 3, "the output gradient");
  check_rank(op, w, 3, "the weight");
  const Dims d{dy.dim(0), dy.dim(1), w.dim(2), w.dim(1)};
  if (w.dim(0) != d.models || dy.dim(2) != d.out)
    throw ShapeError(std::string(op) + ": output gradient " + dy.describe() + " does not match weight " +
                     w.describe());
  expect_shape(op, dx, {d.models, d.batch, d.in}, "the input gradient");
  if (prev_mask.defined()) expect_shape(op, prev_mask, mask_shape(d.models, d.batch, d.in), "the ReLU mask");
  if (dbias_prev.defined()) {
    if (!prev_mask.defined())
      throw ShapeError(std::string(op) + ": a previous-layer bias gradient needs its ReLU mask");
    expect_shape(op, dbias_prev, {d.models, d.in}, "the previous layer's bias gradient");
  }
  if (prev_output.defined())
    expect_shape(op, prev_output, {d.models, d.batch, d.in}, "the previous layer's output");
  for (const Tensor* t : {&w, &dx, &dbias_prev, &prev_output}) expect_same(op, dy, *t);
  expect_mask(op, dy, prev_mask);

  if (accumulate && prev_mask.defined()) {
    // The mask must not touch what dx already holds: compute into a temporary, then add.
    Tensor fresh = Tensor::empty(dx.shape(), dx.dtype(), dx.device());
    backward_input(dy, w, prev_mask, fresh, dbias_prev, false);
    add_into(dx, fresh);
    return;
  }
  backend_dispatch(
      op, dy,
      [&](auto zero) {
        using T = decltype(zero);
        cpu::linear_backward_input(dy.data<T>(), w.data<T>(), ptr_or_null<uint8_t>(prev_mask), dx.data<T>(),
                                   mut_ptr_or_null<T>(dbias_prev), accumulate, d);
      },
      [&] {
        ON_CUDA(cuda::linear_backward_input(dy.data<float>(), w.data<float>(),
                                            ptr_or_null<uint8_t>(prev_mask), ptr_or_null<float>(prev_output),
                                            dx.data<float>(), mut_ptr_or_null<float>(dbias_prev), accumulate,
                                            d, settings()));
      });
}

void backward_weight(const Tensor& dy, const Tensor& x, const Tensor& dw, bool accumulate,
                     const Tensor& dbias) {
  const char* op = "gemm::backward_weight";
  check_rank(op, dy, 3, "the output gradient");
  check_rank(op, x, 3, "the input");
  const Dims d{x.dim(0), x.dim(1), x.dim(2), dy.dim(2)};
  if (dy.dim(0) != d.models || dy.dim(1) != d.batch)
    throw ShapeError(std::string(op) + ": output gradient " + dy.describe() + " does not match input " +
                     x.describe());
  expect_shape(op, dw, {d.models, d.out, d.in}, "the weight gradient");
  if (dbias.defined()) expect_shape(op, dbias, {d.models, d.out}, "the bias gradient");
  for (const Tensor* t : {&x, &dw, &dbias}) expect_same(op, dy, *t);

  backend_dispatch(
      op, dy,
      [&](auto zero) {
        using T = decltype(zero);
        cpu::linear_backward_weight(dy.data<T>(), x.data<T>(), dw.data<T>(), accumulate,
                                    mut_ptr_or_null<T>(dbias), d);
      },
      [&] {
        ON_CUDA(cuda::linear_backward_weight(dy.data<float>(), x.data<float>(), dw.data<float>(), accumulate,
                                             mut_ptr_or_null<float>(dbias), d, settings()));
      });
}

void bias_activation(const Tensor& y, const Tensor& bias, Activation act, const Tensor& relu_mask) {
  const char* op = "gemm::bias_activation";
  check_rank(op, y, 3, "the activations");
  const int64_t N = y.dim(0), B = y.dim(1), F = y.dim(2);
  const bool relu = act == Activation::relu;
  if (bias.defined()) expect_shape(op, bias, {N, F}, "the bias");
  if (relu) expect_shape(op, relu_mask, mask_shape(N, B, F), "the ReLU mask");
  expect_same(op, y, bias);
  expect_mask(op, y, relu_mask);
  backend_dispatch(
      op, y,
      [&](auto zero) {
        using T = decltype(zero);
        cpu::bias_activation(y.data<T>(), ptr_or_null<T>(bias), relu,
                             relu ? relu_mask.data<uint8_t>() : nullptr, N, B, F);
      },
      [&] {
        ON_CUDA(cuda::bias_activation(y.data<float>(), ptr_or_null<float>(bias), relu,
                                      relu ? relu_mask.data<uint8_t>() : nullptr, N, B, F));
      });
}

void apply_relu_mask(const Tensor& dx, const Tensor& mask) {
  const char* op = "gemm::apply_relu_mask";
  check_rank(op, dx, 3, "the gradient");
  const int64_t N = dx.dim(0), B = dx.dim(1), F = dx.dim(2);
  expect_shape(op, mask, mask_shape(N, B, F), "the ReLU mask");
  expect_mask(op, dx, mask);
  backend_dispatch(
      op, dx,
      [&](auto zero) {
        using T = decltype(zero);
        cpu::apply_relu_mask(dx.data<T>(), mask.data<uint8_t>(), N, B, F);
      },
      [&] { ON_CUDA(cuda::apply_relu_mask(dx.data<float>(), mask.data<uint8_t>(), N, B, F)); });
}

void bias_gradient(const Tensor& d, const Tensor& dbias) {
  const char* op = "gemm::bias_gradient";
  check_rank(op, d, 3, "the gradient");
  const int64_t N = d.dim(0), B = d.dim(1), F = d.dim(2);
  expect_shape(op, dbias, {N, F}, "the bias gradient");
  expect_same(op, d, dbias);
  backend_dispatch(
      op, d,
      [&](auto zero) {
        using T = decltype(zero);
        cpu::bias_gradient(d.data<T>(), dbias.data<T>(), N, B, F);
      },
      [&] { ON_CUDA(cuda::bias_gradient(d.data<float>(), dbias.data<float>(), N, B, F)); });
}

std::string tuning_report() {
  std::string report;
  ON_CUDA(report = cuda::gemm_tuning_report());
  return report;
}

std::string fallback_report() {
  std::string report;
  ON_CUDA(report = cuda::gemm_fallback_report());
  return report;
}

}  // namespace subliminal::gemm
