// ops/cuda/gemm_tiled.cu — the Linear GEMMs on subliminal's own fp32 kernels (--gemm tiled).
//
// Why a second GEMM engine beside cuBLASLt. The notebook's shapes are tiny: a 256×256 output
// is 4 of cuBLASLt's 128×128 tiles on a GPU with 132 SMs, so each of a step's 8 GEMMs runs on a
// handful of SMs, and the library adds split-K and bias-gradient kernels of its own (26 kernels
// in a teacher step; 8–25 µs per GEMM on an H200, docs/CUDNN.md). Here every GEMM is ONE kernel
// that spreads over the whole GPU:
//
//   - 64×64 output tiles, 256 threads, each thread a 4×4 block of outputs; K walked in chunks
//     of 16 staged in shared memory, the next chunk's loads in flight while this one computes;
//   - split-K: when the tiles alone cannot fill the GPU, the K range is cut into S slices, one
//     thread block each. Every slice writes its partial tile to a scratch buffer and bumps a
//     per-tile counter; the block that arrives last sums the S partials in slice order 0..S−1
//     (so the result does not depend on which block finished first: bit-for-bit reproducible)
//     and applies the epilogue;
//   - the epilogues of ops/gemm.h fused in: bias, ReLU and its bit mask (forward); the ReLU gate
//     from the mask, accumulate, and the previous layer's bias gradient (backward_input);
//     accumulate and the bias gradient (backward_weight). Bias gradients are reductions across
//     tiles too; they use the same "last block sums the partials in order" scheme.
//
// All three products are one kernel, C[m, n] = Σ_k a(m, k) · b(n, k), per model, where an
// operand is any strided [rows, K] view (element (r, k) at ptr[r·row_stride + k·k_stride]):
//
//   kind             C          m  n  k   a(m, k)            b(n, k)
//   forward          y[B,O]     b  o  i   x[b, i]            w[o, i]
//   backward_input   dx[B,I]    b  i  o   dy[b, o]           w[o, i]
//   backward_weight  dw[O,I]    o  i  b   dy[b, o]           x[b, i]
//
// What it bought, measured on an H200 (docs/PERFORMANCE.md, docs/CUDNN.md): a teacher step
// has 15 kernels instead of 26 and six of its nine batch-256 GEMMs are faster than cuBLASLt's,
// but the step as a whole only ties (123 vs 129 µs): every K chunk is a round trip to L2 and
// the split-K fix-up is serial. At batch 1024 cuBLASLt wins. So cuBLASLt stays the default.
//
// ReLU follows PyTorch exactly (z <= 0 gives 0 and bit 0, NaN stays with bit 1), like the CPU
// backend and unlike cuBLASLt's RELU_AUX, which sets the bit at an exact 0.
//
// Scratch (partial tiles) and counters live in buffers that only ever grow, outside any graph
// capture (a step's first, eager call sizes them); a grown-out buffer is kept, not freed,
// because a captured graph may still point at it. Counters are reset by the block that uses
// them, so they are zero again when the kernel ends.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "engine/cuda/check.h"
#include "engine/cuda/runtime.h"
#include "engine/error.h"
#include "ops/cuda/gemm_cuda.h"

namespace subliminal::cuda {
namespace {

constexpr int kTileM = 64, kTileN = 64, kTileK = 16;
constexpr int kBlockThreads = 256;                        // 16 × 16 threads, 4×4 outputs each
constexpr int kSmemPad = 4;                               // floats: keeps float4 rows aligned, spreads banks
constexpr int kTileFloats = kTileM * kTileN + kTileM;     // a partial tile + its row sums
constexpr int kMaxSplits = 8;                             // the last block reads at most 8 partials
static_assert(kTileM * kTileK == 4 * kBlockThreads && kTileN * kTileK == 4 * kBlockThreads,
              "each thread stages 4 elements of each operand per K chunk");

enum class Kind { forward, backward_input, backward_weight };

// A strided [rows, K] operand of one model; model z starts at ptr + z·model_stride.
struct Operand {
  const float* ptr;
  int64_t row_stride, k_stride, model_stride;
};

struct Args {
  Operand a, b;
  int64_t M, N, K;
  int m_tiles, n_tiles, splits;
  int64_t k_per_split;                 // a multiple of kTileK
  float* c;                            // [models, M, N] row-major
  bool accumulate;                     // c += result instead of c = result
  // forward
  const float* bias;                   // [models, N] or null
  bool relu;
  uint8_t* mask_out;                   // [models, M, row_bytes] when relu
  // backward_input
  const uint8_t* mask_in;              // [models, M, row_bytes] or null: gate the result
  float* column_sums;                  // [models, N] or null: Σ_m of the (gated) result
  // backward_weight
  float* row_sums;                     // [models, M] or null: Σ_k a(m, k)
  int64_t mask_row_bytes;              // bytes per mask row: roundup(N, 128) / 8
  float* partials;                     // scratch: [models·m_tiles·n_tiles·splits][kTileFloats]
  float* column_partials;              // scratch: [models·n_tiles·m_tiles][kTileN]
  int* tile_counters;                  // [models·m_tiles·n_tiles], zero between launches
  int* column_counters;                // [models·n_tiles], zero between launches
};

// Stages one K chunk of a 64-row operand slab: thread t loads 4 elements (zero outside the
// matrix). When k is the contiguous dimension, neighbouring threads walk k (16 floats in a
// row, coalesced); otherwise they walk rows.
template <bool kContiguous>
__device__ void load_chunk(const float* __restrict__ base, const Operand& op, int64_t row0, int64_t rows,
                           int64_t k0, int64_t k_end, float (&r)[4]) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int e = threadIdx.x + kBlockThreads * i;
    const int kk = kContiguous ? e % kTileK : e / kTileM;
    const int rr = kContiguous ? e / kTileK : e % kTileM;
    const int64_t row = row0 + rr, k = k0 + kk;
    r[i] = row < rows && k < k_end ? base[row * op.row_stride + k * op.k_stride] : 0.0f;
  }
}

// Writes what load_chunk loaded into shared memory as s[k][row] (k-major, so the compute loop
// reads 4 consecutive rows as one float4).
template <bool kContiguous>
__device__ void store_chunk(float (*s)[kTileM + kSmemPad], const float (&r)[4]) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int e = threadIdx.x + kBlockThreads * i;
    const int kk = kContiguous ? e % kTileK : e / kTileM;
    const int rr = kContiguous ? e / kTileK : e % kTileM;
    s[kk][rr] = r[i];
  }
}

// Which operand layouts each kind has (see the table at the top).
template <Kind kind>
struct Layout {
  static constexpr bool a_k_contiguous = kind != Kind::backward_weight;  // x[b,i], dy[b,o] | dy[b,o]ᵀ
  static constexpr bool b_k_contiguous = kind == Kind::forward;          // w[o,i] | w[o,i]ᵀ, x[b,i]ᵀ
};

// Grid: (n_tiles, m_tiles, models·splits). Block: 256 threads.
template <Kind kind>
__global__ void __launch_bounds__(kBlockThreads) tiled_gemm_kernel(Args p) {
  __shared__ __align__(16) float a_s[kTileK][kTileM + kSmemPad];  // a(m0 + r, k0 + k) at [k][r]
  __shared__ __align__(16) float b_s[kTileK][kTileN + kSmemPad];  // b(n0 + c, k0 + k) at [k][c]
  __shared__ float c_s[kTileM][kTileN + 1];                       // the finished tile, for reductions
  __shared__ bool last_block;

  const int model = blockIdx.z / p.splits, split = blockIdx.z % p.splits;
  const int m_tile = blockIdx.y, n_tile = blockIdx.x;
  const int64_t m0 = int64_t(m_tile) * kTileM, n0 = int64_t(n_tile) * kTileN;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;  // this thread: rows ty·4.., columns tx·4..
  const float* a_base = p.a.ptr + model * p.a.model_stride;
  const float* b_base = p.b.ptr + model * p.b.model_stride;
  const int64_t k_begin = split * p.k_per_split, k_end = min(p.K, k_begin + p.k_per_split);
  // backward_weight's bias gradient Σ_k a(m, k): the n_tile 0 blocks sum their staged a chunks.
  const bool sums_rows = kind == Kind::backward_weight && p.row_sums && n_tile == 0;

  float acc[4][4] = {};
  float row_sum = 0.0f;  // thread t < 64: row m0 + t
  float a_next[4], b_next[4];
  load_chunk<Layout<kind>::a_k_contiguous>(a_base, p.a, m0, p.M, k_begin, k_end, a_next);
  load_chunk<Layout<kind>::b_k_contiguous>(b_base, p.b, n0, p.N, k_begin, k_end, b_next);
  for (int64_t k0 = k_begin; k0 < k_end; k0 += kTileK) {
    store_chunk<Layout<kind>::a_k_contiguous>(a_s, a_next);
    store_chunk<Layout<kind>::b_k_contiguous>(b_s, b_next);
    __syncthreads();
    if (k0 + kTileK < k_end) {  // the next chunk's loads overlap this chunk's arithmetic
      load_chunk<Layout<kind>::a_k_contiguous>(a_base, p.a, m0, p.M, k0 + kTileK, k_end, a_next);
      load_chunk<Layout<kind>::b_k_contiguous>(b_base, p.b, n0, p.N, k0 + kTileK, k_end, b_next);
    }
#pragma unroll
    for (int k = 0; k < kTileK; ++k) {
      const float4 a4 = *reinterpret_cast<const float4*>(&a_s[k][ty * 4]);
      const float4 b4 = *reinterpret_cast<const float4*>(&b_s[k][tx * 4]);
      const float av[4] = {a4.x, a4.y, a4.z, a4.w}, bv[4] = {b4.x, b4.y, b4.z, b4.w};
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
    if (sums_rows && threadIdx.x < kTileM)
      for (int k = 0; k < kTileK; ++k) row_sum += a_s[k][threadIdx.x];
    __syncthreads();
  }

  // ---- split-K: the last of the S blocks of this tile sums the partials in slice order ------
  const int64_t tile_id = (int64_t(model) * p.m_tiles + m_tile) * p.n_tiles + n_tile;
  if (p.splits > 1) {
    float* mine = p.partials + (tile_id * p.splits + split) * kTileFloats;
#pragma unroll
    for (int i = 0; i < 4; ++i)
      *reinterpret_cast<float4*>(&mine[(ty * 4 + i) * kTileN + tx * 4]) =
          make_float4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]);
    if (sums_rows && threadIdx.x < kTileM) mine[kTileM * kTileN + threadIdx.x] = row_sum;
    __threadfence();  // our partial is visible device-wide before the counter says so
    __syncthreads();
    if (threadIdx.x == 0) last_block = atomicAdd(&p.tile_counters[tile_id], 1) == p.splits - 1;
    __syncthreads();
    if (!last_block) return;
    __threadfence();
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
    row_sum = 0.0f;
    for (int s = 0; s < p.splits; ++s) {
      const float* part = p.partials + (tile_id * p.splits + s) * kTileFloats;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float4 v = __ldcg(reinterpret_cast<const float4*>(&part[(ty * 4 + i) * kTileN + tx * 4]));
        acc[i][0] += v.x, acc[i][1] += v.y, acc[i][2] += v.z, acc[i][3] += v.w;
      }
      if (sums_rows && threadIdx.x < kTileM) row_sum += __ldcg(&part[kTileM * kTileN + threadIdx.x]);
    }
    if (threadIdx.x == 0) p.tile_counters[tile_id] = 0;  // ready for the next GEMM on the stream
  }

  // ---- epilogue --------------------------------------------------------------------------------
  float* c = p.c + int64_t(model) * p.M * p.N;
  const int64_t mask_model = int64_t(model) * p.M * p.mask_row_bytes;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t m = m0 + ty * 4 + i;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t n = n0 + tx * 4 + j;
      const bool inside = m < p.M && n < p.N;
      float v = acc[i][j];
      if (inside) {
        if (kind == Kind::forward) {
          if (p.bias) v += p.bias[int64_t(model) * p.N + n];
          if (p.relu) v = v <= 0.0f ? 0.0f : v;  // NaN stays NaN
        }
        if (kind == Kind::backward_input && p.mask_in &&
            !((p.mask_in[mask_model + m * p.mask_row_bytes + (n >> 3)] >> (n & 7)) & 1u))
          v = 0.0f;
        if (p.accumulate) v += c[m * p.N + n];
        c[m * p.N + n] = v;
      }
      c_s[ty * 4 + i][tx * 4 + j] = inside ? v : 0.0f;
    }
  }

  if (kind == Kind::backward_weight) {
    if (sums_rows && threadIdx.x < kTileM && m0 + threadIdx.x < p.M)
      p.row_sums[int64_t(model) * p.M + m0 + threadIdx.x] = row_sum;
    return;
  }
  const bool writes_mask = kind == Kind::forward && p.relu;
  const bool sums_columns = kind == Kind::backward_input && p.column_sums;
  if (!writes_mask && !sums_columns) return;
  __syncthreads();  // c_s complete

  if (writes_mask) {
    // 64 rows × 8 bytes of mask; bit = !(y == 0) on the post-ReLU y, which is !(z <= 0) on z.
    for (int e = threadIdx.x; e < kTileM * (kTileN / 8); e += kBlockThreads) {
      const int r = e / (kTileN / 8), byte = e % (kTileN / 8);
      const int64_t m = m0 + r, n_first = n0 + byte * 8;
      if (m >= p.M || n_first >= p.N) continue;
      unsigned bits = 0;
      for (int t = 0; t < 8; ++t)
        if (n_first + t < p.N && !(c_s[r][byte * 8 + t] == 0.0f)) bits |= 1u << t;
      p.mask_out[mask_model + m * p.mask_row_bytes + (n_first >> 3)] = uint8_t(bits);
    }
    return;
  }

  // backward_input: column sums of this tile (rows in order), then across the m tiles.
  float column_sum = 0.0f;
  if (threadIdx.x < kTileN)
    for (int r = 0; r < kTileM; ++r) column_sum += c_s[r][threadIdx.x];
  const int64_t n = n0 + threadIdx.x;
  float* column_out = p.column_sums + int64_t(model) * p.N;
  if (p.m_tiles == 1) {
    if (threadIdx.x < kTileN && n < p.N) column_out[n] = column_sum;
    return;
  }
  const int64_t group = int64_t(model) * p.n_tiles + n_tile;  // the m_tiles blocks of this column strip
  if (threadIdx.x < kTileN) p.column_partials[(group * p.m_tiles + m_tile) * kTileN + threadIdx.x] = column_sum;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last_block = atomicAdd(&p.column_counters[group], 1) == p.m_tiles - 1;
  __syncthreads();
  if (!last_block) return;
  __threadfence();
  if (threadIdx.x < kTileN && n < p.N) {
    float total = 0.0f;
    for (int t = 0; t < p.m_tiles; ++t) total += __ldcg(&p.column_partials[(group * p.m_tiles + t) * kTileN + threadIdx.x]);
    column_out[n] = total;
  }
  if (threadIdx.x == 0) p.column_counters[group] = 0;
}

// ---- scratch ---------------------------------------------------------------------------------

// Device buffers that only grow. Growing happens on a step's eager first call; inside a graph
// capture the sizes are already there (same shapes), and a request that is not is an error
// rather than a cudaMalloc the capture would reject.
class Scratch {
 public:
  float* floats(size_t count) { return static_cast<float*>(grow(floats_, float_bytes_, count * sizeof(float), false)); }
  int* counters(size_t count) { return static_cast<int*>(grow(counters_, counter_bytes_, count * sizeof(int), true)); }

 private:
  void* grow(void*& buffer, size_t& bytes, size_t needed, bool zeroed) {
    if (needed <= bytes) return buffer;
    if (Runtime::get().capturing())
      throw DeviceError("tiled GEMM: scratch of " + std::to_string(needed) +
                        " bytes needed inside a CUDA graph capture (the step's eager first call should have sized it)");
    const size_t grown = std::max(needed, 2 * bytes);
    void* fresh = nullptr;
    CUDA_CHECK(cudaMalloc(&fresh, grown));
    if (zeroed) CUDA_CHECK(cudaMemsetAsync(fresh, 0, grown, Runtime::get().stream()));
    if (buffer) retired_.push_back(buffer);  // a captured graph may still use it: keep it
    buffer = fresh;
    bytes = grown;
    return buffer;
  }
  void* floats_ = nullptr;
  void* counters_ = nullptr;
  size_t float_bytes_ = 0, counter_bytes_ = 0;
  std::vector<void*> retired_;
};

Scratch& scratch() {
  static Scratch* s = new Scratch;  // never destroyed, like the runtime (engine/cuda/runtime.h)
  return *s;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Fills in tiles, splits and scratch, then launches. Splits: enough thread blocks for two per
// SM, at least two K chunks per slice, at most kMaxSplits slices.
template <Kind kind>
void launch(Args p, int64_t models) {
  if (models == 0 || p.M == 0 || p.N == 0) return;
  p.m_tiles = int(ceil_div(p.M, kTileM));
  p.n_tiles = int(ceil_div(p.N, kTileN));
  const int64_t tiles = models * p.m_tiles * p.n_tiles;
  const int64_t chunks = std::max<int64_t>(1, ceil_div(p.K, kTileK));
  const int64_t target = 2 * int64_t(Runtime::get().properties().multiProcessorCount);
  int64_t splits = tiles >= target ? 1 : std::min<int64_t>({ceil_div(target, tiles), chunks / 2, kMaxSplits});
  splits = std::max<int64_t>(splits, 1);
  while (splits > 1 && models * splits > 65535) --splits;
  if (models > 65535 || p.m_tiles > 65535)
    throw ShapeError("tiled GEMM: " + std::to_string(models) + " models × " + std::to_string(p.M) +
                     " rows is beyond one launch's grid");
  const int64_t chunks_per_split = ceil_div(chunks, splits);
  p.k_per_split = chunks_per_split * kTileK;
  p.splits = int(ceil_div(chunks, chunks_per_split));

  const bool column_fixup = kind == Kind::backward_input && p.column_sums && p.m_tiles > 1;
  const int64_t tile_counters = p.splits > 1 ? tiles : 0;
  const int64_t column_groups = column_fixup ? models * p.n_tiles : 0;
  const int64_t partial_floats = (p.splits > 1 ? tiles * p.splits * kTileFloats : 0) +
                                 (column_fixup ? column_groups * p.m_tiles * kTileN : 0);
  if (partial_floats > 0) {
    float* base = scratch().floats(size_t(partial_floats));
    p.partials = base;
    p.column_partials = base + (p.splits > 1 ? tiles * p.splits * kTileFloats : 0);
  }
  if (tile_counters + column_groups > 0) {
    int* base = scratch().counters(size_t(tile_counters + column_groups));
    p.tile_counters = base;
    p.column_counters = base + tile_counters;
  }
  const dim3 grid(unsigned(p.n_tiles), unsigned(p.m_tiles), unsigned(models * p.splits));
  tiled_gemm_kernel<kind><<<grid, kBlockThreads, 0, Runtime::get().stream()>>>(p);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

void tiled_linear_forward(const float* x, const float* w, const float* bias, bool relu, float* y,
                          uint8_t* mask, gemm::Dims d) {
  Args p{};
  p.a = {x, d.in, 1, d.batch * d.in};   // a(m=b, k=i) = x[b, i]
  p.b = {w, d.in, 1, d.out * d.in};     // b(n=o, k=i) = w[o, i]
  p.M = d.batch, p.N = d.out, p.K = d.in;
  p.c = y;
  p.bias = bias;
  p.relu = relu;
  p.mask_out = mask;
  p.mask_row_bytes = gemm::mask_row_bits(d.out) / 8;
  launch<Kind::forward>(p, d.models);
}

void tiled_linear_backward_input(const float* dy, const float* w, const uint8_t* prev_mask, float* dx,
                                 float* dbias_prev, bool accumulate, gemm::Dims d) {
  Args p{};
  p.a = {dy, d.out, 1, d.batch * d.out};  // a(m=b, k=o) = dy[b, o]
  p.b = {w, 1, d.in, d.out * d.in};       // b(n=i, k=o) = w[o, i]
  p.M = d.batch, p.N = d.in, p.K = d.out;
  p.c = dx;
  p.accumulate = accumulate;
  p.mask_in = prev_mask;
  p.column_sums = dbias_prev;
  p.mask_row_bytes = gemm::mask_row_bits(d.in) / 8;
  launch<Kind::backward_input>(p, d.models);
}

void tiled_linear_backward_weight(const float* dy, const float* x, float* dw, bool accumulate, float* dbias,
                                  gemm::Dims d) {
  Args p{};
  p.a = {dy, 1, d.out, d.batch * d.out};  // a(m=o, k=b) = dy[b, o]
  p.b = {x, 1, d.in, d.batch * d.in};     // b(n=i, k=b) = x[b, i]
  p.M = d.out, p.N = d.in, p.K = d.batch;
  p.c = dw;
  p.accumulate = accumulate;
  p.row_sums = dbias;
  launch<Kind::backward_weight>(p, d.models);
}

}  // namespace subliminal::cuda
