// ops/fused_step.cpp — dispatch for the fused training step: the GPU kernels of either design, or the
// autograd composition it stands for.
#include "ops/fused_step.h"

#include "engine/autograd.h"
#include "engine/kernels.h"
#include "ops/loss.h"
#include "ops/mlp.h"

#ifdef SUBLIMINAL_HAS_CUDA
#include "ops/cuda/fused_step_cuda.h"
#endif

namespace subliminal {
namespace {

#ifdef SUBLIMINAL_HAS_CUDA
// Device pointers of an MlpParams; gradients are the views of its gradient arena that sit at
// the parameters' offsets in the value arena.
cuda::FusedMlp fused_view(const MlpParams& p, bool with_grads) {
  cuda::FusedMlp m;
  m.layers = p.shape().layers();
  m.sizes = p.shape().sizes;
  m.models = p.models();
  const float* values = p.values().data<float>();
  float* grads = p.grads().data<float>();
  for (int l = 0; l < m.layers; ++l) {
    m.weights.push_back(p.weight(l).data<float>());
    m.biases.push_back(p.bias(l).data<float>());
    if (with_grads) {
      m.weight_grads.push_back(grads + (p.weight(l).data<float>() - values));
      m.bias_grads.push_back(grads + (p.bias(l).data<float>() - values));
    }
  }
  return m;
}
#endif

// Checks that the tail fits the step (a ShapeError otherwise): Adam over these parameters'
// arenas, the loss watch's tensors of the right shapes on the parameters' device.
void check_tail(const char* op, const StepTail& tail, const MlpParams& params) {
  const std::string where = std::string(op) + ": the step's tail: ";
  if (tail.adam && (tail.adam->values().raw() != params.values().raw() ||
                    tail.adam->values().numel() != params.values().numel() ||
                    tail.adam->grads().raw() != params.grads().raw()))
    throw ShapeError(where + "Adam updates other parameters than the step's");
  if (tail.loss_sum.defined()) {  // the checks of accumulate_and_watch, for the step's losses
    check_loss_watch(op, tail.loss_sum, tail.step, tail.first_bad);
    if (tail.loss_sum.shape() != Shape{params.models()} || tail.loss_sum.dtype() != params.dtype())
      throw ShapeError(where + "loss sums " + tail.loss_sum.describe() + " for " +
                       std::to_string(params.models()) + " models");
    check_same_device(op, params.values(), tail.loss_sum);
  }
  check_counters(op, tail.counters);  // the checks of increment
  if (!tail.counters.empty()) check_same_device(op, params.values(), tail.counters.front());
}

#ifdef SUBLIMINAL_HAS_CUDA
cuda::FusedTail fused_tail(const StepTail& tail) {
  cuda::FusedTail f;
  if (tail.adam) {
    Adam& a = *tail.adam;
    f.adam.p = a.values().data<float>();
    f.adam.g = a.grads().data<float>();
    f.adam.m = a.exp_avg().data<float>();
    f.adam.v = a.exp_avg_sq().data<float>();
    f.adam.n = a.values().numel();
    f.adam.t = a.step_count().data<int64_t>();
    f.adam.options = a.options();
  }
  if (tail.loss_sum.defined()) {
    f.loss_sum = tail.loss_sum.data<float>();
    f.loss_weight = float(tail.loss_weight);
    f.step = tail.step.data<int64_t>();
    f.first_bad = tail.first_bad.data<int64_t>();
  }
  for (size_t k = 0; k < tail.counters.size(); ++k) f.counters[k] = tail.counters[k].data<int64_t>();
  return f;
}
#endif

void check_input(const char* op, const Tensor& x, const MlpParams& params, int64_t models) {
  check_rank(op, x, 3, "the input");
  if (x.dim(1) == 0) throw ShapeError(std::string(op) + ": an empty batch " + x.describe());
  if (x.dim(0) != models || x.dim(2) != params.shape().inputs())
    throw ShapeError(std::string(op) + ": input " + x.describe() + " for " + std::to_string(models) +
                     " models of input size " + std::to_string(params.shape().inputs()));
}

// loss_out, when defined, must hold the step's per-model losses: [models], the parameters'
// dtype, on their device — and not be the tail's running sums, which the losses are added to.
void check_loss_out(const char* op, const Tensor& loss_out, const MlpParams& params, const StepTail& tail) {
  if (!loss_out.defined()) return;
  if (loss_out.shape() != Shape{params.models()} || loss_out.dtype() != params.dtype() ||
      loss_out.device() != params.device())
    throw ShapeError(std::string(op) + ": loss_out " + loss_out.describe() + " for " +
                     std::to_string(params.models()) + " models' losses like " + params.values().describe());
  if (tail.loss_sum.defined() && tail.loss_sum.device() == loss_out.device()) {
    const char* a = static_cast<const char*>(loss_out.raw());
    const char* b = static_cast<const char*>(tail.loss_sum.raw());
    if (a < b + tail.loss_sum.bytes() && b < a + loss_out.bytes())
      throw ShapeError(std::string(op) + ": loss_out overlaps the tail's running loss sums");
  }
}

#ifdef SUBLIMINAL_HAS_CUDA
// Where the kernel writes the losses: loss_out, or a fresh tensor.
Tensor kernel_loss(const Tensor& loss_out, const MlpParams& params) {
  return loss_out.defined() ? loss_out : Tensor::empty({params.models()}, params.dtype(), params.device());
}
#endif

// The autograd step's losses, in loss_out when that is defined.
Tensor deliver(const Tensor& loss, const Tensor& loss_out) {
  if (!loss_out.defined()) return loss.detach();
  copy_into(loss_out, loss.detach());
  return loss_out;
}

}  // namespace

void run_step_tail(const StepTail& tail, const Tensor& loss) {
  if (tail.adam) tail.adam->step();
  if (tail.loss_sum.defined())
    accumulate_and_watch(tail.loss_sum, loss, tail.loss_weight, tail.step, tail.first_bad);
  increment(tail.counters);
}

namespace {
FusedStepDesign& design() {
  static FusedStepDesign d = FusedStepDesign::grid;
  return d;
}

#ifdef SUBLIMINAL_HAS_CUDA
// The chosen design's kernels for one step (arguments as cuda::fused_mlp_step's).
void launch_step(const Tensor& x, const cuda::FusedMlp& trained, const cuda::FusedMlp* frozen,
                 const cuda::FusedLoss& spec, const Tensor& loss, const cuda::FusedTail& tail) {
  if (design() == FusedStepDesign::cluster) {
    cuda::cluster_mlp_step(x.data<float>(), x.dim(1), trained, frozen, spec, loss.data<float>(), &tail);
  } else {
    cuda::fused_mlp_step(x.data<float>(), x.dim(1), trained, frozen, spec, loss.data<float>(), &tail);
  }
}
#endif
}  // namespace

void set_fused_step_design(FusedStepDesign d) { design() = d; }
FusedStepDesign fused_step_design() { return design(); }

bool fused_step_on_gpu(const MlpParams& params) {
#ifdef SUBLIMINAL_HAS_CUDA
  const int layers = params.shape().layers();
  static_assert(kFusedStepMaxLayers == cuda::kFusedMaxLayers,
                "the kernels' limit, as ops/fused_step.h says it");
  return params.device() == Device::cuda && params.dtype() == DType::f32 && layers >= kFusedStepMinLayers &&
         layers <= kFusedStepMaxLayers;
#else
  (void)params;
  return false;
#endif
}

Tensor fused_cross_entropy_step(const Tensor& x, const Tensor& labels, const MlpParams& params,
                                ColumnRange classes, const StepTail& tail, const Tensor& loss_out) {
  const char* op = "fused_cross_entropy_step";
  check_input(op, x, params, params.models());
  check_loss_out(op, loss_out, params, tail);
  check_tail(op, tail, params);
  check_columns(op, classes, params.shape().outputs());
  if (labels.shape() != Shape{x.dim(0), x.dim(1)} || labels.dtype() != DType::i32)
    throw ShapeError(std::string(op) + ": labels " + labels.describe() + " for input " + x.describe());
  check_same_device(op, x, labels);  // the kernel would read host labels through a device pointer
  if (!fused_step_on_gpu(params) || x.device() != Device::cuda || x.dtype() != DType::f32) {
    zero_grad(params.tensors());
    Tensor autograd_loss = cross_entropy(mlp_forward(x, params), labels, classes);
    autograd_loss.backward();
    run_step_tail(tail, autograd_loss.detach());
    return deliver(autograd_loss, loss_out);
  }
#ifdef SUBLIMINAL_HAS_CUDA
  const Tensor loss = kernel_loss(loss_out, params);
  cuda::FusedLoss spec;
  spec.c0 = classes.begin, spec.c1 = classes.end;
  spec.labels = labels.data<int32_t>();
  launch_step(x, fused_view(params, true), nullptr, spec, loss, fused_tail(tail));
  return loss;
#else
  throw Error("unreachable");
#endif
}

Tensor fused_distill_step(const Tensor& x, const MlpParams& students, const MlpParams& teachers,
                          ColumnRange cols, double temperature, Divergence divergence, const StepTail& tail,
                          const Tensor& loss_out) {
  const char* op = "fused_distill_step";
  check_input(op, x, students, students.models());
  check_loss_out(op, loss_out, students, tail);
  check_tail(op, tail, students);
  check_columns(op, cols, students.shape().outputs());
  if (teachers.shape().sizes != students.shape().sizes || students.models() % teachers.models() != 0)
    throw ShapeError(std::string(op) + ": " + std::to_string(students.models()) + " students and " +
                     std::to_string(teachers.models()) +
                     " teachers (same shape; student n learns from teacher n mod the teachers' count)");
  if (!(temperature > 0)) throw ShapeError(std::string(op) + ": temperature must be > 0");
  if (!fused_step_on_gpu(students) || !fused_step_on_gpu(teachers) || x.device() != Device::cuda ||
      x.dtype() != DType::f32) {
    Tensor teacher_logits;
    {
      NoGradGuard no_grad;
      teacher_logits = mlp_forward(x.rows(0, teachers.models()), teachers);
    }
    zero_grad(students.tensors());
    Tensor autograd_loss = distill(mlp_forward(x, students), teacher_logits, cols, temperature, divergence);
    autograd_loss.backward();
    run_step_tail(tail, autograd_loss.detach());
    return deliver(autograd_loss, loss_out);
  }
#ifdef SUBLIMINAL_HAS_CUDA
  const Tensor loss = kernel_loss(loss_out, students);
  cuda::FusedLoss spec;
  spec.distill = true;
  spec.c0 = cols.begin, spec.c1 = cols.end;
  spec.temperature = temperature;
  spec.divergence = divergence;
  const cuda::FusedMlp frozen = fused_view(teachers, false);
  launch_step(x, fused_view(students, true), &frozen, spec, loss, fused_tail(tail));
  return loss;
#else
  throw Error("unreachable");
#endif
}

}  // namespace subliminal
