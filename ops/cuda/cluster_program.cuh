// ops/cuda/cluster_program.cuh — the training step by row blocks in thread-block clusters: the
// device code of ops/cuda/cluster_step.cu's two kernels, written without the kernels around it,
// so that host threads can run it too (tests/test_cluster_emulated.cpp).
//
// Why another step. The fused step (ops/cuda/fused_program.cuh) runs each layer as a grid-wide
// GEMM: every layer pays a grid barrier and a split-K fix-up, a chain of L2 round trips that
// costs ≥ 12 µs a phase on an H100 however little it computes (docs/PERFORMANCE.md). Here the
// batch is cut into blocks of R rows instead, and each row block belongs to one cluster of Q
// thread blocks (Q = 8 on the GPU, one per SM) for the whole forward and backward pass. Every
// layer's work for those rows stays inside the cluster: the cluster's blocks split each hidden
// layer's columns (block q owns columns [s·q/Q, s·(q+1)/Q)), exchange activations and gradients
// through L2 with a cluster barrier between (no grid barrier), and each keeps its own columns'
// values in shared memory. The clusters never wait for each other.
//
// Kernel 1, per cluster (model m, rows r0 … r0 + R − 1), per block q, for L layers (sizes
// s_0 … s_L, H_0 = x, H_l post-ReLU, Z the logits, G_l = dLoss/d(pre-activation of H_l)):
//   (distillation: first the same forward pass for the rows with m's teacher, m mod F)
//   forward, l < L−1   H_{l+1}[:, own] = relu(H_l · W_l[own, :]ᵀ + b_l[own])      [R, s_{l+1}/Q]
//                      kept in shared memory; when the next layer is hidden too (it needs
//                      whole rows), also written to L2, then a cluster barrier
//   logits             Zq = H_{L−1}[:, own] · W_{L−1}[:, own]ᵀ: block q's part of K      [R, s_L]
//   — cluster barrier —
//   rows               one warp per row: Z = Σ_q Zq (q in order) + b_{L−1}, the loss row and
//                      G_L = dLoss/dZ (ops/cuda/loss_rows.cuh, as the loss kernels)
//   — cluster barrier —
//   backward, last     dW_{L−1}[:, own] = G_Lᵀ · H_{L−1}[:, own]; db_{L−1} (block q = 0);
//                      G_{L−1}[:, own] = (G_L · W_{L−1}[:, own]) ⊙ [H_{L−1}[:, own] ≠ 0]
//   backward, l = L−2 … 0
//                      dW_l[own, :] = G_{l+1}[:, own]ᵀ · H_l, db_l[own] = Σ_r G_{l+1}[:, own];
//                      for l ≥ 1 block q's part of G_l = G_{l+1}[:, own] · W_l[own, :] to L2,
//                      a cluster barrier, then block q sums the Q parts of its own columns
//                      (q in order) and applies H_l's ReLU gate
// Each block writes its rows' share of every gradient into the gradient partials, one copy per
// row block ([P, S, …]): every element of them is written once per step.
//
// Kernel 2, over the whole grid: each gradient is the sum of its P row blocks' partials, in
// row-block order, written into the gradient buffers; with the step's tail, Adam updates each
// element right there, and the rest of Adam's arena (what no gradient covers) with the
// gradients it holds; block 0 sums each model's row losses (fused::reduce_losses) and advances
// the counters. (Adam's step count is advanced by kernel 1, where nothing reads it.)
//
// Every sum has a fixed order, so a step gives the same bits on every run. They are not the
// fused step's bits: the sums are split differently (the tests compare both with float64).
//
// The arithmetic runs from shared memory (ops/cuda/smem_products.cuh). Operands are staged there
// chunk by chunk (K chunks of `kc` floats, two buffers: the next chunk's copies are in flight
// while this one computes) by 16-byte cp.async where rows are 16-byte aligned — the .cg form,
// through L2 only, so it may read what another block of the cluster wrote before the last
// barrier — and by plain L2 loads (__ldcg) where they are not. The plan — rows per cluster, the
// K chunk, the shared memory's layout, the scratch — is host code: ops/cuda/cluster_plan.h.
#pragma once

#include <cuda_pipeline_primitives.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "engine/cuda/step_end.cuh"
#include "ops/cuda/fused_program.cuh"  // reduce_losses, LossRows, ArenaRange
#include "ops/cuda/fused_step_cuda.h"
#include "ops/cuda/loss_rows.cuh"
#include "ops/cuda/smem_products.cuh"

namespace subliminal::cuda::cluster {

constexpr int kMaxLayers = kFusedMaxLayers;
constexpr int kThreads = 256;      // a block's threads on the GPU (the emulated tests use fewer)
constexpr int kClusterBlocks = 8;  // blocks per cluster on the GPU: the portable maximum, and the
                                   // most the device code takes (sum_parts)
constexpr int kMinChunk = 32;      // the shortest K chunk the planner accepts

// Block q of Q owns columns [own_begin(n, q, Q), own_begin(n, q + 1, Q)) of a width-n layer.
__host__ __device__ inline int own_begin(int64_t n, int q, int Q) { return int(n * q / Q); }

// The length of chunk c of a K of `width` floats in chunks of kc: kc, or what is left.
__host__ __device__ inline int chunk_length(int64_t width, int kc, int c) {
  return int(smaller(kc, width - int64_t(c) * kc));
}

// One MLP's weights and biases per layer ([models, out, in] and [models, out]).
struct Net {
  const float* w[kMaxLayers];
  const float* b[kMaxLayers];
};

// Where each part of a block's shared memory starts, in floats (all multiples of 4: float4
// reads), and how much it takes in all.
struct SmemLayout {
  int buffer[2];  // the staged chunks: operand A's [R4, kc + 4], then operand B's [NH4, kc + 4]
  int b_part;     // where operand B starts within a buffer
  int kpart;      // K groups' partials: [groups, block², tiles] (Program::block; 8 × 8's padded)
  int acc;        // [R4, NH4]: this block's columns of the hidden layer being computed
  int zacc;       // [R4, O4]: its part of the logits
  int wlast;      // [O4, NH4]: W_{L−1}[:, own]
  int gl;         // [R4, O4]: G_L of the cluster's rows
  int gown;       // [R4, NH4]: G_{l+1}[:, own]
  int bias;       // [NH4]: b_l[own] of the hidden layer being computed
  int total;
};

struct Program {
  int layers;
  int64_t s[kMaxLayers + 1];       // s_0 … s_L
  int64_t trained, frozen, batch;  // S, F (0 unless distilling), B
  int64_t rows, row_blocks;        // R, P = ⌈B / R⌉
  int cluster;                     // Q
  int kc;                          // K chunk, a multiple of 8
  Net net, teacher;                // trained and (distillation) frozen weights
  const float* x;                  // [S, B, s_0]: model m reads x[m], teacher f reads x[f]
  bool distill;
  int64_t c0, c1;
  double inv_t, temperature;
  Divergence divergence;  // distill: KL or JS (ops/divergence.h)
  const int32_t* labels;  // [S, B] (cross-entropy)
  // Kernel 1's exchange buffers in L2 (slot m: trained model m; slot S + m: m's teacher copy):
  float* H[kMaxLayers];        // H[l], 1 ≤ l < L − 1: [2S, B, s_l]
  float* zpart;                // [2S, B, Q, s_L]: each block's part of the logits
  float* logits;               // [2S, B, s_L] (fused::logit_rows' layout)
  float* dz;                   // [S, B, s_L]: G_L
  float* gpart;                // [S, B, Q, max s_l]: each block's part of G_l, 1 ≤ l ≤ L − 2
  double* row_loss;            // [S, B]
  float* dw_part[kMaxLayers];  // [P, S, s_{l+1}, s_l]
  float* db_part[kMaxLayers];  // [P, S, s_{l+1}]
  int64_t* adam_t;             // advanced by the first thread (null: no Adam)
  SmemLayout smem;
  bool prefetch;  // issue each layer's first chunk, as far as it can, during the barrier before it
  int block;      // a thread's outputs in a hidden layer's forward product: block × block (4 or 8)
};

// Kernel 2's work: each gradient from its partials, Adam, the losses and the counters.
struct Segment {
  float* grad;        // [count]
  const float* part;  // [P, count]
  int64_t count;
};
struct ReduceProgram {
  int segments;
  Segment seg[2 * kMaxLayers];
  int64_t parts;                               // P
  fused::ArenaRange rest[2 * kMaxLayers + 1];  // Adam's arena outside every segment
  int rests;
  fused::LossRows loss;  // the fields reduce_losses reads
  FusedTail tail;
};

// ---- device code: kernel 1 ---------------------------------------------------------------------

// Where a block is: its cluster's model and rows, its rank q in the cluster.
struct Place {
  int q, Q;
  int64_t model, row_block, r0;
  int R, R4;
};

// The block's columns of layer l's output (a hidden layer): [begin, begin + n).
struct Own {
  int begin, n, n4;
};
__device__ inline Own own_columns(int64_t width, const Place& at) {
  const int b = own_begin(width, at.q, at.Q), e = own_begin(width, at.q + 1, at.Q);
  return {b, e - b, round4(e - b)};
}

// What forward layer l (< L − 1) stages chunk by chunk along its input columns: the cluster's
// rows of H_l (x for l = 0) and the block's own rows of W_l; with the first chunk, the block's
// entries of b_l (so that the epilogue waits for no load) and, for the last hidden layer, its
// slice of W_{L−1} that the logits' part needs.
struct ForwardOperands {
  const float* h;      // [R, in], row stride in
  const float* w;      // [own.n, in], row stride in
  const float* b;      // [own.n]
  const float* wlast;  // [s_L, own.n], row stride out; null unless l = L − 2
  int64_t in, out;
  Own own;  // the block's columns of layer l's output
};
__device__ inline ForwardOperands forward_operands(const Program& p, const Place& at, const Net& net,
                                                   int64_t mi, const float* x_rows, int64_t slot, int l) {
  const int64_t in = p.s[l], out = p.s[l + 1];
  const Own own = own_columns(out, at);
  const float* h = l == 0 ? x_rows : p.H[l] + (slot * p.batch + at.r0) * in;
  const float* wlast = l + 2 == p.layers ? net.w[l + 1] + mi * p.s[l + 2] * out + own.begin : nullptr;
  return {h, net.w[l] + (mi * out + own.begin) * in, net.b[l] + mi * out + own.begin, wlast, in, out, own};
}

// Issues chunk c of op into buf (not committed): its weights (W_l's rows, and with chunk 0 the
// bias and W_{L−1}'s slice), its activations (H_l's rows), or both. The weights are not written
// in the step, so they may be issued during the barrier that precedes the layer; H_l (l ≥ 1),
// written by the cluster's other blocks, only after it.
__device__ inline void stage_forward_chunk(const Program& p, float* sm, const Place& at,
                                           const ForwardOperands& op, int c, float* buf, bool weights,
                                           bool activations) {
  const int k0 = c * p.kc, kn = chunk_length(op.in, p.kc, c), ld = p.kc + 4;
  const SmemLayout& lay = p.smem;
  if (activations) stage(buf, ld, op.h + k0, op.in, at.R, kn, at.R4, round4(kn));
  if (!weights) return;
  stage(buf + lay.b_part, ld, op.w + k0, op.in, op.own.n, kn, op.own.n4, round4(kn));
  if (c != 0) return;
  stage(sm + lay.bias, op.own.n4, op.b, op.own.n, 1, op.own.n, 1, op.own.n4);
  if (op.wlast)
    stage(sm + lay.wlast, op.own.n4, op.wlast, op.out, int(p.s[p.layers]), op.own.n, round4(p.s[p.layers]),
          op.own.n4);
}

// acc[R4, n4] += A·Bᵀ over one staged K chunk of a hidden layer's forward product, each thread
// computing kBlock × kBlock outputs where the shape allows (kBlock = 8: R4 and n4 multiples of
// 8), else 4 × 4. The kernel is instantiated per block size (Program::block): the default's code
// is what it was without the choice.
template <int kBlock>
__device__ inline void forward_product(float* acc, int n4, const float* A, const float* B, int ld, int R4,
                                       int K4, float* kpart) {
  if constexpr (kBlock == 8) {
    if (R4 % 8 == 0 && n4 % 8 == 0) {
      dot_accumulate_blocked<8, 8>(acc, n4, A, ld, B, ld, R4, n4, K4, kpart);
      return;
    }
  }
  dot_accumulate(acc, n4, A, ld, B, ld, R4, n4, K4, kpart);
}

// The forward pass of `net`'s model `mi` for the cluster's rows, read from x_rows ([R, s_0],
// row stride s_0), into slot `slot` of the exchange buffers; leaves the block's columns of
// H_{L−1} in acc and its part of the logits in zpart. With p.prefetch, each hidden layer past
// the first has its first chunk's weights issued during the barrier ahead of it. kBlock:
// Program::block.
template <int kBlock, class ClusterSync>
__device__ void forward(const Program& p, float* sm, const Place& at, const Net& net, int64_t mi,
                        const float* x_rows, int64_t slot, ClusterSync&& cluster_sync) {
  const int L = p.layers, ld = p.kc + 4;
  const SmemLayout& lay = p.smem;
  float* acc = sm + lay.acc;
  Own own{};
  for (int l = 0; l + 1 < L; ++l) {
    const ForwardOperands op = forward_operands(p, at, net, mi, x_rows, slot, l);
    const int64_t in = op.in, out = op.out;
    own = op.own;
    // (acc's last readers finished before the __syncthreads that ended the layer or pass before)
    zero(acc, at.R4 * own.n4);
    const bool weights_issued = l >= 1 && p.prefetch;  // during the barrier that ended layer l − 1
    if (weights_issued) {
      stage_forward_chunk(p, sm, at, op, 0, sm + lay.buffer[0], false, true);
      __pipeline_commit();
    }
    const int chunks = int((in + p.kc - 1) / p.kc);
    pipelined(
        chunks, sm + lay.buffer[0], sm + lay.buffer[1],
        [&](int c, float* buf) { stage_forward_chunk(p, sm, at, op, c, buf, true, true); },
        [&](int c, float* buf) {
          const int kn = chunk_length(in, p.kc, c);
          forward_product<kBlock>(acc, own.n4, buf, buf + lay.b_part, ld, at.R4, round4(kn), sm + lay.kpart);
        },
        weights_issued);
    // + bias, ReLU (PyTorch's: z ≤ 0 → 0, NaN stays); into acc and, where the cluster's other
    // blocks read it (the next hidden layer; not H_{L−1}, whose columns each block keeps), L2
    const float* bias = sm + lay.bias;
    float* h_out = l + 2 < L ? p.H[l + 1] + (slot * p.batch + at.r0) * out + own.begin : nullptr;
    for (int e = int(threadIdx.x); e < at.R * own.n; e += int(blockDim.x)) {
      const int r = e / own.n, j = e % own.n;
      const float z = acc[r * own.n4 + j] + bias[j];
      const float h = z <= 0.0f ? 0.0f : z;
      acc[r * own.n4 + j] = h;
      if (h_out) h_out[r * out + j] = h;
    }
    __syncthreads();
    if (l + 2 < L) {              // the next hidden layer reads whole rows of H_{l+1}: a cluster barrier,
      cluster_sync([&] {          // while whose other blocks arrive its weights' first chunk is issued
        if (!p.prefetch) return;  // (buffer 0 and the bias are free since the __syncthreads above)
        stage_forward_chunk(p, sm, at, forward_operands(p, at, net, mi, x_rows, slot, l + 1), 0,
                            sm + lay.buffer[0], true, false);
        __pipeline_commit();
      });
    }
  }
  // The logits' part over this block's columns of H_{L−1}: Zq = H_{L−1}[:, own]·W_{L−1}[:, own]ᵀ.
  const int64_t O = p.s[L];
  const int O4 = round4(O);
  float* wlast = sm + lay.wlast;  // staged with the last hidden layer's first chunk
  float* zacc = sm + lay.zacc;
  zero(zacc, at.R4 * O4);
  __syncthreads();
  dot_accumulate(zacc, O4, acc, own.n4, wlast, own.n4, at.R4, O4, own.n4, sm + lay.kpart);
  __syncthreads();
  float* zq = p.zpart + (slot * p.batch + at.r0) * at.Q * O + at.q * O;
  for (int e = int(threadIdx.x); e < at.R * int(O); e += int(blockDim.x)) {
    const int r = e / int(O), o = e % int(O);
    zq[r * at.Q * O + o] = zacc[r * O4 + o];
  }
}

// Σ_q parts[q·stride] over the Q ≤ kClusterBlocks blocks' parts, in q order, from 0. Every
// load is issued before the first add, so that their L2 round trips overlap: in a loop over a
// Q known only at run time, each add would wait for its load before the next load was issued.
__device__ inline float sum_parts(const float* parts, int64_t stride, int Q) {
  float part[kClusterBlocks];
#pragma unroll
  for (int q = 0; q < kClusterBlocks; ++q) part[q] = q < Q ? __ldcg(&parts[q * stride]) : 0.0f;
  float sum = 0.0f;
#pragma unroll
  for (int q = 0; q < kClusterBlocks; ++q)
    if (q < Q) sum += part[q];
  return sum;
}

// One logits row: z[o] = Σ_q zpart[q, o] (q in order) + bias[o], by one warp.
__device__ inline void sum_logits(const float* zpart_row, int Q, int64_t O, const float* bias, float* z) {
  for (int64_t o = threadIdx.x & 31; o < O; o += 32) z[o] = sum_parts(zpart_row + o, O, Q) + bias[o];
}

// The cluster's rows, one warp each: the logits, the loss row and G_L.
__device__ void loss_rows(const Program& p, const Place& at) {
  const int warps = int(blockDim.x) / 32, lane = int(threadIdx.x) & 31;
  const int64_t S = p.trained, B = p.batch, O = p.s[p.layers], m = at.model;
  for (int r = at.q * warps + int(threadIdx.x) / 32; r < at.R; r += at.Q * warps) {
    const int64_t row = m * B + at.r0 + r;  // in [S, B]
    float* z = p.logits + row * O;
    sum_logits(p.zpart + row * at.Q * O, at.Q, O, p.net.b[p.layers - 1] + m * O, z);
    float* t = nullptr;
    if (p.distill) {
      const int64_t f = m % p.frozen;
      t = p.logits + (S * B + row) * O;
      sum_logits(p.zpart + (S * B + row) * at.Q * O, at.Q, O, p.teacher.b[p.layers - 1] + f * O, t);
    }
    __syncwarp();  // the lanes' logits are visible to the whole warp
    double loss;
    if (p.distill) {
      loss = rows::distill_row(p.divergence, z, t, O, p.c0, p.c1, p.inv_t, p.temperature / double(B),
                               p.dz + row * O, false);
    } else {
      loss = rows::cross_entropy_row(z, O, p.c0, p.c1, p.labels[row], 1.0f / float(B), p.dz + row * O, false);
    }
    if (lane == 0) p.row_loss[row] = loss;
  }
}

// gpart holds one layer's parts of G_l at a time. With more than 3 layers a block could write
// the next layer's parts over ones another block is still adding: that would need a cluster
// barrier before each later layer's writes.
static_assert(kMaxLayers <= 3, "the cluster step's backward reuses gpart across layers without a barrier");

// What backward layer l (< L − 1) stages chunk by chunk along its input columns: the cluster's
// rows of H_l (x for l = 0) and, when a gradient goes below it (l ≥ 1), the block's own rows of
// W_l. Neither is written in the step's backward pass, so a chunk may be issued before the
// barrier that precedes the layer: its load then overlaps the barrier.
struct BackwardOperands {
  const float* h;  // [R, in], row stride in
  const float* w;  // [own.n, in], row stride in; null for l = 0
  int64_t in;
  Own own;  // the block's columns of layer l's output
};
__device__ inline BackwardOperands backward_operands(const Program& p, const Place& at, int l) {
  const int64_t in = p.s[l], out = p.s[l + 1], m = at.model, B = p.batch;
  const Own own = own_columns(out, at);
  const float* h = l == 0 ? p.x + (m * B + at.r0) * in : p.H[l] + (m * B + at.r0) * in;
  const float* w = l >= 1 ? p.net.w[l] + (m * out + own.begin) * in : nullptr;
  return {h, w, in, own};
}

// Issues chunk c of `op` into buf: H_l's rows, then W_l's at buf + b_part (not committed).
__device__ inline void stage_backward_chunk(const Program& p, const Place& at, const BackwardOperands& op,
                                            int c, float* buf) {
  const int i0 = c * p.kc, n = chunk_length(op.in, p.kc, c), ld = p.kc + 4;
  stage(buf, ld, op.h + i0, op.in, at.R, n, at.R, round4(n));
  if (op.w) stage(buf + p.smem.b_part, ld, op.w + i0, op.in, op.own.n, n, op.own.n4, round4(n));
}

// With p.prefetch, issues and commits backward layer l's first chunk into buffer 0 (free: the
// last pipeline ended with a __syncthreads); backward's pipeline for l then starts from it.
__device__ inline void prefetch_backward(const Program& p, float* sm, const Place& at, int l) {
  if (!p.prefetch) return;
  stage_backward_chunk(p, at, backward_operands(p, at, l), 0, sm + p.smem.buffer[0]);
  __pipeline_commit();
}

// The backward pass of trained model at.model for the cluster's rows (acc holds the block's
// columns of H_{L−1}, wlast its columns of W_{L−1}; with p.prefetch, layer L − 2's first chunk
// is in flight): the gradient partials of row block at.row_block.
template <class ClusterSync>
__device__ void backward(const Program& p, float* sm, const Place& at, ClusterSync&& cluster_sync) {
  const int L = p.layers, ld = p.kc + 4;
  const SmemLayout& lay = p.smem;
  const int64_t S = p.trained, B = p.batch, m = at.model, P_index = at.row_block * S + m;
  const int64_t O = p.s[L], last_in = p.s[L - 1];
  const int O4 = round4(O);
  float *acc = sm + lay.acc, *wlast = sm + lay.wlast, *gl = sm + lay.gl, *gown = sm + lay.gown;

  // G_L by plain loads: a wait for a cp.async group would wait for the prefetched chunk too
  stage(gl, O4, p.dz + (m * B + at.r0) * O, O, at.R, int(O), at.R4, O4, false);
  __syncthreads();
  // dW_{L−1}[:, own] = G_Lᵀ·H_{L−1}[:, own] (k = r), and db_{L−1} from block 0.
  Own own = own_columns(last_in, at);
  {
    float* dw = p.dw_part[L - 1] + P_index * O * last_in + own.begin;
    outer_product(gl, O4, 1, acc, own.n4, O4, own.n4, at.R, [&](int o0, int k0, const float(&c)[4][4]) {
      for (int i = 0; i < 4 && o0 + i < O; ++i)
        store_row(dw + (o0 + i) * last_in + k0, c[i], smaller(4, own.n - k0));
    });
    if (at.q == 0)
      for (int o = int(threadIdx.x); o < O; o += int(blockDim.x)) {
        float sum = 0.0f;
        for (int r = 0; r < at.R; ++r) sum += gl[r * O4 + o];
        p.db_part[L - 1][P_index * O + o] = sum;
      }
  }
  // G_{L−1}[:, own] = (G_L·W_{L−1}[:, own]) ⊙ [H_{L−1} ≠ 0] (k = o), into gown (its padding
  // enters only outputs that are never stored).
  outer_product(gl, 1, O4, wlast, own.n4, at.R4, own.n4, int(O), [&](int r0, int k0, const float(&c)[4][4]) {
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 4; ++j)
        if (r0 + i < at.R && k0 + j < own.n) {
          const int e = (r0 + i) * own.n4 + k0 + j;
          gown[e] = acc[e] == 0.0f ? 0.0f : c[i][j];
        }
  });
  __syncthreads();

  for (int l = L - 2; l >= 0; --l) {
    const int64_t in = p.s[l], out = p.s[l + 1];
    own = own_columns(out, at);  // gown holds G_{l+1}[:, own]
    // db_l[own] = Σ_r G_{l+1}[r, own], r in order
    for (int j = int(threadIdx.x); j < own.n; j += int(blockDim.x)) {
      float sum = 0.0f;
      for (int r = 0; r < at.R; ++r) sum += gown[r * own.n4 + j];
      p.db_part[l][P_index * out + own.begin + j] = sum;
    }
    // dW_l[own, :] = G_{l+1}[:, own]ᵀ·H_l (k = r) and, for l ≥ 1, this block's part of
    // G_l = G_{l+1}[:, own]·W_l[own, :] (k = j), to L2: both walk the same chunks of layer l's
    // input columns, H_l's rows and W_l's staged side by side, so their loads overlap.
    const bool gradient_below = l >= 1;
    const BackwardOperands op = backward_operands(p, at, l);
    float* dw = p.dw_part[l] + (P_index * out + own.begin) * in;
    float* gq = p.gpart + (m * B + at.r0) * at.Q * in + at.q * in;
    const int chunks = int((in + p.kc - 1) / p.kc);
    pipelined(
        chunks, sm + lay.buffer[0], sm + lay.buffer[1],
        [&](int c, float* buf) { stage_backward_chunk(p, at, op, c, buf); },
        [&](int c, float* buf) {
          const int i0 = c * p.kc, n = chunk_length(in, p.kc, c);
          outer_product(gown, own.n4, 1, buf, ld, own.n4, round4(n), at.R,
                        [&](int j0, int k0, const float(&v)[4][4]) {
                          for (int i = 0; i < 4 && j0 + i < own.n; ++i)
                            store_row(dw + (j0 + i) * in + i0 + k0, v[i], smaller(4, n - k0));
                        });
          if (!gradient_below) return;
          outer_product(gown, 1, own.n4, buf + lay.b_part, ld, at.R4, round4(n), own.n,
                        [&](int r0, int k0, const float(&v)[4][4]) {
                          for (int i = 0; i < 4 && r0 + i < at.R; ++i)
                            store_row(gq + (r0 + i) * at.Q * in + i0 + k0, v[i], smaller(4, n - k0));
                        });
        },
        p.prefetch);
    if (!gradient_below) break;
    // Each block sums the Q parts of its own columns of G_l, once every block's part is in L2.
    cluster_sync([&] { prefetch_backward(p, sm, at, l - 1); });
    const Own below = own_columns(in, at);
    const float* parts = p.gpart + (m * B + at.r0) * at.Q * in + below.begin;
    const float* gate = p.H[l] + (m * B + at.r0) * in + below.begin;  // this block wrote it
    for (int e = int(threadIdx.x); e < at.R4 * below.n4; e += int(blockDim.x)) {
      const int r = e / below.n4, i = e % below.n4;
      float g = 0.0f;
      if (r < at.R && i < below.n) {
        const bool open = !(__ldcg(&gate[r * in + i]) == 0.0f);  // issued with the parts' loads
        g = sum_parts(parts + r * at.Q * in + i, in, at.Q);
        if (!open) g = 0.0f;
      }
      gown[e] = g;
    }
    __syncthreads();
  }
}

// Kernel 1's body, run by every thread of every block; the clusters are consecutive blocks
// (block q of cluster c is block c·Q + q), cluster c taking model c / P's row block c mod P
// (grid: S·P·Q blocks). cluster_sync(between) is the cluster's barrier in two
// halves: this thread arrives (its writes released to the cluster), runs between() — a prefetch,
// so that its loads are in flight while the other blocks arrive, rather than held up by the
// fence that comes with arriving — then waits for every thread of the cluster (their writes
// acquired). between() may read only what no thread writes from the last completed barrier to
// the end of the step (the weights and x, which kernel 1 never writes; rows of H, written before
// an earlier barrier and never again), and must not wait for other threads. kBlock must be
// p.block (the launcher instantiates the kernel for it).
template <int kBlock, class ClusterSync>
__device__ void run_rows(const Program& p, float* sm, ClusterSync&& cluster_sync) {
  Place at;
  at.Q = p.cluster, at.q = int(blockIdx.x) % p.cluster;
  const int64_t c = int64_t(blockIdx.x) / p.cluster;
  at.model = c / p.row_blocks, at.row_block = c % p.row_blocks, at.r0 = at.row_block * p.rows;
  at.R = int(smaller(p.rows, p.batch - at.r0)), at.R4 = round4(at.R);
  if (blockIdx.x == 0 && threadIdx.x == 0 && p.adam_t) *p.adam_t += 1;  // read by kernel 2
  const int64_t S = p.trained, B = p.batch, m = at.model;
  if (p.distill) {
    const int64_t f = m % p.frozen;
    forward<kBlock>(p, sm, at, p.teacher, f, p.x + (f * B + at.r0) * p.s[0], S + m, cluster_sync);
    __syncthreads();
  }
  forward<kBlock>(p, sm, at, p.net, m, p.x + (m * B + at.r0) * p.s[0], m, cluster_sync);
  // Every block's part of the logits in L2; layer L − 2's first backward chunk in flight
  // through the loss rows.
  cluster_sync([&] { prefetch_backward(p, sm, at, p.layers - 2); });
  loss_rows(p, at);
  cluster_sync([] {});  // G_L of every row is in L2
  backward(p, sm, at, cluster_sync);
}

// ---- device code: kernel 2 ---------------------------------------------------------------------

__device__ inline void run_reduce(const ReduceProgram& p) {
  const int64_t width = int64_t(gridDim.x) * blockDim.x,
                first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const auto& a = p.tail.adam;
  const bool adam = a.t != nullptr;
  const AdamStepScalars scalars = adam ? adam_step_scalars(a.options, __ldcg(a.t)) : AdamStepScalars{};
  constexpr int kBatch = 16;  // partials in flight at once (the default run has 8 or 16)
  int64_t total = 0, rest = 0;
  for (int s = 0; s < p.segments; ++s) total += p.seg[s].count;
  if (adam)
    for (int r = 0; r < p.rests; ++r) rest += p.rest[r].end - p.rest[r].begin;
  // One element per thread where the grid allows — the segments end to end, then the rest of
  // Adam's arena — so that a thread's loads are one batch of round trips, not one per segment.
  for (int64_t f = first; f < total + rest; f += width) {
    if (f >= total) {  // Adam's arena outside every gradient (padding): the gradient it holds
      int r = 0;
      int64_t e = f - total;
      while (e >= p.rest[r].end - p.rest[r].begin) {
        e -= p.rest[r].end - p.rest[r].begin;
        ++r;
      }
      const int64_t i = p.rest[r].begin + e;
      float w = a.p[i], m = a.m[i], v = a.v[i];
      adam_element(w, a.g[i], m, v, scalars);
      a.p[i] = w, a.m[i] = m, a.v[i] = v;
      continue;
    }
    int s = 0;
    int64_t e = f;
    while (e >= p.seg[s].count) e -= p.seg[s++].count;
    const Segment& seg = p.seg[s];
    // Adam's operands first: their loads fly with the partials'
    const int64_t i = adam ? seg.grad + e - a.g : 0;
    float w = 0.0f, m = 0.0f, v = 0.0f;
    if (adam) w = a.p[i], m = a.m[i], v = a.v[i];
    float g = 0.0f;
    for (int64_t k0 = 0; k0 < p.parts; k0 += kBatch) {
      float part[kBatch];
#pragma unroll
      for (int k = 0; k < kBatch; ++k)
        part[k] = k0 + k < p.parts ? __ldcg(&seg.part[(k0 + k) * seg.count + e]) : 0.0f;
#pragma unroll
      for (int k = 0; k < kBatch; ++k)
        if (k0 + k < p.parts) g += part[k];
    }
    seg.grad[e] = g;
    if (!adam) continue;
    adam_element(w, g, m, v, scalars);
    a.p[i] = w, a.m[i] = m, a.v[i] = v;
  }
  if (blockIdx.x != 0) return;
  fused::reduce_losses(p.loss, p.tail);
  __syncthreads();  // the loss watch has read the step counter
  if (threadIdx.x == 0)
    for (int64_t* counter : p.tail.counters)
      if (counter) *counter += 1;
}

}  // namespace subliminal::cuda::cluster
