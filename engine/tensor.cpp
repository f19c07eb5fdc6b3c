// engine/tensor.cpp — factories, views and copies of Tensor.
#include "engine/tensor.h"

#include <cstdint>
#include <cstring>
#include <limits>

#include "engine/kernels.h"

namespace subliminal {

std::string shape_string(const Shape& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) throw ShapeError("negative dimension in shape " + shape_string(shape));
    if (d != 0 && n > std::numeric_limits<int64_t>::max() / d)
      throw ShapeError("shape " + shape_string(shape) + " has too many elements");
    n *= d;
  }
  return n;
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  auto impl = std::make_shared<TensorImpl>();
  impl->shape = shape;
  impl->dtype = dtype;
  const int64_t count = shape_numel(shape);
  if (uint64_t(count) > SIZE_MAX / dtype_size(dtype))
    throw ShapeError("shape " + shape_string(shape) + " of " + dtype_name(dtype) +
                     " is too large to allocate");
  impl->storage = Storage::allocate(static_cast<size_t>(count) * dtype_size(dtype), device);
  return Tensor(std::move(impl));
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  return full(shape, 0.0, dtype, device);
}

Tensor Tensor::full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  fill(t, value);
  return t;
}

template <class T>
Tensor Tensor::from_vector(const std::vector<T>& values, const Shape& shape, Device device) {
  if (static_cast<int64_t>(values.size()) != shape_numel(shape))
    throw ShapeError("from_vector: " + std::to_string(values.size()) + " values for shape " +
                     shape_string(shape));
  Tensor host = empty(shape, dtype_of<T>(), Device::cpu);
  if (!values.empty()) std::memcpy(host.raw(), values.data(), values.size() * sizeof(T));
  return device == Device::cpu ? host : host.to(device);
}

template <class T>
std::vector<T> Tensor::to_vector() const {
  if (dtype_of<T>() != dtype())
    throw ShapeError("to_vector: tensor " + describe() + " read as " + dtype_name(dtype_of<T>()));
  std::vector<T> out(static_cast<size_t>(numel()));
  Tensor host = device() == Device::cpu ? *this : to(Device::cpu);
  if (!out.empty()) std::memcpy(out.data(), host.raw(), out.size() * sizeof(T));
  return out;
}

#define SUBLIMINAL_INSTANTIATE(T)                                                      \
  template Tensor Tensor::from_vector<T>(const std::vector<T>&, const Shape&, Device); \
  template std::vector<T> Tensor::to_vector<T>() const;
SUBLIMINAL_INSTANTIATE(float)
SUBLIMINAL_INSTANTIATE(double)
SUBLIMINAL_INSTANTIATE(int32_t)
SUBLIMINAL_INSTANTIATE(int64_t)
SUBLIMINAL_INSTANTIATE(uint8_t)
#undef SUBLIMINAL_INSTANTIATE

Tensor Tensor::view_of(const Tensor& base, int64_t offset, const Shape& shape) {
  const TensorImpl& b = base.impl();
  int64_t count = shape_numel(shape);
  // Written without offset + count, which could overflow (undefined) and pass the check.
  if (offset < 0 || offset > base.numel() || count > base.numel() - offset)
    throw ShapeError("view_of: " + std::to_string(count) + " elements at offset " + std::to_string(offset) +
                     " do not fit in " + base.describe());
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = b.storage;
  impl->offset_bytes = b.offset_bytes + static_cast<size_t>(offset) * dtype_size(b.dtype);
  impl->shape = shape;
  impl->dtype = b.dtype;
  return Tensor(std::move(impl));
}

int64_t Tensor::dim(int i) const {
  int r = rank();
  int k = i < 0 ? i + r : i;
  if (k < 0 || k >= r) throw ShapeError("dim " + std::to_string(i) + " out of range for " + describe());
  return impl().shape[static_cast<size_t>(k)];
}

std::string Tensor::describe() const {
  if (!defined()) return "undefined tensor";
  return std::string(dtype_name(dtype())) + shape_string(shape()) + " on " + device_name(device());
}

void* Tensor::raw() const {
  const TensorImpl& t = impl();
  return static_cast<char*>(t.storage->data()) + t.offset_bytes;
}

Tensor Tensor::to(Device target) const {
  Tensor out = empty(shape(), dtype(), target);
  copy_into(out, *this);
  return out;
}

void Tensor::copy_from(const Tensor& src) const {
  if (src.shape() != shape() || src.dtype() != dtype())
    throw ShapeError("copy_from: " + src.describe() + " into " + describe());
  copy_into(*this, src);
}

double Tensor::item() const {
  if (numel() != 1) throw ShapeError("item() of " + describe() + ": needs exactly one element");
  switch (dtype()) {
    case DType::f32:
      return to_vector<float>()[0];
    case DType::f64:
      return to_vector<double>()[0];
    case DType::i32:
      return to_vector<int32_t>()[0];
    case DType::i64:
      return static_cast<double>(to_vector<int64_t>()[0]);
    case DType::u8:
      return to_vector<uint8_t>()[0];
  }
  return 0;
}

Tensor Tensor::rows(int64_t begin, int64_t count) const {
  if (rank() < 1) throw ShapeError("rows() of a scalar tensor " + describe());
  int64_t n0 = dim(0);
  if (begin < 0 || count < 0 || begin > n0 || count > n0 - begin)  // no begin + count: it could overflow
    throw ShapeError("rows(" + std::to_string(begin) + ", " + std::to_string(count) + ") of " + describe());
  Shape s = shape();
  s[0] = count;
  return view_of(*this, begin * (numel() / (n0 == 0 ? 1 : n0)), s);
}

Tensor Tensor::reshaped(const Shape& new_shape) const {
  if (shape_numel(new_shape) != numel())
    throw ShapeError("reshaped: " + describe() + " to " + shape_string(new_shape));
  return view_of(*this, 0, new_shape);
}

void check_rank(const char* op, const Tensor& t, int rank, const char* what) {
  if (t.rank() != rank)
    throw ShapeError(std::string(op) + ": " + what + " must have rank " + std::to_string(rank) + ", got " +
                     t.describe());
}

void check_dtype(const char* op, const Tensor& t, DType dtype, const char* what) {
  if (t.dtype() != dtype)
    throw ShapeError(std::string(op) + ": " + what + " must be " + dtype_name(dtype) + ", got " +
                     t.describe());
}

void check_same_device(const char* op, const Tensor& a, const Tensor& b) {
  if (a.device() != b.device())
    throw ShapeError(std::string(op) + ": tensors on different devices: " + a.describe() + " and " +
                     b.describe());
}

}  // namespace subliminal
