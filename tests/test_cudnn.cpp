// tests/test_cudnn.cpp — the cuDNN-frontend Linear engine (ops/cudnn/) against float64 CPU loops.
//
// CPU (always runs): every graph the engine can build passes the frontend's validate().
// GPU (skipped with "no CUDA GPU: <reason>" when there is none): forward, backward_input and
// backward_weight on random inputs with odd sizes and the MNIST MLP's sizes, fp32 and TF32, outputs
// poisoned with NaN first, compared by ‖got − ref‖ / ‖ref‖. A case cuDNN cannot run (the function
// returns false) is skipped with a visible message, counted, and must leave its outputs untouched;
// the end of the run prints the count and the engine's describe_support() line.
#include <gtest/gtest.h>

#include <cuda_runtime_api.h>  // cudaMalloc, cudaMemcpy, cudaGetDeviceCount

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "ops/cudnn/cudnn_linear.h"  // subliminal::cudnn::Engine, validate_graphs_without_gpu

namespace {

using subliminal::cudnn::Engine;
using subliminal::cudnn::Options;

// ---- CPU: graph descriptions ---------------------------------------------------------------------

TEST(CudnnGraphs, EveryGraphValidatesWithoutGpu) {
  // Odd, distinct sizes so a swapped dimension cannot pass by accident.
  const auto results = subliminal::cudnn::validate_graphs_without_gpu(2, 5, 7, 3);
  ASSERT_FALSE(results.empty());
  for (const auto& [graph, status] : results) EXPECT_EQ(status, "ok") << graph;
}

TEST(CudnnGraphs, RejectsNonPositiveDimensions) {
  EXPECT_ANY_THROW(subliminal::cudnn::validate_graphs_without_gpu(1, 0, 7, 3));
}

// ---- GPU helpers ---------------------------------------------------------------------------------

// True when a CUDA device is usable; otherwise `why` says what the runtime answered.
bool gpu_available(std::string* why) {
  int count = 0;
  cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    *why = cudaGetErrorString(status);
    (void)cudaGetLastError();  // clear the sticky-free error so later calls start clean
    return false;
  }
  if (count == 0) {
    *why = "cudaGetDeviceCount returned 0";
    return false;
  }
  return true;
}

void cuda_ok(cudaError_t status, const char* what) {
  if (status != cudaSuccess) FAIL() << what << ": " << cudaGetErrorString(status);
}

// One engine for the whole run (graphs are cached across cases, as in training), plus the tally of
// unsupported cases printed at the end.
struct GpuState {
  cudaStream_t stream = nullptr;
  std::unique_ptr<Engine> engine;
  std::vector<std::string> unsupported;
  int supported = 0;
};
GpuState& gpu() {
  static GpuState state;
  return state;
}
Engine& engine() {
  GpuState& g = gpu();
  if (!g.engine) {
    if (cudaStreamCreate(&g.stream) != cudaSuccess) throw std::runtime_error("cudaStreamCreate");
    g.engine = std::make_unique<Engine>(g.stream);
  }
  return *g.engine;
}

class PrintSupport : public ::testing::Environment {
 public:
  void TearDown() override {
    GpuState& g = gpu();
    if (!g.engine) return;
    std::printf("[cudnn] %d GPU case(s) ran on cuDNN, %zu fell back (unsupported)\n", g.supported,
                g.unsupported.size());
    for (const std::string& c : g.unsupported) std::printf("[cudnn]   unsupported: %s\n", c.c_str());
    std::printf("[cudnn] %s\n", g.engine->describe_support().c_str());
    g.engine.reset();
    (void)cudaStreamDestroy(g.stream);
  }
};
const auto* const kPrintSupport = ::testing::AddGlobalTestEnvironment(new PrintSupport);

// A float device array; poisoned with 0xFF bytes (a NaN) unless filled from the host.
class DeviceArray {
 public:
  explicit DeviceArray(size_t count) : count_(count) {
    cuda_ok(cudaMalloc(&ptr_, bytes()), "cudaMalloc");
    poison();
  }
  explicit DeviceArray(const std::vector<float>& host) : DeviceArray(host.size()) { upload(host); }
  ~DeviceArray() { (void)cudaFree(ptr_); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;

  float* get() const { return static_cast<float*>(ptr_); }
  size_t bytes() const { return count_ * sizeof(float); }
  void poison() { cuda_ok(cudaMemset(ptr_, 0xFF, bytes()), "cudaMemset"); }
  void upload(const std::vector<float>& host) {
    cuda_ok(cudaMemcpy(ptr_, host.data(), bytes(), cudaMemcpyHostToDevice), "upload");
  }
  std::vector<float> download() const {
    cuda_ok(cudaStreamSynchronize(gpu().stream), "cudaStreamSynchronize");
    std::vector<float> host(count_);
    cuda_ok(cudaMemcpy(host.data(), ptr_, bytes(), cudaMemcpyDeviceToHost), "download");
    return host;
  }
  // True when every byte still holds the poison (the engine wrote nothing).
  bool untouched() const {
    std::vector<float> host = download();
    std::vector<unsigned char> bytes_(bytes());
    std::memcpy(bytes_.data(), host.data(), bytes());
    for (unsigned char c : bytes_)
      if (c != 0xFF) return false;
    return true;
  }

 private:
  void* ptr_ = nullptr;
  size_t count_;
};

std::vector<float> random_vector(size_t count, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> v(count);
  for (float& x : v) x = u(rng);
  return v;
}

// ‖got − ref‖ / ‖ref‖ in float64; NaN anywhere in `got` makes it NaN (and the test fail).
double relative_error(const std::vector<float>& got, const std::vector<double>& ref) {
  double diff = 0, norm = 0;
  for (size_t k = 0; k < ref.size(); ++k) {
    diff += (got[k] - ref[k]) * (got[k] - ref[k]);
    norm += ref[k] * ref[k];
  }
  return std::sqrt(diff) / std::max(std::sqrt(norm), 1e-300);
}

size_t count_nan(const std::vector<float>& v) {
  size_t bad = 0;
  for (float x : v) bad += std::isnan(x) ? 1 : 0;
  return bad;
}

// First few mismatches, for the failure message.
std::string first_mismatches(const std::vector<float>& got, const std::vector<double>& ref, double tol) {
  std::ostringstream s;
  int shown = 0;
  for (size_t k = 0; k < ref.size() && shown < 5; ++k) {
    if (!(std::abs(got[k] - ref[k]) <= tol * (1.0 + std::abs(ref[k])))) {
      s << " [" << k << "] got " << got[k] << " want " << ref[k] << ";";
      ++shown;
    }
  }
  return s.str();
}

struct Shape {
  const char* name;
  int64_t n, b, i, o;
};
void PrintTo(const Shape& s, std::ostream* os) { *os << s.name; }  // gtest's name for a Shape

const Shape kShapes[] = {
    {"odd_n3_b37_i53_o29", 3, 37, 53, 29},
    {"mnist_hidden1_b256_i784_o256", 1, 256, 784, 256},
    {"mnist_output_b256_i256_o10", 1, 256, 256, 10},
};

// gtest parameter names: letters, digits and '_' only.
std::string param_name(const Shape& s, bool tf32, const std::string& flags) {
  return std::string(s.name) + (tf32 ? "_tf32_" : "_fp32_") + flags;
}

double tolerance(bool tf32) { return tf32 ? 2e-3 : 1e-5; }

// Checks a downloaded output for NaN and against the float64 reference; returns the relative
// error (NaN when the output held NaN) for the log line.
double expect_matches(const std::vector<float>& got, const std::vector<double>& ref, bool tf32,
                      const std::string& what) {
  const size_t nans = count_nan(got);
  EXPECT_EQ(nans, 0u) << what;
  if (nans) return std::nan("");
  const double err = relative_error(got, ref);
  EXPECT_LT(err, tolerance(tf32)) << what << first_mismatches(got, ref, tolerance(tf32));
  return err;
}

// The optional bias gradient: matches its reference when asked for, untouched when not.
double expect_dbias(bool with_dbias, const DeviceArray& d_db, const std::vector<double>& ref_db, bool tf32,
                    const std::string& what) {
  if (with_dbias) return expect_matches(d_db.download(), ref_db, tf32, what + " dbias");
  EXPECT_TRUE(d_db.untouched()) << what << ": wrote dbias though none was asked for";
  return 0;
}

// Records an unsupported case and checks that the engine left its outputs alone.
void record_unsupported(const std::string& what, std::initializer_list<const DeviceArray*> outs) {
  gpu().unsupported.push_back(what);
  for (const DeviceArray* out : outs)
    EXPECT_TRUE(out->untouched()) << what << ": returned false but wrote its output";
}

#define SKIP_WITHOUT_GPU()                                              \
  do {                                                                  \
    std::string why_;                                                   \
    if (!gpu_available(&why_)) GTEST_SKIP() << "no CUDA GPU: " << why_; \
  } while (0)

std::string case_name(const Shape& s, bool tf32, const std::string& flags) {
  return std::string(s.name) + (tf32 ? " tf32" : " fp32") + flags;
}

// ---- forward: y = act(x·wᵀ + bias) ---------------------------------------------------------------

class CudnnForward : public ::testing::TestWithParam<std::tuple<Shape, bool, bool>> {};

std::string forward_name(const ::testing::TestParamInfo<CudnnForward::ParamType>& info) {
  const auto& [s, tf32, relu] = info.param;
  return param_name(s, tf32, relu ? "relu" : "identity");
}

TEST_P(CudnnForward, MatchesFloat64Reference) {
  SKIP_WITHOUT_GPU();
  const auto [s, tf32, relu] = GetParam();
  const int64_t n = s.n, b = s.b, i = s.i, o = s.o;
  std::mt19937 rng(1234);
  std::vector<float> x = random_vector(n * b * i, rng);
  std::vector<float> w = random_vector(n * o * i, rng);
  std::vector<float> bias = random_vector(n * o, rng);
  // Pre-activations that are exactly 0: rows of x that are all zero meet bias entries that are 0.
  auto zero_row = [](int64_t r) { return r % 7 == 3; };
  auto zero_bias = [](int64_t c) { return c % 5 == 2; };
  for (int64_t m = 0; m < n; ++m) {
    for (int64_t r = 0; r < b; ++r)
      if (zero_row(r))
        for (int64_t k = 0; k < i; ++k) x[(m * b + r) * i + k] = 0.0f;
    for (int64_t c = 0; c < o; ++c)
      if (zero_bias(c)) bias[m * o + c] = 0.0f;
  }

  std::vector<double> ref(n * b * o);
  for (int64_t m = 0; m < n; ++m)
    for (int64_t r = 0; r < b; ++r)
      for (int64_t c = 0; c < o; ++c) {
        double acc = bias[m * o + c];
        for (int64_t k = 0; k < i; ++k)
          acc += double(x[(m * b + r) * i + k]) * double(w[(m * o + c) * i + k]);
        ref[(m * b + r) * o + c] = relu ? (acc > 0 ? acc : 0.0) : acc;
      }

  DeviceArray dx_(x), dw_(w), dbias_(bias), dy_(n * b * o);
  const std::string what = case_name(s, tf32, relu ? " forward relu" : " forward identity");
  const bool ran =
      engine().linear_forward(dx_.get(), dw_.get(), dbias_.get(), dy_.get(), n, b, i, o, relu, Options{tf32});
  if (!ran) {
    record_unsupported(what, {&dy_});
    GTEST_SKIP() << "cuDNN cannot run " << what << " (falls back to cuBLASLt)";
  }
  ++gpu().supported;
  const std::vector<float> y = dy_.download();
  const double err = expect_matches(y, ref, tf32, what);
  size_t nonzero_at_zero = 0, negative = 0;
  for (int64_t m = 0; m < n; ++m)
    for (int64_t r = 0; r < b; ++r)
      for (int64_t c = 0; c < o; ++c) {
        const float v = y[(m * b + r) * o + c];
        nonzero_at_zero += (zero_row(r) && zero_bias(c) && v != 0.0f) ? 1 : 0;
        negative += (relu && v < 0.0f) ? 1 : 0;
      }
  EXPECT_EQ(nonzero_at_zero, 0u) << what << ": pre-activation exactly 0 must give exactly 0";
  EXPECT_EQ(negative, 0u) << what << ": relu output below 0";
  std::printf("[cudnn] %s: relative error %.3g\n", what.c_str(), err);
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudnnForward,
                         ::testing::Combine(::testing::ValuesIn(kShapes), ::testing::Bool(),
                                            ::testing::Bool()),
                         forward_name);

// ---- backward_input: dx = (dy·w) ⊙ [y_prev > 0], dbias_prev = Σ_b dx ----------------------------

class CudnnBackwardInput : public ::testing::TestWithParam<std::tuple<Shape, bool, bool>> {};

std::string backward_input_name(const ::testing::TestParamInfo<CudnnBackwardInput::ParamType>& info) {
  const auto& [s, tf32, with_dbias] = info.param;
  return param_name(s, tf32, with_dbias ? "dbias" : "no_dbias");
}

TEST_P(CudnnBackwardInput, MatchesFloat64Reference) {
  SKIP_WITHOUT_GPU();
  const auto [s, tf32, with_dbias] = GetParam();
  const int64_t n = s.n, b = s.b, i = s.i, o = s.o;
  std::mt19937 rng(5678);
  std::vector<float> dy = random_vector(n * b * o, rng);
  std::vector<float> w = random_vector(n * o * i, rng);
  // y_prev is a post-ReLU output: about half exact zeros (negative pre-activations and
  // pre-activations of exactly 0, which relu maps to 0 and whose gradient must be 0), some tiny
  // positive values (gradient passes), the rest ordinary positives.
  std::vector<float> y_prev = random_vector(n * b * i, rng);
  for (size_t k = 0; k < y_prev.size(); ++k) {
    if (y_prev[k] < 0) y_prev[k] = 0.0f;
    if (k % 11 == 5) y_prev[k] = 0.0f;
    if (k % 13 == 7) y_prev[k] = 1e-20f;  // normal float, not flushed as a denormal would be
  }

  std::vector<double> ref_dx(n * b * i), ref_db(n * i, 0.0);
  for (int64_t m = 0; m < n; ++m)
    for (int64_t r = 0; r < b; ++r)
      for (int64_t k = 0; k < i; ++k) {
        double acc = 0;
        for (int64_t c = 0; c < o; ++c)
          acc += double(dy[(m * b + r) * o + c]) * double(w[(m * o + c) * i + k]);
        const double g = y_prev[(m * b + r) * i + k] > 0 ? acc : 0.0;
        ref_dx[(m * b + r) * i + k] = g;
        ref_db[m * i + k] += g;
      }

  DeviceArray d_dy(dy), d_w(w), d_yprev(y_prev), d_dx(n * b * i), d_db(n * i);
  const std::string what = case_name(s, tf32, with_dbias ? " backward_input +dbias" : " backward_input");
  const bool ran =
      engine().linear_backward_input(d_dy.get(), d_w.get(), d_yprev.get(), d_dx.get(),
                                     with_dbias ? d_db.get() : nullptr, n, b, i, o, Options{tf32});
  if (!ran) {
    record_unsupported(what, {&d_dx, &d_db});
    GTEST_SKIP() << "cuDNN cannot run " << what << " (falls back to cuBLASLt)";
  }
  ++gpu().supported;
  const std::vector<float> dx = d_dx.download();
  const double err = expect_matches(dx, ref_dx, tf32, what);
  // relu'(0) = 0: wherever y_prev is exactly 0 the gradient is exactly 0.
  size_t leaked = 0;
  for (size_t k = 0; k < dx.size(); ++k) leaked += (y_prev[k] == 0.0f && dx[k] != 0.0f) ? 1 : 0;
  EXPECT_EQ(leaked, 0u) << what << ": gradient passed where y_prev == 0";
  const double err_db = expect_dbias(with_dbias, d_db, ref_db, tf32, what);
  std::printf("[cudnn] %s: relative error dx %.3g dbias %.3g\n", what.c_str(), err, err_db);
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudnnBackwardInput,
                         ::testing::Combine(::testing::ValuesIn(kShapes), ::testing::Bool(),
                                            ::testing::Bool()),
                         backward_input_name);

// ---- backward_weight: dw = dyᵀ·x + beta·dw, dbias = Σ_b dy ---------------------------------------

class CudnnBackwardWeight : public ::testing::TestWithParam<std::tuple<Shape, bool, float, bool>> {};

std::string backward_weight_name(const ::testing::TestParamInfo<CudnnBackwardWeight::ParamType>& info) {
  const auto& [s, tf32, beta, with_dbias] = info.param;
  return param_name(s, tf32, std::string(beta == 0.0f ? "beta0" : "beta1") + (with_dbias ? "_dbias" : ""));
}

TEST_P(CudnnBackwardWeight, MatchesFloat64Reference) {
  SKIP_WITHOUT_GPU();
  const auto [s, tf32, beta, with_dbias] = GetParam();
  const int64_t n = s.n, b = s.b, i = s.i, o = s.o;
  std::mt19937 rng(91011);
  std::vector<float> dy = random_vector(n * b * o, rng);
  std::vector<float> x = random_vector(n * b * i, rng);
  std::vector<float> dw0 = random_vector(n * o * i, rng);  // used when beta = 1

  std::vector<double> ref_dw(n * o * i), ref_db(n * o, 0.0);
  for (int64_t m = 0; m < n; ++m) {
    for (int64_t c = 0; c < o; ++c)
      for (int64_t k = 0; k < i; ++k) {
        double acc = beta * double(dw0[(m * o + c) * i + k]);
        for (int64_t r = 0; r < b; ++r)
          acc += double(dy[(m * b + r) * o + c]) * double(x[(m * b + r) * i + k]);
        ref_dw[(m * o + c) * i + k] = acc;
      }
    for (int64_t r = 0; r < b; ++r)
      for (int64_t c = 0; c < o; ++c) ref_db[m * o + c] += dy[(m * b + r) * o + c];
  }

  DeviceArray d_dy(dy), d_x(x), d_dw(n * o * i), d_db(n * o);
  if (beta == 1.0f) d_dw.upload(dw0);
  std::ostringstream flags;
  flags << " backward_weight beta" << beta << (with_dbias ? " +dbias" : "");
  const std::string what = case_name(s, tf32, flags.str());
  const bool ran = engine().linear_backward_weight(
      d_dy.get(), d_x.get(), d_dw.get(), with_dbias ? d_db.get() : nullptr, beta, n, b, i, o, Options{tf32});
  if (!ran) {
    gpu().unsupported.push_back(what);
    if (beta == 0.0f) {
      EXPECT_TRUE(d_dw.untouched()) << what << ": returned false but wrote dw";
    } else {
      const std::vector<float> dw = d_dw.download();
      EXPECT_EQ(std::memcmp(dw.data(), dw0.data(), d_dw.bytes()), 0) << what << ": changed dw";
    }
    EXPECT_TRUE(d_db.untouched()) << what << ": returned false but wrote dbias";
    GTEST_SKIP() << "cuDNN cannot run " << what << " (falls back to cuBLASLt)";
  }
  ++gpu().supported;
  const double err = expect_matches(d_dw.download(), ref_dw, tf32, what);
  const double err_db = expect_dbias(with_dbias, d_db, ref_db, tf32, what);
  std::printf("[cudnn] %s: relative error dw %.3g dbias %.3g\n", what.c_str(), err, err_db);
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudnnBackwardWeight,
                         ::testing::Combine(::testing::ValuesIn(kShapes), ::testing::Bool(),
                                            ::testing::Values(0.0f, 1.0f), ::testing::Bool()),
                         backward_weight_name);

// A second call with the same shape gives the same bits (it runs the graph the first call built
// and cached; nothing here observes the cache itself).
TEST(CudnnEngine, RepeatCallGivesTheSameBits) {
  SKIP_WITHOUT_GPU();
  const int64_t n = 2, b = 33, i = 40, o = 24;
  std::mt19937 rng(42);
  DeviceArray x(random_vector(n * b * i, rng)), w(random_vector(n * o * i, rng)),
      bias(random_vector(n * o, rng)), y1(n * b * o), y2(n * b * o);
  // TF32: the mode Hopper supports fused (fp32 falls back there; see cudnn_linear.cpp).
  const Options tf32{true};
  if (!engine().linear_forward(x.get(), w.get(), bias.get(), y1.get(), n, b, i, o, true, tf32))
    GTEST_SKIP() << "cuDNN cannot run this forward";
  ASSERT_TRUE(engine().linear_forward(x.get(), w.get(), bias.get(), y2.get(), n, b, i, o, true, tf32));
  const std::vector<float> a = y1.download(), c = y2.download();
  EXPECT_EQ(std::memcmp(a.data(), c.data(), y1.bytes()), 0);
}

TEST(CudnnEngine, RejectsBadArguments) {
  SKIP_WITHOUT_GPU();
  DeviceArray buf(64);
  float* p = buf.get();
  EXPECT_ANY_THROW(engine().linear_forward(p, p, p, p, 1, 0, 2, 2, true, {}));
  EXPECT_ANY_THROW(engine().linear_forward(nullptr, p, p, p, 1, 2, 2, 2, true, {}));
  // beta other than 0 or 1: not supported here, the caller falls back.
  EXPECT_FALSE(engine().linear_backward_weight(p, p, p, nullptr, 0.5f, 1, 2, 2, 2, {}));
  // Misaligned pointer: refused, nothing written.
  buf.poison();
  EXPECT_FALSE(engine().linear_forward(p + 1, p, p, p + 32, 1, 2, 2, 2, false, {}));
  EXPECT_TRUE(buf.untouched());
}

}  // namespace
