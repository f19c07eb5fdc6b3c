// engine/random.h — seeded random tensors and permutations, all drawn from Philox streams.
//
// A RandomStream is (seed, stream id): the seed is the run's --seed plus the model's index, the
// stream id names a use (the init of parameter tensor k, the data order of epoch 4, ...), so
// every use gets an independent sequence and changing one use never shifts another's numbers.
#pragma once

#include <cmath>  // std::nextafter
#include <cstdint>
#include <vector>

#include "engine/tensor.h"

namespace subliminal {

struct RandomStream {
  uint64_t seed = 0;
  uint64_t stream = 0;
};

// Stream ids from a purpose and up to two indices, packed so distinct tuples never collide:
// purpose in bits 48..63, a in bits 24..47, b in bits 0..23.
uint64_t stream_id(uint32_t purpose, uint32_t a = 0, uint32_t b = 0);

// t ~ U[low, high). Any device (drawn on the host and copied; parameters are small).
// float32: element i from position i of the stream, 24 random bits; float64: from positions
// 2i and 2i+1, 53 bits.
void fill_uniform(const Tensor& t, RandomStream s, double low, double high);

// low + (high − low)·u for a unit draw u ∈ [0, 1), rounded to T (float or double), kept in
// [low, high): rounding can land on `high` itself (low 1, high 3, u = 1 − 2⁻⁵³ gives exactly
// 3.0), which becomes the largest T below it. fill_uniform's element from its draw.
template <class T>
T uniform_in(double low, double high, double u) {
  const T v = static_cast<T>(low + (high - low) * u);
  return double(v) >= high ? std::nextafter(static_cast<T>(high), static_cast<T>(low)) : v;
}

// t ~ N(mean, std²) by Box–Muller (float64 math): elements i and i+1 (i even) are the cosine and
// sine of one pair of uniforms, made from stream positions 2i .. 2i+3 (two words each).
void fill_normal(const Tensor& t, RandomStream s, double mean, double std);

// A uniformly random permutation of 0..n-1 (Fisher–Yates; the j-th swap uses position j).
std::vector<int32_t> random_permutation(int64_t n, RandomStream s);

// A random 32-bit word at `position` of the stream.
uint32_t random_word(RandomStream s, uint64_t position);

}  // namespace subliminal
