// apps/subliminal/report.cpp — console lines, the summary table and the JSON report.
#include "apps/subliminal/report.h"

#include <algorithm>
#include <cctype>  // isalnum: shell_word
#include <cmath>
#include <cstring>  // strchr: shell_word
#include <ctime>    // utc_now
#include <nlohmann/json.hpp>
#include <thread>  // hardware_concurrency: where_it_runs

#include "apps/subliminal/build_info.h"  // the "build" of every report
#include "engine/error.h"                // ShapeError
#include "engine/parallel.h"
#include "engine/safetensors.h"  // resolved_path
#include "ops/cpu/gemm_cpu.h"

namespace subliminal::app {
namespace {

double mean_of(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / double(v.size());
}

// "80.1234%" for one model; "80.12% ± 3.40 (95% CI, n=100)" for many; and for fewer than 30,
// where the paper's 1.96 understates the interval, Student's t's as well:
// "80.12% ± 3.40 (95% CI, n=3; Student's t: ± 7.45)".
std::string percent(const std::vector<double>& values, int decimals) {
  Stats s = summarize(values);
  char text[128];
  if (s.n <= 1)
    std::snprintf(text, sizeof text, "%.*f%%", decimals, 100 * s.mean);
  else if (s.n < 30)
    std::snprintf(text, sizeof text, "%.2f%% ± %.2f (95%% CI, n=%lld; Student's t: ± %.2f)", 100 * s.mean,
                  100 * s.ci95, (long long)s.n, 100 * s.ci95_t);
  else
    std::snprintf(text, sizeof text, "%.2f%% ± %.2f (95%% CI, n=%lld)", 100 * s.mean, 100 * s.ci95,
                  (long long)s.n);
  return text;
}

nlohmann::json stats_json(const std::vector<double>& values) {
  Stats s = summarize(values);
  return {{"test_acc", s.mean}, {"std", s.std}, {"ci95", s.ci95},
          {"ci95_t", s.ci95_t}, {"n", s.n},     {"per_model", values}};
}

nlohmann::json epochs_json(const std::vector<EpochMetrics>& epochs, const char* loss_key) {
  nlohmann::json out = nlohmann::json::array();
  for (const EpochMetrics& m : epochs) {
    nlohmann::json e = {
        {"epoch", m.epoch}, {loss_key, mean_of(m.loss)}, {std::string(loss_key) + "_per_model", m.loss}};
    if (!m.test_acc.empty()) {
      e["test_acc"] = mean_of(m.test_acc);
      e["test_acc_per_model"] = m.test_acc;
    }
    out.push_back(e);
  }
  return out;
}

}  // namespace

double student_t_975(int64_t degrees) {
  // Up to 30 degrees of freedom, the quantile to 6 decimals (computed with mpmath's regularised
  // incomplete beta function); beyond, the Cornish–Fisher expansion around the normal quantile
  // z, whose error there is below 3e-8.
  static constexpr double kTable[30] = {
      12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157, 2.228139,
      2.200985,  2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922, 2.093024, 2.085963,
      2.079614,  2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272};
  if (degrees < 1) throw ShapeError("student_t_975: needs at least 1 degree of freedom");
  if (degrees <= 30) return kTable[degrees - 1];
  const double z = 1.959963984540054, v = double(degrees);
  const double z3 = z * z * z, z5 = z3 * z * z, z7 = z5 * z * z, z9 = z7 * z * z;
  const double g1 = (z3 + z) / 4, g2 = (5 * z5 + 16 * z3 + 3 * z) / 96,
               g3 = (3 * z7 + 19 * z5 + 17 * z3 - 15 * z) / 384,
               g4 = (79 * z9 + 776 * z7 + 1482 * z5 - 1920 * z3 - 945 * z) / 92160;
  return z + g1 / v + g2 / (v * v) + g3 / (v * v * v) + g4 / (v * v * v * v);
}

Stats summarize(const std::vector<double>& values) {
  Stats s;
  s.n = int64_t(values.size());
  s.mean = mean_of(values);
  if (s.n > 1) {
    double ss = 0;
    for (double x : values) ss += (x - s.mean) * (x - s.mean);
    s.std = std::sqrt(ss / double(s.n - 1));
    s.ci95 = 1.96 * s.std / std::sqrt(double(s.n));
    s.ci95_t = student_t_975(s.n - 1) * s.std / std::sqrt(double(s.n));
  }
  return s;
}

std::string arm_description(const std::string& key) {
  if (key == "reference") return "reference (untrained init)";
  if (key == "teacher") return "teacher";
  if (key == "student") return "student (same init, ghost logits)";
  if (key == "cross_init") return "cross-init control (ghost logits)";
  if (key == "student_all_logits") return "student (same init, all logits)";
  if (key == "cross_init_all_logits") return "cross-init (all logits)";
  return key;
}

ConsoleObserver::ConsoleObserver(std::FILE* out, bool progress, Divergence divergence, bool real_images)
    : out_(out), bar_(progress), divergence_(divergence), real_images_(real_images) {}

void ConsoleObserver::phase_begins(const std::string& phase, int64_t epochs, int64_t steps_per_epoch) {
  bar_.clear();
  if (phase == "Teacher")
    std::fprintf(out_, "Training teacher...\n");
  else
    std::fprintf(out_, "%s students on %s...\n",
                 phase == "Distill" ? "Distilling" : "Distilling (all logits)",
                 real_images_ ? "MNIST images" : "noise");
  std::fflush(out_);
  bar_.begin(phase, epochs * steps_per_epoch);
}

void ConsoleObserver::step_done() { bar_.advance(); }

void ConsoleObserver::teacher_epoch(const EpochMetrics& m, int64_t epochs) {
  bar_.clear();
  std::fprintf(out_, "[Teacher] epoch=%lld loss=%.4f", (long long)m.epoch, mean_of(m.loss));
  if (!m.test_acc.empty()) std::fprintf(out_, " test_acc=%s", percent(m.test_acc, 4).c_str());
  std::fprintf(out_, "\n");
  std::fflush(out_);
}

void ConsoleObserver::arm_epoch(const ArmSpec& arm, const EpochMetrics& m, int64_t epochs) {
  bar_.clear();
  // KL with the notebook's four decimals, as its readers know the line; the JS, which the
  // notebook never prints and which is about a quarter of the KL (1e-4 and below here), with
  // significant digits, since four decimals would show it as 0.0000.
  std::fprintf(out_, divergence_ == Divergence::kl ? "[%s] epoch=%lld %s=%.4f" : "[%s] epoch=%lld %s=%.3e",
               arm.label.c_str(), (long long)m.epoch, divergence_name(divergence_), mean_of(m.loss));
  if (!m.test_acc.empty()) std::fprintf(out_, " test_acc=%s", percent(m.test_acc, 4).c_str());
  std::fprintf(out_, "\n");
  std::fflush(out_);
}

void ConsoleObserver::phase_ends() { bar_.clear(); }

void ConsoleObserver::message(const std::string& line) {
  bar_.clear();
  std::fprintf(stderr, "subliminal: %s\n", line.c_str());
}

std::string where_it_runs(const std::string& description) {
  const int threads = cpu_threads(), hardware = int(std::max(1u, std::thread::hardware_concurrency()));
  if (description != device_description(Device::cpu) || threads == hardware) return description;
  return description + " with " + std::to_string(threads) + (threads == 1 ? " thread" : " threads");
}

void print_summary(std::FILE* out, const Config& config, const Results& results, const RunTimes& times) {
  for (const auto& [key, acc] : results.final_acc)
    if (key == "teacher") std::fprintf(out, "Teacher final test accuracy: %s\n", percent(acc, 4).c_str());
  std::fprintf(out, "\nSummary (%s preset, seed %llu, %lld model%s, %s):\n", preset_name(config.preset),
               (unsigned long long)config.seed, (long long)config.models, config.models == 1 ? "" : "s",
               where_it_runs(results.device).c_str());
  // What was run, beyond the header, so that a console copied into notes says it.
  const std::string flags = flags_off_preset(config);
  if (!flags.empty()) std::fprintf(out, "  with %s\n", flags.c_str());
  std::fprintf(out, "  %-36s %s\n", "arm", "test accuracy");
  for (const auto& [key, acc] : results.final_acc)
    std::fprintf(out, "  %-36s %s\n", arm_description(key).c_str(), percent(acc, 2).c_str());
  double distill = 0;
  for (const auto& [phase, t] : results.timing)
    if (phase != "teacher") distill += t.wall_seconds;
  auto teacher = results.timing.find("teacher");
  std::fprintf(out,
               "Time: %.1f s total (data %.1f s, teacher %.1f s, distillation %.1f s, evaluation %.1f s)\n",
               times.total, times.load, teacher == results.timing.end() ? 0.0 : teacher->second.wall_seconds,
               distill, results.eval_seconds);
  if (!results.notes.empty()) std::fprintf(out, "Notes:\n%s", results.notes.c_str());
}

std::string setting_text(const nlohmann::json& value) {
  if (value.is_string()) return value.get<std::string>();
  if (!value.is_array()) return value.dump();
  std::string text;
  for (const nlohmann::json& v : value) {
    if (!text.empty()) text += ',';
    text += setting_text(v);
  }
  return text;
}

namespace {

// A word as a POSIX shell reads it back: as it is when it holds only characters no shell treats
// specially, else in single quotes (a quote inside as '\'').
std::string shell_word(const std::string& word) {
  const bool plain = !word.empty() && std::all_of(word.begin(), word.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || std::strchr("_./,:=@%+-", c) != nullptr;
  });
  if (plain) return word;
  std::string text = "'";
  for (const char c : word) text += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return text + "'";
}

}  // namespace

std::string flags_off_preset(const Config& config) {
  // The init file is named apart (below): config_json resolves its path, which can fail (a link
  // loop made since the run began), and the summary must not.
  Config settings = config;
  settings.load_init_path.clear();
  Config preset;
  set_config_value(preset, "preset", preset_name(config.preset));
  const nlohmann::json ran = config_json(settings), preset_settings = config_json(preset);
  // The settings that change what the experiment computes, in --help's order (the header names
  // the preset, seed and models; --gemm, --step, --fusion and --threads change how it is
  // computed, not what). --noise mnist implies the fixed set (the report's noise_set): not named.
  const char* experiment_keys[] = {"ghosts",         "hidden",         "batch_size",     "lr",
                                   "epochs_teacher", "epochs_distill", "temperature",    "divergence",
                                   "init",           "noise",          "noise_set",      "weight_decay",
                                   "init_perturb",   "cross_init",     "all_logit_arms", "train_samples"};
  std::vector<std::string> flags;
  for (std::string key : experiment_keys) {
    if (ran[key] == preset_settings[key] || (key == "noise_set" && config.noise == NoiseKind::mnist))
      continue;
    const std::string value = setting_text(ran[key]);
    std::replace(key.begin(), key.end(), '_', '-');  // the report's name → the flag's
    flags.push_back("--" + key + " " + value);
  }
  if (!config.load_init_path.empty()) {
    // The file the run read, from any folder: its absolute path where it can still be found.
    std::string path = config.load_init_path;
    try {
      path = resolved_path(path).string();
    } catch (const std::exception&) {  // as given, then
    }
    flags.push_back("--load-init " + shell_word(path));
  }
  std::string text;
  for (const std::string& flag : flags) {
    if (!text.empty()) text += ' ';
    text += flag;
  }
  return text;
}

std::string json_text(const nlohmann::json& j, int indent) {
  return j.dump(indent, ' ', false, nlohmann::json::error_handler_t::replace);
}

nlohmann::json config_json(const Config& c) {
  return {{"preset", preset_name(c.preset)},
          {"seed", c.seed},
          {"models", c.models},
          {"ghosts", c.ghosts},
          {"hidden", c.hidden},
          {"batch_size", c.batch_size},
          {"lr", c.lr},
          {"epochs_teacher", c.epochs_teacher},
          {"epochs_distill", c.epochs_distill},
          {"temperature", c.temperature},
          {"divergence", divergence_name(c.divergence)},
          {"init", init_name(c.init)},
          {"noise", noise_name(c.noise)},
          {"noise_set",
           c.noise == NoiseKind::mnist ? "fixed" : noise_set_name(c.noise_set)},  // MNIST is a fixed set
          {"weight_decay", c.weight_decay},
          {"init_perturb", c.init_perturb},
          {"train_samples", c.train_samples},
          {"cross_init", c.cross_init},
          {"all_logit_arms", c.all_logit_arms},
          {"tf32", c.tf32},
          // cuDNN's fused fp32 graphs exist only as TF32 (docs/CUDNN.md): its GEMMs use TF32
          {"cudnn_tf32", c.gemm_engine == "cudnn"},
          {"autotune", c.autotune},
          {"deterministic", c.deterministic},
          {"cuda_graphs", c.graphs},
          {"fusion", fusion_name(c.fusion)},
          {"gemm", c.gemm_engine},
          {"step", c.step},
          {"fused_split", c.fused_split()},
          {"eval_every_epoch", c.eval_every_epoch},
          // The file, not its spelling: ./init.st and ../run/init.st from another folder are one init.
          {"load_init", c.load_init_path.empty() ? "" : resolved_path(c.load_init_path).string()}};
}

std::string utc_now() {
  const std::time_t now = std::time(nullptr);
  std::tm utc{};
  gmtime_r(&now, &utc);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &utc);
  return text;
}

std::string report_json(const Config& c, const Results& results, const RunTimes& times, Device device,
                        const RunSource& source) {
  nlohmann::json j;
  j["config"] = config_json(c);
  j["device"] = {{"kind", device_name(device)}, {"name", results.device}};
  if (device == Device::cpu) {
    j["device"]["blas_threads"] = cpu::blas_threads();
    // the engine's pool, which runs the GEMMs' slabs and the loops between them (engine/parallel.h)
    j["device"]["cpu_threads"] = cpu_threads();
    j["device"]["blas_core"] = cpu::blas_core();
  }
  j["data"] = {{"dir", source.data_dir}, {"fingerprint", source.data_fingerprint}};
  j["command"] = source.command;
  j["started"] = source.started_utc;
  j["build"] = build_info_json(build_info());

  j["epochs"]["teacher"] = epochs_json(results.teacher_epochs, "loss");
  for (const auto& [key, epochs] : results.arm_epochs)
    j["epochs"][key] = epochs_json(epochs, divergence_name(c.divergence));  // "kl" or "js"
  for (const auto& [key, acc] : results.final_acc) j[key] = stats_json(acc);

  nlohmann::json seconds = {{"load", times.load}, {"eval", results.eval_seconds}, {"total", times.total}};
  nlohmann::json gpu_seconds = nlohmann::json::object(), steps = nlohmann::json::object(),
                 us_per_step = nlohmann::json::object(), us_per_step_steady = nlohmann::json::object(),
                 steps_steady = nlohmann::json::object(), kernels = nlohmann::json::object(),
                 memory_nodes = nlohmann::json::object(), step_kind = nlohmann::json::object();
  double gpu_training = 0;
  for (const auto& [phase, t] : results.timing) {
    seconds[phase] = t.wall_seconds;
    steps[phase] = t.steps;
    if (t.steps)
      us_per_step[phase] = 1e6 * (device == Device::cuda ? t.gpu_seconds : t.wall_seconds) / double(t.steps);
    if (t.steady_steps) {  // a phase of one epoch has none
      us_per_step_steady[phase] = 1e6 * t.steady_seconds / double(t.steady_steps);
      steps_steady[phase] = t.steady_steps;
    }
    if (device == Device::cuda) {
      gpu_seconds[phase] = t.gpu_seconds;
      gpu_training += t.gpu_seconds;
      kernels[phase] = t.graph_kernels;
      memory_nodes[phase] = t.graph_memory_nodes;
      step_kind[phase] = t.fused ? (c.step == "cluster" ? "cluster" : "fused") : "autograd";
    }
  }
  j["seconds"] = seconds;
  j["steps"] = steps;
  j["us_per_step"] = us_per_step;
  j["us_per_step_steady"] = us_per_step_steady;
  j["steps_steady"] = steps_steady;
  if (device == Device::cuda) {
    gpu_seconds["training"] = gpu_training;
    j["gpu_seconds"] = gpu_seconds;
    j["graph_kernels_per_step"] = kernels;
    j["graph_memory_nodes_per_step"] = memory_nodes;
    j["step_kind"] = step_kind;
  }
  if (!results.notes.empty()) j["notes"] = results.notes;
  if (!results.gemm_tuning.empty()) j["gemm_autotune"] = results.gemm_tuning;
  return json_text(j, 2) + "\n";
}

}  // namespace subliminal::app
