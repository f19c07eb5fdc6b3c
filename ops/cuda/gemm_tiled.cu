// ops/cuda/gemm_tiled.cu — the Linear GEMMs on subliminal's own fp32 kernels (--gemm tiled).
//
// Why a second GEMM engine beside cuBLASLt. The notebook's shapes are tiny: a 256×256 output
// is 4 of cuBLASLt's 128×128 tiles on a GPU with 132 SMs, so each of a step's 8 GEMMs runs on a
// handful of SMs, and the library adds split-K and bias-gradient kernels of its own (26 kernels
// in a teacher step; 8–25 µs per GEMM on an H200, docs/CUDNN.md). Here every GEMM is ONE kernel
// that spreads over the whole GPU:
//
//   - 64×64 output tiles, 256 threads, each thread a 4×4 block of outputs; K walked in chunks
//     of 16 staged in shared memory by cp.async, three chunks in flight while one computes;
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
// The tile code itself (shared with the fused training step) is in ops/cuda/tile_gemm.cuh,
// with the table of how each product maps onto C[m, n] = Σ_k a(m, k) · b(n, k).
//
// What it bought, measured on an H200 (docs/PERFORMANCE.md, docs/CUDNN.md): a teacher step
// has 15 kernels instead of 26; of bench_layers' nine batch-256 GEMMs (three per layer, one more
// than a step runs) eight were faster than cuBLASLt's on the H200 (docs/results/h200/layers.json)
// and six on the H100 (runs 4 and 5); but the step as a whole only ties (123 vs 129 µs, and 120 vs 117 in
// the later session): every K chunk was a round trip to L2
// (one chunk was in flight then, in registers; now three are, in shared memory, not yet
// measured) and the split-K fix-up is serial. At batch 1024 cuBLASLt wins. So cuBLASLt stays
// the default.
//
// ReLU follows PyTorch exactly (z <= 0 gives 0 and bit 0, NaN stays with bit 1), like the CPU
// backend and unlike cuBLASLt's RELU_AUX, which sets the bit at an exact 0.
//
// Scratch (partial tiles) and counters live in buffers that only ever grow, outside any graph
// capture (a step's first, eager call sizes them); a grown-out buffer is kept, not freed,
// because a captured graph may still point at it. Counters are reset by the block that uses
// them, so they are zero again when the kernel ends.
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "engine/cuda/check.h"
#include "engine/cuda/runtime.h"
#include "engine/error.h"
#include "ops/cuda/gemm_cuda.h"
#include "ops/cuda/grow_only_buffer.h"
#include "ops/cuda/tile_gemm.cuh"

namespace subliminal::cuda {
namespace tile {
namespace {

// The split-K scratch: partial tiles, and the counters that their users leave at zero.
GrowOnlyBuffer& scratch_floats() {
  static GrowOnlyBuffer* b = new GrowOnlyBuffer("tiled GEMM: split-K scratch", false);  // never destroyed
  return *b;
}
GrowOnlyBuffer& scratch_counters() {
  static GrowOnlyBuffer* b = new GrowOnlyBuffer("tiled GEMM: split-K counters", true);
  return *b;
}

// sm_80's ptxas, left to its own register target for this kernel (80 registers, for three
// blocks an SM), spills 12 bytes; told that two blocks an SM is enough (what plan() sizes the
// grid for), it takes 112 registers and spills nothing. sm_90's does not spill at its own
// target, which is what the H100/H200 runs measured, so it keeps it.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
#define TILED_GEMM_LAUNCH_BOUNDS __launch_bounds__(kBlockThreads, 2)
#else
#define TILED_GEMM_LAUNCH_BOUNDS __launch_bounds__(kBlockThreads)
#endif

// One GEMM per launch: grid = its work items, one block each.
__global__ void TILED_GEMM_LAUNCH_BOUNDS tiled_gemm_kernel(Gemm g) {
  __shared__ __align__(16) Smem sm;
  run_item(g, blockIdx.x, sm);
}

// Plans (enough items for two blocks per SM), points the scratch, launches.
void launch(Gemm g) {
  if (g.models == 0 || g.M == 0 || g.N == 0) return;
  plan(g, 2 * int64_t(Runtime::get().properties().multiProcessorCount));
  if (g.items >= int64_t(1) << 31)
    throw ShapeError("tiled GEMM: " + std::to_string(g.items) + " work items is beyond one launch's grid");
  const int64_t floats = scratch_floats(g), counters = scratch_counters(g);
  assign_scratch(g, floats > 0 ? grow_scratch_floats(floats) : nullptr,
                 counters > 0 ? grow_scratch_counters(counters) : nullptr);
  tiled_gemm_kernel<<<unsigned(g.items), kBlockThreads, 0, Runtime::get().stream()>>>(g);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

float* grow_scratch_floats(int64_t count) {
  return static_cast<float*>(scratch_floats().reserve(size_t(count) * sizeof(float)));
}
int* grow_scratch_counters(int64_t count) {
  return static_cast<int*>(scratch_counters().reserve(size_t(count) * sizeof(int)));
}

}  // namespace tile

using tile::Gemm;

void tiled_linear_forward(const float* x, const float* w, const float* bias, bool relu, float* y,
                          uint8_t* mask, gemm::Dims d) {
  Gemm g = tile::forward_product(x, w, y, d.models, d.batch, d.in, d.out);
  g.bias = bias;
  g.relu = relu;
  g.mask_out = mask;
  g.mask_row_bytes = gemm::mask_row_bits(d.out) / 8;
  tile::launch(g);
}

void tiled_linear_backward_input(const float* dy, const float* w, const uint8_t* prev_mask, float* dx,
                                 float* dbias_prev, bool accumulate, gemm::Dims d) {
  Gemm g = tile::backward_input_product(dy, w, dx, d.models, d.batch, d.in, d.out);
  g.accumulate = accumulate;
  g.mask_in = prev_mask;
  g.column_sums = dbias_prev;
  g.mask_row_bytes = gemm::mask_row_bits(d.in) / 8;
  tile::launch(g);
}

void tiled_linear_backward_weight(const float* dy, const float* x, float* dw, bool accumulate, float* dbias,
                                  gemm::Dims d) {
  Gemm g = tile::backward_weight_product(dy, x, dw, d.models, d.batch, d.in, d.out);
  g.accumulate = accumulate;
  g.row_sums = dbias;
  tile::launch(g);
}

}  // namespace subliminal::cuda
