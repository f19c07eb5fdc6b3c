// apps/subliminal/config.h — everything a run of the experiment is configured by, the
// presets, and the command line that fills it.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "engine/error.h"
#include "engine/nn.h"
#include "ops/divergence.h"
#include "ops/mlp.h"

namespace subliminal::app {

// A flag or flag combination the user got wrong: main() prints one line and exits 2.
struct UsageError : InputError {
  using InputError::InputError;
};

enum class Preset { notebook, paper };
enum class NoiseKind { uniform, gaussian, mnist };  // what the students are distilled on
enum class NoiseSet { fresh, fixed };               // new noise every epoch, or one set reshuffled

struct Config {
  Preset preset = Preset::notebook;
  std::string data_dir;         // --data; empty: search the usual places
  std::string device = "auto";  // auto | cpu | cuda
  uint64_t seed = 0;
  int64_t models = 1;  // independent models trained at once (model m uses seed + m)
  int64_t ghosts = 3;  // auxiliary logits after the 10 classes
  std::vector<int64_t> hidden{256, 256};
  int64_t batch_size = 256;
  double lr = 3e-4;
  int64_t epochs_teacher = 5;
  int64_t epochs_distill = 5;
  double temperature = 1.0;
  Divergence divergence = Divergence::kl;  // what the distillation loss measures (ops/divergence.h)
  InitScheme init = InitScheme::torch_default;
  NoiseKind noise = NoiseKind::uniform;
  NoiseSet noise_set = NoiseSet::fresh;
  double weight_decay = 0.0;     // L2 penalty in the students' Adam
  double init_perturb = 0.0;     // σ of Gaussian noise added to the same-init students' init
  bool cross_init = true;        // also distill students from a different init (the control)
  bool all_logit_arms = false;   // also distill on all logits (the paper's extra arms)
  bool eval_every_epoch = true;  // the notebook evaluates after every epoch; false: after the last only
  // Use only the first N training images (0: all) — quick experiments. A distillation epoch is
  // as long as a pass over them too, and a fixed noise set holds N images (experiment.cpp).
  int64_t train_samples = 0;

  // CPU threads: the engine's pool, for the GEMMs' slabs and its loops; 0 = the usable cores (affinity)
  int threads = 0;
  bool tf32 = false;
  bool autotune = false;       // time cuBLASLt candidates per GEMM shape (gemm::Settings::autotune)
  bool deterministic = false;  // insist on bit-reproducible runs (refuses --autotune, --gemm cudnn)
  bool graphs = true;          // CUDA graphs for training steps
  MlpFusion fusion = MlpFusion::whole;
  std::string gemm_engine = "cublaslt";  // cublaslt | cudnn | tiled
  std::string step = "auto";             // auto | autograd | fused | cluster (GPU: ops/fused_step.h)
  // How the GPU's fused step splits K (cuda::FusedSplitPolicy): at most this many slices of at
  // least this many 16-wide chunks, a split tile finished in bands by all of its items or by
  // the last one. bench/layers.cpp sweeps them; the flag lets a whole run take another.
  int fused_max_splits = 8;
  int fused_min_chunks = 2;
  bool fused_band_fixup = true;

  std::string json_path;
  std::string save_path;       // final teacher + students (safetensors)
  std::string save_init_path;  // the shared init (safetensors, PyTorch state_dict names)
  std::string load_init_path;
  std::string parity_batch_path;  // write one batch's losses and gradients (bench/parity.py) and exit
  bool force = false;             // overwrite an existing checkpoint
  bool allow_nonfinite = false;   // keep going after a NaN/Inf loss or parameter
  bool progress = true;           // progress bar on stderr when it is a terminal

  std::vector<std::string> sweeps;  // --sweep key=v1,v2,... (several: a grid)
  std::string sweep_out;            // --sweep-out PREFIX for .csv and .jsonl

  int64_t classes() const { return 10; }
  int64_t outputs() const { return classes() + ghosts; }
  // The paper's cross-model control: each cross-init student takes another model's init (needs
  // two models); otherwise the run draws a second init of its own (variant 1, from the seed).
  bool pairs_models_for_control() const { return preset == Preset::paper && models >= 2; }
  // Whether the run draws a cross-init control's init itself (with --init's scheme).
  bool draws_its_own_control() const { return cross_init && !pairs_models_for_control(); }
  MlpShape mlp_shape() const;
  std::string fused_split() const;  // "8,2,bands": --fused-split's form
  std::string hidden_text() const;  // "256,256": --hidden's form
};

// "a,b,,c" split at `separator` into its parts, empty ones included: {"a", "b", "", "c"}.
std::vector<std::string> split_text(const std::string& text, char separator);

// The result of reading the command line: a config, or the help text to print, or --version.
struct CommandLine {
  Config config;
  bool help = false;
  std::string help_text;
  bool version = false;  // print build_info_text (apps/subliminal/build_info.h) and exit
};

// Parses argv. Throws UsageError with a one-line message for any bad flag or value.
CommandLine parse_command_line(int argc, const char* const* argv);

// Checks a config's values (ranges, combinations); throws UsageError naming the flag.
void validate(const Config& config);

// Throws UsageError naming the flag when an output of the run (--json, --save, ..., --sweep-out's
// files) is one of `inputs`, the data files it reads (under any name: links count).
void check_outputs_spare(const Config& config, const std::vector<std::filesystem::path>& inputs);

// Sets a config value by its flag name without the dashes (as --sweep does): "lr", "batch-size", ...
// Throws UsageError for unknown keys or bad values.
void set_config_value(Config& config, const std::string& key, const std::string& value);

const char* preset_name(Preset p);
const char* noise_name(NoiseKind n);
const char* noise_set_name(NoiseSet n);
const char* init_name(InitScheme s);
const char* fusion_name(MlpFusion f);

}  // namespace subliminal::app
