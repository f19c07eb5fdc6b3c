// ops/loss.cpp — cross-entropy, the distillation loss (KL or JS) and kl_div with their backward nodes.
#include "ops/loss.h"

#include "engine/autograd.h"
#include "engine/dispatch.h"
#include "ops/cpu/kernels_cpu.h"

#ifdef SUBLIMINAL_HAS_CUDA
#include "ops/cuda/kernels_cuda.h"
#endif

namespace subliminal {
namespace {

// N, B, C of a [N, B, C] logits tensor.
struct LossDims {
  int64_t models, batch, cols;
};

LossDims loss_dims(const char* op, const Tensor& logits) {
  check_rank(op, logits, 3, "the logits");
  if (logits.dim(1) == 0) throw ShapeError(std::string(op) + ": empty batch in " + logits.describe());
  return {logits.dim(0), logits.dim(1), logits.dim(2)};
}

void check_constant(const char* op, const Tensor& t, const char* what) {
  if (t.requires_grad())
    throw ShapeError(std::string(op) + ": " + what +
                     " must not require a gradient (compute it under NoGradGuard)");
}

class CrossEntropyNode : public Node {
 public:
  explicit CrossEntropyNode(ColumnRange classes) : classes_(classes) {}
  const char* name() const override { return "cross_entropy"; }
  // saved = {logits, labels}
  void backward(const Tensor& grad_loss, std::vector<GradSink>& sinks) override {
    GradSink& dlogits = sinks[0];
    if (!dlogits.wanted()) return;
    const Tensor &logits = saved[0], &labels = saved[1];
    const LossDims d = loss_dims(name(), logits);
    backend_dispatch(
        name(), logits,
        [&](auto zero) {
          using T = decltype(zero);
          cpu::cross_entropy_backward(logits.data<T>(), labels.data<int32_t>(), grad_loss.data<T>(),
                                      dlogits.target.data<T>(), d.models, d.batch, d.cols, classes_.begin,
                                      classes_.end, dlogits.accumulate);
        },
        [&] {
          ON_CUDA(cuda::cross_entropy_backward(logits.data<float>(), labels.data<int32_t>(),
                                               grad_loss.data<float>(), dlogits.target.data<float>(),
                                               d.models, d.batch, d.cols, classes_.begin, classes_.end,
                                               dlogits.accumulate));
        });
  }

 private:
  ColumnRange classes_;
};

// The op's name in errors and on the tape: distill_kl or distill_js.
const char* distill_op_name(Divergence divergence) {
  return divergence == Divergence::js ? "distill_js" : "distill_kl";
}

class DistillNode : public Node {
 public:
  DistillNode(ColumnRange cols, double temperature, Divergence divergence)
      : cols_(cols), temperature_(temperature), divergence_(divergence) {}
  const char* name() const override { return distill_op_name(divergence_); }
  // saved = {student, teacher}
  void backward(const Tensor& grad_loss, std::vector<GradSink>& sinks) override {
    GradSink& dstudent = sinks[0];
    if (!dstudent.wanted()) return;
    const Tensor &student = saved[0], &teacher = saved[1];
    const LossDims d = loss_dims(name(), student);
    backend_dispatch(
        name(), student,
        [&](auto zero) {
          using T = decltype(zero);
          cpu::distill_backward(student.data<T>(), teacher.data<T>(), grad_loss.data<T>(),
                                dstudent.target.data<T>(), d.models, teacher.dim(0), d.batch, d.cols,
                                cols_.begin, cols_.end, temperature_, divergence_, dstudent.accumulate);
        },
        [&] {
          ON_CUDA(cuda::distill_backward(student.data<float>(), teacher.data<float>(),
                                         grad_loss.data<float>(), dstudent.target.data<float>(), d.models,
                                         teacher.dim(0), d.batch, d.cols, cols_.begin, cols_.end,
                                         temperature_, divergence_, dstudent.accumulate));
        });
  }

 private:
  ColumnRange cols_;
  double temperature_;
  Divergence divergence_;
};

class KlDivNode : public Node {
 public:
  const char* name() const override { return "kl_div"; }
  // saved = {p}
  void backward(const Tensor& grad_loss, std::vector<GradSink>& sinks) override {
    GradSink& dlog_q = sinks[0];
    if (!dlog_q.wanted()) return;
    const Tensor& p = saved[0];
    const LossDims d = loss_dims(name(), p);
    backend_dispatch(
        name(), p,
        [&](auto zero) {
          using T = decltype(zero);
          cpu::kl_div_backward(p.data<T>(), grad_loss.data<T>(), dlog_q.target.data<T>(), d.models, d.batch,
                               d.cols, dlog_q.accumulate);
        },
        [&] {
          ON_CUDA(cuda::kl_div_backward(p.data<float>(), grad_loss.data<float>(), dlog_q.target.data<float>(),
                                        d.models, d.batch, d.cols, dlog_q.accumulate));
        });
  }
};

}  // namespace

Tensor cross_entropy(const Tensor& logits, const Tensor& labels, ColumnRange classes) {
  const char* op = "cross_entropy";
  const LossDims d = loss_dims(op, logits);
  check_columns(op, classes, d.cols);
  check_dtype(op, labels, DType::i32, "the labels");
  check_same_device(op, logits, labels);
  if (labels.shape() != Shape{d.models, d.batch})
    throw ShapeError(std::string(op) + ": labels " + labels.describe() + " do not match logits " +
                     logits.describe());
  Tensor loss = Tensor::empty({d.models}, logits.dtype(), logits.device());
  backend_dispatch(
      op, logits,
      [&](auto zero) {
        using T = decltype(zero);
        cpu::cross_entropy(logits.data<T>(), labels.data<int32_t>(), loss.data<T>(), d.models, d.batch,
                           d.cols, classes.begin, classes.end);
      },
      [&] {
        ON_CUDA(cuda::cross_entropy(logits.data<float>(), labels.data<int32_t>(), loss.data<float>(),
                                    d.models, d.batch, d.cols, classes.begin, classes.end));
      });
  if (any_requires_grad({logits})) {
    auto node = std::make_shared<CrossEntropyNode>(classes);
    node->saved = {logits.detach(), labels};
    record(loss, node, {logits});
  }
  return loss;
}

Tensor distill(const Tensor& student, const Tensor& teacher, ColumnRange cols, double temperature,
               Divergence divergence) {
  const char* op = distill_op_name(divergence);
  const LossDims d = loss_dims(op, student);
  check_columns(op, cols, d.cols);
  check_constant(op, teacher, "the teacher's logits");
  check_same_device(op, student, teacher);
  if (teacher.rank() != 3 || teacher.dim(0) < 1 || d.models % teacher.dim(0) != 0 ||
      teacher.dim(1) != d.batch || teacher.dim(2) != d.cols || teacher.dtype() != student.dtype())
    throw ShapeError(std::string(op) + ": teacher " + teacher.describe() + " vs student " +
                     student.describe() + " (student n learns from teacher n mod the teachers' count)");
  if (!(temperature > 0)) throw ShapeError(std::string(op) + ": temperature must be > 0");
  Tensor loss = Tensor::empty({d.models}, student.dtype(), student.device());
  backend_dispatch(
      op, student,
      [&](auto zero) {
        using T = decltype(zero);
        cpu::distill(student.data<T>(), teacher.data<T>(), loss.data<T>(), d.models, teacher.dim(0), d.batch,
                     d.cols, cols.begin, cols.end, temperature, divergence);
      },
      [&] {
        ON_CUDA(cuda::distill(student.data<float>(), teacher.data<float>(), loss.data<float>(), d.models,
                              teacher.dim(0), d.batch, d.cols, cols.begin, cols.end, temperature,
                              divergence));
      });
  if (any_requires_grad({student})) {
    auto node = std::make_shared<DistillNode>(cols, temperature, divergence);
    node->saved = {student.detach(), teacher};
    record(loss, node, {student});
  }
  return loss;
}

Tensor kl_div(const Tensor& log_q, const Tensor& p) {
  const char* op = "kl_div";
  const LossDims d = loss_dims(op, log_q);
  check_constant(op, p, "the target distribution");
  check_same_device(op, log_q, p);
  if (p.shape() != log_q.shape() || p.dtype() != log_q.dtype())
    throw ShapeError(std::string(op) + ": target " + p.describe() + " vs input " + log_q.describe());
  Tensor loss = Tensor::empty({d.models}, log_q.dtype(), log_q.device());
  backend_dispatch(
      op, log_q,
      [&](auto zero) {
        using T = decltype(zero);
        cpu::kl_div(log_q.data<T>(), p.data<T>(), loss.data<T>(), d.models, d.batch, d.cols);
      },
      [&] {
        ON_CUDA(cuda::kl_div(log_q.data<float>(), p.data<float>(), loss.data<float>(), d.models, d.batch,
                             d.cols));
      });
  if (any_requires_grad({log_q})) {
    auto node = std::make_shared<KlDivNode>();
    node->saved = {p};
    record(loss, node, {log_q});
  }
  return loss;
}

}  // namespace subliminal
