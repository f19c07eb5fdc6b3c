// tests/test_init.cpp — initialising the MLP arena: nn.Linear's default and the paper's
// normal init have the right distributions; inits are reproducible, variants and models
// independent; and the student's copy of the teacher's init is exact.
#include <gtest/gtest.h>

#include <algorithm>  // std::max
#include <cmath>      // std::sqrt
#include <set>        // std::set: distinct values
#include <vector>     // std::vector

#include "engine/kernels.h"   // fill
#include "engine/nn.h"        // MlpParams, init_mlp
#include "engine/random.h"    // fill_uniform, stream_id
#include "tests/test_util.h"  // values_of

namespace {

using namespace subliminal;
using subliminal::test::values_of;

// Big enough for tight variance estimates (W0 has 120 000 values), small enough to be instant.
const MlpShape kShape{{400, 300, 50, 13}};

MlpParams initialised(int64_t models, std::vector<uint64_t> seeds, InitScheme scheme, uint32_t variant = 0) {
  MlpParams p(kShape, models, DType::f32, Device::cpu);
  init_mlp(p, scheme, seeds, variant);
  return p;
}

double variance(const std::vector<double>& v) {
  double mean = 0, var = 0;
  for (double x : v) mean += x;
  mean /= double(v.size());
  for (double x : v) var += (x - mean) * (x - mean);
  return var / double(v.size());
}

// nn.Linear's reset_parameters: W and b ~ U(−1/√fan_in, 1/√fan_in), variance bound²/3.
TEST(Init, TorchDefaultIsUniformWithinOneOverSqrtFanIn) {
  const MlpParams p = initialised(1, {7}, InitScheme::torch_default);
  for (int l = 0; l < kShape.layers(); ++l) {
    const double bound = 1.0 / std::sqrt(double(kShape.sizes[size_t(l)]));
    for (const Tensor& t : {p.weight(l), p.bias(l)}) {
      SCOPED_TRACE("layer " + std::to_string(l) + " " + t.describe());
      const std::vector<double> v = values_of(t);
      for (double x : v) ASSERT_LE(std::abs(x), bound);
      if (v.size() >= 100) {
        // Relative standard error of a uniform's sample variance is √(0.8/n); allow 5 of them.
        EXPECT_NEAR(variance(v) / (bound * bound / 3), 1.0, 5 * std::sqrt(0.8 / double(v.size())));
      } else {  // too few for the variance to say much (the 13-element bias): spread, all distinct
        double largest = 0;
        for (double x : v) largest = std::max(largest, std::abs(x));
        EXPECT_GT(largest, bound / 2);
        EXPECT_EQ(std::set<double>(v.begin(), v.end()).size(), v.size());
      }
    }
  }
}

// The paper's script: W ~ N(0, 1/fan_in), b = 0. The biases are checked after a torch_default
// init filled them, so "exactly 0" means the normal init wrote zeros, not that nobody wrote.
TEST(Init, NormalFanInHasStdOneOverSqrtFanInAndZeroBiases) {
  MlpParams p = initialised(1, {8}, InitScheme::torch_default);
  init_mlp(p, InitScheme::normal_fan_in, {8}, 0);
  for (int l = 0; l < kShape.layers(); ++l) {
    const double fan_in = double(kShape.sizes[size_t(l)]);
    const std::vector<double> w = values_of(p.weight(l));
    if (w.size() >= 10000) {  // √(2/n) relative standard error of a normal's variance
      EXPECT_NEAR(variance(w) * fan_in, 1.0, 5 * std::sqrt(2.0 / double(w.size()))) << "layer " << l;
    }
    for (double b : values_of(p.bias(l))) EXPECT_EQ(b, 0.0) << "layer " << l;
  }
}

// Reproducible from the seed; the cross-init control (variant 1) and other seeds differ in
// every tensor.
TEST(Init, SameSeedSameValuesOtherVariantOrSeedOtherValues) {
  const MlpParams a = initialised(1, {5}, InitScheme::torch_default);
  const MlpParams b = initialised(1, {5}, InitScheme::torch_default);
  const MlpParams variant1 = initialised(1, {5}, InitScheme::torch_default, 1);
  const MlpParams seed6 = initialised(1, {6}, InitScheme::torch_default);
  EXPECT_EQ(a.values().to_vector<float>(), b.values().to_vector<float>());
  for (size_t k = 0; k < a.tensors().size(); ++k) {
    EXPECT_NE(a.tensors()[k].to_vector<float>(), variant1.tensors()[k].to_vector<float>()) << "tensor " << k;
    EXPECT_NE(a.tensors()[k].to_vector<float>(), seed6.tensors()[k].to_vector<float>()) << "tensor " << k;
  }
}

// "Model m of --models N is the same run as --models 1 --seed seed+m" starts here.
TEST(Init, ModelMOfABatchedInitIsAOneModelInitWithSeedPlusM) {
  const MlpParams batched = initialised(3, {20, 21, 22}, InitScheme::torch_default);
  for (int64_t m = 0; m < 3; ++m) {
    const MlpParams single = initialised(1, {uint64_t(20 + m)}, InitScheme::torch_default);
    for (size_t k = 0; k < single.tensors().size(); ++k)
      EXPECT_EQ(batched.tensors()[k].rows(m, 1).to_vector<float>(), single.tensors()[k].to_vector<float>())
          << "model " << m << " tensor " << k;
  }
}

// Each tensor draws from its own stream, stream_id(kInitPurpose, variant, tensor index) under
// the model's seed (engine/nn.h): a bias is not the start of its weight's numbers.
TEST(Init, EachTensorDrawsFromItsOwnDocumentedStream) {
  const MlpParams p = initialised(2, {30, 31}, InitScheme::torch_default, 1);
  const std::vector<Tensor> tensors = p.tensors();
  for (int64_t m = 0; m < 2; ++m)
    for (size_t k = 0; k < tensors.size(); ++k) {
      Tensor expected = Tensor::empty(tensors[k].rows(m, 1).shape(), DType::f32);
      const double bound = 1.0 / std::sqrt(double(kShape.sizes[k / 2]));
      fill_uniform(expected, {uint64_t(30 + m), stream_id(kInitPurpose, 1, uint32_t(k))}, -bound, bound);
      EXPECT_EQ(tensors[k].rows(m, 1).to_vector<float>(), expected.to_vector<float>())
          << "model " << m << " tensor " << k;
    }
}

// The student starts as an exact copy of the teacher's init (load_state_dict), and the copy
// owns its own memory: training the teacher must not move the student.
TEST(Init, CopyFromIsAnExactIndependentCopy) {
  const MlpParams teacher = initialised(2, {1, 2}, InitScheme::torch_default);
  MlpParams student(kShape, 2, DType::f32, Device::cpu);
  student.copy_from(teacher);
  EXPECT_EQ(student.values().to_vector<float>(), teacher.values().to_vector<float>());
  fill(teacher.weight(0), 0.5);
  EXPECT_NE(student.weight(0).to_vector<float>(), teacher.weight(0).to_vector<float>());

  MlpParams other_shape(MlpShape{{400, 300, 13}}, 2, DType::f32, Device::cpu);
  EXPECT_THROW(other_shape.copy_from(teacher), ShapeError);
}

// copy_model_from moves one model between arenas (the cross-model pairing of the paper preset).
TEST(Init, CopyModelFromMovesOneModel) {
  const MlpParams source = initialised(3, {1, 2, 3}, InitScheme::torch_default);
  MlpParams target = initialised(2, {7, 8}, InitScheme::torch_default);  // model 1: values not 0
  const std::vector<float> model_1_before = target.values().to_vector<float>();
  target.copy_model_from(source, 2, 0);
  const MlpParams model_1 = initialised(1, {8}, InitScheme::torch_default);
  for (size_t k = 0; k < source.tensors().size(); ++k) {
    EXPECT_EQ(target.tensors()[k].rows(0, 1).to_vector<float>(),
              source.tensors()[k].rows(2, 1).to_vector<float>());
    EXPECT_EQ(target.tensors()[k].rows(1, 1).to_vector<float>(), model_1.tensors()[k].to_vector<float>())
        << "model 1 moved, tensor " << k;
  }
}

// Every parameter view sits inside the arena on a 256-byte boundary (cuBLASLt's alignment), and
// the views do not overlap.
TEST(Init, ParameterViewsAreAlignedAndDisjoint) {
  const MlpParams p(kShape, 3, DType::f32, Device::cpu);
  const char* base = static_cast<const char*>(p.values().raw());
  size_t end_of_previous = 0;
  for (const Tensor& t : p.tensors()) {
    const size_t offset = size_t(static_cast<const char*>(t.raw()) - base);
    EXPECT_EQ(offset % 256, 0u) << t.describe();
    EXPECT_GE(offset, end_of_previous);
    end_of_previous = offset + t.bytes();
  }
  EXPECT_LE(end_of_previous, p.values().bytes());
  EXPECT_EQ(kShape.parameters_per_model(), 400 * 300 + 300 + 300 * 50 + 50 + 50 * 13 + 13);
}

// An arena needs at least one model and positive sizes, and init_mlp one seed per model.
// copy_from refuses another model count even where the padded arenas happen to be the same size
// ({1, 1}: one model or two both fill 64 + 64 floats), which would copy into the padding.
TEST(Init, BadArenasSeedsAndCopiesAreErrors) {
  EXPECT_THROW(MlpParams(kShape, 0, DType::f32, Device::cpu), ShapeError);
  EXPECT_THROW(MlpParams(MlpShape{{4, 0, 2}}, 1, DType::f32, Device::cpu), ShapeError);
  EXPECT_THROW(MlpParams(MlpShape{{4}}, 1, DType::f32, Device::cpu), ShapeError);
  MlpParams two(MlpShape{{1, 1}}, 2, DType::f32, Device::cpu);
  EXPECT_THROW(init_mlp(two, InitScheme::torch_default, {1}, 0), Error);
  EXPECT_THROW(init_mlp(two, InitScheme::torch_default, {1, 2, 3}, 0), Error);
  MlpParams one(MlpShape{{1, 1}}, 1, DType::f32, Device::cpu);
  ASSERT_EQ(one.values().numel(), two.values().numel());
  EXPECT_THROW(one.copy_from(two), ShapeError);
}

TEST(Init, ALayerThatDoesNotExistIsAShapeError) {
  const MlpParams p(kShape, 1, DType::f32, Device::cpu);  // 3 layers
  EXPECT_EQ(p.weight(2).dim(-1), 50);                     // [.., 13, 50]: the last layer, 50 → 13
  EXPECT_THROW(p.weight(3), ShapeError);
  EXPECT_THROW(p.bias(-1), ShapeError);
}

}  // namespace
