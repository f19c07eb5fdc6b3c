// tests/test_cuda_ops.cpp — every CUDA op against the CPU backend in float64.
//
// Each test skips with "no CUDA GPU: <reason>" where no GPU answers (CudaTest in cuda_test_util.h).
// Inputs are random (a seeded generator of our own), float32-exact, with odd sizes (hidden sizes
// that are not multiples of 128, three models at once) and the MNIST MLP's sizes; GPU outputs are
// poisoned with NaN (masks with 0xA5) before every call, so an element an op forgets to write fails.
//
// Thresholds (see cuda_test_util.h for how errors are measured):
//   fp32 GPU vs float64 CPU   ‖got−ref‖/‖ref‖ ≤ 1e-5        TF32 GEMMs ≤ 2e-3, cuDNN route (TF32) ≤ 3e-3
//   Adam vs CPU float32       ≤ 1e-6                         noise (uniform), gather_batch: bit for bit
//   gaussian noise            ≤ 1e-5 absolute                MLP finite differences: 1e-2 relative
//   ReLU masks                bit for bit where the pre-activation is not within rounding of 0
//
// Sections: GEMMs (forward / backward_input / backward_weight, fused and unfused, TF32, exact zeros
// and NaN), the other ops (elementwise, slices, softmax, losses, accuracy), Adam and the engine's
// kernels, batches and noise, the whole MLP for every MlpFusion (plus a float32 finite-difference
// check), and the cuDNN route.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <iostream>
#include <limits>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "engine/adam.h"     // Adam, AdamOptions
#include "engine/kernels.h"  // fill, add_into, accumulate_and_watch, count_nonfinite, increment
#include "engine/philox.h"   // philox::block: words for the noise diagnosis
#include "engine/random.h"   // stream_id
#include "ops/batch.h"       // gather_batch, noise_batch
#include "ops/elementwise.h"
#include "ops/loss.h"
#include "ops/metrics.h"
#include "ops/mlp.h"
#include "ops/softmax.h"
#include "tests/cuda_test_util.h"

namespace subliminal::cuda_test {
namespace {

using gemm::Activation;

// Prints the GEMM fallback report (epilogues cuBLASLt refused, graphs cuDNN could not run) at the
// end of every run that had a GPU, so the log says which fusions actually ran.
class FallbackReportPrinter : public ::testing::Environment {
 public:
  void TearDown() override {
    if (!cuda_available()) return;
    try {
      const std::string r = gemm::fallback_report();
      std::cout << "[ gemm::fallback_report ] "
                << (r.empty() ? "empty: every fused epilogue ran inside cuBLASLt\n" : "\n" + r);
    } catch (const std::exception& e) {
      std::cout << "[ gemm::fallback_report ] threw: " << e.what() << "\n";
    }
  }
};
[[maybe_unused]] ::testing::Environment* const kFallbackReport =
    ::testing::AddGlobalTestEnvironment(new FallbackReportPrinter);

void print_fallbacks(const std::string& where) {
  try {
    const std::string r = gemm::fallback_report();
    std::cout << "[ " << where << " ] gemm::fallback_report(): " << (r.empty() ? "(empty)\n" : "\n" + r);
  } catch (const std::exception& e) {  // the report itself must not fail a GEMM test
    std::cout << "[ " << where << " ] gemm::fallback_report() threw: " << e.what() << "\n";
  }
}

// =============================================================================================
// GEMMs
// =============================================================================================

struct GemmCase {
  int64_t N, B, I, O;
};
std::string name_of(const GemmCase& c) {
  std::ostringstream s;  // (not operator+: GCC 12 -O3 warns falsely about std::string concatenation)
  s << "N" << c.N << "_B" << c.B << "_I" << c.I << "_O" << c.O;
  return s.str();
}
void PrintTo(const GemmCase& c, std::ostream* os) { *os << name_of(c); }  // gtest's parameter printer
// Odd sizes (one and three models), the MNIST MLP's two GEMM shapes, and a width just past 128
// (two 128-bit mask words per row, N = 3).
// 64 models of 130×70: enough tiles that the tiled engine runs without split-K, with three row
// tiles to reduce the bias gradients across.
const std::vector<GemmCase> kGemmCases = {{3, 37, 53, 29},   {1, 37, 53, 29},   {1, 256, 784, 256},
                                          {1, 256, 256, 13}, {3, 64, 200, 130}, {64, 130, 70, 70}};

// Float32-exact inputs of one case: x [N,B,I] ~ U(−1,1), w [N,O,I] ~ U(±1/√I), b [N,O] ~ U(−0.5,0.5).
struct GemmData {
  GemmCase c;
  std::vector<double> x, w, b;
  Shape xs() const { return {c.N, c.B, c.I}; }
  Shape ws() const { return {c.N, c.O, c.I}; }
  Shape bs() const { return {c.N, c.O}; }
  Shape ys() const { return {c.N, c.B, c.O}; }
};
GemmData gemm_data(const GemmCase& c, uint64_t seed) {
  const double bound = 1.0 / std::sqrt(double(c.I));
  return {c, uniform_values(c.N * c.B * c.I, seed, -1, 1),
          uniform_values(c.N * c.O * c.I, seed + 1, -bound, bound),
          uniform_values(c.N * c.O, seed + 2, -0.5, 0.5)};
}

// Random mask bits for activations [N, B, F] (about 60% set); padding bits all `padding`.
std::vector<uint8_t> random_mask(int64_t N, int64_t B, int64_t F, uint64_t seed, bool padding) {
  Rng rng(seed);
  const int64_t row_bytes = mask_row_bytes(F);
  std::vector<uint8_t> m(size_t(N * B * row_bytes), 0);
  for (int64_t r = 0; r < N * B; ++r)
    for (int64_t f = 0; f < row_bytes * 8; ++f) {
      const bool bit = f < F ? rng.unit() < 0.6 : padding;
      if (bit) m[size_t(r * row_bytes + f / 8)] |= uint8_t(1u << (f % 8));
    }
  return m;
}

// y = act(x·wᵀ + b) on the GPU against the float64 CPU; for ReLU also the bit-mask, both against
// the CPU's mask and against the GPU's own y > 0. kink_rel·rms(z) bounds the forgivable flips.
void check_forward(const GemmData& d, Activation act, bool with_bias, double tol, double kink_rel,
                   const std::string& what) {
  const int64_t N = d.c.N, B = d.c.B, O = d.c.O;
  const bool relu = act == Activation::relu;
  const Shape ms = gemm::mask_shape(N, B, O);
  // Oracle: the pre-activation z, then the op itself.
  const Tensor x64 = cpu64(d.x, d.xs()), w64 = cpu64(d.w, d.ws());
  const Tensor b64 = with_bias ? cpu64(d.b, d.bs()) : Tensor();
  Tensor z64 = Tensor::zeros(d.ys(), DType::f64);
  gemm::forward(x64, w64, b64, Activation::none, z64, Tensor());
  Tensor y64 = Tensor::zeros(d.ys(), DType::f64);
  Tensor m64 = relu ? Tensor::zeros(ms, DType::u8) : Tensor();
  gemm::forward(x64, w64, b64, act, y64, m64);
  // GPU, on poisoned outputs.
  Tensor y = poisoned(d.ys()), m = relu ? poisoned_mask(ms) : Tensor();
  gemm::forward(gpu32(d.x, d.xs()), gpu32(d.w, d.ws()), with_bias ? gpu32(d.b, d.bs()) : Tensor(), act, y, m);
  const std::vector<double> yv = values_of(y);
  EXPECT_TRUE(all_close(what + ": y", yv, values_of(y64), d.ys(), tol));
  if (!relu) return;
  const std::vector<double> z = z64.to_vector<double>();
  const std::vector<uint8_t> mv = m.to_vector<uint8_t>();
  std::string notes;
  // The fused cuBLASLt epilogue sets the bit at an exact 0; every other path leaves it clear.
  const bool fused = gemm::settings().fuse_epilogues && gemm::settings().engine == gemm::GpuEngine::cublaslt;
  EXPECT_TRUE(masks_match(what + ": ReLU mask vs CPU", mv, m64.to_vector<uint8_t>(), N, B, O, &z,
                          kink_rel * rms(z), &notes, fused));
  EXPECT_TRUE(masks_match(what + ": ReLU mask vs the GPU's own y (gate !(y <= 0))", mv,
                          mask_from_values(yv, N, B, O), N, B, O, &z, 0, nullptr, fused));
  if (!notes.empty()) std::cout << notes;
}

struct BackwardInputVariant {
  const char* name;
  bool mask, dbias, accumulate, padding_ones;
};
const BackwardInputVariant kBackwardInputVariants[] = {
    {"plain", false, false, false, false},
    {"DRELU (mask)", true, false, false, false},
    {"DRELU_BGRAD (mask + previous bias gradient)", true, true, false, false},
    {"DRELU_BGRAD with mask padding bits set", true, true, false, true},
    {"accumulate", false, false, true, false},
    {"accumulate + mask", true, false, true, false},
    {"accumulate + mask + previous bias gradient", true, true, true, false},
};

// dx = (dy·w) ⊙ mask (+ dx0), dbias_prev = Σ_b of the masked product; dx poisoned (overwrite) or
// holding known values (accumulate), dbias_prev always poisoned.
void check_backward_input(const GemmData& d, const BackwardInputVariant& v, double tol, uint64_t seed,
                          const std::string& what) {
  const int64_t N = d.c.N, B = d.c.B, I = d.c.I, O = d.c.O;
  const Shape dys{N, B, O}, dxs{N, B, I}, ms = gemm::mask_shape(N, B, I), dbs{N, I};
  const std::vector<double> dy = uniform_values(N * B * O, seed, -1, 1);
  const std::vector<double> dx0 =
      v.accumulate ? uniform_values(N * B * I, seed + 1, -1, 1) : std::vector<double>(size_t(N * B * I), 0.0);
  const std::vector<uint8_t> mask = random_mask(N, B, I, seed + 2, v.padding_ones);

  Tensor dx64 = cpu64(dx0, dxs), db64 = v.dbias ? Tensor::zeros(dbs, DType::f64) : Tensor();
  gemm::backward_input(cpu64(dy, dys), cpu64(d.w, d.ws()),
                       v.mask ? Tensor::from_vector(mask, ms, Device::cpu) : Tensor(), dx64, db64,
                       v.accumulate);
  Tensor dx = v.accumulate ? gpu32(dx0, dxs) : poisoned(dxs), db = v.dbias ? poisoned(dbs) : Tensor();
  gemm::backward_input(gpu32(dy, dys), gpu32(d.w, d.ws()),
                       v.mask ? Tensor::from_vector(mask, ms, Device::cuda) : Tensor(), dx, db, v.accumulate);
  EXPECT_TRUE(all_close(what + ": dx", dx, dx64, tol));
  if (v.dbias) {
    EXPECT_TRUE(all_close(what + ": dbias_prev", db, db64, tol));
  }
}

// dw = dyᵀ·x (+ dw0), dbias = Σ_b dy.
void check_backward_weight(const GemmData& d, bool with_dbias, bool accumulate, double tol, uint64_t seed,
                           const std::string& what) {
  const int64_t N = d.c.N, B = d.c.B, I = d.c.I, O = d.c.O;
  const Shape dys{N, B, O};
  const std::vector<double> dy = uniform_values(N * B * O, seed, -1, 1);
  const std::vector<double> dw0 =
      accumulate ? uniform_values(N * O * I, seed + 1, -1, 1) : std::vector<double>(size_t(N * O * I), 0.0);
  Tensor dw64 = cpu64(dw0, d.ws()), db64 = with_dbias ? Tensor::zeros(d.bs(), DType::f64) : Tensor();
  gemm::backward_weight(cpu64(dy, dys), cpu64(d.x, d.xs()), dw64, accumulate, db64);
  Tensor dw = accumulate ? gpu32(dw0, d.ws()) : poisoned(d.ws()),
         db = with_dbias ? poisoned(d.bs()) : Tensor();
  gemm::backward_weight(gpu32(dy, dys), gpu32(d.x, d.xs()), dw, accumulate, db);
  EXPECT_TRUE(all_close(what + ": dw", dw, dw64, tol));
  if (with_dbias) {
    EXPECT_TRUE(all_close(what + ": dbias", db, db64, tol));
  }
}

// Which GPU GEMM path a CudaGemm test runs: cuBLASLt with its fused epilogues, cuBLASLt plain
// GEMMs + epilogue kernels, or the tiled engine (ops/cuda/gemm_tiled.cu, epilogues fused).
enum class GemmPath { cublaslt_fused, cublaslt_unfused, tiled };
const char* path_name(GemmPath p) {
  return p == GemmPath::cublaslt_fused ? "fused" : p == GemmPath::cublaslt_unfused ? "unfused" : "tiled";
}

// Parameter: (case, path).
class CudaGemm : public CudaTest, public ::testing::WithParamInterface<std::tuple<GemmCase, GemmPath>> {
 protected:
  void SetUp() override {
    CudaTest::SetUp();
    if (IsSkipped()) return;
    gemm::settings().fuse_epilogues = path() != GemmPath::cublaslt_unfused;
    gemm::settings().engine = path() == GemmPath::tiled ? gemm::GpuEngine::tiled : gemm::GpuEngine::cublaslt;
  }
  const GemmCase& gemm_case() const { return std::get<0>(GetParam()); }
  GemmPath path() const { return std::get<1>(GetParam()); }
  std::string label(const std::string& what) const {
    return name_of(gemm_case()) + " " + path_name(path()) + ", " + what;
  }
};

const char* act_name(Activation a) { return a == Activation::relu ? "relu" : "none"; }

TEST_P(CudaGemm, ForwardMatchesCpu) {
  const GemmData d = gemm_data(gemm_case(), 101);
  for (Activation act : {Activation::none, Activation::relu})
    for (bool bias : {true, false}) {
      const std::string what =
          label(std::string("forward act=") + act_name(act) + (bias ? " +bias" : " no bias"));
      run_case(what, [&] { check_forward(d, act, bias, kFp32Tol, 1e-5, what); });
    }
  print_fallbacks(label("forward"));
}

// Pre-activations that are exactly 0 (zero rows of x, zero rows of w, zero bias entries) must give
// y = 0 and mask bit 0 (relu'(0) = 0) — except on cuBLASLt's fused epilogue, which sets the bit
// there (ops/gemm.h; check_forward allows exactly that on that path); a NaN in x makes its row
// NaN before the ReLU, which keeps it NaN with mask bit 1, and NaN without activation — all as
// the CPU oracle does.
TEST_P(CudaGemm, ExactZerosAndNaNPreActivations) {
  GemmData d = gemm_data(gemm_case(), 202);
  const int64_t N = d.c.N, B = d.c.B, I = d.c.I, O = d.c.O;
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t b : {int64_t(0), B / 2, B - 1})
      for (int64_t i = 0; i < I; ++i) d.x[size_t((n * B + b) * I + i)] = 0.0;
    for (int64_t o : {int64_t(1), O - 1})
      for (int64_t i = 0; i < I; ++i) d.w[size_t((n * O + o) * I + i)] = 0.0;
    for (int64_t o : {int64_t(0), int64_t(1), O / 2}) d.b[size_t(n * O + o)] = 0.0;
    d.b[size_t(n * O + O - 1)] = 0.25;  // zero weight row, positive bias: z = 0.25 everywhere
  }
  d.x[size_t(((N - 1) * B + 1) * I + I / 2)] = kNaN;  // row 1 of the last model: all NaN
  // The construction must really produce zeros and NaNs (checked on the oracle).
  {
    Tensor z64 = Tensor::zeros(d.ys(), DType::f64);
    gemm::forward(cpu64(d.x, d.xs()), cpu64(d.w, d.ws()), cpu64(d.b, d.bs()), Activation::none, z64,
                  Tensor());
    int64_t zeros = 0, nans = 0;
    for (double z : z64.to_vector<double>()) zeros += z == 0.0, nans += std::isnan(z);
    EXPECT_GT(zeros, B) << "test construction: expected many exact-zero pre-activations";
    EXPECT_EQ(nans, O) << "test construction: expected one NaN row";
  }
  for (const std::pair<Activation, bool>& variant :
       {std::pair{Activation::relu, true}, std::pair{Activation::relu, false},
        std::pair{Activation::none, true}}) {
    const Activation act = variant.first;
    const bool bias = variant.second;
    const std::string what =
        label(std::string("zeros/NaN forward act=") + act_name(act) + (bias ? " +bias" : " no bias"));
    run_case(what, [&] { check_forward(d, act, bias, kFp32Tol, 1e-5, what); });
  }
}

TEST_P(CudaGemm, BackwardInputMatchesCpu) {
  const GemmData d = gemm_data(gemm_case(), 303);
  uint64_t seed = 3000;
  for (const BackwardInputVariant& v : kBackwardInputVariants) {
    const std::string what = label(std::string("backward_input ") + v.name);
    run_case(what, [&] { check_backward_input(d, v, kFp32Tol, seed += 10, what); });
  }
  print_fallbacks(label("backward_input"));
}

TEST_P(CudaGemm, BackwardWeightMatchesCpu) {
  const GemmData d = gemm_data(gemm_case(), 404);
  uint64_t seed = 4000;
  for (bool dbias : {true, false})
    for (bool accumulate : {false, true}) {
      const std::string what = label(std::string("backward_weight") + (dbias ? " +dbias (BGRADB)" : "") +
                                     (accumulate ? " accumulate" : " overwrite"));
      run_case(what, [&] { check_backward_weight(d, dbias, accumulate, kFp32Tol, seed += 10, what); });
    }
  print_fallbacks(label("backward_weight"));
}

// TF32 tensor cores (gemm::settings().tf32): the same products within 2e-3; a ReLU bit may flip
// where |z| < 1e-2·rms(z).
TEST_P(CudaGemm, Tf32MatchesCpuLoosely) {
  gemm::settings().tf32 = true;
  const GemmData d = gemm_data(gemm_case(), 505);
  run_case(label("TF32 forward relu +bias"), [&] {
    check_forward(d, Activation::relu, true, kTf32Tol, 1e-2, label("TF32 forward relu +bias"));
  });
  run_case(label("TF32 forward none +bias"), [&] {
    check_forward(d, Activation::none, true, kTf32Tol, 1e-2, label("TF32 forward none +bias"));
  });
  run_case(label("TF32 backward_input DRELU_BGRAD"), [&] {
    check_backward_input(d, kBackwardInputVariants[2], kTf32Tol, 5100,
                         label("TF32 backward_input DRELU_BGRAD"));
  });
  run_case(label("TF32 backward_input plain"), [&] {
    check_backward_input(d, kBackwardInputVariants[0], kTf32Tol, 5200, label("TF32 backward_input plain"));
  });
  run_case(label("TF32 backward_weight BGRADB"), [&] {
    check_backward_weight(d, true, false, kTf32Tol, 5300, label("TF32 backward_weight BGRADB"));
  });
  run_case(label("TF32 backward_weight accumulate"), [&] {
    check_backward_weight(d, false, true, kTf32Tol, 5400, label("TF32 backward_weight accumulate"));
  });
  print_fallbacks(label("TF32"));
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaGemm,
                         ::testing::Combine(::testing::ValuesIn(kGemmCases),
                                            ::testing::Values(GemmPath::cublaslt_fused,
                                                              GemmPath::cublaslt_unfused, GemmPath::tiled)),
                         [](const ::testing::TestParamInfo<CudaGemm::ParamType>& info) {
                           return name_of(std::get<0>(info.param)) + "_" + path_name(std::get<1>(info.param));
                         });

// The tiled engine's split-K sums its partial tiles in a fixed order, and each GEMM leaves its
// counters at zero for the next: the same products twice, with other shapes between, are equal
// bit for bit.
class CudaTiledGemm : public CudaTest {};

TEST_F(CudaTiledGemm, ReproducibleBitForBit) {
  gemm::settings().engine = gemm::GpuEngine::tiled;
  struct Outputs {
    std::vector<float> y, dx, dbias_prev, dw, dbias;
    std::vector<uint8_t> mask;
  };
  auto run = [](const GemmCase& c, uint64_t seed) {
    const GemmData d = gemm_data(c, seed);
    const int64_t N = c.N, B = c.B, I = c.I, O = c.O;
    const Tensor x = gpu32(d.x, d.xs()), w = gpu32(d.w, d.ws());
    const Tensor dy = gpu32(uniform_values(N * B * O, seed + 7, -1, 1), {N, B, O});
    const Tensor mask_in =
        Tensor::from_vector(random_mask(N, B, I, seed + 8, false), gemm::mask_shape(N, B, I), Device::cuda);
    Tensor y = poisoned(d.ys()), mask = poisoned_mask(gemm::mask_shape(N, B, O)), dx = poisoned(d.xs()),
           dbias_prev = poisoned({N, I}), dw = poisoned(d.ws()), dbias = poisoned(d.bs());
    gemm::forward(x, w, gpu32(d.b, d.bs()), Activation::relu, y, mask);
    gemm::backward_input(dy, w, mask_in, dx, dbias_prev, false);
    gemm::backward_weight(dy, x, dw, false, dbias);
    return Outputs{y.to_vector<float>(),  dx.to_vector<float>(),    dbias_prev.to_vector<float>(),
                   dw.to_vector<float>(), dbias.to_vector<float>(), mask.to_vector<uint8_t>()};
  };
  const GemmCase mnist{1, 256, 784, 256}, odd{3, 37, 53, 29};
  const Outputs first = run(mnist, 900);
  run(odd, 901);
  const Outputs second = run(mnist, 900);
  const Shape y{1, 256, 256}, x{1, 256, 784}, in{1, 784}, w{1, 256, 784}, out{1, 256};
  EXPECT_TRUE(bitwise_equal("tiled y, second run vs first", second.y, first.y, y));
  EXPECT_TRUE(bitwise_equal("tiled dx", second.dx, first.dx, x));
  EXPECT_TRUE(bitwise_equal("tiled dbias_prev", second.dbias_prev, first.dbias_prev, in));
  EXPECT_TRUE(bitwise_equal("tiled dw", second.dw, first.dw, w));
  EXPECT_TRUE(bitwise_equal("tiled dbias", second.dbias, first.dbias, out));
  EXPECT_EQ(second.mask, first.mask) << "tiled ReLU mask, second run vs first";
}

// Fused epilogues vs plain GEMMs + epilogue kernels, on the GPU: each matches the CPU (above) and
// here the two paths match each other — outputs within 1e-5, masks bit for bit except within
// 1e-5·rms(z) of the kink (rounding may put z on either side) and at an exact 0, where
// cuBLASLt's fused epilogue sets the bit (ops/gemm.h).
class CudaGemmFusion : public CudaTest, public ::testing::WithParamInterface<GemmCase> {};

TEST_P(CudaGemmFusion, FusedAndUnfusedAgree) {
  const GemmCase c = GetParam();
  const GemmData d = gemm_data(c, 606);
  const int64_t N = c.N, B = c.B, I = c.I, O = c.O;
  const Shape ms_out = gemm::mask_shape(N, B, O), ms_in = gemm::mask_shape(N, B, I);
  const std::vector<double> dy = uniform_values(N * B * O, 6100, -1, 1);
  const std::vector<uint8_t> mask_in = random_mask(N, B, I, 6200, false);
  struct Outputs {
    Tensor y, mask, dx, dbias_prev, dw, dbias;
  };
  auto run = [&](bool fused) {
    gemm::settings().fuse_epilogues = fused;
    Outputs o{poisoned(d.ys()), poisoned_mask(ms_out), poisoned(d.xs()),
              poisoned({N, I}), poisoned(d.ws()),      poisoned(d.bs())};
    const Tensor x = gpu32(d.x, d.xs()), w = gpu32(d.w, d.ws()), dyt = gpu32(dy, {N, B, O});
    gemm::forward(x, w, gpu32(d.b, d.bs()), Activation::relu, o.y, o.mask);
    gemm::backward_input(dyt, w, Tensor::from_vector(mask_in, ms_in, Device::cuda), o.dx, o.dbias_prev,
                         false);
    gemm::backward_weight(dyt, x, o.dw, false, o.dbias);
    return o;
  };
  const Outputs fused = run(true), plain = run(false);
  EXPECT_TRUE(all_close(name_of(c) + " y fused vs unfused", fused.y, plain.y, kFp32Tol));
  EXPECT_TRUE(all_close(name_of(c) + " dx fused vs unfused", fused.dx, plain.dx, kFp32Tol));
  EXPECT_TRUE(
      all_close(name_of(c) + " dbias_prev fused vs unfused", fused.dbias_prev, plain.dbias_prev, kFp32Tol));
  EXPECT_TRUE(all_close(name_of(c) + " dw fused vs unfused", fused.dw, plain.dw, kFp32Tol));
  EXPECT_TRUE(all_close(name_of(c) + " dbias fused vs unfused", fused.dbias, plain.dbias, kFp32Tol));
  Tensor z64 = Tensor::zeros(d.ys(), DType::f64);
  gemm::forward(cpu64(d.x, d.xs()), cpu64(d.w, d.ws()), cpu64(d.b, d.bs()), Activation::none, z64, Tensor());
  const std::vector<double> z = z64.to_vector<double>();
  std::string notes;
  EXPECT_TRUE(masks_match(name_of(c) + " ReLU mask fused (got) vs unfused (expected)",
                          fused.mask.to_vector<uint8_t>(), plain.mask.to_vector<uint8_t>(), N, B, O, &z,
                          1e-5 * rms(z), &notes, /*zero_sets_bit=*/true));
  std::cout << notes;
  print_fallbacks(name_of(c) + " fused vs unfused");
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaGemmFusion, ::testing::ValuesIn(kGemmCases),
                         [](const ::testing::TestParamInfo<GemmCase>& info) { return name_of(info.param); });

// =============================================================================================
// Elementwise ops, slices, softmax, losses
// =============================================================================================

// op(x) for x on `device` in `dtype`; constant extra inputs (labels, a teacher) are made inside.
using OpFn = std::function<Tensor(const Tensor& x, Device device, DType dtype)>;

// op on the GPU (float32) and the CPU (float64) from the same x; then the output's backward node is
// called directly with a random dy, once overwriting a NaN-poisoned target and once accumulating into
// known values (the GradSink contract of engine/autograd.h).
void check_op(const std::string& what, const OpFn& op, const std::vector<double>& x, const Shape& shape,
              uint64_t seed, double tol = kFp32Tol) {
  Tensor x64 = cpu64(x, shape), x32 = gpu32(x, shape);
  x64.set_requires_grad(true);
  x32.set_requires_grad(true);
  const Tensor y64 = op(x64, Device::cpu, DType::f64), y32 = op(x32, Device::cuda, DType::f32);
  EXPECT_TRUE(all_close(what + ": forward", y32, y64, tol));
  ASSERT_TRUE(y64.grad_fn() && y32.grad_fn()) << what << ": no backward node recorded";
  const std::vector<double> dy = uniform_values(y64.numel(), seed, -1, 1);
  for (bool accumulate : {false, true}) {
    const std::vector<double> start = accumulate ? uniform_values(x64.numel(), seed + 1, -1, 1)
                                                 : std::vector<double>(size_t(x64.numel()), 0.0);
    std::vector<GradSink> sink64{GradSink{cpu64(start, shape), accumulate}};
    std::vector<GradSink> sink32{GradSink{accumulate ? gpu32(start, shape) : poisoned(shape), accumulate}};
    y64.grad_fn()->backward(cpu64(dy, y64.shape()), sink64);
    y32.grad_fn()->backward(gpu32(dy, y32.shape()), sink32);
    EXPECT_TRUE(all_close(what + (accumulate ? ": backward (accumulate)" : ": backward (overwrite)"),
                          sink32[0].target, sink64[0].target, tol));
  }
}

class CudaOps : public CudaTest {};

// Asking for more memory than any GPU has is an OutOfMemoryError that says how much was asked
// for and what the device holds — and the runtime keeps working afterwards.
TEST_F(CudaOps, OutOfMemoryNamesTheBytes) {
  const int64_t absurd = int64_t(1) << 40;  // 4 TiB of float32
  try {
    Tensor::empty({absurd}, DType::f32, Device::cuda);
    FAIL() << "a 4 TiB allocation succeeded";
  } catch (const OutOfMemoryError& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("asked for " + std::to_string(absurd * 4) + " bytes"), std::string::npos)
        << message;
    EXPECT_NE(message.find("free of"), std::string::npos) << message;
  }
  Tensor after = Tensor::full({16}, 1.0, DType::f32, Device::cuda);
  EXPECT_EQ(after.to_vector<float>()[15], 1.0f);
}

// A batch that runs past the end of the epoch's order (the CPU path throws for it): the GPU
// kernels write NaN (and label −1) for the missing rows instead of reading out of bounds.
TEST_F(CudaOps, BatchPastTheEndOfTheOrderIsPoisonedNotReadOutOfBounds) {
  const int64_t S = 10, P = 4, B = 4;
  std::vector<uint8_t> pixels(static_cast<size_t>(S * P)), labels(static_cast<size_t>(S));
  for (size_t i = 0; i < pixels.size(); ++i) pixels[i] = uint8_t(i);
  for (size_t i = 0; i < labels.size(); ++i) labels[i] = uint8_t(i % 10);
  std::vector<int32_t> order(static_cast<size_t>(S));
  for (size_t i = 0; i < order.size(); ++i) order[i] = int32_t(S - 1 - int64_t(i));
  const Tensor images = Tensor::from_vector(pixels, {S, P}, Device::cuda);
  const Tensor targets = Tensor::from_vector(labels, {S}, Device::cuda);
  const Tensor order_t = Tensor::from_vector(order, {1, S}, Device::cuda);
  const Tensor step = Tensor::full({1}, 2.0, DType::i64, Device::cuda);  // positions 8..11 of 10
  Tensor x = Tensor::empty({1, B, P}, DType::f32, Device::cuda),
         y = Tensor::empty({1, B}, DType::i32, Device::cuda);
  gather_batch(images, targets, order_t, step, B, x, y);
  const std::vector<float> xv = x.to_vector<float>();
  const std::vector<int32_t> yv = y.to_vector<int32_t>();
  for (int64_t r = 0; r < B; ++r)
    for (int64_t k = 0; k < P; ++k)
      EXPECT_EQ(std::isnan(xv[size_t(r * P + k)]), r >= 2) << "gather row " << r;
  EXPECT_EQ(yv[2], -1);
  EXPECT_EQ(yv[3], -1);
  Tensor noise = Tensor::empty({1, B, P}, DType::f32, Device::cuda);
  noise_batch(5, 7, order_t, step, B, 0, NoiseDistribution::uniform, noise);
  const std::vector<float> nv = noise.to_vector<float>();
  for (int64_t r = 0; r < B; ++r)
    for (int64_t k = 0; k < P; ++k) EXPECT_EQ(std::isnan(nv[size_t(r * P + k)]), r >= 2) << "noise row " << r;
}

TEST_F(CudaOps, ReluAndScaleMatchCpu) {
  const Shape s{3, 37, 29};
  std::vector<double> x = uniform_values(shape_numel(s), 11, -1, 1);
  for (size_t i = 0; i < x.size(); i += 7) x[i] = 0.0;  // relu'(0) = 0 on both
  run_case("relu", [&] {
    check_op(
        "relu", [](const Tensor& t, Device, DType) { return relu(t); }, x, s, 12);
  });
  run_case("scale", [&] {
    check_op(
        "scale(−1.75)", [](const Tensor& t, Device, DType) { return scale(t, -1.75); }, x, s, 13);
  });
}

TEST_F(CudaOps, SliceColumnsMatchesCpu) {
  const Shape s{3, 37, 13};
  const std::vector<double> x = uniform_values(shape_numel(s), 21, -2, 2);
  for (ColumnRange cols : {ColumnRange{0, 10}, ColumnRange{10, 13}, ColumnRange{3, 7}}) {
    const std::string what =
        "slice_columns {" + std::to_string(cols.begin) + ", " + std::to_string(cols.end) + "}";
    run_case(what, [&] {
      check_op(
          what, [cols](const Tensor& t, Device, DType) { return slice_columns(t, cols); }, x, s, 22);
    });
  }
}

TEST_F(CudaOps, SoftmaxAndLogSoftmaxMatchCpu) {
  // 13 columns (the MLP's logits), 33 and 100 (more than one warp lane per column), 1 (degenerate).
  for (const Shape& s : {Shape{3, 37, 13}, Shape{4, 7, 33}, Shape{2, 5, 100}, Shape{2, 3, 1}}) {
    const std::vector<double> x = uniform_values(shape_numel(s), 31, -4, 4);
    run_case("softmax " + shape_string(s), [&] {
      check_op(
          "softmax " + shape_string(s), [](const Tensor& t, Device, DType) { return softmax(t); }, x, s, 32);
    });
    run_case("log_softmax " + shape_string(s), [&] {
      check_op(
          "log_softmax " + shape_string(s), [](const Tensor& t, Device, DType) { return log_softmax(t); }, x,
          s, 33);
    });
  }
}

TEST_F(CudaOps, CrossEntropyMatchesCpu) {
  struct Case {
    Shape shape;
    ColumnRange cols;
  };
  for (const Case& c : {Case{{3, 37, 13}, {0, 10}}, Case{{1, 256, 13}, {0, 10}}, Case{{2, 37, 13}, {0, 13}},
                        Case{{2, 9, 40}, {1, 39}}}) {
    const int64_t N = c.shape[0], B = c.shape[1];
    const std::vector<double> logits = uniform_values(shape_numel(c.shape), 41, -3, 3);
    Rng rng(42);
    std::vector<int32_t> labels(size_t(N * B));
    for (int32_t& l : labels) l = int32_t(rng.below(c.cols.width()));
    const std::string what = "cross_entropy " + shape_string(c.shape) + " cols {" +
                             std::to_string(c.cols.begin) + ", " + std::to_string(c.cols.end) + "}";
    run_case(what, [&] {
      check_op(
          what,
          [&](const Tensor& t, Device device, DType) {
            return cross_entropy(t, Tensor::from_vector(labels, {N, B}, device), c.cols);
          },
          logits, c.shape, 43);
    });
  }
}

TEST_F(CudaOps, DistillMatchesCpu) {
  const Shape s{3, 37, 13};
  const std::vector<double> student = uniform_values(shape_numel(s), 51, -3, 3);
  const std::vector<double> teacher = uniform_values(shape_numel(s), 52, -3, 3);
  for (Divergence divergence : {Divergence::kl, Divergence::js})
    for (double temperature : {1.0, 2.0})
      for (ColumnRange cols : {ColumnRange{10, 13}, ColumnRange{0, 13}}) {
        const std::string what = std::string("distill ") + divergence_name(divergence) +
                                 " T=" + num(temperature) + " cols {" + std::to_string(cols.begin) + ", " +
                                 std::to_string(cols.end) + "}";
        run_case(what, [&] {
          check_op(
              what,
              [&](const Tensor& t, Device device, DType dtype) {
                return distill(t, tensor_of(teacher, s, device, dtype), cols, temperature, divergence);
              },
              student, s, 53);
        });
      }
}

// Student n learns from teacher n mod M (arms sharing a teacher): against the CPU, and on the GPU bit
// for bit the same as tiling the teachers with repeat_models.
TEST_F(CudaOps, DistillKlWithSharedTeachersMatchesCpuAndTiling) {
  const Shape s{6, 37, 13}, ts{3, 37, 13};
  const std::vector<double> student = uniform_values(shape_numel(s), 54, -3, 3);
  const std::vector<double> teacher = uniform_values(shape_numel(ts), 55, -3, 3);
  const ColumnRange cols{10, 13};
  check_op(
      "distill_kl, 6 students / 3 teachers",
      [&](const Tensor& t, Device device, DType dtype) {
        return distill_kl(t, tensor_of(teacher, ts, device, dtype), cols, 2.0);
      },
      student, s, 56);
  Tensor a = gpu32(student, s), b = gpu32(student, s);
  a.set_requires_grad(true);
  b.set_requires_grad(true);
  const Tensor t = gpu32(teacher, ts);
  const Tensor shared = distill_kl(a, t, cols, 2.0), tiled = distill_kl(b, repeat_models(t, 2), cols, 2.0);
  EXPECT_TRUE(bitwise_equal("shared vs tiled teachers: loss", shared.to_vector<float>(),
                            tiled.to_vector<float>(), {6}));
  shared.backward();
  tiled.backward();
  EXPECT_TRUE(bitwise_equal("shared vs tiled teachers: d student", a.grad().to_vector<float>(),
                            b.grad().to_vector<float>(), s));
}

TEST_F(CudaOps, KlDivMatchesCpu) {
  const Shape s{3, 37, 13};
  const int64_t rows = 3 * 37, C = 13;
  Rng rng(61);
  std::vector<double> log_q(size_t(rows * C)), p(size_t(rows * C));
  for (int64_t r = 0; r < rows; ++r) {
    double sq = 0, sp = 0;
    for (int64_t c = 0; c < C; ++c) {
      log_q[size_t(r * C + c)] = rng.uniform(0.05, 1);
      // Some target probabilities are exactly 0 (0·log 0 = 0 must hold on both backends).
      p[size_t(r * C + c)] = (r + c) % 5 == 0 ? 0.0 : rng.uniform(0.05, 1);
      sq += log_q[size_t(r * C + c)];
      sp += p[size_t(r * C + c)];
    }
    for (int64_t c = 0; c < C; ++c) {
      log_q[size_t(r * C + c)] = double(float(std::log(log_q[size_t(r * C + c)] / sq)));
      p[size_t(r * C + c)] = double(float(p[size_t(r * C + c)] / sp));
    }
  }
  check_op(
      "kl_div",
      [&](const Tensor& t, Device device, DType dtype) { return kl_div(t, tensor_of(p, s, device, dtype)); },
      log_q, s, 62);
}

// A NaN or negative target probability makes the loss NaN on the GPU too (the CPU test:
// Ops.KlDivKeepsANanOrNegativeTargetInTheLoss).
TEST_F(CudaOps, KlDivKeepsANanOrNegativeTargetInTheLoss) {
  const Shape s{3, 1, 2};
  const std::vector<double> log_q = {-0.7, -0.7, -0.7, -0.7, -0.7, -0.7};
  const std::vector<double> p = {std::nan(""), 0.5, -0.5, 1.5, 0.5, 0.5};
  const std::vector<double> loss = values_of(kl_div(gpu32(log_q, s), gpu32(p, s)));
  EXPECT_TRUE(std::isnan(loss[0]));
  EXPECT_TRUE(std::isnan(loss[1]));
  EXPECT_NEAR(loss[2], 2 * 0.5 * (std::log(0.5) + 0.7), 1e-6);
}

// count_correct with ties (the first maximum wins) and NaN (maximal; the first NaN wins; NaN outside
// the class range is ignored), accumulating into nonzero counts.
TEST_F(CudaOps, CountCorrectMatchesCpuWithTiesAndNaN) {
  struct Case {
    int64_t N, B, C;
    ColumnRange cols;
    int64_t tie_gap;  // distance between the two tied columns: 32 puts them in the same warp lane
  };
  for (const Case& c : {Case{3, 37, 13, {0, 10}, 3}, Case{1, 256, 13, {0, 10}, 5},
                        Case{2, 40, 70, {3, 67}, 32}, Case{2, 40, 70, {3, 67}, 33}}) {
    const std::string what = "count_correct N=" + std::to_string(c.N) + " B=" + std::to_string(c.B) +
                             " C=" + std::to_string(c.C) + " tie gap " + std::to_string(c.tie_gap);
    run_case(what, [&] {
      std::vector<double> z = uniform_values(c.N * c.B * c.C, 71 + uint64_t(c.tie_gap), -2, 2);
      Rng rng(72);
      std::vector<int32_t> labels(size_t(c.N * c.B));
      const int64_t W = c.cols.width();
      for (int64_t r = 0; r < c.N * c.B; ++r) {
        double* row = z.data() + r * c.C;
        int32_t& label = labels[size_t(r)];
        label = int32_t(rng.below(W));
        const int64_t a = rng.below(W - c.tie_gap), a2 = a + c.tie_gap;
        switch (r % 7) {
          case 1:  // tie, label = the first: correct
          case 2:  // tie, label = the second: wrong
            row[c.cols.begin + a] = row[c.cols.begin + a2] = 5.0;
            label = int32_t(r % 7 == 1 ? a : a2);
            break;
          case 3:  // NaN wins
            row[c.cols.begin + a] = kNaN;
            label = int32_t(a);
            break;
          case 4:  // two NaNs, the first wins
            row[c.cols.begin + a] = row[c.cols.begin + a2] = kNaN;
            label = int32_t(r % 2 ? a : a2);
            break;
          case 5:  // NaN outside the class range changes nothing
            row[c.cols.end < c.C ? c.cols.end : c.cols.begin - 1] = kNaN;
            break;
          case 6:  // the true maximum, ordinary
            row[c.cols.begin + a] = 9.0;
            label = int32_t(a);
            break;
          default:
            break;
        }
      }
      std::vector<int64_t> start(size_t(c.N));
      for (int64_t n = 0; n < c.N; ++n) start[size_t(n)] = 5 + 2 * n;
      const Shape ls{c.N, c.B}, zs{c.N, c.B, c.C};
      Tensor counts_cpu = Tensor::from_vector(start, {c.N}),
             counts_gpu = Tensor::from_vector(start, {c.N}, Device::cuda);
      count_correct(tensor_of(z, zs, Device::cpu, DType::f32), Tensor::from_vector(labels, ls), c.cols,
                    counts_cpu);
      count_correct(gpu32(z, zs), Tensor::from_vector(labels, ls, Device::cuda), c.cols, counts_gpu);
      const std::vector<int64_t> want = counts_cpu.to_vector<int64_t>();
      EXPECT_TRUE(exactly_equal(what + ": counts", counts_gpu.to_vector<int64_t>(), want, {c.N}));
      EXPECT_GT(want[0], start[0]) << what << ": test construction should make some samples correct";
    });
  }
}

// =============================================================================================
// Adam and the engine's kernels
// =============================================================================================

TEST_F(CudaOps, AdamMatchesCpuFloat32OverSteps) {
  const int64_t n = 10007;
  const AdamOptions options[] = {{3e-4, 0.9, 0.999, 1e-8, 0.0}, {1e-3, 0.8, 0.99, 1e-6, 0.01}};
  for (const AdamOptions& o : options) {
    const std::string what = "Adam lr=" + num(o.lr) + " weight_decay=" + num(o.weight_decay);
    run_case(what, [&] {
      const std::vector<double> p0 = uniform_values(n, 81, -1, 1);
      Tensor p_cpu = tensor_of(p0, {n}, Device::cpu, DType::f32), g_cpu = Tensor::zeros({n});
      Tensor p_gpu = gpu32(p0, {n}), g_gpu = Tensor::zeros({n}, DType::f32, Device::cuda);
      Adam cpu(p_cpu, g_cpu, o), gpu(p_gpu, g_gpu, o);
      for (int step = 1; step <= 6; ++step) {
        std::vector<double> g = uniform_values(n, 90 + uint64_t(step), -1e-2 * step, 1e-2 * step);
        for (size_t i = 0; i < g.size(); i += 11) g[i] = 0.0;  // zero gradients: the moments stay 0
        g_cpu.copy_from(tensor_of(g, {n}, Device::cpu, DType::f32));
        g_gpu.copy_from(gpu32(g, {n}));
        cpu.step();
        gpu.step();
        const std::string at = what + " after step " + std::to_string(step);
        EXPECT_TRUE(all_close(at + ": parameters", p_gpu, p_cpu, 1e-6));
        EXPECT_TRUE(all_close(at + ": exp_avg", gpu.exp_avg(), cpu.exp_avg(), 1e-6));
        EXPECT_TRUE(all_close(at + ": exp_avg_sq", gpu.exp_avg_sq(), cpu.exp_avg_sq(), 1e-6));
      }
      EXPECT_EQ(gpu.steps_taken(), 6);
      // Not required, but worth knowing: does the kernel reproduce the CPU's bits?
      const std::vector<float> a = p_gpu.to_vector<float>(), b = p_cpu.to_vector<float>();
      int64_t differ = 0;
      for (size_t i = 0; i < a.size(); ++i) differ += std::memcmp(&a[i], &b[i], 4) != 0;
      std::cout << "[ info ] " << what << ": " << differ << " of " << n
                << " parameters differ from the CPU's in their bits after 6 steps\n";
    });
  }
}

TEST_F(CudaOps, FillWritesEveryDtype) {
  const int64_t n = 1000003;  // more than one grid's worth of blocks at 256 threads
  auto check = [&](DType dtype, double value) {
    Tensor t = Tensor::empty({n}, dtype, Device::cuda);
    fill(t, value);
    Tensor c = Tensor::empty({n}, dtype, Device::cpu);
    fill(c, value);
    const std::string what = std::string("fill ") + dtype_name(dtype) + " with " + num(value);
    switch (dtype) {
      case DType::f32:
        EXPECT_TRUE(bitwise_equal(what, t.to_vector<float>(), c.to_vector<float>(), {n}));
        break;
      case DType::f64:
        EXPECT_TRUE(exactly_equal(what, t.to_vector<double>(), c.to_vector<double>(), {n}));
        break;
      case DType::i32:
        EXPECT_TRUE(exactly_equal(what, t.to_vector<int32_t>(), c.to_vector<int32_t>(), {n}));
        break;
      case DType::i64:
        EXPECT_TRUE(exactly_equal(what, t.to_vector<int64_t>(), c.to_vector<int64_t>(), {n}));
        break;
      case DType::u8:
        EXPECT_TRUE(exactly_equal(what, t.to_vector<uint8_t>(), c.to_vector<uint8_t>(), {n}));
        break;
    }
  };
  check(DType::f32, -1.5);
  check(DType::f64, 2.25);
  check(DType::i32, -7);
  check(DType::i64, double(int64_t(1) << 40));
  check(DType::u8, 200);
}

TEST_F(CudaOps, AddIntoMatchesCpu) {
  const int64_t n = 100003;
  const std::vector<double> a = uniform_values(n, 111, -1, 1), b = uniform_values(n, 112, -1, 1);
  Tensor dst = gpu32(a, {n}), ref = cpu64(a, {n});
  add_into(dst, gpu32(b, {n}), -0.75);
  add_into(ref, cpu64(b, {n}), -0.75);
  EXPECT_TRUE(all_close("add_into(alpha = −0.75)", dst, ref, 1e-6));
}

TEST_F(CudaOps, AccumulateAndWatchMatchesCpu) {
  const int64_t N = 5, kNoFault = int64_t(1) << 62;
  auto run = [&](Device device) {
    Tensor sum = tensor_of({1, 2, 3, 4, 5}, {N}, device, DType::f32);
    Tensor step = Tensor::from_vector(std::vector<int64_t>{0}, {1}, device);
    Tensor first_bad = Tensor::from_vector(std::vector<int64_t>{kNoFault}, {1}, device);
    const std::vector<std::vector<double>> values = {{0.5, -1, 2, 0.25, 1e-3},
                                                     {1, 1, kNaN, 1, 1},  // step 5: a NaN
                                                     {1, std::numeric_limits<double>::infinity(), 1, 1, 1}};
    const int64_t steps[] = {3, 5, 7};
    std::vector<int64_t> bad_after;
    for (size_t k = 0; k < values.size(); ++k) {
      step.copy_from(Tensor::from_vector(std::vector<int64_t>{steps[k]}, {1}));
      accumulate_and_watch(sum, tensor_of(values[k], {N}, device, DType::f32), 64.0, step, first_bad);
      bad_after.push_back(first_bad.to_vector<int64_t>()[0]);
    }
    return std::make_pair(values_of(sum), bad_after);
  };
  const auto [sum_gpu, bad_gpu] = run(Device::cuda);
  const auto [sum_cpu, bad_cpu] = run(Device::cpu);
  EXPECT_TRUE(all_close("accumulate_and_watch sums", sum_gpu, sum_cpu, {N}, 1e-6));
  EXPECT_TRUE(exactly_equal("accumulate_and_watch first_bad after each call", bad_gpu, bad_cpu, {3}));
  EXPECT_EQ(bad_gpu, (std::vector<int64_t>{kNoFault, 5, 5}));
}

TEST_F(CudaOps, CountNonfiniteMatchesCpu) {
  const int64_t n = 1000003;
  std::vector<double> v = uniform_values(n, 121, -1, 1);
  for (int64_t i = 17; i < n; i += 9973) v[size_t(i)] = kNaN;
  for (int64_t i = 5; i < n; i += 31337) v[size_t(i)] = std::numeric_limits<double>::infinity();
  v[size_t(n - 1)] = -std::numeric_limits<double>::infinity();
  const int64_t want = count_nonfinite(tensor_of(v, {n}, Device::cpu, DType::f32));
  EXPECT_EQ(count_nonfinite(gpu32(v, {n})), want);
  EXPECT_GT(want, 100);
  EXPECT_EQ(count_nonfinite(Tensor::zeros({n}, DType::f32, Device::cuda)), 0);
}

TEST_F(CudaOps, IncrementAdvancesDeviceCounters) {
  Tensor counter = Tensor::from_vector(std::vector<int64_t>{41}, {1}, Device::cuda);
  for (int k = 0; k < 3; ++k) increment(counter);
  EXPECT_EQ(counter.to_vector<int64_t>()[0], 44);
  // Up to four counters in one launch.
  std::vector<Tensor> counters;
  for (int64_t k = 0; k < 4; ++k)
    counters.push_back(Tensor::from_vector(std::vector<int64_t>{10 * k}, {1}, Device::cuda));
  increment(counters);
  increment({counters[1], counters[3]});
  std::vector<int64_t> got;
  for (const Tensor& c : counters) got.push_back(c.to_vector<int64_t>()[0]);
  EXPECT_EQ(got, (std::vector<int64_t>{1, 12, 21, 32}));
}

// =============================================================================================
// Batches and noise
// =============================================================================================

struct NoiseArgs {
  NoiseArgs(int64_t models, int64_t batch, int64_t pixels, uint64_t key, uint64_t stream_id_)
      : N(models), B(batch), P(pixels), seed(key), stream(stream_id_) {}
  int64_t N, B, P;
  uint64_t seed, stream;
  std::vector<int32_t> order;  // [sources, S] or empty (fresh noise)
  int64_t S = 0, stride = 0, first_image = 0;
  NoiseDistribution distribution = NoiseDistribution::uniform;
  int64_t sources = 0;  // model n draws from source n mod sources (0: sources = N)
  int64_t source_count() const { return sources ? sources : N; }
};

std::vector<float> noise_on(Device device, const NoiseArgs& a, int64_t step) {
  const Tensor order =
      a.order.empty() ? Tensor() : Tensor::from_vector(a.order, {a.source_count(), a.S}, device);
  const Tensor st = Tensor::from_vector(std::vector<int64_t>{step}, {1}, device);
  Tensor x = device == Device::cuda ? poisoned({a.N, a.B, a.P}) : Tensor::zeros({a.N, a.B, a.P});
  noise_batch(a.seed, a.stream, order, st, a.stride, a.first_image, a.distribution, x, a.sources);
  return x.to_vector<float>();
}

// For the first few mismatches of uniform noise: the Philox word the CPU used, the 24-bit word the GPU
// value implies, and where (if anywhere) the GPU's value occurs in the CPU's batch.
std::string noise_diagnosis(const std::vector<float>& gpu, const std::vector<float>& cpu, const NoiseArgs& a,
                            int64_t step) {
  std::ostringstream m;
  int shown = 0;
  const int64_t image_stride = a.P + (a.P & 1);
  for (int64_t e = 0; e < int64_t(gpu.size()) && shown < 4; ++e) {
    if (std::memcmp(&gpu[size_t(e)], &cpu[size_t(e)], 4) == 0) continue;
    ++shown;
    const int64_t k = e % a.P, row = e / a.P, b = row % a.B, n = row / a.B, source = n % a.source_count();
    const int64_t first = step * a.stride;
    const int64_t image =
        a.order.empty() ? a.first_image + first + b : a.order[size_t(source * a.S + first + b)];
    const uint64_t position = uint64_t(image) * uint64_t(image_stride) + uint64_t(k);
    const philox::Block w = philox::block(a.seed + uint64_t(source), a.stream, position / 4);
    const double g = double(gpu[size_t(e)]);
    const unsigned implied = std::isfinite(g) && g >= -1 && g < 1 ? unsigned((g + 1.0) * 8388608.0) : 0u;
    char buf[512];
    std::snprintf(
        buf, sizeof buf,
        "\n  [n=%lld, b=%lld, k=%lld] image %lld, position %llu: CPU word 0x%08x (block words %08x %08x "
        "%08x %08x) → %.9g; GPU %.9g ⇒ 24-bit word 0x%06x (CPU's 0x%06x)",
        (long long)n, (long long)b, (long long)k, (long long)image, (unsigned long long)position,
        w[position % 4], w[0], w[1], w[2], w[3], double(cpu[size_t(e)]), g, implied, w[position % 4] >> 8);
    m << buf;
    for (size_t j = 0; j < cpu.size(); ++j)
      if (std::memcmp(&gpu[size_t(e)], &cpu[j], 4) == 0) {
        m << "; the GPU value is the CPU's at " << index_string(int64_t(j), {a.N, a.B, a.P});
        break;
      }
  }
  return m.str();
}

const uint64_t kNoiseSeed = 0x123456789ABCDEF0ull;  // both 32-bit halves of the key matter

// Also with sources: 6 models drawing from 3 noise sources (student arms sharing their teacher's
// noise, as the app's distillation does), where model n and n + 3 must see the same images.
TEST_F(CudaOps, UniformNoiseMatchesCpuBitForBit) {
  // P = 784 takes the four-pixels-per-thread kernel, 13 and 10 the per-pixel one (odd and even P).
  for (int64_t P : {784, 13, 10})
    for (bool ordered : {false, true})
      for (int64_t sources : {0, 3}) {
        NoiseArgs a(sources ? 6 : 3, 37, P, kNoiseSeed, stream_id(7, 1, 2));
        a.stride = a.B;
        a.sources = sources;
        if (ordered) {
          a.S = 300;
          for (int64_t n = 0; n < a.source_count(); ++n) {
            const std::vector<int32_t> p = permutation(a.S, 130 + uint64_t(n));
            a.order.insert(a.order.end(), p.begin(), p.end());
          }
        } else {
          a.first_image = 60000;
        }
        const std::string what = "uniform noise P=" + std::to_string(P) +
                                 (ordered ? " (ordered" : " (fresh") + ", N=" + std::to_string(a.N) +
                                 ", sources " + std::to_string(a.source_count()) + ")";
        run_case(what, [&] {
          const std::vector<float> gpu = noise_on(Device::cuda, a, 3), cpu = noise_on(Device::cpu, a, 3);
          const ::testing::AssertionResult same = bitwise_equal(what, gpu, cpu, {a.N, a.B, a.P});
          EXPECT_TRUE(same) << noise_diagnosis(gpu, cpu, a, 3);
          if (sources) {  // models n and n + sources share a source
            const size_t half = gpu.size() / 2;
            EXPECT_TRUE(bitwise_equal(what + ": models 3..5 vs models 0..2",
                                      std::vector<float>(gpu.begin() + long(half), gpu.end()),
                                      std::vector<float>(gpu.begin(), gpu.begin() + long(half)),
                                      {3, a.B, a.P}));
          }
        });
      }
}

// A batch view that does not start on 16 bytes (one float into a larger buffer) cannot take the
// float4 stores: it gets the per-pixel kernel, and the same bits as an aligned batch.
TEST_F(CudaOps, NoiseIntoAViewOffByOneFloatIsTheSameNoise) {
  NoiseArgs a(2, 9, 784, kNoiseSeed, stream_id(7, 1, 2));
  a.stride = a.B;
  const std::vector<float> aligned = noise_on(Device::cuda, a, 1);
  const Tensor buffer = poisoned({a.N * a.B * a.P + 4});
  const Tensor view = Tensor::view_of(buffer, 1, {a.N, a.B, a.P});
  noise_batch(a.seed, a.stream, Tensor(), Tensor::from_vector(std::vector<int64_t>{1}, {1}, Device::cuda),
              a.stride, a.first_image, a.distribution, view);
  EXPECT_TRUE(
      bitwise_equal("noise into a view at float 1", view.to_vector<float>(), aligned, {a.N, a.B, a.P}));
}

// The epilogue kernels read the ReLU mask as 32-bit words: a mask view that does not start on 4
// bytes is a ShapeError, not a misaligned-address fault.
TEST_F(CudaOps, AMaskViewOffFourBytesIsRefused) {
  const Shape ms = gemm::mask_shape(1, 4, 40);
  const Tensor mask_buffer = Tensor::zeros({ms[0] * ms[1] * ms[2] + 4}, DType::u8, Device::cuda);
  const Tensor mask = Tensor::view_of(mask_buffer, 1, ms);
  try {
    gemm::apply_relu_mask(poisoned({1, 4, 40}), mask);
    ADD_FAILURE() << "a mask view at byte 1 was taken";
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("must start on a 4-byte boundary"), std::string::npos) << e.what();
  }
}

TEST_F(CudaOps, UniformNoiseRangeMomentsAndReproducibility) {
  NoiseArgs a(3, 256, 784, 2024, stream_id(3));
  a.stride = a.B;
  const std::vector<float> x = noise_on(Device::cuda, a, 0);
  double sum = 0, sum2 = 0;
  float lo = 1, hi = -1;
  for (float v : x) sum += v, sum2 += double(v) * v, lo = std::min(lo, v), hi = std::max(hi, v);
  const double n = double(x.size()), mean = sum / n, var = sum2 / n - mean * mean;
  EXPECT_GE(lo, -1.0f);
  EXPECT_LT(hi, 1.0f);
  EXPECT_NEAR(mean, 0.0, 5 * std::sqrt(1.0 / 3.0 / n)) << "uniform noise mean over " << n << " pixels";
  EXPECT_NEAR(var, 1.0 / 3.0, 5e-3) << "uniform noise variance";
  // The same seed, stream and step: the same bits.
  EXPECT_TRUE(bitwise_equal("noise drawn twice", noise_on(Device::cuda, a, 0), x, {a.N, a.B, a.P}));
  // Another step: other images; and step 1 is exactly the batch that starts B images later.
  const std::vector<float> next = noise_on(Device::cuda, a, 1);
  int64_t equal = 0;
  for (size_t i = 0; i < x.size(); ++i) equal += x[i] == next[i];
  EXPECT_LT(equal, int64_t(x.size()) / 1000) << "steps 0 and 1 share " << equal << " pixels";
  NoiseArgs shifted = a;
  shifted.first_image = a.B;
  EXPECT_TRUE(bitwise_equal("step 1 vs step 0 with first_image = B", next, noise_on(Device::cuda, shifted, 0),
                            {a.N, a.B, a.P}));
  // Models draw from different keys.
  const int64_t per_model = a.B * a.P;
  int64_t same_model = 0;
  for (int64_t i = 0; i < per_model; ++i) same_model += x[size_t(i)] == x[size_t(per_model + i)];
  EXPECT_LT(same_model, per_model / 1000) << "models 0 and 1 share " << same_model << " pixels";
}

TEST_F(CudaOps, GaussianNoiseCloseToCpuWithUnitMoments) {
  for (int64_t P : {784, 13}) {
    const std::string what = "gaussian noise P=" + std::to_string(P);
    run_case(what, [&] {
      NoiseArgs a(6, 64, P, kNoiseSeed, stream_id(9, 4));
      a.sources = 3;
      a.stride = a.B;
      a.first_image = 123;
      a.distribution = NoiseDistribution::gaussian;
      const std::vector<float> gpu = noise_on(Device::cuda, a, 2), cpu = noise_on(Device::cpu, a, 2);
      double max_diff = 0, sum = 0, sum2 = 0;
      int64_t worst = 0, nonfinite = 0;
      for (size_t i = 0; i < gpu.size(); ++i) {
        nonfinite += !std::isfinite(gpu[i]);
        const double d = std::fabs(double(gpu[i]) - double(cpu[i]));
        if (d > max_diff) max_diff = d, worst = int64_t(i);
        sum += gpu[i], sum2 += double(gpu[i]) * gpu[i];
      }
      EXPECT_EQ(nonfinite, 0);
      EXPECT_LE(max_diff, 1e-5) << what << ": max |GPU − CPU| at " << index_string(worst, {a.N, a.B, a.P})
                                << " (GPU " << num(gpu[size_t(worst)]) << ", CPU " << num(cpu[size_t(worst)])
                                << ")";
      const double n = double(gpu.size()), mean = sum / n, var = sum2 / n - mean * mean;
      EXPECT_NEAR(mean, 0.0, 5 / std::sqrt(n)) << what << " mean";
      EXPECT_NEAR(var, 1.0, 8 * std::sqrt(2.0 / n)) << what << " variance";
    });
  }
}

TEST_F(CudaOps, GatherBatchMatchesCpuExactly) {
  for (int64_t P : {784, 13}) {
    const std::string what = "gather_batch P=" + std::to_string(P);
    run_case(what, [&] {
      const int64_t S = 40, N = 3, B = 7, stride = 5, step = 3;  // positions 15..21 of each order
      Rng rng(141);
      std::vector<uint8_t> images(static_cast<size_t>(S * P)), labels(static_cast<size_t>(S));
      for (uint8_t& v : images) v = uint8_t(rng.below(256));
      images[0] = 0, images[1] = 255, images[size_t(S * P - 1)] = 255;
      for (uint8_t& l : labels) l = uint8_t(rng.below(10));
      std::vector<int32_t> order;
      for (int64_t n = 0; n < N; ++n) {
        const std::vector<int32_t> p = permutation(S, 150 + uint64_t(n));
        order.insert(order.end(), p.begin(), p.end());
      }
      auto run = [&](Device device) {
        Tensor x = device == Device::cuda ? poisoned({N, B, P}) : Tensor::zeros({N, B, P});
        Tensor y = Tensor::full({N, B}, -7, DType::i32, device);
        gather_batch(Tensor::from_vector(images, {S, P}, device), Tensor::from_vector(labels, {S}, device),
                     Tensor::from_vector(order, {N, S}, device),
                     Tensor::from_vector(std::vector<int64_t>{step}, {1}, device), stride, x, y);
        return std::make_pair(x.to_vector<float>(), y.to_vector<int32_t>());
      };
      const auto [xg, yg] = run(Device::cuda);
      const auto [xc, yc] = run(Device::cpu);
      EXPECT_TRUE(bitwise_equal(what + ": x", xg, xc, {N, B, P}));
      EXPECT_TRUE(exactly_equal(what + ": y", yg, yc, {N, B}));
      // The contract itself: row b of model n is image order[n, step·stride + b], normalised.
      int64_t wrong = 0;
      for (int64_t n = 0; n < N; ++n)
        for (int64_t b = 0; b < B; ++b) {
          const int64_t i = order[size_t(n * S + step * stride + b)];
          wrong += yg[size_t(n * B + b)] != labels[size_t(i)];
          for (int64_t k = 0; k < P; ++k)
            wrong +=
                xg[size_t((n * B + b) * P + k)] != (float(images[size_t(i * P + k)]) / 255.0f - 0.5f) / 0.5f;
        }
      EXPECT_EQ(wrong, 0) << what << ": values that are not image order[n, step·stride + b] normalised";
    });
  }
}

// =============================================================================================
// The whole MLP, for every fusion
// =============================================================================================

struct MlpCase {
  const char* name;
  std::vector<int64_t> sizes;
  int64_t N, B;
  ColumnRange classes() const { return {0, sizes.back() == 13 ? 10 : sizes.back()}; }
};
void PrintTo(const MlpCase& c, std::ostream* os) { *os << c.name; }
const std::vector<MlpCase> kMlpCases = {{"mnist_N1_B256", {784, 256, 256, 13}, 1, 256},
                                        {"mnist_N3_B64", {784, 256, 256, 13}, 3, 64},
                                        {"odd_N3_B37", {53, 29, 31, 7}, 3, 37},
                                        {"odd_N1_B37", {53, 29, 31, 7}, 1, 37}};

const char* fusion_name(MlpFusion f) {
  return f == MlpFusion::whole ? "whole" : f == MlpFusion::per_layer ? "per_layer" : "none";
}

std::vector<int32_t> random_labels(int64_t count, int64_t classes, uint64_t seed) {
  Rng rng(seed);
  std::vector<int32_t> labels(static_cast<size_t>(count));
  for (int32_t& l : labels) l = int32_t(rng.below(classes));
  return labels;
}

// One forward + cross-entropy + backward; x is a leaf that wants its gradient too.
struct MlpPass {
  Tensor x, logits, loss;
};
MlpPass mlp_pass(const MlpParams& p, const std::vector<double>& x, const std::vector<int32_t>& labels,
                 ColumnRange classes, MlpFusion fusion) {
  const int64_t N = p.models(), I = p.shape().inputs(), B = int64_t(x.size()) / (N * I);
  MlpPass r;
  r.x = tensor_of(x, {N, B, I}, p.device(), p.dtype());
  r.x.set_requires_grad(true);
  r.logits = mlp_forward(r.x, p, fusion);
  r.loss = cross_entropy(r.logits, Tensor::from_vector(labels, {N, B}, p.device()), classes);
  zero_grad(p.tensors());
  r.loss.backward();
  return r;
}

class CudaMlp : public CudaTest, public ::testing::WithParamInterface<std::tuple<MlpCase, MlpFusion>> {};

TEST_P(CudaMlp, ForwardBackwardMatchesCpu) {
  const MlpCase& c = std::get<0>(GetParam());
  const MlpFusion fusion = std::get<1>(GetParam());
  const std::string what = std::string(c.name) + " fusion=" + fusion_name(fusion);
  const MlpParams p32 = make_params(c.sizes, c.N, 1000);
  const MlpParams p64 = params_as(p32, Device::cpu, DType::f64),
                  pg = params_as(p32, Device::cuda, DType::f32);
  double margin = 0;
  const std::vector<double> x = input_with_margin(p64, c.B, 2024, 5e-6, &margin);
  EXPECT_GE(margin, 5e-6) << what
                          << ": no input seed kept the hidden pre-activations ≥ 5e-6·rms from 0 (best "
                          << num(margin) << "); gradient differences below may come from ReLU kinks";
  const std::vector<int32_t> labels = random_labels(c.N * c.B, c.classes().width(), 77);

  const MlpPass ref = mlp_pass(p64, x, labels, c.classes(), MlpFusion::none);  // the CPU reference path
  const MlpPass gpu = mlp_pass(pg, x, labels, c.classes(), fusion);
  EXPECT_TRUE(all_close(what + ": logits", gpu.logits, ref.logits, kFp32Tol));
  EXPECT_TRUE(all_close(what + ": loss", gpu.loss, ref.loss, kFp32Tol));
  EXPECT_TRUE(all_close(what + ": d input", gpu.x.grad(), ref.x.grad(), kFp32Tol));
  const std::vector<Tensor> tg = pg.tensors(), tr = p64.tensors();
  const std::vector<std::string> names = pg.names();
  for (size_t k = 0; k < tg.size(); ++k) {
    EXPECT_TRUE(tg[k].has_grad()) << what << ": " << names[k] << " has no gradient after backward";
    EXPECT_TRUE(all_close(what + ": d " + names[k], tg[k].grad(), tr[k].grad(), kFp32Tol));
  }
  // Ghost logits (columns past the classes) get exactly zero gradient from the teacher's loss.
  const int L = pg.shape().layers();
  const int64_t out = c.sizes.back(), in = c.sizes[c.sizes.size() - 2];
  if (c.classes().end < out) {
    const std::vector<float> dw = pg.weight(L - 1).grad().to_vector<float>();
    int64_t nonzero = 0;
    for (int64_t n = 0; n < c.N; ++n)
      for (int64_t o = c.classes().end; o < out; ++o)
        for (int64_t i = 0; i < in; ++i) nonzero += dw[size_t((n * out + o) * in + i)] != 0.0f;
    EXPECT_EQ(nonzero, 0) << what << ": last-layer weight rows of the ghost logits got gradient";
  }
  print_fallbacks(what);
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaMlp,
                         ::testing::Combine(::testing::ValuesIn(kMlpCases),
                                            ::testing::Values(MlpFusion::whole, MlpFusion::per_layer,
                                                              MlpFusion::none)),
                         [](const ::testing::TestParamInfo<CudaMlp::ParamType>& info) {
                           return std::string(std::get<0>(info.param).name) + "_" +
                                  fusion_name(std::get<1>(info.param));
                         });

// ---- float32 gradient check on the GPU -------------------------------------------------------
// The GPU's analytic gradient of both losses against (a) the float64 CPU gradient (1e-5) and (b)
// central differences of the GPU's own float32 loss with h = 1e-2, for the four largest gradient
// elements of every parameter tensor. Kink-aware, as ggml's test-backend-ops: with h = 1e-2 some
// ReLUs cross their kink inside ±h, so even exact arithmetic's quotient misses the gradient by
// |fd64 − g64| (computed on the float64 CPU for the same perturbation); the GPU's quotient may miss
// by that plus 1e-2 relative plus its float32 rounding noise. Separately, the GPU's quotient must
// equal the CPU's quotient of the same perturbation within 1e-3 plus that noise.

enum class LossKind { cross_entropy, distill };
void PrintTo(LossKind k, std::ostream* os) {
  *os << (k == LossKind::cross_entropy ? "cross_entropy" : "distill");
}

Tensor loss_of(LossKind kind, const Tensor& logits, const Tensor& labels, const Tensor& teacher,
               ColumnRange classes) {
  if (kind == LossKind::cross_entropy) return cross_entropy(logits, labels, classes);
  const int64_t C = logits.dim(2);
  return distill_kl(logits, teacher, {classes.end < C ? classes.end : C - 3, C}, 2.0);
}

class CudaMlpGradcheck : public CudaTest,
                         public ::testing::WithParamInterface<std::tuple<MlpCase, LossKind>> {};

TEST_P(CudaMlpGradcheck, Float32GradientsAgreeWithCpuAndFiniteDifferences) {
  const MlpCase& c = std::get<0>(GetParam());
  const LossKind kind = std::get<1>(GetParam());
  const std::string what =
      std::string(c.name) + (kind == LossKind::cross_entropy ? " cross_entropy" : " distill_kl");
  const int64_t N = c.N, B = c.B, I = c.sizes.front(), C = c.sizes.back();
  MlpParams p32 = make_params(c.sizes, N, 3000);
  MlpParams p64 = params_as(p32, Device::cpu, DType::f64), pg = params_as(p32, Device::cuda, DType::f32);
  const std::vector<double> x = input_with_margin(p64, B, 4040, 5e-6);
  const std::vector<int32_t> labels = random_labels(N * B, c.classes().width(), 88);
  const std::vector<double> teacher = uniform_values(N * B * C, 89, -2, 2);
  const Tensor x64 = cpu64(x, {N, B, I}), xg = gpu32(x, {N, B, I});
  const Tensor labels64 = Tensor::from_vector(labels, {N, B}),
               labelsg = Tensor::from_vector(labels, {N, B}, Device::cuda);
  const Tensor teacher64 = cpu64(teacher, {N, B, C}), teacherg = gpu32(teacher, {N, B, C});

  auto loss_cpu = [&] { return loss_of(kind, mlp_forward(x64, p64), labels64, teacher64, c.classes()); };
  auto loss_gpu = [&] { return loss_of(kind, mlp_forward(xg, pg), labelsg, teacherg, c.classes()); };
  {
    Tensor l64 = loss_cpu(), lg = loss_gpu();
    zero_grad(p64.tensors());
    zero_grad(pg.tensors());
    l64.backward();
    lg.backward();
    EXPECT_TRUE(all_close(what + ": loss", lg, l64, kFp32Tol));
  }
  const std::vector<Tensor> tg = pg.tensors(), t64 = p64.tensors(), t32 = p32.tensors();
  const std::vector<std::string> names = pg.names();
  int64_t checked = 0;
  for (size_t k = 0; k < tg.size(); ++k) {
    const std::vector<double> g64 = values_of(t64[k].grad()), g32 = values_of(tg[k].grad());
    EXPECT_TRUE(all_close(what + ": d " + names[k] + " (GPU analytic vs CPU analytic)", g32, g64,
                          t64[k].shape(), kFp32Tol));
    std::vector<int64_t> order(g64.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = int64_t(i);
    std::sort(order.begin(), order.end(),
              [&](int64_t a, int64_t b) { return std::fabs(g64[size_t(a)]) > std::fabs(g64[size_t(b)]); });
    const std::vector<float> theta = t32[k].to_vector<float>();
    const int64_t per_model = t64[k].numel() / N;
    double worst_kink = 0;
    for (size_t rank = 0; rank < std::min<size_t>(4, order.size()); ++rank) {
      const int64_t idx = order[rank], n = idx / per_model;
      if (g64[size_t(idx)] == 0) break;
      const float plus = theta[size_t(idx)] + 1e-2f, minus = theta[size_t(idx)] - 1e-2f;
      const double h2 = double(plus) - double(minus);  // the perturbation both backends really apply
      auto eval = [&](float v, bool on_gpu) {
        NoGradGuard no_grad;
        double loss;
        if (on_gpu) {
          Tensor::view_of(tg[k], idx, {1}).copy_from(Tensor::from_vector(std::vector<float>{v}, {1}));
          loss = values_of(loss_gpu())[size_t(n)];
          Tensor::view_of(tg[k], idx, {1})
              .copy_from(Tensor::from_vector(std::vector<float>{theta[size_t(idx)]}, {1}));
        } else {
          t64[k].data<double>()[idx] = double(v);
          loss = values_of(loss_cpu())[size_t(n)];
          t64[k].data<double>()[idx] = double(theta[size_t(idx)]);
        }
        return loss;
      };
      const double fd64 = (eval(plus, false) - eval(minus, false)) / h2;
      const double lp = eval(plus, true), lm = eval(minus, true), fd32 = (lp - lm) / h2;
      // float32 rounding of the two losses (and of the logits feeding them), amplified by 1/(2h).
      const double noise = (std::fabs(lp) + std::fabs(lm) + 1.0) * 2.4e-7 / h2;
      const double g = g32[size_t(idx)], kink = std::fabs(fd64 - g64[size_t(idx)]);
      worst_kink = std::max(worst_kink, kink / std::fabs(g64[size_t(idx)]));
      const std::string where = what + ": " + names[k] + index_string(idx, t64[k].shape()) +
                                " (GPU quotient " + num(fd32) + ", GPU gradient " + num(g) +
                                "; CPU float64 quotient " + num(fd64) + ", gradient " +
                                num(g64[size_t(idx)]) + "; GPU loss± " + num(lp) + ", " + num(lm) + "; h2 " +
                                num(h2) + ", noise bound " + num(noise) + ")";
      EXPECT_LE(std::fabs(fd32 - fd64), 1e-3 * std::fabs(fd64) + noise) << where << ": GPU vs CPU quotient";
      EXPECT_LE(std::fabs(fd32 - g), 1e-2 * std::fabs(g) + kink + noise)
          << where << ": GPU quotient vs GPU gradient";
      ++checked;
    }
    std::cout << "[ info ] " << what << ": " << names[k] << ": largest float64 quotient-vs-gradient gap "
              << num(worst_kink) << " (relative; ReLU kinks within ±h)\n";
  }
  EXPECT_GT(checked, 0) << what << ": no element could be checked by finite differences";
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaMlpGradcheck,
    ::testing::Combine(::testing::Values(kMlpCases[2], MlpCase{"mnist_N1_B64", {784, 256, 256, 13}, 1, 64}),
                       ::testing::Values(LossKind::cross_entropy, LossKind::distill)),
    [](const ::testing::TestParamInfo<CudaMlpGradcheck::ParamType>& info) {
      return std::string(std::get<0>(info.param).name) +
             (std::get<1>(info.param) == LossKind::cross_entropy ? "_ce" : "_distill");
    });

// =============================================================================================
// The cuDNN route (--gemm cudnn)
// =============================================================================================
// cuDNN's fused fp32 matmuls run as TF32 on Hopper, and at TF32 a few hidden pre-activations within
// ~1e-3 of 0 land on the other side of the ReLU. So the float64 reference backward uses the GPU's own
// masks (recomputed layer by layer with gemm::forward under the same settings) — every other number
// is the CPU's — and the mask flips are counted, and allowed only where |z| < 2e-2·rms(z).

class CudaCudnn : public CudaTest, public ::testing::WithParamInterface<MlpCase> {};

// A Linear layer without a bias on the cuDNN route: cuDNN's forward graph always adds one, so the
// layer runs on cuBLASLt (in fp32), where the cuDNN engine used to throw "bias is null".
TEST_F(CudaTest, CudnnRouteRunsALayerWithoutBiasOnCublasLt) {
  if (!gemm::cudnn_compiled()) GTEST_SKIP() << "this build has no cuDNN engine (SUBLIMINAL_CUDNN=OFF)";
  gemm::settings().engine = gemm::GpuEngine::cudnn;
  const GemmData d = gemm_data(kGemmCases[2], 77);
  check_forward(d, Activation::relu, false, kFp32Tol, 1e-5, "cuDNN route, relu, no bias");
  check_forward(d, Activation::none, false, kFp32Tol, 1e-5, "cuDNN route, no bias");
}

TEST_P(CudaCudnn, MlpForwardBackwardMatchesCpuAtTf32) {
  if (!gemm::cudnn_compiled()) GTEST_SKIP() << "this build has no cuDNN engine (SUBLIMINAL_CUDNN=OFF)";
  const MlpCase& c = GetParam();
  gemm::settings().engine = gemm::GpuEngine::cudnn;
  const int64_t N = c.N, B = c.B;
  const int L = int(c.sizes.size()) - 1;
  const MlpParams p32 = make_params(c.sizes, N, 5000);
  const MlpParams p64 = params_as(p32, Device::cpu, DType::f64),
                  pg = params_as(p32, Device::cuda, DType::f32);
  const std::vector<double> x = uniform_values(N * B * c.sizes[0], 5050, -1, 1);
  const std::vector<int32_t> labels = random_labels(N * B, c.classes().width(), 99);

  // 1. What training runs: the whole-MLP node on the cuDNN route.
  const MlpPass gpu = mlp_pass(pg, x, labels, c.classes(), MlpFusion::whole);

  // 2. The GPU's masks, and the CPU's forward pass.
  std::vector<std::vector<uint8_t>> gpu_masks;
  std::vector<Tensor> h64{cpu64(x, {N, B, c.sizes[0]})};
  {
    NoGradGuard no_grad;
    Tensor h = gpu32(x, {N, B, c.sizes[0]});
    for (int l = 0; l + 1 < L; ++l) {
      const int64_t out = c.sizes[size_t(l) + 1];
      Tensor y = poisoned({N, B, out}), m = poisoned_mask(gemm::mask_shape(N, B, out));
      gemm::forward(h, pg.weight(l), pg.bias(l), Activation::relu, y, m);
      gpu_masks.push_back(m.to_vector<uint8_t>());
      h = y;
      Tensor z64 = Tensor::zeros({N, B, out}, DType::f64);
      gemm::forward(h64.back(), p64.weight(l), p64.bias(l), Activation::none, z64, Tensor());
      const std::vector<double> z = z64.to_vector<double>();
      std::vector<double> relu_z = z;
      for (double& v : relu_z) v = v <= 0 ? 0 : v;
      std::string notes;
      EXPECT_TRUE(masks_match(
          std::string(c.name) + " cuDNN route: hidden layer " + std::to_string(l) + " mask (GPU) vs CPU",
          gpu_masks.back(), mask_from_values(z, N, B, out), N, B, out, &z, 2e-2 * rms(z), &notes));
      std::cout << notes;
      h64.push_back(cpu64(relu_z, {N, B, out}));
    }
  }
  Tensor logits64 = Tensor::zeros({N, B, c.sizes.back()}, DType::f64);
  gemm::forward(h64.back(), p64.weight(L - 1), p64.bias(L - 1), Activation::none, logits64, Tensor());
  EXPECT_TRUE(all_close(std::string(c.name) + " cuDNN route: logits", gpu.logits, logits64, kCudnnTf32Tol));

  // 3. The float64 backward with the GPU's masks.
  Tensor logits_leaf = logits64.clone();
  logits_leaf.set_requires_grad(true);
  cross_entropy(logits_leaf, Tensor::from_vector(labels, {N, B}), c.classes()).backward();
  Tensor dz = logits_leaf.grad();
  std::vector<Tensor> dw(static_cast<size_t>(L)), db(static_cast<size_t>(L));
  for (int l = L - 1; l >= 0; --l) {
    const int64_t in = c.sizes[size_t(l)], out = c.sizes[size_t(l) + 1];
    dw[size_t(l)] = Tensor::zeros({N, out, in}, DType::f64);
    if (l == L - 1) db[size_t(l)] = Tensor::zeros({N, out}, DType::f64);
    gemm::backward_weight(dz, h64[size_t(l)], dw[size_t(l)], false, l == L - 1 ? db[size_t(l)] : Tensor());
    if (l == 0) break;
    Tensor dz_below = Tensor::zeros({N, B, in}, DType::f64);
    db[size_t(l) - 1] = Tensor::zeros({N, in}, DType::f64);
    gemm::backward_input(dz, p64.weight(l),
                         Tensor::from_vector(gpu_masks[size_t(l) - 1], gemm::mask_shape(N, B, in)), dz_below,
                         db[size_t(l) - 1], false);
    dz = dz_below;
  }
  const std::vector<std::string> names = pg.names();
  for (int l = 0; l < L; ++l) {
    EXPECT_TRUE(all_close(std::string(c.name) + " cuDNN route: d " + names[size_t(2 * l)],
                          pg.weight(l).grad(), dw[size_t(l)], kCudnnTf32Tol));
    EXPECT_TRUE(all_close(std::string(c.name) + " cuDNN route: d " + names[size_t(2 * l + 1)],
                          pg.bias(l).grad(), db[size_t(l)], kCudnnTf32Tol));
  }
  print_fallbacks(std::string(c.name) + " cuDNN route (includes cuda::cudnn_report())");
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaCudnn, ::testing::Values(kMlpCases[0], kMlpCases[2]),
                         [](const ::testing::TestParamInfo<MlpCase>& info) {
                           return std::string(info.param.name);
                         });

}  // namespace
}  // namespace subliminal::cuda_test
