// tests/test_random.cpp — the Philox4x32-10 generator against Random123's published
// known-answer vectors, and the distributions and permutations drawn from it.
#include <gtest/gtest.h>

#include <algorithm>  // std::sort, std::swap
#include <cmath>      // std::sqrt, std::log, std::cos, std::sin, std::nextafter
#include <iostream>   // std::cout
#include <numbers>    // std::numbers::pi
#include <numeric>    // std::iota
#include <string>     // std::string
#include <vector>     // std::vector

#include "engine/error.h"     // Error
#include "engine/philox.h"    // philox::block, philox::fill_words_by, philox::cpu_has
#include "engine/random.h"    // fill_uniform, uniform_in, fill_normal, random_permutation, stream_id
#include "tests/test_util.h"  // values_of

namespace {

using namespace subliminal;
using subliminal::test::values_of;

// ---- Philox known answers ------------------------------------------------------------------------

// Random123's kat_vectors, "philox4x32 10": counter (4 words), key (2 words) → output. Our
// mapping (cuRAND's layout, engine/philox.h): counter = (block lo, block hi, stream lo,
// stream hi), key = (seed lo, seed hi).
struct Kat {
  uint32_t counter[4], key[2];
  philox::Block expected;
};
const Kat kKats[] = {
    {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
    {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
     {0xffffffff, 0xffffffff},
     {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
    {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
     {0xa4093822, 0x299f31d0},
     {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
};

uint64_t pack(uint32_t lo, uint32_t hi) { return uint64_t(hi) << 32 | lo; }

// The generator is bit-exact Philox4x32-10 (the GPU's cuRAND draws must agree with it).
TEST(Philox, MatchesRandom123KnownAnswers) {
  for (const Kat& k : kKats) {
    const uint64_t block = pack(k.counter[0], k.counter[1]), stream = pack(k.counter[2], k.counter[3]);
    const uint64_t seed = pack(k.key[0], k.key[1]);
    const philox::Block got = philox::block(seed, stream, block);
    for (int i = 0; i < 4; ++i)
      EXPECT_EQ(got[size_t(i)], k.expected[size_t(i)])
          << std::hex << "seed " << seed << " stream " << stream << " block " << block << " word " << i;
  }
}

// fill_words gives block()'s words, block after block, by every path this CPU has (AVX-512's
// 16 blocks per pass, AVX2's 8, the scalar loop): at every run length around the 8- and
// 16-block groups, at block indices whose low word wraps inside a group, and with the known
// answer in lane 0 of a group.
TEST(Philox, FillWordsMatchesBlockByBlock) {
  const uint64_t firsts[] = {0,
                             5,
                             0xFFFFFFF0ull,
                             0xFFFFFFF1ull,
                             0xFFFFFFF7ull,
                             0xFFFFFFF8ull,
                             0xFFFFFFF9ull,
                             0x1FFFFFFFFull - 20,
                             ~uint64_t(0) - 40};
  const uint64_t seeds[] = {0, 0x299f31d0a4093822ull, 7};
  std::vector<uint32_t> words;
  for (const philox::FillPath path :
       {philox::FillPath::avx512, philox::FillPath::avx2, philox::FillPath::scalar}) {
    const std::string name = philox::fill_path_name(path);
    if (!philox::cpu_has(path)) {
      std::cout << "[ NOTE     ] no " << name << " on this CPU: its fill is not checked here\n";
      std::vector<uint32_t> group(64, 0xDEADBEEFu);
      EXPECT_THROW(philox::fill_words_by(path, 0, 0, 0, 16, group.data()), Error) << name;
      EXPECT_EQ(group[0], 0xDEADBEEFu) << name << " wrote before refusing";
      continue;
    }
    for (uint64_t seed : seeds)
      for (uint64_t first : firsts)
        for (int64_t blocks : {0, 1, 7, 8, 9, 15, 16, 17, 23, 31, 32, 33, 40}) {
          const uint64_t stream = seed * 31 + first;
          words.assign(size_t(4 * blocks) + 1, 0xDEADBEEFu);  // one poisoned word past the end
          philox::fill_words_by(path, seed, stream, first, blocks, words.data());
          for (int64_t i = 0; i < blocks; ++i) {
            const philox::Block expected = philox::block(seed, stream, first + uint64_t(i));
            for (int j = 0; j < 4; ++j)
              ASSERT_EQ(words[size_t(4 * i + j)], expected[size_t(j)])
                  << name << ", seed " << seed << " first block " << first << " of " << blocks << ": block "
                  << i << " word " << j;
          }
          EXPECT_EQ(words.back(), 0xDEADBEEFu) << name << " wrote past " << blocks << " blocks";
        }
    std::vector<uint32_t> group(64);
    philox::fill_words_by(path, 0, 0, 0, 16, group.data());
    EXPECT_EQ(group[0], kKats[0].expected[0]) << name;
    EXPECT_EQ(group[3], kKats[0].expected[3]) << name;
  }
  EXPECT_TRUE(philox::cpu_has(philox::FillPath::scalar));
  EXPECT_TRUE(philox::cpu_has(philox::fastest_fill_path()));
  std::cout << "[ NOTE     ] fill_words takes the " << philox::fill_path_name(philox::fastest_fill_path())
            << " path here\n";
}

// Position p of a stream is word p % 4 of block p / 4.
TEST(Philox, RandomWordIndexesBlocksByFours) {
  const RandomStream s{42, 7};
  for (uint64_t p : {0ull, 1ull, 3ull, 4ull, 5ull, 1000003ull}) {
    EXPECT_EQ(random_word(s, p), philox::block(42, 7, p / 4)[p % 4]) << p;
  }
}

// (purpose, a, b) → 16 | 24 | 24 bits; out-of-range parts throw instead of colliding.
TEST(Philox, StreamIdsPackWithoutCollisions) {
  EXPECT_EQ(stream_id(1, 2, 3), (uint64_t(1) << 48) | (uint64_t(2) << 24) | 3u);
  EXPECT_EQ(stream_id(0xffff, 0xffffff, 0xffffff), ~uint64_t(0));
  EXPECT_THROW(stream_id(1 << 16), Error);
  EXPECT_THROW(stream_id(0, 1 << 24), Error);
  EXPECT_THROW(stream_id(0, 0, 1 << 24), Error);
}

// ---- Uniform and normal tensors -----------------------------------------------------------------

struct Moments {
  double mean = 0, var = 0, min = 1e300, max = -1e300;
};
Moments moments(const std::vector<double>& v) {
  Moments m;
  for (double x : v) {
    m.mean += x;
    m.min = std::min(m.min, x);
    m.max = std::max(m.max, x);
  }
  m.mean /= double(v.size());
  for (double x : v) m.var += (x - m.mean) * (x - m.mean);
  m.var /= double(v.size());
  return m;
}

// U[−2, 3): all values in range, mean 0.5, variance 25/12. n = 200 000: the mean's standard
// error is 0.0032, the variance's 0.0042.
TEST(Random, FillUniformRangeMeanAndVariance) {
  for (DType dtype : {DType::f32, DType::f64}) {
    SCOPED_TRACE(dtype_name(dtype));
    Tensor t = Tensor::empty({200000}, dtype);
    fill_uniform(t, {5, 11}, -2.0, 3.0);
    const Moments m = moments(values_of(t));
    EXPECT_GE(m.min, -2.0);
    EXPECT_LT(m.max, 3.0);
    EXPECT_NEAR(m.mean, 0.5, 0.02);
    EXPECT_NEAR(m.var, 25.0 / 12.0, 0.03);
  }
}

// float32 element i is low + (high − low)·u with u the top 24 bits of word i (engine/random.h).
TEST(Random, FillUniformFloat32UsesWordIOfTheStream) {
  Tensor t = Tensor::empty({9}, DType::f32);
  const RandomStream s{3, 4};
  fill_uniform(t, s, 0.0, 1.0);
  const std::vector<float> v = t.to_vector<float>();
  for (uint64_t i = 0; i < v.size(); ++i)
    EXPECT_EQ(v[i], float(double(random_word(s, i) >> 8) / 16777216.0)) << i;
}

// float64 element i is low + (high − low)·u with u from words 2i (high bits) and 2i + 1 (low
// bits) of the stream: the layout a float64 init is reproduced from.
TEST(Random, FillUniformFloat64UsesWords2IAnd2IPlus1) {
  Tensor t = Tensor::empty({5}, DType::f64);
  const RandomStream s{8, 9};
  fill_uniform(t, s, -1.0, 3.0);
  const std::vector<double> v = t.to_vector<double>();
  for (uint64_t i = 0; i < v.size(); ++i)
    EXPECT_EQ(v[i], -1.0 + 4.0 * philox::to_unit_double(random_word(s, 2 * i), random_word(s, 2 * i + 1)))
        << i;
}

// fill_uniform over [1, the next T after 1): an interval one step of T wide, where about half
// the draws round up to high; each must be moved back inside the half-open interval.
template <class T>
void expect_one_step_interval_never_gives_high(DType dtype) {
  const T low = 1, high = std::nextafter(T(1), T(2));
  Tensor t = Tensor::empty({64}, dtype);
  fill_uniform(t, {4, 2}, low, high);
  for (T v : t.to_vector<T>()) {
    EXPECT_GE(v, low);
    EXPECT_LT(v, high);
  }
}

// Rounding to float can land on `high` itself.
TEST(Random, FillUniformFloat32NeverReturnsHigh) {
  expect_one_step_interval_never_gives_high<float>(DType::f32);
}

// The same for float64, where the draw has 53 bits. At ordinary bounds it is rarer, 2⁻⁵³ a
// draw, but real: low 1, high 3 and the largest draw below 1 give exactly 3.0.
TEST(Random, FillUniformFloat64NeverReturnsHigh) {
  expect_one_step_interval_never_gives_high<double>(DType::f64);
  const double largest_draw = 1.0 - std::ldexp(1.0, -53);
  EXPECT_EQ(1.0 + 2.0 * largest_draw, 3.0);  // the rounding the guard is for
  EXPECT_EQ(uniform_in<double>(1.0, 3.0, largest_draw), std::nextafter(3.0, 1.0));
  EXPECT_EQ(uniform_in<float>(1.0, 3.0, largest_draw), std::nextafter(3.0f, 1.0f));
  EXPECT_EQ(uniform_in<double>(1.0, 3.0, 0.5), 2.0);
}

// The documented Box–Muller layout, recomputed from raw words: elements 2j and 2j + 1 are
// r·cos θ and r·sin θ of one pair, u1 from words 4j, 4j + 1 and u2 from words 4j + 2, 4j + 3,
// r = √(−2 ln(1 − u1)), θ = 2π·u2. An odd count keeps the last pair's cosine (n = 5).
TEST(Random, FillNormalPairsAreCosineAndSineOfOneDraw) {
  const RandomStream s{10, 11};
  Tensor t = Tensor::empty({5}, DType::f64);
  fill_normal(t, s, 1.0, 2.0);
  const std::vector<double> v = t.to_vector<double>();
  for (uint64_t j = 0; j < 3; ++j) {
    const double u1 = 1.0 - philox::to_unit_double(random_word(s, 4 * j), random_word(s, 4 * j + 1));
    const double u2 = philox::to_unit_double(random_word(s, 4 * j + 2), random_word(s, 4 * j + 3));
    const double r = std::sqrt(-2.0 * std::log(u1)), angle = 2.0 * std::numbers::pi * u2;
    EXPECT_NEAR(v[2 * j], 1.0 + 2.0 * r * std::cos(angle), 1e-12) << "element " << 2 * j;
    if (2 * j + 1 < v.size()) {  // braces: EXPECT_NEAR is an if/else of its own
      EXPECT_NEAR(v[2 * j + 1], 1.0 + 2.0 * r * std::sin(angle), 1e-12) << 2 * j + 1;
    }
  }
}

// N(2, 3²) by Box–Muller, in both precisions.
TEST(Random, FillNormalMeanAndStd) {
  for (DType dtype : {DType::f32, DType::f64}) {
    SCOPED_TRACE(dtype_name(dtype));
    Tensor t = Tensor::empty({200001}, dtype);  // odd: the last element has no Box–Muller partner
    fill_normal(t, {6, 12}, 2.0, 3.0);
    const Moments m = moments(values_of(t));
    EXPECT_NEAR(m.mean, 2.0, 0.03);            // standard error 0.0067
    EXPECT_NEAR(std::sqrt(m.var), 3.0, 0.02);  // standard error 0.0047
    EXPECT_LT(m.max - 2.0, 3.0 * 6.5);         // no absurd tails (log of 0 would give inf)
  }
}

// Same (seed, stream) → the same numbers; another stream or seed → other numbers.
TEST(Random, ReproducibleAndIndependentAcrossStreamsAndSeeds) {
  auto draw = [](RandomStream s) {
    Tensor t = Tensor::empty({64}, DType::f32);
    fill_uniform(t, s, -1, 1);
    return t.to_vector<float>();
  };
  const std::vector<float> a = draw({1, 2});
  EXPECT_EQ(a, draw({1, 2}));
  EXPECT_NE(a, draw({1, 3}));
  EXPECT_NE(a, draw({2, 2}));
  // Independent: the correlation between two streams is near 0 (64 values: |r| < 0.5 is a
  // weak check, but a shifted copy of one stream would give |r| ≈ 1).
  const std::vector<float> b = draw({1, 3});
  double sab = 0, saa = 0, sbb = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    sab += a[i] * b[i];
    saa += a[i] * a[i];
    sbb += b[i] * b[i];
  }
  EXPECT_LT(std::abs(sab / std::sqrt(saa * sbb)), 0.5);
}

// ---- Permutations --------------------------------------------------------------------------------

// Each epoch's data order must visit every sample exactly once, including n = 0 and 1.
TEST(Random, RandomPermutationIsAPermutation) {
  for (int64_t n : {0, 1, 2, 17, 60000}) {
    std::vector<int32_t> p = random_permutation(n, {9, uint64_t(n)});
    ASSERT_EQ(int64_t(p.size()), n);
    std::sort(p.begin(), p.end());
    std::vector<int32_t> identity(static_cast<size_t>(n));
    std::iota(identity.begin(), identity.end(), 0);
    EXPECT_EQ(p, identity) << "n = " << n;
  }
}

// Epochs (streams) and models (seeds) get different orders; a rerun gets the same one.
TEST(Random, RandomPermutationDiffersAcrossStreamsAndRepeatsWithinOne) {
  const std::vector<int32_t> a = random_permutation(1000, {1, 1});
  EXPECT_EQ(a, random_permutation(1000, {1, 1}));
  EXPECT_NE(a, random_permutation(1000, {1, 2}));
  EXPECT_NE(a, random_permutation(1000, {2, 1}));
  std::vector<int32_t> identity(1000);
  std::iota(identity.begin(), identity.end(), 0);
  EXPECT_NE(a, identity);
}

// Every element is equally likely at every position: over 20 000 permutations of 8 elements,
// each of the 64 (element, position) cells expects 2500. Pearson's χ² with 49 degrees of
// freedom has mean 49 and sd 9.9; 120 is far in the tail for a fair shuffle, while a classic
// off-by-one Fisher–Yates (j in [0, i)) never leaves an element in place and scores thousands.
TEST(Random, RandomPermutationPositionsAreUniform) {
  const int n = 8, trials = 20000;
  std::vector<std::vector<int>> counts(n, std::vector<int>(n, 0));
  for (int t = 0; t < trials; ++t) {
    const std::vector<int32_t> p = random_permutation(n, {123, uint64_t(t)});
    for (int pos = 0; pos < n; ++pos) counts[size_t(p[size_t(pos)])][size_t(pos)]++;
  }
  const double expected = double(trials) / n;
  double chi2 = 0;
  for (const auto& row : counts)
    for (int c : row) chi2 += (c - expected) * (c - expected) / expected;
  EXPECT_LT(chi2, 120.0);
}

// The documented draws: the j-th swap of Fisher–Yates (i = n − 1 − j) exchanges i with
// ⌊word_j · (i + 1) / 2³²⌋, word_j the stream's word at position j — recomputed here.
TEST(Random, RandomPermutationUsesWordJForTheJthSwap) {
  const RandomStream s{21, 22};
  const int64_t n = 11;
  std::vector<int32_t> expected(n);
  std::iota(expected.begin(), expected.end(), 0);
  for (int64_t i = n - 1, j = 0; i > 0; --i, ++j) {
    const uint64_t pick = (uint64_t(random_word(s, uint64_t(j))) * uint64_t(i + 1)) >> 32;
    std::swap(expected[size_t(i)], expected[size_t(pick)]);
  }
  EXPECT_EQ(random_permutation(n, s), expected);
}

// Orders are int32: a length that does not fit is refused, not truncated.
TEST(Random, RandomPermutationRejectsBadLengths) {
  EXPECT_THROW(random_permutation(-1, {}), Error);
  EXPECT_THROW(random_permutation(int64_t(1) << 32, {}), Error);
}

}  // namespace
