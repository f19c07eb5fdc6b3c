// apps/subliminal/experiment.cpp — one run of the experiment, N models at a time.
//
//   1. init: N teacher inits (seeds seed..seed+N-1) and the cross-init students' inits
//   2. reference: accuracy of the untrained init
//   3. teacher: Adam on cross-entropy over the 10 class logits, MNIST reshuffled each epoch
//   4. distillation: each group of student arms (ghost logits; all logits) trains on noise
//      against the frozen teachers' logits at temperature T — the teacher's forward pass
//      runs once per step and is shared by every arm of the group
//   5. final accuracies per arm and model
#include "apps/subliminal/experiment.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <limits>
#include <map>

#include "apps/subliminal/checkpoint.h"
#include "apps/subliminal/streams.h"
#include "engine/adam.h"
#include "engine/autograd.h"
#include "engine/kernels.h"
#include "engine/step_graph.h"
#include "engine/storage.h"
#include "ops/batch.h"
#include "ops/fused_step.h"
#include "ops/gemm.h"
#include "ops/loss.h"
#include "ops/metrics.h"
#include "ops/mlp.h"

#ifdef SUBLIMINAL_HAS_CUDA
#include "engine/cuda/runtime.h"
#include "ops/cuda/fused_step_cuda.h"  // fused_step_split_policy, cluster_step_supported
#endif

namespace subliminal::app {
namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// MNIST on the device: training pixels as uint8 (gathered per batch), the test set
// normalised once.
struct DeviceData {
  Tensor train_images, train_labels;  // uint8 [S, 784], uint8 [S]
  Tensor test_x, test_y;              // float32 [T, 784], int32 [T]
  int64_t train_count = 0;
};

// train_samples > 0 keeps only the first that many training images.
DeviceData upload(const data::Mnist& mnist, Device device, int64_t train_samples) {
  DeviceData d;
  const data::MnistSplit &train = mnist.train, &test = mnist.test;
  const int64_t pixels = int64_t(train.rows) * train.cols;
  d.train_count = train_samples > 0 ? std::min(train_samples, train.count) : train.count;
  d.train_images = Tensor::from_vector(train.images, {train.count, pixels}, device).rows(0, d.train_count);
  d.train_labels = Tensor::from_vector(train.labels, {train.count}, device).rows(0, d.train_count);
  // The test set goes through the same normalisation kernel once, in identity order.
  Tensor test_images = Tensor::from_vector(test.images, {test.count, pixels}, device);
  Tensor test_labels = Tensor::from_vector(test.labels, {test.count}, device);
  std::vector<int32_t> identity(size_t(test.count));
  for (int64_t i = 0; i < test.count; ++i) identity[size_t(i)] = int32_t(i);
  Tensor order = Tensor::from_vector(identity, {1, test.count}, device);
  Tensor step = Tensor::zeros({1}, DType::i64, device);
  Tensor x = Tensor::empty({1, test.count, pixels}, DType::f32, device);
  Tensor y = Tensor::empty({1, test.count}, DType::i32, device);
  gather_batch(test_images, test_labels, order, step, 0, x, y);
  d.test_x = x.reshaped({test.count, pixels});
  d.test_y = y.reshaped({test.count});
  return d;
}

// Test accuracy of every model in `params`, in [0, 1]: the notebook's accuracy(), argmax over the
// class logits on the whole test set. The test set is shared by all models,
// so it goes through in chunks tiled over the models (bounded memory whatever N is).
std::vector<double> evaluate(const MlpParams& params, const DeviceData& data, MlpFusion fusion,
                             int64_t classes) {
  NoGradGuard no_grad;
  const int64_t models = params.models(), total = data.test_x.dim(0), pixels = data.test_x.dim(1);
  const int64_t budget = int64_t(64) << 20;  // floats of tiled input per chunk
  const int64_t chunk = std::clamp<int64_t>(budget / (models * pixels), 1, total);
  Tensor counts = Tensor::zeros({models}, DType::i64, params.device());
  for (int64_t start = 0; start < total; start += chunk) {
    const int64_t rows = std::min(chunk, total - start);
    Tensor x = repeat_models(data.test_x.rows(start, rows).reshaped({1, rows, pixels}), models);
    Tensor y = repeat_models(data.test_y.rows(start, rows).reshaped({1, rows}), models);
    count_correct(mlp_forward(x, params, fusion), y, {0, classes}, counts);
  }
  std::vector<double> acc;
  for (int64_t c : counts.to_vector<int64_t>()) acc.push_back(double(c) / double(total));
  return acc;
}

// CUDA graphs bake buffer addresses into the replay. The cuDNN engine grows its workspace when
// a later, larger graph (an evaluation pass, the short last batch) needs more, freeing the old
// one a captured step still points at — so with --gemm cudnn steps are launched, not replayed.
bool replay_graphs(const Config& config) { return config.graphs && config.gemm_engine != "cudnn"; }

// "No fault yet" for the first-bad-step marker: larger than any step, exact as a double.
constexpr int64_t kNoFault = int64_t(1) << 62;

// The per-step state a training phase keeps on the device, and the epoch loop around it.
class PhaseLoop {
 public:
  PhaseLoop(const Config& config, Device device, int64_t loss_models, int64_t samples, std::string phase,
            Observer& observer)
      : config_(config),
        device_(device),
        samples_(samples),
        phase_(std::move(phase)),
        observer_(observer),
        full_(device, replay_graphs(config)),
        last_(device, replay_graphs(config)) {
    step = Tensor::zeros({1}, DType::i64, device);
    global_step = Tensor::zeros({1}, DType::i64, device);
    loss_sum = Tensor::zeros({loss_models}, DType::f32, device);
    first_bad = Tensor::full({1}, double(kNoFault), DType::i64, device);
    step_loss = Tensor::zeros({loss_models}, DType::f32, device);
  }

  // The last, short batch is kept, as the notebook's DataLoader keeps it (drop_last=False):
  // 60000 = 234·256 + 96 → 235 steps (../shared/docs/REFERENCE.md §1).
  int64_t steps_per_epoch() const { return (samples_ + config_.batch_size - 1) / config_.batch_size; }

  // Runs one epoch: body(batch) queues one training step of `batch` samples (the last batch
  // may be short), ending with this loop's tail(adam, batch). Returns the mean loss per model
  // over the epoch's samples, as the notebook's running / n.
  // Throws NonFiniteError on a NaN/Inf loss.
  std::vector<double> run_epoch(int64_t epoch, const std::function<void(int64_t)>& body,
                                PhaseTiming& timing) {
    fill(step, 0);
    fill(loss_sum, 0);
#ifdef SUBLIMINAL_HAS_CUDA
    std::unique_ptr<cuda::EventTimer> gpu;
    if (device_ == Device::cuda) {
      gpu = std::make_unique<cuda::EventTimer>();
      gpu->start();
    }
#endif
    auto start = Clock::now();
    const int64_t B = config_.batch_size;
    for (int64_t s = 0; s < steps_per_epoch(); ++s) {
      const int64_t batch = std::min(B, samples_ - s * B);
      (batch == B ? full_ : last_).run([&] { body(batch); });
      observer_.step_done();
    }
    synchronize(device_);
    double seconds = seconds_since(start);  // this epoch's, on the clock us_per_step uses
    timing.wall_seconds += seconds;
    timing.steps += steps_per_epoch();
    timing.graph_kernels = full_.kernel_nodes();
    timing.graph_memory_nodes = full_.memory_nodes();
#ifdef SUBLIMINAL_HAS_CUDA
    if (gpu) {
      gpu->stop();
      seconds = gpu->seconds();
      timing.gpu_seconds += seconds;
    }
#endif
    if (epoch > 1) {
      timing.steady_seconds += seconds;
      timing.steady_steps += steps_per_epoch();
    }
    check_finite(epoch);
    std::vector<double> loss;
    for (float v : loss_sum.to_vector<float>()) loss.push_back(double(v) / double(samples_));
    return loss;
  }

  // The end of a step of `batch` samples: Adam, the per-model losses (weighted by the batch
  // size) into the epoch's sums with a watch for faults, the step counters advanced.
  StepTail tail(Adam& adam, int64_t batch) const {
    StepTail t;
    t.adam = &adam;
    t.loss_sum = loss_sum, t.step = step, t.first_bad = first_bad;
    t.loss_weight = double(batch);
    t.counters = {step, global_step};
    return t;
  }

  Tensor step;         // int64 [1]: batch index within the epoch (gathers read it)
  Tensor global_step;  // int64 [1]: batches since the phase began (fresh noise reads it)
  Tensor step_loss;    // f32 [models]: where a fused step writes its losses (the tail sums them)

 private:
  void check_finite(int64_t epoch) {
    const int64_t bad = int64_t(first_bad.item());
    if (bad == kNoFault) return;
    std::string where = phase_ + ", epoch " + std::to_string(epoch) + ", step " + std::to_string(bad + 1) +
                        " of " + std::to_string(steps_per_epoch());
    if (!config_.allow_nonfinite)
      throw NonFiniteError("non-finite loss in " + where + " (--allow-nonfinite keeps going)");
    observer_.message("warning: non-finite loss in " + where + "; continuing (--allow-nonfinite)");
    fill(first_bad, double(kNoFault));
  }

  const Config& config_;
  Device device_;
  int64_t samples_;
  std::string phase_;
  Observer& observer_;
  Tensor loss_sum, first_bad;
  StepGraph full_, last_;
};

// Tensors a step writes its batch into, made once per batch size (the full batches and the
// last, partial one) on that size's first, eager step and kept for the phase: a step captured
// in a CUDA graph then allocates nothing for its inputs (with the fused step, nothing at all, so
// its graph holds no memory nodes). make(batch) builds one set.
class BatchBuffers {
 public:
  explicit BatchBuffers(std::function<std::vector<Tensor>(int64_t)> make) : make_(std::move(make)) {}
  const std::vector<Tensor>& operator()(int64_t batch) {
    auto it = sets_.find(batch);
    if (it == sets_.end()) it = sets_.emplace(batch, make_(batch)).first;
    return it->second;
  }

 private:
  std::function<std::vector<Tensor>(int64_t)> make_;
  std::map<int64_t, std::vector<Tensor>> sets_;
};

// Whether a phase trains with the GPU's fused step (ops/fused_step.h). --step fused (one
// persistent kernel) and --step cluster (row blocks in thread-block clusters) ask for it wherever
// it applies; --step auto (the default) takes it where an H200 measured it
// faster — small problems, up to 1024 rows (models × batch) per step: the default run (0.33 vs
// 0.44 s of GPU time in training) but not --models 10 or the paper preset, where cuBLASLt's
// larger kernels win (docs/PERFORMANCE.md) — and only on the default GEMM path: a run that
// names another engine, TF32, cuBLASLt's autotuning or another fusion gets what it named.
bool uses_fused_step(const Config& config, const MlpParams& params) {
  if (!fused_step_on_gpu(params) || config.step == "autograd") return false;
  if (config.step == "fused" || config.step == "cluster") return true;
  return flags_the_fused_step_leaves_to_evaluation(config).empty() &&
         params.models() * config.batch_size <= 1024;
}

// The end of an autograd training step: the backward pass through the tape, then the tail
// (Adam, the loss bookkeeping, the counters). A fused step does all of this itself.
void finish_autograd_step(const Tensor& loss, const std::vector<Tensor>& parameters, const StepTail& tail) {
  zero_grad(parameters);
  loss.backward();
  run_step_tail(tail, loss.detach());
}

// Fills `order` [N, S] (device) with each model's permutation for this epoch.
void upload_orders(const Tensor& order, uint64_t seed, uint32_t purpose, int64_t epoch) {
  const int64_t models = order.dim(0), samples = order.dim(1);
  std::vector<int32_t> host;
  host.reserve(size_t(models * samples));
  for (int64_t m = 0; m < models; ++m) {
    std::vector<int32_t> p = random_permutation(samples, model_stream(seed, m, purpose, uint32_t(epoch)));
    host.insert(host.end(), p.begin(), p.end());
  }
  order.copy_from(Tensor::from_vector(host, order.shape(), Device::cpu));
}

void check_parameters_finite(const MlpParams& params, const std::string& phase, const Config& config,
                             Observer& observer) {
  const int64_t bad = count_nonfinite(params.values());
  if (bad == 0) return;
  std::string what = std::to_string(bad) + " non-finite parameter values after " + phase;
  if (!config.allow_nonfinite) throw NonFiniteError(what + " (--allow-nonfinite keeps going)");
  observer.message("warning: " + what + "; continuing (--allow-nonfinite)");
}

void train_teacher(MlpParams& teacher, const DeviceData& data, const Config& config, Device device,
                   Results& results, Observer& observer) {
  const int64_t N = teacher.models(), S = data.train_count, P = data.train_images.dim(1);
  Adam adam(teacher.values(), teacher.grads(), {config.lr});
  const bool fused = uses_fused_step(config, teacher);
  PhaseLoop loop(config, device, N, S, "teacher training", observer);
  Tensor order = Tensor::empty({N, S}, DType::i32, device);
  const std::vector<Tensor> parameters = teacher.tensors();
  PhaseTiming& timing = results.timing["teacher"];
  timing.fused = fused;
  BatchBuffers inputs([&](int64_t batch) {  // x [N, B, P], y [N, B]
    return std::vector<Tensor>{Tensor::empty({N, batch, P}, DType::f32, device),
                               Tensor::empty({N, batch}, DType::i32, device)};
  });
  observer.phase_begins("Teacher", config.epochs_teacher, loop.steps_per_epoch());
  for (int64_t epoch = 1; epoch <= config.epochs_teacher; ++epoch) {
    upload_orders(order, config.seed, kTeacherOrderPurpose, epoch);
    EpochMetrics m{epoch, {}, {}};
    m.loss = loop.run_epoch(
        epoch,
        [&](int64_t batch) {
          const Tensor &x = inputs(batch)[0], &y = inputs(batch)[1];
          gather_batch(data.train_images, data.train_labels, order, loop.step, config.batch_size, x, y);
          const StepTail tail = loop.tail(adam, batch);
          if (fused) {  // forward, loss, gradients, Adam and bookkeeping in one kernel (ops/fused_step.h)
            fused_cross_entropy_step(x, y, teacher, {0, config.classes()}, tail, loop.step_loss);
          } else {
            Tensor loss = cross_entropy(mlp_forward(x, teacher, config.fusion), y, {0, config.classes()});
            finish_autograd_step(loss, parameters, tail);
          }
        },
        timing);
    check_parameters_finite(teacher, "teacher epoch " + std::to_string(epoch), config, observer);
    if (config.eval_every_epoch || epoch == config.epochs_teacher) {
      auto start = Clock::now();
      m.test_acc = evaluate(teacher, data, config.fusion, config.classes());
      results.eval_seconds += seconds_since(start);
    }
    results.teacher_epochs.push_back(m);
    observer.teacher_epoch(m, config.epochs_teacher);
  }
  observer.phase_ends();
  cpu_cache_trim();  // the next phase allocates other sizes
}

// Adds N(0, σ²) noise to every parameter of `params` (the student-init perturbation ablation).
void perturb(MlpParams& params, double sigma, uint64_t seed) {
  std::vector<Tensor> tensors = params.tensors();
  for (int64_t m = 0; m < params.models(); ++m)
    for (size_t k = 0; k < tensors.size(); ++k) {
      Tensor target = tensors[k].rows(m, 1);
      Tensor noise = Tensor::empty(target.shape(), target.dtype(), target.device());
      fill_normal(noise, model_stream(seed, m, kPerturbPurpose, 0, uint32_t(k)), 0.0, sigma);
      add_into(target, noise);
    }
}

// The students of a group of arms at their inits: arm a's are models a·N .. a·N + N−1 of one
// batched MlpParams, copies of the same-init or the cross-init models.
MlpParams group_students(const std::vector<ArmSpec>& arms, const MlpParams& same_init,
                         const MlpParams& cross_init) {
  const int64_t N = same_init.models(), A = int64_t(arms.size());
  MlpParams students(same_init.shape(), A * N, DType::f32, same_init.device());
  for (int64_t a = 0; a < A; ++a)
    for (int64_t m = 0; m < N; ++m)
      students.copy_model_from(arms[size_t(a)].same_init ? same_init : cross_init, m, a * N + m);
  return students;
}

// Distills one group of arms (all on the same logits) from the frozen teachers.
void distill_group(const std::vector<ArmSpec>& arms, const MlpParams& teacher, const MlpParams& same_init,
                   const MlpParams& cross_init, const DeviceData& data, const Config& config, Device device,
                   Results& results, Observer& observer, MlpParams* trained_out) {
  // S: an epoch of distillation is as many samples as a pass over the training set, as the
  // notebook's RandomMNISTLike(n=len(train_ds)) is (so --train-samples shortens it too).
  const int64_t N = teacher.models(), A = int64_t(arms.size()), S = data.train_count,
                P = data.train_images.dim(1);
  const bool all_logits = arms.front().all_logits;
  const ColumnRange cols =
      all_logits ? ColumnRange{0, config.outputs()} : ColumnRange{config.classes(), config.outputs()};

  MlpParams students = group_students(arms, same_init, cross_init);

  Adam adam(students.values(), students.grads(), {config.lr, 0.9, 0.999, 1e-8, config.weight_decay});
  const bool fused = uses_fused_step(config, students);
  const std::string phase = all_logits ? "distill_all_logits" : "distill_ghosts";
  // Each group starts its own step counters, so the all-logit arms see exactly the ghost arms'
  // inputs: the paper's four student arms share each model's noise (REFERENCE.md §2).
  PhaseLoop loop(config, device, A * N, S,
                 "distillation (" + std::string(all_logits ? "all logits" : "ghost logits") + ")", observer);
  const bool ordered = config.noise == NoiseKind::mnist || config.noise_set == NoiseSet::fixed;
  Tensor order = ordered ? Tensor::empty({N, S}, DType::i32, device) : Tensor();
  const std::vector<Tensor> parameters = students.tensors();
  const NoiseDistribution distribution =
      config.noise == NoiseKind::gaussian ? NoiseDistribution::gaussian : NoiseDistribution::uniform;
  PhaseTiming& timing = results.timing[phase];
  timing.fused = fused;

  BatchBuffers inputs([&](int64_t batch) {  // x [A·N, B, P], and (--noise mnist) the labels gathered with it
    std::vector<Tensor> set{Tensor::empty({A * N, batch, P}, DType::f32, device)};
    if (config.noise == NoiseKind::mnist) set.push_back(Tensor::empty({N, batch}, DType::i32, device));
    return set;
  });
  observer.phase_begins(all_logits ? "Distill (all logits)" : "Distill", config.epochs_distill,
                        loop.steps_per_epoch());
  for (int64_t epoch = 1; epoch <= config.epochs_distill; ++epoch) {
    if (ordered) upload_orders(order, config.seed, kNoiseOrderPurpose, epoch);
    std::vector<double> loss = loop.run_epoch(
        epoch,
        [&](int64_t batch) {
          // x: the inputs of all A·N students; student a·N + m sees model m's inputs, and rows
          // 0..N−1 are exactly the teachers' inputs. Noise is drawn straight into that layout
          // (source = model mod N); real images are gathered once and tiled.
          const Tensor& x = inputs(batch)[0];
          if (config.noise == NoiseKind::mnist) {  // real training images as inputs; their labels go unused
            gather_batch(data.train_images, data.train_labels, order, loop.step, config.batch_size,
                         x.rows(0, N), inputs(batch)[1]);
            for (int64_t a = 1; a < A; ++a) x.rows(a * N, N).copy_from(x.rows(0, N));
          } else {
            // fixed: a set of S noise images per model, reshuffled every epoch (the paper's);
            // fresh: image ids run on across epochs (global step), so no image repeats — the
            // notebook's RandomMNISTLike draws torch.rand in every __getitem__.
            noise_batch(config.seed, stream_id(kNoisePurpose), ordered ? order : Tensor(),
                        ordered ? loop.step : loop.global_step, config.batch_size, 0, distribution, x, N);
          }
          // Student a·N + m learns from teacher m: distill cycles over the N teachers.
          const StepTail tail = loop.tail(adam, batch);
          if (fused) {  // teachers' and students' forward, loss, gradients, Adam, bookkeeping: one kernel
            fused_distill_step(x, students, teacher, cols, config.temperature, config.divergence, tail,
                               loop.step_loss);
          } else {
            Tensor teacher_logits;
            {
              NoGradGuard no_grad;
              teacher_logits = mlp_forward(x.rows(0, N), teacher, config.fusion);
            }
            Tensor loss = distill(mlp_forward(x, students, config.fusion), teacher_logits, cols,
                                  config.temperature, config.divergence);
            finish_autograd_step(loss, parameters, tail);
          }
        },
        timing);
    check_parameters_finite(students, "distillation epoch " + std::to_string(epoch), config, observer);

    std::vector<double> acc;
    if (config.eval_every_epoch || epoch == config.epochs_distill) {
      auto start = Clock::now();
      acc = evaluate(students, data, config.fusion, config.classes());
      results.eval_seconds += seconds_since(start);
    }
    for (int64_t a = 0; a < A; ++a) {
      EpochMetrics m{epoch, {}, {}};
      m.loss.assign(loss.begin() + a * N, loss.begin() + (a + 1) * N);
      if (!acc.empty()) m.test_acc.assign(acc.begin() + a * N, acc.begin() + (a + 1) * N);
      results.arm_epochs[arms[size_t(a)].key].push_back(m);
      observer.arm_epoch(arms[size_t(a)], m, config.epochs_distill);
    }
  }
  observer.phase_ends();
  cpu_cache_trim();
  if (trained_out) *trained_out = std::move(students);
}

}  // namespace

int64_t cross_init_partner(int64_t model, int64_t models) { return (model + 1) % models; }

std::string flags_the_fused_step_leaves_to_evaluation(const Config& config) {
  const Config defaults;
  std::vector<std::string> flags;
  if (config.gemm_engine != defaults.gemm_engine) flags.push_back("--gemm " + config.gemm_engine);
  if (config.tf32) flags.push_back("--tf32");
  if (config.autotune) flags.push_back("--autotune");
  if (config.fusion != defaults.fusion)
    flags.push_back(std::string("--fusion ") + fusion_name(config.fusion));
  std::string text;
  for (const std::string& flag : flags) {
    if (!text.empty()) text += ", ";
    text += flag;
  }
  return text;
}

std::vector<ArmSpec> student_arms(const Config& config) {
  std::vector<ArmSpec> arms{{"student", "Student", true, false}};
  if (config.cross_init) arms.push_back({"cross_init", "Cross-init", false, false});
  if (config.all_logit_arms) {
    arms.push_back({"student_all_logits", "Student all-logits", true, true});
    if (config.cross_init) arms.push_back({"cross_init_all_logits", "Cross-init all-logits", false, true});
  }
  return arms;
}

void apply_gemm_settings(const Config& config) {
  gemm::settings().tf32 = config.tf32;
  gemm::settings().autotune = config.autotune;
  gemm::settings().engine = config.gemm_engine == "cudnn"   ? gemm::GpuEngine::cudnn
                            : config.gemm_engine == "tiled" ? gemm::GpuEngine::tiled
                                                            : gemm::GpuEngine::cublaslt;
  // --fusion none is the reference: no fused epilogues either, every bias, ReLU and bias
  // gradient its own kernel.
  gemm::settings().fuse_epilogues = config.fusion != MlpFusion::none;
  set_fused_step_design(config.step == "cluster" ? FusedStepDesign::cluster : FusedStepDesign::grid);
#ifdef SUBLIMINAL_HAS_CUDA
  cuda::fused_step_split_policy({config.fused_max_splits, config.fused_min_chunks, config.fused_band_fixup});
#endif
}

uint64_t host_bytes_at_least(const Config& config) {
  int64_t largest_group = 0;  // the arms distilled together: the ghost-logit arms, or the all-logit ones
  for (const bool all_logits : {false, true}) {
    int64_t arms = 0;
    for (const ArmSpec& arm : student_arms(config)) arms += arm.all_logits == all_logits;
    largest_group = std::max(largest_group, arms);
  }
  // --parity-batch computes one model's batch, whatever --models a preset says (the paper's 100).
  const int64_t models = config.parity_batch_path.empty() ? config.models : 1;
  const uint64_t copy = uint64_t(models) * uint64_t(config.mlp_shape().parameters_per_model()) * 4;
  return copy * uint64_t(2 + 4 * largest_group);
}

void check_host_memory(const Config& config, Device device) {
  const uint64_t limit = cpu_memory_limit(), needed = host_bytes_at_least(config);
  if (device != Device::cpu || limit == 0 || needed <= limit) return;
  const std::string hidden = config.hidden_text();
  const std::string what = "(their parameters, gradients and Adam's moments)";
  const std::string models = config.parity_batch_path.empty() ? "--models " + std::to_string(config.models)
                                                              : "--parity-batch's one model";
  throw OutOfMemoryError("out of host memory: " + models + " of --hidden " + hidden + " need at least " +
                         bytes_text(needed) + " " + what + ", and " + bytes_text(limit) + " is available");
}

namespace {

// Notes on flags that read as if they did more than they do with this device and these sizes;
// the run goes on (the refusals are Config::validate's).
void note_flags_without_effect(const Config& config, Device device, int64_t train_count, Observer& observer) {
  if (device == Device::cuda && config.tf32 && config.gemm_engine == "tiled")
    observer.message("note: --tf32 has no effect with --gemm tiled (its kernels compute in fp32)");
  if (device == Device::cuda && config.autotune && config.gemm_engine == "tiled")
    observer.message("note: --autotune has no effect with --gemm tiled (it times cuBLASLt's algorithms)");
  const std::string evaluation_only = flags_the_fused_step_leaves_to_evaluation(config);
  if (device == Device::cuda && config.step == "auto" && config.fused_split() != Config().fused_split() &&
      !evaluation_only.empty())
    observer.message("note: --fused-split " + config.fused_split() +
                     " has no effect: --step auto takes the autograd tape beside " + evaluation_only);
  if (device == Device::cuda && (config.step == "fused" || config.step == "cluster") &&
      !evaluation_only.empty())
    observer.message(
        "note: --step " + config.step +
        " trains in its own float32 kernels; these flags reach only the evaluation: " + evaluation_only);
  if (device == Device::cuda && config.graphs && !replay_graphs(config))
    observer.message("note: --gemm cudnn launches each step without CUDA graphs (its workspace may move)");
  if (config.batch_size > train_count && config.epochs_teacher + config.epochs_distill > 0)
    observer.message("note: --batch-size " + std::to_string(config.batch_size) + " is more than the " +
                     std::to_string(train_count) + " training images" +
                     (config.train_samples > 0 ? " --train-samples leaves" : "") +
                     ": each epoch is one step of " + std::to_string(train_count));
  if (config.preset == Preset::paper && config.models == 1 && config.cross_init)
    observer.message(
        "note: --preset paper with one model: the cross-init control is a second init drawn from "
        "--seed, as in the notebook preset; the paper's pairing with another model's init needs "
        "--models 2 or more");
}

// The run's three starting points, N models each.
struct Inits {
  MlpParams init;       // the shared init: the teacher's, and the reference arm's
  MlpParams same_init;  // the same-init students' start: init, or init perturbed (--init-perturb)
  MlpParams cross;      // the cross-init students' start
};

// Model m from seed + m; the shared init (variant 0) and the cross-init one. The teacher and
// the same-init students start as exact copies of the shared init (unless --init-perturb), as
// in the notebook's student.load_state_dict(teacher.state_dict()). The notebook stops before
// any control; here the cross-init students start from a second init drawn from the same seed
// (variant 1, engine/nn.h), except in the paper preset with ≥ 2 models (below).
Inits draw_inits(const Config& config, Device device) {
  const MlpShape shape = config.mlp_shape();
  const int64_t N = config.models;
  std::vector<uint64_t> seeds;
  for (int64_t m = 0; m < N; ++m) seeds.push_back(config.seed + uint64_t(m));
  Inits inits{MlpParams(shape, N, DType::f32, device), MlpParams(shape, N, DType::f32, device),
              MlpParams(shape, N, DType::f32, device)};
  InitFileNotes loaded;  // a loaded init keeps the scheme its file names (if any) in a --save-init of it
  if (!config.load_init_path.empty())
    load_init(config.load_init_path, inits.init, false, &loaded);
  else
    init_mlp(inits.init, config.init, seeds, 0);
  if (!config.save_init_path.empty())
    save_init(config.save_init_path, inits.init, config.force, config.seed,
              config.load_init_path.empty() ? init_name(config.init) : loaded.scheme);

  if (config.pairs_models_for_control()) {
    // The paper's cross-model arm takes another model's init. A cyclic shift is a
    // derangement: no model is ever paired with its own init, where the paper script's random
    // permutation pairs about one with itself (../shared/docs/REFERENCE.md §2, pitfalls).
    for (int64_t m = 0; m < N; ++m) inits.cross.copy_model_from(inits.init, cross_init_partner(m, N), m);
  } else {
    init_mlp(inits.cross, config.init, seeds, 1);
  }
  inits.same_init.copy_from(inits.init);
  if (config.init_perturb > 0) perturb(inits.same_init, config.init_perturb, config.seed);
  return inits;
}

// Step 4: the students, one group per set of distilled logits (ghost, then all). Each arm's
// final accuracy goes to results; the trained students to *trained_ghost / *trained_all.
void train_students(const std::vector<ArmSpec>& arms, const MlpParams& teacher, const Inits& inits,
                    const DeviceData& data, const Config& config, Device device, Results& results,
                    Observer& observer, MlpParams* trained_ghost, MlpParams* trained_all) {
  std::vector<ArmSpec> ghost_arms, all_arms;
  for (const ArmSpec& a : arms) (a.all_logits ? all_arms : ghost_arms).push_back(a);
  for (const auto* group : {&ghost_arms, &all_arms}) {
    if (group->empty()) continue;
    MlpParams* out = group == &ghost_arms ? trained_ghost : trained_all;
    if (config.epochs_distill == 0) {  // nothing to train: the students are their inits (and --save's)
      for (const ArmSpec& a : *group) {
        const auto start = Clock::now();
        results.final_acc.push_back({a.key, evaluate(a.same_init ? inits.same_init : inits.cross, data,
                                                     config.fusion, config.classes())});
        results.eval_seconds += seconds_since(start);
      }
      if (out != nullptr) *out = group_students(*group, inits.same_init, inits.cross);
      continue;
    }
    distill_group(*group, teacher, inits.same_init, inits.cross, data, config, device, results, observer,
                  out);
  }
  for (const ArmSpec& a : arms) {
    const auto found = results.arm_epochs.find(a.key);
    if (found != results.arm_epochs.end() && !found->second.empty())
      results.final_acc.push_back({a.key, found->second.back().test_acc});
  }
}

}  // namespace

Results run_experiment(const Config& config, const data::Mnist& mnist, Device device, Observer& observer,
                       TrainedModels* trained) {
  check_host_memory(config, device);
  Results results;
  results.device = device_description(device);
  apply_gemm_settings(config);
#ifdef SUBLIMINAL_HAS_CUDA
  if (device == Device::cuda && config.step == "cluster" && !cuda::cluster_step_supported())
    throw InputError(
        "--step cluster: needs thread-block clusters (compute capability 9.0 or later) and a build with "
        "sm_90 code (CMAKE_CUDA_ARCHITECTURES including 90); this GPU is " +
        results.device);
#endif
  DeviceData data = upload(mnist, device, config.train_samples);
  note_flags_without_effect(config, device, data.train_count, observer);

  // 1. init.
  Inits inits = draw_inits(config, device);

  // 2. reference: the untrained init (the paper's reference arm, ../shared/docs/REFERENCE.md §2).
  {
    auto start = Clock::now();
    results.final_acc.push_back({"reference", evaluate(inits.init, data, config.fusion, config.classes())});
    results.eval_seconds += seconds_since(start);
  }

  // 3. teacher.
  MlpParams teacher(config.mlp_shape(), config.models, DType::f32, device);
  teacher.copy_from(inits.init);
  train_teacher(teacher, data, config, device, results, observer);
  // The notebook's "Teacher final test accuracy" evaluates the teacher once more; its weights are
  // those of the last epoch's evaluation (always made), so that number is reused.
  results.final_acc.push_back({"teacher", results.teacher_epochs.empty()
                                              ? results.final_acc.front().second
                                              : results.teacher_epochs.back().test_acc});

  // 4. students.
  const std::vector<ArmSpec> arms = student_arms(config);
  MlpParams trained_ghost, trained_all;
  train_students(arms, teacher, inits, data, config, device, results, observer,
                 trained != nullptr ? &trained_ghost : nullptr, trained != nullptr ? &trained_all : nullptr);
  if (trained != nullptr)
    *trained = {std::move(teacher), std::move(trained_ghost), std::move(trained_all), arms};
  results.notes = gemm::fallback_report();
  results.gemm_tuning = gemm::tuning_report();
  return results;
}

}  // namespace subliminal::app
