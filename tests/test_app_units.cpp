// tests/test_app_units.cpp — the app's pieces called directly: presets and flag overrides, the
// cross-init derangement, the confidence-interval arithmetic, the sweep grid, a training loop
// that stops allocating, the report's fields; runs on a made-up MNIST whose losses, accuracies,
// checkpoints and sweep rows are checked against the same numbers computed here from the inits;
// and a small paper-mode run whose arms must come out in the paper's order.
#include <fcntl.h>  // posix_openpt: a pseudo-terminal for the progress bar
#include <gtest/gtest.h>
#include <poll.h>      // poll
#include <sys/file.h>  // flock: a running sweep's lock, held
#include <sys/stat.h>  // mkfifo
#include <unistd.h>    // read

#include <algorithm>          // std::max_element
#include <atomic>             // std::atomic: a file replaced from another thread
#include <chrono>             // std::chrono::steady_clock
#include <cmath>              // std::sqrt, std::lgamma, M_PI
#include <cstdio>             // std::fopen, std::fputs, std::tmpfile
#include <cstdlib>            // std::getenv
#include <cstring>            // std::strlen
#include <iostream>           // std::cout
#include <map>                // std::map
#include <nlohmann/json.hpp>  // nlohmann::json: the report and the sweep's rows
#include <random>             // std::mt19937: a made-up MNIST
#include <set>                // std::set
#include <sstream>            // std::istringstream
#include <string>             // std::string
#include <thread>             // std::thread, std::this_thread::sleep_for
#include <utility>            // std::pair
#include <vector>             // std::vector

#include "apps/subliminal/build_info.h"  // kBuildCommit
#include "apps/subliminal/checkpoint.h"  // save_init, load_init
#include "apps/subliminal/config.h"      // parse_command_line, Config
#include "apps/subliminal/experiment.h"  // run_experiment, cross_init_partner, apply_gemm_settings
#include "apps/subliminal/parity.h"      // write_parity_batch
#include "apps/subliminal/progress.h"    // ProgressBar
#include "apps/subliminal/report.h"      // summarize, json_text, report_json
#include "apps/subliminal/streams.h"     // kNoisePurpose
#include "apps/subliminal/sweep.h"       // sweep_grid, config_id, run_sweep, check_sweep_lock
#include "data/mnist.h"                  // locate_mnist, load_mnist
#include "engine/adam.h"                 // Adam
#include "engine/autograd.h"             // zero_grad
#include "engine/device.h"               // device_description
#include "engine/kernels.h"              // add_into
#include "engine/nn.h"                   // MlpParams, init_mlp
#include "engine/parallel.h"             // set_cpu_threads, cpu_threads
#include "engine/random.h"               // stream_id, random_permutation, fill_normal
#include "engine/safetensors.h"          // read_safetensors
#include "engine/storage.h"              // cpu_allocator_stats
#include "ops/batch.h"                   // gather_batch, noise_batch
#include "ops/elementwise.h"             // scale
#include "ops/fused_step.h"              // fused_step_design
#include "ops/loss.h"                    // cross_entropy, distill_kl
#include "ops/mlp.h"                     // mlp_forward
#include "tests/test_util.h"             // TempDir, read_text, write_text

namespace {

using namespace subliminal;
using namespace subliminal::app;

Config parse(std::vector<const char*> args) {
  args.insert(args.begin(), "subliminal");
  return parse_command_line(int(args.size()), args.data()).config;
}

// --preset paper sets REFERENCE.md §2's values; any explicit flag wins over the preset,
// whichever side of it on the command line.
TEST(Presets, PaperSetsThePaperScriptsValuesAndFlagsOverrideThem) {
  const Config notebook = parse({});
  EXPECT_EQ(notebook.preset, Preset::notebook);
  EXPECT_EQ(notebook.models, 1);
  EXPECT_EQ(notebook.batch_size, 256);
  EXPECT_EQ(notebook.init, InitScheme::torch_default);
  EXPECT_EQ(notebook.noise_set, NoiseSet::fresh);
  EXPECT_FALSE(notebook.all_logit_arms);
  EXPECT_TRUE(notebook.eval_every_epoch);

  const Config paper = parse({"--preset", "paper"});
  EXPECT_EQ(paper.models, 100);
  EXPECT_EQ(paper.batch_size, 1024);
  EXPECT_EQ(paper.init, InitScheme::normal_fan_in);
  EXPECT_EQ(paper.noise_set, NoiseSet::fixed);
  EXPECT_TRUE(paper.all_logit_arms);
  EXPECT_TRUE(paper.cross_init);
  EXPECT_FALSE(paper.eval_every_epoch);  // the authors' script evaluates once, at the end
  EXPECT_DOUBLE_EQ(paper.lr, 3e-4);
  EXPECT_EQ(paper.epochs_teacher, 5);
  EXPECT_EQ(paper.epochs_distill, 5);
  EXPECT_EQ(paper.ghosts, 3);

  const Config overridden = parse({"--models", "10", "--preset", "paper", "--batch-size", "512"});
  EXPECT_EQ(overridden.models, 10);
  EXPECT_EQ(overridden.batch_size, 512);
  EXPECT_EQ(overridden.init, InitScheme::normal_fan_in);
}

// parse() of flags written as one line, split at spaces.
Config parse_words(const std::string& line) {
  std::istringstream in(line);
  std::vector<std::string> words;
  for (std::string word; in >> word;) words.push_back(word);
  std::vector<const char*> args;
  for (const std::string& word : words) args.push_back(word.c_str());
  return parse(args);
}

// Numbers are read as written, in any decimal form; the refusals are in test_cli.cpp.
TEST(Numbers, DecimalFormsAreRead) {
  EXPECT_EQ(parse({"--lr", "3e-4"}).lr, 3e-4);
  EXPECT_EQ(parse({"--lr", "+3E-4"}).lr, 3e-4);
  EXPECT_EQ(parse({"--lr", ".0003"}).lr, 3e-4);
  EXPECT_EQ(parse({"--temperature", "2."}).temperature, 2.0);
  EXPECT_EQ(parse({"--weight-decay", "0"}).weight_decay, 0.0);
  EXPECT_EQ(parse({"--weight-decay", "-0"}).weight_decay, 0.0);
  EXPECT_EQ(parse({"--temperature", "3.4e38"}).temperature, 3.4e38);
}

// On a terminal the bar is drawn, and a bar still on screen when it goes away (an error ended
// the run mid-epoch) is erased, so the error message starts its own line; one already cleared
// is not erased twice. Drawn on a pseudo-terminal, read back from its other side.
TEST(Progress, ABarLeftOnScreenIsErasedWhenItGoesAway) {
  const int terminal = posix_openpt(O_RDWR | O_NOCTTY | O_NONBLOCK);
  if (terminal < 0 || grantpt(terminal) != 0 || unlockpt(terminal) != 0)
    GTEST_SKIP() << "no pseudo-terminal here (posix_openpt)";
  std::FILE* screen = std::fopen(ptsname(terminal), "w");
  ASSERT_NE(screen, nullptr);
  // What reached the screen since the last call, read until it ends with `ending` (the terminal
  // passes each write on by itself, so one read may see only the first) or 2 s have passed.
  auto drawn = [&](const std::string& ending) {
    std::string text;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    while (!(text.size() >= ending.size() &&
             text.compare(text.size() - ending.size(), ending.size(), ending) == 0) &&
           std::chrono::steady_clock::now() < deadline) {
      pollfd ready{terminal, POLLIN, 0};
      if (poll(&ready, 1, 50) <= 0) continue;
      char chunk[4096];
      const ssize_t n = read(terminal, chunk, sizeof chunk);
      if (n > 0) text.append(chunk, size_t(n));
    }
    return text;
  };
  {
    ProgressBar bar(true, screen);
    ASSERT_TRUE(bar.active());
    bar.begin("Teacher", 3);
    bar.advance();
  }  // gone mid-epoch
  const std::string erase = "\r\033[K";
  std::string text = drawn(erase);
  EXPECT_NE(text.find("[Teacher]"), std::string::npos) << text;
  ASSERT_GE(text.size(), erase.size()) << text;
  EXPECT_EQ(text.substr(text.size() - erase.size()), erase) << text;
  {
    ProgressBar bar(true, screen);
    bar.begin("Student", 1);
    bar.clear();
    std::fputs("done\n", screen);
    std::fflush(screen);
  }
  text = drawn("done\r\n");  // the terminal adds the \r
  ASSERT_GE(text.size(), std::strlen("done\r\n")) << text;
  EXPECT_EQ(text.substr(text.size() - std::strlen("done\r\n")), "done\r\n") << text;
  std::fclose(screen);
  close(terminal);
}

// The bar's times: elapsed, and while steps remain, what is left at the pace so far (none
// before the first step, whose pace is unknown, nor after the last).
TEST(Progress, TheBarSaysWhatIsLeftAtThePaceSoFar) {
  EXPECT_EQ(progress_times(3.1, 712, 1175), "3.1 s, ~2.0 s left");  // 3.1 / 712 · 463
  EXPECT_EQ(progress_times(1.0, 1, 3), "1.0 s, ~2.0 s left");
  EXPECT_EQ(progress_times(0.0, 0, 1175), "0.0 s");
  EXPECT_EQ(progress_times(4.71, 1175, 1175), "4.7 s");
}

// --fused-split reaches the config (and the report's form of it); the default is the step's.
TEST(FusedSplit, FlagSetsThePolicyAndPrintsBack) {
  const Config defaults = parse({});
  EXPECT_EQ(defaults.fused_split(), "8,2,bands");
  const Config c = parse({"--fused-split", "4,1,last"});
  EXPECT_EQ(c.fused_max_splits, 4);
  EXPECT_EQ(c.fused_min_chunks, 1);
  EXPECT_FALSE(c.fused_band_fixup);
  EXPECT_EQ(c.fused_split(), "4,1,last");
  EXPECT_EQ(parse({"--fused-split", "16,64,bands"}).fused_split(), "16,64,bands");
}

// --step cluster chooses the cluster design of the GPU's fused step; any other step the grid's.
TEST(StepDesign, ClusterFlagChoosesTheClusterKernels) {
  apply_gemm_settings(parse({"--step", "cluster"}));
  EXPECT_EQ(fused_step_design(), FusedStepDesign::cluster);
  for (const char* step : {"fused", "auto", "autograd"}) {
    apply_gemm_settings(parse({"--step", "cluster"}));
    apply_gemm_settings(parse({"--step", step}));
    EXPECT_EQ(fused_step_design(), FusedStepDesign::grid) << "--step " << step;
  }
}

// The paper's arms: six, in its order; the notebook's: student and control.
TEST(Presets, ArmsOfEachPreset) {
  std::vector<std::string> keys;
  for (const ArmSpec& a : student_arms(parse({"--preset", "paper"}))) keys.push_back(a.key);
  EXPECT_EQ(keys, (std::vector<std::string>{"student", "cross_init", "student_all_logits",
                                            "cross_init_all_logits"}));
  keys.clear();
  for (const ArmSpec& a : student_arms(parse({}))) keys.push_back(a.key);
  EXPECT_EQ(keys, (std::vector<std::string>{"student", "cross_init"}));
}

// The cross-model pairing is a derangement for every N ≥ 2: a permutation with no fixed point.
TEST(CrossInit, PartnerIsADerangementForEveryModelCount) {
  for (int64_t n = 2; n <= 257; ++n) {
    std::set<int64_t> partners;
    for (int64_t m = 0; m < n; ++m) {
      const int64_t p = cross_init_partner(m, n);
      ASSERT_NE(p, m) << "model " << m << " of " << n << " paired with itself";
      ASSERT_GE(p, 0);
      ASSERT_LT(p, n);
      partners.insert(p);
    }
    EXPECT_EQ(int64_t(partners.size()), n) << "not a permutation for N = " << n;
  }
}

// mean, sample std, the paper's 95% CI = 1.96·std/√n and Student's t's, computed by hand for a
// few values (t quantiles from tables: 12.7062 for 1 degree of freedom, 3.1824 for 3).
TEST(Statistics, MeanStdAndConfidenceInterval) {
  const Stats two = summarize({0.5, 0.7});
  EXPECT_DOUBLE_EQ(two.mean, 0.6);
  EXPECT_NEAR(two.std, std::sqrt(0.02), 1e-15);
  EXPECT_NEAR(two.ci95, 1.96 * std::sqrt(0.02) / std::sqrt(2.0), 1e-15);
  EXPECT_NEAR(two.ci95_t, 12.7062 * std::sqrt(0.02) / std::sqrt(2.0), 1e-5);
  EXPECT_EQ(two.n, 2);
  const Stats four = summarize({0.1, 0.2, 0.3, 0.4});
  const double var = (0.0225 + 0.0025 + 0.0025 + 0.0225) / 3;
  EXPECT_NEAR(four.mean, 0.25, 1e-15);
  EXPECT_NEAR(four.std, std::sqrt(var), 1e-15);
  EXPECT_NEAR(four.ci95, 1.96 * std::sqrt(var) / 2, 1e-15);
  EXPECT_NEAR(four.ci95_t, 3.1824 * std::sqrt(var) / 2, 1e-5);
  const Stats one = summarize({0.42});
  EXPECT_DOUBLE_EQ(one.mean, 0.42);
  EXPECT_EQ(one.std, 0);
  EXPECT_EQ(one.ci95, 0);
  EXPECT_EQ(one.ci95_t, 0);
}

// Student's t quantile: the table to 30 degrees of freedom, the expansion beyond (values from
// mpmath's incomplete beta function), falling towards the normal quantile 1.959964.
TEST(Statistics, StudentTQuantile) {
  EXPECT_NEAR(student_t_975(1), 12.706205, 1e-6);
  EXPECT_NEAR(student_t_975(9), 2.262157, 1e-6);
  EXPECT_NEAR(student_t_975(30), 2.042272, 1e-6);
  EXPECT_NEAR(student_t_975(31), 2.039513, 1e-6);
  EXPECT_NEAR(student_t_975(60), 2.000298, 1e-6);
  EXPECT_NEAR(student_t_975(99), 1.984217, 1e-6);
  EXPECT_NEAR(student_t_975(100000), 1.959988, 1e-6);
  for (int64_t d = 1; d < 200; ++d) EXPECT_GT(student_t_975(d), student_t_975(d + 1)) << d;
  EXPECT_THROW(student_t_975(0), ShapeError);
}

// Every quantile, the table's 30 and the expansion's beyond, against the t distribution itself:
// its CDF (Simpson's rule on the density, in float64) at the quantile is 0.975, to within 1e-6 of
// the quantile. A digit mistyped in the table is off by far more.
TEST(Statistics, StudentTQuantileIsWhereTheCdfReaches0975) {
  for (int64_t d = 1; d <= 200; ++d) {
    const double v = double(d), t = student_t_975(d);
    const double norm = std::exp(std::lgamma((v + 1) / 2) - std::lgamma(v / 2)) / std::sqrt(v * M_PI);
    auto density = [&](double x) { return norm * std::pow(1 + x * x / v, -(v + 1) / 2); };
    const int steps = 20000;  // even
    const double h = t / steps;
    double sum = density(0) + density(t);
    for (int i = 1; i < steps; ++i) sum += (i % 2 ? 4 : 2) * density(i * h);
    EXPECT_NEAR(0.5 + sum * h / 3, 0.975, 1e-6 * density(t)) << d << " degrees of freedom: " << t;
  }
}

// Several --sweep keys form a grid; each configuration has a stable id; bad text is refused up front.
TEST(Sweep, KeysFormAGridWithStableIdsAndBadValuesAreRefused) {
  Config base = parse({});
  base.sweeps = {"lr=1e-3,3e-4", "temperature=1,2,4"};
  const auto grid = sweep_grid(base);
  ASSERT_EQ(grid.size(), 6u);
  EXPECT_EQ(config_id(grid.front()), "lr=1e-3;temperature=1");
  EXPECT_EQ(config_id(grid.back()), "lr=3e-4;temperature=4");
  std::set<std::string> ids;
  for (const auto& settings : grid) ids.insert(config_id(settings));
  EXPECT_EQ(ids.size(), 6u);

  base.sweeps = {"hidden=256,256;128"};  // hidden sizes contain commas: ';' separates values
  EXPECT_EQ(sweep_grid(base).size(), 2u);
  for (const char* bad : {"lr", "lr=", "lr=0.1,abc", "colour=red", "=1"}) {
    base.sweeps = {bad};
    EXPECT_THROW(sweep_grid(base), UsageError) << bad;
  }
  base.sweeps = {"lr=1e-3", "lr=3e-4"};
  EXPECT_THROW(sweep_grid(base), UsageError);
  // A bad value is reported against the --sweep that holds it, not only the flag it sets.
  base.sweeps = {"lr=1,,2"};
  try {
    sweep_grid(base);
    ADD_FAILURE() << "lr=1,,2 was accepted";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("--sweep \"lr=1,,2\": --lr"), std::string::npos) << e.what();
  }
}

// The values of a key joined for --sweep: "seed=0,1,...,n-1" (built in steps: g++ 12 warns
// falsely on "," + string, GCC bug 105329).
std::string numbered_values(const std::string& key, int n) {
  std::string text = key + "=";
  for (int i = 0; i < n; ++i) {
    if (i) text += ',';
    text += std::to_string(i);
  }
  return text;
}

// --epochs-distill 0 refuses the distillation's own flags as changing nothing — but not where the
// epochs are swept themselves: a grid with a no-distillation baseline is fair.
TEST(Sweep, SweptDistillationEpochsLeaveTheDistillationFlagsMeaningful) {
  EXPECT_NO_THROW(parse({"--sweep", "epochs-distill=0,5", "--temperature", "2", "--sweep-out", "rows"}));
  EXPECT_NO_THROW(
      parse({"--sweep", "epochs-distill=0,5", "--sweep", "noise=uniform,gaussian", "--sweep-out", "rows"}));
  EXPECT_THROW(parse({"--epochs-distill", "0", "--sweep", "noise=uniform,gaussian", "--sweep-out", "rows"}),
               UsageError);
  EXPECT_THROW(parse({"--sweep", "epochs-distill=0,00", "--temperature", "2", "--sweep-out", "rows"}),
               UsageError)
      << "every swept value is 0";
}

// A grid over the cap (10 000 configurations) is refused with its count before any configuration
// is made (27 million used to be built in memory: an internal error, std::bad_alloc); one at the
// cap is made.
TEST(Sweep, AGridOverTheCapIsRefusedGivingItsSize) {
  Config base = parse({});
  base.sweeps = {numbered_values("seed", 300), numbered_values("epochs-teacher", 300),
                 numbered_values("epochs-distill", 300)};
  try {
    sweep_grid(base);
    ADD_FAILURE() << "a grid of 27 million configurations was accepted";
  } catch (const UsageError& e) {
    EXPECT_NE(
        std::string(e.what()).find("the grid has 27000000 configurations (300 seed × 300 epochs-teacher "
                                   "× 300 epochs-distill values), more than the 10000"),
        std::string::npos)
        << e.what();
  }
  base.sweeps = {numbered_values("seed", 5000), "lr=1e-3,3e-4"};
  EXPECT_EQ(sweep_grid(base).size(), 10000u);
  base.sweeps.push_back("temperature=1,2");
  EXPECT_THROW(sweep_grid(base), UsageError);
}

// Two configurations with equal settings, as the run reads them, are one run made twice: a value
// given twice, written the same or not, or values that the other settings make equal (with
// --noise mnist the noise is the fixed set whatever --noise-set says). Refused naming both.
TEST(Sweep, ConfigurationsWithEqualSettingsAreRefusedNamingBoth) {
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"lr=1e-3,3e-4,1e-3"}, "\"lr=1e-3\" and \"lr=1e-3\" are the same run"},
      {{"lr=1e-3,0.001"}, "\"lr=1e-3\" and \"lr=0.001\" are the same run"},
      {{"hidden=256,256;128;0256,256"}, "\"hidden=256,256\" and \"hidden=0256,256\" are the same run"},
      {{"seed=7,07"}, "\"seed=7\" and \"seed=07\" are the same run"},
      {{"noise=mnist,uniform", "noise-set=fresh,fixed"},
       "\"noise=mnist;noise-set=fresh\" and \"noise=mnist;noise-set=fixed\" are the same run"}};
  for (const auto& [sweeps, names] : cases) {
    Config base = parse({});
    base.sweeps = sweeps;
    try {
      sweep_configs(base);
      ADD_FAILURE() << sweeps.front() << " was accepted";
    } catch (const UsageError& e) {
      EXPECT_NE(std::string(e.what()).find("--sweep: configurations " + names), std::string::npos)
          << e.what();
    }
  }
  Config base = parse({});
  base.sweeps = {"lr=1e-3,1e-4"};  // close, but not the same
  EXPECT_EQ(sweep_configs(base).size(), 2u);
  // With --noise mnist as the base, noise-set still matters for the uniform and gaussian runs.
  base = parse({"--noise", "mnist"});
  base.sweeps = {"noise=uniform,gaussian", "noise-set=fresh,fixed"};
  EXPECT_EQ(sweep_configs(base).size(), 4u);
}

// A path is bytes, not always UTF-8: the report and the sweep rows replace what is not UTF-8
// (U+FFFD) rather than throw after a whole run.
TEST(Report, JsonTextOfANameThatIsNotUtf8) {
  const nlohmann::json j = {{"data", std::string("mnist\xff")}};
  std::string text;
  EXPECT_NO_THROW(text = json_text(j));
  EXPECT_EQ(text, "{\"data\":\"mnist\xef\xbf\xbd\"}");
}

// After its first steps, a CPU training loop allocates nothing: every tensor of a step comes
// from the caching allocator's free lists.
TEST(CpuTraining, StepsStopAllocatingAfterTheFirst) {
  const int64_t samples = 1024, batch = 128;
  MlpParams params(MlpShape{{784, 64, 64, 13}}, 2, DType::f32, Device::cpu);
  init_mlp(params, InitScheme::torch_default, {1, 2}, 0);
  Adam adam(params.values(), params.grads(), {});
  std::vector<uint8_t> pixels(static_cast<size_t>(samples * 784)), labels(static_cast<size_t>(samples));
  for (size_t i = 0; i < pixels.size(); ++i) pixels[i] = uint8_t(i * 37 % 251);
  for (size_t i = 0; i < labels.size(); ++i) labels[i] = uint8_t(i % 10);
  const Tensor images = Tensor::from_vector(pixels, {samples, 784}),
               targets = Tensor::from_vector(labels, {samples});
  std::vector<int32_t> order(static_cast<size_t>(2 * samples));
  for (size_t i = 0; i < order.size(); ++i) order[i] = int32_t(i % size_t(samples));
  const Tensor order_t = Tensor::from_vector(order, {2, samples});
  const Tensor step = Tensor::zeros({1}, DType::i64);
  auto train_step = [&] {
    Tensor x = Tensor::empty({2, batch, 784}), y = Tensor::empty({2, batch}, DType::i32);
    gather_batch(images, targets, order_t, step, batch, x, y);
    Tensor loss = cross_entropy(mlp_forward(x, params), y, {0, 10});
    zero_grad(params.tensors());
    loss.backward();
    adam.step();
    *step.data<int64_t>() = (*step.data<int64_t>() + 1) % (samples / batch);
  };
  for (int i = 0; i < 3; ++i) train_step();
  const uint64_t before = cpu_allocator_stats().fresh_allocations;
  for (int i = 0; i < 10; ++i) train_step();
  EXPECT_EQ(cpu_allocator_stats().fresh_allocations, before)
      << "a steady training step allocated fresh memory";
}

// ---- Runs on a made-up MNIST: what each phase computes, checked from outside ---------------------

// An MNIST made up in memory: `train` and `test` images of 28×28 random pixels with random
// labels — enough for run_experiment on the CPU in milliseconds.
data::Mnist made_up_mnist(int64_t train, int64_t test) {
  data::Mnist mnist;
  std::mt19937 random(7);
  for (auto [split, count] : {std::pair{&mnist.train, train}, std::pair{&mnist.test, test}}) {
    split->count = count;
    split->rows = split->cols = 28;
    for (int64_t i = 0; i < count * 784; ++i) split->images.push_back(uint8_t(random() % 256));
    for (int64_t i = 0; i < count; ++i) split->labels.push_back(uint8_t(random() % 10));
  }
  return mnist;
}

// A small model and batch for the made-up runs, plus `extra` flags.
// What was written to a std::tmpfile(), which is then closed.
std::string read_and_close(std::FILE* out) {
  std::rewind(out);
  std::string text;
  for (int c; (c = std::fgetc(out)) != EOF;) text += char(c);
  std::fclose(out);
  return text;
}

Config small_run(std::vector<const char*> extra) {
  std::vector<const char*> args = {"--hidden", "8", "--batch-size", "4", "--no-progress"};
  args.insert(args.end(), extra.begin(), extra.end());
  return parse(args);
}

// The models' inits as run_experiment makes them: model m from seeds[m]; variant 0 is the
// teacher's and same-init students' init, variant 1 the cross-init students'.
MlpParams init_of(const Config& config, const std::vector<uint64_t>& seeds, uint32_t variant) {
  MlpParams params(config.mlp_shape(), int64_t(seeds.size()), DType::f32, Device::cpu);
  init_mlp(params, config.init, seeds, variant);
  return params;
}

// The first `count` images of a split as a run feeds them to `models` models, in file order:
// x [models, count, 784] normalised, y [models, count].
std::pair<Tensor, Tensor> inputs_of(const data::MnistSplit& split, int64_t count, int64_t models) {
  const Tensor images = Tensor::from_vector(split.images, {split.count, 784}),
               labels = Tensor::from_vector(split.labels, {split.count});
  std::vector<int32_t> order;
  for (int64_t m = 0; m < models; ++m)
    for (int64_t i = 0; i < split.count; ++i) order.push_back(int32_t(i));
  Tensor x = Tensor::empty({models, count, 784}), y = Tensor::empty({models, count}, DType::i32);
  gather_batch(images, labels, Tensor::from_vector(order, {models, split.count}),
               Tensor::zeros({1}, DType::i64), count, x, y);
  return {x, y};
}

// The first distillation epoch's noise as a run draws it for `models` models: images 0..9 of the
// noise stream (one batch of 10), x [models, 10, 784].
Tensor first_noise_of(const Config& config, int64_t models, NoiseDistribution distribution) {
  Tensor noise = Tensor::empty({models, 10, 784});
  noise_batch(config.seed, stream_id(kNoisePurpose), Tensor(), Tensor::zeros({1}, DType::i64), 10, 0,
              distribution, noise);
  return noise;
}

// Each model's test accuracy, counted here from the argmax of its 10 class logits.
std::vector<double> accuracy_of(const MlpParams& params, const data::MnistSplit& test) {
  NoGradGuard no_grad;
  const Tensor x = inputs_of(test, test.count, params.models()).first;
  const std::vector<float> logits = mlp_forward(x, params).to_vector<float>();
  const int64_t outputs = params.shape().sizes.back();
  std::vector<double> accuracy;
  for (int64_t m = 0; m < params.models(); ++m) {
    int64_t correct = 0;
    for (int64_t i = 0; i < test.count; ++i) {
      const float* row = &logits[size_t((m * test.count + i) * outputs)];
      correct += std::max_element(row, row + 10) - row == test.labels[size_t(i)];
    }
    accuracy.push_back(double(correct) / double(test.count));
  }
  return accuracy;
}

std::vector<double> final_acc(const Results& results, const std::string& arm) {
  for (const auto& [key, acc] : results.final_acc)
    if (key == arm) return acc;
  ADD_FAILURE() << "no final accuracy for " << arm;
  return {};
}

// A learning rate too small to move any float32 weight (its updates are below their rounding):
// the models stay at their inits, so what a phase computes can be computed here from the inits.
constexpr const char* kStill = "1e-30";

// The teacher's epoch loss is the mean cross-entropy over every image of --train-samples: the
// short last batch weighted by its size, nothing dropped, each epoch summed afresh.
// An explicit --step fused or cluster trains in its own float32 kernels: the flags that choose
// how the Linear layers' GEMMs run reach only the evaluation, and a GPU run says which (--step
// auto takes the autograd tape when any is given, so that the run gets what it named).
TEST(Experiment, TheFlagsTheFusedStepLeavesToTheEvaluationAreNamed) {
  EXPECT_EQ(flags_the_fused_step_leaves_to_evaluation(parse({"--step", "fused"})), "");
  EXPECT_EQ(flags_the_fused_step_leaves_to_evaluation(parse({"--gemm", "cublaslt", "--fusion", "whole"})), "")
      << "the defaults, named, are still the defaults";
  EXPECT_EQ(flags_the_fused_step_leaves_to_evaluation(parse(
                {"--step", "cluster", "--gemm", "tiled", "--tf32", "--autotune", "--fusion", "per_layer"})),
            "--gemm tiled, --tf32, --autotune, --fusion per_layer");
  EXPECT_EQ(flags_the_fused_step_leaves_to_evaluation(parse({"--autotune"})), "--autotune");
}

TEST(Experiment, TeacherLossIsTheMeanOverEveryTrainingImage) {
  const data::Mnist mnist = made_up_mnist(14, 20);
  const Config config =
      small_run({"--train-samples", "10", "--lr", kStill, "--models", "2", "--epochs-teacher", "2",
                 "--epochs-distill", "0"});  // batches of 4, 4 and 2
  Observer quiet;
  const Results results = run_experiment(config, mnist, Device::cpu, quiet);
  const auto [x, y] = inputs_of(mnist.train, 10, 2);
  NoGradGuard no_grad;
  const std::vector<float> expected =
      cross_entropy(mlp_forward(x, init_of(config, {0, 1}, 0)), y, {0, 10}).to_vector<float>();
  ASSERT_EQ(results.teacher_epochs.size(), 2u);
  for (const EpochMetrics& epoch : results.teacher_epochs)
    for (size_t m = 0; m < 2; ++m)
      EXPECT_NEAR(epoch.loss[m], expected[m], 1e-5 * expected[m])
          << "epoch " << epoch.epoch << ", model " << m;
}

// The steady time (the report's us_per_step_steady) is the epochs after a phase's first: their
// steps, on the same clock as the phase's whole time, and none for a phase of one epoch.
TEST(Experiment, SteadyTimeCoversTheEpochsAfterTheFirst) {
  const Config config =
      small_run({"--train-samples", "10", "--epochs-teacher", "3", "--epochs-distill", "1"});
  Observer quiet;
  const Results results = run_experiment(config, made_up_mnist(14, 20), Device::cpu, quiet);
  const PhaseTiming& teacher = results.timing.at("teacher");
  EXPECT_EQ(teacher.steps, 3 * 3);  // 10 images in batches of 4, 4 and 2
  EXPECT_EQ(teacher.steady_steps, 2 * 3);
  EXPECT_GT(teacher.steady_seconds, 0.0);
  EXPECT_LT(teacher.steady_seconds, teacher.wall_seconds);
  const PhaseTiming& distill = results.timing.at("distill_ghosts");
  EXPECT_EQ(distill.steps, 3);
  EXPECT_EQ(distill.steady_steps, 0);
  EXPECT_EQ(distill.steady_seconds, 0.0);
}

// The teacher's final accuracy is its last epoch's.
TEST(Experiment, TheTeachersFinalAccuracyIsItsLastEpochs) {
  const Config config = small_run({"--lr", "0.05", "--epochs-teacher", "3", "--epochs-distill", "0"});
  Observer quiet;
  const Results results = run_experiment(config, made_up_mnist(40, 50), Device::cpu, quiet);
  ASSERT_EQ(results.teacher_epochs.size(), 3u);
  ASSERT_NE(results.teacher_epochs.front().test_acc, results.teacher_epochs.back().test_acc)
      << "the teacher did not change: this test needs one that does";
  EXPECT_EQ(final_acc(results, "teacher"), results.teacher_epochs.back().test_acc);
}

// Teacher training is Adam on the cross-entropy of the 10 class logits, batch by batch over the
// training images in a new order each epoch (epoch e's from stream (kTeacherOrderPurpose, e) under
// key seed + m, streams.h): the same loop written out here gives the same epoch losses and final
// accuracy.
TEST(Experiment, TeacherTrainingIsAdamOverANewOrderEachEpoch) {
  const data::Mnist mnist = made_up_mnist(12, 100);
  const Config config =
      small_run({"--lr", "0.01", "--seed", "5", "--epochs-teacher", "2", "--epochs-distill", "0"});
  Observer quiet;
  const Results results = run_experiment(config, mnist, Device::cpu, quiet);
  MlpParams teacher = init_of(config, {5}, 0);
  Adam adam(teacher.values(), teacher.grads(), {0.01});
  const Tensor images = Tensor::from_vector(mnist.train.images, {12, 784}),
               labels = Tensor::from_vector(mnist.train.labels, {12});
  Tensor x = Tensor::empty({1, 4, 784}), y = Tensor::empty({1, 4}, DType::i32);
  ASSERT_EQ(results.teacher_epochs.size(), 2u);
  for (int64_t epoch = 1; epoch <= 2; ++epoch) {
    const Tensor order = Tensor::from_vector(
        random_permutation(12, {5, stream_id(kTeacherOrderPurpose, uint32_t(epoch))}), {1, 12});
    double loss_sum = 0;
    for (int64_t step = 0; step < 3; ++step) {  // 3 batches of 4
      gather_batch(images, labels, order, Tensor::full({1}, double(step), DType::i64), 4, x, y);
      const Tensor loss = cross_entropy(mlp_forward(x, teacher), y, {0, 10});
      zero_grad(teacher.tensors());
      loss.backward();
      adam.step();
      loss_sum += 4 * double(loss.to_vector<float>()[0]);
    }
    EXPECT_NEAR(results.teacher_epochs[size_t(epoch - 1)].loss[0], loss_sum / 12, 1e-6 * loss_sum / 12)
        << "epoch " << epoch;
  }
  EXPECT_EQ(final_acc(results, "teacher"), accuracy_of(teacher, mnist.test));
}

// --noise gaussian draws the students' inputs from N(0, 1), and --noise-set fixed keeps one set
// of S images per model, reshuffled each epoch — the same images every epoch, so the same epoch
// loss while the students stand still (fresh noise: other images, another loss).
TEST(Experiment, GaussianNoiseAndAFixedNoiseSet) {
  const data::Mnist mnist = made_up_mnist(10, 20);
  for (const std::string set : {"fresh", "fixed"}) {
    SCOPED_TRACE(set);
    const Config config = small_run({"--lr", kStill, "--epochs-teacher", "0", "--epochs-distill", "2",
                                     "--noise", "gaussian", "--noise-set", set.c_str()});
    Observer quiet;
    const Results results = run_experiment(config, mnist, Device::cpu, quiet);
    const Tensor noise = first_noise_of(config, 1, NoiseDistribution::gaussian);
    NoGradGuard no_grad;
    const double expected = distill_kl(mlp_forward(noise, init_of(config, {0}, 1)),
                                       mlp_forward(noise, init_of(config, {0}, 0)), {10, 13}, 1.0)
                                .to_vector<float>()[0];
    const std::vector<EpochMetrics>& cross = results.arm_epochs.at("cross_init");
    ASSERT_EQ(cross.size(), 2u);
    EXPECT_NEAR(cross[0].loss[0], expected, 1e-5 * expected);
    if (set == "fixed")
      EXPECT_NEAR(cross[1].loss[0], cross[0].loss[0], 1e-5 * expected);
    else
      EXPECT_GT(std::abs(cross[1].loss[0] - cross[0].loss[0]), 1e-4 * expected);
  }
}

// --init-perturb σ adds N(0, σ²) to the same-init students' weights, tensor k of model m from
// stream (kPerturbPurpose, 0, k) under key seed + m (streams.h): with the teacher untrained and
// the student still, its loss is the KL between that perturbed init and the init.
TEST(Experiment, InitPerturbationIsTheDocumentedNoise) {
  const data::Mnist mnist = made_up_mnist(10, 20);
  const Config config =
      small_run({"--lr", kStill, "--seed", "4", "--models", "2", "--epochs-teacher", "0", "--epochs-distill",
                 "1", "--cross-init", "false", "--init-perturb", "0.1"});
  Observer quiet;
  const Results results = run_experiment(config, mnist, Device::cpu, quiet);
  const MlpParams init = init_of(config, {4, 5}, 0);
  MlpParams perturbed = init_of(config, {4, 5}, 0);
  const std::vector<Tensor> tensors = perturbed.tensors();
  for (int64_t m = 0; m < 2; ++m)
    for (size_t k = 0; k < tensors.size(); ++k) {
      const Tensor target = tensors[k].rows(m, 1);
      const Tensor noise = Tensor::empty(target.shape());
      fill_normal(noise, {4 + uint64_t(m), stream_id(kPerturbPurpose, 0, uint32_t(k))}, 0.0, 0.1);
      add_into(target, noise);
    }
  const Tensor x = first_noise_of(config, 2, NoiseDistribution::uniform);
  NoGradGuard no_grad;
  const std::vector<float> expected =
      distill_kl(mlp_forward(x, perturbed), mlp_forward(x, init), {10, 13}, 1.0).to_vector<float>();
  const std::vector<double> loss = results.arm_epochs.at("student").at(0).loss;
  for (size_t m = 0; m < 2; ++m) EXPECT_NEAR(loss.at(m), expected[m], 1e-5 * expected[m]) << "model " << m;
}

// With the teacher untrained (0 epochs) and the students still, a cross-init student's epoch
// loss is the divergence (--divergence: KL, or JS) at --temperature on the ghost logits between
// its init and the teacher's, over the epoch's fresh noise (images 0..S−1 of the noise stream);
// the next epoch's fresh noise gives another. A same-init student is its teacher: 0.
TEST(Experiment, DistillationLossIsTheDivergenceAtTheTemperatureOnTheGhostLogits) {
  const data::Mnist mnist = made_up_mnist(10, 20);
  for (const Divergence divergence : {Divergence::kl, Divergence::js}) {
    SCOPED_TRACE(divergence_name(divergence));
    const Config config =
        small_run({"--lr", kStill, "--models", "2", "--epochs-teacher", "0", "--epochs-distill", "2",
                   "--temperature", "3", "--divergence", divergence_name(divergence)});
    Observer quiet;
    const Results results = run_experiment(config, mnist, Device::cpu, quiet);
    const Tensor noise = first_noise_of(config, 2, NoiseDistribution::uniform);
    NoGradGuard no_grad;
    const std::vector<float> expected =
        distill(mlp_forward(noise, init_of(config, {0, 1}, 1)),
                mlp_forward(noise, init_of(config, {0, 1}, 0)), {10, 13}, 3.0, divergence)
            .to_vector<float>();
    const std::vector<EpochMetrics>& cross = results.arm_epochs.at("cross_init");
    ASSERT_EQ(cross.size(), 2u);
    for (size_t m = 0; m < 2; ++m) {
      EXPECT_NEAR(cross[0].loss[m], expected[m], 1e-5 * expected[m]) << "model " << m;
      EXPECT_NE(cross[1].loss[m], cross[0].loss[m])
          << "model " << m << ": epoch 2 saw the same noise as epoch 1";
    }
    for (const EpochMetrics& epoch : results.arm_epochs.at("student"))
      EXPECT_EQ(epoch.loss, (std::vector<double>{0, 0})) << "epoch " << epoch.epoch;
  }
}

// --noise mnist feeds every arm the training images, gathered once for the teachers' rows and
// tiled to each arm's students. With the students still, an epoch's loss is then the mean KL over
// all S images whatever their order: the cross-init arm — the second group of rows, which a
// tiling that stopped one arm short would leave unfilled — matches the KL on the images in file
// order. (The test exists because no other test ran --noise mnist with more than one arm.)
TEST(Experiment, MnistNoiseReachesTheStudentsOfEveryArm) {
  const data::Mnist mnist = made_up_mnist(10, 20);
  const Config config = small_run({"--lr", kStill, "--models", "2", "--epochs-teacher", "0",
                                   "--epochs-distill", "1", "--noise", "mnist"});  // batches of 4, 4 and 2
  ASSERT_EQ(student_arms(config).size(), 2u) << "this test needs a second arm";
  Observer quiet;
  const Results results = run_experiment(config, mnist, Device::cpu, quiet);
  const Tensor x = inputs_of(mnist.train, 10, 2).first;  // [2, 10, 784]
  NoGradGuard no_grad;
  const std::vector<float> expected = distill_kl(mlp_forward(x, init_of(config, {0, 1}, 1)),
                                                 mlp_forward(x, init_of(config, {0, 1}, 0)), {10, 13}, 1.0)
                                          .to_vector<float>();
  const std::vector<double> loss = results.arm_epochs.at("cross_init").at(0).loss;
  ASSERT_EQ(loss.size(), 2u);
  for (size_t m = 0; m < 2; ++m) EXPECT_NEAR(loss[m], expected[m], 1e-5 * expected[m]) << "model " << m;
}

// A same-init student starts as its teacher, where its KL and gradient are 0, and stays there —
// unless --weight-decay pulls it off, or --init-perturb starts it elsewhere (model m with its own
// noise, as --seed seed+m would draw it).
TEST(Experiment, WeightDecayAndInitPerturbationMoveTheSameInitStudent) {
  const data::Mnist mnist = made_up_mnist(12, 20);
  auto student_loss = [&](std::vector<const char*> extra) {
    extra.insert(extra.end(), {"--epochs-teacher", "0", "--epochs-distill", "1", "--cross-init", "false"});
    Observer quiet;
    return run_experiment(small_run(extra), mnist, Device::cpu, quiet).arm_epochs.at("student").at(0).loss;
  };
  EXPECT_EQ(student_loss({"--lr", "0.01"}), (std::vector<double>{0}));
  EXPECT_GT(student_loss({"--lr", "0.01", "--weight-decay", "0.5"}).at(0), 0);
  const std::vector<double> perturbed =
      student_loss({"--lr", kStill, "--init-perturb", "0.1", "--models", "2"});
  ASSERT_EQ(perturbed.size(), 2u);
  EXPECT_GT(perturbed[0], 0);
  EXPECT_NE(perturbed[0], perturbed[1]);
  const std::vector<double> seed1 = student_loss({"--lr", kStill, "--init-perturb", "0.1", "--seed", "1"});
  EXPECT_NEAR(perturbed[1], seed1.at(0), 1e-6 * seed1.at(0));
}

// --weight-decay is the students' alone: the notebook's teacher Adam has none (REFERENCE.md §1),
// so the teacher trains to the same bits with it as without. (No other test trained a teacher
// with --weight-decay set, so a teacher Adam handed it went unnoticed.)
TEST(Experiment, WeightDecayLeavesTheTeacherAlone) {
  const data::Mnist mnist = made_up_mnist(12, 20);
  auto teacher_epochs = [&](const char* decay) {
    Observer quiet;
    const Config config = small_run(
        {"--lr", "0.01", "--epochs-teacher", "2", "--epochs-distill", "1", "--weight-decay", decay});
    return run_experiment(config, mnist, Device::cpu, quiet).teacher_epochs;
  };
  const std::vector<EpochMetrics> without = teacher_epochs("0"), with = teacher_epochs("0.5");
  ASSERT_EQ(without.size(), 2u);
  ASSERT_EQ(with.size(), 2u);
  for (size_t e = 0; e < 2; ++e) {
    EXPECT_EQ(with[e].loss, without[e].loss) << "epoch " << e + 1;
    EXPECT_EQ(with[e].test_acc, without[e].test_acc) << "epoch " << e + 1;
  }
}

// Without distillation epochs the students are their inits: the same-init one the teacher's,
// the cross-init one another — under the paper's preset too, whose cross-init student takes another
// model's init when there is one, and a second init of its own when it is the only model.
TEST(Experiment, WithoutDistillationEachStudentIsItsInit) {
  const data::Mnist mnist = made_up_mnist(8, 200);
  for (const char* preset : {"notebook", "paper"}) {
    SCOPED_TRACE(preset);
    const Config config = small_run({"--preset", preset, "--models", "1", "--seed", "3", "--epochs-teacher",
                                     "0", "--epochs-distill", "0"});
    Observer quiet;
    const Results results = run_experiment(config, mnist, Device::cpu, quiet);
    const std::vector<double> same = accuracy_of(init_of(config, {3}, 0), mnist.test),
                              other = accuracy_of(init_of(config, {3}, 1), mnist.test);
    ASSERT_NE(same, other) << "two inits score alike: this test needs ones that do not";
    EXPECT_EQ(final_acc(results, "reference"), same);
    EXPECT_EQ(final_acc(results, "student"), same);
    EXPECT_EQ(final_acc(results, "cross_init"), other);
  }
}

void save_holds_each_arms_students(const char* epochs_distill) {
  subliminal::test::TempDir dir;
  const std::string path = (dir / "trained.safetensors").string();
  const Config config = small_run({"--lr", kStill, "--models", "2", "--epochs-teacher", "0",
                                   "--epochs-distill", epochs_distill, "--save", path.c_str()});
  Observer quiet;
  TrainedModels trained;
  run_experiment(config, made_up_mnist(8, 20), Device::cpu, quiet, &trained);
  save_trained(path, trained.teacher, trained.ghost, trained.all, trained.arms, false);
  const MlpParams same = init_of(config, {0, 1}, 0), cross = init_of(config, {0, 1}, 1);
  std::map<std::string, Tensor> saved;
  for (const NamedTensor& t : read_safetensors(path).tensors) saved[t.name] = t.tensor;
  for (const auto& [arm, init] :
       {std::pair{"teacher.", &same}, std::pair{"student.", &same}, std::pair{"cross_init.", &cross}}) {
    const std::vector<Tensor> tensors = init->tensors();
    const std::vector<std::string> names = init->names();
    for (size_t k = 0; k < tensors.size(); ++k) {
      const std::string name = arm + names[k];
      ASSERT_TRUE(saved.count(name)) << name;
      ASSERT_EQ(saved[name].shape(), tensors[k].shape()) << name;
      const std::vector<float> got = saved[name].to_vector<float>(), want = tensors[k].to_vector<float>();
      double worst = 0;
      for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, double(std::abs(got[i] - want[i])));
      EXPECT_LT(worst, 1e-6) << name;
    }
  }
}

// --save holds the teacher and each arm's students under the arm's name, each model in order
// (run_experiment hands the trained models out; main() saves them after the report).
// With --epochs-distill 0 the students are their inits, and --save holds them as such (it used
// to hold the teacher alone).
TEST(Experiment, SaveHoldsEachArmsStudents) {
  for (const char* epochs_distill : {"1", "0"}) {
    SCOPED_TRACE(std::string("--epochs-distill ") + epochs_distill);
    save_holds_each_arms_students(epochs_distill);
  }
}

// A run that notes what its sizes make of its flags: a batch larger than the training images
// (each epoch one smaller step), the paper preset's cross-model control with one model (a
// second init instead). A run without either notes nothing.
TEST(Experiment, NotesSayWhatTheSizesMakeOfTheFlags) {
  struct Notes : Observer {
    std::string text;
    void message(const std::string& line) override { text += line + "\n"; }
  };
  const data::Mnist mnist = made_up_mnist(20, 8);
  auto notes = [&](std::vector<const char*> flags) {
    flags.insert(flags.end(),
                 {"--hidden", "8", "--epochs-teacher", "1", "--epochs-distill", "0", "--no-progress"});
    Notes observer;
    run_experiment(parse(flags), mnist, Device::cpu, observer);
    return observer.text;
  };
  EXPECT_EQ(notes({"--batch-size", "4"}), "");
  EXPECT_EQ(notes({"--batch-size", "30"}),
            "note: --batch-size 30 is more than the 20 training images: each epoch is one step of 20\n");
  EXPECT_EQ(notes({"--batch-size", "30", "--train-samples", "10"}),
            "note: --batch-size 30 is more than the 10 training images --train-samples leaves: each epoch is "
            "one step of 10\n");
  EXPECT_NE(notes({"--preset", "paper", "--models", "1", "--batch-size", "4"})
                .find("note: --preset paper with one model: the cross-init control is a second init"),
            std::string::npos);
  EXPECT_EQ(notes({"--preset", "paper", "--models", "2", "--batch-size", "4"}), "");
  EXPECT_EQ(notes({"--preset", "paper", "--models", "1", "--batch-size", "4", "--cross-init", "false"}), "");
}

// --save-init records the scheme the init was drawn with ("init"), and an init loaded from a file
// and saved again keeps the file's (not the run's --init, which then names the control's).
TEST(Experiment, AnInitFileRecordsItsSchemeAndASaveOfItKeepsIt) {
  subliminal::test::TempDir dir;
  const std::string drawn = (dir / "drawn.st").string(), again = (dir / "again.st").string();
  const data::Mnist mnist = made_up_mnist(8, 20);
  Observer quiet;
  run_experiment(small_run({"--init", "normal", "--epochs-teacher", "0", "--epochs-distill", "0",
                            "--save-init", drawn.c_str()}),
                 mnist, Device::cpu, quiet);
  EXPECT_EQ(read_safetensors(drawn).metadata.at("init"), "normal");
  run_experiment(small_run({"--load-init", drawn.c_str(), "--epochs-teacher", "0", "--epochs-distill", "0",
                            "--save-init", again.c_str()}),
                 mnist, Device::cpu, quiet);
  EXPECT_EQ(read_safetensors(again).metadata.at("init"), "normal");
  MlpParams probe(small_run({}).mlp_shape(), 1, DType::f32, Device::cpu);
  InitFileNotes notes;
  load_init(again, probe, false, &notes);
  EXPECT_EQ(notes.scheme, "normal");
  EXPECT_EQ(notes.seed, "0");
}

// --save-init with --models N writes each tensor of the shared init with a leading N, model m's
// at [m]; --load-init of that file starts the same N models, so a run from it is the run that
// wrote it. A file of another model count is refused, saying how many models it holds.
TEST(Experiment, AnInitOfManyModelsSavesAndLoadsWhole) {
  subliminal::test::TempDir dir;
  const std::string path = (dir / "init.safetensors").string();
  const data::Mnist mnist = made_up_mnist(8, 20);
  Observer quiet;
  const std::vector<const char*> run = {"--models",         "2", "--seed",           "5",
                                        "--epochs-teacher", "1", "--epochs-distill", "1"};
  std::vector<const char*> saving = run, loading = run;
  saving.insert(saving.end(), {"--save-init", path.c_str()});
  loading.insert(loading.end(), {"--load-init", path.c_str()});
  const Results wrote = run_experiment(small_run(saving), mnist, Device::cpu, quiet);

  const MlpParams init = init_of(small_run(run), {5, 6}, 0);
  std::map<std::string, Tensor> saved;
  for (const NamedTensor& t : read_safetensors(path).tensors) saved[t.name] = t.tensor;
  const std::vector<Tensor> tensors = init.tensors();
  const std::vector<std::string> names = init.names();
  ASSERT_EQ(saved.size(), tensors.size());
  for (size_t k = 0; k < tensors.size(); ++k) {
    ASSERT_TRUE(saved.count(names[k])) << names[k];
    EXPECT_EQ(saved[names[k]].shape(), tensors[k].shape()) << names[k];  // [2, out(, in)]
    EXPECT_EQ(saved[names[k]].to_vector<float>(), tensors[k].to_vector<float>()) << names[k];
  }

  const Results read = run_experiment(small_run(loading), mnist, Device::cpu, quiet);
  for (const char* arm : {"reference", "teacher", "student", "cross_init"})
    EXPECT_EQ(final_acc(read, arm), final_acc(wrote, arm)) << arm;
  ASSERT_EQ(read.teacher_epochs.size(), 1u);
  EXPECT_EQ(read.teacher_epochs[0].loss, wrote.teacher_epochs[0].loss);

  for (const int64_t models : {1, 3}) {
    MlpParams other(init.shape(), models, DType::f32, Device::cpu);
    try {
      load_init(path, other);
      ADD_FAILURE() << "a 2-model init loaded into " << models << " models";
    } catch (const DataError& e) {
      EXPECT_NE(std::string(e.what()).find(": holds the init of 2 models (net.0.weight is [2, 8, 784]), "
                                           "this run trains " +
                                           std::to_string(models) + "; give --models 2"),
                std::string::npos)
          << e.what();
    }
  }
  // --parity-batch computes one model's batch and refuses --models: its advice is a one-model init.
  MlpParams parity_model(init.shape(), 1, DType::f32, Device::cpu);
  try {
    load_init(path, parity_model, true);
    ADD_FAILURE() << "a 2-model init loaded for --parity-batch";
  } catch (const DataError& e) {
    EXPECT_NE(
        std::string(e.what()).find("this run trains 1 (--parity-batch computes one model's batch); write a "
                                   "one-model init with --save-init, without --models"),
        std::string::npos)
        << e.what();
  }
  const std::string one = (dir / "one.safetensors").string();
  save_init(one, init_of(small_run({}), {5}, 0), false, 5, "torch");
  MlpParams two(init.shape(), 2, DType::f32, Device::cpu);
  try {
    load_init(one, two);
    ADD_FAILURE() << "a 1-model init loaded into 2 models";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find(": holds the init of 1 model (net.0.weight is [8, 784]), this run "
                                         "trains 2; give --models 1"),
              std::string::npos)
        << e.what();
  }
}

// host_bytes_at_least is a lower bound of what a CPU run holds, else it would refuse runs that
// fit; and not a loose one. Measured where the parameters dominate (wide layers, few images), for
// each way of grouping the arms: 2 + 4·2 copies with the control, 2 + 4 without, the paper's
// all-logit arms a second group of two.
TEST(Experiment, HostBytesAtLeastIsWhatACpuRunSurelyHolds) {
  const data::Mnist mnist = made_up_mnist(8, 20);
  for (const std::vector<const char*>& arms : {std::vector<const char*>{},
                                               {"--cross-init", "false"},
                                               {"--preset", "paper", "--all-logit-arms", "true"}}) {
    std::vector<const char*> args = {"--hidden",     "512,512", "--models",     "2",
                                     "--batch-size", "4",       "--no-progress"};
    args.insert(args.end(), arms.begin(), arms.end());
    args.insert(args.end(), {"--epochs-teacher", "1", "--epochs-distill", "1"});
    const Config config = parse(args);
    SCOPED_TRACE(arms.empty() ? "notebook" : arms[0]);
    cpu_cache_trim();
    reset_cpu_peak();
    const uint64_t before = cpu_allocator_stats().bytes_held;
    Observer quiet;
    run_experiment(config, mnist, Device::cpu, quiet);
    const uint64_t held = cpu_allocator_stats().peak_bytes_held - before,
                   at_least = host_bytes_at_least(config);
    EXPECT_GE(held, at_least);
    EXPECT_LE(held, 3 * at_least) << "the bound is loose: the run held " << held;
  }
}

// A CPU run whose parameters alone would pass the allocator's ceiling is refused before anything
// is allocated, naming the flags and the sizes (not minutes later, at the allocation that passes).
TEST(Experiment, ARunTooLargeForTheMemoryIsRefusedBeforeItStarts) {
  struct NoCeilingAfter {
    ~NoCeilingAfter() { set_cpu_memory_limit(0); }
  } no_ceiling_after;
  const Config config = parse({"--hidden", "512,512", "--models", "3", "--batch-size", "4", "--no-progress"});
  cpu_cache_trim();
  set_cpu_memory_limit(host_bytes_at_least(config) - 1);
  const uint64_t fresh = cpu_allocator_stats().fresh_allocations;
  Observer quiet;
  try {
    run_experiment(config, made_up_mnist(8, 20), Device::cpu, quiet);
    ADD_FAILURE() << "the run started";
  } catch (const OutOfMemoryError& e) {
    EXPECT_EQ(std::string(e.what()), "out of host memory: --models 3 of --hidden 512,512 need at least " +
                                         bytes_text(host_bytes_at_least(config)) +
                                         " (their parameters, gradients and Adam's moments), and " +
                                         bytes_text(host_bytes_at_least(config) - 1) + " is available");
  }
  EXPECT_EQ(cpu_allocator_stats().fresh_allocations, fresh);
}

// With --epochs-distill 0 the students are evaluated at their inits: that evaluation is counted
// in the evaluation's seconds like every other (it was left out: of a run doing nothing but
// evaluate three models, a third was counted).
TEST(Experiment, EvaluatingStudentsAtTheirInitsCountsAsEvaluation) {
  const Config config = parse({"--hidden", "256,256", "--models", "4", "--epochs-teacher", "0",
                               "--epochs-distill", "0", "--no-progress"});
  const data::Mnist mnist = made_up_mnist(8, 4000);
  Observer quiet;
  run_experiment(config, mnist, Device::cpu, quiet);  // warm: the allocator's cache, the pool
  const auto start = std::chrono::steady_clock::now();
  const Results results = run_experiment(config, mnist, Device::cpu, quiet);
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_GT(results.eval_seconds, 0.6 * wall) << "of " << wall << " s";
}

// --parity-batch computes one model's batch: the paper preset's 100 models are not what it needs
// (it was refused as out of memory, sized for all of them, with no way round: --models is
// refused beside it).
TEST(Experiment, AParityBatchCountsOneModelsMemory) {
  const Config paper = parse({"--preset", "paper", "--no-progress"});
  const Config parity = parse({"--preset", "paper", "--parity-batch", "p.st", "--no-progress"});
  EXPECT_EQ(paper.models, 100);
  EXPECT_EQ(host_bytes_at_least(parity) * 100, host_bytes_at_least(paper));
}

// --parity-batch's distillation half: the KL and the JS at temperature 2 on the ghost logits between the init
// and a teacher at 1.1 × the init, on the noise the file holds (bench/parity.py checks it against
// PyTorch; this checks the constants it is told).
TEST(Parity, TheBatchsKlAndJsAreAtTemperatureTwoAgainstTheScaledInit) {
  subliminal::test::TempDir dir;
  const std::string path = (dir / "parity.safetensors").string();
  const Config config = small_run({"--parity-batch", path.c_str()});
  write_parity_batch(config, made_up_mnist(8, 4), Device::cpu, path);
  std::map<std::string, Tensor> saved;
  for (const NamedTensor& t : read_safetensors(path).tensors) saved[t.name] = t.tensor;
  ASSERT_TRUE(saved.count("noise") && saved.count("kl_loss"));
  const MlpParams init = init_of(config, {0}, 0);
  MlpParams teacher = init_of(config, {0}, 0);
  teacher.values().copy_from(scale(init.values().detach(), 1.1));
  NoGradGuard no_grad;
  const Tensor noise = saved["noise"].reshaped({1, 4, 784});
  for (const Divergence divergence : {Divergence::kl, Divergence::js}) {
    const std::string name = std::string(divergence_name(divergence)) + "_loss";
    ASSERT_TRUE(saved.count(name)) << name;
    const double expected =
        distill(mlp_forward(noise, init), mlp_forward(noise, teacher), {10, 13}, 2.0, divergence)
            .to_vector<float>()[0];
    EXPECT_NEAR(saved[name].to_vector<float>()[0], expected, 1e-6 * expected) << name;
  }
}

// The report's numbers come from the right places: each arm's mean, std and both intervals over
// its models, each epoch's mean over the models, and every config key from its own flag.
TEST(Report, EveryNumberComesFromItsOwnSource) {
  const Config c = parse_words(
      "--seed 7 --models 3 --ghosts 4 --hidden 16,8 --batch-size 32 --lr 0.002 --epochs-teacher 6 "
      "--epochs-distill 9 --temperature 2.5 --weight-decay 0.01 --init-perturb 0.02 --train-samples 1000 "
      "--cross-init false --all-logit-arms true --eval-every-epoch false --noise gaussian --noise-set fixed "
      "--init normal --fusion per_layer --gemm tiled --step fused --fused-split 4,1,last --no-graphs "
      "--tf32 --divergence js");
  Results results;
  results.final_acc = {{"teacher", {0.5, 0.7, 0.9}}};
  results.teacher_epochs = {{1, {0.3, 0.6, 0.9}, {0.2, 0.4, 0.9}}};
  results.arm_epochs["student"] = {{1, {1.0, 2.0, 6.0}, {}}};
  results.timing["teacher"].steps = 4;
  results.timing["teacher"].wall_seconds = 2;
  results.timing["teacher"].steady_steps = 2;  // the epochs after the first
  results.timing["teacher"].steady_seconds = 0.25;
  results.timing["distill_ghosts"].steps = 3;  // one epoch: no steady time
  results.timing["distill_ghosts"].wall_seconds = 3;
  const nlohmann::json r = nlohmann::json::parse(
      report_json(c, results, {}, Device::cpu,
                  {"data", "2+2 images, crc32 0", {"subliminal", "--seed", "3"}, "2026-12-07T18:30:05Z"}));

  EXPECT_EQ(r["data"], (nlohmann::json{{"dir", "data"}, {"fingerprint", "2+2 images, crc32 0"}}));
  EXPECT_EQ(r["command"], (std::vector<std::string>{"subliminal", "--seed", "3"}));
  EXPECT_EQ(r["started"], "2026-12-07T18:30:05Z");
  const nlohmann::json& teacher = r["teacher"];
  EXPECT_NEAR(teacher["test_acc"].get<double>(), 0.7, 1e-15);
  EXPECT_NEAR(teacher["std"].get<double>(), 0.2, 1e-15);
  EXPECT_NEAR(teacher["ci95"].get<double>(), 1.96 * 0.2 / std::sqrt(3.0), 1e-15);
  EXPECT_NEAR(teacher["ci95_t"].get<double>(), 4.302653 * 0.2 / std::sqrt(3.0), 1e-6);
  EXPECT_EQ(teacher["n"], 3);
  EXPECT_EQ(teacher["per_model"], (std::vector<double>{0.5, 0.7, 0.9}));
  EXPECT_NEAR(r["epochs"]["teacher"][0]["loss"].get<double>(), 0.6, 1e-15);
  EXPECT_NEAR(r["epochs"]["teacher"][0]["test_acc"].get<double>(), 0.5, 1e-15);
  EXPECT_NEAR(r["epochs"]["student"][0]["js"].get<double>(), 3.0, 1e-15);  // the loss named by --divergence
  EXPECT_FALSE(r["epochs"]["student"][0].contains("test_acc"));
  EXPECT_NEAR(r["us_per_step"]["teacher"].get<double>(), 5e5, 1e-6);
  EXPECT_NEAR(r["us_per_step_steady"]["teacher"].get<double>(), 1.25e5, 1e-6);
  EXPECT_EQ(r["steps_steady"]["teacher"], 2);
  EXPECT_NEAR(r["us_per_step"]["distill_ghosts"].get<double>(), 1e6, 1e-6);
  EXPECT_FALSE(r["us_per_step_steady"].contains("distill_ghosts"))
      << "a phase of one epoch has no steady time";
  EXPECT_FALSE(r["steps_steady"].contains("distill_ghosts"));

  const nlohmann::json expected = nlohmann::json::parse(R"({
      "preset": "notebook", "seed": 7, "models": 3, "ghosts": 4, "hidden": [16, 8], "batch_size": 32,
      "lr": 0.002, "epochs_teacher": 6, "epochs_distill": 9, "temperature": 2.5, "divergence": "js", "init": "normal",
      "noise": "gaussian", "noise_set": "fixed", "weight_decay": 0.01, "init_perturb": 0.02,
      "train_samples": 1000, "cross_init": false, "all_logit_arms": true, "tf32": true, "cudnn_tf32": false,
      "autotune": false, "deterministic": false, "cuda_graphs": false, "fusion": "per_layer", "gemm": "tiled",
      "step": "fused", "fused_split": "4,1,last", "eval_every_epoch": false, "load_init": ""})");
  for (const auto& [key, value] : expected.items()) EXPECT_EQ(r["config"][key], value) << key;
  EXPECT_EQ(r["config"].size(), expected.size());
}

// The summary adds Student's t interval below 30 models, where the paper's 1.96 understates it,
// and gives only the paper's from 30 on; one model has no interval at all.
TEST(Report, TheSummaryAddsStudentsTIntervalBelowThirtyModels) {
  auto summary = [](size_t models) {
    Results results;
    std::vector<double> acc;
    for (size_t m = 0; m < models; ++m) acc.push_back(0.5 + 0.01 * double(m % 3));
    results.final_acc = {{"teacher", acc}};
    std::FILE* out = std::tmpfile();
    print_summary(out, parse({}), results, {});
    return read_and_close(out);
  };
  EXPECT_NE(summary(29).find("(95% CI, n=29; Student's t: ± "), std::string::npos) << summary(29);
  EXPECT_NE(summary(30).find("(95% CI, n=30)"), std::string::npos) << summary(30);
  EXPECT_EQ(summary(30).find("Student's t"), std::string::npos) << summary(30);
  EXPECT_NE(summary(1).find("Teacher final test accuracy: 50.0000%\n"), std::string::npos) << summary(1);
}

// The summary's "with" line names the settings of the experiment that differ from its preset's,
// as flags — and those flags, given again with the preset, make the same experiment.
TEST(Report, TheSummaryNamesTheSettingsOffThePresetAsFlagsThatRepeatThem) {
  EXPECT_EQ(flags_off_preset(parse({})), "");
  EXPECT_EQ(flags_off_preset(parse({"--preset", "paper"})), "");
  EXPECT_EQ(flags_off_preset(parse({"--seed", "3", "--models", "4", "--threads", "1", "--fusion", "none"})),
            "")
      << "the header names the seed and models; how a run computes is not what it computes";
  EXPECT_EQ(flags_off_preset(parse({"--preset", "paper", "--batch-size", "1024"})), "")
      << "the paper's own batch size is not off its preset";
  EXPECT_EQ(flags_off_preset(parse({"--preset", "paper", "--batch-size", "256"})), "--batch-size 256");
  EXPECT_EQ(flags_off_preset(parse({"--noise", "mnist"})), "--noise mnist")
      << "not --noise-set fixed, which --noise mnist implies (the report's noise_set says it)";

  const Config config = parse({"--weight-decay",
                               "1e-4",
                               "--hidden",
                               "128,64",
                               "--lr",
                               "0.001",
                               "--divergence",
                               "js",
                               "--init",
                               "normal",
                               "--cross-init",
                               "false",
                               "--temperature",
                               "2",
                               "--init-perturb",
                               "0.01",
                               "--train-samples",
                               "1000",
                               "--ghosts",
                               "5",
                               "--epochs-teacher",
                               "2",
                               "--noise-set",
                               "fixed",
                               "--all-logit-arms",
                               "true"});
  const std::string text = flags_off_preset(config);
  EXPECT_EQ(text,
            "--ghosts 5 --hidden 128,64 --lr 0.001 --epochs-teacher 2 --temperature 2.0 --divergence js "
            "--init normal --noise-set fixed --weight-decay 0.0001 --init-perturb 0.01 --cross-init false "
            "--all-logit-arms true --train-samples 1000");
  EXPECT_EQ(config_json(parse_words(text)), config_json(config)) << text;

  // The init file by its absolute path (the run's from any folder), quoted as a shell reads it.
  subliminal::test::TempDir dir;
  const std::filesystem::path root = std::filesystem::canonical(dir.path());  // $TMPDIR may be a link
  const std::string plain = (root / "init.st").string(), odd = (root / "my init's.st").string();
  EXPECT_EQ(flags_off_preset(parse({"--load-init", plain.c_str()})), "--load-init " + plain);
  EXPECT_EQ(flags_off_preset(parse({"--load-init", odd.c_str()})),
            "--load-init '" + root.string() + "/my init'\\''s.st'");
  {
    const std::filesystem::path here = std::filesystem::current_path();
    std::filesystem::current_path(dir.path());
    const std::string relative = flags_off_preset(parse({"--load-init", "init.st"}));
    std::filesystem::current_path(here);
    EXPECT_EQ(relative, "--load-init " + plain);
  }
}

// The distillation's first line says what the students learn on: noise (the notebook's words), or
// with --noise mnist the training images themselves.
TEST(Report, TheDistillationLineNamesTheStudentsInputs) {
  for (const bool real_images : {false, true}) {
    std::FILE* out = std::tmpfile();
    {
      ConsoleObserver console(out, false, Divergence::kl, real_images);
      console.phase_begins("Distill", 1, 1);
      console.phase_ends();
    }
    const std::string text = read_and_close(out);
    EXPECT_EQ(text,
              real_images ? "Distilling students on MNIST images...\n" : "Distilling students on noise...\n");
  }
}

// The students' epoch lines name the loss --divergence chose: "kl=" with the notebook's four
// decimals, "js=" (no line of the notebook's, and small) with significant digits.
TEST(Report, TheStudentsEpochLineNamesTheDivergence) {
  for (const auto& [divergence, loss] :
       {std::pair{Divergence::kl, "kl=0.2500"}, std::pair{Divergence::js, "js=6.100e-05"}}) {
    std::FILE* out = std::tmpfile();
    {
      ConsoleObserver console(out, false, divergence);
      console.arm_epoch({"student", "Student", true, false},
                        {2, {divergence == Divergence::kl ? 0.25 : 6.1e-5}, {0.5}}, 5);
    }
    const std::string text = read_and_close(out);
    EXPECT_EQ(text, std::string("[Student] epoch=2 ") + loss + " test_acc=50.0000%\n");
  }
}

// Each flag's own bounds: the smallest and largest values it takes are read, one past them is
// refused (test_cli.cpp shows the messages).
TEST(Numbers, EachFlagsBoundsAreReadAndOnePastRefused) {
  EXPECT_EQ(parse({"--ghosts", "2"}).ghosts, 2);
  EXPECT_EQ(parse({"--batch-size", "1"}).batch_size, 1);
  EXPECT_EQ(parse({"--batch-size", "16777216"}).batch_size, 16777216);
  EXPECT_EQ(parse({"--models", "100000"}).models, 100000);
  EXPECT_EQ(parse({"--hidden", "1,65536"}).hidden, (std::vector<int64_t>{1, 65536}));
  EXPECT_EQ(parse({"--train-samples", "0"}).train_samples, 0);
  EXPECT_EQ(parse({"--threads", "0"}).threads, 0);
  EXPECT_EQ(parse({"--threads", "1024"}).threads, 1024);
  EXPECT_EQ(parse({"--epochs-teacher", "0"}).epochs_teacher, 0);
  // float32's largest and smallest normal numbers, exactly.
  EXPECT_EQ(parse({"--temperature", "3.4028234663852886e38"}).temperature, 3.4028234663852886e38);
  EXPECT_EQ(parse({"--lr", "1.1754943508222875e-38"}).lr, 1.1754943508222875e-38);
  for (const std::vector<const char*>& past : {std::vector<const char*>{"--ghosts", "1"},
                                               {"--batch-size", "16777217"},
                                               {"--models", "100001"},
                                               {"--hidden", "65537"},
                                               {"--threads", "1025"},
                                               {"--temperature", "3.40282347e38"},
                                               {"--lr", "1.1754943e-38"}})
    EXPECT_THROW(parse(past), UsageError) << past[0] << " " << past[1];
}

// ---- Sweeps on a made-up MNIST -----------------------------------------------------------------------

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// A sweep with these flags and no training, so that each configuration takes milliseconds, its
// rows under `prefix`. Returns what it printed.
std::string sweep_with(const std::string& prefix, std::vector<const char*> flags) {
  // No training, for speed — but one distillation epoch where a flag or key shapes distillation,
  // which --epochs-distill 0 refuses as changing nothing.
  const bool distills = std::any_of(flags.begin(), flags.end(), [](const char* flag) {
    const std::string text = flag;
    for (const char* key : {"temperature", "divergence", "weight-decay", "noise"})
      if (text.starts_with(key) || text.starts_with(std::string("--") + key)) return true;
    return false;
  });
  std::vector<const char*> args = {"--epochs-teacher",   "0",           "--epochs-distill",
                                   distills ? "1" : "0", "--sweep-out", prefix.c_str()};
  args.insert(args.end(), flags.begin(), flags.end());
  // small_run's --hidden 8, unless the sweep sets --hidden (both would be refused).
  const bool sweeps_hidden = std::any_of(
      flags.begin(), flags.end(), [](const char* flag) { return std::string(flag).starts_with("hidden="); });
  if (sweeps_hidden) args.insert(args.begin(), {"--batch-size", "4", "--no-progress"});
  std::FILE* out = std::tmpfile();
  run_sweep(sweeps_hidden ? parse(args) : small_run(args), made_up_mnist(8, 200), Device::cpu, out);
  return read_and_close(out);
}

// A sweep of lr=1e-3,2e-3, plus `extra` flags.
std::string sweep(const std::string& prefix, std::vector<const char*> extra = {}) {
  extra.insert(extra.begin(), {"--sweep", "lr=1e-3,2e-3"});
  return sweep_with(prefix, extra);
}

// A configuration counts as done only with all its arms' rows (reference, teacher, two students):
// one row short, it runs again. Neither --eval-every-epoch (it changes no row) nor zero bytes a
// crash left at the end of the file stop a sweep from resuming.
TEST(SweepResume, AConfigurationIsDoneOnlyWithEveryArmsRow) {
  subliminal::test::TempDir dir;
  const std::string prefix = (dir / "rows").string(), jsonl = prefix + ".jsonl";
  sweep(prefix);
  const std::vector<std::string> rows = lines_of(subliminal::test::read_text(jsonl));
  ASSERT_EQ(rows.size(), 8u);
  std::string all_but_last;
  for (size_t i = 0; i + 1 < rows.size(); ++i) all_but_last += rows[i] + "\n";
  subliminal::test::write_text(jsonl, all_but_last);
  std::string printed = sweep(prefix);
  EXPECT_NE(printed.find("(1 already done)"), std::string::npos) << printed;
  EXPECT_NE(printed.find("lr=2e-3:"), std::string::npos) << printed;
  EXPECT_EQ(lines_of(subliminal::test::read_text(jsonl)).size(), 8u);

  printed = sweep(prefix, {"--eval-every-epoch", "false"});
  EXPECT_NE(printed.find("(2 already done)"), std::string::npos) << printed;

  const std::string whole = subliminal::test::read_text(jsonl);
  subliminal::test::write_text(jsonl, whole + std::string(12, '\0'));
  printed = sweep(prefix);
  EXPECT_NE(printed.find("(2 already done)"), std::string::npos) << printed;
  EXPECT_EQ(subliminal::test::read_text(jsonl), whole);
}

// A configuration is done when each of its arms has a row — not when as many rows are there: a
// row of another arm (an edited file) does not stand in for a missing one. An arm's name with a
// comma is quoted in the CSV like the configuration's.
TEST(SweepResume, AConfigurationIsDoneWithEachOfItsArmsNotWithAsManyRows) {
  subliminal::test::TempDir dir;
  const std::string prefix = (dir / "rows").string(), jsonl = prefix + ".jsonl";
  sweep(prefix);
  std::string edited;  // lr=2e-3's cross_init row renamed; lr=1e-3, whole, given a row more
  for (const std::string& line : lines_of(subliminal::test::read_text(jsonl))) {
    nlohmann::json row = nlohmann::json::parse(line);
    if (row["config"] == "lr=2e-3" && row["arm"] == "cross_init") row["arm"] = "bogus";
    edited += row.dump() + "\n";
    if (row["config"] == "lr=1e-3" && row["arm"] == "cross_init") {
      row["arm"] = "bogus, edited";
      edited += row.dump() + "\n";
    }
  }
  subliminal::test::write_text(jsonl, edited);
  const std::string printed = sweep(prefix);
  EXPECT_NE(printed.find("(1 already done)"), std::string::npos) << printed;
  EXPECT_NE(printed.find("lr=2e-3:"), std::string::npos) << "lr=2e-3 lacked its cross_init row: " << printed;
  EXPECT_NE(subliminal::test::read_text(prefix + ".csv").find("\nlr=1e-3,\"bogus, edited\","),
            std::string::npos);
}

// A row whose settings name a flag a sweep cannot vary (an edited file: --threads is under the
// report's device, not its config) is refused naming the key, where it used to end in an
// internal error (a JSON lookup of a column the config does not have).
TEST(SweepResume, ARowSettingAKeyNoSweepVariesIsRefused) {
  subliminal::test::TempDir dir;
  const std::string prefix = (dir / "rows").string(), jsonl = prefix + ".jsonl";
  sweep(prefix);
  std::string edited;
  for (const std::string& line : lines_of(subliminal::test::read_text(jsonl))) {
    nlohmann::json row = nlohmann::json::parse(line);
    if (edited.empty()) row["settings"]["threads"] = "1";
    edited += row.dump() + "\n";
  }
  subliminal::test::write_text(jsonl, edited);
  try {
    sweep(prefix);
    ADD_FAILURE() << "a row setting --threads was taken";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find(
                  "has settings this sweep cannot read (\"threads\" is not a key --sweep takes)"),
              std::string::npos)
        << e.what();
  }
  EXPECT_EQ(subliminal::test::read_text(jsonl), edited);
}

// Rows from --load-init carry the file's contents (size and CRC-32): a sweep resumed after the
// file was replaced by another init is refused, naming both, where the path alone — all the
// base holds — let it mix rows of two inits. The same file resumes.
TEST(SweepResume, RowsFromAReplacedInitFileAreRefused) {
  subliminal::test::TempDir dir;
  const std::string prefix = (dir / "rows").string(), init = (dir / "init.st").string();
  save_init(init, init_of(small_run({}), {5}, 0), false, 0, "torch");
  const std::string made_with = init_file_fingerprint(init);
  sweep(prefix, {"--load-init", init.c_str()});
  for (const std::string& line : lines_of(subliminal::test::read_text(prefix + ".jsonl")))
    EXPECT_EQ(nlohmann::json::parse(line)["init_file"], made_with);
  EXPECT_NE(sweep(prefix, {"--load-init", init.c_str()}).find("(2 already done)"), std::string::npos);

  save_init(init, init_of(small_run({}), {6}, 0), true, 0, "torch");
  const std::string before = subliminal::test::read_text(prefix + ".jsonl");
  try {
    sweep(prefix, {"--load-init", init.c_str()});
    ADD_FAILURE() << "a sweep resumed from a replaced init file";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find(": made from another --load-init file (\"" + made_with +
                                         "\"; this one's is \"" + init_file_fingerprint(init) + "\")"),
              std::string::npos)
        << e.what();
  }
  EXPECT_EQ(subliminal::test::read_text(prefix + ".jsonl"), before);
}

// Each configuration reads --load-init again: a file replaced while the sweep runs stops it, and
// no row claims the first file for a run that read the second (they used to: every row named the
// file the sweep began with). The reference arm (the untrained init's accuracy) shows which
// init a row's run read.
TEST(SweepResume, AnInitFileReplacedDuringTheSweepStopsIt) {
  subliminal::test::TempDir dir;
  const std::string prefix = (dir / "rows").string(), init = (dir / "init.st").string(),
                    other = (dir / "other.st").string();
  const Config shape = parse({"--hidden", "64", "--no-progress"});
  save_init(init, init_of(shape, {5}, 0), false, 0, "torch");
  save_init(other, init_of(shape, {6}, 0), false, 0, "torch");
  const std::string made_with = init_file_fingerprint(init);
  std::atomic<bool> done{false};
  std::thread replacer([&] {  // once the first configuration's rows are there, the file changes
    while (!done && subliminal::test::read_text(prefix + ".jsonl").empty())
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    std::filesystem::rename(other, init);
  });
  std::FILE* out = std::tmpfile();
  bool stopped = false;
  try {
    run_sweep(parse({"--hidden", "64", "--batch-size", "32", "--no-progress", "--epochs-teacher", "1",
                     "--epochs-distill", "0", "--load-init", init.c_str(), "--sweep",
                     "lr=1e-3,2e-3,3e-3,4e-3,5e-3,6e-3,7e-3,8e-3", "--sweep-out", prefix.c_str()}),
              made_up_mnist(4000, 200), Device::cpu, out);
  } catch (const InputError& e) {
    stopped = true;
    EXPECT_NE(std::string(e.what()).find(" changed while the sweep ran (\"" + made_with + "\" when it began"),
              std::string::npos)
        << e.what();
  }
  done = true;
  replacer.join();
  std::fclose(out);
  EXPECT_TRUE(stopped) << "the sweep ended before the file changed: make its configurations longer";
  std::set<double> references;
  for (const std::string& line : lines_of(subliminal::test::read_text(prefix + ".jsonl"))) {
    const nlohmann::json row = nlohmann::json::parse(line);
    EXPECT_EQ(row["init_file"], made_with);
    if (row["arm"] == "reference") references.insert(row["test_acc"].get<double>());
  }
  EXPECT_EQ(references.size(), 1u) << "rows from two inits";
}

// At --epochs-distill 0 the distillation's settings change nothing: a grid crossing
// epochs-distill=0,1 with temperature=1,2 runs the 0-epoch experiment once (it ran it twice) and
// writes its results under both configurations, saying so.
TEST(Sweep, ConfigurationsThatDifferOnlyInWhatDoesNotDistilRunOnce) {
  subliminal::test::TempDir dir;
  const std::string prefix = (dir / "rows").string();
  std::FILE* out = std::tmpfile();
  run_sweep(small_run({"--epochs-teacher", "1", "--sweep", "epochs-distill=0,1", "--sweep", "temperature=1,2",
                       "--sweep-out", prefix.c_str()}),
            made_up_mnist(8, 200), Device::cpu, out);
  const std::string printed = read_and_close(out);
  EXPECT_NE(printed.find("(the run of epochs-distill=0;temperature=1: nothing distils)"), std::string::npos)
      << printed;
  std::map<std::string, nlohmann::json> per_model;  // config → its student row's per-model accuracies
  for (const std::string& line : lines_of(subliminal::test::read_text(prefix + ".jsonl"))) {
    const nlohmann::json row = nlohmann::json::parse(line);
    if (row["arm"] == "student") per_model[row["config"].get<std::string>()] = row["per_model"];
  }
  ASSERT_EQ(per_model.size(), 4u);
  EXPECT_EQ(per_model["epochs-distill=0;temperature=2"], per_model["epochs-distill=0;temperature=1"]);
}

// Rows carry the data they were made from: a sweep resumed on other data (here MNIST-shaped data
// drawn from another seed; in life another copy, or Fashion-MNIST in the same format) is refused,
// naming both, where it used to mix the two without a word.
TEST(SweepResume, RowsMadeFromOtherDataAreRefused) {
  subliminal::test::TempDir dir;
  const std::string prefix = (dir / "rows").string();
  sweep(prefix);
  const std::string before = subliminal::test::read_text(prefix + ".jsonl");
  data::Mnist other = made_up_mnist(8, 200);
  other.train.labels[0] = uint8_t((other.train.labels[0] + 1) % 10);  // one label differs
  std::FILE* out = std::tmpfile();
  try {
    run_sweep(small_run({"--epochs-teacher", "0", "--epochs-distill", "0", "--sweep-out", prefix.c_str(),
                         "--sweep", "lr=1e-3,2e-3,3e-3"}),
              other, Device::cpu, out);
    ADD_FAILURE() << "a sweep resumed on other data";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find(": made from other data (\"" +
                                         data::mnist_fingerprint(made_up_mnist(8, 200)) +
                                         "\"; this run's is \"" + data::mnist_fingerprint(other) + "\")"),
              std::string::npos)
        << e.what();
  }
  std::fclose(out);
  EXPECT_EQ(subliminal::test::read_text(prefix + ".jsonl"), before);
}

// On the CPU the GEMMs' slabs follow --threads, so rows made with other threads may differ in the
// last bits: resuming with other --threads is allowed and said, as resuming on another device is.
TEST(SweepResume, RowsMadeWithOtherThreadsAreSaid) {
  struct ThreadsAfter {
    int threads = cpu_threads();
    ~ThreadsAfter() { set_cpu_threads(threads); }
  } threads_after;
  subliminal::test::TempDir dir;
  const std::string prefix = (dir / "rows").string();
  set_cpu_threads(1);
  sweep(prefix);
  set_cpu_threads(2);
  const std::string printed = sweep_with(prefix, {"--sweep", "lr=1e-3,2e-3,3e-3"});
  const std::string device = device_description(Device::cpu);
  EXPECT_NE(printed.find("Sweep: note: rows already there were made on " + device +
                         " with 1 thread, the rest run on " + device + " with 2 threads"),
            std::string::npos)
      << printed;
}

// A sweep's rows go to the files it opened; were the .jsonl removed under it (its folder deleted,
// the file replaced), the rows after would vanish. The sweep stops, exit 2, naming the file, and
// does not print the configuration it could not record. (Here the file goes when the sweep prints
// its first line, after it has opened its files.)
TEST(SweepResume, AFileRemovedUnderASweepStopsIt) {
  subliminal::test::TempDir dir;
  static std::string jsonl;  // for the stream's write function, which takes no closure
  jsonl = (dir / "rows").string() + ".jsonl";
  static std::string printed;
  printed.clear();
  cookie_io_functions_t removing = {};
  removing.write = [](void*, const char* text, size_t size) -> ssize_t {
    if (printed.empty()) std::filesystem::remove(jsonl);
    printed.append(text, size);
    return ssize_t(size);
  };
  std::FILE* out = fopencookie(nullptr, "w", removing);
  ASSERT_NE(out, nullptr);
  std::setvbuf(out, nullptr, _IONBF, 0);
  try {
    run_sweep(small_run({"--epochs-teacher", "0", "--epochs-distill", "0", "--sweep-out",
                         (dir / "rows").string().c_str(), "--sweep", "lr=1e-3,2e-3"}),
              made_up_mnist(8, 200), Device::cpu, out);
    ADD_FAILURE() << "the sweep finished without its .jsonl";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find(jsonl +
                                         " was removed or replaced during the sweep, so the rows of lr=1e-3 "
                                         "are not in it"),
              std::string::npos)
        << e.what();
  }
  std::fclose(out);
  EXPECT_EQ(printed.find("lr=1e-3:"), std::string::npos) << printed;
}

// The CSV is the JSONL's table: each column from its own field (here with 2 models, so that std
// and the intervals are not 0), a configuration id with a comma quoted, and a row written before
// ci95_t existed given Student's t's from its std and n. A CSV holding only its header is no
// rows to lose.
TEST(SweepResume, TheCsvIsTheJsonlsTable) {
  subliminal::test::TempDir dir;
  const std::string prefix = (dir / "rows").string();
  subliminal::test::write_text(prefix + ".csv", "config,arm,test_acc,ci95,std,n,seconds,ci95_t,lr,hidden\n");
  sweep(prefix, {"--models", "2", "--sweep", "hidden=8,8;8"});
  std::vector<std::string> rows = lines_of(subliminal::test::read_text(prefix + ".jsonl"));
  ASSERT_EQ(rows.size(), 16u);
  nlohmann::json old_row = nlohmann::json::parse(rows[0]);
  old_row.erase("ci95_t");
  old_row["config"] = "lr=5e-4;hidden=8";
  old_row["settings"] = {{"lr", "5e-4"}, {"hidden", "8"}};
  old_row["n"] = 3;
  old_row["std"] = 0.1;
  subliminal::test::write_text(prefix + ".jsonl",
                               subliminal::test::read_text(prefix + ".jsonl") + old_row.dump() + "\n");
  sweep(prefix, {"--models", "2", "--sweep", "hidden=8,8;8"});
  rows = lines_of(subliminal::test::read_text(prefix + ".jsonl"));
  const std::vector<std::string> csv = lines_of(subliminal::test::read_text(prefix + ".csv"));
  ASSERT_EQ(rows.size(), 17u);
  ASSERT_EQ(csv.size(), 18u);
  // A column for each swept key, the value as the run read it (lr=1e-3 is 0.001, the old row's
  // lr=5e-4 0.0005).
  EXPECT_EQ(csv[0], "config,arm,test_acc,ci95,std,n,seconds,ci95_t,lr,hidden");
  int checked_spread = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    const nlohmann::json row = nlohmann::json::parse(rows[i]);
    std::string id = row["config"], line = csv[i + 1];
    const std::string quoted_id = id.find(',') == std::string::npos ? id : "\"" + id + "\"";
    ASSERT_EQ(line.compare(0, quoted_id.size() + 1, quoted_id + ","), 0) << line;
    const std::string hidden = row["settings"]["hidden"];
    const std::map<std::string, std::string> lr_read = {
        {"1e-3", "0.001"}, {"2e-3", "0.002"}, {"5e-4", "0.0005"}};
    const std::string settings = lr_read.at(row["settings"]["lr"]) + "," +
                                 (hidden.find(',') == std::string::npos ? hidden : "\"" + hidden + "\"");
    ASSERT_TRUE(line.ends_with("," + settings)) << line << " does not end with " << settings;
    line.resize(line.size() - settings.size() - 1);
    std::vector<std::string> fields;
    std::istringstream rest(line.substr(quoted_id.size() + 1));
    for (std::string field; std::getline(rest, field, ',');) fields.push_back(field);
    ASSERT_EQ(fields.size(), 7u) << line;
    EXPECT_EQ(fields[0], row["arm"].get<std::string>()) << line;
    const double n = row["n"], std = row["std"];
    const double ci95_t = row.contains("ci95_t") ? row["ci95_t"].get<double>()
                                                 : student_t_975(int64_t(n) - 1) * std / std::sqrt(n);
    const double expected[] = {row["test_acc"].get<double>(),
                               row["ci95"].get<double>(),
                               std,
                               n,
                               row["seconds"].get<double>(),
                               ci95_t};
    for (size_t k = 0; k < 6; ++k)
      EXPECT_NEAR(std::stod(fields[k + 1]), expected[k], 1e-5 * std::abs(expected[k]) + 1e-12)
          << "column " << k + 3 << " of " << line;
    checked_spread += std > 0;
  }
  EXPECT_GT(checked_spread, 1) << "every row has std 0: the columns were not told apart";
}

// A swept --noise leaves in the settings its rows share the --noise-set it was given: --noise-set
// fresh and fixed make different runs of noise=uniform, so the rows of one sweep are not results
// of the other. (A base --noise mnist, whose noise is the fixed set whatever --noise-set says, once
// made the shared settings say "fixed" for both; a --noise beside a swept one is now refused.)
TEST(SweepResume, ASweepOverNoiseKeepsItsNoiseSet) {
  subliminal::test::TempDir dir;
  const std::string prefix = (dir / "rows").string();
  sweep(prefix, {"--noise-set", "fresh", "--sweep", "noise=uniform,gaussian"});
  try {
    sweep(prefix, {"--noise-set", "fixed", "--sweep", "noise=uniform,gaussian"});
    ADD_FAILURE() << "a sweep with --noise-set fixed resumed one with --noise-set fresh";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("noise_set: \"fresh\" vs \"fixed\""), std::string::npos) << e.what();
  }
  EXPECT_NE(
      sweep(prefix, {"--noise-set", "fresh", "--sweep", "noise=uniform,gaussian"}).find("(4 already done)"),
      std::string::npos);
}

// Rows written before --divergence existed have no "divergence" among their shared settings;
// they distilled with KL, so a KL sweep resumes them and a JS one does not. --divergence itself
// can be swept.
TEST(SweepResume, RowsFromBeforeDivergenceAreKlRows) {
  subliminal::test::TempDir dir;
  const std::string prefix = (dir / "rows").string(), jsonl = prefix + ".jsonl";
  sweep(prefix);
  std::string old_rows;
  for (std::string row : lines_of(subliminal::test::read_text(jsonl))) {
    const size_t at = row.find("\"divergence\":\"kl\",");
    ASSERT_NE(at, std::string::npos) << row;
    old_rows += row.erase(at, std::string("\"divergence\":\"kl\",").size()) + "\n";
  }
  subliminal::test::write_text(jsonl, old_rows);
  try {
    sweep(prefix, {"--divergence", "js"});
    ADD_FAILURE() << "a JS sweep resumed rows that distilled with KL";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("divergence: \"kl\" vs \"js\""), std::string::npos) << e.what();
  }
  EXPECT_NE(sweep(prefix).find("(2 already done)"), std::string::npos);
  // A sweep over divergence does not take them for its kl configurations: refused.
  try {
    sweep(prefix, {"--sweep", "divergence=kl,js"});
    ADD_FAILURE() << "a sweep over divergence resumed rows that predate it";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("divergence: \"kl\" vs (none)"), std::string::npos) << e.what();
  }

  const std::string swept = (dir / "swept").string();
  const std::string printed = sweep_with(swept, {"--sweep", "divergence=kl,js"});
  EXPECT_NE(printed.find("divergence=js:"), std::string::npos) << printed;
  EXPECT_EQ(lines_of(subliminal::test::read_text(swept + ".jsonl")).size(), 8u);
  // Rows of a sweep over divergence lack it in their base too, but name it in their settings:
  // they are not rows of a sweep that leaves it at KL.
  try {
    sweep_with(swept, {"--sweep", "lr=1e-3,2e-3"});
    ADD_FAILURE() << "a sweep at KL resumed the rows of a sweep over divergence";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("divergence: (none) vs \"kl\""), std::string::npos) << e.what();
  }
}

// A configuration is known by its settings, not by how its id is spelt: the same grid with the
// --sweep flags in another order and the values written otherwise (lr=0.002 for 2e-3) resumes
// every configuration instead of running it again beside the old rows. Rows of one configuration
// under two spellings (an older subliminal kept both) are one configuration's: the last of each
// arm is kept.
TEST(SweepResume, AConfigurationIsKnownByItsSettingsNotItsSpelling) {
  subliminal::test::TempDir dir;
  const std::string prefix = (dir / "rows").string(), jsonl = prefix + ".jsonl";
  sweep(prefix, {"--sweep", "seed=1,2"});
  const std::string rows = subliminal::test::read_text(jsonl);
  ASSERT_EQ(lines_of(rows).size(), 16u);  // 4 configurations × 4 arms

  std::string printed = sweep_with(prefix, {"--sweep", "seed=2,1", "--sweep", "lr=0.002,0.001"});
  EXPECT_NE(printed.find("4 configurations (4 already done)"), std::string::npos) << printed;
  EXPECT_TRUE(subliminal::test::read_text(jsonl) == rows) << "rows were run again, or rewritten";

  std::string respelt;  // lr=1e-3;seed=1's rows again, as "seed=1;lr=0.001"
  for (const std::string& line : lines_of(rows)) {
    nlohmann::json row = nlohmann::json::parse(line);
    if (row["config"] != "lr=1e-3;seed=1") continue;
    row["config"] = "seed=1;lr=0.001";
    row["settings"] = {{"seed", "1"}, {"lr", "0.001"}};
    respelt += row.dump() + "\n";
  }
  ASSERT_EQ(lines_of(respelt).size(), 4u);
  subliminal::test::write_text(jsonl, rows + respelt);
  printed = sweep(prefix, {"--sweep", "seed=1,2"});
  EXPECT_NE(printed.find("(4 already done)"), std::string::npos) << printed;
  const std::string kept = subliminal::test::read_text(jsonl);
  EXPECT_EQ(lines_of(kept).size(), 16u);
  EXPECT_EQ(kept.find("\"lr=1e-3;seed=1\""), std::string::npos) << "the earlier spelling's rows were kept";
  EXPECT_NE(kept.find("\"seed=1;lr=0.001\""), std::string::npos) << "the later spelling's rows were dropped";
}

// Each row names the device it ran on (and the build that made it); resuming on another device (or
// another CPU) is allowed and said, since the rows then differ in their last digits for that
// reason alone.
TEST(SweepResume, RowsMadeOnAnotherDeviceAreSaidWhenTheRestRunHere) {
  subliminal::test::TempDir dir;
  const std::string prefix = (dir / "rows").string(), jsonl = prefix + ".jsonl";
  sweep(prefix);
  std::string elsewhere;  // lr=1e-3's rows as if made on a GPU; lr=2e-3's gone, to run again here
  for (const std::string& line : lines_of(subliminal::test::read_text(jsonl))) {
    nlohmann::json row = nlohmann::json::parse(line);
    EXPECT_EQ(row["device"], device_description(Device::cpu)) << line;
    EXPECT_EQ(row["commit"], subliminal::app::kBuildCommit) << line;
    if (row["config"] != "lr=1e-3") continue;
    row["device"] = "NVIDIA H100 80GB HBM3";
    row.erase("cpu_threads");  // as a GPU's row has none
    elsewhere += row.dump() + "\n";
  }
  subliminal::test::write_text(jsonl, elsewhere);
  const std::string printed = sweep(prefix);
  EXPECT_NE(printed.find("(1 already done)"), std::string::npos) << printed;
  EXPECT_NE(
      printed.find("Sweep: note: rows already there were made on NVIDIA H100 80GB HBM3, the rest run on " +
                   device_description(Device::cpu)),
      std::string::npos)
      << printed;
  EXPECT_EQ(sweep(prefix).find("note"), std::string::npos);  // nothing left to run: nothing to say
}

// And the build that made it: rows made by another build (another commit, or uncommitted
// changes) may differ for more than rounding, so resuming with this one says so. A row that names
// no build (written before rows did) is not counted.
TEST(SweepResume, RowsMadeByAnotherBuildAreSaidWhenTheRestRunHere) {
  subliminal::test::TempDir dir;
  const std::string prefix = (dir / "rows").string(), jsonl = prefix + ".jsonl";
  sweep(prefix);
  std::string older, unnamed;  // lr=1e-3's rows as another build's, or naming none; lr=2e-3's gone
  for (const std::string& line : lines_of(subliminal::test::read_text(jsonl))) {
    nlohmann::json row = nlohmann::json::parse(line);
    if (row["config"] != "lr=1e-3") continue;
    row["commit"] = "0123456789ab-dirty";
    older += row.dump() + "\n";
    row.erase("commit");
    unnamed += row.dump() + "\n";
  }
  subliminal::test::write_text(jsonl, older);
  const std::string printed = sweep(prefix);
  EXPECT_NE(printed.find(
                "Sweep: note: rows already there were made by the build of 0123456789ab-dirty, the rest by "
                "this one, " +
                std::string(subliminal::app::kBuildCommit) + "\n"),
            std::string::npos)
      << printed;
  subliminal::test::write_text(jsonl, unnamed);
  const std::string quiet = sweep(prefix);
  EXPECT_NE(quiet.find("(1 already done)"), std::string::npos) << quiet;
  EXPECT_EQ(quiet.find("made by"), std::string::npos) << quiet;
}

// The sweep's first line counts the grid's configurations, and those already done.
TEST(SweepResume, TheFirstLineCountsTheConfigurations) {
  subliminal::test::TempDir dir;
  const std::string prefix = (dir / "rows").string();
  EXPECT_EQ(sweep_with(prefix, {"--sweep", "lr=1e-3"}).rfind("Sweep: 1 configuration (0 already done) → ", 0),
            0u);
  EXPECT_EQ(
      sweep_with(prefix, {"--sweep", "lr=1e-3,2e-3"}).rfind("Sweep: 2 configurations (1 already done) → ", 0),
      0u);
}

// A sweep's bar follows the running configuration's training steps, labelled with it: a bar
// counting configurations stood still ("[Sweep] 0/2 steps  0.0 s") for the whole of each, minutes
// at the notebook's size. The bar is drawn on stderr, here a pseudo-terminal for the sweep's time.
TEST(SweepProgress, TheBarFollowsTheRunningConfigurationsSteps) {
  const int terminal = posix_openpt(O_RDWR | O_NOCTTY | O_NONBLOCK);
  if (terminal < 0 || grantpt(terminal) != 0 || unlockpt(terminal) != 0)
    GTEST_SKIP() << "no pseudo-terminal here (posix_openpt)";
  const int screen = open(ptsname(terminal), O_WRONLY | O_NOCTTY);
  ASSERT_GE(screen, 0);
  subliminal::test::TempDir dir;
  const std::string prefix = (dir / "rows").string();
  const Config config =
      parse({"--hidden", "8", "--batch-size", "4", "--epochs-teacher", "1", "--epochs-distill", "1",
             "--sweep", "lr=1e-3,2e-3", "--sweep-out", prefix.c_str()});
  std::FILE* out = std::tmpfile();
  std::fflush(stderr);
  const int saved_stderr = dup(2);
  dup2(screen, 2);
  try {
    run_sweep(config, made_up_mnist(8, 200), Device::cpu, out);
  } catch (const std::exception& e) {
    ADD_FAILURE() << e.what();
  }
  dup2(saved_stderr, 2);
  close(saved_stderr);
  close(screen);
  std::fclose(out);
  std::string text;  // what reached the screen: every write is there once the sweep is back
  for (pollfd ready{terminal, POLLIN, 0}; poll(&ready, 1, 200) > 0;) {
    char chunk[4096];
    const ssize_t n = read(terminal, chunk, sizeof chunk);
    if (n <= 0) break;
    text.append(chunk, size_t(n));
  }
  close(terminal);
  for (const char* bar : {"[Sweep 1/2 lr=1e-3: Teacher]", "[Sweep 1/2 lr=1e-3: Distill]",
                          "[Sweep 2/2 lr=2e-3: Teacher]", "[Sweep 2/2 lr=2e-3: Distill]"})
    EXPECT_NE(text.find(bar), std::string::npos) << bar << " in " << text;
  EXPECT_NE(text.find("2/2 steps"), std::string::npos) << text;  // 8 images, batch 4: 2 steps an epoch
}

// A PREFIX.lock is taken over (and removed at the end) when it is empty — a sweep killed before
// it wrote its mark — or marked; not when it has other names (removing it would leave the other)
// or is not a regular file.
TEST(SweepLock, OnlyAnEmptyOrMarkedRegularFileIsTakenOver) {
  subliminal::test::TempDir dir;
  const std::string prefix = (dir / "w").string(), lock = prefix + ".lock";
  subliminal::test::write_text(lock, "");
  EXPECT_NO_THROW(check_sweep_lock(prefix));
  sweep(prefix);
  EXPECT_FALSE(std::filesystem::exists(lock));
  auto refusal = [&] {
    try {
      check_sweep_lock(prefix);
    } catch (const InputError& e) {
      return std::string(e.what());
    }
    return std::string("(taken over)");
  };
  subliminal::test::write_text(lock, "subliminal sweep lock\n");
  EXPECT_NO_THROW(check_sweep_lock(prefix));
  std::filesystem::create_hard_link(lock, dir / "other");
  EXPECT_NE(refusal().find(lock + " has other names"), std::string::npos) << refusal();
  std::filesystem::remove(lock);
  ASSERT_EQ(mkfifo(lock.c_str(), 0600), 0);
  EXPECT_NE(refusal().find(lock + " is not a regular file"), std::string::npos) << refusal();
}

// Two prefixes whose rows files are one file through a symbolic link: a sweep on the second
// takes the first's lock too, so while a sweep on the first runs (here: its lock held) the second
// is refused and writes nothing, where both used to append to the one file. With the first idle,
// the second runs, appends where the link ends, and leaves no lock behind.
TEST(SweepLock, RowsFilesLinkedToAnotherPrefixsShareItsLock) {
  namespace fs = std::filesystem;
  subliminal::test::TempDir dir;
  const std::string first = (dir / "first").string(), second = (dir / "second").string();
  sweep(first);
  const std::string rows = subliminal::test::read_text(first + ".jsonl");
  fs::create_symlink(first + ".jsonl", second + ".jsonl");
  const std::string held_lock = resolved_path(first + ".lock").string();
  {
    const int held = ::open(held_lock.c_str(), O_RDWR | O_CREAT, 0644);
    ASSERT_GE(held, 0);
    ASSERT_EQ(::flock(held, LOCK_EX | LOCK_NB), 0);
    try {
      sweep(second);
      ADD_FAILURE() << "a second sweep appended to a file a running sweep holds";
    } catch (const UsageError& e) {
      EXPECT_NE(std::string(e.what()).find("--sweep-out " + second + ": in use by another sweep (it holds " +
                                           held_lock + ")"),
                std::string::npos)
          << e.what();
    }
    ::close(held);
    EXPECT_EQ(subliminal::test::read_text(first + ".jsonl"), rows);
    EXPECT_FALSE(fs::exists(second + ".lock")) << "the refused sweep left its own lock behind";
  }
  fs::remove(held_lock);
  const std::string printed = sweep(second);
  EXPECT_NE(printed.find("(2 already done)"), std::string::npos) << "resumed the linked rows: " << printed;
  EXPECT_TRUE(fs::is_symlink(second + ".jsonl"));
  EXPECT_EQ(lines_of(subliminal::test::read_text(first + ".jsonl")).size(), 8u);
  EXPECT_FALSE(fs::exists(held_lock));
  EXPECT_FALSE(fs::exists(second + ".lock"));
  // The up-front check looks beside the link's end too: someone's own file there is refused.
  subliminal::test::write_text(held_lock, "my notes\n");
  try {
    check_sweep_lock(second);
    ADD_FAILURE() << "someone's own file was taken for the linked rows' lock";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find(held_lock + " exists and its first line is not"), std::string::npos)
        << e.what();
  }
}

// A .jsonl that is a hard link of another prefix's: the sweep rewrites it before appending, so
// its rows go to a file of its own and the other prefix's file is left as it was.
TEST(SweepLock, ARowsFileHardLinkedToAnotherPrefixsGetsItsOwnFile) {
  namespace fs = std::filesystem;
  subliminal::test::TempDir dir;
  const std::string first = (dir / "first").string(), second = (dir / "second").string();
  sweep(first);
  const std::string rows = subliminal::test::read_text(first + ".jsonl");
  fs::create_hard_link(first + ".jsonl", second + ".jsonl");
  const std::string printed = sweep_with(second, {"--sweep", "lr=1e-3,2e-3,3e-3"});  // one more
  EXPECT_NE(printed.find("lr=3e-3:"), std::string::npos) << printed;
  EXPECT_EQ(subliminal::test::read_text(first + ".jsonl"), rows);
  EXPECT_EQ(fs::hard_link_count(first + ".jsonl"), 1u);
  EXPECT_EQ(lines_of(subliminal::test::read_text(second + ".jsonl")).size(), 12u);
}

// The paper's experiment at a small scale on the CPU (3 models, 12 000 training images, batch
// 256, 2 + 3 epochs): the arms come out in the paper's order — teacher > student on all logits >
// student on ghost logits > cross-init on ghost logits ≈ the untrained reference.
TEST(PaperMode, SmallRunOrdersTheArmsAsThePaperDoes) {
  if (!std::getenv("MNIST_DIR"))
    GTEST_SKIP() << "MNIST_DIR not set: the paper-mode run needs the MNIST files";
  Config config = parse({"--preset", "paper", "--models", "3", "--batch-size", "256", "--train-samples",
                         "12000", "--epochs-teacher", "2", "--epochs-distill", "3", "--no-progress"});
  const data::Mnist mnist = data::load_mnist(data::locate_mnist(""));
  Observer quiet;
  const Results results = run_experiment(config, mnist, Device::cpu, quiet);
  std::map<std::string, double> mean;
  for (const auto& [arm, acc] : results.final_acc) mean[arm] = summarize(acc).mean;
  for (const auto& [arm, m] : mean) std::cout << "[ paper    ] " << arm << " " << m << "\n";
  EXPECT_GT(mean["teacher"], mean["student_all_logits"]);
  EXPECT_GT(mean["student_all_logits"], mean["student"]);
  EXPECT_GT(mean["student"], mean["cross_init"] + 0.05);  // measured: 0.225 vs 0.097
  EXPECT_NEAR(mean["cross_init"], mean["reference"], 0.05);
  EXPECT_GT(mean["cross_init_all_logits"], mean["cross_init"]);
}

}  // namespace
