// apps/subliminal/parity.cpp — the one-batch loss and gradients behind bench/parity.py.
#include "apps/subliminal/parity.h"

#include "apps/subliminal/checkpoint.h"
#include "apps/subliminal/experiment.h"
#include "apps/subliminal/streams.h"
#include "engine/autograd.h"
#include "engine/safetensors.h"
#include "ops/batch.h"
#include "ops/elementwise.h"
#include "ops/loss.h"
#include "ops/mlp.h"

namespace subliminal::app {
namespace {

constexpr double kParityTemperature = 2.0;
constexpr double kTeacherScale = 1.1;

// The gradient of every parameter, under `prefix` + its state_dict name, model dim dropped.
void add_grads(std::vector<NamedTensor>& out, const std::string& prefix, const MlpParams& params) {
  std::vector<Tensor> tensors = params.tensors();
  std::vector<std::string> names = params.names();
  for (size_t k = 0; k < tensors.size(); ++k) {
    const Tensor& g = tensors[k].grad();
    out.push_back({prefix + names[k], g.reshaped(Shape(g.shape().begin() + 1, g.shape().end())).clone()});
  }
}

}  // namespace

void write_parity_batch(const Config& config, const data::Mnist& mnist, Device device,
                        const std::string& path) {
  const int64_t B = config.batch_size, P = int64_t(mnist.train.rows) * mnist.train.cols;
  if (B > mnist.train.count) throw UsageError("--parity-batch: --batch-size is larger than the training set");
  // The batch goes through the GEMM engine a run's autograd path would use (--step autograd); the
  // GPU's fused step, which --step auto picks for small runs, is not what it checks.
  apply_gemm_settings(config);
  MlpParams init(config.mlp_shape(), 1, DType::f32, device);
  if (!config.load_init_path.empty())
    load_init(config.load_init_path, init, true);
  else
    init_mlp(init, config.init, {config.seed}, 0);
  std::vector<NamedTensor> out;

  // 1. Cross-entropy on the first B training images, in file order.
  Tensor images = Tensor::from_vector(mnist.train.images, {mnist.train.count, P}, device);
  Tensor labels = Tensor::from_vector(mnist.train.labels, {mnist.train.count}, device);
  std::vector<int32_t> identity(size_t(mnist.train.count));
  for (size_t i = 0; i < identity.size(); ++i) identity[i] = int32_t(i);
  Tensor order = Tensor::from_vector(identity, {1, mnist.train.count}, device);
  Tensor step = Tensor::zeros({1}, DType::i64, device);
  Tensor x = Tensor::empty({1, B, P}, DType::f32, device), y = Tensor::empty({1, B}, DType::i32, device);
  gather_batch(images, labels, order, step, B, x, y);
  zero_grad(init.tensors());
  Tensor loss = cross_entropy(mlp_forward(x, init, config.fusion), y, {0, config.classes()});
  loss.backward();
  out.push_back({"loss", loss.detach().clone()});
  add_grads(out, "grad.", init);

  // 2. Distillation on one noise batch against a teacher at 1.1 × the init, by KL and by JS.
  Tensor noise = Tensor::empty({1, B, P}, DType::f32, device);
  noise_batch(config.seed, stream_id(kNoisePurpose), Tensor(), step, B, 0, NoiseDistribution::uniform, noise);
  MlpParams teacher(config.mlp_shape(), 1, DType::f32, device);
  teacher.values().copy_from(scale(init.values().detach(), kTeacherScale));
  Tensor teacher_logits;
  {
    NoGradGuard no_grad;
    teacher_logits = mlp_forward(noise, teacher, config.fusion);
  }
  out.push_back({"noise", noise.reshaped({B, P})});
  // Both divergences, whatever --divergence says: kl_loss, kl_grad.* and js_loss, js_grad.*.
  for (const Divergence divergence : {Divergence::kl, Divergence::js}) {
    const std::string name = divergence_name(divergence);
    zero_grad(init.tensors());
    Tensor loss_d = distill(mlp_forward(noise, init, config.fusion), teacher_logits,
                            {config.classes(), config.outputs()}, kParityTemperature, divergence);
    loss_d.backward();
    out.push_back({name + "_loss", loss_d.detach().clone()});
    add_grads(out, name + "_grad.", init);
  }
  write_safetensors(
      path, out,
      {{"producer", "subliminal --parity-batch"}, {"temperature", "2.0"}, {"teacher_scale", "1.1"}},
      config.force);
}

}  // namespace subliminal::app
