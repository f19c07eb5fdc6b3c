// ops/cuda/smem_products.cuh — one thread block's matrix products from shared memory, for the
// cluster step (ops/cuda/cluster_program.cuh): staging operands there chunk by chunk, and the
// two shapes of product its layers need, each thread computing a 4 × 4 block of outputs (or,
// forward, 8 × 8: ClusterStepTuning::register_block).
//
//   dot_accumulate   acc[m, n] += Σ_k A[m, k]·B[n, k]   both operands K-contiguous: a forward
//                                                        layer, H·Wᵀ (dot_accumulate_blocked:
//                                                        the same with larger blocks, timed
//                                                        by bench/cluster.cu)
//   outer_product    C[m, n] = Σ_k A(k, m)·B[k, n]      K down the rows: a weight gradient
//                                                        Gᵀ·H (K = the batch's rows) or the
//                                                        gradient below a layer, G·W
//
// Every sum runs in a fixed order (k in order, fmaf from 0; a split K's groups added in group
// order), so the same inputs give the same bits on every run. Written without a kernel around
// it, like its caller, so that host threads can run it too (tests/simt).
#pragma once

#include <cuda_pipeline_primitives.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace subliminal::cuda::cluster {

__host__ __device__ inline int round4(int64_t n) { return int((n + 3) / 4 * 4); }
// min and max for host and device code alike (std's are host-only in device code).
__host__ __device__ inline int64_t smaller(int64_t a, int64_t b) { return a < b ? a : b; }
__host__ __device__ inline int64_t larger(int64_t a, int64_t b) { return a < b ? b : a; }

// dst[r, c] = src[r, c] for r < rows, c < cols, and 0 for the rest of [rows_pad, cols_pad)
// (dst's row stride ldd ≥ cols_pad). 16-byte cp.async for whole aligned groups of 4, committed
// by the caller; plain L2 loads for the rest (odd widths) — and for all of it without `async`,
// so that the copy is done at the block's next __syncthreads and waits for no cp.async group
// (another may be in flight).
__device__ inline void stage(float* dst, int ldd, const float* src, int64_t lds, int rows, int cols,
                             int rows_pad, int cols_pad, bool async = true) {
  const bool vector = async && reinterpret_cast<uintptr_t>(src) % 16 == 0 && lds % 4 == 0 && ldd % 4 == 0;
  const int quads = vector ? cols / 4 : 0;  // columns [0, 4·quads) go by cp.async
  if (quads > 0) {
    // Thread t copies pieces e = t, t + T, t + 2T, … (T threads) of the rows·quads, piece e
    // being row e / quads, quad e % quads. (r, c) is advanced by T's quotient and remainder
    // rather than divided out per piece: a division by a run-time count is some twenty
    // instructions, more than the copy itself.
    const int T = int(blockDim.x), step_r = T / quads, step_c = T % quads;
    int r = int(threadIdx.x) / quads, c = int(threadIdx.x) % quads;
    while (r < rows) {
      __pipeline_memcpy_async(dst + r * ldd + 4 * c, src + r * lds + 4 * c, 16);
      r += step_r;
      c += step_c;
      if (c >= quads) c -= quads, ++r;
    }
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
// body(c) runs; issue(c, buffer) stages chunk c. The two buffers alternate. With first_issued,
// the caller has already issued chunk 0 into buffer0 and committed it (earlier, so that its
// load overlaps a barrier).
template <class Issue, class Body>
__device__ inline void pipelined(int chunks, float* buffer0, float* buffer1, Issue&& issue, Body&& body,
                                 bool first_issued = false) {
  if (chunks <= 0) return;
  if (!first_issued) {
    issue(0, buffer0);
    __pipeline_commit();
  }
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

// acc[m, n] += Σ_k A[m, k]·B[n, k] for m < M4, n < N4, k < K4 (multiples of 4 — of TM and TN
// too; A and B padded with zeros to them, rows 16-byte aligned). Each thread computes a block of
// TM rows × TN columns from float4 reads along k: rows m0 … m0 + TM − 1 and the columns c0,
// c0 + N4/TN, c0 + 2·N4/TN, … — strided, so that the 8 threads of a quarter warp read
// consecutive rows of B, in different bank groups when ldb/4 is odd (the staging buffers'
// stride: SmemLayout), where adjacent columns would put them in fewer. (At 4 × 4 and the step's
// 32 columns those are 8 rows; at 8 × 8, 4 rows, each read by two threads at once.) With fewer such blocks
// than threads, `groups` threads share a block's K range, their partial blocks go to kpart
// ([groups, TM·TN, blocks], ≤ threads · TM·TN floats) and are added in group order — so the sum
// has the same order on every run.
//
// A 4 × 4 block (dot_accumulate, the step's) reads 8 float4s per 64 FMAs; 8 × 8 reads 16 per
// 256, half the shared-memory traffic per FMA, but fills a quarter as many threads, so K is
// split over 4 times as many groups and the fix-up grows. bench/cluster.cu times 4 × 4, 8 × 4
// and 8 × 8 on the default run's K chunks: the number to read before the step changes block.
//
// Blocks taller than 4 rows (the 4 × 4 code is as it was before they existed) keep their reads
// and stores apart in the banks in two more ways: their rows are strided as the columns are
// (row mt + i·M4/TM: a quarter warp's lanes, whose blocks differ in mt, read adjacent rows,
// where rows TM apart would share bank groups), and with fewer than 32 blocks, when a warp
// holds several K groups, each group's partials are padded by `tiles` floats (so that the
// groups' stores fall in different banks): kpart then needs threads · (TM·TN + 1) floats.
template <int TM, int TN>
__device__ inline void dot_accumulate_blocked(float* acc, int ldc, const float* A, int lda, const float* B,
                                              int ldb, int M4, int N4, int K4, float* kpart) {
  static_assert(TM % 4 == 0 && TN % 4 == 0, "register blocks are whole 4 × 4s");
  constexpr int kBlock = TM * TN;
  const int tiles_n = N4 / TN, tiles = M4 / TM * tiles_n;
  if (tiles == 0 || K4 == 0) return;
  const int groups = int(larger(1, smaller(int(blockDim.x) / tiles, K4 / 4)));
  const int k_per_group = (K4 / 4 + groups - 1) / groups * 4;
  constexpr bool kTall = TM > 4;
  // Row i of block `tile` is m0 + i·dm: rows m0 … m0 + 3, or strided (taller blocks).
  const int dm = kTall ? M4 / TM : 1;
  // A taller block's K group's partials are padded by `pad` floats past the group's TM·TN·tiles.
  const int pad = kTall && tiles < 32 ? tiles : 0;
  for (int t = int(threadIdx.x); t < tiles * groups; t += int(blockDim.x)) {
    const int tile = t % tiles, group = t / tiles;
    const int m0 = kTall ? tile / tiles_n : tile / tiles_n * TM,
              c0 = tile % tiles_n;  // columns c0 + j·tiles_n
    float c[TM][TN] = {};
    const int k_end = int(smaller(K4, (group + 1) * k_per_group));
    for (int k = group * k_per_group; k < k_end; k += 4) {
      float4 a[TM], b[TN];
#pragma unroll
      for (int i = 0; i < TM; ++i) a[i] = *reinterpret_cast<const float4*>(A + (m0 + i * dm) * lda + k);
#pragma unroll
      for (int j = 0; j < TN; ++j) b[j] = *reinterpret_cast<const float4*>(B + (c0 + j * tiles_n) * ldb + k);
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) {
          c[i][j] = fmaf(a[i].x, b[j].x, c[i][j]);
          c[i][j] = fmaf(a[i].y, b[j].y, c[i][j]);
          c[i][j] = fmaf(a[i].z, b[j].z, c[i][j]);
          c[i][j] = fmaf(a[i].w, b[j].w, c[i][j]);
        }
    }
    if (groups == 1) {
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[(m0 + i * dm) * ldc + c0 + j * tiles_n] += c[i][j];
    } else {
      // kpart[group][TN·i + j][tile]: a warp's lanes hold consecutive tiles, so each store
      // writes 32 consecutive floats, one a bank. (Tile-major, [group][tile][TN·i + j], would
      // put the lanes TM·TN floats apart: 2 banks at 4 × 4, a 16-way conflict on every store.)
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j)
          kpart[(group * kBlock + TN * i + j) * tiles + tile + group * pad] = c[i][j];
    }
  }
  if (groups == 1) return;
  __syncthreads();  // every group's partial block is in kpart
  for (int e = int(threadIdx.x); e < tiles * kBlock; e += int(blockDim.x)) {
    const int tile = e % tiles, ij = e / tiles, i = ij / TN, j = ij % TN;
    float sum = 0.0f;
    for (int group = 0; group < groups; ++group)
      sum += kpart[(group * kBlock + ij) * tiles + tile + group * pad];
    const int m0 = kTall ? tile / tiles_n : tile / tiles_n * TM;
    acc[(m0 + i * dm) * ldc + tile % tiles_n + j * tiles_n] += sum;
  }
}

// The cluster step's forward product: 4 × 4 blocks (kpart ≤ threads · 16 floats).
__device__ inline void dot_accumulate(float* acc, int ldc, const float* A, int lda, const float* B, int ldb,
                                      int M4, int N4, int K4, float* kpart) {
  dot_accumulate_blocked<4, 4>(acc, ldc, A, lda, B, ldb, M4, N4, K4, kpart);
}

// store(m0, n0, c) for each 4 × 4 block of C[m, n] = Σ_{k < K} A(k, m)·B[k, n], m < M4, n < N4:
// A(k, m) = A[k·a_k + m·a_m] (any strides, rows past M padded; with a_m = 1, a_k a multiple of 4
// and A 16-byte aligned: float4 reads), B [K, ldb] row-major (float4 reads along n, padded to
// N4). k in order, fmaf from 0.
template <class Store>
__device__ inline void outer_product(const float* A, int a_k, int a_m, const float* B, int ldb, int M4,
                                     int N4, int K, Store&& store) {
  const int tiles_n = N4 / 4, tiles = M4 / 4 * tiles_n;
  // c[i][·] += a[i]·B[k, n0 … n0 + 3]: one k step of the 4 × 4 block.
  const auto step = [&](float(&c)[4][4], const float(&a)[4], int k, int n0) {
    const float4 b = *reinterpret_cast<const float4*>(B + k * ldb + n0);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      c[i][0] = fmaf(a[i], b.x, c[i][0]);
      c[i][1] = fmaf(a[i], b.y, c[i][1]);
      c[i][2] = fmaf(a[i], b.z, c[i][2]);
      c[i][3] = fmaf(a[i], b.w, c[i][3]);
    }
  };
  // With a_k = 1 (A's rows k-contiguous: G·W's gradient rows) four k steps read each of the 4
  // rows as one float4 along k, where single floats would take 16 reads; a_m a multiple of 4
  // keeps them 16-byte aligned. The last K mod 4 steps go one by one. The same k order either way.
  const bool rows_along_k = a_k == 1 && a_m % 4 == 0 && reinterpret_cast<uintptr_t>(A) % 16 == 0;
  for (int t = int(threadIdx.x); t < tiles; t += int(blockDim.x)) {
    const int m0 = t / tiles_n * 4, n0 = t % tiles_n * 4;
    float c[4][4] = {};
    int k = 0;
    if (rows_along_k)
      for (; k + 4 <= K; k += 4) {
        float4 row[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) row[i] = *reinterpret_cast<const float4*>(A + k + (m0 + i) * a_m);
        const float a0[4] = {row[0].x, row[1].x, row[2].x, row[3].x};
        const float a1[4] = {row[0].y, row[1].y, row[2].y, row[3].y};
        const float a2[4] = {row[0].z, row[1].z, row[2].z, row[3].z};
        const float a3[4] = {row[0].w, row[1].w, row[2].w, row[3].w};
        step(c, a0, k, n0);
        step(c, a1, k + 1, n0);
        step(c, a2, k + 2, n0);
        step(c, a3, k + 3, n0);
      }
    for (; k < K; ++k) {
      float a[4];
      if (a_m == 1) {  // one float4 read (a_k and m0 are multiples of 4 where A is contiguous)
        const float4 v = *reinterpret_cast<const float4*>(A + k * a_k + m0);
        a[0] = v.x, a[1] = v.y, a[2] = v.z, a[3] = v.w;
      } else {
#pragma unroll
        for (int i = 0; i < 4; ++i) a[i] = A[k * a_k + (m0 + i) * a_m];
      }
      step(c, a, k, n0);
    }
    store(m0, n0, c);
  }
}

// dst[j] = v[j] for j < n (n ≤ 4): one 16-byte store where all four go to an aligned address
// — the outer products' stores to L2, whose warps then write whole 32-byte sectors, a quarter
// of the store instructions of single floats.
__device__ inline void store_row(float* dst, const float (&v)[4], int64_t n) {
  if (n == 4 && reinterpret_cast<uintptr_t>(dst) % 16 == 0) {
    *reinterpret_cast<float4*>(dst) = make_float4(v[0], v[1], v[2], v[3]);
    return;
  }
  for (int j = 0; j < n; ++j) dst[j] = v[j];
}

__device__ inline void zero(float* p, int n) {
  for (int i = int(threadIdx.x); i < n; i += int(blockDim.x)) p[i] = 0.0f;
}

}  // namespace subliminal::cuda::cluster
