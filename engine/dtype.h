// engine/dtype.h — the element types a tensor can hold.
//
// float32 is what training runs in (CPU and CUDA); float64 exists so that gradient checks
// by finite differences are exact enough to mean something (CPU only); int32 holds labels
// and indices; int64 holds counters; uint8 holds raw MNIST pixels.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "engine/error.h"

namespace subliminal {

enum class DType { f32, f64, i32, i64, u8 };

inline size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32:
      return 4;
    case DType::f64:
      return 8;
    case DType::i32:
      return 4;
    case DType::i64:
      return 8;
    case DType::u8:
      return 1;
  }
  return 0;
}

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32:
      return "float32";
    case DType::f64:
      return "float64";
    case DType::i32:
      return "int32";
    case DType::i64:
      return "int64";
    case DType::u8:
      return "uint8";
  }
  return "?";
}

inline bool is_floating(DType t) { return t == DType::f32 || t == DType::f64; }

// dtype_of<T>() maps a C++ element type to its DType (used by Tensor::data<T>() checks).
template <class T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<float>() {
  return DType::f32;
}
template <>
constexpr DType dtype_of<double>() {
  return DType::f64;
}
template <>
constexpr DType dtype_of<int32_t>() {
  return DType::i32;
}
template <>
constexpr DType dtype_of<int64_t>() {
  return DType::i64;
}
template <>
constexpr DType dtype_of<uint8_t>() {
  return DType::u8;
}

// Calls f(T{}) with T the C++ type of a floating dtype: the CPU kernels are templates over
// float and double, and this is the one switch that picks the instance.
template <class F>
decltype(auto) dispatch_floating(DType t, F&& f) {
  switch (t) {
    case DType::f32:
      return f(float{});
    case DType::f64:
      return f(double{});
    default:
      throw ShapeError(std::string("expected a floating tensor, got ") + dtype_name(t));
  }
}

}  // namespace subliminal
