// engine/random.cpp — host-side Philox draws.
#include "engine/random.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "engine/philox.h"

namespace subliminal {

uint64_t stream_id(uint32_t purpose, uint32_t a, uint32_t b) {
  if (purpose >= (1u << 16) || a >= (1u << 24) || b >= (1u << 24))
    throw Error("stream_id(" + std::to_string(purpose) + ", " + std::to_string(a) + ", " + std::to_string(b) +
                ") out of range");
  return (uint64_t(purpose) << 48) | (uint64_t(a) << 24) | uint64_t(b);
}

uint32_t random_word(RandomStream s, uint64_t position) {
  return philox::block(s.seed, s.stream, position / 4)[position % 4];
}

namespace {

// Calls word(i) for positions 0..count-1 in order, one Philox block per four positions.
template <class F>
void for_each_word(RandomStream s, uint64_t count, F&& word) {
  for (uint64_t b = 0; b * 4 < count; ++b) {
    philox::Block w = philox::block(s.seed, s.stream, b);
    for (uint64_t k = 0; k < 4 && b * 4 + k < count; ++k) word(b * 4 + k, w[k]);
  }
}

// Fills a host tensor of T with gen(i) and copies it to t's device when needed.
template <class T, class Gen>
void fill_host_then_copy(const Tensor& t, Gen&& gen) {
  Tensor host = t.device() == Device::cpu ? t : Tensor::empty(t.shape(), t.dtype(), Device::cpu);
  gen(host.data<T>(), host.numel());
  if (t.device() != Device::cpu) t.copy_from(host);
}

}  // namespace

void fill_uniform(const Tensor& t, RandomStream s, double low, double high) {
  dispatch_floating(t.dtype(), [&](auto zero) {
    using T = decltype(zero);
    fill_host_then_copy<T>(t, [&](T* out, int64_t n) {
      if constexpr (std::is_same_v<T, float>) {
        for_each_word(s, uint64_t(n), [&](uint64_t i, uint32_t w) {
          out[i] = uniform_in<float>(low, high, double(philox::to_unit_float(w)));
        });
      } else {  // two words per element for 53 bits
        std::vector<uint32_t> words(2 * size_t(n));
        for_each_word(s, words.size(), [&](uint64_t i, uint32_t w) { words[i] = w; });
        for (int64_t i = 0; i < n; ++i)
          out[i] = uniform_in<double>(low, high, philox::to_unit_double(words[2 * i], words[2 * i + 1]));
      }
    });
  });
}

void fill_normal(const Tensor& t, RandomStream s, double mean, double std) {
  dispatch_floating(t.dtype(), [&](auto zero) {
    using T = decltype(zero);
    fill_host_then_copy<T>(t, [&](T* out, int64_t n) {
      std::vector<uint32_t> words(4 * size_t((n + 1) / 2));
      for_each_word(s, words.size(), [&](uint64_t i, uint32_t w) { words[i] = w; });
      for (int64_t i = 0; i < n; i += 2) {
        // Box–Muller: u1 ∈ (0, 1] keeps the log finite, u2 ∈ [0, 1) gives the angle.
        double u1 = 1.0 - philox::to_unit_double(words[2 * i], words[2 * i + 1]);
        double u2 = philox::to_unit_double(words[2 * i + 2], words[2 * i + 3]);
        double radius = std::sqrt(-2.0 * std::log(u1));
        double angle = 2.0 * std::numbers::pi * u2;
        out[i] = static_cast<T>(mean + std * radius * std::cos(angle));
        if (i + 1 < n) out[i + 1] = static_cast<T>(mean + std * radius * std::sin(angle));
      }
    });
  });
}

std::vector<int32_t> random_permutation(int64_t n, RandomStream s) {
  if (n < 0 || n > INT32_MAX) throw Error("random_permutation: bad length " + std::to_string(n));
  std::vector<int32_t> p(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) p[size_t(i)] = static_cast<int32_t>(i);
  uint64_t position = 0;
  philox::Block w{};
  for (int64_t i = n - 1; i > 0; --i, ++position) {
    if (position % 4 == 0) w = philox::block(s.seed, s.stream, position / 4);
    // j uniform in [0, i] by multiply-shift (Lemire); the bias, ≤ n/2³², is far below noise.
    int64_t j = static_cast<int64_t>((uint64_t(w[position % 4]) * uint64_t(i + 1)) >> 32);
    std::swap(p[size_t(i)], p[size_t(j)]);
  }
  return p;
}

}  // namespace subliminal
