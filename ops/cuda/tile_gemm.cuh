// ops/cuda/tile_gemm.cuh — one output tile of a Linear GEMM, with split-K and fused epilogues:
// the device code shared by the tiled engine (ops/cuda/gemm_tiled.cu, one kernel per GEMM) and
// the fused training step (ops/cuda/fused_step.cu, a whole step in one persistent kernel).
//
// Every product is C[m, n] = Σ_k a(m, k) · b(n, k) per model, where an operand is any strided
// [rows, K] view (element (r, k) at ptr[r·row_stride + k·k_stride]):
//
//   kind             C          m  n  k   a(m, k)            b(n, k)
//   forward          y[B,O]     b  o  i   x[b, i]            w[o, i]
//   backward_input   dx[B,I]    b  i  o   dy[b, o]           w[o, i]
//   backward_weight  dw[O,I]    o  i  b   dy[b, o]           x[b, i]
//
// A tile is 64×64 outputs computed by 256 threads (a 4×4 block each), K walked in chunks of 16
// staged in shared memory by asynchronous copies (cp.async), kStages − 1 chunks in flight while
// one computes. With S splits, tile (model, m_tile, n_tile) is S work items, each summing one
// slice of K into a partial tile in scratch; a per-tile counter tells the item that finishes
// last, and that one sums the S partials in slice order 0..S−1 (the same bits whichever
// finished first) and runs the epilogue. Where all S items run at once (the fused step, whose
// split phases fit one wave of a cooperative grid: Gemm::parallel_fixup), each of them instead
// waits for all S partials and sums and finishes its own band of 64/S rows — the same sums, so
// the same bits, with the fix-up's loads and the epilogue shared by S blocks. The epilogues:
//   forward          + bias, ReLU (PyTorch's: z <= 0 → 0, NaN stays), optional bit-mask
//   backward_input   ReLU gate (from a bit-mask, or from the post-ReLU values: open where
//                    !(h == 0), the same gate), accumulate, and the column sums Σ_m (the
//                    previous layer's bias gradient) — across row tiles by the same
//                    "last one sums in order" scheme
//   backward_weight  accumulate, and the row sums Σ_k a(m, k) (this layer's bias gradient);
//                    optionally Adam on the weights (and biases) the finished gradient belongs
//                    to (the fused step's tail: see AdamEpilogue)
//
// Which loads may use L1. In the fused step an operand may have been written by another SM
// earlier in the same kernel, and L1 is not coherent between SMs: a line this SM cached before
// that write would be stale. So the fix-up's partials, the epilogue's reads and everything
// else here load through L2 only (__ldcg). The exception is what cp.async copies — the
// operands' K chunks and the forward bias: it moves 4-byte elements only with .ca, which
// allocates in L1. That is safe because of a rule the fused program keeps (fused_mlp_step
// checks it on each program it launches: l1_rule_violation in ops/cuda/fused_program.cuh):
// no phase writes bytes that an operand load touched before it and that another touches
// after it (the activations and gradients are written once, before any GEMM reads them; the
// weights are read by GEMMs and written by Adam in the last phase, after every read). So no SM
// reads a line it cached before another SM overwrote it, and between dependent kernels the
// driver invalidates L1 (PTX ISA, ld.ca). (PTX calls cache operators performance hints that
// leave the memory model as it is, under which the grid barrier's release and acquire already
// order these reads; the rule is the margin that does not depend on how the hardware honours
// that for L1-allocating copies.)
#pragma once

#include <cuda/atomic>
#include <cuda_pipeline_primitives.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "engine/cuda/step_end.cuh"

namespace subliminal::cuda::tile {

constexpr int kTileM = 64, kTileN = 64, kTileK = 16;
constexpr int kBlockThreads = 256;                     // 16 × 16 threads, 4×4 outputs each
constexpr int kSmemPad = 4;                            // floats: keeps float4 rows aligned, spreads banks
constexpr int kTileFloats = kTileM * kTileN + kTileM;  // a partial tile + its row sums
constexpr int kStages = 4;                             // K chunks staged at once: 3 in flight, 1 computing
constexpr int kMaxSplits = 8;                          // plan()'s default: the last item reads ≤ 8 partials
constexpr int kFixupBatch = 4;                         // partials in flight at once in a fix-up
static_assert(kTileM * kTileK == 4 * kBlockThreads && kTileN * kTileK == 4 * kBlockThreads,
              "each thread stages 4 elements of each operand per K chunk");

enum class Kind : int { forward, backward_input, backward_weight };

// A strided [rows, K] operand of one model; model z starts at ptr + z·model_stride.
struct Operand {
  const float* ptr;
  int64_t row_stride, k_stride, model_stride;
};

// One batched GEMM (all models), planned: plan() fills the tiling and the scratch sizes.
struct Gemm {
  Kind kind;
  Operand a, b;
  int64_t models, M, N, K;
  float* c;                   // [models, M, N] row-major
  bool accumulate;            // c += result instead of c = result
  // forward
  const float* bias;          // [models, N] or null
  bool relu;
  uint8_t* mask_out;          // [models, M, mask_row_bytes] or null
  // backward_input
  const uint8_t* mask_in;     // [models, M, mask_row_bytes] or null: gate the result by these bits
  const float* gate_values;   // [models, M, N] or null: gate by !(h == 0) on these post-ReLU values
  float* column_sums;         // [models, N] or null: Σ_m of c as stored (the gated result,
                              // plus c's old values when accumulating)
  // backward_weight
  float* row_sums;            // [models, M] or null: Σ_k a(m, k)
  int64_t mask_row_bytes;     // mask_out's or mask_in's bytes per row: roundup(N, 128) / 8
  // planning (plan())
  int m_tiles, n_tiles, splits;
  bool parallel_fixup;        // split-K: every item finishes a band of the tile's rows (see
                              // tile_item); only where all of a tile's items run at once
  int64_t k_per_split;        // a multiple of kTileK
  int64_t items;              // models · m_tiles · n_tiles · splits
  // scratch (the caller points these at zeroed counters and free floats)
  float* partials;            // [models·m_tiles·n_tiles·splits][kTileFloats]
  float* column_partials;     // [models·n_tiles·m_tiles][kTileN]
  int* tile_counters;         // [models·m_tiles·n_tiles], zero between uses
  int* column_counters;       // [models·n_tiles], zero between uses
};

// One K chunk of both operands in shared memory.
struct Stage {
  float a[kTileK][kTileM + kSmemPad];  // a(m0 + r, k0 + k) at [k][r]
  float b[kTileK][kTileN + kSmemPad];  // b(n0 + c, k0 + k) at [k][c]
};

// The shared memory one work item needs; a kernel declares one and passes it to tile_item.
// 16-byte aligned wherever it lives: the compute loop reads its rows as float4. The finished
// tile shares the stages' memory (34 KB, not 51: the kernel's static shared memory must stay
// under 48 KB), so the K loop ends with a __syncthreads before anything writes c.
struct alignas(16) Smem {
  union {
    Stage stage[kStages];              // the K chunks, chunk j in stage j % kStages
    float c[kTileM][kTileN + 1];       // the finished tile, for the mask and the column sums
  };
  float bias[kTileN];                  // forward: the tile's bias, copied in with the first chunk
  bool last;
};

// Adam on the parameters a backward_weight GEMM's output is the gradient of, applied by the item
// that finishes each tile, as soon as the tile's gradient is final: param, m and v are laid out
// like c (element (model, r, n) at the same offset), *t is the step number of this update, and
// the update is engine/adam.h's, the same bits as the Adam kernel. With the GEMM's row sums (the
// layer's bias gradient), bias_param, bias_m and bias_v are the bias's, laid out like row_sums,
// and an item that finishes a tile in the first column of tiles updates its 64 biases too. The
// fused step uses it for the last gradients it computes, so that its Adam needs no phase of its
// own. (It lives in the kernel's parameter, not in registers: the GEMM loop is at its register
// cap.)
struct AdamEpilogue {
  float *param, *m, *v;
  float *bias_param, *bias_m, *bias_v;  // null when the GEMM makes no row sums
  const int64_t* t;
  AdamOptions options;
};

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The "last one sums" hand-off: the block counts itself in at `counter` and learns how many
// blocks came before it. Thread 0 calls it between two __syncthreads of the whole block. One
// atomic at device scope with acquire-release order: release, so what the block wrote before
// the first __syncthreads (its partial) is visible to the block that counts in after it;
// acquire, so what the blocks counted before it wrote is visible to this block after the
// second __syncthreads. (cooperative groups' grid.sync() hands over the same way. The classic
// form, a __threadfence on each side of a plain atomicAdd, puts a sequentially consistent fence
// on the path twice, which this hand-off does not need.)
__device__ inline int count_in(int* counter) {
  return ::cuda::atomic_ref<int, ::cuda::thread_scope_device>(*counter).fetch_add(1, ::cuda::memory_order_acq_rel);
}

// Thread 0, after count_in: waits until `count` blocks have counted in, acquiring what they
// wrote (each count_in heads a release sequence that the later ones continue). For items that
// all run at once (a cooperative launch whose phase fits one wave), so that the wait ends.
// Polls every few tens of ns, each poll an L2 round trip; after 2²⁴ polls (some seconds on a
// GPU) it traps, so that a broken plan fails the launch instead of hanging the GPU.
constexpr long long kMaxPolls = 1ll << 24;
__device__ inline void wait_for_count(int* counter, int count) {
  ::cuda::atomic_ref<int, ::cuda::thread_scope_device> c(*counter);
  for (long long polls = 0; c.load(::cuda::memory_order_acquire) < count; ++polls) {
    if (polls == kMaxPolls) __trap();
    __nanosleep(32);
  }
}

// The three products of a Linear layer, as in the table at the top, for `models` models stored
// one after another: x [models, B, I], w [models, O, I], dy [models, B, O]. The epilogue
// fields (bias, ReLU, masks, gates, sums, accumulate) are the caller's to set.
inline Gemm forward_product(const float* x, const float* w, float* y, int64_t models, int64_t batch, int64_t in,
                            int64_t out) {
  Gemm g{};
  g.kind = Kind::forward;
  g.a = {x, in, 1, batch * in};   // a(m=b, k=i) = x[b, i]
  g.b = {w, in, 1, out * in};     // b(n=o, k=i) = w[o, i]
  g.models = models, g.M = batch, g.N = out, g.K = in;
  g.c = y;                        // y [models, B, O]
  return g;
}
inline Gemm backward_input_product(const float* dy, const float* w, float* dx, int64_t models, int64_t batch,
                                   int64_t in, int64_t out) {
  Gemm g{};
  g.kind = Kind::backward_input;
  g.a = {dy, out, 1, batch * out};  // a(m=b, k=o) = dy[b, o]
  g.b = {w, 1, in, out * in};       // b(n=i, k=o) = w[o, i]
  g.models = models, g.M = batch, g.N = in, g.K = out;
  g.c = dx;                         // dx [models, B, I]
  return g;
}
inline Gemm backward_weight_product(const float* dy, const float* x, float* dw, int64_t models, int64_t batch,
                                    int64_t in, int64_t out) {
  Gemm g{};
  g.kind = Kind::backward_weight;
  g.a = {dy, 1, out, batch * out};  // a(m=o, k=b) = dy[b, o]
  g.b = {x, 1, in, batch * in};     // b(n=i, k=b) = x[b, i]
  g.models = models, g.M = out, g.N = in, g.K = batch;
  g.c = dw;                         // dw [models, O, I]
  return g;
}

// Tiles and splits. `target_items` is how many blocks run at once: when the tiles alone are
// fewer, K is split into as many slices as fit in that one wave — tiles × splits ≤
// target_items, since an item past it would run after another item of its block and double
// the GEMM's time — keeping at least min_chunks K chunks per slice and at most max_splits
// slices (the defaults: 2 and kMaxSplits; bench_layers sweeps others).
inline void plan(Gemm& g, int64_t target_items, int max_splits = kMaxSplits, int min_chunks = 2) {
  g.m_tiles = int(ceil_div(g.M, kTileM));
  g.n_tiles = int(ceil_div(g.N, kTileN));
  const int64_t tiles = g.models * g.m_tiles * g.n_tiles;
  const int64_t chunks = ceil_div(g.K, kTileK) > 0 ? ceil_div(g.K, kTileK) : 1;
  int64_t splits = 1;
  if (tiles < target_items) {
    splits = target_items / tiles;
    if (splits > chunks / min_chunks) splits = chunks / min_chunks;
    if (splits > max_splits) splits = max_splits;
    if (splits < 1) splits = 1;
  }
  const int64_t chunks_per_split = ceil_div(chunks, splits);
  g.k_per_split = chunks_per_split * kTileK;
  g.splits = int(ceil_div(chunks, chunks_per_split));
  g.items = tiles * g.splits;
}

// Scratch one planned GEMM needs: floats (partials, column partials) and counters.
inline bool needs_column_fixup(const Gemm& g) {
  return g.kind == Kind::backward_input && g.column_sums && g.m_tiles > 1;
}
inline int64_t scratch_floats(const Gemm& g) {
  const int64_t tiles = g.models * g.m_tiles * g.n_tiles;
  return (g.splits > 1 ? tiles * g.splits * kTileFloats : 0) +
         (needs_column_fixup(g) ? g.models * g.n_tiles * g.m_tiles * kTileN : 0);
}
inline int64_t scratch_counters(const Gemm& g) {
  return (g.splits > 1 ? g.models * g.m_tiles * g.n_tiles : 0) + (needs_column_fixup(g) ? g.models * g.n_tiles : 0);
}
// Points the GEMM's scratch pointers into `floats` and `counters` (sized as above).
inline void assign_scratch(Gemm& g, float* floats, int* counters) {
  const int64_t tiles = g.models * g.m_tiles * g.n_tiles;
  const int64_t partial_floats = g.splits > 1 ? tiles * g.splits * kTileFloats : 0;
  const int64_t tile_counters = g.splits > 1 ? tiles : 0;
  g.partials = floats;
  g.column_partials = floats ? floats + partial_floats : nullptr;
  g.tile_counters = counters;
  g.column_counters = counters ? counters + tile_counters : nullptr;
}

// Starts the copies of one K chunk of a 64-row operand slab into a stage, s[k][row] (k-major,
// so the compute loop reads 4 consecutive rows as one float4): thread t copies 4 elements and
// writes zeros outside the matrix. When k is the contiguous dimension, neighbouring threads
// walk k (16 floats in a row, coalesced); otherwise they walk rows. The copies land at the
// thread's __pipeline_wait_prior, and the other threads may read them after a __syncthreads
// that follows it; the zeros are plain stores, visible after that same __syncthreads.
template <bool kContiguous>
__device__ inline void copy_chunk_async(float (*s)[kTileM + kSmemPad], const float* __restrict__ base,
                                        const Operand& op, int64_t row0, int64_t rows, int64_t k0, int64_t k_end) {
  // Element e = t + 256·i of the chunk is (k = e % 16, row = e / 16) when k is contiguous, and
  // (k = e / 64, row = e % 64) when not: thread t's four differ by 16 rows, or by 4 k.
  constexpr int kRowStep = kContiguous ? kBlockThreads / kTileK : 0;
  constexpr int kKStep = kContiguous ? 0 : kBlockThreads / kTileM;
  const int kk = kContiguous ? threadIdx.x % kTileK : threadIdx.x / kTileM;
  const int rr = kContiguous ? threadIdx.x / kTileK : threadIdx.x % kTileM;
  const int64_t first = (row0 + rr) * op.row_stride + (k0 + kk) * op.k_stride;  // element i = 0
  const int64_t step = kRowStep * op.row_stride + kKStep * op.k_stride;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float* dst = &s[kk + kKStep * i][rr + kRowStep * i];
    if (row0 + rr + kRowStep * i < rows && k0 + kk + kKStep * i < k_end)  // (no pointer past the matrix)
      __pipeline_memcpy_async(dst, base + (first + i * step), sizeof(float));
    else
      *dst = 0.0f;
  }
}

// Which operand layouts each kind has (see the table at the top).
template <Kind kind>
struct Layout {
  static constexpr bool a_k_contiguous = kind != Kind::backward_weight;  // x[b,i], dy[b,o] | dy[b,o]ᵀ
  static constexpr bool b_k_contiguous = kind == Kind::forward;          // w[o,i] | w[o,i]ᵀ, x[b,i]ᵀ
};

// One output element's epilogue: v is C[m, n]'s sum (of this model: c, gate and mask_model are
// its C, gate values and mask offset), bias its column's bias (forward). Adds the bias and
// applies ReLU (forward) or the gate (backward_input), accumulates, stores; returns what the
// tile's staging holds for it (0 outside the matrix).
template <Kind kind>
__device__ inline float finish_element(const Gemm& p, float v, float bias, int64_t m, int64_t n, float* c,
                                       const float* gate, int64_t mask_model) {
  if (!(m < p.M && n < p.N)) return 0.0f;
  if (kind == Kind::forward) {
    if (p.bias) v += bias;
    if (p.relu) v = v <= 0.0f ? 0.0f : v;  // NaN stays NaN
  }
  if (kind == Kind::backward_input) {
    if (p.mask_in && !((__ldcg(&p.mask_in[mask_model + m * p.mask_row_bytes + (n >> 3)]) >> (n & 7)) & 1u))
      v = 0.0f;
    if (gate && __ldcg(&gate[m * p.N + n]) == 0.0f) v = 0.0f;
  }
  if (p.accumulate) v += __ldcg(&c[m * p.N + n]);
  c[m * p.N + n] = v;
  return v;
}

// Parallel split-K (Gemm::parallel_fixup): rows [r0, r1) of tile (model, m0, n0), summed from
// the S partials at `parts` in slice order, then each element's epilogue, into C and sm.c.
// Thread t takes the band's float4 column groups t, t + 256, …
template <Kind kind>
__device__ void finish_band(const Gemm& p, Smem& sm, const float* parts, int64_t model, int64_t m0,
                            int64_t n0, int r0, int r1) {
  float* c = p.c + model * p.M * p.N;
  const float* gate = p.gate_values ? p.gate_values + model * p.M * p.N : nullptr;
  const int64_t mask_model = model * p.M * p.mask_row_bytes;
  constexpr int kGroups = kTileN / 4;  // float4s in a row
  for (int q = threadIdx.x; q < (r1 - r0) * kGroups; q += kBlockThreads) {
    const int r = r0 + q / kGroups, col = (q % kGroups) * 4;
    float sum[4] = {};
#pragma unroll 4
    for (int s = 0; s < p.splits; ++s) {
      const float4 v = __ldcg(reinterpret_cast<const float4*>(&parts[s * kTileFloats + r * kTileN + col]));
      sum[0] += v.x, sum[1] += v.y, sum[2] += v.z, sum[3] += v.w;
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float bias = kind == Kind::forward && p.bias ? sm.bias[col + j] : 0.0f;
      sm.c[r][col + j] = finish_element<kind>(p, sum[j], bias, m0 + r, n0 + col + j, c, gate, mask_model);
    }
  }
}

// Adam (AdamEpilogue) on the weights of rows [r0, r1) of a finished backward_weight tile
// (model, m0, n0), their gradients in sm.c, and, where writes_row, on the bias of this
// thread's row m0 + t (its gradient row_sum). Thread t takes the rows' elements t, t + 256, …,
// 4 at a time: their 12 loads in flight together, without holding all of them; the bias's 3
// ride with the first 4. (A thread with a bias has a first round: t < r1 ≤ 64 ≤ the elements.)
__device__ inline void adam_rows(const Gemm& p, const AdamEpilogue& adam, const Smem& sm, int64_t model,
                                 int64_t m0, int64_t n0, int r0, int r1, bool writes_row, float row_sum) {
  constexpr int kRound = 4;
  const AdamStepScalars scalars = adam_step_scalars(adam.options, __ldcg(adam.t));
  const int64_t at = model * p.M * p.N;
  const int elements = (r1 - r0) * kTileN;
#pragma unroll 1
  for (int first = threadIdx.x; first < elements; first += kRound * kBlockThreads) {
    float w[kRound], mom[kRound], var[kRound];
    bool here[kRound];
#pragma unroll
    for (int k = 0; k < kRound; ++k) {
      const int e = first + k * kBlockThreads, r = r0 + e / kTileN, col = e % kTileN;
      here[k] = e < elements && m0 + r < p.M && n0 + col < p.N;
      const int64_t i = at + (m0 + r) * p.N + n0 + col;
      if (here[k]) w[k] = __ldcg(&adam.param[i]), mom[k] = __ldcg(&adam.m[i]), var[k] = __ldcg(&adam.v[i]);
    }
    const bool bias_here = first == int(threadIdx.x) && writes_row && adam.bias_param;
    const int64_t bias_at = model * p.M + m0 + threadIdx.x;
    float b = 0.0f, b_mom = 0.0f, b_var = 0.0f;
    if (bias_here)
      b = __ldcg(&adam.bias_param[bias_at]), b_mom = __ldcg(&adam.bias_m[bias_at]),
      b_var = __ldcg(&adam.bias_v[bias_at]);
#pragma unroll
    for (int k = 0; k < kRound; ++k) {
      if (!here[k]) continue;
      const int e = first + k * kBlockThreads, r = r0 + e / kTileN, col = e % kTileN;
      const int64_t i = at + (m0 + r) * p.N + n0 + col;
      adam_element(w[k], sm.c[r][col], mom[k], var[k], scalars);
      adam.param[i] = w[k], adam.m[i] = mom[k], adam.v[i] = var[k];
    }
    if (bias_here) {
      adam_element(b, row_sum, b_mom, b_var, scalars);
      adam.bias_param[bias_at] = b, adam.bias_m[bias_at] = b_mom, adam.bias_v[bias_at] = b_var;
    }
  }
}

// Work item `item` of g (0 ≤ item < g.items), computed by the whole block. Returns early (all
// threads together) when this item is a slice whose tile another item finishes. adam: null, or
// (backward_weight only) Adam on the finished tile's parameters.
template <Kind kind>
__device__ void tile_item(const Gemm& p, int64_t item, Smem& sm, const AdamEpilogue* adam = nullptr) {
  // item = ((model · m_tiles + m_tile) · n_tiles + n_tile) · splits + split
  const int split = int(item % p.splits);
  const int64_t tile_id = item / p.splits;
  const int n_tile = int(tile_id % p.n_tiles), m_tile = int((tile_id / p.n_tiles) % p.m_tiles);
  const int64_t model = tile_id / (int64_t(p.n_tiles) * p.m_tiles);
  const int64_t m0 = int64_t(m_tile) * kTileM, n0 = int64_t(n_tile) * kTileN;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;  // this thread: rows ty·4.., columns tx·4..
  const float* a_base = p.a.ptr + model * p.a.model_stride;
  const float* b_base = p.b.ptr + model * p.b.model_stride;
  const int64_t k_begin = split * p.k_per_split, k_end = min(p.K, k_begin + p.k_per_split);
  // backward_weight's bias gradient Σ_k a(m, k): the n_tile 0 items sum their staged a chunks.
  const bool sums_rows = kind == Kind::backward_weight && p.row_sums && n_tile == 0;

  __syncthreads();  // the previous item of this block is done with the shared memory
  float acc[4][4] = {};
  float row_sum = 0.0f;  // thread t < 64: row m0 + t
  // Chunk j of this slice starts at k_begin + j·kTileK and lives in stage j % kStages. Every
  // chunk slot commits one copy group, empty past the last chunk, so that "chunk j has landed"
  // is always "at most kStages − 2 groups newer than j's are still in flight".
  const int chunks = int((k_end - k_begin + kTileK - 1) / kTileK);
  auto start_chunk = [&](int chunk) {
    if (chunk < chunks) {
      Stage& st = sm.stage[chunk % kStages];
      const int64_t k0 = k_begin + int64_t(chunk) * kTileK;
      copy_chunk_async<Layout<kind>::a_k_contiguous>(st.a, a_base, p.a, m0, p.M, k0, k_end);
      copy_chunk_async<Layout<kind>::b_k_contiguous>(st.b, b_base, p.b, n0, p.N, k0, k_end);
    }
    __pipeline_commit();
  };
  // The forward epilogue's bias rides in chunk 0's copy group, so that the epilogue finds it
  // in shared memory instead of waiting for one more L2 round trip at the end.
  if (kind == Kind::forward && p.bias && threadIdx.x < kTileN && n0 + threadIdx.x < p.N)
    __pipeline_memcpy_async(&sm.bias[threadIdx.x], &p.bias[model * p.N + n0 + threadIdx.x], sizeof(float));
#pragma unroll 1  // unrolled, its addresses cost the kernel a spilled register
  for (int chunk = 0; chunk < kStages - 1; ++chunk) start_chunk(chunk);
  for (int chunk = 0; chunk < chunks; ++chunk) {
    // (The toolkit's wait has no "memory" clobber: the __syncthreads right after it is also
    // what keeps the compiler from reading the stage before the wait. Keep them together.)
    __pipeline_wait_prior(kStages - 2);  // this thread's copies of this chunk have landed
    __syncthreads();                     // … and every thread's; all are done with the previous chunk
    start_chunk(chunk + kStages - 1);    // into the previous chunk's stage, free now
    const Stage& st = sm.stage[chunk % kStages];
#pragma unroll
    for (int k = 0; k < kTileK; ++k) {
      const float4 a4 = *reinterpret_cast<const float4*>(&st.a[k][ty * 4]);
      const float4 b4 = *reinterpret_cast<const float4*>(&st.b[k][tx * 4]);
      const float av[4] = {a4.x, a4.y, a4.z, a4.w}, bv[4] = {b4.x, b4.y, b4.z, b4.w};
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
    if (sums_rows && threadIdx.x < kTileM)
      for (int k = 0; k < kTileK; ++k) row_sum += st.a[k][threadIdx.x];
  }
  __pipeline_wait_prior(0);  // every copy has landed (the bias too, when K is empty)
  __syncthreads();           // … for every thread, and all are done with the stages, which c shares

  // ---- split-K: the partials are summed in slice order 0..S−1 -------------------------------
  // Either the last of the tile's S items sums the whole tile (it learns it is last from the
  // counter), or (p.parallel_fixup) every item waits for all S partials and finishes its own
  // band of rows [r0, r1): S blocks share the fix-up's loads and the epilogue, and none runs
  // the tile alone after the others are done. Same sums in the same order: the same bits.
  int r0 = 0, r1 = kTileM;  // the rows of the tile this item finishes
  int departed = -1;        // parallel: thread 0's count at leaving (the last one resets the counter)
  if (p.splits > 1) {
    float* mine = p.partials + (tile_id * p.splits + split) * kTileFloats;
#pragma unroll
    for (int i = 0; i < 4; ++i)
      *reinterpret_cast<float4*>(&mine[(ty * 4 + i) * kTileN + tx * 4]) =
          make_float4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]);
    if (sums_rows && threadIdx.x < kTileM) mine[kTileM * kTileN + threadIdx.x] = row_sum;
    __syncthreads();  // the whole partial is written …
    int* counter = &p.tile_counters[tile_id];
    const float* parts = p.partials + tile_id * p.splits * kTileFloats;
    if (p.parallel_fixup) {
      if (threadIdx.x == 0) {
        count_in(counter);
        wait_for_count(counter, p.splits);
        // Counted a second time on the way out, so that the last to leave knows every item
        // has seen the count, and resets it (relaxed: it orders nothing else).
        departed = ::cuda::atomic_ref<int, ::cuda::thread_scope_device>(*counter).fetch_add(
            1, ::cuda::memory_order_relaxed);
      }
      __syncthreads();  // … and every partial is visible to every thread
      r0 = kTileM * split / p.splits, r1 = kTileM * (split + 1) / p.splits;
      finish_band<kind>(p, sm, parts, model, m0, n0, r0, r1);
    } else {
      if (threadIdx.x == 0) sm.last = count_in(counter) == p.splits - 1;
      __syncthreads();  // … and, in the last item, the others' partials are visible to every thread
      if (!sm.last) return;
      for (auto& row : acc) {
        for (float& v : row) v = 0.0f;
      }
      // The loop body has no branch, so the compiler may issue the next slices' loads before
      // this one's adds (they are independent) and wait for fewer L2 round trips than slices.
#pragma unroll 4
      for (int s = 0; s < p.splits; ++s) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float4 v = __ldcg(
              reinterpret_cast<const float4*>(&parts[s * kTileFloats + (ty * 4 + i) * kTileN + tx * 4]));
          acc[i][0] += v.x, acc[i][1] += v.y, acc[i][2] += v.z, acc[i][3] += v.w;
        }
      }
      if (threadIdx.x == 0) *counter = 0;  // ready for the next use
    }
    // The row sums of the rows this item finishes (thread t: row t), from the partials' too.
    row_sum = 0.0f;
    if (sums_rows && r0 <= int(threadIdx.x) && int(threadIdx.x) < r1)
      for (int s = 0; s < p.splits; ++s)
        row_sum += __ldcg(&parts[s * kTileFloats + kTileM * kTileN + threadIdx.x]);
  }

  // ---- epilogue --------------------------------------------------------------------------------
  // Rows [r0, r1) of the tile: C, and the tile's staging sm.c, which the rest reads.
  float* c = p.c + model * p.M * p.N;
  const int64_t mask_model = model * p.M * p.mask_row_bytes;
  if (r1 - r0 == kTileM) {  // the whole tile, from this thread's 4×4 sums
    const float* gate = p.gate_values ? p.gate_values + model * p.M * p.N : nullptr;
    float bias[4] = {};  // forward: this thread's 4 columns' bias (one float4: reading it per
                         // column made the fused kernel spill a register)
    if (kind == Kind::forward && p.bias) {
      const float4 b4 = *reinterpret_cast<const float4*>(&sm.bias[tx * 4]);
      bias[0] = b4.x, bias[1] = b4.y, bias[2] = b4.z, bias[3] = b4.w;
    }
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j)
        sm.c[ty * 4 + i][tx * 4 + j] = finish_element<kind>(p, acc[i][j], bias[j], m0 + ty * 4 + i,
                                                            n0 + tx * 4 + j, c, gate, mask_model);
  }

  // Parallel: the last block to leave the counter resets it for the next use. Here, not at the
  // departure itself, so that thread 0 waited for that atomic's answer only after its share of
  // the band's loads and stores.
  if (departed == 2 * p.splits - 1)
    ::cuda::atomic_ref<int, ::cuda::thread_scope_device>(p.tile_counters[tile_id])
        .store(0, ::cuda::memory_order_relaxed);

  if (kind == Kind::backward_weight) {
    const bool writes_row =
        sums_rows && r0 <= int(threadIdx.x) && int(threadIdx.x) < r1 && m0 + threadIdx.x < p.M;
    if (writes_row) p.row_sums[model * p.M + m0 + threadIdx.x] = row_sum;
    if (adam) {
      __syncthreads();  // sm.c complete
      adam_rows(p, *adam, sm, model, m0, n0, r0, r1, writes_row, row_sum);
    }
    return;
  }
  const bool writes_mask = kind == Kind::forward && p.relu && p.mask_out;
  const bool sums_columns = kind == Kind::backward_input && p.column_sums;
  if (!writes_mask && !sums_columns) return;
  __syncthreads();  // sm.c complete

  if (writes_mask) {
    // r1 − r0 rows × 8 bytes of mask; bit = !(y == 0) on the post-ReLU y, which is !(z <= 0) on z.
    for (int e = threadIdx.x; e < (r1 - r0) * (kTileN / 8); e += kBlockThreads) {
      const int r = r0 + e / (kTileN / 8), byte = e % (kTileN / 8);
      const int64_t m = m0 + r, n_first = n0 + byte * 8;
      if (m >= p.M || n_first >= p.N) continue;
      unsigned bits = 0;
      for (int t = 0; t < 8; ++t)
        if (n_first + t < p.N && !(sm.c[r][byte * 8 + t] == 0.0f)) bits |= 1u << t;
      p.mask_out[mask_model + m * p.mask_row_bytes + (n_first >> 3)] = uint8_t(bits);
    }
    return;
  }

  // backward_input: column sums of this tile (rows in order), then across the m tiles.
  float column_sum = 0.0f;
  if (threadIdx.x < kTileN)
    for (int r = 0; r < kTileM; ++r) column_sum += sm.c[r][threadIdx.x];
  const int64_t n = n0 + threadIdx.x;
  float* column_out = p.column_sums + model * p.N;
  if (p.m_tiles == 1) {
    if (threadIdx.x < kTileN && n < p.N) column_out[n] = column_sum;
    return;
  }
  const int64_t group = model * p.n_tiles + n_tile;  // the m_tiles items of this column strip
  if (threadIdx.x < kTileN) p.column_partials[(group * p.m_tiles + m_tile) * kTileN + threadIdx.x] = column_sum;
  __syncthreads();  // as in the split-K hand-off above
  if (threadIdx.x == 0) sm.last = count_in(&p.column_counters[group]) == p.m_tiles - 1;
  __syncthreads();
  if (!sm.last) return;
  if (threadIdx.x < kTileN && n < p.N) {
    float total = 0.0f;  // the row tiles' sums in order, loaded a batch at a time as above
    for (int t0 = 0; t0 < p.m_tiles; t0 += kFixupBatch) {
      float v[kFixupBatch];
#pragma unroll
      for (int b = 0; b < kFixupBatch; ++b)
        v[b] = t0 + b < p.m_tiles ? __ldcg(&p.column_partials[(group * p.m_tiles + t0 + b) * kTileN + threadIdx.x]) : 0.0f;
#pragma unroll
      for (int b = 0; b < kFixupBatch; ++b)
        if (t0 + b < p.m_tiles) total += v[b];
    }
    column_out[n] = total;
  }
  if (threadIdx.x == 0) p.column_counters[group] = 0;
}

// Dispatches on the GEMM's kind.
__device__ inline void run_item(const Gemm& g, int64_t item, Smem& sm, const AdamEpilogue* adam = nullptr) {
  switch (g.kind) {
    case Kind::forward:
      return tile_item<Kind::forward>(g, item, sm);
    case Kind::backward_input:
      return tile_item<Kind::backward_input>(g, item, sm);
    case Kind::backward_weight:
      return tile_item<Kind::backward_weight>(g, item, sm, adam);
  }
}

// Scratch for planned GEMMs: device buffers that only grow (ops/cuda/grow_only_buffer.h: they
// grow outside graph capture, on a step's eager first call, and a grown-out buffer is kept,
// since a captured graph may still point at it). Counters come zeroed and are left zeroed by
// their users.
float* grow_scratch_floats(int64_t count);
int* grow_scratch_counters(int64_t count);

}  // namespace subliminal::cuda::tile
