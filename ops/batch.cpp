// ops/batch.cpp — checks and dispatch for batch gathering, noise and model tiling.
#include "ops/batch.h"

#include "engine/dispatch.h"
#include "engine/kernels.h"
#include "ops/cpu/batch_cpu.h"

#ifdef SUBLIMINAL_HAS_CUDA
#include "ops/cuda/batch_cuda.h"
#endif

namespace subliminal {
namespace {

// The batch's first position in the epoch order, read from a host counter (CPU path only).
int64_t first_position(const Tensor& step, int64_t stride) { return *step.data<int64_t>() * stride; }

void check_step(const char* op, const Tensor& step, const Tensor& x) {
  check_dtype(op, step, DType::i64, "the step counter");
  if (step.numel() != 1) throw ShapeError(std::string(op) + ": the step counter must have one element");
  check_same_device(op, step, x);
}

}  // namespace

void gather_batch(const Tensor& images, const Tensor& labels, const Tensor& order, const Tensor& step,
                  int64_t stride, const Tensor& x, const Tensor& y) {
  const char* op = "gather_batch";
  check_rank(op, images, 2, "the images");
  check_dtype(op, images, DType::u8, "the images");
  check_dtype(op, labels, DType::u8, "the labels");
  check_rank(op, order, 2, "the order");
  check_dtype(op, order, DType::i32, "the order");
  check_rank(op, x, 3, "the batch");
  check_dtype(op, x, DType::f32, "the batch");
  check_dtype(op, y, DType::i32, "the batch labels");
  check_step(op, step, x);
  for (const Tensor* t : {&images, &labels, &order, &y}) check_same_device(op, x, *t);
  const int64_t S = images.dim(0), P = images.dim(1), N = x.dim(0), B = x.dim(1);
  if (labels.shape() != Shape{S} || order.shape() != Shape{N, S} || x.dim(2) != P || y.shape() != Shape{N, B})
    throw ShapeError(std::string(op) + ": shapes images " + images.describe() + ", labels " +
                     labels.describe() + ", order " + order.describe() + ", x " + x.describe() + ", y " +
                     y.describe() + " disagree");
  if (x.device() == Device::cpu) {
    const int64_t first = first_position(step, stride);
    if (first < 0 || first + B > S)
      throw ShapeError(std::string(op) + ": batch at position " + std::to_string(first) + " runs past " +
                       std::to_string(S) + " samples");
    return cpu::gather_batch(images.data<uint8_t>(), labels.data<uint8_t>(), order.data<int32_t>(), first, N,
                             B, P, S, x.data<float>(), y.data<int32_t>());
  }
  ON_CUDA(cuda::gather_batch(images.data<uint8_t>(), labels.data<uint8_t>(), order.data<int32_t>(),
                             step.data<int64_t>(), stride, N, B, P, S, x.data<float>(), y.data<int32_t>()));
}

void noise_batch(uint64_t seed, uint64_t stream, const Tensor& order, const Tensor& step, int64_t stride,
                 int64_t first_image, NoiseDistribution distribution, const Tensor& x, int64_t sources) {
  const bool gaussian = distribution == NoiseDistribution::gaussian;
  const char* op = "noise_batch";
  check_rank(op, x, 3, "the batch");
  check_dtype(op, x, DType::f32, "the batch");
  check_step(op, step, x);
  const int64_t N = x.dim(0), B = x.dim(1), P = x.dim(2);
  if (sources == 0) sources = N;
  if (sources < 1 || N % sources != 0)
    throw ShapeError(std::string(op) + ": " + std::to_string(N) + " models cannot cycle over " +
                     std::to_string(sources) + " noise sources");
  int64_t S = 0;
  if (order.defined()) {
    check_dtype(op, order, DType::i32, "the order");
    check_same_device(op, x, order);
    if (order.rank() != 2 || order.dim(0) != sources)
      throw ShapeError(std::string(op) + ": order " + order.describe());
    S = order.dim(1);
  }
  if (x.device() == Device::cpu) {
    const int64_t first = first_position(step, stride);
    if (order.defined() && (first < 0 || first + B > S))
      throw ShapeError(std::string(op) + ": batch at position " + std::to_string(first) +
                       " runs past the order");
    return cpu::noise_batch(seed, stream, order.defined() ? order.data<int32_t>() : nullptr,
                            order.defined() ? first : first_image + first, N, sources, B, P, S, gaussian,
                            x.data<float>());
  }
  ON_CUDA(cuda::noise_batch(seed, stream, order.defined() ? order.data<int32_t>() : nullptr,
                            step.data<int64_t>(), stride, first_image, N, sources, B, P, S, gaussian,
                            x.data<float>()));
}

Tensor repeat_models(const Tensor& x, int64_t repeats) {
  if (x.rank() < 1 || repeats < 1) throw ShapeError("repeat_models of " + x.describe());
  if (repeats == 1) return x.detach();  // nothing to tile: share the storage
  Shape shape = x.shape();
  const int64_t N = shape[0];
  shape[0] = N * repeats;
  Tensor out = Tensor::empty(shape, x.dtype(), x.device());
  for (int64_t r = 0; r < repeats; ++r) copy_into(out.rows(r * N, N), x);
  return out;
}

}  // namespace subliminal
