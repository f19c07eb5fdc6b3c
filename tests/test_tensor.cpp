// tests/test_tensor.cpp — views into a tensor's storage: in range they share it, out of range
// (including offsets so large that offset + count would overflow) they are ShapeErrors; and the
// other checks that keep a copy or a reshape from running past a buffer.
#include <gtest/gtest.h>

#include <cstdint>  // INT64_MAX
#include <vector>   // std::vector

#include "engine/tensor.h"

namespace {

using namespace subliminal;

TEST(TensorViews, RowsAndViewOfShareTheStorage) {
  const Tensor t = Tensor::from_vector<float>({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, {4, 3});  // [4,3]
  EXPECT_EQ(t.rows(1, 2).to_vector<float>(), (std::vector<float>{3, 4, 5, 6, 7, 8}));
  EXPECT_EQ(t.rows(4, 0).numel(), 0);  // an empty view at the end is in range
  EXPECT_EQ(Tensor::view_of(t, 10, {2}).to_vector<float>(), (std::vector<float>{10, 11}));
  EXPECT_EQ(Tensor::view_of(t, 12, {0}).numel(), 0);
}

TEST(TensorViews, OutOfRangeViewsAreShapeErrorsEvenWhereTheSumWouldOverflow) {
  const Tensor t = Tensor::zeros({4, 3});  // [4,3]
  EXPECT_THROW(t.rows(3, 2), ShapeError);
  EXPECT_THROW(t.rows(5, 0), ShapeError);
  EXPECT_THROW(t.rows(-1, 1), ShapeError);
  EXPECT_THROW(t.rows(1, -1), ShapeError);
  EXPECT_THROW(t.rows(INT64_MAX, 1), ShapeError);  // begin + count overflows
  EXPECT_THROW(t.rows(1, INT64_MAX), ShapeError);
  EXPECT_THROW(Tensor::view_of(t, 11, {2}), ShapeError);
  EXPECT_THROW(Tensor::view_of(t, 13, {0}), ShapeError);
  EXPECT_THROW(Tensor::view_of(t, -1, {1}), ShapeError);
  EXPECT_THROW(Tensor::view_of(t, INT64_MAX, {1}), ShapeError);  // offset + count overflows
  EXPECT_THROW(Tensor::view_of(t, 1, {INT64_MAX}), ShapeError);
}

// full() writes its value in every dtype (int32 labels and uint8 pixels too, not only floats).
TEST(TensorChecks, FullFillsEveryDtype) {
  EXPECT_EQ(Tensor::full({3}, 7.0, DType::i32).to_vector<int32_t>(), (std::vector<int32_t>{7, 7, 7}));
  EXPECT_EQ(Tensor::full({2}, 200.0, DType::u8).to_vector<uint8_t>(), (std::vector<uint8_t>{200, 200}));
  EXPECT_EQ(Tensor::full({2}, -3.0, DType::i64).to_vector<int64_t>(), (std::vector<int64_t>{-3, -3}));
  EXPECT_EQ(Tensor::full({2}, 0.25, DType::f32).to_vector<float>(), (std::vector<float>{0.25f, 0.25f}));
  EXPECT_EQ(Tensor::full({2}, 0.1, DType::f64).to_vector<double>(), (std::vector<double>{0.1, 0.1}));
}

// Shapes, reshapes and copies that do not match are ShapeErrors, not reads or writes past a
// buffer: a negative dimension, a reshape to another element count (fewer too), from_vector
// with too many or too few values, copy_from between shapes with one element count, and a
// dimension index one past the rank.
TEST(TensorChecks, MismatchedShapesAreShapeErrors) {
  EXPECT_THROW(Tensor::zeros({2, -1}), ShapeError);
  // 2⁶² float64 elements fit an int64 count but not a byte count: refused, not wrapped to 0.
  EXPECT_THROW(Tensor::empty({int64_t(1) << 62}, DType::f64), ShapeError);
  EXPECT_THROW(shape_numel({-1, -1}), ShapeError);
  const Tensor t = Tensor::zeros({2, 3});
  EXPECT_THROW(t.reshaped({5}), ShapeError);
  EXPECT_THROW(t.reshaped({7}), ShapeError);
  EXPECT_EQ(t.reshaped({3, 2}).shape(), (Shape{3, 2}));
  EXPECT_THROW(Tensor::from_vector(std::vector<float>{1, 2, 3}, {2}), ShapeError);
  EXPECT_THROW(Tensor::from_vector(std::vector<float>{1}, {2}), ShapeError);
  EXPECT_THROW(t.copy_from(Tensor::zeros({3, 2})), ShapeError);
  EXPECT_THROW(t.copy_from(Tensor::zeros({2, 3}, DType::f64)), ShapeError);
  EXPECT_EQ(t.dim(-1), 3);
  EXPECT_EQ(t.dim(-2), 2);
  EXPECT_THROW(t.dim(2), ShapeError);
  EXPECT_THROW(t.dim(-3), ShapeError);
}

}  // namespace
