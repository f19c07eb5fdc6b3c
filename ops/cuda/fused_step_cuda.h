// ops/cuda/fused_step_cuda.h — the CUDA side of ops/fused_step.h: one kernel for a training
// step's forward pass, loss and gradients (ops/cuda/fused_step.cu). float32 device pointers.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace subliminal::cuda {

// The fused kernel's program is a kernel parameter; it has room for this many layers.
constexpr int kFusedMaxLayers = 3;

// One batched MLP: `models` models of sizes[0] → … → sizes[layers], weights [models, out, in]
// and biases [models, out]; gradient buffers of the same shapes (empty for a frozen MLP).
struct FusedMlp {
  int layers = 0;
  std::vector<int64_t> sizes;
  int64_t models = 0;
  std::vector<const float*> weights, biases;
  std::vector<float*> weight_grads, bias_grads;
};

// The loss over the logit columns [c0, c1): cross-entropy against labels [S, B], or (distill)
// KL at temperature T against the frozen MLP's logits, trained model s learning from frozen
// model s mod F — as ops/loss.h's cross_entropy and distill_kl.
struct FusedLoss {
  bool distill = false;
  int64_t c0 = 0, c1 = 0;
  double temperature = 1.0;
  const int32_t* labels = nullptr;
};

// x [S, B, sizes[0]]: trained model s reads x[s], frozen model f reads x[f]. Writes the trained
// MLP's gradients (overwriting) and each trained model's loss into loss_out [S].
void fused_mlp_step(const float* x, int64_t batch, const FusedMlp& trained, const FusedMlp* frozen,
                    const FusedLoss& loss, float* loss_out);

// Timing, for bench/layers.cpp: while on, each fused step records when block 0 starts each of
// its phases (the GPU's global timer); fused_step_phase_us() synchronises and returns the last
// step's phases, in microseconds, by name. Turn it on outside graph capture.
void fused_step_clock(bool on);
std::vector<std::pair<std::string, double>> fused_step_phase_us();

}  // namespace subliminal::cuda
