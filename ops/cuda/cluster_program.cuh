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
//                      written to L2, then a cluster barrier when the next layer needs whole rows
//   logits             Zq = H_{L−1}[:, own] · W_{L−1}[:, own]ᵀ: block q's part of K      [R, s_L]
//   — cluster barrier —
//   rows               one warp per row: Z = Σ_q Zq (q in order) + b_{L−1}, the loss row and
//                      G_L = dLoss/dZ (ops/cuda/loss_rows.cuh, as the loss kernels)
//   — cluster barrier —
//   backward, last     dW_{L−1}[:, own] = G_Lᵀ · H_{L−1}[:, own]; db_{L−1} (block 0);
//                      G_{L−1}[:, own] = (G_L · W_{L−1}[:, own]) ⊙ [H_{L−1}[:, own] ≠ 0]
//   backward, l ≥ 0    dW_l[own, :] = G_{l+1}[:, own]ᵀ · H_l, db_l[own] = Σ_r G_{l+1}[:, own];
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
// The arithmetic runs from shared memory. Operands are staged there chunk by chunk (K chunks of
// `kc` floats, two buffers: the next chunk's copies are in flight while this one computes) by
// 16-byte cp.async where rows are 16-byte aligned — the .cg form, through L2 only, so it may
// read what another block of the cluster wrote before the last barrier — and by plain L2 loads
// (__ldcg) where they are not. Each thread computes 4 × 4 outputs; when a product has fewer
// such blocks than threads, groups of threads split its K and their partial blocks are added
// in group order.
#pragma once

#include <cuda_pipeline_primitives.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/cuda/step_end.cuh"
#include "engine/error.h"
#include "ops/cuda/fused_program.cuh"  // reduce_losses, ArenaRange
#include "ops/cuda/fused_step_cuda.h"
#include "ops/cuda/loss_rows.cuh"

namespace subliminal::cuda::cluster {

constexpr int kMaxLayers = kFusedMaxLayers;
constexpr int kThreads = 256;      // a block's threads on the GPU (the emulated tests use fewer)
constexpr int kClusterBlocks = 8;  // blocks per cluster on the GPU: the portable maximum
constexpr int kMinChunk = 32;      // the shortest K chunk the planner accepts

__host__ __device__ inline int round4(int64_t n) { return int((n + 3) / 4 * 4); }
// min and max for host and device code alike (std's are host-only in device code).
__host__ __device__ inline int64_t smaller(int64_t a, int64_t b) { return a < b ? a : b; }
__host__ __device__ inline int64_t larger(int64_t a, int64_t b) { return a < b ? b : a; }
// Block q of Q owns columns [own_begin(n, q, Q), own_begin(n, q + 1, Q)) of a width-n layer.
__host__ __device__ inline int own_begin(int64_t n, int q, int Q) { return int(n * q / Q); }

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
  int kpart;      // K groups' partial 4 × 4 blocks: [threads · 16]
  int acc;        // [R4, NH4]: this block's columns of the hidden layer being computed
  int zacc;       // [R4, O4]: its part of the logits
  int wlast;      // [O4, NH4]: W_{L−1}[:, own]
  int gl;         // [R4, O4]: G_L of the cluster's rows
  int gown;       // [R4, NH4]: G_{l+1}[:, own]
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
  const int32_t* labels;  // [S, B] (cross-entropy)
  // Kernel 1's exchange buffers in L2 (slot m: trained model m; slot S + m: m's teacher copy):
  float* H[kMaxLayers];        // H[l], 1 ≤ l < L: [2S, B, s_l]
  float* zpart;                // [2S, B, Q, s_L]: each block's part of the logits
  float* logits;               // [2S, B, s_L] (fused::logit_rows' layout)
  float* dz;                   // [S, B, s_L]: G_L
  float* gpart;                // [S, B, Q, max s_l]: each block's part of G_l, 1 ≤ l ≤ L − 2
  double* row_loss;            // [S, B]
  float* dw_part[kMaxLayers];  // [P, S, s_{l+1}, s_l]
  float* db_part[kMaxLayers];  // [P, S, s_{l+1}]
  int64_t* adam_t;             // advanced by the first thread (null: no Adam)
  SmemLayout smem;
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

// ---- device code: staging and the two products --------------------------------------------

// dst[r, c] = src[r, c] for r < rows, c < cols, and 0 for the rest of [rows_pad, cols_pad)
// (dst's row stride ldd ≥ cols_pad). 16-byte cp.async for whole aligned groups of 4, committed
// by the caller; plain L2 loads for the rest (odd widths).
__device__ inline void stage(float* dst, int ldd, const float* src, int64_t lds, int rows, int cols,
                             int rows_pad, int cols_pad) {
  const bool vector = reinterpret_cast<uintptr_t>(src) % 16 == 0 && lds % 4 == 0 && ldd % 4 == 0;
  const int quads = vector ? cols / 4 : 0;  // columns [0, 4·quads) go by cp.async
  for (int e = int(threadIdx.x); e < rows * quads; e += int(blockDim.x)) {
    const int r = e / quads, c = 4 * (e % quads);
    __pipeline_memcpy_async(dst + r * ldd + c, src + r * lds + c, 16);
  }
  const int tail = cols_pad - 4 * quads;  // the other columns, loaded or zeroed
  for (int e = int(threadIdx.x); e < rows_pad * tail; e += int(blockDim.x)) {
    const int r = e / tail, c = 4 * quads + e % tail;
    dst[r * ldd + c] = r < rows && c < cols ? __ldcg(src + r * lds + c) : 0.0f;
  }
  for (int e = int(threadIdx.x); e < (rows_pad - rows) * 4 * quads; e += int(blockDim.x))
    dst[(rows + e / (4 * quads)) * ldd + e % (4 * quads)] = 0.0f;
}

// Runs body(c, buffer) for chunks c = 0 … chunks − 1, chunk c + 1's copies in flight while
// body(c) runs; issue(c, buffer) stages chunk c. The two buffers alternate.
template <class Issue, class Body>
__device__ inline void pipelined(int chunks, float* buffer0, float* buffer1, Issue&& issue, Body&& body) {
  if (chunks <= 0) return;
  issue(0, buffer0);
  __pipeline_commit();
  for (int c = 0; c < chunks; ++c) {
    float* now = c % 2 ? buffer1 : buffer0;
    if (c + 1 < chunks) {
      issue(c + 1, c % 2 ? buffer0 : buffer1);
      __pipeline_commit();
      __pipeline_wait_prior(1);  // this thread's copies of chunk c have landed
    } else {
      __pipeline_wait_prior(0);
    }
    __syncthreads();  // … and every thread's
    body(c, now);
    __syncthreads();  // every thread is done with `now` before chunk c + 2 is staged into it
  }
}

// acc[m, n] += Σ_k A[m, k]·B[n, k] for m < M4, n < N4, k < K4 (multiples of 4; A and B padded
// with zeros to them, rows 16-byte aligned). Each thread computes 4 rows × 4 columns from float4
// reads along k: rows m0 … m0 + 3 and the columns c, c + N4/4, c + 2·N4/4, c + 3·N4/4 — strided,
// so that the 8 threads of a quarter warp read 8 consecutive rows of B, in 8 different bank
// groups when ldb/4 is odd (the staging buffers' stride: SmemLayout), where 4 adjacent columns
// each would put them in 2. With fewer such blocks than threads, `groups` threads share a
// block's K range, their partial blocks go to kpart and are added in group order — so the sum
// has the same order on every run.
__device__ inline void dot_accumulate(float* acc, int ldc, const float* A, int lda, const float* B, int ldb,
                                      int M4, int N4, int K4, float* kpart) {
  const int tiles_n = N4 / 4, tiles = M4 / 4 * tiles_n;
  if (tiles == 0 || K4 == 0) return;
  const int groups = int(larger(1, smaller(int(blockDim.x) / tiles, K4 / 4)));
  const int k_per_group = (K4 / 4 + groups - 1) / groups * 4;
  for (int t = int(threadIdx.x); t < tiles * groups; t += int(blockDim.x)) {
    const int tile = t % tiles, group = t / tiles;
    const int m0 = tile / tiles_n * 4, c0 = tile % tiles_n;  // columns c0 + j·tiles_n
    float c[4][4] = {};
    const int k_end = int(smaller(K4, (group + 1) * k_per_group));
    for (int k = group * k_per_group; k < k_end; k += 4) {
      float4 a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = *reinterpret_cast<const float4*>(A + (m0 + i) * lda + k);
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = *reinterpret_cast<const float4*>(B + (c0 + j * tiles_n) * ldb + k);
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          c[i][j] = fmaf(a[i].x, b[j].x, c[i][j]);
          c[i][j] = fmaf(a[i].y, b[j].y, c[i][j]);
          c[i][j] = fmaf(a[i].z, b[j].z, c[i][j]);
          c[i][j] = fmaf(a[i].w, b[j].w, c[i][j]);
        }
    }
    if (groups == 1) {
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[(m0 + i) * ldc + c0 + j * tiles_n] += c[i][j];
    } else {
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) kpart[(group * tiles + tile) * 16 + 4 * i + j] = c[i][j];
    }
  }
  if (groups == 1) return;
  __syncthreads();  // every group's partial block is in kpart
  for (int e = int(threadIdx.x); e < tiles * 16; e += int(blockDim.x)) {
    const int tile = e / 16, i = e % 16 / 4, j = e % 4;
    float sum = 0.0f;
    for (int group = 0; group < groups; ++group) sum += kpart[(group * tiles + tile) * 16 + 4 * i + j];
    acc[(tile / tiles_n * 4 + i) * ldc + tile % tiles_n + j * tiles_n] += sum;
  }
}

// store(m0, n0, c) for each 4 × 4 block of C[m, n] = Σ_{k < K} A(k, m)·B[k, n], m < M4, n < N4:
// A(k, m) = A[k·a_k + m·a_m] (any strides, rows past M padded; with a_m = 1, a_k a multiple of 4
// and A 16-byte aligned: float4 reads), B [K, ldb] row-major (float4 reads along n, padded to
// N4). k in order, fmaf from 0.
template <class Store>
__device__ inline void outer_product(const float* A, int a_k, int a_m, const float* B, int ldb, int M4,
                                     int N4, int K, Store&& store) {
  const int tiles_n = N4 / 4, tiles = M4 / 4 * tiles_n;
  for (int t = int(threadIdx.x); t < tiles; t += int(blockDim.x)) {
    const int m0 = t / tiles_n * 4, n0 = t % tiles_n * 4;
    float c[4][4] = {};
    for (int k = 0; k < K; ++k) {
      float a[4];
      if (a_m == 1) {  // one float4 read (a_k and m0 are multiples of 4 where A is contiguous)
        const float4 v = *reinterpret_cast<const float4*>(A + k * a_k + m0);
        a[0] = v.x, a[1] = v.y, a[2] = v.z, a[3] = v.w;
      } else {
#pragma unroll
        for (int i = 0; i < 4; ++i) a[i] = A[k * a_k + (m0 + i) * a_m];
      }
      const float4 b = *reinterpret_cast<const float4*>(B + k * ldb + n0);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        c[i][0] = fmaf(a[i], b.x, c[i][0]);
        c[i][1] = fmaf(a[i], b.y, c[i][1]);
        c[i][2] = fmaf(a[i], b.z, c[i][2]);
        c[i][3] = fmaf(a[i], b.w, c[i][3]);
      }
    }
    store(m0, n0, c);
  }
}

__device__ inline void zero(float* p, int n) {
  for (int i = int(threadIdx.x); i < n; i += int(blockDim.x)) p[i] = 0.0f;
}

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

// The forward pass of `net`'s model `mi` for the cluster's rows, read from x_rows ([R, s_0],
// row stride s_0), into slot `slot` of the exchange buffers; leaves the block's columns of
// H_{L−1} in acc and its part of the logits in zpart.
template <class ClusterSync>
__device__ void forward(const Program& p, float* sm, const Place& at, const Net& net, int64_t mi,
                        const float* x_rows, int64_t slot, ClusterSync&& cluster_sync) {
  const int L = p.layers, ld = p.kc + 4;
  const SmemLayout& lay = p.smem;
  float* acc = sm + lay.acc;
  Own own{};
  for (int l = 0; l + 1 < L; ++l) {
    const int64_t in = p.s[l], out = p.s[l + 1];
    own = own_columns(out, at);
    const float* a_src = l == 0 ? x_rows : p.H[l] + (slot * p.batch + at.r0) * in;
    const float* w_src = net.w[l] + (mi * out + own.begin) * in;
    // (acc's last readers finished before the __syncthreads that ended the layer or pass before)
    zero(acc, at.R4 * own.n4);
    const int chunks = int((in + p.kc - 1) / p.kc);
    pipelined(
        chunks, sm + lay.buffer[0], sm + lay.buffer[1],
        [&](int c, float* buf) {
          const int k0 = c * p.kc, kn = int(smaller(p.kc, in - k0));
          stage(buf, ld, a_src + k0, in, at.R, kn, at.R4, round4(kn));
          stage(buf + lay.b_part, ld, w_src + k0, in, own.n, kn, own.n4, round4(kn));
        },
        [&](int c, float* buf) {
          const int kn = int(smaller(p.kc, in - int64_t(c) * p.kc));
          dot_accumulate(acc, own.n4, buf, ld, buf + lay.b_part, ld, at.R4, own.n4, round4(kn),
                         sm + lay.kpart);
        });
    // + bias, ReLU (PyTorch's: z ≤ 0 → 0, NaN stays); into acc and, for the cluster, L2
    const float* bias = net.b[l] + mi * out + own.begin;
    float* h_out = p.H[l + 1] + (slot * p.batch + at.r0) * out + own.begin;
    for (int e = int(threadIdx.x); e < at.R * own.n; e += int(blockDim.x)) {
      const int r = e / own.n, j = e % own.n;
      const float z = acc[r * own.n4 + j] + bias[j];
      const float h = z <= 0.0f ? 0.0f : z;
      acc[r * own.n4 + j] = h;
      h_out[r * out + j] = h;
    }
    __syncthreads();
    if (l + 2 < L) cluster_sync();  // the next hidden layer reads whole rows of H_{l+1}
  }
  // The logits' part over this block's columns of H_{L−1}: Zq = H_{L−1}[:, own]·W_{L−1}[:, own]ᵀ.
  const int64_t in = p.s[L - 1], O = p.s[L];
  const int O4 = round4(O);
  float* wlast = sm + lay.wlast;
  stage(wlast, own.n4, net.w[L - 1] + mi * O * in + own.begin, in, int(O), own.n, O4, own.n4);
  __pipeline_commit();
  __pipeline_wait_prior(0);
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

// One logits row: z[o] = Σ_q zpart[q, o] (q in order) + bias[o], by one warp.
__device__ inline void sum_logits(const float* zpart_row, int Q, int64_t O, const float* bias, float* z) {
  for (int64_t o = threadIdx.x & 31; o < O; o += 32) {
    float sum = 0.0f;
    for (int q = 0; q < Q; ++q) sum += __ldcg(&zpart_row[q * O + o]);
    z[o] = sum + bias[o];
  }
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
      loss = rows::distill_kl_row(z, t, O, p.c0, p.c1, p.inv_t, p.temperature / double(B), p.dz + row * O,
                                  false);
    } else {
      loss = rows::cross_entropy_row(z, O, p.c0, p.c1, p.labels[row], 1.0f / float(B), p.dz + row * O, false);
    }
    if (lane == 0) p.row_loss[row] = loss;
  }
}

// The backward pass of trained model at.model for the cluster's rows (acc holds the block's
// columns of H_{L−1}, wlast its columns of W_{L−1}): the gradient partials of row block
// at.row_block.
template <class ClusterSync>
__device__ void backward(const Program& p, float* sm, const Place& at, ClusterSync&& cluster_sync) {
  const int L = p.layers, ld = p.kc + 4;
  const SmemLayout& lay = p.smem;
  const int64_t S = p.trained, B = p.batch, m = at.model, P_index = at.row_block * S + m;
  const int64_t O = p.s[L], last_in = p.s[L - 1];
  const int O4 = round4(O);
  float *acc = sm + lay.acc, *wlast = sm + lay.wlast, *gl = sm + lay.gl, *gown = sm + lay.gown;

  stage(gl, O4, p.dz + (m * B + at.r0) * O, O, at.R, int(O), at.R4, O4);
  __pipeline_commit();
  __pipeline_wait_prior(0);
  __syncthreads();
  // dW_{L−1}[:, own] = G_Lᵀ·H_{L−1}[:, own] (k = r), and db_{L−1} from block 0.
  Own own = own_columns(last_in, at);
  {
    float* dw = p.dw_part[L - 1] + P_index * O * last_in + own.begin;
    outer_product(gl, O4, 1, acc, own.n4, O4, own.n4, at.R, [&](int o0, int k0, const float(&c)[4][4]) {
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j)
          if (o0 + i < O && k0 + j < own.n) dw[(o0 + i) * last_in + k0 + j] = c[i][j];
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
    // dW_l[own, :] = G_{l+1}[:, own]ᵀ·H_l (k = r), H_l staged chunk by chunk of its columns
    const float* h_src = l == 0 ? p.x + (m * B + at.r0) * in : p.H[l] + (m * B + at.r0) * in;
    float* dw = p.dw_part[l] + (P_index * out + own.begin) * in;
    const int chunks = int((in + p.kc - 1) / p.kc);
    pipelined(
        chunks, sm + lay.buffer[0], sm + lay.buffer[1],
        [&](int c, float* buf) {
          const int i0 = c * p.kc, n = int(smaller(p.kc, in - i0));
          stage(buf, ld, h_src + i0, in, at.R, n, at.R, round4(n));
        },
        [&](int c, float* buf) {
          const int i0 = c * p.kc, n = int(smaller(p.kc, in - i0));
          outer_product(gown, own.n4, 1, buf, ld, own.n4, round4(n), at.R,
                        [&](int j0, int k0, const float(&v)[4][4]) {
                          for (int i = 0; i < 4; ++i)
                            for (int j = 0; j < 4; ++j)
                              if (j0 + i < own.n && k0 + j < n) dw[(j0 + i) * in + i0 + k0 + j] = v[i][j];
                        });
        });
    if (l == 0) break;
    // This block's part of G_l = G_{l+1}[:, own]·W_l[own, :] (k = j), W_l's rows staged in chunks
    // of their columns, to L2; then each block sums the Q parts of its own columns of G_l.
    const float* w_src = p.net.w[l] + (m * out + own.begin) * in;
    float* gq = p.gpart + (m * B + at.r0) * at.Q * in + at.q * in;
    pipelined(
        chunks, sm + lay.buffer[0], sm + lay.buffer[1],
        [&](int c, float* buf) {
          const int i0 = c * p.kc, n = int(smaller(p.kc, in - i0));
          stage(buf + lay.b_part, ld, w_src + i0, in, own.n, n, own.n4, round4(n));
        },
        [&](int c, float* buf) {
          const int i0 = c * p.kc, n = int(smaller(p.kc, in - i0));
          outer_product(gown, 1, own.n4, buf + lay.b_part, ld, at.R4, round4(n), own.n,
                        [&](int r0, int k0, const float(&v)[4][4]) {
                          for (int i = 0; i < 4; ++i)
                            for (int j = 0; j < 4; ++j)
                              if (r0 + i < at.R && k0 + j < n)
                                gq[(r0 + i) * at.Q * in + i0 + k0 + j] = v[i][j];
                        });
        });
    cluster_sync();  // every block's part of G_l is in L2
    const Own below = own_columns(in, at);
    const float* parts = p.gpart + (m * B + at.r0) * at.Q * in + below.begin;
    const float* gate = p.H[l] + (m * B + at.r0) * in + below.begin;  // this block wrote it
    for (int e = int(threadIdx.x); e < at.R4 * below.n4; e += int(blockDim.x)) {
      const int r = e / below.n4, i = e % below.n4;
      float g = 0.0f;
      if (r < at.R && i < below.n) {
        for (int q = 0; q < at.Q; ++q) g += __ldcg(&parts[(r * at.Q + q) * in + i]);
        if (__ldcg(&gate[r * in + i]) == 0.0f) g = 0.0f;
      }
      gown[e] = g;
    }
    __syncthreads();
  }
}

// Kernel 1's body, run by every thread of every block; the clusters are consecutive blocks
// (block q of cluster c is block c·Q + q). cluster_sync() waits for the cluster's threads and
// makes their writes visible to each other.
template <class ClusterSync>
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
    forward(p, sm, at, p.teacher, f, p.x + (f * B + at.r0) * p.s[0], S + m, cluster_sync);
    __syncthreads();
  }
  forward(p, sm, at, p.net, m, p.x + (m * B + at.r0) * p.s[0], m, cluster_sync);
  cluster_sync();  // every block's part of the logits is in L2
  loss_rows(p, at);
  cluster_sync();  // G_L of every row is in L2
  backward(p, sm, at, cluster_sync);
}

// ---- device code: kernel 2 ---------------------------------------------------------------------

__device__ inline void run_reduce(const ReduceProgram& p) {
  const int64_t width = int64_t(gridDim.x) * blockDim.x,
                first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const auto& a = p.tail.adam;
  const bool adam = a.t != nullptr;
  const AdamStepScalars scalars = adam ? adam_step_scalars(a.options, __ldcg(a.t)) : AdamStepScalars{};
  constexpr int kBatch = 8;  // partials in flight at once
  int64_t total = 0;
  for (int s = 0; s < p.segments; ++s) total += p.seg[s].count;
  // One element per thread where the grid allows (the segments end to end), so that a thread's
  // loads are one batch of round trips rather than one per segment.
  for (int64_t f = first; f < total; f += width) {
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
  if (adam)
    for (int r = 0; r < p.rests; ++r)
      for (int64_t i = p.rest[r].begin + first; i < p.rest[r].end; i += width) {
        float w = a.p[i], m = a.m[i], v = a.v[i];
        adam_element(w, a.g[i], m, v, scalars);
        a.p[i] = w, a.m[i] = m, a.v[i] = v;
      }
  if (blockIdx.x != 0) return;
  fused::reduce_losses(p.loss, p.tail);
  __syncthreads();  // the loss watch has read the step counter
  if (threadIdx.x == 0)
    for (int64_t* counter : p.tail.counters)
      if (counter) *counter += 1;
}

// ---- host code: the plan ---------------------------------------------------------------------

// The widest of the block's own columns over the hidden layers, padded to 4.
inline int own_width4(const std::vector<int64_t>& s, int layers, int Q) {
  int widest = 0;
  for (int l = 1; l < layers; ++l)
    for (int q = 0; q < Q; ++q)
      widest = std::max(widest, own_begin(s[size_t(l)], q + 1, Q) - own_begin(s[size_t(l)], q, Q));
  return round4(widest);
}

inline SmemLayout smem_layout(const std::vector<int64_t>& s, int layers, int Q, int64_t rows, int kc,
                              int threads) {
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
  lay.kpart = take(threads * 16);
  lay.acc = take(R4 * NH4);
  lay.zacc = take(R4 * O4);
  lay.wlast = take(O4 * NH4);
  lay.gl = take(R4 * O4);
  lay.gown = take(R4 * NH4);
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
};

// The rows per cluster and the K chunk for a step of S models at batch B: about `clusters`
// clusters, as many rows each as the shared memory allows with a K chunk of ≥ kMinChunk floats
// (or all of K, when smaller), then the largest chunk that fits; the rows evened out over the
// row blocks. Throws ShapeError when not even one row fits.
inline void plan_rows(Program& p, const Machine& mc) {
  const std::vector<int64_t> s(p.s, p.s + p.layers + 1);
  const int64_t widest_k = *std::max_element(s.begin(), s.end() - 1);
  const auto fits = [&](int64_t rows, int kc) {
    return smem_layout(s, p.layers, mc.cluster, rows, kc, mc.threads).total <= mc.smem_floats;
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
  p.rows =
      (p.batch + p.row_blocks - 1) / p.row_blocks;  // no smaller than needed: the same blocks, evened out
  int kc = want;
  while (kc > least && !fits(p.rows, kc)) kc -= 8;
  p.kc = kc;
  p.smem = smem_layout(s, p.layers, mc.cluster, p.rows, p.kc, mc.threads);
}

// Floats each of the program's exchange buffers and gradient partials needs, in this order:
// H[1] … H[L−1], zpart, logits, dz, gpart, dw_part[0 … L−1], db_part[0 … L−1]; and the row
// losses' doubles.
inline std::vector<int64_t> scratch_floats(const Program& p, int64_t& row_loss_doubles) {
  const int L = p.layers;
  const int64_t S = p.trained, B = p.batch, Q = p.cluster, O = p.s[L];
  std::vector<int64_t> n;
  for (int l = 1; l < L; ++l) n.push_back(2 * S * B * p.s[l]);
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
  for (int l = 1; l < L; ++l) p.H[l] = at[k++];
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
  p.labels = loss.labels;
  p.adam_t = tail ? tail->adam.t : nullptr;
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
    const int64_t at = seg.grad - a.g;
    if (seg.grad < a.g || at + seg.count > a.n || param != a.p + at)
      throw ShapeError("cluster step: the tail's Adam arena does not hold every parameter and its gradient");
    covered.push_back({at, at + seg.count});
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
