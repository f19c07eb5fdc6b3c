// tests/test_autograd.cpp — the backward walk's rules: gradients of a tensor used several
// times add up, leaf gradients accumulate across backward() calls until zero_grad(), grad mode
// off records nothing, the tape is freed as backward runs, and misuse throws.
#include <gtest/gtest.h>

#include <cmath>  // std::nan
#include <memory>  // std::weak_ptr, std::make_shared
#include <string>  // std::string
#include <vector>  // std::vector

#include "engine/autograd.h"  // Node, record, zero_grad, NoGradGuard
#include "engine/nn.h"        // MlpParams
#include "ops/elementwise.h"  // scale, relu
#include "ops/linear.h"       // linear
#include "ops/mlp.h"          // mlp_forward
#include "ops/slice.h"        // slice_columns
#include "tests/test_util.h"  // gradient_matches, random tensors

namespace {

using namespace subliminal;
using subliminal::test::gradient_matches;
using subliminal::test::random_f64;

// out = a + b (same shape, float64) as a node of its own, so a test can feed one tensor to
// both inputs. Honours each sink's accumulate flag, as the Node contract asks.
class AddNode : public Node {
 public:
  const char* name() const override { return "test_add"; }
  void backward(const Tensor& dy, std::vector<GradSink>& sinks) override {
    for (GradSink& sink : sinks) {
      if (!sink.wanted()) continue;
      double* out = sink.target.data<double>();
      const double* g = dy.data<double>();
      for (int64_t i = 0; i < dy.numel(); ++i) out[i] = (sink.accumulate ? out[i] : 0.0) + g[i];
    }
  }
};

Tensor add(const Tensor& a, const Tensor& b) {
  std::vector<double> sum = a.to_vector<double>();
  const std::vector<double> bv = b.to_vector<double>();
  for (size_t i = 0; i < sum.size(); ++i) sum[i] += bv[i];
  Tensor out = Tensor::from_vector(sum, a.shape());
  if (any_requires_grad({a, b})) record(out, std::make_shared<AddNode>(), {a, b});
  return out;
}

Tensor leaf(const std::vector<double>& values, const Shape& shape) {
  Tensor t = Tensor::from_vector(values, shape);
  t.set_requires_grad(true);
  return t;
}

std::vector<double> grad_of(const Tensor& t) { return t.grad().to_vector<double>(); }

// ---- A tensor used more than once ----------------------------------------------------------------

// x + x: one node, the same leaf as both inputs — the second sink must add to the first.
TEST(Autograd, SameLeafAsBothInputsOfOneNodeGetsBothGradients) {
  Tensor x = leaf({1, 2, 3}, {3});
  add(x, x).backward();
  EXPECT_EQ(grad_of(x), (std::vector<double>{2, 2, 2}));
}

// out = x, whose backward writes the first element of its sink and then throws: an op that
// finds bad input (a label out of range) partway through its loop.
class ThrowsHalfwayNode : public Node {
 public:
  const char* name() const override { return "test_throws_halfway"; }
  void backward(const Tensor&, std::vector<GradSink>& sinks) override {
    sinks[0].target.data<double>()[0] = 777.0;
    throw Error("test_throws_halfway: bad input");
  }
};

// A backward that throws leaves its leaves without a gradient (has_grad() false), not with the
// half it wrote; the next backward overwrites that buffer rather than adding to it.
TEST(Autograd, ABackwardThatThrowsLeavesNoHalfWrittenGradient) {
  Tensor x = leaf({1, 2, 3}, {3});
  Tensor out = Tensor::from_vector(x.to_vector<double>(), x.shape());
  record(out, std::make_shared<ThrowsHalfwayNode>(), {x});
  EXPECT_THROW(out.backward(), Error);
  EXPECT_FALSE(x.has_grad());
  add(x, x).backward();
  EXPECT_EQ(grad_of(x), (std::vector<double>{2, 2, 2}));
}

// 2x + 3x through two scale nodes: d/dx = 5.
TEST(Autograd, LeafUsedByTwoNodesGetsTheSum) {
  Tensor x = leaf({1, -2}, {2});
  add(scale(x, 2.0), scale(x, 3.0)).backward();
  EXPECT_EQ(grad_of(x), (std::vector<double>{5, 5}));
}

// An interior tensor consumed twice: its per-pass gradient buffer must sum both uses before its
// own node runs. y = relu(x); L = Σ (y + y) → dL/dx = 2 where x > 0, else 0.
TEST(Autograd, InteriorTensorUsedTwiceSumsBeforeItsNodeRuns) {
  Tensor x = leaf({1.5, -0.5, 2.0}, {3});
  Tensor y = relu(x);
  add(y, y).backward();
  EXPECT_EQ(grad_of(x), (std::vector<double>{2, 0, 2}));
}

// Two slices of one tensor, overlapping in columns 1 and 2: the slice backward scatters (zeros
// elsewhere) and the two scatters add. x is [2, 4]; columns [0, 3) and [1, 4) → column
// counts 1, 2, 2, 1.
TEST(Autograd, TwoOverlappingSlicesAddTheirScatters) {
  Tensor x = leaf({1, 2, 3, 4, 5, 6, 7, 8}, {2, 4});
  add(slice_columns(x, {0, 3}), slice_columns(x, {1, 4})).backward();
  EXPECT_EQ(grad_of(x), (std::vector<double>{1, 2, 2, 1, 1, 2, 2, 1}));
}

// One weight and bias in two Linear nodes and one MLP's parameters in two fused MLP nodes:
// the second node's sinks accumulate (beta = 1 GEMMs, bias gradients through a temporary).
// Checked against finite differences.
TEST(Autograd, SharedParametersOfTwoLinearOrMlpNodesAccumulate) {
  Tensor x1 = random_f64({2, 3, 4}, 1), x2 = random_f64({2, 3, 4}, 2);
  Tensor w = random_f64({2, 5, 4}, 3), b = random_f64({2, 5}, 4);
  w.set_requires_grad(true);
  b.set_requires_grad(true);
  EXPECT_TRUE(gradient_matches([&] { return add(linear(x1, w, b), linear(x2, w, b)); }, {w, b}, 1e-6));

  MlpParams params(MlpShape{{4, 6, 3}}, 2, DType::f64, Device::cpu);
  init_mlp(params, InitScheme::torch_default, {5, 6}, 0);
  for (MlpFusion fusion : {MlpFusion::whole, MlpFusion::per_layer}) {
    EXPECT_TRUE(gradient_matches(
        [&] { return add(mlp_forward(x1, params, fusion), mlp_forward(x2, params, fusion)); },
        params.tensors(), 1e-6));
  }
}

// A slice's backward that overwrites its sink must write zeros in the columns outside the
// slice too: the buffer it overwrites (here a leaf's, after zero_grad) holds stale values.
TEST(Autograd, SliceBackwardOverwritesTheColumnsOutsideTheSlice) {
  Tensor x = leaf({1, 2, 3, 4, 5, 6, 7, 8}, {2, 4});
  set_grad_buffer(x, Tensor::full({2, 4}, std::nan(""), DType::f64));
  slice_columns(x, {1, 3}).backward();
  EXPECT_EQ(grad_of(x), (std::vector<double>{0, 1, 1, 0, 0, 1, 1, 0}));
}

// Per-sink wants in the fused MLP node: with every weight frozen (requires_grad off), the
// biases still get their gradients — the output layer's cannot ride on a weight GEMM that no
// longer runs. Checked against finite differences.
TEST(Autograd, FrozenWeightsStillGiveTheBiasesTheirGradients) {
  MlpParams params(MlpShape{{4, 6, 3}}, 2, DType::f64, Device::cpu);
  init_mlp(params, InitScheme::torch_default, {5, 6}, 0);
  for (int l = 0; l < 2; ++l) Tensor(params.weight(l)).set_requires_grad(false);
  const Tensor x = random_f64({2, 3, 4}, 1);
  EXPECT_TRUE(gradient_matches([&] { return mlp_forward(x, params, MlpFusion::whole); },
                               {params.bias(0), params.bias(1)}, 1e-6));
}

// A backward must not write into the gradient it receives: at the root that is the seed of
// ones, which autograd keeps per shape and every later backward of that shape starts from. A
// Linear + ReLU node at the root masks a copy of it, not the seed.
TEST(Autograd, ABackwardLeavesTheSeedOfOnesAlone) {
  const Tensor x = random_f64({1, 2, 3}, 9);
  Tensor w = random_f64({1, 4, 3}, 10);
  w.set_requires_grad(true);
  const Tensor y = linear(x, w, Tensor(), gemm::Activation::relu);
  const std::vector<double> yv = y.to_vector<double>();
  ASSERT_NE(std::count(yv.begin(), yv.end(), 0.0), 0) << "no output for the ReLU to mask";
  y.backward();
  Tensor z = leaf(std::vector<double>(8, 0.5), {1, 2, 4});
  scale(z, 1.0).backward();
  EXPECT_EQ(grad_of(z), std::vector<double>(8, 1.0));
}

// ---- Accumulation across backward() calls ----------------------------------------------------------

// Leaf gradients are sums over backward() calls until zero_grad(); after zero_grad the next
// backward overwrites (no memset needed) — what a training step relies on.
TEST(Autograd, GradientsAccumulateAcrossBackwardsUntilZeroGrad) {
  Tensor x = leaf({1, 2}, {2});
  EXPECT_FALSE(x.has_grad());
  scale(x, 3.0).backward();
  EXPECT_EQ(grad_of(x), (std::vector<double>{3, 3}));
  scale(x, 4.0).backward();  // no zero_grad: 3 + 4
  EXPECT_EQ(grad_of(x), (std::vector<double>{7, 7}));

  zero_grad({x});
  EXPECT_FALSE(x.has_grad());
  scale(x, 5.0).backward();  // overwrites the stale 7s
  EXPECT_TRUE(x.has_grad());
  EXPECT_EQ(grad_of(x), (std::vector<double>{5, 5}));
}

// zero_grad must not clear the buffer (the next backward overwrites it): a preallocated
// gradient buffer in an arena keeps its identity, so views of it stay valid.
TEST(Autograd, ZeroGradKeepsTheGradientBufferInPlace) {
  Tensor x = leaf({1, 2}, {2});
  Tensor buffer = Tensor::full({2}, 99.0, DType::f64);
  set_grad_buffer(x, buffer);
  scale(x, 2.0).backward();
  EXPECT_EQ(buffer.to_vector<double>(), (std::vector<double>{2, 2}));  // written through, 99s overwritten
  zero_grad({x});
  scale(x, 6.0).backward();
  EXPECT_EQ(buffer.to_vector<double>(), (std::vector<double>{6, 6}));
  EXPECT_EQ(x.grad().raw(), buffer.raw());
}

// A leaf that is its own loss accumulates like any other leaf: two backward() calls give 2.
TEST(Autograd, BackwardOnALeafTwiceAccumulates) {
  Tensor x = leaf({4, 5}, {2});
  x.backward();
  x.backward();
  EXPECT_EQ(grad_of(x), (std::vector<double>{2, 2}));
}

// A gradient buffer must fit its leaf (the backward writes numel() elements into it), and
// only leaves keep one: an op's output gets its gradient per pass.
TEST(Autograd, SetGradBufferChecksTheLeafAndTheShape) {
  Tensor x = leaf({1, 2}, {2});
  EXPECT_THROW(set_grad_buffer(x, Tensor::zeros({3}, DType::f64)), ShapeError);
  EXPECT_THROW(set_grad_buffer(x, Tensor::zeros({2}, DType::f32)), ShapeError);
  EXPECT_THROW(set_grad_buffer(scale(x, 2.0), Tensor::zeros({2}, DType::f64)), Error);
}

// ---- Grad mode ----------------------------------------------------------------------------------

// Evaluation and the frozen teacher's forward run under NoGradGuard: no node, no saved
// activations. Guards nest, each restoring the mode it found.
TEST(Autograd, NoGradGuardRecordsNothingAndRestoresTheMode) {
  Tensor x = leaf({1, -1}, {2});
  ASSERT_TRUE(grad_enabled());
  {
    NoGradGuard outer;
    {
      NoGradGuard inner;
      EXPECT_FALSE(grad_enabled());
    }
    EXPECT_FALSE(grad_enabled());  // the inner guard restores "off", not "on"
    Tensor y = relu(scale(x, 2.0));
    EXPECT_FALSE(y.requires_grad());
    EXPECT_EQ(y.grad_fn(), nullptr);
    EXPECT_THROW(y.backward(), Error);
  }
  EXPECT_TRUE(grad_enabled());
  Tensor z = scale(x, 2.0);
  EXPECT_TRUE(z.requires_grad());
  EXPECT_NE(z.grad_fn(), nullptr);
}

// ---- The tape is freed -------------------------------------------------------------------------------

// After backward, every node's saved tensors and edges are gone: the intermediate node is
// destroyed once only the loss refers to it, and the input's storage is no longer held by the
// tape. (Training would otherwise keep every step's activations alive.)
TEST(Autograd, BackwardFreesTheTape) {
  Tensor x = leaf({1, 2, 3}, {3});
  const long storage_users = x.impl().storage.use_count();
  std::weak_ptr<Node> scale_node;
  Tensor loss;
  {
    Tensor h = scale(x, 2.0);
    scale_node = h.grad_fn();
    loss = relu(h);  // relu saves its output; its edge holds h's node
  }
  ASSERT_FALSE(scale_node.expired()) << "the tape keeps the intermediate node alive before backward";
  loss.backward();
  EXPECT_TRUE(scale_node.expired()) << "backward must drop the edges that kept the node alive";
  const std::shared_ptr<Node> root = loss.grad_fn();
  ASSERT_NE(root, nullptr);
  EXPECT_TRUE(root->released);
  EXPECT_TRUE(root->saved.empty());
  EXPECT_TRUE(root->edges.empty());
  EXPECT_EQ(x.impl().storage.use_count(), storage_users);
}

// A Linear node saves x and w (as detached views of the same storage): after backward the tape
// holds neither.
TEST(Autograd, LinearReleasesItsSavedInputs) {
  Tensor x = random_f64({1, 2, 3}, 7), w = random_f64({1, 4, 3}, 8);
  w.set_requires_grad(true);
  const long x_users = x.impl().storage.use_count(), w_users = w.impl().storage.use_count();
  Tensor y = linear(x, w, Tensor());
  EXPECT_GT(x.impl().storage.use_count(), x_users);
  EXPECT_GT(w.impl().storage.use_count(), w_users);
  y.backward();
  EXPECT_EQ(x.impl().storage.use_count(), x_users);
  EXPECT_EQ(w.impl().storage.use_count(), w_users);
}

// Reusing a freed graph would silently compute with missing saved tensors; it must say why
// it cannot.
TEST(Autograd, SecondBackwardThroughAFreedTapeThrows) {
  Tensor x = leaf({1, 2}, {2});
  Tensor y = scale(x, 3.0);
  y.backward();
  try {
    y.backward();
    FAIL() << "a second backward through the same graph must throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("freed"), std::string::npos) << e.what();
  }
}

// A loss computed entirely without gradients (e.g. under NoGradGuard by mistake) must not
// "succeed" with nothing updated.
TEST(Autograd, BackwardOnATensorWithoutGradientThrows) {
  Tensor x = Tensor::from_vector(std::vector<double>{1, 2}, {2});
  EXPECT_THROW(x.backward(), Error);
  EXPECT_THROW(scale(x, 2.0).backward(), Error);  // no input required a gradient: nothing recorded
}

// ---- Non-scalar roots and leaves ----------------------------------------------------------------------

// backward() of several elements differentiates their sum (one loss per model): d Σ 3x / dx = 3.
TEST(Autograd, BackwardOfANonScalarDifferentiatesTheSum) {
  Tensor x = leaf({1, 2, 3, 4, 5, 6}, {2, 3});
  scale(x, 3.0).backward();
  EXPECT_EQ(grad_of(x), (std::vector<double>(6, 3.0)));
}

// The degenerate graph: a leaf is its own loss, d x / d x = 1.
TEST(Autograd, BackwardOnALeafGivesOnes) {
  Tensor x = leaf({4, 5}, {2});
  x.backward();
  EXPECT_EQ(grad_of(x), (std::vector<double>{1, 1}));
}

// Labels (int32) have no gradient, and only leaves can be marked: an op's output gets its
// requires_grad from its inputs.
TEST(Autograd, OnlyFloatingLeavesCanRequireGradients) {
  Tensor labels = Tensor::from_vector(std::vector<int32_t>{1, 2}, {2});
  EXPECT_THROW(labels.set_requires_grad(true), ShapeError);
  Tensor x = leaf({1}, {1});
  EXPECT_THROW(scale(x, 2.0).set_requires_grad(true), Error);  // not a leaf
}

}  // namespace
