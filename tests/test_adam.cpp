// tests/test_adam.cpp — Adam against the update written out from REFERENCE.md §1
// (torch.optim.Adam), step by step, computed here in double independently of engine/adam.cpp:
//   g ← g + wd·p;  m = β1·m + (1−β1)·g;  v = β2·v + (1−β2)·g²;
//   p −= (lr / (1 − β1^t)) · m / (√v / √(1 − β2^t) + eps)
#include <gtest/gtest.h>

#include <cmath>   // std::pow, std::sqrt
#include <vector>  // std::vector

#include "engine/adam.h"      // Adam, AdamOptions
#include "tests/test_util.h"  // values_of

namespace {

using namespace subliminal;
using subliminal::test::values_of;

// Parameters and three steps' gradients for 6 values: a zero gradient, signs that flip, a
// large and a tiny gradient, so the bias corrections and eps all matter somewhere.
const std::vector<double> kStart = {0.5, -1.25, 2.0, 0.0, -0.3, 10.0};
const std::vector<std::vector<double>> kGradients = {
    {0.1, -0.2, 0.0, 3.0, 1e-6, -50.0},
    {-0.1, 0.4, 0.0, 2.0, 2e-6, 25.0},
    {0.3, -0.1, 0.0, -1.0, -1e-6, 5.0},
};

struct Expected {
  std::vector<std::vector<double>> p;  // parameters after each step
  std::vector<double> m, v;            // moments after the last step
};

Expected reference_adam(const AdamOptions& o) {
  Expected e;
  std::vector<double> p = kStart, m(p.size(), 0.0), v(p.size(), 0.0);
  for (size_t step = 0; step < kGradients.size(); ++step) {
    const double t = double(step + 1);
    const double bc1 = 1 - std::pow(o.beta1, t), bc2 = 1 - std::pow(o.beta2, t);
    for (size_t i = 0; i < p.size(); ++i) {
      const double g = kGradients[step][i] + o.weight_decay * p[i];
      m[i] = o.beta1 * m[i] + (1 - o.beta1) * g;
      v[i] = o.beta2 * v[i] + (1 - o.beta2) * g * g;
      p[i] -= (o.lr / bc1) * m[i] / (std::sqrt(v[i]) / std::sqrt(bc2) + o.eps);
    }
    e.p.push_back(p);
  }
  e.m = m;
  e.v = v;
  return e;
}

Tensor make(const std::vector<double>& values, DType dtype) {
  if (dtype == DType::f64) return Tensor::from_vector(values, {int64_t(values.size())});
  return Tensor::from_vector(std::vector<float>(values.begin(), values.end()), {int64_t(values.size())});
}

// Runs three steps on `dtype` arenas and compares every parameter after every step, and the
// moments at the end, with the reference. float32 rounds each operation, hence its tolerance.
void expect_matches_reference(const AdamOptions& options, DType dtype) {
  SCOPED_TRACE(std::string(dtype_name(dtype)) + ", weight_decay " + std::to_string(options.weight_decay));
  const double tolerance = dtype == DType::f64 ? 1e-14 : 2e-6;
  const Expected expected = reference_adam(options);
  Tensor values = make(kStart, dtype), grads = make(kGradients[0], dtype);
  Adam adam(values, grads, options);
  EXPECT_EQ(adam.steps_taken(), 0);
  for (size_t step = 0; step < kGradients.size(); ++step) {
    grads.copy_from(make(kGradients[step], dtype));
    adam.step();
    EXPECT_EQ(adam.steps_taken(), int64_t(step + 1));
    const std::vector<double> got = values_of(values);
    for (size_t i = 0; i < got.size(); ++i)
      EXPECT_NEAR(got[i], expected.p[step][i], tolerance * (1 + std::abs(expected.p[step][i])))
          << "step " << step + 1 << " element " << i;
  }
  const std::vector<double> m = values_of(adam.exp_avg()), v = values_of(adam.exp_avg_sq());
  for (size_t i = 0; i < m.size(); ++i) {
    EXPECT_NEAR(m[i], expected.m[i], tolerance * (1 + std::abs(expected.m[i]))) << "m " << i;
    EXPECT_NEAR(v[i], expected.v[i], tolerance * (1 + std::abs(expected.v[i]))) << "v " << i;
  }
}

// The update in float64 agrees with the formula to rounding; steps_taken() counts 0, 1, 2, 3.
TEST(Adam, MatchesTorchsUpdateForThreeStepsFloat64) { expect_matches_reference({1e-2}, DType::f64); }

// Training runs in float32: the same steps to float32 rounding.
TEST(Adam, MatchesTorchsUpdateForThreeStepsFloat32) { expect_matches_reference({1e-2}, DType::f32); }

// L2 weight decay as torch applies it: added to the gradient before the moments.
TEST(Adam, WeightDecayIsAddedToTheGradient) {
  AdamOptions options{1e-2, 0.9, 0.999, 1e-8, 0.1};
  expect_matches_reference(options, DType::f64);
  expect_matches_reference(options, DType::f32);
}

// Non-default betas and eps reach the update (a hard-coded 0.9 or 1e-8 would pass the tests above).
TEST(Adam, UsesTheGivenBetasAndEps) { expect_matches_reference({3e-3, 0.8, 0.99, 1e-3, 0.0}, DType::f64); }

// The first step of Adam moves every parameter with a non-zero gradient by almost exactly lr
// against the gradient's sign (m̂/√v̂ = g/|g|): a sanity check independent of the formula above.
TEST(Adam, FirstStepMovesByLearningRate) {
  Tensor values = make({1.0, 1.0, 1.0}, DType::f64), grads = make({0.5, -20.0, 0.0}, DType::f64);
  Adam adam(values, grads, {0.01});
  adam.step();
  const std::vector<double> p = values_of(values);
  EXPECT_NEAR(p[0], 1.0 - 0.01, 1e-9);
  EXPECT_NEAR(p[1], 1.0 + 0.01, 1e-9);
  EXPECT_EQ(p[2], 1.0);  // zero gradient: m = 0, no move
}

// Without weight decay the parameter does not enter the gradient, as in torch (which adds
// weight_decay·p only when weight_decay ≠ 0) and the GPU: an infinite parameter leaves the moments
// finite instead of making them NaN through 0·inf.
TEST(Adam, WithoutWeightDecayAnInfiniteParameterLeavesTheMomentsFinite) {
  for (DType dtype : {DType::f32, DType::f64}) {
    Tensor values = make({INFINITY, 1.0}, dtype), grads = make({0.5, 0.5}, dtype);
    Adam adam(values, grads, {0.01});
    adam.step();
    for (double m : values_of(adam.exp_avg())) EXPECT_NEAR(m, 0.1 * 0.5, 1e-8);  // (1 − β1)·g, not NaN
    EXPECT_EQ(values_of(values)[0], INFINITY);
  }
}

// Values and gradients are one flat arena each; a mismatch is a programming error caught early.
TEST(Adam, RejectsMismatchedArenas) {
  EXPECT_THROW(Adam(make({1, 2}, DType::f64), make({1, 2, 3}, DType::f64), {}), ShapeError);
  EXPECT_THROW(Adam(make({1, 2}, DType::f64), make({1, 2}, DType::f32), {}), ShapeError);
  const Tensor matrix = Tensor::zeros({2, 2}, DType::f64);  // a parameter, not the arena
  EXPECT_THROW(Adam(matrix, Tensor::zeros({2, 2}, DType::f64), {}), ShapeError);
}

}  // namespace
