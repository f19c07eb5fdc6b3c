// apps/subliminal/config.cpp — presets, the flag table, and strict value parsing.
//
// Every value flag is read as text by CLI11 and converted here, by the same setter that
// --sweep uses, so a bad value gives the same one-line message whichever way it came in:
//   --batch-size: expected a whole number from 1 to 16777216, got "0"
#include "apps/subliminal/config.h"

#include <CLI/CLI.hpp>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <set>

#include "engine/safetensors.h"  // resolved_path
#include "ops/fused_step.h"      // kFusedStepMinLayers, kFusedStepMaxLayers
#include "ops/gemm.h"

namespace subliminal::app {
namespace {

[[noreturn]] void bad_value(const std::string& key, const std::string& expected, const std::string& value) {
  throw UsageError("--" + key + ": expected " + expected + ", got " + quoted(value));
}

int64_t parse_int(const std::string& key, const std::string& value, int64_t min, int64_t max = INT64_MAX) {
  int64_t v = 0;
  auto [end, error] = std::from_chars(value.data(), value.data() + value.size(), v);
  if (error != std::errc() || end != value.data() + value.size() || v < min || v > max)
    bad_value(key,
              "a whole number from " + std::to_string(min) +
                  (max == INT64_MAX ? " up" : " to " + std::to_string(max)),
              value);
  return v;
}

uint64_t parse_seed(const std::string& key, const std::string& value) {
  uint64_t v = 0;
  auto [end, error] = std::from_chars(value.data(), value.data() + value.size(), v);
  if (error != std::errc() || end != value.data() + value.size())
    bad_value(key, "a non-negative whole number", value);
  return v;
}

// A decimal number that float32 holds; `positive`: > 0, otherwise ≥ 0. The run computes in
// float32: a value above its largest (3.4e38) would become Inf, and a positive one below its
// smallest normal (1.18e-38) acts as 0 (the run flushes subnormals, engine/device.h). Written
// plainly: no spaces around it, no hexadecimal (std::from_chars; an optional leading '+').
double parse_number(const std::string& key, const std::string& value, bool positive) {
  const char* begin = value.data() + (value.size() > 1 && value[0] == '+' && value[1] != '-' ? 1 : 0);
  const char* end = value.data() + value.size();
  double v = NAN;
  const auto [stop, error] = std::from_chars(begin, end, v);
  const double largest = std::numeric_limits<float>::max();
  if (error != std::errc() || stop != end || !std::isfinite(v) || v > largest ||
      (positive ? v < std::numeric_limits<float>::min() : v < 0))
    bad_value(key,
              positive ? "a number > 0 that float32 holds (1.18e-38 to 3.4e38)"
                       : "a number ≥ 0 that float32 holds (at most 3.4e38)",
              value);
  return v;
}

// A file or directory name. One that starts with '-' is most likely the next flag, taken as
// this one's value because the value was left out (write ./-name for a file of that name).
std::string parse_path(const std::string& key, const std::string& value) {
  if (value.empty()) bad_value(key, "a path", value);
  if (value[0] == '-')
    bad_value(key, "a path, not a flag (for a name that starts with - write ./NAME)", value);
  return value;
}

// A path prefix for PREFIX.csv, PREFIX.jsonl and PREFIX.lock. One that ends in a folder ("runs/",
// ".") would name hidden files inside it (runs/.csv), which a listing does not show.
std::string parse_prefix(const std::string& key, const std::string& value) {
  const std::string path = parse_path(key, value);
  const std::string last = std::filesystem::path(path).filename().string();
  if (last.empty() || last == "." || last == "..")
    bad_value(key,
              "a path prefix that ends in a file name, not a folder (e.g. runs/lr for runs/lr.csv and "
              "runs/lr.jsonl)",
              value);
  // runs/lr.jsonl would start a new sweep in runs/lr.jsonl.jsonl beside the one meant.
  for (const char* extension : {".csv", ".jsonl", ".lock"})
    if (last.size() > std::strlen(extension) && last.ends_with(extension))
      bad_value(
          key,
          std::string("the prefix without ") + extension + " (runs/lr for runs/lr.csv and runs/lr.jsonl)",
          value);
  return path;
}

// S,C,bands|last (most slices, fewest chunks a slice, how a split tile is finished), e.g. 8,2,bands.
void parse_fused_split(Config& c, const std::string& key, const std::string& value) {
  const std::string expected = "S,C,bands|last with S (most slices) 1-16 and C (fewest chunks) 1-64";
  const size_t first = value.find(','),
               second = first == std::string::npos ? first : value.find(',', first + 1);
  if (second == std::string::npos) bad_value(key, expected, value);
  const std::string splits = value.substr(0, first), chunks = value.substr(first + 1, second - first - 1),
                    fixup = value.substr(second + 1);
  int64_t s = 0, m = 0;
  const auto [s_end, s_error] = std::from_chars(splits.data(), splits.data() + splits.size(), s);
  const auto [m_end, m_error] = std::from_chars(chunks.data(), chunks.data() + chunks.size(), m);
  if (s_error != std::errc() || s_end != splits.data() + splits.size() || s < 1 || s > 16 ||
      m_error != std::errc() || m_end != chunks.data() + chunks.size() || m < 1 || m > 64 ||
      (fixup != "bands" && fixup != "last"))
    bad_value(key, expected, value);
  c.fused_max_splits = int(s);
  c.fused_min_chunks = int(m);
  c.fused_band_fixup = fixup == "bands";
}

std::vector<int64_t> parse_sizes(const std::string& key, const std::string& value) {
  std::vector<int64_t> sizes;
  for (const std::string& part : split_text(value, ',')) {
    int64_t v = 0;
    auto [end, error] = std::from_chars(part.data(), part.data() + part.size(), v);
    if (part.empty() || error != std::errc() || end != part.data() + part.size() || v < 1 || v > 65536)
      bad_value(key, "comma-separated layer widths from 1 to 65536 (e.g. 256,256)", value);
    sizes.push_back(v);
  }
  return sizes;
}

template <class E>
E parse_choice(const std::string& key, const std::string& value, const std::map<std::string, E>& choices) {
  auto it = choices.find(value);
  if (it == choices.end()) {
    std::string names;
    for (const auto& [name, _] : choices) names += (names.empty() ? "" : " | ") + name;
    bad_value(key, "one of " + names, value);
  }
  return it->second;
}

bool parse_bool(const std::string& key, const std::string& value) {
  return parse_choice<bool>(key, value, {{"true", true}, {"false", false}, {"1", true}, {"0", false}});
}

using Setter = std::function<void(Config&, const std::string& key, const std::string& value)>;

// Flags that take a value, in the order --help lists them.
struct ValueFlag {
  const char* key;
  const char* help;
  Setter set;
};

const std::vector<ValueFlag>& value_flags() {
  static const std::vector<ValueFlag> flags = {
      {"data",
       "Directory with the MNIST IDX files (raw or .gz); default: $MNIST_DIR, ./data/mnist, "
       "~/.pytorch/MNIST_data/MNIST/raw",
       [](Config& c, auto& k, auto& v) { c.data_dir = parse_path(k, v); }},
      {"device", "auto | cpu | cuda (default auto: the GPU when one is usable)",
       [](Config& c, auto& k, auto& v) {
         parse_choice<int>(k, v, {{"auto", 0}, {"cpu", 1}, {"cuda", 2}});
         c.device = v;
       }},
      {"seed", "Random seed; model m of --models uses seed + m (default 0)",
       [](Config& c, auto& k, auto& v) { c.seed = parse_seed(k, v); }},
      {"models", "Independent models trained at once (default 1; paper 100)",
       [](Config& c, auto& k, auto& v) { c.models = parse_int(k, v, 1, 100000); }},
      {"ghosts", "Ghost (auxiliary) logits after the 10 classes, ≥ 2 (default 3)",
       [](Config& c, auto& k, auto& v) { c.ghosts = parse_int(k, v, 2, 100000); }},
      {"hidden", "Hidden layer widths, comma-separated (default 256,256)",
       [](Config& c, auto& k, auto& v) { c.hidden = parse_sizes(k, v); }},
      {"batch-size", "Batch size for teacher training and distillation (default 256; paper 1024)",
       [](Config& c, auto& k, auto& v) { c.batch_size = parse_int(k, v, 1, 1 << 24); }},
      {"lr", "Adam learning rate (default 3e-4)",
       [](Config& c, auto& k, auto& v) { c.lr = parse_number(k, v, true); }},
      {"epochs-teacher", "Teacher training epochs (default 5)",
       [](Config& c, auto& k, auto& v) { c.epochs_teacher = parse_int(k, v, 0, 100000); }},
      {"epochs-distill", "Distillation epochs (default 5)",
       [](Config& c, auto& k, auto& v) { c.epochs_distill = parse_int(k, v, 0, 100000); }},
      {"temperature", "Distillation temperature T > 0 (default 1)",
       [](Config& c, auto& k, auto& v) { c.temperature = parse_number(k, v, true); }},
      {"divergence",
       "Distillation loss: kl (KL(teacher ‖ student), as the notebook; the default) | js (Jensen–Shannon, "
       "an ablation); either at temperature T, times T²",
       [](Config& c, auto& k, auto& v) {
         c.divergence = parse_choice<Divergence>(k, v, {{"kl", Divergence::kl}, {"js", Divergence::js}});
       }},
      {"init",
       "Weight init: torch (nn.Linear's; the default) | normal (N(0, 1/fan_in), zero biases; paper); with "
       "--load-init, the scheme of the cross-init control the run draws itself (the file gives the shared "
       "init)",
       [](Config& c, auto& k, auto& v) {
         c.init = parse_choice<InitScheme>(
             k, v, {{"torch", InitScheme::torch_default}, {"normal", InitScheme::normal_fan_in}});
       }},
      {"noise",
       "Distillation inputs: uniform (U[-1,1]; the default) | gaussian (N(0,1)) | mnist (the real training "
       "images, reshuffled each epoch)",
       [](Config& c, auto& k, auto& v) {
         c.noise = parse_choice<NoiseKind>(k, v,
                                           {{"uniform", NoiseKind::uniform},
                                            {"gaussian", NoiseKind::gaussian},
                                            {"mnist", NoiseKind::mnist}});
       }},
      {"noise-set",
       "fresh (new noise every epoch, as the notebook; the default) | fixed (one set per model, as "
       "many images as the training set (--train-samples), reshuffled each epoch; paper); refused "
       "with --noise mnist, whose inputs are always the training set, reshuffled",
       [](Config& c, auto& k, auto& v) {
         c.noise_set = parse_choice<NoiseSet>(k, v, {{"fresh", NoiseSet::fresh}, {"fixed", NoiseSet::fixed}});
       }},
      {"weight-decay", "L2 weight decay in the students' Adam (default 0)",
       [](Config& c, auto& k, auto& v) { c.weight_decay = parse_number(k, v, false); }},
      {"init-perturb", "σ of Gaussian noise added to the same-init students' initial weights (default 0)",
       [](Config& c, auto& k, auto& v) { c.init_perturb = parse_number(k, v, false); }},
      {"cross-init", "Also distill a control student from a different init: true | false (default true)",
       [](Config& c, auto& k, auto& v) { c.cross_init = parse_bool(k, v); }},
      {"all-logit-arms",
       "Also distill students on all logits (the paper's extra arms): true | false (default false; paper "
       "true)",
       [](Config& c, auto& k, auto& v) { c.all_logit_arms = parse_bool(k, v); }},
      {"eval-every-epoch",
       "Evaluate after every epoch (else only at the end): true | false (default true; paper false)",
       [](Config& c, auto& k, auto& v) { c.eval_every_epoch = parse_bool(k, v); }},
      {"train-samples",
       "Use only the first N training images (default 0: all 60000) — for quick runs; a distillation epoch "
       "is then as many steps as a pass over them",
       [](Config& c, auto& k, auto& v) { c.train_samples = parse_int(k, v, 0, INT32_MAX); }},
      {"threads",
       "CPU threads for the GEMMs and the engine's loops between them (default 0: every core this process "
       "may run on, its CPU affinity)",
       [](Config& c, auto& k, auto& v) { c.threads = int(parse_int(k, v, 0, 1024)); }},
      {"fusion", "How the MLP sits on the autograd tape: whole (the default) | per_layer | none",
       [](Config& c, auto& k, auto& v) {
         c.fusion = parse_choice<MlpFusion>(
             k, v,
             {{"whole", MlpFusion::whole}, {"per_layer", MlpFusion::per_layer}, {"none", MlpFusion::none}});
       }},
      {"gemm",
       "GPU engine for the Linear layers: cublaslt (the default) | cudnn (its fused graphs run in TF32, "
       "whatever --tf32 says: docs/CUDNN.md) | tiled (our own fp32 kernels)",
       [](Config& c, auto& k, auto& v) {
         parse_choice<int>(k, v, {{"cublaslt", 0}, {"cudnn", 1}, {"tiled", 2}});
         c.gemm_engine = v;
       }},
      {"step",
       "How the GPU runs a training step: auto (the default: fused for small steps, the tape beside "
       "--gemm, --tf32, --autotune or --fusion) | autograd (the engine's tape, a kernel per op) | fused "
       "(forward, loss and gradients in one kernel; 1-2 hidden layers) | cluster (the same step by row "
       "blocks in thread-block clusters: two kernels; sm_90 and later)",
       [](Config& c, auto& k, auto& v) {
         parse_choice<int>(k, v, {{"auto", 0}, {"autograd", 1}, {"fused", 2}, {"cluster", 3}});
         c.step = v;
       }},
      {"fused-split",
       "How the GPU's fused step splits K: S,C,bands|last — at most S (1-16) slices of at least C (1-64) "
       "16-wide chunks, a split tile finished in bands by all of its items or by the last one (default "
       "8,2,bands); refused beside --step autograd or cluster, which do not split K",
       [](Config& c, auto& k, auto& v) { parse_fused_split(c, k, v); }},
      {"json", "Write the run's report (config, per-epoch metrics, accuracies, timings) to this JSON file",
       [](Config& c, auto& k, auto& v) { c.json_path = parse_path(k, v); }},
      {"save", "Save the final teacher and students to this safetensors file",
       [](Config& c, auto& k, auto& v) { c.save_path = parse_path(k, v); }},
      {"save-init", "Save the shared initial weights (PyTorch state_dict names) to this safetensors file",
       [](Config& c, auto& k, auto& v) { c.save_init_path = parse_path(k, v); }},
      {"load-init", "Start teacher and student from the weights in this safetensors file",
       [](Config& c, auto& k, auto& v) { c.load_init_path = parse_path(k, v); }},
      {"parity-batch",
       "Write one batch's losses and gradients from the init to this safetensors file and exit "
       "(bench/parity.py)",
       [](Config& c, auto& k, auto& v) { c.parity_batch_path = parse_path(k, v); }},
      {"sweep-out", "Path prefix for sweep results (PREFIX.csv, PREFIX.jsonl)",
       [](Config& c, auto& k, auto& v) { c.sweep_out = parse_prefix(k, v); }},
  };
  return flags;
}

// The placeholder --help shows for a flag's value.
const char* value_type(const std::string& key) {
  static const std::map<std::string, const char*> types = {{"data", "DIR"},
                                                           {"json", "FILE"},
                                                           {"save", "FILE"},
                                                           {"save-init", "FILE"},
                                                           {"load-init", "FILE"},
                                                           {"parity-batch", "FILE"},
                                                           {"sweep-out", "PREFIX"},
                                                           {"hidden", "W1,W2,..."},
                                                           {"lr", "X"},
                                                           {"temperature", "X"},
                                                           {"weight-decay", "X"},
                                                           {"init-perturb", "SIGMA"},
                                                           {"fused-split", "S,C,FIXUP"}};
  auto it = types.find(key);
  if (it != types.end()) return it->second;
  static const std::set<std::string> choices = {
      "device",         "divergence",       "init",   "noise", "noise-set", "cross-init",
      "all-logit-arms", "eval-every-epoch", "fusion", "gemm",  "step"};
  return choices.count(key) ? "CHOICE" : "N";
}

void apply_preset(Config& c, Preset p) {
  c.preset = p;
  if (p == Preset::paper) {  // ../shared/docs/REFERENCE.md §2: the authors' script
    c.models = 100;
    c.batch_size = 1024;
    c.init = InitScheme::normal_fan_in;
    c.noise_set = NoiseSet::fixed;
    c.all_logit_arms = true;
    c.cross_init = true;
    c.eval_every_epoch = false;  // Fig. 10b reports only final accuracies: no per-epoch evaluation
  }
}

}  // namespace

MlpShape Config::mlp_shape() const {
  MlpShape s;
  s.sizes.push_back(28 * 28);
  s.sizes.insert(s.sizes.end(), hidden.begin(), hidden.end());
  s.sizes.push_back(outputs());
  return s;
}

std::vector<std::string> split_text(const std::string& text, char separator) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    const size_t at = text.find(separator, start);
    parts.push_back(text.substr(start, at == std::string::npos ? std::string::npos : at - start));
    if (at == std::string::npos) return parts;
    start = at + 1;
  }
}

std::string Config::hidden_text() const {
  std::string text;
  for (const int64_t width : hidden) {
    if (!text.empty()) text += ',';
    text += std::to_string(width);
  }
  return text;
}

std::string Config::fused_split() const {
  return std::to_string(fused_max_splits) + "," + std::to_string(fused_min_chunks) + "," +
         (fused_band_fixup ? "bands" : "last");
}

void set_config_value(Config& config, const std::string& key, const std::string& value) {
  if (key == "preset") {
    apply_preset(
        config, parse_choice<Preset>(key, value, {{"notebook", Preset::notebook}, {"paper", Preset::paper}}));
    return;
  }
  for (const ValueFlag& f : value_flags())
    if (key == f.key) return f.set(config, key, value);
  throw UsageError("unknown setting \"" + key + "\"");
}

namespace {

// Whether two names reach the same file: "x", "./x", "d/../x", a symbolic link to x (dangling
// too: the writer creates its target) and a hard link to x all do.
bool same_file(const std::string& a, const std::string& b) {
  namespace fs = std::filesystem;
  std::error_code ec_a, ec_b;
  if (fs::exists(a, ec_a) && fs::exists(b, ec_b)) return fs::equivalent(a, b, ec_a);
  return resolved_path(a) == resolved_path(b);
}

// The files a run writes (a sweep also makes and removes its lock), {flag, path}; "" for those it does not.
std::vector<std::pair<std::string, std::string>> output_files(const Config& c) {
  return {{"--json", c.json_path},
          {"--save", c.save_path},
          {"--save-init", c.save_init_path},
          {"--parity-batch", c.parity_batch_path},
          {"--sweep-out (its .csv)", c.sweep_out.empty() ? "" : c.sweep_out + ".csv"},
          {"--sweep-out (its .jsonl)", c.sweep_out.empty() ? "" : c.sweep_out + ".jsonl"},
          // The sweep's lock is removed when the sweep ends: it must not be any other file.
          {"--sweep-out (its .lock)", c.sweep_out.empty() ? "" : c.sweep_out + ".lock"}};
}

}  // namespace

void validate(const Config& c) {
  // Model m trains from seed + m: past 2^64 - 1 that would wrap to seed 0, another run's model.
  if (c.models > 1 && c.seed > std::numeric_limits<uint64_t>::max() - uint64_t(c.models - 1))
    throw UsageError("--seed " + std::to_string(c.seed) + " and --models " + std::to_string(c.models) +
                     ": model m trains from seed + m, and the last would pass 2^64 - 1 (and wrap to seed 0); "
                     "give a smaller --seed");
  // Per-run output files: none of them when a sweep makes many runs; none beside --parity-batch,
  // which writes its file and exits.
  const std::vector<std::pair<const char*, const std::string*>> per_run = {
      {"--json", &c.json_path}, {"--save", &c.save_path}, {"--save-init", &c.save_init_path}};
  for (const auto& [flag, path] : per_run) {
    if (path->empty()) continue;
    if (!c.sweeps.empty())
      throw UsageError(std::string(flag) +
                       " writes one run's file; a --sweep writes its rows to --sweep-out");
    if (!c.parity_batch_path.empty())
      throw UsageError(std::string(flag) +
                       " and --parity-batch: --parity-batch writes one batch's gradients "
                       "and exits, before any training; drop one of them");
  }
  if (!c.parity_batch_path.empty() && !c.sweeps.empty())
    throw UsageError(
        "--sweep and --parity-batch: --parity-batch writes one batch's gradients and exits, before any "
        "training, so the sweep would not run; drop one of them");
  if (!c.sweep_out.empty() && c.sweeps.empty())
    throw UsageError("--sweep-out names where a --sweep writes its rows, and there is no --sweep");
  // Every file the run reads or writes is a different file: a run must not replace its own
  // input (--load-init) or one output with another.
  std::vector<std::pair<std::string, std::string>> files = {{"--load-init", c.load_init_path}};
  for (const auto& output : output_files(c)) files.push_back(output);
  for (const auto& [flag, path] : files) {  // a name that leads nowhere (a loop of links) is the flag's
    try {
      if (!path.empty()) resolved_path(path);
    } catch (const InputError& e) {
      throw UsageError(flag + " " + e.what());
    }
  }
  for (size_t i = 0; i < files.size(); ++i)
    for (size_t j = i + 1; j < files.size(); ++j)
      if (!files[i].second.empty() && !files[j].second.empty() && same_file(files[i].second, files[j].second))
        throw UsageError(
            files[i].first + " and " + files[j].first + " name the same file, " + path_text(files[i].second) +
            (i == 0 ? ": the run would replace its own input" : ": one would replace the other"));
  if (c.deterministic && c.gemm_engine == "cudnn")
    throw UsageError(
        "--deterministic and --gemm cudnn: cuDNN may pick engines whose reductions are not reproducible");
  if (c.deterministic && c.autotune)
    throw UsageError(
        "--deterministic and --autotune: autotuning picks GEMM algorithms by timing, so two runs "
        "may round differently; drop one of them");
  // --force lets a checkpoint replace an existing file; with none asked for it would do nothing —
  // and beside a sweep it reads as "start over", which it is not (a sweep resumes).
  if (c.force && c.save_path.empty() && c.save_init_path.empty() && c.parity_batch_path.empty())
    throw UsageError(
        std::string("--force lets --save, --save-init and --parity-batch replace existing files, "
                    "and none of them is given") +
        (c.sweeps.empty() ? " (--json always replaces its file)"
                          : "; a sweep resumes whatever --force says: to start it over, move its "
                            ".jsonl and .csv away"));
  // The fused and cluster steps are kernels for 2 or 3 layers; named for a deeper MLP, the run
  // would take the autograd tape without saying so.
  const int layers = int(c.hidden.size()) + 1;
  if ((c.step == "fused" || c.step == "cluster") &&
      (layers < kFusedStepMinLayers || layers > kFusedStepMaxLayers))
    throw UsageError("--step " + c.step + " and --hidden " + c.hidden_text() +
                     ": its kernels train MLPs of at most " + std::to_string(kFusedStepMaxLayers - 1) +
                     " hidden layers, and this one has " + std::to_string(layers - 1) +
                     "; use --step auto (which takes the autograd tape there) or autograd");
  if (c.gemm_engine == "cudnn" && !gemm::cudnn_compiled())
    throw UsageError(
        "--gemm cudnn: this build has no cuDNN engine (needs CUDA, cuDNN and the cudnn-frontend headers: "
        "scripts/get_cudnn_frontend.sh, then rebuild)");
}

void check_outputs_spare(const Config& c, const std::vector<std::filesystem::path>& inputs) {
  for (const auto& [flag, path] : output_files(c))
    for (const std::filesystem::path& input : inputs)
      if (!path.empty() && same_file(path, input.string()))
        throw UsageError(flag + " " + path_text(path) + ": is " + path_text(input.string()) +
                         ", a file the run reads; the run would replace its own data");
}

// How many single-character edits turn a into b (Levenshtein), for "did you mean".
size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);  // row[j]: distance from a[0..i) to b[0..j)
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];  // the previous row's row[j - 1]
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t substituted = diagonal + (a[i - 1] == b[j - 1] ? 0 : 1);
      diagonal = row[j];
      row[j] = std::min({substituted, row[j] + 1, row[j - 1] + 1});
    }
  }
  return row[b.size()];
}

// "; did you mean --seed?" when one of the app's flags is a typo away from `flag`: an edit for
// every three letters, at most two (so "--x" is not taken for "--lr").
std::string did_you_mean(const std::string& flag, const CLI::App& cli) {
  const size_t letters = flag.size() - std::min(flag.find_first_not_of('-'), flag.size());
  std::string best;
  size_t best_distance = std::min<size_t>(2, letters / 3) + 1;  // this far or more: another word
  for (const CLI::Option* option : cli.get_options()) {
    const std::string name = option->get_name();  // "--seed"
    const size_t distance = edit_distance(flag, name);
    if (distance < best_distance) best = name, best_distance = distance;
  }
  return best.empty() ? "" : "; did you mean " + best + "?";
}

// CLI11's parse errors in this tool's words: one line that names what was wrong and what to do
// ("--seed: given 2 times; give it once" rather than "At Most 1 required but received 2").
std::string command_line_error(const CLI::ParseError& error, const CLI::App& cli) {
  std::string what = error.what();
  if (auto nl = what.find('\n'); nl != std::string::npos) what.resize(nl);
  if (dynamic_cast<const CLI::ExtrasError*>(&error) != nullptr) {
    // "--models --seed 3": --models took "--seed" as its value, so "3" is left over; the mistake
    // is the value left out.
    for (const CLI::Option* option : cli.get_options())
      for (const std::string& value : option->results())
        if (option->get_items_expected_max() > 0 && value.size() > 2 && value.compare(0, 2, "--") == 0)
          return option->get_name() + ": needs a value (it took the flag " + subliminal::quoted(value) +
                 " for one)";
    const std::vector<std::string> extra = cli.remaining();          // in command-line order
    if (std::find(extra.begin(), extra.end(), "--") != extra.end())  // "the flags end here"
      return "unexpected \"--\": every setting is a flag, e.g. --seed 3, and nothing follows the flags";
    for (const std::string& arg : extra) {
      if (arg.size() > 1 && arg[0] == '-') {
        const std::string flag = arg.substr(0, arg.find('='));
        return "unknown flag " + subliminal::quoted(flag) + did_you_mean(flag, cli);
      }
    }
    if (!extra.empty())
      return "unexpected argument " + subliminal::quoted(extra.front()) +
             ": settings are flags, e.g. --seed 3";
  }
  if (dynamic_cast<const CLI::ArgumentMismatch*>(&error) != nullptr) {
    const std::string flag = what.substr(0, what.find(':'));  // CLI11 starts with the flag's name
    if (const size_t at = what.find("received ");
        what.find("At Most") != std::string::npos && at != std::string::npos)
      return flag + ": given " + what.substr(at + 9) + " times; give it once";
    if (what.find("missing") != std::string::npos) return flag + ": needs a value";
  }
  // A switch given a value (--tf32=maybe): "Could not convert: --tf32 = maybe".
  const std::string convert = "Could not convert: ";
  if (const size_t eq = what.find(" = ");
      what.compare(0, convert.size(), convert) == 0 && eq != std::string::npos)
    return what.substr(convert.size(), eq - convert.size()) + ": a switch, it takes no value (got " +
           subliminal::quoted(what.substr(eq + 3)) + ")";
  return what;
}

namespace {

// --parity-batch computes one batch's losses and gradients from the init and exits: the flags
// that shape training change nothing there, and one given would read as if it did (the KL and
// the JS are both written, at T = 2 whatever --temperature and --divergence say; --init beside
// --load-init, whose file gives the one model). Only flags given are refused: a preset's are fine.
void refuse_what_parity_batch_ignores(const Config& c, const CLI::App& cli, bool allow_nonfinite,
                                      bool no_graphs) {
  if (c.parity_batch_path.empty()) return;
  std::string unused;
  // (--step, --fused-split, --no-graphs too: the batch runs the autograd path, eagerly.)
  for (const char* key : {"models", "lr", "epochs-teacher", "epochs-distill", "temperature", "divergence",
                          "noise", "noise-set", "weight-decay", "init-perturb", "cross-init",
                          "all-logit-arms", "eval-every-epoch", "train-samples", "step", "fused-split"})
    if (cli.count(std::string("--") + key)) unused += std::string(unused.empty() ? "" : ", ") + "--" + key;
  for (const auto& [given, flag] : {std::pair{allow_nonfinite, "--allow-nonfinite"},
                                    {no_graphs, "--no-graphs"},
                                    {!c.load_init_path.empty() && cli.count("--init") > 0, "--init"}})
    if (given) unused += std::string(unused.empty() ? "" : ", ") + flag;
  if (!unused.empty())
    throw UsageError(
        "--parity-batch computes one batch from the init, one model, the KL and the JS at T = 2, and exits "
        "before any training, so " +
        unused + " would change nothing; drop them");
}

// Whether any value of a swept key, read as the run reads it, satisfies `test` (a value the key
// refuses counts as satisfying it: sweep_grid refuses it later, naming it).
bool any_swept_value(const std::string& sweep, const std::function<bool(const Config&)>& test) {
  const size_t eq = sweep.find('=');
  const std::string key = sweep.substr(0, eq), values = eq == std::string::npos ? "" : sweep.substr(eq + 1);
  for (const std::string& value : split_text(values, ',')) {
    Config probe;
    try {
      set_config_value(probe, key, value);
      if (test(probe)) return true;
    } catch (const UsageError&) {
      return true;
    }
  }
  return false;
}

// Flags given (or swept) that the rest of the command makes meaningless: the distillation's own
// settings where nothing is distilled (--epochs-distill 0, or every swept value 0: the students
// are evaluated at their inits), --noise-set beside --noise mnist (real images are always the
// training set, reshuffled), --fused-split beside a --step that does not split K, and --init
// beside --load-init where the run draws no control of its own (the file gives the shared init;
// --init names only the scheme of a control the run draws).
// Only flags given are refused, and a sweep's key only where the flag that voids it is not swept
// to other values (--sweep epochs-distill=0,5 --temperature 2 is a fair grid).
void refuse_flags_the_command_voids(const Config& c, const CLI::App& cli,
                                    const std::map<std::string, std::string>& given,
                                    const std::vector<std::string>& sweeps) {
  std::map<std::string, std::string> swept;  // key → the --sweep text
  for (const std::string& sweep : sweeps) swept[sweep.substr(0, sweep.find('='))] = sweep;
  const auto named = [&](const std::string& key) -> std::string {  // how the user set it, or ""
    if (cli.count("--" + key)) return "--" + key + " " + given.at(key);
    if (swept.count(key)) return "--sweep " + swept.at(key);
    return "";
  };
  // --fused-split is how the fused step's kernel splits K; the tape and the cluster step do not
  // (neither key is sweepable).
  if ((c.step == "autograd" || c.step == "cluster") && !named("fused-split").empty())
    throw UsageError(named("fused-split") + " and --step " + c.step +
                     ": only --step fused (or auto, where it takes the fused step) splits K that way");
  if (c.noise == NoiseKind::mnist && !swept.count("noise") && !named("noise-set").empty())
    throw UsageError(named("noise-set") +
                     " and --noise mnist: the students' inputs are then the training images, reshuffled each "
                     "epoch, whatever --noise-set says; drop it");
  const bool distills = swept.count("epochs-distill")
                            ? any_swept_value(swept.at("epochs-distill"),
                                              [](const Config& probe) { return probe.epochs_distill > 0; })
                            : c.epochs_distill > 0;
  if (!distills)
    for (const char* key :
         {"temperature", "divergence", "weight-decay", "noise", "noise-set", "all-logit-arms"})
      if (!named(key).empty())
        throw UsageError(
            named(key) + " and " +
            (swept.count("epochs-distill") ? named("epochs-distill") : "--epochs-distill 0") +
            ": no student is distilled (each is evaluated at its init), so it would change nothing; "
            "drop it");
  if (!c.load_init_path.empty() && c.parity_batch_path.empty() && !c.draws_its_own_control() &&
      !named("init").empty())
    throw UsageError(named("init") +
                     " and --load-init: the file gives the shared init, and this run draws no "
                     "control of its own (" +
                     std::string(c.cross_init ? "--preset paper pairs each cross-init student with another "
                                                "model's init"
                                              : "--cross-init false") +
                     "), so it would change nothing; drop it");
}

}  // namespace

CommandLine parse_command_line(int argc, const char* const* argv) {
  CLI::App cli{
      "subliminal — the 'subliminal learning' MNIST experiment on a from-scratch C++/CUDA engine.\n"
      "A teacher MLP with 10 class logits + M ghost logits learns MNIST; a student with the same init,\n"
      "distilled only on the teacher's ghost logits on pure noise, learns to classify digits too;\n"
      "a student from a different init does not.",
      "subliminal"};
  cli.set_help_flag();  // handled below, so --help works even next to bad flags
  bool help = false;
  cli.add_flag("-h,--help", help, "Print this help and exit");
  bool version = false;
  cli.add_flag(
      "--version", version,
      "Print the commit this build was made from and what it was built with (CUDA, cuDNN, OpenBLAS), and "
      "exit");

  std::string preset;
  cli.add_option("--preset", preset,
                 "notebook (the seed notebook's settings, default) | paper (Cloud et al. 2025, Fig. 10b); "
                 "other flags override it")
      ->type_name("NAME");
  std::map<std::string, std::string> given;
  for (const ValueFlag& f : value_flags())
    cli.add_option(std::string("--") + f.key, given[f.key], f.help)->type_name(value_type(f.key));
  std::vector<std::string> sweeps;
  cli.add_option(
         "--sweep", sweeps,
         "Run once per value (repeat the flag for a grid), e.g. --sweep lr=1e-4,3e-4; hidden's values hold "
         "commas, so ';' separates them: --sweep 'hidden=256,256;128'; needs --sweep-out")
      ->type_name("KEY=V1,V2,...");
  bool tf32 = false, autotune = false, deterministic = false, no_graphs = false, force = false,
       allow_nonfinite = false, no_progress = false;
  cli.add_flag("--tf32", tf32, "Allow TF32 tensor cores for float32 GEMMs (PyTorch's default is off)");
  cli.add_flag("--autotune", autotune,
               "Time cuBLASLt's candidate algorithms once per GEMM shape and keep the fastest");
  cli.add_flag("--deterministic", deterministic,
               "Bit-identical results for the same seed on the same machine and --threads (the default path "
               "already is; this refuses --autotune, whose timing-based choices are not, and --gemm cudnn, "
               "whose engines may reduce in varying order)");
  cli.add_flag("--no-graphs", no_graphs,
               "Launch GPU training steps kernel by kernel instead of replaying a CUDA graph");
  cli.add_flag("--force", force, "Overwrite existing checkpoint files (--save, --save-init, --parity-batch)");
  cli.add_flag("--allow-nonfinite", allow_nonfinite,
               "Keep training after a NaN/Inf loss or parameter (default: stop)");
  cli.add_flag("--no-progress", no_progress, "No progress bar on stderr");

  CommandLine out;
  try {
    cli.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (help) {
      out.help = true;
      out.help_text = cli.help();
      return out;
    }
    throw UsageError(command_line_error(e, cli) + " (run with --help for usage)");
  }
  if (help) {
    out.help = true;
    out.help_text = cli.help();
    return out;
  }
  if (version) {
    out.version = true;
    return out;
  }

  Config& c = out.config;
  if (cli.count("--preset")) set_config_value(c, "preset", preset);
  for (const ValueFlag& f : value_flags())
    if (cli.count(std::string("--") + f.key)) set_config_value(c, f.key, given[f.key]);
  c.sweeps = sweeps;
  // A swept key's flag would be overwritten in every configuration: refused, as it would have
  // changed nothing (the rows record the swept value, not the flag).
  for (const std::string& sweep : sweeps) {
    const std::string key = sweep.substr(0, sweep.find('='));
    if (!key.empty() && given.count(key) && cli.count("--" + key))
      throw UsageError("--" + key + " " + given[key] + " and --sweep " + sweep + ": the sweep sets --" + key +
                       " in every configuration, so the flag would change nothing; drop one");
  }
  refuse_flags_the_command_voids(c, cli, given, sweeps);
  c.tf32 = tf32;
  c.autotune = autotune;
  c.deterministic = deterministic;
  c.graphs = !no_graphs;
  c.force = force;
  c.allow_nonfinite = allow_nonfinite;
  c.progress = !no_progress;
  validate(c);
  refuse_what_parity_batch_ignores(c, cli, allow_nonfinite, no_graphs);
  return out;
}

const char* preset_name(Preset p) { return p == Preset::paper ? "paper" : "notebook"; }
const char* noise_name(NoiseKind n) {
  return n == NoiseKind::uniform ? "uniform" : n == NoiseKind::gaussian ? "gaussian" : "mnist";
}
const char* noise_set_name(NoiseSet n) { return n == NoiseSet::fresh ? "fresh" : "fixed"; }
const char* init_name(InitScheme s) { return s == InitScheme::torch_default ? "torch" : "normal"; }
const char* fusion_name(MlpFusion f) {
  return f == MlpFusion::whole ? "whole" : f == MlpFusion::per_layer ? "per_layer" : "none";
}

}  // namespace subliminal::app
