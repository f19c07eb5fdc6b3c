// tests/simt/compare.h — how the emulated kernels' tests (tests/test_*_emulated.cpp) compare
// float32 outputs with their float64 references, and runs with each other.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace simt {

// True when SIMT_SANITIZER_RUN=1, as scripts/sanitize.sh sets it for its AddressSanitizer and
// ThreadSanitizer runs: a step's memory and race checks need one run on several blocks. A
// repeat touches the same memory again, and a one-block run a part of it (a tile GEMM plans
// the same items for any block count; a fused step on one block splits no K, so it writes no
// partial tiles); comparing their bits is the normal suite's job, and under the sanitizers on
// 2 cores each costs tens of seconds. (The unsplit paths keep their sanitizer runs: the tile
// cases without split-K, and FusedTail's runs, one of them on one block.)
inline bool sanitizer_run() {
  const char* v = std::getenv("SIMT_SANITIZER_RUN");
  return v != nullptr && std::string(v) == "1";
}

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
