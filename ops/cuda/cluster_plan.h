// ops/cuda/cluster_plan.h — host code for the cluster step (ops/cuda/cluster_program.cuh): how
// many rows each cluster takes and how long its K chunks are, where each part of a block's
// shared memory lies, the scratch the two kernels share, and the two kernels' programs.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/error.h"
#include "ops/cuda/cluster_program.cuh"
#include "ops/cuda/fused_step_cuda.h"

namespace subliminal::cuda::cluster {

// The widest of the block's own columns over the hidden layers, padded to 4.
inline int own_width4(const std::vector<int64_t>& s, int layers, int Q) {
  int widest = 0;
  for (int l = 1; l < layers; ++l)
    for (int q = 0; q < Q; ++q)
      widest = std::max(widest, own_begin(s[size_t(l)], q + 1, Q) - own_begin(s[size_t(l)], q, Q));
  return round4(widest);
}

// A block's shared memory for `rows` rows per cluster and K chunks of kc floats, each thread
// computing block × block outputs of a forward product (SmemLayout's parts, each a multiple of 4
// floats).
inline SmemLayout smem_layout(const std::vector<int64_t>& s, int layers, int Q, int64_t rows, int kc,
                              int threads, int block = 4) {
  const int R4 = round4(rows), NH4 = own_width4(s, layers, Q), O4 = round4(s[size_t(layers)]);
  SmemLayout lay{};
  int at = 0;
  auto take = [&at](int floats) {
    const int here = at;
    at += round4(floats);
    return here;
  };
  lay.b_part = R4 * (kc + 4);
  lay.buffer[0] = take(lay.b_part + NH4 * (kc + 4));
  lay.buffer[1] = take(lay.b_part + NH4 * (kc + 4));
  lay.kpart = take(threads * (block * block + (block > 4 ? 1 : 0)));  // (dot_accumulate_blocked's padding)
  lay.acc = take(R4 * NH4);
  lay.zacc = take(R4 * O4);
  lay.wlast = take(O4 * NH4);
  lay.gl = take(R4 * O4);
  lay.gown = take(R4 * NH4);
  lay.bias = take(NH4);
  lay.total = at;
  return lay;
}

// What the planner needs to know of the machine.
struct Machine {
  int cluster;              // Q
  int clusters;             // how many clusters run at once: the rows are spread over about this many
  int threads;              // per block
  int64_t smem_floats;      // a block's shared memory
  int max_chunk = 1 << 30;  // (tests: force several K chunks)
  int block = 4;            // ClusterStepTuning::register_block
};

// Throws ShapeError for a negative cap in a ClusterStepTuning.
inline void check_tuning(const ClusterStepTuning& tuning) {
  if (tuning.max_chunk < 0 || tuning.max_clusters < 0)
    throw ShapeError("cluster step tuning: K chunks of at most " + std::to_string(tuning.max_chunk) +
                     " floats, at most " + std::to_string(tuning.max_clusters) + " clusters");
  if (tuning.register_block != 4 && tuning.register_block != 8)
    throw ShapeError("cluster step tuning: register blocks of " + std::to_string(tuning.register_block) +
                     " × " + std::to_string(tuning.register_block) + " (4 or 8)");
}

// The machine as a tuned step plans for it: K chunks and the clusters in use capped
// (ClusterStepTuning; 0: no cap).
inline Machine tuned(Machine mc, const ClusterStepTuning& tuning) {
  check_tuning(tuning);
  if (tuning.max_chunk > 0) mc.max_chunk = tuning.max_chunk;
  if (tuning.max_clusters > 0) mc.clusters = std::min(mc.clusters, tuning.max_clusters);
  mc.block = tuning.register_block;
  return mc;
}

// The rows per cluster and the K chunk for a step of S models at batch B: about `clusters`
// clusters, as many rows each as the shared memory allows with a K chunk of ≥ kMinChunk floats
// (or all of K, when smaller), then the fewest chunks that fit, evened out; the rows evened out
// over the row blocks. Throws ShapeError when not even one row fits.
inline void plan_rows(Program& p, const Machine& mc) {
  if (mc.cluster < 1 || mc.cluster > kClusterBlocks)
    throw ShapeError("cluster step: clusters of " + std::to_string(mc.cluster) + " blocks (1 to " +
                     std::to_string(kClusterBlocks) + ")");
  const std::vector<int64_t> s(p.s, p.s + p.layers + 1);
  const int64_t widest_k = *std::max_element(s.begin(), s.end() - 1);
  const auto fits = [&](int64_t rows, int kc) {
    return smem_layout(s, p.layers, mc.cluster, rows, kc, mc.threads, mc.block).total <= mc.smem_floats;
  };
  // Chunks are multiples of 8, so that the staging stride kc + 4 is an odd number of float4s
  // (dot_accumulate's bank groups): K rounded up (or the tests' cap) at most.
  const int want = int((std::min<int64_t>(widest_k, mc.max_chunk) + 7) / 8 * 8);
  const int least = std::min(want, kMinChunk);
  int64_t rows =
      std::min<int64_t>(p.batch, std::max<int64_t>(1, (p.trained * p.batch + mc.clusters - 1) / mc.clusters));
  while (rows > 0 && !fits(rows, least)) rows = rows > 4 ? (rows + 3) / 4 * 4 - 4 : rows - 1;
  if (rows == 0)
    throw ShapeError("cluster step: not one row of sizes up to " + std::to_string(widest_k) +
                     " fits a block's shared memory");
  p.row_blocks = (p.batch + rows - 1) / rows;
  // the same number of row blocks, their rows evened out
  p.rows = (p.batch + p.row_blocks - 1) / p.row_blocks;
  int kc = want;
  while (kc > least && !fits(p.rows, kc)) kc -= 8;
  // As few chunks as that, evened out: 784 in chunks of 384 would end with a chunk of 16, a
  // pipeline round (two __syncthreads, a K-group fix-up, a backward product on one warp) for a
  // sliver of work; 3 × 264 share it, and the first chunk, whose load nothing overlaps, is shorter.
  const int64_t chunks = (widest_k + kc - 1) / kc;
  const int even = int((widest_k + chunks - 1) / chunks);
  p.kc = std::max(least, (even + 7) / 8 * 8);
  p.smem = smem_layout(s, p.layers, mc.cluster, p.rows, p.kc, mc.threads, mc.block);
  p.block = mc.block;
}

// Floats each of the program's exchange buffers and gradient partials needs, in this order:
// H[1] … H[L−2] (H_{L−1} never leaves the blocks' shared memory), zpart, logits, dz, gpart,
// dw_part[0 … L−1], db_part[0 … L−1]; and the row losses' doubles.
inline std::vector<int64_t> scratch_floats(const Program& p, int64_t& row_loss_doubles) {
  const int L = p.layers;
  const int64_t S = p.trained, B = p.batch, Q = p.cluster, O = p.s[L];
  std::vector<int64_t> n;
  for (int l = 1; l + 1 < L; ++l) n.push_back(2 * S * B * p.s[l]);
  n.push_back(2 * S * B * Q * O);
  n.push_back(2 * S * B * O);
  n.push_back(S * B * O);
  int64_t widest = 1;
  for (int l = 1; l + 1 < L; ++l) widest = std::max(widest, p.s[l]);
  n.push_back(S * B * Q * widest);
  for (int l = 0; l < L; ++l) n.push_back(p.row_blocks * S * p.s[l + 1] * p.s[l]);
  for (int l = 0; l < L; ++l) n.push_back(p.row_blocks * S * p.s[l + 1]);
  row_loss_doubles = S * B;
  return n;
}

inline void assign_scratch(Program& p, const std::vector<float*>& at, double* row_loss) {
  const int L = p.layers;
  size_t k = 0;
  for (int l = 1; l + 1 < L; ++l) p.H[l] = at[k++];
  p.zpart = at[k++], p.logits = at[k++], p.dz = at[k++], p.gpart = at[k++];
  for (int l = 0; l < L; ++l) p.dw_part[l] = at[k++];
  for (int l = 0; l < L; ++l) p.db_part[l] = at[k++];
  p.row_loss = row_loss;
}

// Kernel 1's program (arguments as fused_mlp_step's, checked by its caller), planned for
// `mc`; the scratch is left unassigned (scratch_floats, assign_scratch).
inline Program build_rows_program(const float* x, int64_t batch, const FusedMlp& trained,
                                  const FusedMlp* frozen, const FusedLoss& loss, const FusedTail* tail,
                                  const Machine& mc) {
  Program p{};
  p.layers = trained.layers;
  for (int l = 0; l <= p.layers; ++l) p.s[l] = trained.sizes[size_t(l)];
  p.trained = trained.models, p.frozen = loss.distill && frozen ? frozen->models : 0, p.batch = batch;
  p.cluster = mc.cluster;
  for (int l = 0; l < p.layers; ++l) {
    p.net.w[l] = trained.weights[size_t(l)], p.net.b[l] = trained.biases[size_t(l)];
    if (p.frozen) p.teacher.w[l] = frozen->weights[size_t(l)], p.teacher.b[l] = frozen->biases[size_t(l)];
  }
  p.x = x;
  p.distill = loss.distill, p.c0 = loss.c0, p.c1 = loss.c1;
  p.inv_t = loss.distill ? 1.0 / loss.temperature : 1.0, p.temperature = loss.temperature;
  p.divergence = loss.divergence;
  p.labels = loss.labels;
  p.adam_t = tail ? tail->adam.t : nullptr;
  p.prefetch = true;  // ClusterStepTuning's default
  plan_rows(p, mc);
  return p;
}

// Kernel 2's program for kernel 1's `rows` (scratch assigned): the gradients into `trained`'s
// buffers, Adam over the tail's arena, the losses into loss_out.
inline ReduceProgram build_reduce_program(const Program& rows, const FusedMlp& trained, float* loss_out,
                                          const FusedTail* tail) {
  ReduceProgram r{};
  r.parts = rows.row_blocks;
  const int64_t S = rows.trained;
  for (int l = 0; l < rows.layers; ++l) {
    r.seg[r.segments++] =
        Segment{trained.weight_grads[size_t(l)], rows.dw_part[l], S * rows.s[l + 1] * rows.s[l]};
    r.seg[r.segments++] = Segment{trained.bias_grads[size_t(l)], rows.db_part[l], S * rows.s[l + 1]};
  }
  fused::LossRows& ls = r.loss;
  ls.row_loss = rows.row_loss, ls.loss_out = loss_out;
  ls.trained = S, ls.frozen = rows.frozen, ls.batch = rows.batch;
  ls.distill = rows.distill, ls.temperature = rows.temperature;
  ls.divergence = rows.divergence;  // (the sums need only T²; kept whole, as kernel 1's)
  if (!tail) return r;
  r.tail = *tail;
  const auto& a = tail->adam;
  if (!a.t) return r;
  // Every gradient inside the arena at its parameter's place; the rest of the arena in ranges.
  std::vector<fused::ArenaRange> covered;
  for (int k = 0; k < r.segments; ++k) {
    const Segment& seg = r.seg[k];
    const int l = k / 2;
    const float* param = k % 2 == 0 ? trained.weights[size_t(l)] : trained.biases[size_t(l)];
    const fused::ArenaRange where = fused::in_arena(a, seg.grad, param, seg.count);
    if (where.begin < 0)
      throw ShapeError("cluster step: the tail's Adam arena does not hold every parameter and its gradient");
    covered.push_back(where);
  }
  std::sort(covered.begin(), covered.end(), [](const auto& x, const auto& y) { return x.begin < y.begin; });
  int64_t from = 0;
  for (const fused::ArenaRange& c : covered) {
    if (c.begin < from) throw ShapeError("cluster step: two parameters overlap in the tail's Adam arena");
    if (c.begin > from) r.rest[r.rests++] = {from, c.begin};
    from = c.end;
  }
  if (from < a.n) r.rest[r.rests++] = {from, a.n};
  return r;
}

}  // namespace subliminal::cuda::cluster
