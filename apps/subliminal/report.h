// apps/subliminal/report.h — what a run prints (the notebook's lines, a summary table) and
// the JSON report it writes.
#pragma once

#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "apps/subliminal/config.h"
#include "apps/subliminal/experiment.h"
#include "apps/subliminal/progress.h"
#include "engine/device.h"

namespace subliminal::app {

// Mean, sample standard deviation and two 95% confidence half-widths over models:
//   ci95    1.96·std/√n, the paper's (a normal approximation: right for its 100 models);
//   ci95_t  t·std/√n with Student's t for n − 1 degrees of freedom: the right one for few
//           models (×6.5 wider at n = 2, ×2.2 at n = 3, ×1.15 at n = 10, ×1.01 at n = 100).
// With one model std and both half-widths are 0 (undefined; the console prints no interval).
struct Stats {
  double mean = 0, std = 0, ci95 = 0, ci95_t = 0;
  int64_t n = 0;
};
Stats summarize(const std::vector<double>& values);

// Student's t quantile for probability 0.975 and `degrees` ≥ 1 degrees of freedom.
double student_t_975(int64_t degrees);

// Prints the notebook's per-epoch lines to `out` and drives the progress bar.
class ConsoleObserver : public Observer {
 public:
  // divergence: the distillation loss the students' epoch lines name ("kl=" or "js=");
  // real_images: the students learn on MNIST images (--noise mnist), not on noise.
  ConsoleObserver(std::FILE* out, bool progress, Divergence divergence, bool real_images = false);
  void phase_begins(const std::string& phase, int64_t epochs, int64_t steps_per_epoch) override;
  void step_done() override;
  void teacher_epoch(const EpochMetrics& m, int64_t epochs) override;
  void arm_epoch(const ArmSpec& arm, const EpochMetrics& m, int64_t epochs) override;
  void phase_ends() override;
  void message(const std::string& line) override;

 private:
  std::FILE* out_;
  ProgressBar bar_;
  Divergence divergence_;
  bool real_images_;
};

// Wall-clock seconds measured around the experiment by main().
struct RunTimes {
  double load = 0, total = 0;
};

// "Teacher final test accuracy" (the notebook's last line, which it prints right after training
// the teacher; here it waits for the students), then the summary table and the timing line.
void print_summary(std::FILE* out, const Config& config, const Results& results, const RunTimes& times);

// Every setting that shapes a run's results (the report's "config"; no file names).
nlohmann::json config_json(const Config& config);

// A setting's JSON value (config_json) as the flag takes it: hidden's [256,256] as 256,256,
// "js" as js, 0.0001 as 0.0001.
std::string setting_text(const nlohmann::json& value);

// The settings of the experiment that differ from its preset's, as the flags that set them:
// "--lr 0.001 --weight-decay 0.0001", or "" for none.
std::string flags_off_preset(const Config& config);

// JSON text that cannot fail: a file name that is not UTF-8 (a path is bytes) has its bad bytes
// replaced by U+FFFD instead of throwing after a whole run.
std::string json_text(const nlohmann::json& j, int indent = -1);

// Where a run came from, for its report: the data (its folder, and the sizes and CRC-32 of what
// was read, as a sweep's rows name it: data::mnist_fingerprint), the command line and when it
// started (UTC, ISO 8601) — so that a report found later says how to make it again.
struct RunSource {
  std::string data_dir, data_fingerprint;
  std::vector<std::string> command;
  std::string started_utc;
};

// The JSON report (schema in README.md): config, device, data, command, per-epoch metrics,
// per-arm final accuracies with statistics, seconds per phase.
std::string report_json(const Config& config, const Results& results, const RunTimes& times, Device device,
                        const RunSource& source);

// Now, as "2026-12-07T18:30:05Z".
std::string utc_now();

// Where a run runs, for the console: the device's description and, on the CPU when --threads
// chose another count than the hardware's, the threads — "cpu (2 hardware threads) with 1 thread".
std::string where_it_runs(const std::string& description);

// Human label of an arm key for the summary table.
std::string arm_description(const std::string& key);

}  // namespace subliminal::app
