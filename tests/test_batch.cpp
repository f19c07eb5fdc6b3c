// tests/test_batch.cpp — building batches: MNIST gathering with torchvision's normalisation,
// noise as a pure function of (seed + model, stream, image id, pixel), and model tiling.
#include <gtest/gtest.h>

#include <cmath>    // std::pow, std::sqrt, std::log, std::cos, std::sin
#include <cstdint>  // uint8_t, int32_t
#include <numbers>  // std::numbers::pi
#include <numeric>  // std::iota
#include <vector>   // std::vector

#include "engine/random.h"    // random_word, RandomStream
#include "ops/batch.h"        // gather_batch, noise_batch, repeat_models
#include "tests/test_util.h"  // TempDir etc.

namespace {

using namespace subliminal;

Tensor step_tensor(int64_t step) { return Tensor::from_vector(std::vector<int64_t>{step}, {1}); }

// Mean and variance of a set of floats, in double.
struct Moments {
  double mean = 0, var = 0, kurtosis = 0;
};
Moments moments(const std::vector<float>& v) {
  Moments m;
  for (float x : v) m.mean += x;
  m.mean /= double(v.size());
  double m4 = 0;
  for (float x : v) {
    const double d = x - m.mean;
    m.var += d * d;
    m4 += d * d * d * d;
  }
  m.var /= double(v.size());
  m.kurtosis = m4 / double(v.size()) / (m.var * m.var);
  return m;
}

// ---- gather_batch ------------------------------------------------------------------------------

// S = 7 images of P = 5 pixels; image i's pixels are {i, 0, 255, 128, 37·i} so both ends of the
// range appear and pixel 0 names the image.
struct TinyMnist {
  static constexpr int64_t S = 7, P = 5;
  Tensor images, labels;
  TinyMnist() {
    std::vector<uint8_t> pixels, y;
    for (int64_t i = 0; i < S; ++i) {
      for (int v : {int(i), 0, 255, 128, int(37 * i % 256)}) pixels.push_back(uint8_t(v));
      y.push_back(uint8_t((i * 3) % 10));
    }
    images = Tensor::from_vector(pixels, {S, P});
    labels = Tensor::from_vector(y, {S});
  }
};

// ToTensor (x/255 in float32) then Normalize(0.5, 0.5): (x/255 − 0.5)/0.5, bit for bit in
// float32, so 0 → −1 and 255 → 1 exactly; labels come along; each model has its own order.
TEST(GatherBatch, NormalisesLikeTorchvisionAndFollowsEachModelsOrder) {
  TinyMnist data;
  const std::vector<int32_t> order = {6, 5, 4, 3, 2, 1, 0, /**/ 2, 0, 6, 1, 5, 3, 4};
  const int64_t N = 2, B = 3, stride = 3, step = 1;
  Tensor x = Tensor::empty({N, B, TinyMnist::P}, DType::f32);
  Tensor y = Tensor::empty({N, B}, DType::i32);
  gather_batch(data.images, data.labels, Tensor::from_vector(order, {N, TinyMnist::S}), step_tensor(step),
               stride, x, y);
  const std::vector<uint8_t> pixels = data.images.to_vector<uint8_t>(),
                             labels = data.labels.to_vector<uint8_t>();
  const std::vector<float> xv = x.to_vector<float>();
  const std::vector<int32_t> yv = y.to_vector<int32_t>();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t b = 0; b < B; ++b) {
      const int32_t image = order[size_t(n * TinyMnist::S + step * stride + b)];
      EXPECT_EQ(yv[size_t(n * B + b)], labels[size_t(image)]);
      for (int64_t k = 0; k < TinyMnist::P; ++k) {
        const float expected = (float(pixels[size_t(image * TinyMnist::P + k)]) / 255.0f - 0.5f) / 0.5f;
        EXPECT_EQ(xv[size_t((n * B + b) * TinyMnist::P + k)], expected) << "model " << n << " row " << b;
      }
      EXPECT_EQ(xv[size_t((n * B + b) * TinyMnist::P + 1)], -1.0f);
      EXPECT_EQ(xv[size_t((n * B + b) * TinyMnist::P + 2)], 1.0f);
    }
}

// The batch starts at step·stride of the order (stride = the batch size; the last, short batch
// keeps the full stride), read from the counter tensor on every call.
TEST(GatherBatch, TheStepCounterSelectsTheBatch) {
  TinyMnist data;
  std::vector<int32_t> identity(TinyMnist::S);
  std::iota(identity.begin(), identity.end(), 0);
  const Tensor order = Tensor::from_vector(identity, {1, TinyMnist::S});
  for (int64_t step : {0, 1, 2}) {
    const int64_t B = step == 2 ? 1 : 3;  // 7 = 3 + 3 + 1
    Tensor x = Tensor::empty({1, B, TinyMnist::P}, DType::f32);
    Tensor y = Tensor::empty({1, B}, DType::i32);
    gather_batch(data.images, data.labels, order, step_tensor(step), 3, x, y);
    const std::vector<float> xv = x.to_vector<float>();
    for (int64_t b = 0; b < B; ++b) {
      const float pixel0 = (float(step * 3 + b) / 255.0f - 0.5f) / 0.5f;  // pixel 0 names the image
      EXPECT_EQ(xv[size_t(b * TinyMnist::P)], pixel0) << "step " << step << " row " << b;
    }
  }
}

// Reading past the order would gather garbage image ids; the CPU path checks the bounds.
TEST(GatherBatch, ABatchRunningPastTheDataThrows) {
  TinyMnist data;
  std::vector<int32_t> identity(TinyMnist::S);
  std::iota(identity.begin(), identity.end(), 0);
  const Tensor order = Tensor::from_vector(identity, {1, TinyMnist::S});
  Tensor x = Tensor::empty({1, 2, TinyMnist::P}, DType::f32);
  Tensor y = Tensor::empty({1, 2}, DType::i32);
  // positions 6, 7 of 7 samples: one too many.
  EXPECT_THROW(gather_batch(data.images, data.labels, order, step_tensor(2), 3, x, y), ShapeError);
  // positions 5, 6: exactly the end, fine.
  EXPECT_NO_THROW(gather_batch(data.images, data.labels, order, step_tensor(1), 5, x, y));
}

// ---- noise_batch -------------------------------------------------------------------------------

constexpr uint64_t kSeed = 1234, kStream = 77;

std::vector<float> noise(int64_t models, int64_t batch, int64_t pixels, int64_t step, int64_t stride,
                         int64_t first_image, NoiseDistribution dist, const Tensor& order = Tensor(),
                         uint64_t seed = kSeed, uint64_t stream = kStream) {
  Tensor x = Tensor::empty({models, batch, pixels}, DType::f32);
  noise_batch(seed, stream, order, step_tensor(step), stride, first_image, dist, x);
  return x.to_vector<float>();
}

std::vector<float> image_of(const std::vector<float>& x, int64_t row, int64_t pixels) {
  return {x.begin() + row * pixels, x.begin() + (row + 1) * pixels};
}

// The notebook's torch.rand(...)·2 − 1: U[−1, 1), mean 0, variance 1/3. 100 352 values: the
// mean's standard error is 0.0018, the variance's about 0.0009.
TEST(NoiseBatch, UniformIsInRangeWithTheRightMoments) {
  const std::vector<float> x = noise(2, 64, 784, 0, 64, 0, NoiseDistribution::uniform);
  for (float v : x) {
    ASSERT_GE(v, -1.0f);
    ASSERT_LT(v, 1.0f);
  }
  const Moments m = moments(x);
  EXPECT_NEAR(m.mean, 0.0, 0.01);
  EXPECT_NEAR(m.var, 1.0 / 3.0, 0.005);
}

// --noise gaussian: N(0, 1) by Box–Muller over pixel pairs.
TEST(NoiseBatch, GaussianHasMeanZeroVarianceOne) {
  const std::vector<float> x = noise(2, 64, 784, 0, 64, 0, NoiseDistribution::gaussian);
  const Moments m = moments(x);
  EXPECT_NEAR(m.mean, 0.0, 0.015);
  EXPECT_NEAR(m.var, 1.0, 0.015);
  EXPECT_NEAR(m.kurtosis, 3.0, 0.1);  // a normal's, not a uniform's 1.8
}

// The documented layout, recomputed here from raw Philox words: pixel k of image i for model n
// is 2u − 1 with u the top 24 bits of the word at position i·P' + k of stream `stream` under
// key seed + n, where P' = P rounded up to even (P = 5 → 6).
TEST(NoiseBatch, PixelsComeFromTheDocumentedPhiloxPositions) {
  const int64_t P = 5, Pe = 6, first_image = 3, step = 2, stride = 4;
  const std::vector<float> x = noise(2, 3, P, step, stride, first_image, NoiseDistribution::uniform);
  for (int64_t n = 0; n < 2; ++n)
    for (int64_t b = 0; b < 3; ++b)
      for (int64_t k = 0; k < P; ++k) {
        const int64_t image = first_image + step * stride + b;
        const uint32_t w = random_word({kSeed + uint64_t(n), kStream}, uint64_t(image * Pe + k));
        const float expected = float(double(w >> 8) / 16777216.0 * 2.0 - 1.0);
        EXPECT_EQ(x[size_t((n * 3 + b) * P + k)], expected)
            << "model " << n << " row " << b << " pixel " << k;
      }
}

// The Gaussian layout recomputed from raw words: pixels 2j and 2j + 1 of image i are r·cos θ and
// r·sin θ from the words at positions i·P' + 2j and i·P' + 2j + 1, with u1 = 1 − (top 24 bits of
// the first)/2²⁴ (in (0, 1], so the log is finite), u2 = (top 24 bits of the second)/2²⁴,
// r = √(−2 ln u1), θ = 2π·u2. P = 5 (P' = 6): the last pixel keeps its pair's cosine.
TEST(NoiseBatch, GaussianPixelsComeFromTheDocumentedBoxMuller) {
  const int64_t P = 5, Pe = 6, first_image = 2, B = 3;
  const std::vector<float> x = noise(1, B, P, 0, B, first_image, NoiseDistribution::gaussian);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; 2 * j < P; ++j) {
      const uint64_t position = uint64_t((first_image + b) * Pe + 2 * j);
      const double u1 = 1.0 - double(random_word({kSeed, kStream}, position) >> 8) / 16777216.0;
      const double u2 = double(random_word({kSeed, kStream}, position + 1) >> 8) / 16777216.0;
      const double r = std::sqrt(-2.0 * std::log(u1)), angle = 2.0 * std::numbers::pi * u2;
      EXPECT_NEAR(x[size_t(b * P + 2 * j)], r * std::cos(angle), 1e-5) << "row " << b << " pixel " << 2 * j;
      if (2 * j + 1 < P) {  // braces: EXPECT_NEAR is an if/else of its own
        EXPECT_NEAR(x[size_t(b * P + 2 * j + 1)], r * std::sin(angle), 1e-5)
            << "row " << b << " pixel " << 2 * j + 1;
      }
    }
}

// Same arguments → same noise; model n of N equals a one-model call with seed + n; other image
// ids and other streams give other noise.
TEST(NoiseBatch, IsAFunctionOfSeedPlusModelStreamAndImageId) {
  for (NoiseDistribution dist : {NoiseDistribution::uniform, NoiseDistribution::gaussian}) {
    const std::vector<float> a = noise(3, 4, 10, 1, 4, 0, dist);
    EXPECT_EQ(a, noise(3, 4, 10, 1, 4, 0, dist));
    for (int64_t n = 0; n < 3; ++n) {
      const std::vector<float> single = noise(1, 4, 10, 1, 4, 0, dist, Tensor(), kSeed + uint64_t(n));
      EXPECT_EQ(std::vector<float>(a.begin() + n * 40, a.begin() + (n + 1) * 40), single) << "model " << n;
    }
    EXPECT_NE(image_of(a, 0, 10), image_of(a, 4, 10));  // models 0 and 1, same image id
    EXPECT_NE(a, noise(3, 4, 10, 2, 4, 0, dist));       // next batch: other image ids
    EXPECT_NE(a, noise(3, 4, 10, 1, 4, 0, dist, Tensor(), kSeed, kStream + 1));
  }
}

// A fixed noise set reshuffled by an order is fresh noise with permuted image ids: row b of
// model n is image order[n, step·stride + b], the same pixels whichever way it is asked for.
TEST(NoiseBatch, FixedSetWithAnOrderIsFreshNoiseWithPermutedIds) {
  const int64_t N = 2, S = 10, P = 6, B = 4, stride = 4, step = 1;
  const std::vector<int32_t> order = {9, 3, 7, 1, 0, 8, 2, 6, 4, 5, /**/ 4, 4, 0, 9, 2, 2, 7, 1, 3, 8};
  for (NoiseDistribution dist : {NoiseDistribution::uniform, NoiseDistribution::gaussian}) {
    const std::vector<float> all = noise(N, S, P, 0, S, 0, dist);  // images 0..9 of both models
    const std::vector<float> fixed =
        noise(N, B, P, step, stride, 0, dist, Tensor::from_vector(order, {N, S}));
    for (int64_t n = 0; n < N; ++n)
      for (int64_t b = 0; b < B; ++b) {
        const int64_t image = order[size_t(n * S + step * stride + b)];
        EXPECT_EQ(image_of(fixed, n * B + b, P), image_of(all, n * S + image, P))
            << "model " << n << " row " << b;
      }
  }
}

// Fresh noise's image ids run on from first_image (epoch · S in the app): asking for images
// 10.. directly gives rows 10.. of a longer request.
TEST(NoiseBatch, FreshNoiseStartsAtFirstImage) {
  const std::vector<float> long_run = noise(1, 16, 6, 0, 16, 0, NoiseDistribution::uniform);
  const std::vector<float> later = noise(1, 4, 6, 1, 4, 6, NoiseDistribution::uniform);  // images 10..13
  EXPECT_EQ(later, std::vector<float>(long_run.begin() + 10 * 6, long_run.begin() + 14 * 6));
}

// Several student arms share each model's noise: with 2 sources, models 2..5 of 6 repeat
// models 0 and 1 (key seed + n mod 2, and that row of the order) — fresh or reshuffled. A model
// count that is no multiple of the sources, and a batch running past the order, are refused.
TEST(NoiseBatch, ModelsCycleOverTheNoiseSources) {
  const int64_t N = 6, B = 3, P = 5, S = 8;
  const std::vector<int32_t> order = {7, 2, 5, 0, 1, 6, 3, 4, /**/ 1, 1, 0, 7, 6, 5, 2, 3};
  for (const Tensor& o : {Tensor(), Tensor::from_vector(order, {2, S})}) {
    Tensor x = Tensor::empty({N, B, P}, DType::f32), two = Tensor::empty({2, B, P}, DType::f32);
    noise_batch(kSeed, kStream, o, step_tensor(1), 3, 0, NoiseDistribution::uniform, x, 2);
    noise_batch(kSeed, kStream, o, step_tensor(1), 3, 0, NoiseDistribution::uniform, two);
    const std::vector<float> xv = x.to_vector<float>(), tv = two.to_vector<float>();
    for (int64_t n = 0; n < N; ++n)
      EXPECT_EQ(std::vector<float>(xv.begin() + n * B * P, xv.begin() + (n + 1) * B * P),
                std::vector<float>(tv.begin() + n % 2 * B * P, tv.begin() + (n % 2 + 1) * B * P))
          << "model " << n << (o.defined() ? ", ordered" : ", fresh");
  }
  Tensor x = Tensor::empty({N, B, P}, DType::f32);
  EXPECT_THROW(noise_batch(kSeed, kStream, Tensor(), step_tensor(0), 3, 0, NoiseDistribution::uniform, x, 4),
               ShapeError);
  // positions 6..8 of an order of 8: one too many.
  EXPECT_THROW(noise_batch(kSeed, kStream, Tensor::from_vector(order, {2, S}), step_tensor(2), 3, 0,
                           NoiseDistribution::uniform, x, 2),
               ShapeError);
}

// ---- repeat_models -----------------------------------------------------------------------------

// [N, ...] → [R·N, ...] with out[r·N + n] = x[n]: the student arms' shared batch.
TEST(RepeatModels, TilesTheModelsExactly) {
  const Tensor x = test::random_f32({2, 3, 4}, 5);
  const std::vector<float> xv = x.to_vector<float>();
  const Tensor out = repeat_models(x, 3);
  ASSERT_EQ(out.shape(), (Shape{6, 3, 4}));
  const std::vector<float> ov = out.to_vector<float>();
  for (int64_t r = 0; r < 3; ++r)
    for (int64_t n = 0; n < 2; ++n)
      for (int64_t k = 0; k < 12; ++k) EXPECT_EQ(ov[size_t((r * 2 + n) * 12 + k)], xv[size_t(n * 12 + k)]);

  // One repeat is a view of the same storage, outside autograd.
  Tensor leaf = test::random_f64({2, 3}, 6);
  leaf.set_requires_grad(true);
  const Tensor once = repeat_models(leaf, 1);
  EXPECT_EQ(once.raw(), leaf.raw());
  EXPECT_FALSE(once.requires_grad());

  const Tensor labels = Tensor::from_vector(std::vector<int32_t>{1, 2, 3, 4}, {2, 2});
  EXPECT_EQ(repeat_models(labels, 2).to_vector<int32_t>(), (std::vector<int32_t>{1, 2, 3, 4, 1, 2, 3, 4}));
}

}  // namespace
