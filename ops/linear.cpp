// ops/linear.cpp — the Linear op: one GEMM forward, up to two GEMMs backward.
#include "ops/linear.h"

#include "engine/autograd.h"
#include "engine/kernels.h"

namespace subliminal {
namespace {

class LinearNode : public Node {
 public:
  explicit LinearNode(bool relu) : relu_(relu) {}
  const char* name() const override { return relu_ ? "linear_relu" : "linear"; }

  // saved = {x, w, mask (relu only)}; sinks = {dx, dw, db}
  void backward(const Tensor& dy, std::vector<GradSink>& sinks) override {
    const Tensor &x = saved[0], &w = saved[1];
    GradSink &dx = sinks[0], &dw = sinks[1], &db = sinks[2];
    Tensor dz = dy;
    if (relu_) {  // the ReLU's gradient, from the forward's bit-mask
      dz = dy.clone();
      gemm::apply_relu_mask(dz, saved[2]);
    }
    if (dx.wanted()) gemm::backward_input(dz, w, Tensor(), dx.target, Tensor(), dx.accumulate);
    if (dw.wanted()) {
      // The bias gradient rides on the weight GEMM's epilogue when it may overwrite.
      bool fused_bias = db.wanted() && !db.accumulate;
      gemm::backward_weight(dz, x, dw.target, dw.accumulate, fused_bias ? db.target : Tensor());
      if (fused_bias) return;
    }
    if (db.wanted()) {
      Tensor fresh =
          db.accumulate ? Tensor::empty(db.target.shape(), db.target.dtype(), db.target.device()) : db.target;
      gemm::bias_gradient(dz, fresh);
      if (db.accumulate) add_into(db.target, fresh);
    }
  }

 private:
  bool relu_;
};

}  // namespace

Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b, gemm::Activation act) {
  check_rank("linear", x, 3, "the input");
  check_rank("linear", w, 3, "the weight");
  const bool relu = act == gemm::Activation::relu;
  const int64_t N = x.dim(0), B = x.dim(1), O = w.dim(1);
  Tensor y = Tensor::empty({N, B, O}, x.dtype(), x.device());
  Tensor mask = relu ? Tensor::empty(gemm::mask_shape(N, B, O), DType::u8, x.device()) : Tensor();
  gemm::forward(x, w, b, act, y, mask);
  if (any_requires_grad({x, w, b})) {
    auto node = std::make_shared<LinearNode>(relu);
    node->saved = {x.detach(), w.detach()};
    if (relu) node->saved.push_back(mask);
    record(y, node, {x, w, b});
  }
  return y;
}

}  // namespace subliminal
