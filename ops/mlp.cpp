// ops/mlp.cpp — the fused MLP node and the two layer-by-layer compositions.
#include "ops/mlp.h"

#include "engine/autograd.h"
#include "engine/kernels.h"
#include "ops/elementwise.h"
#include "ops/gemm.h"
#include "ops/linear.h"

namespace subliminal {
namespace {

// Writes Σ_b d into a bias-gradient sink, overwriting or adding as the sink says.
void bias_gradient_into(const Tensor& d, GradSink& db) {
  if (!db.accumulate) return gemm::bias_gradient(d, db.target);
  Tensor fresh = Tensor::empty(db.target.shape(), db.target.dtype(), db.target.device());
  gemm::bias_gradient(d, fresh);
  add_into(db.target, fresh);
}

class MlpNode : public Node {
 public:
  explicit MlpNode(int layers) : layers_(layers) {}
  const char* name() const override { return "mlp"; }

  // saved = [h_0 .. h_{L-1}, W_0 .. W_{L-1}, mask_0 .. mask_{L-2}]: each layer's input,
  // weight, and (hidden layers) the ReLU mask of its output.
  const Tensor& input(int l) const { return saved[size_t(l)]; }
  const Tensor& weight(int l) const { return saved[size_t(layers_ + l)]; }
  const Tensor& mask(int l) const { return saved[size_t(2 * layers_ + l)]; }

  // sinks = [x, W_0, b_0, W_1, b_1, ...]
  void backward(const Tensor& grad_logits, std::vector<GradSink>& sinks) override {
    auto weight_sink = [&](int l) -> GradSink& { return sinks[size_t(1 + 2 * l)]; };
    auto bias_sink = [&](int l) -> GradSink& { return sinks[size_t(2 + 2 * l)]; };
    // Does anything at or below layer l (its parameters, or the input) want a gradient?
    auto wanted_below = [&](int l) {
      if (sinks[0].wanted()) return true;
      for (int k = 0; k <= l; ++k)
        if (weight_sink(k).wanted() || bias_sink(k).wanted()) return true;
      return false;
    };

    // dz [N, B, out_l]: the gradient w.r.t. layer l's output before its ReLU (the output
    // layer has none, so at first it is the logits' gradient itself).
    Tensor dz = grad_logits;
    for (int l = layers_ - 1; l >= 0; --l) {
      GradSink &dw = weight_sink(l), &db = bias_sink(l);
      const bool last = l == layers_ - 1;
      // The output layer's bias gradient comes from its weight GEMM's BGRADB epilogue;
      // hidden layers' came with dz from the layer above (DRELU_BGRAD).
      const bool bias_in_weight_gemm = last && db.wanted() && !db.accumulate && dw.wanted();
      if (dw.wanted())
        gemm::backward_weight(dz, input(l), dw.target, dw.accumulate,
                              bias_in_weight_gemm ? db.target : Tensor());
      if (last && db.wanted() && !bias_in_weight_gemm) bias_gradient_into(dz, db);

      if (l == 0) {
        if (sinks[0].wanted())
          gemm::backward_input(dz, weight(0), Tensor(), sinks[0].target, Tensor(), sinks[0].accumulate);
        break;
      }
      if (!wanted_below(l - 1)) break;
      GradSink& db_below = bias_sink(l - 1);
      const bool bias_in_input_gemm = db_below.wanted() && !db_below.accumulate;
      Tensor dz_below = Tensor::empty(input(l).shape(), dz.dtype(), dz.device());
      gemm::backward_input(dz, weight(l), mask(l - 1), dz_below,
                           bias_in_input_gemm ? db_below.target : Tensor(), false, input(l));
      if (db_below.wanted() && !bias_in_input_gemm) bias_gradient_into(dz_below, db_below);
      dz = dz_below;
    }
  }

 private:
  int layers_;
};

Tensor mlp_whole(const Tensor& x, const MlpParams& params) {
  const int L = params.shape().layers();
  const int64_t N = x.dim(0), B = x.dim(1);
  std::vector<Tensor> edge_inputs{x};
  for (int l = 0; l < L; ++l) {
    edge_inputs.push_back(params.weight(l));
    edge_inputs.push_back(params.bias(l));
  }
  // Without a backward pass to come (evaluation, the teacher's forward pass in distillation)
  // nothing is saved: each layer's output and mask are freed once the next layer has read them,
  // so memory does not grow with the depth.
  const bool saving = any_requires_grad(edge_inputs);
  std::vector<Tensor> inputs{x}, weights, masks;
  Tensor h = x;
  for (int l = 0; l < L; ++l) {
    const bool hidden = l < L - 1;
    const int64_t out = params.shape().sizes[size_t(l) + 1];
    Tensor y = Tensor::empty({N, B, out}, x.dtype(), x.device());
    Tensor mask = hidden ? Tensor::empty(gemm::mask_shape(N, B, out), DType::u8, x.device()) : Tensor();
    gemm::forward(h, params.weight(l), params.bias(l),
                  hidden ? gemm::Activation::relu : gemm::Activation::none, y, mask);
    if (saving) {
      weights.push_back(params.weight(l).detach());
      if (hidden) {
        masks.push_back(mask);
        inputs.push_back(y.detach());
      }
    }
    h = y;
  }
  if (saving) {
    // MlpNode writes its sinks from the last layer down, not in argument order, which is safe
    // only while no tensor is two of its inputs (autograd.h). MlpParams never shares them.
    for (size_t i = 1; i < edge_inputs.size(); ++i)
      if (edge_inputs[i].impl_ptr() == edge_inputs[0].impl_ptr())
        throw ShapeError("mlp_forward: the input is also one of the parameters");
    auto node = std::make_shared<MlpNode>(L);
    inputs[0] = x.detach();
    node->saved = inputs;
    node->saved.insert(node->saved.end(), weights.begin(), weights.end());
    node->saved.insert(node->saved.end(), masks.begin(), masks.end());
    record(h, node, edge_inputs);
  }
  return h;
}

}  // namespace

Tensor mlp_forward(const Tensor& x, const MlpParams& params, MlpFusion fusion) {
  check_rank("mlp_forward", x, 3, "the input");
  if (x.dim(0) != params.models() || x.dim(2) != params.shape().inputs())
    throw ShapeError("mlp_forward: input " + x.describe() + " for " + std::to_string(params.models()) +
                     " models of input size " + std::to_string(params.shape().inputs()));
  if (fusion == MlpFusion::whole) return mlp_whole(x, params);
  const int L = params.shape().layers();
  Tensor h = x;
  for (int l = 0; l < L; ++l) {
    const bool hidden = l < L - 1;
    if (fusion == MlpFusion::per_layer) {
      h = linear(h, params.weight(l), params.bias(l),
                 hidden ? gemm::Activation::relu : gemm::Activation::none);
    } else {
      h = linear(h, params.weight(l), params.bias(l));
      if (hidden) h = relu(h);
    }
  }
  return h;
}

}  // namespace subliminal
