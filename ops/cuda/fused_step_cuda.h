// ops/cuda/fused_step_cuda.h — the CUDA side of ops/fused_step.h: a training step's forward
// pass, loss and gradients in one persistent kernel (ops/cuda/fused_step.cu) or, by row blocks
// in thread-block clusters, in two (cluster_mlp_step, ops/cuda/cluster_step.cu). float32 device
// pointers.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/adam.h"  // AdamOptions
#include "ops/divergence.h"

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
// KL or JS at temperature T against the frozen MLP's logits, trained model s learning from frozen
// model s mod F — as ops/loss.h's cross_entropy and distill.
struct FusedLoss {
  bool distill = false;
  int64_t c0 = 0, c1 = 0;
  double temperature = 1.0;
  Divergence divergence = Divergence::kl;
  const int32_t* labels = nullptr;
};

// What a training step does after its gradients, done by the same kernel (each would otherwise
// be a small kernel of its own, a few µs apiece in a CUDA graph). Every part is optional (a
// null pointer leaves it out):
//   adam      t ← t + 1, then Adam (engine/cuda/step_end.cuh) over n floats: parameters p,
//             gradients g (the arena the step writes its gradients into), moments m and v
//   watch     loss_sum[s] += loss_weight · loss[s]; a NaN/Inf loss[s] sets
//             first_bad = min(first_bad, *step)   (engine/kernels.h's accumulate_and_watch)
//   counters  *counters[k] += 1, once every other part has read them
struct FusedTail {
  struct {
    float* p = nullptr;
    const float* g = nullptr;
    float *m = nullptr, *v = nullptr;
    int64_t n = 0;
    int64_t* t = nullptr;
    AdamOptions options;
  } adam;
  float* loss_sum = nullptr;
  float loss_weight = 1.0f;
  const int64_t* step = nullptr;
  int64_t* first_bad = nullptr;
  int64_t* counters[4] = {nullptr, nullptr, nullptr, nullptr};
};

// x [S, B, sizes[0]]: trained model s reads x[s], frozen model f reads x[f]. Writes the trained
// MLP's gradients (overwriting) and each trained model's loss into loss_out [S], then does
// `tail` when given.
void fused_mlp_step(const float* x, int64_t batch, const FusedMlp& trained, const FusedMlp* frozen,
                    const FusedLoss& loss, float* loss_out, const FusedTail* tail = nullptr);

// The same step by row blocks in thread-block clusters (ops/cuda/cluster_step.cu): one
// cluster of 8 blocks per row block of each trained model runs its rows' forward, loss and
// backward with cluster barriers only, then a second kernel sums the row blocks' gradients and
// does `tail`. The same arguments and results as fused_mlp_step, to float32 rounding (its sums
// are split differently). Needs compute capability 9.0 and this build's sm_90 code
// (cluster_step_supported); throws DeviceError without them.
bool cluster_step_supported();
void cluster_mlp_step(const float* x, int64_t batch, const FusedMlp& trained, const FusedMlp* frozen,
                      const FusedLoss& loss, float* loss_out, const FusedTail* tail = nullptr);
// How later cluster steps are planned and launched; the defaults are the step's, and
// bench/layers.cpp sweeps the others (a step captured in a CUDA graph keeps the plan it was
// captured with):
//   max_chunk         K chunks of at most this many floats (0: as long as shared memory allows,
//                     the fewest chunks): a chunk's load latency against the pipeline's
//                     per-chunk overhead. The results move by float32 rounding.
//   max_clusters      the rows spread over at most this many clusters (0: as many as run at
//                     once): fewer row blocks mean fewer gradient partials for the second kernel
//                     to add, more rows mean more arithmetic per cluster. Results move likewise.
//   overlap_launches  each kernel launched as the previous one in the stream finishes
//                     (programmatic dependent launch: it waits for that kernel's results with
//                     cudaGridDependencySynchronize before reading anything), so that its
//                     launch hides behind the previous kernel's last blocks. Same bits either way.
//   prefetch          each layer's first K chunk, as far as it does not wait for the cluster
//                     barrier ahead of the layer (a hidden layer's weights going forward; all
//                     of it going backward), issued between the barrier's arrive and its
//                     wait, so that its load overlaps the barrier. Same bits either way.
//   register_block    the outputs each thread computes in a hidden layer's forward product from
//                     a K chunk: 4 (4 × 4) or 8 (8 × 8, where the rows and the block's columns
//                     are multiples of 8; else 4 × 4): half the shared-memory reads per FMA, a
//                     quarter of the threads, K split over more groups (docs/PERFORMANCE.md,
//                     "What should reach 40 µs"). The results move by float32 rounding.
// Throws ShapeError for a negative cap or a register block other than 4 and 8.
struct ClusterStepTuning {
  int max_chunk = 0;
  int max_clusters = 0;
  bool overlap_launches = true;
  bool prefetch = true;
  int register_block = 4;
};
void cluster_step_tuning(const ClusterStepTuning& tuning);

// Timing, for bench/layers.cpp: while on, each fused step records (with the GPU's global timer)
// when block 0 starts each of its phases and when the first and the last block finish their
// work in it; fused_step_phase_times() synchronises and returns the last step's phases. Turn it
// on outside graph capture.
struct FusedPhaseTime {
  std::string name;
  double us;             // from block 0's start of this phase to its start of the next (or the end)
  double first_done_us;  // from block 0's start until the first block had finished its work …
  double last_done_us;   // … and the last: what is left of `us` is the barrier's hand-over
};
void fused_step_clock(bool on);
std::vector<FusedPhaseTime> fused_step_phase_times();

// How far later fused steps split K (tile::plan): at most max_splits slices of at least
// min_chunks 16-wide chunks each, never past one wave of the grid; and how a split tile is
// finished: by all of its items at once, each a band of its rows (parallel_fixup, where the
// phase's items fit the grid), or by the last of them alone. The defaults are the step's;
// bench/layers.cpp sweeps others to find where split-K's fix-up stops paying for itself. A
// step captured in a CUDA graph keeps the plan it was captured with. Throws ShapeError unless
// max_splits and min_chunks are ≥ 1.
struct FusedSplitPolicy {
  int max_splits = 8;  // tile::kMaxSplits
  int min_chunks = 2;
  bool parallel_fixup = true;
};
void fused_step_split_policy(const FusedSplitPolicy& policy);

}  // namespace subliminal::cuda
