// ops/batch.h — building training batches on the device that will train on them.
//
// The data set (uint8 pixels) lives on the device once; each step gathers its batch
// through a per-epoch order, or draws fresh noise, with the batch index read from a
// counter tensor `step` on the device — so a captured CUDA graph replays the same launch
// for every step of an epoch and the host never touches the data.
//
// Noise is a function, not a buffer: pixel k of noise image i for model n comes from the
// Philox word(s) at position i·P' + k of stream `stream` under key seed + n, or seed + the
// model's noise source when several models share one (noise_batch; engine/philox.h;
// P' = P rounded up to even, so Gaussian pixel pairs never straddle two images), so a "fixed set of 60000
// noise images" and "fresh noise every epoch" differ only in which image ids a batch asks for, and no N ×
// 60000 × 784 buffer exists.
#pragma once

#include <cstdint>

#include "engine/tensor.h"

namespace subliminal {

// x[n, b, :] = (images[i, :]/255 − 0.5)/0.5  (ToTensor + Normalize((0.5,), (0.5,)), in float32)
// y[n, b]    = labels[i],   with i = order[n, step·stride + b]
//   images uint8 [S, P], labels uint8 [S], order int32 [N, S], step int64 [1],
//   x float32 [N, B, P], y int32 [N, B]; requires step·stride + B ≤ S. The CPU checks it (a
//   ShapeError); the GPU kernel, reading step on the device, cannot throw and poisons the rows
//   past S instead (NaN pixels, label −1).
void gather_batch(const Tensor& images, const Tensor& labels, const Tensor& order, const Tensor& step,
                  int64_t stride, const Tensor& x, const Tensor& y);

enum class NoiseDistribution {
  uniform,   // U[−1, 1): 2u − 1 from one word (the notebook's torch.rand(...)·2 − 1)
  gaussian,  // N(0, 1): Box–Muller on the two words of each pixel pair (2j, 2j+1)
};

// x[n, b, k] = noise pixel k of image i for model n's source s = n mod sources (see above), with
//   i = order[s, step·stride + b]        when order is defined (a fixed, reshuffled noise set)
//   i = first_image + step·stride + b    otherwise (fresh noise: the app passes 0 and a step
//                                          counter that runs on across epochs)
//   x float32 [N, B, P], order int32 [sources, S] or undefined, step int64 [1].
//   sources: model n of x draws from noise source n mod sources — its key seed + (n mod sources)
//   and that row of `order` — so several student arms can share each model's noise without a
//   copy (0: sources = N, every model its own).
void noise_batch(uint64_t seed, uint64_t stream, const Tensor& order, const Tensor& step, int64_t stride,
                 int64_t first_image, NoiseDistribution distribution, const Tensor& x, int64_t sources = 0);

// [N, ...] → [repeats·N, ...]: out[r·N + n] = x[n]. Tiles a batch (or the teacher's logits)
// for several student arms that see the same inputs. No autograd; repeats = 1 returns a view.
Tensor repeat_models(const Tensor& x, int64_t repeats);

}  // namespace subliminal
