// engine/kernels.cpp — CPU loops for engine/kernels.h, and the dispatch to CUDA.
#include "engine/kernels.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "engine/dispatch.h"

#ifdef SUBLIMINAL_HAS_CUDA
#include "engine/cuda/kernels.h"
#endif

namespace subliminal {
namespace {

template <class T>
void fill_cpu(T* p, int64_t n, T value) {
  for (int64_t i = 0; i < n; ++i) p[i] = value;
}

}  // namespace

void fill(const Tensor& t, double value) {
  const int64_t n = t.numel();
  if (t.device() == Device::cuda) {
    ON_CUDA(cuda::fill(t.raw(), t.dtype(), n, value));
    return;
  }
  switch (t.dtype()) {
    case DType::f32:
      return fill_cpu(t.data<float>(), n, static_cast<float>(value));
    case DType::f64:
      return fill_cpu(t.data<double>(), n, value);
    case DType::i32:
      return fill_cpu(t.data<int32_t>(), n, static_cast<int32_t>(value));
    case DType::i64:
      return fill_cpu(t.data<int64_t>(), n, static_cast<int64_t>(value));
    case DType::u8:
      return fill_cpu(t.data<uint8_t>(), n, static_cast<uint8_t>(value));
  }
}

void add_into(const Tensor& dst, const Tensor& src, double alpha) {
  if (dst.shape() != src.shape() || dst.dtype() != src.dtype())
    throw ShapeError("add_into: " + src.describe() + " into " + dst.describe());
  check_same_device("add_into", dst, src);
  backend_dispatch(
      "add_into", dst,
      [&](auto zero) {
        using T = decltype(zero);
        T* d = dst.data<T>();
        const T* s = src.data<T>();
        const T a = T(alpha);
        for (int64_t i = 0; i < dst.numel(); ++i) d[i] += a * s[i];
      },
      [&] { ON_CUDA(cuda::add_into(dst.data<float>(), src.data<float>(), dst.numel(), float(alpha))); });
}

void copy_into(const Tensor& dst, const Tensor& src) {
  if (dst.numel() != src.numel() || dst.dtype() != src.dtype())
    throw ShapeError("copy_into: " + src.describe() + " into " + dst.describe());
  const size_t bytes = src.bytes();
  const Device from = src.device(), to = dst.device();
  if (from == Device::cpu && to == Device::cpu) {
    if (bytes) std::memmove(dst.raw(), src.raw(), bytes);
    return;
  }
  if (from == Device::cuda && to == Device::cuda)
    ON_CUDA(cuda::copy_device_to_device(dst.raw(), src.raw(), bytes));
  if (from == Device::cpu && to == Device::cuda)
    ON_CUDA(cuda::copy_host_to_device(dst.raw(), src.raw(), bytes));
  if (from == Device::cuda && to == Device::cpu)
    ON_CUDA(cuda::copy_device_to_host(dst.raw(), src.raw(), bytes));
}

void check_loss_watch(const char* op, const Tensor& sum, const Tensor& step, const Tensor& first_bad) {
  if (!sum.defined() || sum.rank() != 1) throw ShapeError(std::string(op) + ": running sums must be [N]");
  for (const Tensor* t : {&step, &first_bad})
    if (!t->defined() || t->numel() != 1)
      throw ShapeError(std::string(op) + ": the step counter and the fault marker must have one element");
  check_dtype(op, step, DType::i64, "the step counter");
  check_dtype(op, first_bad, DType::i64, "the fault marker");
  for (const Tensor* t : {&step, &first_bad}) check_same_device(op, sum, *t);
}

void accumulate_and_watch(const Tensor& sum, const Tensor& values, double weight, const Tensor& step,
                          const Tensor& first_bad) {
  const char* op = "accumulate_and_watch";
  check_loss_watch(op, sum, step, first_bad);
  if (sum.shape() != values.shape() || sum.dtype() != values.dtype())
    throw ShapeError(std::string(op) + ": " + values.describe() + " into " + sum.describe());
  check_same_device(op, sum, values);
  backend_dispatch(
      op, sum,
      [&](auto zero) {
        using T = decltype(zero);
        T* s = sum.data<T>();
        const T* v = values.data<T>();
        int64_t* bad = first_bad.data<int64_t>();
        for (int64_t n = 0; n < sum.numel(); ++n) {
          s[n] += T(weight) * v[n];
          if (!std::isfinite(double(v[n]))) *bad = std::min(*bad, *step.data<int64_t>());
        }
      },
      [&] {
        ON_CUDA(cuda::accumulate_and_watch(sum.data<float>(), values.data<float>(), sum.numel(),
                                           float(weight), step.data<int64_t>(), first_bad.data<int64_t>()));
      });
}

int64_t count_nonfinite(const Tensor& t) {
  int64_t count = 0;
  backend_dispatch(
      "count_nonfinite", t,
      [&](auto zero) {
        using T = decltype(zero);
        const T* p = t.data<T>();
        for (int64_t i = 0; i < t.numel(); ++i) count += !std::isfinite(double(p[i]));
      },
      [&] { ON_CUDA(count = cuda::count_nonfinite(t.data<float>(), t.numel())); });
  return count;
}

void check_counters(const char* op, const std::vector<Tensor>& counters) {
  if (counters.size() > 4) throw ShapeError(std::string(op) + ": at most 4 counters per call");
  for (const Tensor& c : counters) {
    check_dtype(op, c, DType::i64, "a counter");
    if (c.numel() != 1) throw ShapeError(std::string(op) + ": counters must have one element");
    check_same_device(op, counters.front(), c);
  }
}

void increment(const std::vector<Tensor>& counters) {
  if (counters.empty()) return;
  check_counters("increment", counters);
  if (counters.front().device() == Device::cuda) {
    [[maybe_unused]] int64_t* pointers[4] = {nullptr, nullptr, nullptr, nullptr};  // unread without CUDA
    for (size_t k = 0; k < counters.size(); ++k) pointers[k] = counters[k].data<int64_t>();
    ON_CUDA(cuda::increment(pointers));
    return;
  }
  for (const Tensor& c : counters) *c.data<int64_t>() += 1;
}

}  // namespace subliminal
