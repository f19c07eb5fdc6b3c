// tests/test_util.h — helpers shared by the engine, ops and app suites: random tensors from
// a generator independent of the engine's, a weighted-sum "loss" node, the finite-difference
// gradient check, temporary directories and running a program with its output captured.
#pragma once

#include <fcntl.h>     // open
#include <sys/wait.h>  // waitpid, WIFEXITED
#include <unistd.h>    // fork, execve, dup2

#include <algorithm>   // std::sort, std::min, std::max
#include <cerrno>      // errno, EINTR
#include <cmath>       // std::sqrt, std::abs
#include <cstdlib>     // mkdtemp
#include <filesystem>  // std::filesystem
#include <fstream>     // std::ifstream
#include <functional>  // std::function
#include <iterator>    // std::istreambuf_iterator
#include <map>         // std::map
#include <memory>      // std::make_shared
#include <random>      // std::mt19937_64: test inputs do not come from the engine's Philox
#include <sstream>     // std::ostringstream
#include <stdexcept>   // std::runtime_error
#include <string>      // std::string
#include <vector>      // std::vector

#include "tests/temp_dir.h"  // TempDir

#include <gtest/gtest.h>

#include "engine/autograd.h"  // Node, record, zero_grad, NoGradGuard
#include "engine/tensor.h"    // Tensor

extern char** environ;

namespace subliminal::test {

namespace fs = std::filesystem;

// True in a build under AddressSanitizer or ThreadSanitizer (scripts/sanitize.sh, scripts/fuzz.sh),
// which map terabytes of shadow memory up front: an address-space limit (`ulimit -v`) cannot be
// tested there.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
inline constexpr bool kSanitizer = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
inline constexpr bool kSanitizer = true;
#else
inline constexpr bool kSanitizer = false;
#endif
#else
inline constexpr bool kSanitizer = false;
#endif

// ---- Random inputs ---------------------------------------------------------------------------

// Values uniform in [lo, hi) from std::mt19937_64(seed).
inline std::vector<double> uniform_values(int64_t n, uint64_t seed, double lo = -1.0, double hi = 1.0) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  std::vector<double> v(static_cast<size_t>(n));
  for (double& x : v) x = dist(rng);
  return v;
}

// A float64 tensor of uniform values in [lo, hi).
inline Tensor random_f64(const Shape& shape, uint64_t seed, double lo = -1.0, double hi = 1.0) {
  return Tensor::from_vector(uniform_values(shape_numel(shape), seed, lo, hi), shape);
}

// A float32 tensor of uniform values in [lo, hi).
inline Tensor random_f32(const Shape& shape, uint64_t seed, double lo = -1.0, double hi = 1.0) {
  std::vector<double> d = uniform_values(shape_numel(shape), seed, lo, hi);
  return Tensor::from_vector(std::vector<float>(d.begin(), d.end()), shape);
}

// Float64 values with |x| in [0.1, 1): random sign, kept well away from ReLU's kink at 0.
inline Tensor random_away_from_zero(const Shape& shape, uint64_t seed) {
  std::vector<double> v = uniform_values(shape_numel(shape), seed, 0.1, 1.0);
  std::vector<double> sign = uniform_values(shape_numel(shape), seed + 1000003, -1.0, 1.0);
  for (size_t i = 0; i < v.size(); ++i) v[i] = sign[i] < 0 ? -v[i] : v[i];
  return Tensor::from_vector(v, shape);
}

// Labels in [0, classes) as an int32 [N, B] tensor.
inline Tensor random_labels(int64_t models, int64_t batch, int32_t classes, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, classes - 1);
  std::vector<int32_t> v(static_cast<size_t>(models * batch));
  for (int32_t& x : v) x = dist(rng);
  return Tensor::from_vector(v, {models, batch});
}

// Host copy of any floating tensor as doubles.
inline std::vector<double> values_of(const Tensor& t) {
  if (t.dtype() == DType::f64) return t.to_vector<double>();
  std::vector<float> f = t.to_vector<float>();
  return {f.begin(), f.end()};
}

// ---- A weighted sum as a loss ------------------------------------------------------------------

// L = Σ g ⊙ y, a float64 [1] tensor; backward gives dL/dy = g · dL. It turns any op's output
// into a scalar whose gradient exercises every element of the op's backward with a different
// weight (a plain sum would hide, e.g., a transposed gradient of a symmetric op).
class WeightedSumNode : public Node {
 public:
  const char* name() const override { return "test_weighted_sum"; }
  // saved = {g}; sinks = {dy}
  void backward(const Tensor& dl, std::vector<GradSink>& sinks) override {
    GradSink& dy = sinks[0];
    if (!dy.wanted()) return;
    const double scale = dl.data<double>()[0];
    const double* g = saved[0].data<double>();
    double* out = dy.target.data<double>();
    for (int64_t i = 0; i < dy.target.numel(); ++i) out[i] = (dy.accumulate ? out[i] : 0.0) + scale * g[i];
  }
};

inline double weighted_sum_value(const Tensor& y, const Tensor& g) {
  const double *a = y.data<double>(), *b = g.data<double>();
  double s = 0;
  for (int64_t i = 0; i < y.numel(); ++i) s += a[i] * b[i];
  return s;
}

inline Tensor weighted_sum(const Tensor& y, const Tensor& g) {
  Tensor loss = Tensor::full({1}, weighted_sum_value(y, g), DType::f64);
  if (any_requires_grad({y})) {
    auto node = std::make_shared<WeightedSumNode>();
    node->saved = {g};
    record(loss, node, {y});
  }
  return loss;
}

// ---- Finite-difference gradient check ----------------------------------------------------------

// Central differences in float64 on L = Σ g ⊙ f() with a fixed random g, for every element of
// every tensor in `wrt` (float64 leaves that f reads). The error is scale-free (mlpack's):
// ‖analytic − numeric‖ / ‖analytic + numeric‖. On failure the message shows the largest
// per-element differences as (got, expected) pairs.
inline ::testing::AssertionResult gradient_matches(const std::function<Tensor()>& f,
                                                   const std::vector<Tensor>& wrt, double tolerance = 1e-7,
                                                   double h = 1e-6, uint64_t g_seed = 97) {
  Tensor y = f();
  const Tensor g = random_f64(y.shape(), g_seed);
  zero_grad(wrt);  // the next backward overwrites whatever an earlier check left
  weighted_sum(y, g).backward();

  std::ostringstream report;
  bool ok = true;
  for (size_t k = 0; k < wrt.size(); ++k) {
    const Tensor& leaf = wrt[k];
    if (!leaf.has_grad()) return ::testing::AssertionFailure() << "input " << k << " received no gradient";
    const std::vector<double> analytic = leaf.grad().to_vector<double>();
    std::vector<double> numeric(analytic.size());
    double* p = leaf.data<double>();
    for (size_t i = 0; i < numeric.size(); ++i) {
      const double saved = p[i];
      NoGradGuard no_grad;
      p[i] = saved + h;
      const double plus = weighted_sum_value(f(), g);
      p[i] = saved - h;
      const double minus = weighted_sum_value(f(), g);
      p[i] = saved;
      numeric[i] = (plus - minus) / (2 * h);
    }
    double diff2 = 0, sum2 = 0, worst = 0;
    std::vector<std::pair<double, size_t>> by_error;
    for (size_t i = 0; i < numeric.size(); ++i) {
      const double d = analytic[i] - numeric[i], s = analytic[i] + numeric[i];
      diff2 += d * d;
      sum2 += s * s;
      by_error.push_back({std::abs(d), i});
      worst = std::max(worst, std::abs(d));
    }
    const double error = sum2 > 0 ? std::sqrt(diff2 / sum2) : std::sqrt(diff2);
    if (!(error <= tolerance)) {
      ok = false;
      std::sort(by_error.rbegin(), by_error.rend());
      report << "input " << k << " " << leaf.describe() << ": relative error " << error << " > " << tolerance
             << ", max |got − expected| " << worst << "; worst (got, expected):";
      for (size_t j = 0; j < std::min<size_t>(5, by_error.size()); ++j) {
        const size_t i = by_error[j].second;
        report << " [" << i << "] (" << analytic[i] << ", " << numeric[i] << ")";
      }
      report << "\n";
    }
  }
  if (ok) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << report.str();
}

// ---- Files and processes ------------------------------------------------------------------------

inline std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

inline void write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

struct ProcessResult {
  int exit_code = -1;  // -1: did not exit normally (killed by a signal)
  std::string out, err;
};

// Where a child's standard output goes: a file read back after (ProcessResult::out), a pipe
// whose reading end is already closed (as after `| head -1`), /dev/full (a full disk), or
// nowhere: descriptor 1 closed (as after `>&-`).
enum class StdoutTo { file, closed_pipe, dev_full, closed };

// Runs `program args...` in directory `cwd` with this process's environment minus the
// variables in `unset` plus those in `set`; stdout and stderr go to files, read back after.
inline ProcessResult run_process(const std::string& program, const std::vector<std::string>& args,
                                 const fs::path& cwd, const std::vector<std::string>& unset = {},
                                 const std::map<std::string, std::string>& set = {},
                                 StdoutTo stdout_to = StdoutTo::file) {
  TempDir capture;
  const std::string out_path = (capture / "stdout").string(), err_path = (capture / "stderr").string();
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e) {
    const std::string entry = *e, name = entry.substr(0, entry.find('='));
    bool drop = set.count(name) > 0;
    for (const std::string& u : unset) drop = drop || name == u;
    if (!drop) env.push_back(entry);
  }
  for (const auto& [name, value] : set) env.push_back(name + "=" + value);
  std::vector<std::string> argv_strings{program};
  argv_strings.insert(argv_strings.end(), args.begin(), args.end());
  std::vector<char*> argv, envp;
  for (std::string& a : argv_strings) argv.push_back(a.data());
  argv.push_back(nullptr);
  for (std::string& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);

  const pid_t pid = fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) {  // child: only async-signal-safe calls from here to execve
    int out = -1;
    if (stdout_to == StdoutTo::file) out = open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (stdout_to == StdoutTo::dev_full) out = open("/dev/full", O_WRONLY);
    int ends[2];
    if (stdout_to == StdoutTo::closed_pipe && pipe(ends) == 0) {
      close(ends[0]);
      out = ends[1];
    }
    const int err = open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (stdout_to == StdoutTo::closed) out = dup(err);  // a placeholder, closed below
    if (out < 0 || err < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0 || chdir(cwd.c_str()) != 0) _exit(127);
    if (stdout_to == StdoutTo::closed) close(1);
    execve(program.c_str(), argv.data(), envp.data());
    _exit(127);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) throw std::runtime_error("waitpid failed");
  }
  ProcessResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  if (stdout_to == StdoutTo::file) r.out = read_text(out_path);
  r.err = read_text(err_path);
  return r;
}

inline int count_lines(const std::string& text) {
  int n = 0;
  for (char c : text) n += c == '\n';
  if (!text.empty() && text.back() != '\n') ++n;
  return n;
}

}  // namespace subliminal::test
