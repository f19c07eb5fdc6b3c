// engine/tensor.h — the n-dimensional array every part of the engine passes around.
//
// A Tensor is a cheap handle (one shared_ptr) to a TensorImpl: a shape, a dtype, and a
// window into a reference-counted Storage on one device. Storage is always contiguous and
// row-major; a tensor may start at an offset into its storage (views of one model out of
// a batch of models, parameters living inside one flat arena), but never has strides.
//
// Batched convention used throughout ops/: the leading dimension counts independent models.
//   activations  [N, B, F]   N models, B samples per model, F features
//   weights      [N, O, I]   PyTorch's nn.Linear layout per model (out, in)
//   biases       [N, O]
// With one model N = 1; nothing special-cases it.
//
// Autograd state (requires_grad, the node that produced the tensor, the gradient buffer of
// a leaf) lives in AutogradMeta (engine/autograd.h); a tensor that never took part in
// autograd has none.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "engine/device.h"
#include "engine/dtype.h"
#include "engine/error.h"
#include "engine/storage.h"

namespace subliminal {

using Shape = std::vector<int64_t>;

std::string shape_string(const Shape& shape);  // "[2, 256, 784]"
int64_t shape_numel(const Shape& shape);       // product of dims; throws on negative or overflow

struct AutogradMeta;
class Node;

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  size_t offset_bytes = 0;  // where this tensor's first element sits in the storage
  Shape shape;
  DType dtype = DType::f32;
  std::shared_ptr<AutogradMeta> autograd;  // null until the tensor takes part in autograd
};

class Tensor {
 public:
  Tensor() = default;  // an undefined tensor (like a null pointer)

  // ---- factories ----------------------------------------------------------------------
  static Tensor empty(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu);
  static Tensor zeros(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu);
  static Tensor full(const Shape& shape, double value, DType dtype = DType::f32, Device device = Device::cpu);
  // Copies host values into a new tensor on `device`; values.size() must equal the numel.
  template <class T>
  static Tensor from_vector(const std::vector<T>& values, const Shape& shape, Device device = Device::cpu);
  // A tensor sharing `base`'s storage: `shape` elements starting `offset` elements into base.
  // Used for views along the leading dimension and for parameters inside a flat arena.
  static Tensor view_of(const Tensor& base, int64_t offset, const Shape& shape);

  // ---- properties ---------------------------------------------------------------------
  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const { return impl().shape; }
  int64_t dim(int i) const;  // negative i counts from the end
  int rank() const { return static_cast<int>(impl().shape.size()); }
  int64_t numel() const { return shape_numel(impl().shape); }
  DType dtype() const { return impl().dtype; }
  Device device() const { return impl().storage->device(); }
  size_t bytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype()); }
  std::string describe() const;  // "float32[2, 256, 784] on cuda"

  // Raw element pointer (device or host). data<T>() checks that T matches the dtype.
  void* raw() const;
  template <class T>
  T* data() const {
    if (dtype_of<T>() != dtype())
      throw ShapeError("tensor " + describe() + " accessed as " + dtype_name(dtype_of<T>()));
    return static_cast<T*>(raw());
  }

  // ---- copies -------------------------------------------------------------------------
  Tensor to(Device device) const;  // always a fresh copy
  Tensor clone() const { return to(device()); }
  void copy_from(const Tensor& src) const;  // same shape and dtype; any devices
  template <class T>
  std::vector<T> to_vector() const;  // host copy of the values (synchronises)
  double item() const;               // the single value of a 1-element tensor, as double

  // The slice [begin, begin+count) along dimension 0, sharing storage (no autograd).
  Tensor rows(int64_t begin, int64_t count) const;
  // Same storage, another shape with the same numel (no autograd, and no differentiable
  // reshape op exists: gradients do not flow through this).
  Tensor reshaped(const Shape& shape) const;
  // Same storage and shape, outside autograd. Nodes save their own outputs this way: saving
  // the output itself would make node → output → node a reference cycle.
  Tensor detach() const { return reshaped(shape()); }

  // ---- autograd (implemented in engine/autograd.cpp) -----------------------------------
  bool requires_grad() const;
  Tensor& set_requires_grad(bool on = true);  // only on leaves
  bool is_leaf() const;
  // A leaf's gradient buffer: undefined until set_grad_buffer or a backward defines it (the
  // MLP's parameters get theirs at construction); after zero_grad it still holds the last
  // step's values, stale until has_grad() is true again.
  const Tensor& grad() const;
  bool has_grad() const;  // false after zero_grad until the next backward writes it
  std::shared_ptr<Node> grad_fn() const;
  // Reverse-mode differentiation of this tensor. For one element this is the usual
  // backward(); for several it differentiates their sum — one independent loss per model.
  void backward() const;

  TensorImpl& impl() const {
    if (!impl_) throw ShapeError("use of an undefined tensor");
    return *impl_;
  }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

 private:
  std::shared_ptr<TensorImpl> impl_;
};

// Precondition checks used by ops: throw ShapeError with the op's name and what was wrong.
void check_rank(const char* op, const Tensor& t, int rank, const char* what);
void check_dtype(const char* op, const Tensor& t, DType dtype, const char* what);
void check_same_device(const char* op, const Tensor& a, const Tensor& b);

}  // namespace subliminal
