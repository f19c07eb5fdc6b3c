// ops/cuda/fused_program.cuh — the fused training step's "program" and the device code that
// runs it: what ops/cuda/fused_step.cu's one persistent kernel does, written without the
// kernel around it, so that host threads can run it too (tests/test_fused_emulated.cpp).
//
// The program for an MLP of L layers (sizes s_0 … s_L), S trained models and F frozen ones
// (the teachers of a distillation step; F = 0 for cross-entropy). H_0 = x, H_l the post-ReLU
// activations, Z the logits, G_l = dLoss/d(pre-activation of layer l's output):
//
//   phase          work                                                      shapes per model
//   F_0 … F_{L−2}  H_{l+1} = relu(H_l·W_lᵀ + b_l) for trained and frozen      [B, s_{l+1}]
//                  models
//   last           one warp per (trained model, sample) row, the last layer row by row:
//                  the logits Z = H_{L−1}·W_{L−1}ᵀ + b_{L−1} (distillation: the    [B, s_L]
//                  teacher's row too), the loss row and G_L = dLoss/dZ (the same row math
//                  as the loss kernels: ops/cuda/loss_rows.cuh), then for L ≥ 3
//                  G_{L−1} = (G_L·W_{L−1}) ⊙ [H_{L−1} ≠ 0]                   [B, s_{L−1}]
//   B_{L−1}        dW_{L−1} = G_Lᵀ·H_{L−1}, db_{L−1} = Σ_b G_L;              [s_L, s_{L−1}]
//                  block 0 also sums the rows' losses into each model's mean
//   B_{L−2}, L ≥ 3 dW_{L−2} = G_{L−1}ᵀ·H_{L−2}, db_{L−2} = Σ_b G_{L−1};
//                  G_{L−2} = (G_{L−1}·W_{L−2}) ⊙ [H_{L−2} ≠ 0].
//                  All of it depends on the rows only, so this phase joins B_{L−1}
//   B_l, l ≥ 1     dW_l = G_{l+1}ᵀ·H_l, db_l = Σ_b G_{l+1}; G_l = (G_{l+1}·W_l) ⊙ [H_l ≠ 0]
//                  (for L = 2, B_1 makes G_1 this way: see backward_joins_below)
//   B_0            dW_0 = G_1ᵀ·x, db_0 = Σ_b G_1; with a tail's Adam, each dW_0 tile updates
//                  its part of W_0 as it finishes (and, in the first column of tiles, its part
//                  of b_0), and after its items every block updates a share of the rest of the
//                  arena (those gradients were final a barrier ago, and no phase reads a
//                  parameter after this one's GEMM)
//
// Every bias gradient db_l = Σ_b G_{l+1} is the row sums of its weight gradient's GEMM
// (dW_l = G_{l+1}ᵀ·H_l: a(m = o, k = b) = G_{l+1}[b, o]), summed by its first column of tiles
// from the operand chunks they stage anyway. The column sums of the GEMM that makes G_{l+1}
// would give it a phase earlier, but across its row tiles, with a second "last one sums"
// round (a counter and another L2 round trip at the end of the phase's slowest item).
//
// Why the last layer goes row by row: the logits are narrow (s_L = 13). As GEMMs, its forward
// (K = 256) and the gradient below it (K = 13) each cost a phase — ≥ 12 µs on an H100 however
// little they compute (docs/PERFORMANCE.md) — while for one sample they are 13 dot products and
// 13 multiply-adds an output, which the warp that computes the sample's loss does in a few
// round trips, with no barrier between them.
//
// The step's tail (FusedTail, ops/cuda/fused_step_cuda.h) rides along: block 0 advances Adam's
// step count in F_0, adds the losses to their running sums in B_{L−1} and advances the step
// counters after the last phase, when nothing reads them any more.
//
// 2L − 1 phases for L ≥ 3, a barrier between each two (L = 3: 5 phases, 4 barriers); 4 for
// L = 2. Within a phase the blocks share the work items of that phase's GEMMs (the tiles of
// ops/cuda/tile_gemm.cuh, split-K included) or the last layer's rows. Gradients are written
// (not accumulated) into the parameters' gradient buffers. Every reduction sums in a fixed
// order, so a step gives the same bits on every run.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/cuda/step_end.cuh"
#include "engine/error.h"
#include "ops/cuda/fused_step_cuda.h"
#include "ops/cuda/loss_rows.cuh"
#include "ops/cuda/tile_gemm.cuh"

namespace subliminal::cuda::fused {

using tile::Gemm;

constexpr int kMaxPhases = 2 * kFusedMaxLayers + 1;
constexpr int kMaxGemms = 2 * kFusedMaxLayers + 2 * kFusedMaxLayers - 1;  // forward ×2, backward

struct Phase {
  int first_gemm, gemms;
};

// The last layer, one warp per (trained model, sample) row (see the table at the top).
struct LossRows {
  const float* h;               // [S + F, B, I]: H_{L−1}, the trained models' rows first
  const float* w;               // [S, O, I]: the trained models' W_{L−1}
  const float* bias;            // [S, O]
  const float* w_frozen;        // [F, O, I], [F, O]: the frozen teachers' (distillation)
  const float* bias_frozen;
  float* logits;                // [S or 2S, B, O]: the trained rows, then (distillation) each one's teacher row
  float* dlogits;               // [S, B, O]: G_L
  float* g_below;               // [S, B, I]: G_{L−1}, or null (backward_joins_below)
  double* row_loss;             // [S, B]
  float* loss_out;              // [S]
  const int32_t* labels;        // [S, B] (cross-entropy)
  int64_t trained, frozen, batch;
  int64_t cols, below;          // O = s_L, I = s_{L−1}
  int64_t c0, c1;
  bool distill;
  double inv_t, temperature;    // distill: 1/T and T
  Divergence divergence;        // distill: KL or JS (ops/divergence.h)
};

// Elements [begin, end) of the Adam arena.
struct ArenaRange {
  int64_t begin, end;
};

struct Program {
  int phases, gemms;
  int loss_phase;               // loss_phase + 1 also reduces the per-model losses
  int adam_gemm;                // −1: no Adam; else B_0's dW_0, whose tiles update W_0 and b_0 as they finish
  tile::AdamEpilogue adam_w0;   // … with this
  ArenaRange adam_skip[2];      // W_0's and b_0's elements in the arena: left out of the rest's update
  Phase phase[kMaxPhases];
  Gemm gemm[kMaxGemms];
  LossRows loss;
  FusedTail tail;
  unsigned long long* clock;    // null, or the phase clock (ops/cuda/fused_step.cu: its layout)
};

// The buffers a step writes besides the gradients (device pointers), for L layers, S trained
// and F frozen models, batch B:
struct Workspace {
  std::vector<float*> H;        // H[l], 1 ≤ l < L: [S + F, B, s_l] (H[0] unused)
  std::vector<float*> G;        // G[l], 1 ≤ l ≤ L: [S, B, s_l] (G[0] unused)
  float* logits;                // [logit_rows(S, distill), B, s_L]
  double* row_loss;             // [S, B]
};

// ---- device code -----------------------------------------------------------------------------

// Each warp's share of the block's shared memory while the last layer runs row by row: the
// tile's output staging (tile::Smem::c), free in that phase, kStageFloats floats per warp.
// (256: one chunk for the notebook's hidden width; 512 made the kernel spill registers.)
constexpr int kStageFloats = 256;
static_assert(tile::kBlockThreads / 32 * kStageFloats <= tile::kTileM * (tile::kTileN + 1),
              "the warps' staging areas must fit in the tile's output staging");

// The logits of one sample, by one warp: z = h·Wᵀ + b, h [I], W [O, I], b [O], z [O]. Lane l
// computes z[l], z[l + 32], …, adding k = 0, 1, … in order with fmaf from 0 and the bias last
// (the tile's arithmetic without split-K). h is staged in the warp's shared memory (`stage`),
// kStageFloats at a time — one L2 round trip, every lane loading 8 at once — and read from
// there by all lanes at once (a broadcast). W and b are plain loads, cached in L1, which every
// warp of the SM shares: no SM can hold a stale copy, since nothing writes them in this kernel
// until the last phase's Adam, after every read. (Not __ldg: its read-only path wants them
// unwritten for the whole kernel.)
__device__ inline void logits_row(const float* h, const float* w, const float* bias, int64_t I, int64_t O, float* z,
                                  float* stage) {
  constexpr int kPerLane = kStageFloats / 32;
  const int lane = threadIdx.x & 31;
  for (int64_t o0 = 0; o0 < O; o0 += 32) {
    const int64_t o = o0 + lane;
    const float* w_row = w + (o < O ? o : 0) * I;  // lanes past O compute a copy of row 0, unused
    float acc = 0.0f;
    for (int64_t k0 = 0; k0 < I; k0 += kStageFloats) {
      const int64_t n = I - k0 < kStageFloats ? I - k0 : kStageFloats;
      float held[kPerLane];
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) held[j] = 32 * j + lane < n ? __ldcg(&h[k0 + 32 * j + lane]) : 0.0f;
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) stage[32 * j + lane] = held[j];
      __syncwarp();  // the whole chunk of h is staged
#pragma unroll 8
      for (int64_t k = 0; k < n; ++k) acc = fmaf(stage[k], w_row[k0 + k], acc);
      __syncwarp();  // every lane is done with it before the next chunk
    }
    if (o < O) z[o] = acc + bias[o];
  }
}

// Row r (of model `model`) of G_{L−1} = (G_L·W_{L−1}) ⊙ [H_{L−1} ≠ 0], by one warp: the
// backward_input product of the last layer for one sample. Lane l takes the columns
// i = l, l + 32, …, kColumns of them at a time: it loads their gate values first (so that
// round trip overlaps the rest), then kOutputs logits' worth of W_{L−1} before it multiplies
// (plain loads, through L1, as in logits_row). The sums are the tile's (K padded with zeros to
// its 16-wide chunks, fmaf from 0 in k order), so the bits are too. (kColumns × kOutputs = 16
// keeps the kernel under its 128 registers without spills; ptxas -v says so.)
__device__ inline void below_row(const LossRows& p, int64_t model, int64_t r) {
  constexpr int kColumns = 4, kOutputs = 4;
  const int lane = threadIdx.x & 31;
  const float* dz = p.dlogits + r * p.cols;         // [O]: this warp's lanes wrote it
  const float* w = p.w + model * p.cols * p.below;  // [O, I]
  const float* h = p.h + r * p.below;               // [I]: the trained rows come first
  float* g = p.g_below + r * p.below;               // [I]
  for (int64_t i0 = lane; i0 < p.below; i0 += 32 * kColumns) {
    bool open[kColumns];  // the ReLU gate: !(h == 0)
#pragma unroll
    for (int c = 0; c < kColumns; ++c) open[c] = i0 + 32 * c < p.below && !(__ldcg(&h[i0 + 32 * c]) == 0.0f);
    float acc[kColumns] = {};
    for (int64_t o0 = 0; o0 < p.cols; o0 += kOutputs) {
      float d[kOutputs], wv[kOutputs][kColumns];
#pragma unroll
      for (int k = 0; k < kOutputs; ++k) {
        const bool row_in = o0 + k < p.cols;
        d[k] = row_in ? __ldcg(&dz[o0 + k]) : 0.0f;
#pragma unroll
        for (int c = 0; c < kColumns; ++c) {
          const int64_t i = i0 + 32 * c;
          wv[k][c] = row_in && i < p.below ? w[(o0 + k) * p.below + i] : 0.0f;
        }
      }
#pragma unroll
      for (int k = 0; k < kOutputs; ++k)
#pragma unroll
        for (int c = 0; c < kColumns; ++c) acc[c] = fmaf(d[k], wv[k][c], acc[c]);
    }
#pragma unroll
    for (int c = 0; c < kColumns; ++c)
      if (i0 + 32 * c < p.below) g[i0 + 32 * c] = open[c] ? acc[c] : 0.0f;
  }
}

// One warp per (trained model, sample) row: the row's logits (distillation: its teacher's
// too), its loss, its logits' gradient (dLoss/dZ with the loss a per-model mean, so dLoss = 1
// per model) and the row of G_{L−1} below it.
__device__ inline void loss_rows(const LossRows& p, tile::Smem& sm) {
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  const int lane = threadIdx.x & 31;
  const int64_t O = p.cols, I = p.below;
  float* stage = &sm.c[0][0] + (threadIdx.x / 32) * kStageFloats;
  for (int64_t r = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32; r < p.trained * p.batch; r += warps) {
    const int64_t model = r / p.batch, b = r % p.batch;
    float* z = p.logits + r * O;
    logits_row(p.h + r * I, p.w + model * O * I, p.bias + model * O, I, O, z, stage);
    float* t = nullptr;
    if (p.distill) {  // the teacher's row, in this student's own slot: no other warp touches it
      const int64_t f = model % p.frozen;
      t = p.logits + (p.trained * p.batch + r) * O;
      logits_row(p.h + ((p.trained + f) * p.batch + b) * I, p.w_frozen + f * O * I, p.bias_frozen + f * O, I, O, t,
                 stage);
    }
    __syncwarp();  // the lanes' logits are visible to the whole warp
    double row;
    if (p.distill) {
      row = rows::distill_row(p.divergence, z, t, O, p.c0, p.c1, p.inv_t, p.temperature / double(p.batch),
                              p.dlogits + r * O, false);
    } else {
      row = rows::cross_entropy_row(z, O, p.c0, p.c1, p.labels[r], 1.0f / float(p.batch), p.dlogits + r * O, false);
    }
    if (lane == 0) p.row_loss[r] = row;
    if (!p.g_below) continue;
    __syncwarp();  // the lanes' stores of dz are visible to the whole warp
    below_row(p, model, r);
  }
}

// Block 0: each model's loss (cross-entropy: the mean of its rows; distillation: T²·the mean,
// as the loss kernels compute it), and the tail's running sums. One warp per model: lane l adds
// rows l, l + 32, … in order, loading kRowBatch of them at a time so that their L2 round trips
// overlap, then the warp adds its lanes in a fixed tree — the same bits on every run. (One
// thread per model adding the rows in a plain loop was at the compiler's mercy: in a build where
// it issued the loads one after another, this phase took 0.15 µs a row longer on an H100, 35 µs
// a step at batch 256.)
__device__ inline void reduce_losses(const LossRows& p, const FusedTail& tail) {
  constexpr int kRowBatch = 8;
  const int lane = threadIdx.x & 31;
  for (int64_t model = threadIdx.x / 32; model < p.trained; model += blockDim.x / 32) {
    const double* model_rows = p.row_loss + model * p.batch;
    double sum = 0.0;
    for (int64_t first = lane; first < p.batch; first += 32 * kRowBatch) {
      double v[kRowBatch];
#pragma unroll
      for (int k = 0; k < kRowBatch; ++k) v[k] = first + 32 * k < p.batch ? __ldcg(&model_rows[first + 32 * k]) : 0.0;
#pragma unroll
      for (int k = 0; k < kRowBatch; ++k) sum += v[k];
    }
    sum = rows::warp_sum_double(sum);
    if (lane != 0) continue;
    const double scale = p.distill ? p.temperature * p.temperature : 1.0;
    const float loss = float(scale * sum / double(p.batch));
    p.loss_out[model] = loss;
    if (tail.loss_sum) accumulate_loss(&tail.loss_sum[model], loss, tail.loss_weight, *tail.step, tail.first_bad);
  }
}

// Every thread of the grid: Adam over the arena but the ranges `done` (its step count was
// advanced in F_0). Each thread takes 4 elements a round, a grid's width apart (coalesced), and
// loads all 16 values before it computes, so their L2 round trips overlap. Loads go through L2
// (__ldcg): the gradients were written by other SMs in this kernel. (One pass that skips
// `done`, rather than one per range between them: three inlined passes made the kernel spill,
// and so does giving the values a 0 where they are not loaded.)
__device__ inline void adam_rest(const FusedTail& tail, const AdamStepScalars& scalars, const ArenaRange (&done)[2]) {
  const auto& a = tail.adam;
  const int64_t width = int64_t(gridDim.x) * blockDim.x;
  constexpr int kRound = 4;
  const auto wanted = [&](int64_t i) {
    return i < a.n && !(done[0].begin <= i && i < done[0].end) && !(done[1].begin <= i && i < done[1].end);
  };
  for (int64_t first = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; first < a.n; first += kRound * width) {
    float p[kRound], g[kRound], m[kRound], v[kRound];
    bool here[kRound];
#pragma unroll
    for (int r = 0; r < kRound; ++r) {
      const int64_t i = first + r * width;
      here[r] = wanted(i);
      if (here[r]) p[r] = __ldcg(&a.p[i]), g[r] = __ldcg(&a.g[i]), m[r] = __ldcg(&a.m[i]), v[r] = __ldcg(&a.v[i]);
    }
#pragma unroll
    for (int r = 0; r < kRound; ++r) {
      const int64_t i = first + r * width;
      if (!here[r]) continue;
      adam_element(p[r], g[r], m[r], v[r], scalars);
      a.p[i] = p[r], a.m[i] = m[r], a.v[i] = v[r];
    }
  }
}

// The whole program, run by every thread of every block of the grid. grid_sync() waits for
// the whole grid (and makes its writes visible). The kernel's phase clock: phase_begins(ph) is
// called before phase ph and with ph = phases at the end, phase_done(ph) when this thread's
// block has no more work in phase ph (before the barrier that ends it).
template <class GridSync, class PhaseBegins, class PhaseDone>
__device__ void run_program(const Program& prog, tile::Smem& sm, GridSync&& grid_sync, PhaseBegins&& phase_begins,
                            PhaseDone&& phase_done) {
  const bool lead = blockIdx.x == 0 && threadIdx.x == 0;
  for (int ph = 0; ph < prog.phases; ++ph) {
    phase_begins(ph);
    if (ph == 0 && lead && prog.tail.adam.t) *prog.tail.adam.t += 1;  // read in B_0, after barriers
    if (ph == prog.loss_phase) loss_rows(prog.loss, sm);
    if (ph == prog.loss_phase + 1 && blockIdx.x == 0) reduce_losses(prog.loss, prog.tail);
    const bool adam_here = ph + 1 == prog.phases && prog.adam_gemm >= 0;
    const Phase& phase = prog.phase[ph];
    int64_t total = 0;
    for (int j = 0; j < phase.gemms; ++j) total += prog.gemm[phase.first_gemm + j].items;
    for (int64_t item = blockIdx.x; item < total; item += gridDim.x) {
      int j = phase.first_gemm;
      int64_t local = item;
      while (local >= prog.gemm[j].items) local -= prog.gemm[j++].items;
      tile::run_item(prog.gemm[j], local, sm, adam_here && j == prog.adam_gemm ? &prog.adam_w0 : nullptr);
    }
    if (adam_here) {  // the rest of the arena: around W_0 and b_0
      const AdamStepScalars scalars = adam_step_scalars(prog.tail.adam.options, __ldcg(prog.tail.adam.t));
      adam_rest(prog.tail, scalars, prog.adam_skip);
    }
    phase_done(ph);
    if (ph + 1 < prog.phases) grid_sync();  // this phase's writes are visible to the next
  }
  // The step counters: their last reader was reduce_losses, barriers ago.
  if (lead)
    for (int64_t* counter : prog.tail.counters)
      if (counter) *counter += 1;
  phase_begins(prog.phases);
}

// ---- host code: building the program ----------------------------------------------------------

// Whether the rows make G_{L−1} too, so that the first backward phase (B_{L−1}) and the next
// (B_{L−2}) need only the rows and can be one. Not when B_{L−2} is B_0 (L = 2): B_0 is last,
// and Adam over the rest of the arena after its GEMM needs every other gradient (here dW_1 and
// db_1) final a barrier earlier. Then B_1 makes G_1 as a GEMM, as for the layers below.
inline bool backward_joins_below(int layers) { return layers >= 3; }

// Rows of the logits buffer (Workspace::logits): each trained model's, then for distillation
// each one's copy of its teacher's (the warp of a row computes both).
inline int64_t logit_rows(int64_t trained, bool distill) { return distill ? 2 * trained : trained; }

// Where a gradient of `count` floats lies in the tail's Adam arena `a` — elements [begin, end) —
// if its parameter lies at the same place in the value arena; else {−1, −1}. (Compared as
// addresses: the gradient may be anywhere.)
inline ArenaRange in_arena(const decltype(FusedTail::adam)& a, const float* grad, const float* param,
                           int64_t count) {
  const auto at = [](const void* p) { return reinterpret_cast<uintptr_t>(p); };
  const uintptr_t g = at(a.g), end = g + uintptr_t(a.n) * sizeof(float);
  const uintptr_t first = at(grad), last = first + uintptr_t(count) * sizeof(float);
  if (first < g || last > end || (first - g) % sizeof(float) != 0 ||
      param != a.p + (first - g) / sizeof(float))
    return ArenaRange{-1, -1};
  return ArenaRange{int64_t((first - g) / sizeof(float)), int64_t((last - g) / sizeof(float))};
}

// Plans a phase's GEMMs for the grid. They share it in proportion to their work (tiles × K
// chunks), so that their work items come out about equally long — a phase lasts as long as its
// longest item — and, where the tiles allow, all of them fit in one wave of the grid. Then,
// with the policy's parallel_fixup, the split GEMMs of a phase whose items all fit (each block
// has at most one, and the launch is cooperative: all run at once, so no item waits for one
// that has not started) finish each tile in bands, all of its items at once (tile_item).
inline void plan_phase(Program& prog, const Phase& phase, int grid, const FusedSplitPolicy& split) {
  auto work = [](const Gemm& g) {
    return g.models * tile::ceil_div(g.M, tile::kTileM) * tile::ceil_div(g.N, tile::kTileN) *
           std::max<int64_t>(tile::ceil_div(g.K, tile::kTileK), 1);
  };
  int64_t total = 0;
  for (int j = phase.first_gemm; j < phase.first_gemm + phase.gemms; ++j) total += work(prog.gemm[j]);
  for (int j = phase.first_gemm; j < phase.first_gemm + phase.gemms; ++j)
    tile::plan(prog.gemm[j], std::max<int64_t>(1, int64_t(grid) * work(prog.gemm[j]) / std::max<int64_t>(total, 1)),
               split.max_splits, split.min_chunks);
  int64_t items = 0;
  for (int j = phase.first_gemm; j < phase.first_gemm + phase.gemms; ++j) items += prog.gemm[j].items;
  for (int j = phase.first_gemm; j < phase.first_gemm + phase.gemms; ++j) {
    Gemm& g = prog.gemm[j];  // (a band has no column sums across the tile's rows: none here)
    g.parallel_fixup = split.parallel_fixup && g.splits > 1 && items <= grid && !g.column_sums;
  }
}

// The program for one step (arguments as fused_mlp_step's, checked by it; tail may be null),
// its GEMMs planned for `grid` blocks with the split policy `split`. The GEMMs' scratch is
// left unassigned: scratch_sizes() says how much the program needs, assign_scratch() points it
// there.
inline Program build_program(const float* x, int64_t batch, const FusedMlp& trained, const FusedMlp* frozen,
                             const FusedLoss& loss, float* loss_out, const Workspace& ws, int grid,
                             const FusedTail* tail, const FusedSplitPolicy& split = {}) {
  const int L = trained.layers;
  const int64_t S = trained.models, F = frozen ? frozen->models : 0, B = batch;
  const std::vector<int64_t>& s = trained.sizes;
  auto h_in = [&](int l) -> const float* { return l == 0 ? x : ws.H[size_t(l)]; };
  auto stride = [&](int l) { return B * s[size_t(l)]; };  // one model's activations of width s_l

  Program prog{};
  int gemms = 0, phases = 0;
  auto begin_phase = [&] { prog.phase[phases++] = Phase{gemms, 0}; };
  auto add = [&](const Gemm& g) {
    prog.gemm[gemms++] = g;
    ++prog.phase[phases - 1].gemms;
  };

  // Forward but the last layer: trained models, then frozen ones, which read x[f] for f < F and
  // write after the trained.
  for (int l = 0; l + 1 < L; ++l) {
    begin_phase();
    auto forward = [&](const float* in, const FusedMlp& mlp, float* out, int64_t models) {
      Gemm g = tile::forward_product(in, mlp.weights[size_t(l)], out, models, B, s[size_t(l)], s[size_t(l) + 1]);
      g.bias = mlp.biases[size_t(l)];
      g.relu = true;
      return g;
    };
    float* out = ws.H[size_t(l) + 1];
    add(forward(h_in(l), trained, out, S));
    if (F > 0) add(forward(h_in(l) + (l == 0 ? 0 : S * stride(l)), *frozen, out + S * stride(l + 1), F));
  }
  prog.loss_phase = phases;
  begin_phase();  // the last layer row by row (no GEMMs)
  LossRows& rows = prog.loss;
  rows.h = ws.H[size_t(L) - 1];
  rows.w = trained.weights[size_t(L) - 1], rows.bias = trained.biases[size_t(L) - 1];
  if (F > 0) rows.w_frozen = frozen->weights[size_t(L) - 1], rows.bias_frozen = frozen->biases[size_t(L) - 1];
  rows.logits = ws.logits, rows.dlogits = ws.G[size_t(L)];
  rows.g_below = backward_joins_below(L) ? ws.G[size_t(L) - 1] : nullptr;
  rows.row_loss = ws.row_loss, rows.loss_out = loss_out, rows.labels = loss.labels;
  rows.trained = S, rows.frozen = F, rows.batch = B;
  rows.cols = s[size_t(L)], rows.below = s[size_t(L) - 1];
  rows.c0 = loss.c0, rows.c1 = loss.c1;
  rows.distill = loss.distill;
  rows.inv_t = loss.distill ? 1.0 / loss.temperature : 1.0, rows.temperature = loss.temperature;
  rows.divergence = loss.divergence;

  // Backward: layer l's weight gradient and, for l ≥ 1, the gradient below it — but G_{L−1}
  // when the rows made it, and then B_{L−2} joins B_{L−1}.
  const bool joined = backward_joins_below(L);
  for (int l = L - 1; l >= 0; --l) {
    if (!(l == L - 2 && joined)) begin_phase();
    const int64_t in = s[size_t(l)], out = s[size_t(l) + 1];
    const float* g_out = ws.G[size_t(l) + 1];
    Gemm dw = tile::backward_weight_product(g_out, h_in(l), trained.weight_grads[size_t(l)], S, B, in, out);
    dw.row_sums = trained.bias_grads[size_t(l)];  // db_l (see the top of this file)
    add(dw);
    if (l >= 1 && (l < L - 1 || !joined)) {
      Gemm dx = tile::backward_input_product(g_out, trained.weights[size_t(l)], ws.G[size_t(l)], S, B, in, out);
      dx.gate_values = ws.H[size_t(l)];        // the trained models' part comes first
      add(dx);
    }
  }
  prog.adam_gemm = -1;
  if (tail) {
    prog.tail = *tail;
    if (tail->adam.t) {  // B_0's only GEMM is dW_0; W_0 and b_0 must lie inside Adam's arena
      const int j = prog.phase[phases - 1].first_gemm;
      const Gemm& dw0 = prog.gemm[j];
      const auto& a = tail->adam;
      // Where a gradient of `count` floats lies in the arena, if its parameter lies at the
      // same place in the value arena; else {−1, −1}.
      const ArenaRange w0 = in_arena(a, dw0.c, trained.weights[0], dw0.models * dw0.M * dw0.N);
      const ArenaRange b0 = in_arena(a, dw0.row_sums, trained.biases[0], dw0.models * dw0.M);
      if (w0.begin < 0 || b0.begin < 0)
        throw ShapeError(
            "fused step: the tail's Adam arena does not hold the first layer's weights, biases and their gradients");
      if (w0.begin < b0.end && b0.begin < w0.end)
        throw ShapeError("fused step: the first layer's weights and biases overlap in the tail's Adam arena");
      prog.adam_gemm = j;
      prog.adam_skip[0] = w0, prog.adam_skip[1] = b0;
      prog.adam_w0 = tile::AdamEpilogue{a.p + w0.begin, a.m + w0.begin, a.v + w0.begin,
                                        a.p + b0.begin, a.m + b0.begin, a.v + b0.begin,
                                        a.t, a.options};
    }
  }
  prog.phases = phases, prog.gemms = gemms;

  for (int ph = 0; ph < phases; ++ph) plan_phase(prog, prog.phase[ph], grid, split);
  return prog;
}

// The program's phases' names, in order (for the phase clock's report).
inline std::vector<std::string> phase_names(const Program& prog) {
  std::vector<std::string> names;
  const int layers = prog.loss_phase + 1;
  for (int l = 0; l + 1 < layers; ++l) names.push_back("forward, layer " + std::to_string(l));
  names.push_back("last layer, row by row");
  for (int l = layers - 1; l >= 0; --l) {
    const bool joined = l == layers - 1 && backward_joins_below(layers);
    names.push_back(joined ? "backward, layers " + std::to_string(l) + " and " + std::to_string(l - 1)
                           : "backward, layer " + std::to_string(l));
    if (joined) --l;  // layer l − 1's GEMMs are in this phase too
  }
  if (prog.adam_gemm >= 0) names.back() += " + Adam";
  return names;
}

// Scratch floats and counters all of the program's GEMMs need.
inline void scratch_sizes(const Program& prog, int64_t& floats, int64_t& counters) {
  floats = counters = 0;
  for (int j = 0; j < prog.gemms; ++j) {
    floats += tile::scratch_floats(prog.gemm[j]);
    counters += tile::scratch_counters(prog.gemm[j]);
  }
}

// Gives each GEMM its own part of `floats` and `counters` (sized by scratch_sizes; null when 0).
inline void assign_scratch(Program& prog, float* floats, int* counters) {
  for (int j = 0; j < prog.gemms; ++j) {
    tile::assign_scratch(prog.gemm[j], floats, counters);
    if (floats) floats += tile::scratch_floats(prog.gemm[j]);
    if (counters) counters += tile::scratch_counters(prog.gemm[j]);
  }
}

// ---- host code: the rule that lets the tiles' copies and the rows' W loads use L1 -------------
//
// The tiles copy their operands (and a forward GEMM its bias) with cp.async.ca, and the rows
// read W and b with plain loads: both through L1, which is not coherent between SMs, and which
// caches whole lines. So a phase must not write bytes whose line an L1 read cached in the same
// or an earlier phase while an L1 read fetches those bytes after it (that read could hit the
// stale line: ops/cuda/tile_gemm.cuh, "Which loads may use L1"), nor bytes it reads itself
// through L1 (another SM's read would race with the write). Writes that are read only through
// L2, such as the split-K partials, are outside the rule.

// Bytes [begin, end) that phase `phase` reads through L1 or writes.
struct L1Span {
  uintptr_t begin, end;
  int phase;
  bool overlaps(const L1Span& o) const { return begin < o.end && o.begin < end; }
};
template <class T>
L1Span l1_span(const T* p, int64_t elements, int phase) {
  return {uintptr_t(p), uintptr_t(p + elements), phase};
}
// A strided operand of `rows` rows and K columns per model (positive strides: the last
// element is the farthest).
inline L1Span operand_span(const tile::Operand& op, int64_t models, int64_t rows, int64_t K, int phase) {
  const int64_t last = (models - 1) * op.model_stride + (rows - 1) * op.row_stride + (K - 1) * op.k_stride;
  return l1_span(op.ptr, last + 1, phase);
}

// "" when the program keeps the rule, else what breaks it. line_bytes: how much around each
// L1 read its line caches — 128 on the GPU (fused_mlp_step checks each program it launches);
// the emulated tests, whose host buffers are not line-aligned, check bytes (1).
inline std::string l1_rule_violation(const Program& prog, uintptr_t line_bytes) {
  std::vector<L1Span> reads, writes;
  for (int ph = 0; ph < prog.phases; ++ph)
    for (int j = prog.phase[ph].first_gemm; j < prog.phase[ph].first_gemm + prog.phase[ph].gemms; ++j) {
      const Gemm& g = prog.gemm[j];
      reads.push_back(operand_span(g.a, g.models, g.M, g.K, ph));
      reads.push_back(operand_span(g.b, g.models, g.N, g.K, ph));
      if (g.kind == tile::Kind::forward && g.bias) reads.push_back(l1_span(g.bias, g.models * g.N, ph));
      writes.push_back(l1_span(g.c, g.models * g.M * g.N, ph));
      if (g.mask_out) writes.push_back(l1_span(g.mask_out, g.models * g.M * g.mask_row_bytes, ph));
      if (g.column_sums) writes.push_back(l1_span(g.column_sums, g.models * g.N, ph));
      if (g.row_sums) writes.push_back(l1_span(g.row_sums, g.models * g.M, ph));
      if (j == prog.adam_gemm) {
        for (const float* a : {prog.adam_w0.param, prog.adam_w0.m, prog.adam_w0.v})
          writes.push_back(l1_span(a, g.models * g.M * g.N, ph));
        for (const float* a : {prog.adam_w0.bias_param, prog.adam_w0.bias_m, prog.adam_w0.bias_v})
          writes.push_back(l1_span(a, g.models * g.M, ph));
      }
    }
  const LossRows& r = prog.loss;
  const int rows_phase = prog.loss_phase;
  reads.push_back(l1_span(r.w, r.trained * r.cols * r.below, rows_phase));
  reads.push_back(l1_span(r.bias, r.trained * r.cols, rows_phase));
  if (r.distill) {
    reads.push_back(l1_span(r.w_frozen, r.frozen * r.cols * r.below, rows_phase));
    reads.push_back(l1_span(r.bias_frozen, r.frozen * r.cols, rows_phase));
  }
  writes.push_back(l1_span(r.logits, logit_rows(r.trained, r.distill) * r.batch * r.cols, rows_phase));
  writes.push_back(l1_span(r.dlogits, r.trained * r.batch * r.cols, rows_phase));
  if (r.g_below) writes.push_back(l1_span(r.g_below, r.trained * r.batch * r.below, rows_phase));
  writes.push_back(l1_span(r.row_loss, r.trained * r.batch, rows_phase));
  if (r.loss_out) writes.push_back(l1_span(r.loss_out, r.trained, rows_phase + 1));
  if (prog.tail.adam.p)
    for (const float* a : {static_cast<const float*>(prog.tail.adam.p), static_cast<const float*>(prog.tail.adam.m),
                           static_cast<const float*>(prog.tail.adam.v)})
      writes.push_back(l1_span(a, prog.tail.adam.n, prog.phases - 1));

  for (const L1Span& w : writes) {
    bool cached_by_then = false, read_during = false, read_after = false;
    for (const L1Span& rd : reads) {
      const L1Span line{rd.begin / line_bytes * line_bytes, (rd.end + line_bytes - 1) / line_bytes * line_bytes,
                        rd.phase};
      if (rd.phase <= w.phase && line.overlaps(w)) cached_by_then = true;
      if (rd.phase == w.phase && rd.overlaps(w)) read_during = true;
      if (rd.phase > w.phase && rd.overlaps(w)) read_after = true;
    }
    if (read_during) return "phase " + std::to_string(w.phase) + " writes bytes it also reads through L1 (a race)";
    if (cached_by_then && read_after)
      return "phase " + std::to_string(w.phase) +
             " writes bytes whose L1 line an earlier read may hold, and a later phase reads them through L1";
  }
  return "";
}

}  // namespace subliminal::cuda::fused
