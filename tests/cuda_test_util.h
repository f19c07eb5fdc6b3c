// tests/cuda_test_util.h — shared helpers of the GPU suite (test_cuda_ops.cpp, test_cuda_training.cpp).
//
// Everything here runs on the host. The suite compares each CUDA op with the CPU backend in float64
// on the same float32-exact inputs, so the CPU result is the oracle and the only differences left are
// the GPU's float32 rounding. Failure messages say what was compared, the shape, the relative error,
// the worst and the first bad element (index, got, expected) and a few leading pairs.
//
// Thresholds (normalised error ‖got − ref‖ / ‖ref‖ unless said otherwise):
//   fp32 GPU vs float64 CPU            1e-5
//   TF32 (gemm::settings().tf32)       2e-3   (cuDNN route at TF32: 3e-3)
//   Adam, GPU vs CPU float32           1e-6   (the kernel mirrors the CPU arithmetic)
//   5 training steps, parameters       1e-4   (losses 1e-5 per step)
//   noise (uniform), gather_batch      bit for bit; gaussian noise 1e-5 absolute
// A NaN or Inf where the reference is finite fails whatever the error; where the reference is NaN
// the GPU must give NaN too.
//
// ReLU kinks: a pre-activation within a float32 rounding of 0 may land on the other side of the
// kink on the GPU. Mask comparisons tolerate a flipped bit only where the float64 pre-activation z
// satisfies 0 < |z| < kink (exact zeros and NaNs must agree), and the MLP tests draw inputs whose
// hidden pre-activations keep a margin from 0 (see input_with_margin), so gradients compare cleanly.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <functional>
#include <limits>
#include <ostream>
#include <sstream>
#include <string>
#include <vector>

#include "engine/autograd.h"  // NoGradGuard
#include "engine/device.h"    // cuda_available
#include "engine/nn.h"        // MlpParams
#include "engine/tensor.h"    // Tensor, Shape
#include "ops/gemm.h"         // gemm::settings, mask_shape, forward
#include "ops/mlp.h"          // MlpFusion

namespace subliminal {
// gtest's printer for the fusion parameter (found by argument-dependent lookup in MlpFusion's namespace).
inline void PrintTo(MlpFusion f, std::ostream* os) {
  *os << (f == MlpFusion::whole ? "whole" : f == MlpFusion::per_layer ? "per_layer" : "none");
}
}  // namespace subliminal

namespace subliminal::cuda_test {

constexpr double kFp32Tol = 1e-5;
constexpr double kTf32Tol = 2e-3;
constexpr double kCudnnTf32Tol = 3e-3;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// ---- the skip fixture ------------------------------------------------------------------------
// Skips with "no CUDA GPU: <reason>" when no GPU answers; saves and restores the GEMM settings so a
// test that flips TF32 / fusion / the engine cannot leak its choice into the next one.
class CudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    saved_ = gemm::settings();
    std::string why;
    if (!cuda_available(&why)) GTEST_SKIP() << "no CUDA GPU: " << why;
  }
  void TearDown() override { gemm::settings() = saved_; }

 private:
  gemm::Settings saved_;
};

// ---- a seeded generator (splitmix64: the same numbers with every standard library) ------------
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed * 0x9E3779B97F4A7C15ull + 0x2545F4914F6CDD1Dull) {}
  uint64_t next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double unit() { return double(next() >> 11) * 0x1.0p-53; }  // [0, 1)
  double uniform(double lo, double hi) { return lo + (hi - lo) * unit(); }
  int64_t below(int64_t n) { return int64_t(next() % uint64_t(n)); }
  double normal() {
    const double u1 = 1.0 - unit(), u2 = unit();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * 3.141592653589793 * u2);
  }

 private:
  uint64_t state_;
};

// n values ~ U[lo, hi), each rounded to float32 so both backends see exactly the same inputs.
inline std::vector<double> uniform_values(int64_t n, uint64_t seed, double lo, double hi) {
  Rng rng(seed);
  std::vector<double> v(static_cast<size_t>(n));
  for (double& x : v) x = double(float(rng.uniform(lo, hi)));
  return v;
}

// A random permutation of 0..n-1 (Fisher–Yates).
inline std::vector<int32_t> permutation(int64_t n, uint64_t seed) {
  Rng rng(seed);
  std::vector<int32_t> p(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) p[size_t(i)] = int32_t(i);
  for (int64_t i = n - 1; i > 0; --i) std::swap(p[size_t(i)], p[size_t(rng.below(i + 1))]);
  return p;
}

// ---- tensors <-> host vectors ---------------------------------------------------------------
inline Tensor tensor_of(const std::vector<double>& v, const Shape& shape, Device device, DType dtype) {
  if (dtype == DType::f64) return Tensor::from_vector(v, shape, device);
  std::vector<float> f(v.begin(), v.end());
  return Tensor::from_vector(f, shape, device);
}
inline Tensor gpu32(const std::vector<double>& v, const Shape& shape) {
  return tensor_of(v, shape, Device::cuda, DType::f32);
}
inline Tensor cpu64(const std::vector<double>& v, const Shape& shape) {
  return tensor_of(v, shape, Device::cpu, DType::f64);
}

// The values of a float32 or float64 tensor on either device, as double.
inline std::vector<double> values_of(const Tensor& t) {
  if (t.dtype() == DType::f64) return t.to_vector<double>();
  std::vector<float> f = t.to_vector<float>();
  return {f.begin(), f.end()};
}
// A float64 CPU copy of a floating tensor (for feeding GPU-made float32 data to the oracle).
inline Tensor f64_copy(const Tensor& t) { return cpu64(values_of(t), t.shape()); }

// A tensor full of NaN: whatever the op does not write stays visibly wrong.
inline Tensor poisoned(const Shape& shape, Device device = Device::cuda, DType dtype = DType::f32) {
  return Tensor::full(shape, kNaN, dtype, device);
}
// A mask buffer poisoned with 0xA5 (alternating bits), so both set and cleared bits must be written.
inline Tensor poisoned_mask(const Shape& shape, Device device = Device::cuda) {
  return Tensor::full(shape, double(0xA5), DType::u8, device);
}

// ---- comparisons ----------------------------------------------------------------------------
// "[n, b, f]" of a flat index into `shape`.
inline std::string index_string(int64_t flat, const Shape& shape) {
  std::vector<int64_t> idx(shape.size());
  for (size_t d = shape.size(); d-- > 0;) {
    const int64_t extent = shape[d] > 0 ? shape[d] : 1;
    idx[d] = flat % extent;
    flat /= extent;
  }
  std::string s = "[";
  for (size_t d = 0; d < idx.size(); ++d) s += (d ? ", " : "") + std::to_string(idx[d]);
  return s + "]";
}

inline std::string num(double v) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

inline double rms(const std::vector<double>& v) {
  double s = 0;
  int64_t n = 0;
  for (double x : v)
    if (std::isfinite(x)) s += x * x, ++n;
  return n ? std::sqrt(s / double(n)) : 0.0;
}

// ‖got − ref‖ / ‖ref‖ ≤ tol over the finite reference entries (absolute when ‖ref‖ = 0); NaN in the
// reference must be NaN in got, ±Inf must match exactly, and got may hold nothing non-finite elsewhere.
inline ::testing::AssertionResult all_close(const std::string& what, const std::vector<double>& got,
                                            const std::vector<double>& ref, const Shape& shape, double tol) {
  if (got.size() != ref.size())
    return ::testing::AssertionFailure() << what << ": got " << got.size() << " values, expected "
                                         << ref.size() << " (shape " << shape_string(shape) << ")";
  double diff2 = 0, ref2 = 0, max_abs = 0;
  int64_t worst = -1, bad_count = 0, first_bad = -1;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double g = got[i], r = ref[i];
    bool bad = false;
    if (std::isnan(r)) {
      bad = !std::isnan(g);
    } else if (std::isinf(r)) {
      bad = g != r;
    } else if (!std::isfinite(g)) {
      bad = true;
    } else {
      diff2 += (g - r) * (g - r);
      ref2 += r * r;
      if (std::fabs(g - r) > max_abs || worst < 0) max_abs = std::fabs(g - r), worst = int64_t(i);
    }
    if (bad) {
      if (first_bad < 0) first_bad = int64_t(i);
      ++bad_count;
    }
  }
  const double rel = ref2 > 0 ? std::sqrt(diff2 / ref2) : std::sqrt(diff2);
  if (bad_count == 0 && rel <= tol) return ::testing::AssertionSuccess();

  std::ostringstream m;
  m << what << " (shape " << shape_string(shape) << ", " << ref.size() << " values): ";
  m << (ref2 > 0 ? "‖got−ref‖/‖ref‖ = " : "‖got−ref‖ (‖ref‖ = 0) = ") << num(rel) << " (tol " << num(tol)
    << ")";
  if (worst >= 0)
    m << "; max |got−ref| = " << num(max_abs) << " at " << index_string(worst, shape) << " (got "
      << num(got[size_t(worst)]) << ", expected " << num(ref[size_t(worst)])
      << "); rms(ref) = " << num(rms(ref));
  if (bad_count)
    m << "; " << bad_count << " non-finite mismatches, first at " << index_string(first_bad, shape)
      << " (got " << num(got[size_t(first_bad)]) << ", expected " << num(ref[size_t(first_bad)]) << ")";
  // The first element off by more than tol·rms(ref): where a layout bug shows first.
  const double scale = tol * std::max(rms(ref), 1e-30);
  for (size_t i = 0; i < ref.size(); ++i)
    if (std::isfinite(ref[i]) && !(std::fabs(got[i] - ref[i]) <= scale)) {
      m << "; first mismatch beyond tol·rms(ref) at " << index_string(int64_t(i), shape) << " (got "
        << num(got[i]) << ", expected " << num(ref[i]) << ")";
      break;
    }
  m << "; leading (got, expected):";
  for (size_t i = 0; i < std::min<size_t>(6, ref.size()); ++i)
    m << " (" << num(got[i]) << ", " << num(ref[i]) << ")";
  return ::testing::AssertionFailure() << m.str();
}

inline ::testing::AssertionResult all_close(const std::string& what, const Tensor& got, const Tensor& ref,
                                            double tol) {
  if (got.shape() != ref.shape())
    return ::testing::AssertionFailure()
           << what << ": got " << got.describe() << ", expected " << ref.describe();
  return all_close(what, values_of(got), values_of(ref), got.shape(), tol);
}

// Exact equality of integer (or raw-bit) vectors, with the first mismatches listed.
template <class T>
::testing::AssertionResult exactly_equal(const std::string& what, const std::vector<T>& got,
                                         const std::vector<T>& ref, const Shape& shape) {
  if (got.size() != ref.size())
    return ::testing::AssertionFailure()
           << what << ": got " << got.size() << " values, expected " << ref.size();
  int64_t count = 0;
  std::ostringstream m;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (got[i] == ref[i]) continue;
    if (count < 8)
      m << " " << index_string(int64_t(i), shape) << ": got " << +got[i] << ", expected " << +ref[i] << ";";
    ++count;
  }
  if (count == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << what << " (shape " << shape_string(shape) << "): " << count
                                       << " of " << ref.size() << " differ; first:" << m.str();
}

// Bit-for-bit equality of float vectors (so −0 vs +0 and NaN payloads count), with values and hex.
inline ::testing::AssertionResult bitwise_equal(const std::string& what, const std::vector<float>& got,
                                                const std::vector<float>& ref, const Shape& shape) {
  if (got.size() != ref.size())
    return ::testing::AssertionFailure()
           << what << ": got " << got.size() << " values, expected " << ref.size();
  int64_t count = 0;
  std::ostringstream m;
  for (size_t i = 0; i < ref.size(); ++i) {
    uint32_t g, r;
    std::memcpy(&g, &got[i], 4);
    std::memcpy(&r, &ref[i], 4);
    if (g == r) continue;
    if (count < 8) {
      char buf[160];
      std::snprintf(buf, sizeof buf, " %s: got %.9g (0x%08x), expected %.9g (0x%08x);",
                    index_string(int64_t(i), shape).c_str(), double(got[i]), g, double(ref[i]), r);
      m << buf;
    }
    ++count;
  }
  if (count == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << what << " (shape " << shape_string(shape) << "): " << count << " of " << ref.size()
         << " values differ in their bits; first:" << m.str();
}

// ---- ReLU bit-masks (ops/gemm.h: per sample a row of roundup(F,128) bits, LSB-first) ----------
inline int64_t mask_row_bytes(int64_t features) { return gemm::mask_row_bits(features) / 8; }
inline bool mask_bit(const std::vector<uint8_t>& m, int64_t row, int64_t f, int64_t row_bytes) {
  return (m[size_t(row * row_bytes + f / 8)] >> (f % 8)) & 1;
}

// The mask ops/gemm.h describes for activations y [N, B, F]: bit set where y > 0, padding zero.
inline std::vector<uint8_t> mask_from_values(const std::vector<double>& y, int64_t N, int64_t B, int64_t F) {
  const int64_t row_bytes = mask_row_bytes(F);
  std::vector<uint8_t> m(size_t(N * B * row_bytes), 0);
  for (int64_t r = 0; r < N * B; ++r)
    for (int64_t f = 0; f < F; ++f)
      if (!(y[size_t(r * F + f)] <= 0))
        m[size_t(r * row_bytes + f / 8)] |= uint8_t(1u << (f % 8));  // NaN → 1
  return m;
}

// Does `got` hold ref's bits under another layout? Named guesses, for the failure message only.
inline std::string mask_layout_guess(const std::vector<uint8_t>& got, const std::vector<uint8_t>& ref,
                                     int64_t N, int64_t B, int64_t F) {
  const int64_t row_bytes = mask_row_bytes(F), total_bits = int64_t(got.size()) * 8;
  auto got_bit = [&](int64_t bit) { return bit < total_bits && ((got[size_t(bit / 8)] >> (bit % 8)) & 1); };
  struct Guess {
    const char* name;
    std::function<int64_t(int64_t n, int64_t b, int64_t f)> where;  // bit position in `got`, or -1
  };
  const int64_t ld_b = (B + 127) / 128 * 128, ld32 = (F + 31) / 32 * 32, packed = (F + 7) / 8 * 8;
  const std::vector<Guess> guesses = {
      {"MSB-first bits within each byte",
       [&](int64_t n, int64_t b, int64_t f) {
         return (n * B + b) * row_bytes * 8 + (f & ~int64_t(7)) + (7 - f % 8);
       }},
      {"rows of roundup(F, 32) bits instead of roundup(F, 128)",
       [&](int64_t n, int64_t b, int64_t f) { return (n * B + b) * ld32 + f; }},
      {"rows packed to whole bytes (roundup(F, 8) bits)",
       [&](int64_t n, int64_t b, int64_t f) { return (n * B + b) * packed + f; }},
      {"feature-major (one row of roundup(B, 128) bits per feature)",
       [&](int64_t n, int64_t b, int64_t f) {
         const int64_t bit = n * F * ld_b + f * ld_b + b;
         return bit < total_bits ? bit : -1;
       }},
  };
  std::string found;
  for (const Guess& g : guesses) {
    bool all = true, any_checked = false;
    for (int64_t n = 0; n < N && all; ++n)
      for (int64_t b = 0; b < B && all; ++b)
        for (int64_t f = 0; f < F; ++f) {
          const int64_t at = g.where(n, b, f);
          if (at < 0) {
            all = false;
            break;
          }
          any_checked = true;
          if (got_bit(at) != mask_bit(ref, n * B + b, f, row_bytes)) {
            all = false;
            break;
          }
        }
    if (all && any_checked) found += std::string(found.empty() ? "" : "; ") + g.name;
  }
  return found.empty()
             ? "none of the guessed layouts (MSB-first, 32-bit rows, byte-packed rows, feature-major) "
               "fits either"
             : "got matches the reference under: " + found;
}

inline std::string hex_row(const std::vector<uint8_t>& m, int64_t row, int64_t row_bytes) {
  std::string s;
  char buf[4];
  for (int64_t j = 0; j < std::min<int64_t>(row_bytes, 40); ++j) {
    std::snprintf(buf, sizeof buf, "%02x", m[size_t(row * row_bytes + j)]);
    s += buf;
    if (j % 4 == 3) s += ' ';
  }
  return s;
}

// Compares the F valid bits of every row. A differing bit is forgiven only where the float64
// pre-activation z (when given) satisfies 0 < |z| < kink; exact zeros and NaNs must agree. Padding bits
// (f ≥ F) are never read by any consumer: differences there are only reported in *notes.
// zero_sets_bit: accept a set bit where z is exactly 0 — cuBLASLt's RELU_AUX epilogue does that
// (measured on an H200), while PyTorch's gate (and our CPU and kernels) leave it clear.
inline ::testing::AssertionResult masks_match(const std::string& what, const std::vector<uint8_t>& got,
                                              const std::vector<uint8_t>& ref, int64_t N, int64_t B,
                                              int64_t F, const std::vector<double>* z, double kink,
                                              std::string* notes = nullptr, bool zero_sets_bit = false) {
  const int64_t row_bytes = mask_row_bytes(F);
  if (got.size() != ref.size() || int64_t(ref.size()) != N * B * row_bytes)
    return ::testing::AssertionFailure()
           << what << ": mask sizes " << got.size() << " vs " << ref.size() << " (expected "
           << N * B * row_bytes << " = N·B·" << row_bytes << ")";
  int64_t bad = 0, forgiven = 0, padding_rows = 0, first_bad_row = -1, zero_bits = 0;
  std::vector<int64_t> bad_per_model(size_t(N), 0);
  std::ostringstream list, forgiven_list;
  for (int64_t r = 0; r < N * B; ++r) {
    for (int64_t f = 0; f < F; ++f) {
      const bool g = mask_bit(got, r, f, row_bytes), e = mask_bit(ref, r, f, row_bytes);
      if (g == e) continue;
      const double zv = z ? (*z)[size_t(r * F + f)] : kNaN;
      if (zero_sets_bit && z && zv == 0 && g && !e) {
        ++zero_bits;
        continue;
      }
      if (z && std::isfinite(zv) && zv != 0 && std::fabs(zv) < kink) {
        if (forgiven < 4)
          forgiven_list << " [" << r / B << ", " << r % B << ", " << f << "] z=" << num(zv) << ";";
        ++forgiven;
        continue;
      }
      if (bad < 16)
        list << " [" << r / B << ", " << r % B << ", " << f << "] got " << g << " expected " << e
             << (z ? " (z=" + num(zv) + ")" : std::string()) << ";";
      if (first_bad_row < 0) first_bad_row = r;
      ++bad_per_model[size_t(r / B)];
      ++bad;
    }
    for (int64_t f = F; f < row_bytes * 8; ++f)
      if (mask_bit(got, r, f, row_bytes) != mask_bit(ref, r, f, row_bytes)) {
        ++padding_rows;
        break;
      }
  }
  if (notes) {
    std::ostringstream n;
    if (forgiven)
      n << what << ": " << forgiven << " bits differ at ReLU kinks (0 < |z| < " << num(kink)
        << "):" << forgiven_list.str() << "\n";
    if (zero_bits)
      n << what << ": " << zero_bits << " bits set where z is exactly 0 (cuBLASLt's convention)\n";
    if (padding_rows)
      n << what << ": padding bits (features " << F << ".." << row_bytes * 8 - 1
        << ") differ from the reference in " << padding_rows << " of " << N * B
        << " rows (not read by any consumer)\n";
    *notes += n.str();
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  std::ostringstream m;
  m << what << ": " << bad << " of " << N * B * F << " mask bits differ (layout: N=" << N << ", B=" << B
    << ", F=" << F << ", " << row_bytes << " bytes per row, LSB-first); first [n, b, f]:" << list.str();
  m << " mismatches per model:";
  for (int64_t n = 0; n < N; ++n) m << " " << bad_per_model[size_t(n)];
  if (N > 1 && bad_per_model[0] == 0)
    m << " (model 0 is right and later ones are not: suspect the batch stride of the mask, "
         "CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_BATCH_STRIDE)";
  m << "; row " << first_bad_row << " bytes got [" << hex_row(got, first_bad_row, row_bytes) << "] expected ["
    << hex_row(ref, first_bad_row, row_bytes) << "]; " << mask_layout_guess(got, ref, N, B, F);
  return ::testing::AssertionFailure() << m.str();
}

// ---- running one case among several ---------------------------------------------------------
// Runs body under a trace naming the case; an exception fails that case and lets the next one run.
template <class F>
void run_case(const std::string& name, F&& body) {
  SCOPED_TRACE(name);
  try {
    body();
  } catch (const std::exception& e) {
    ADD_FAILURE() << name << " threw: " << e.what();
  }
}

// ---- MLP helpers ----------------------------------------------------------------------------
// float32 parameters on the CPU, torch's default init, model m from seed `seed + m`.
inline MlpParams make_params(const std::vector<int64_t>& sizes, int64_t models, uint64_t seed) {
  MlpParams p(MlpShape{sizes}, models, DType::f32, Device::cpu);
  std::vector<uint64_t> seeds;
  for (int64_t m = 0; m < models; ++m) seeds.push_back(seed + uint64_t(m));
  init_mlp(p, InitScheme::torch_default, seeds, 0);
  return p;
}

// The same parameters on another device and/or dtype, converted tensor by tensor. (Not
// MlpParams::to: with a dtype change it copies the flat arena element by element, but float32 and
// float64 arenas are padded differently — engine/nn.cpp — so it throws on the size mismatch.)
inline MlpParams params_as(const MlpParams& src, Device device, DType dtype) {
  MlpParams out(src.shape(), src.models(), dtype, device);
  const std::vector<Tensor> from = src.tensors(), to = out.tensors();
  for (size_t k = 0; k < from.size(); ++k)
    to[k].copy_from(tensor_of(values_of(from[k]), from[k].shape(), Device::cpu, dtype));
  return out;
}

// Smallest |z| / rms(z) over the hidden pre-activations z of a float64 CPU forward pass.
inline double hidden_margin(const MlpParams& p64, const Tensor& x64) {
  NoGradGuard no_grad;
  double margin = std::numeric_limits<double>::infinity();
  Tensor h = x64;
  const int64_t N = x64.dim(0), B = x64.dim(1);
  for (int l = 0; l + 1 < p64.shape().layers(); ++l) {
    const int64_t out = p64.shape().sizes[size_t(l) + 1];
    Tensor z = Tensor::empty({N, B, out}, DType::f64, Device::cpu);
    gemm::forward(h, p64.weight(l), p64.bias(l), gemm::Activation::none, z, Tensor());
    std::vector<double> zv = z.to_vector<double>();
    const double scale = rms(zv);
    for (double& v : zv) {
      margin = std::min(margin, std::fabs(v) / scale);
      v = v > 0 ? v : 0;
    }
    h = cpu64(zv, z.shape());
  }
  return margin;
}

// Inputs x [N, B, in] ~ U[−1, 1) (float32-exact) whose hidden pre-activations all keep |z| ≥
// margin · rms(z) under the float64 parameters p64: no ReLU sits so close to its kink that float32
// rounding could flip it, so GPU and CPU gradients can be compared at 1e-5. Tries seeds in turn.
inline std::vector<double> input_with_margin(const MlpParams& p64, int64_t B, uint64_t seed, double margin,
                                             double* achieved = nullptr) {
  const int64_t N = p64.models(), I = p64.shape().inputs();
  double best = -1;
  std::vector<double> best_x;
  for (int attempt = 0; attempt < 200; ++attempt) {
    std::vector<double> x = uniform_values(N * B * I, seed + 7919 * uint64_t(attempt), -1, 1);
    const double m = hidden_margin(p64, cpu64(x, {N, B, I}));
    if (m > best) best = m, best_x = x;
    if (m >= margin) break;
  }
  if (achieved) *achieved = best;
  return best_x;
}

}  // namespace subliminal::cuda_test
