// apps/subliminal/experiment.h — the experiment: teacher training, ghost-logit distillation
// of same-init and cross-init students on noise, evaluation — for N models at once.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "apps/subliminal/config.h"
#include "data/mnist.h"
#include "engine/device.h"
#include "engine/nn.h"
#include "ops/slice.h"

namespace subliminal::app {

// A NaN/Inf loss or parameter stopped the run (unless --allow-nonfinite); main() exits 3.
struct NonFiniteError : Error {
  using Error::Error;
};

// One student arm: which init it starts from and which logits it is distilled on.
struct ArmSpec {
  std::string key;    // JSON key: "student", "cross_init", "student_all_logits", "cross_init_all_logits"
  std::string label;  // console label: "Student", "Cross-init", ...
  bool same_init;     // the teacher's init (else a different one)
  bool all_logits;    // distilled on all logits (else only the ghost logits)
};
std::vector<ArmSpec> student_arms(const Config& config);

struct EpochMetrics {
  int64_t epoch = 0;
  std::vector<double> loss;      // per model: mean training loss over the epoch (CE; KL or JS, --divergence)
  std::vector<double> test_acc;  // per model, in [0, 1]; empty when not evaluated this epoch
};

struct PhaseTiming {
  double wall_seconds = 0;  // host clock around the phase's training steps (eval excluded)
  double gpu_seconds = 0;   // CUDA events around the same steps (0 on the CPU)
  int64_t steps = 0;        // training steps run
  // The same clock (GPU events on the GPU, the host's on the CPU) over the epochs after the
  // phase's first, and their steps: a step's cost without the first epoch's graph capture, cold
  // caches and first-touch pages (bench/compare.py's "steady" column).
  double steady_seconds = 0;
  int64_t steady_steps = 0;
  size_t graph_kernels = 0;       // kernels in one captured full-batch step (0 without graphs)
  size_t graph_memory_nodes = 0;  // its allocations and frees (0: the step allocates nothing)
  bool fused = false;             // the steps ran as ops/fused_step.h's step (--step fused or cluster)
};

struct Results {
  std::string device;  // "cpu (2 hardware threads)" or the GPU's name
  std::vector<std::pair<std::string, std::vector<double>>>
      final_acc;  // arm key → per-model accuracy, in print order
  std::vector<EpochMetrics> teacher_epochs;
  std::map<std::string, std::vector<EpochMetrics>> arm_epochs;
  std::map<std::string, PhaseTiming> timing;  // "teacher", "distill_ghosts", "distill_all_logits"
  double eval_seconds = 0;
  std::string notes;        // fallbacks etc., one line each
  std::string gemm_tuning;  // cuBLASLt autotuning choices (GPU), one line each
};

// What the experiment tells its caller as it goes (printing, progress bars).
struct Observer {
  virtual ~Observer() = default;
  virtual void phase_begins(const std::string& phase, int64_t epochs, int64_t steps_per_epoch) {}
  virtual void step_done() {}
  virtual void teacher_epoch(const EpochMetrics& m, int64_t epochs) {}
  virtual void arm_epoch(const ArmSpec& arm, const EpochMetrics& m, int64_t epochs) {}
  virtual void phase_ends() {}
  virtual void message(const std::string& line) {}
};

// The flags a run names that an explicit --step fused or cluster leaves to the evaluation alone,
// its training running in the step's own float32 kernels: "--gemm tiled, --tf32" ("" for none).
// (--step auto takes the autograd tape when any of them is given.)
std::string flags_the_fused_step_leaves_to_evaluation(const Config& config);

// The model whose init cross-init student m takes in the paper's arms: a cyclic shift, so a
// derangement — no student ever gets its own model's init (a random permutation would pair
// about one model with itself). Needs models ≥ 2.
int64_t cross_init_partner(int64_t model, int64_t models);

// The host memory a CPU run surely holds at once, in bytes: its models' parameters (4 bytes a
// float) in 2 + 4·g copies while a group of g arms distils — the init and the trained teacher,
// and each arm's weights, gradients and Adam's two moments. Activations, the evaluation's
// chunks, the data and the allocator's cache come on top: measured runs hold about twice this
// (Experiment.HostBytesAtLeastIsWhatACpuRunSurelyHolds). A --parity-batch run counts one model.
uint64_t host_bytes_at_least(const Config& config);

// On the CPU, with a ceiling on its allocator (engine/storage.h, set_cpu_memory_limit): a run
// whose host_bytes_at_least is over it is refused at once (OutOfMemoryError naming the flags
// and the sizes), not minutes later at the allocation that passes it.
void check_host_memory(const Config& config, Device device);

// The models a run ends with, for --save: the teacher, and each distilled group's arms (ghost
// logits, all logits; either may be empty) in `arms` order.
struct TrainedModels {
  MlpParams teacher, ghost, all;
  std::vector<ArmSpec> arms;
};

// Runs the whole experiment on `device` (already validated as usable). With `trained`, the
// trained models are moved there, for the caller to save once the results are reported: a
// checkpoint that cannot be written (a full disk) then costs none of the run's numbers.
Results run_experiment(const Config& config, const data::Mnist& mnist, Device device, Observer& observer,
                       TrainedModels* trained = nullptr);

// Sets the GEMM engine, TF32, autotuning and epilogue fusion (gemm::settings()) from the flags.
void apply_gemm_settings(const Config& config);

}  // namespace subliminal::app
