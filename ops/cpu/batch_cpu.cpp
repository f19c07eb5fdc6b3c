// ops/cpu/batch_cpu.cpp — batch gathering and noise on the host.
#include "ops/cpu/batch_cpu.h"

#include <cmath>
#include <numbers>
#include <vector>

#include "engine/parallel.h"
#include "engine/philox.h"
#include "engine/simd.h"

namespace subliminal::cpu {

// One image's pixels, ToTensor's division by 255 in float32, then Normalize's − 0.5 and / 0.5.
static SUBLIMINAL_HOT_LOOP void normalise_image(const uint8_t* __restrict src, float* __restrict dst,
                                                int64_t pixels) {
  for (int64_t k = 0; k < pixels; ++k) dst[k] = (float(src[k]) / 255.0f - 0.5f) / 0.5f;
}

// first = step·stride: the batch's first position in the epoch's order. Rows (model, sample)
// are split across the CPU's threads.
void gather_batch(const uint8_t* images, const uint8_t* labels, const int32_t* order, int64_t first,
                  int64_t models, int64_t batch, int64_t pixels, int64_t samples, float* x, int32_t* y) {
  auto gather_rows = [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / batch, b = row % batch;
      const int64_t i = order[n * samples + first + b];
      normalise_image(images + i * pixels, x + row * pixels, pixels);
      y[row] = labels[i];
    }
  };
  parallel_for(models * batch, items_per_thread(pixels), gather_rows);
}

void gaussian_pair(uint32_t w1, uint32_t w2, float out[2]) {
  const float u1 = 1.0f - float(w1 >> 8) * (1.0f / 16777216.0f);
  const float u2 = float(w2 >> 8) * (1.0f / 16777216.0f);
  const float radius = std::sqrt(-2.0f * std::log(u1));
  const float angle = 2.0f * std::numbers::pi_v<float> * u2;
  out[0] = radius * std::cos(angle);
  out[1] = radius * std::sin(angle);
}

// One image's pixels from its words: uniform maps each word; Gaussian maps word pairs.
static SUBLIMINAL_HOT_LOOP void map_noise(const uint32_t* words, int64_t pixels, bool gaussian, float* dst) {
  if (!gaussian) {
    for (int64_t k = 0; k < pixels; ++k) dst[k] = uniform_pixel(words[k]);
    return;
  }
  for (int64_t k = 0; k < pixels; k += 2) {
    float pair[2];
    gaussian_pair(words[k], words[k + 1], pair);
    dst[k] = pair[0];
    if (k + 1 < pixels) dst[k + 1] = pair[1];
  }
}

// first = the image id of row 0 (fresh noise), or the position in `order` of row 0.
void noise_batch(uint64_t seed, uint64_t stream, const int32_t* order, int64_t first, int64_t models,
                 int64_t sources, int64_t batch, int64_t pixels, int64_t samples, bool gaussian, float* x) {
  // P' of ops/batch.h: Philox positions per image, even so Gaussian pairs stay inside an image.
  const int64_t image_stride = pixels + (pixels & 1);
  auto noise_rows = [&](int64_t begin, int64_t end) {
    // An image's positions may start inside a Philox block (when image_stride % 4 == 2), and its
    // words are whole blocks: up to 3 words before it and 3 after. One buffer per thread,
    // kept: a step allocates nothing once it has run.
    thread_local std::vector<uint32_t> words;
    if (words.size() < size_t(image_stride + 8)) words.resize(size_t(image_stride + 8));
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / batch, b = row % batch, source = n % sources;
      const int64_t image = order ? order[source * samples + first + b] : first + b;
      const uint64_t position = uint64_t(image) * uint64_t(image_stride);
      const int64_t skip = int64_t(position % 4), blocks = (skip + image_stride + 3) / 4;
      philox::fill_words(seed + uint64_t(source), stream, position / 4, blocks, words.data());
      map_noise(words.data() + skip, pixels, gaussian, x + row * pixels);
    }
  };
  // Rows split across the CPU's threads; a pixel of Philox costs about four of the other loops'
  // elements, hence the smaller grain.
  parallel_for(models * batch, items_per_thread(4 * image_stride), noise_rows);
}

}  // namespace subliminal::cpu
