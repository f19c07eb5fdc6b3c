// tests/simt/compare.h — how the emulated kernels' tests (tests/test_*_emulated.cpp) compare
// float32 outputs with their float64 references, and runs with each other.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace simt {

// ‖got − ref‖ / ‖ref‖ over ref.size() elements of got (a NaN in got makes it NaN, which fails
// every ≤).
inline double relative_error(const float* got, const std::vector<double>& ref) {
  double diff = 0.0, norm = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    diff += (double(got[i]) - ref[i]) * (double(got[i]) - ref[i]);
    norm += ref[i] * ref[i];
  }
  return std::sqrt(diff) / std::max(std::sqrt(norm), 1e-30);
}

// The same bits (so -0 ≠ +0 and a NaN equals itself).
inline bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

}  // namespace simt
