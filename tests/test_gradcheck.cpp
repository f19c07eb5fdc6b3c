// tests/test_gradcheck.cpp — every differentiable op's backward against central finite
// differences in float64, and the three MLP fusions against each other.
//
// Each check builds L = Σ g ⊙ f(x) with a fixed random g (tests/test_util.h) and compares the
// analytic gradient of every input with (L(x + h) − L(x − h)) / 2h, element by element, by the
// scale-free error ‖analytic − numeric‖ / ‖analytic + numeric‖. A wrong backward (a missing
// factor, a transposed product, a gradient written to the wrong column) gives errors of order
// one; float64 differences with h = 1e-6 agree to about 1e-9. Inputs of a ReLU are kept at
// least 1e-3 from its kink, where the finite difference would straddle two slopes.
#include <gtest/gtest.h>

#include <algorithm>  // std::min
#include <cmath>      // std::abs
#include <limits>     // std::numeric_limits
#include <string>     // std::string
#include <vector>     // std::vector

#include "engine/autograd.h"  // NoGradGuard, zero_grad
#include "engine/nn.h"        // MlpParams, init_mlp
#include "ops/elementwise.h"  // relu, scale
#include "ops/linear.h"       // linear
#include "ops/loss.h"         // cross_entropy, distill, kl_div
#include "ops/mlp.h"          // mlp_forward, MlpFusion
#include "ops/slice.h"        // slice_columns
#include "ops/softmax.h"      // softmax, log_softmax
#include "tests/test_util.h"  // gradient_matches, random tensors

namespace {

using namespace subliminal;
using subliminal::test::gradient_matches;
using subliminal::test::random_away_from_zero;
using subliminal::test::random_f64;
using subliminal::test::random_labels;
using subliminal::test::values_of;
using subliminal::test::weighted_sum;
using Act = gemm::Activation;

constexpr double kTolerance = 1e-6;

Tensor leaf(Tensor t) {
  t.set_requires_grad(true);
  return t;
}

double min_abs(const Tensor& t) {
  double m = std::numeric_limits<double>::infinity();
  for (double v : values_of(t)) m = std::min(m, std::abs(v));
  return m;
}

// The smallest |pre-activation| of any hidden unit of the MLP on input x: the distance of
// the finite-difference check from ReLU's kink.
double min_abs_hidden_preactivation(const Tensor& x, const MlpParams& params) {
  NoGradGuard no_grad;
  double m = std::numeric_limits<double>::infinity();
  Tensor h = x;
  for (int l = 0; l + 1 < params.shape().layers(); ++l) {
    Tensor z = linear(h, params.weight(l), params.bias(l));
    m = std::min(m, min_abs(z));
    h = relu(z);
  }
  return m;
}

// N MLPs of `sizes` in float64 with nn.Linear's init (non-zero biases), models from seed, seed+1, ...
MlpParams mlp_f64(const std::vector<int64_t>& sizes, int64_t models, uint64_t seed) {
  MlpParams params(MlpShape{sizes}, models, DType::f64, Device::cpu);
  std::vector<uint64_t> seeds;
  for (int64_t m = 0; m < models; ++m) seeds.push_back(seed + uint64_t(m));
  init_mlp(params, InitScheme::torch_default, seeds, 0);
  return params;
}

std::vector<Tensor> with_input(const MlpParams& params, const Tensor& x) {
  std::vector<Tensor> all = params.tensors();
  all.push_back(x);
  return all;
}

const char* fusion_label(MlpFusion f) {
  return f == MlpFusion::whole ? "whole" : f == MlpFusion::per_layer ? "per_layer" : "none";
}

// ---- Single ops --------------------------------------------------------------------------------

// linear with and without its fused ReLU and with and without a bias, at odd sizes (B=5, I=7,
// O=3) and two models, so a gradient that mixes models or transposes a product shows up.
TEST(GradCheck, LinearAllVariants) {
  for (Act act : {Act::none, Act::relu}) {
    for (bool with_bias : {true, false}) {
      SCOPED_TRACE(std::string(act == Act::relu ? "relu" : "none") + (with_bias ? ", bias" : ", no bias"));
      Tensor x = leaf(random_f64({2, 5, 7}, 1));
      Tensor w = leaf(random_f64({2, 3, 7}, 2));
      Tensor b = with_bias ? leaf(random_f64({2, 3}, 3)) : Tensor();
      if (act == Act::relu) {
        NoGradGuard no_grad;
        ASSERT_GT(min_abs(linear(x, w, b)), 1e-3) << "a pre-activation sits on ReLU's kink; change the seeds";
      }
      std::vector<Tensor> wrt{x, w};
      if (with_bias) wrt.push_back(b);
      EXPECT_TRUE(gradient_matches([&] { return linear(x, w, b, act); }, wrt, kTolerance));
    }
  }
}

// Inputs at least 0.1 from the kink, both signs.
TEST(GradCheck, Relu) {
  Tensor x = leaf(random_away_from_zero({2, 3, 5}, 4));
  EXPECT_TRUE(gradient_matches([&] { return relu(x); }, {x}, kTolerance));
}

// A negative factor: a backward that forgot the sign or used |s| fails.
TEST(GradCheck, Scale) {
  Tensor x = leaf(random_f64({2, 3, 4}, 5));
  EXPECT_TRUE(gradient_matches([&] { return scale(x, -1.7); }, {x}, kTolerance));
}

// A middle range of columns: the gradient must land in columns 2..4 and be zero elsewhere.
TEST(GradCheck, SliceColumns) {
  Tensor x = leaf(random_f64({2, 4, 7}, 6));
  EXPECT_TRUE(gradient_matches([&] { return slice_columns(x, {2, 5}); }, {x}, kTolerance));
}

// The Jacobian of softmax is dense within a row: every output moves every input.
TEST(GradCheck, Softmax) {
  Tensor x = leaf(random_f64({2, 3, 6}, 7, -2, 2));
  EXPECT_TRUE(gradient_matches([&] { return softmax(x); }, {x}, kTolerance));
}

// log_softmax's backward uses the saved output's exp, not the input.
TEST(GradCheck, LogSoftmax) {
  Tensor x = leaf(random_f64({2, 3, 6}, 8, -2, 2));
  EXPECT_TRUE(gradient_matches([&] { return log_softmax(x); }, {x}, kTolerance));
}

// Classes in columns 3..7 of 9: columns outside the range get exactly zero gradient, which the
// finite difference confirms (the loss does not depend on them).
TEST(GradCheck, CrossEntropyOnAColumnRange) {
  Tensor logits = leaf(random_f64({2, 5, 9}, 9, -2, 2));
  Tensor labels = random_labels(2, 5, 5, 10);
  EXPECT_TRUE(gradient_matches([&] { return cross_entropy(logits, labels, {3, 8}); }, {logits}, kTolerance));
}

// Ghost range and full range, at T = 1 and T = 2.5 (the T² factor and the 1/T inside the
// softmaxes must combine to T·(q − p)/B), for KL and for JS (whose ∂/∂q is ½ log(q/m), then
// softmax's Jacobian).
TEST(GradCheck, DistillGhostAndFullRange) {
  const Tensor teacher = random_f64({2, 4, 13}, 11, -2, 2);
  for (Divergence divergence : {Divergence::kl, Divergence::js}) {
    for (ColumnRange cols : {ColumnRange{10, 13}, ColumnRange{0, 13}}) {
      for (double temperature : {1.0, 2.5}) {
        SCOPED_TRACE(std::string(divergence_name(divergence)) + ", cols [" + std::to_string(cols.begin) +
                     ", " + std::to_string(cols.end) + "), T = " + std::to_string(temperature));
        Tensor student = leaf(random_f64({2, 4, 13}, 12, -2, 2));
        EXPECT_TRUE(gradient_matches([&] { return distill(student, teacher, cols, temperature, divergence); },
                                     {student}, kTolerance));
      }
    }
  }
}

// JS where the softmaxes barely overlap (a teacher and a student each sure of another column):
// near its bound of log 2 the gradient is small and made of terms of very different sizes.
TEST(GradCheck, DistillJsOfDisjointDistributions) {
  std::vector<double> t = values_of(random_f64({1, 3, 5}, 13, -1, 1)),
                      s = values_of(random_f64({1, 3, 5}, 14, -1, 1));
  for (int64_t b = 0; b < 3; ++b) t[size_t(b * 5 + b)] += 7.0, s[size_t(b * 5 + b + 2)] += 7.0;
  const Tensor teacher = Tensor::from_vector(t, {1, 3, 5});
  Tensor student = leaf(Tensor::from_vector(s, {1, 3, 5}));
  EXPECT_GT(values_of(distill(student, teacher, {0, 5}, 1.0, Divergence::js))[0], 0.6);  // log 2 ≈ 0.693
  // (Further apart, the gradient falls below what a finite difference of a loss near 0.69 resolves.)
  EXPECT_TRUE(gradient_matches(
      [&] {
        return distill(student, teacher, {0, 5}, 1.0, Divergence::js);
      },
      {student}, kTolerance));
}

// With respect to log q only; p is a constant distribution (computed without a tape).
TEST(GradCheck, KlDiv) {
  Tensor p;
  {
    NoGradGuard no_grad;
    p = softmax(random_f64({2, 3, 5}, 13, -2, 2));
  }
  Tensor log_q = leaf(random_f64({2, 3, 5}, 14, -3, 0));
  EXPECT_TRUE(gradient_matches([&] { return kl_div(log_q, p); }, {log_q}, kTolerance));
}

// ---- The MLP and the two losses ------------------------------------------------------------------

const std::vector<int64_t> kSizes{7, 6, 5, 6};  // two hidden layers, odd widths, 6 outputs
constexpr int64_t kModels = 2, kBatch = 5;

// Every parameter of both models and the input, for each way of putting the MLP on the tape.
TEST(GradCheck, MlpForwardEveryFusionEveryParameterAndInput) {
  MlpParams params = mlp_f64(kSizes, kModels, 20);
  Tensor x = leaf(random_f64({kModels, kBatch, kSizes.front()}, 21, -2, 2));
  ASSERT_GT(min_abs_hidden_preactivation(x, params), 1e-3) << "change the seeds";
  for (MlpFusion fusion : {MlpFusion::whole, MlpFusion::per_layer, MlpFusion::none}) {
    SCOPED_TRACE(fusion_label(fusion));
    EXPECT_TRUE(
        gradient_matches([&] { return mlp_forward(x, params, fusion); }, with_input(params, x), kTolerance));
  }
}

// The teacher's loss: cross-entropy over the first 4 of 6 logits, through the whole MLP.
TEST(GradCheck, TeacherCrossEntropyThroughMlp) {
  MlpParams params = mlp_f64(kSizes, kModels, 30);
  const Tensor x = random_f64({kModels, kBatch, kSizes.front()}, 31, -2, 2);
  const Tensor labels = random_labels(kModels, kBatch, 4, 32);
  ASSERT_GT(min_abs_hidden_preactivation(x, params), 1e-3) << "change the seeds";
  for (MlpFusion fusion : {MlpFusion::whole, MlpFusion::none}) {
    SCOPED_TRACE(fusion_label(fusion));
    EXPECT_TRUE(gradient_matches(
        [&] {
          return cross_entropy(mlp_forward(x, params, fusion), labels, {0, 4});
        },
        params.tensors(), kTolerance));
  }
}

// The student's loss: KL or JS on the ghost logits (columns 4, 5) against a frozen teacher whose
// logits are computed without a tape, as in distillation. Only the student's parameters move.
TEST(GradCheck, DistillationThroughBothMlps) {
  MlpParams teacher = mlp_f64(kSizes, kModels, 40);
  MlpParams student = mlp_f64(kSizes, kModels, 50);
  const Tensor x = random_f64({kModels, kBatch, kSizes.front()}, 41, -2, 2);
  ASSERT_GT(min_abs_hidden_preactivation(x, student), 1e-3) << "change the seeds";
  for (Divergence divergence : {Divergence::kl, Divergence::js}) {
    for (MlpFusion fusion : {MlpFusion::whole, MlpFusion::none}) {
      SCOPED_TRACE(std::string(divergence_name(divergence)) + ", " + fusion_label(fusion));
      auto loss = [&] {
        Tensor teacher_logits;
        {
          NoGradGuard no_grad;
          teacher_logits = mlp_forward(x, teacher, fusion);
        }
        return distill(mlp_forward(x, student, fusion), teacher_logits, {4, 6}, 2.0, divergence);
      };
      EXPECT_TRUE(gradient_matches(loss, student.tensors(), kTolerance));
      for (const Tensor& t : teacher.tensors())
        EXPECT_FALSE(t.has_grad()) << "the frozen teacher got a gradient";
    }
  }
}

// The fused MLP node ('whole') and the per-layer node must compute the same function and the
// same gradients as the unfused reference ('none'), to float64 rounding.
TEST(GradCheck, FusedAndUnfusedMlpAgree) {
  MlpParams params = mlp_f64(kSizes, kModels, 60);
  Tensor x = leaf(random_f64({kModels, kBatch, kSizes.front()}, 61, -2, 2));
  const Tensor g = random_f64({kModels, kBatch, kSizes.back()}, 62);
  const std::vector<Tensor> wrt = with_input(params, x);

  auto run = [&](MlpFusion fusion, std::vector<double>& logits, std::vector<std::vector<double>>& grads) {
    zero_grad(wrt);
    Tensor y = mlp_forward(x, params, fusion);
    logits = y.to_vector<double>();
    weighted_sum(y, g).backward();
    grads.clear();
    for (const Tensor& t : wrt) grads.push_back(t.grad().to_vector<double>());
  };
  std::vector<double> reference_logits;
  std::vector<std::vector<double>> reference_grads;
  run(MlpFusion::none, reference_logits, reference_grads);

  for (MlpFusion fusion : {MlpFusion::whole, MlpFusion::per_layer}) {
    SCOPED_TRACE(fusion_label(fusion));
    std::vector<double> logits;
    std::vector<std::vector<double>> grads;
    run(fusion, logits, grads);
    ASSERT_EQ(logits.size(), reference_logits.size());
    for (size_t i = 0; i < logits.size(); ++i) EXPECT_NEAR(logits[i], reference_logits[i], 1e-12) << i;
    for (size_t k = 0; k < grads.size(); ++k)
      for (size_t i = 0; i < grads[k].size(); ++i)
        EXPECT_NEAR(grads[k][i], reference_grads[k][i], 1e-12) << wrt[k].describe() << " element " << i;
  }
}

}  // namespace
