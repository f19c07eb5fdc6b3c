// tests/test_tile_emulated.cpp — our GEMM tile (ops/cuda/tile_gemm.cuh) run by host threads.
//
// The tile is the device code under both `--gemm tiled` and the fused training step. Here it
// is compiled for the host against tests/simt/cuda_runtime.h (a block = 256 std::threads with
// a barrier for __syncthreads, several blocks at once) and checked on every machine, GPU or
// not, against a float64 reference:
//   - each kind with its epilogues (bias + ReLU + mask; gate by mask or by values + column
//     sums from one row tile and across several, more than the hand-off loads at once; row
//     sums), odd sizes, two models, strided operands laid out as the fused step lays them out;
//   - split-K: the slices' partial tiles, the "last one sums in order" hand-off, and that the
//     result is the same bits whatever order the work items run in and however many blocks,
//     and the same bits as the slices run one by one and added in slice order (TileSplitK);
//   - plan(): whole K chunks, at most max_splits (kMaxSplits), at least min_chunks a slice, one
//     wave of the grid (TilePlan);
//   - outputs poisoned with NaN before each run, so an element the tile forgets to write fails;
//     the scratch counters left at zero for the next GEMM.
// The GPU suite (tests/test_cuda_ops.cpp, CudaTiledGemm, CudaFusedStep) runs the same code on
// the real thing.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "ops/cuda/tile_gemm.cuh"
#include "tests/simt/compare.h"

namespace subliminal::cuda::tile {
namespace {

using simt::relative_error;
using simt::same_bits;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// A strided operand's storage: element (model, r, k) at r·row_stride + k·k_stride.
struct Stored {
  std::vector<float> values;
  Operand op;
  float at(int64_t model, int64_t r, int64_t k) const {
    return values[size_t(model * op.model_stride + r * op.row_stride + k * op.k_stride)];
  }
};

// rows × K per model, stored row-major as [models, rows, K] (k contiguous) or as
// [models, K, rows] (rows contiguous), filled with values in [-1, 1).
Stored make_operand(int64_t models, int64_t rows, int64_t K, bool k_contiguous, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  Stored s;
  s.values.resize(size_t(models * rows * K));
  for (float& v : s.values) v = u(rng);
  s.op = k_contiguous ? Operand{nullptr, K, 1, rows * K} : Operand{nullptr, 1, rows, rows * K};
  s.op.ptr = s.values.data();
  return s;
}

std::vector<float> random_vector(int64_t n, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = u(rng);
  return v;
}

// What a GEMM writes: C, the mask, the column or row sums.
struct Outputs {
  std::vector<float> c, column_sums, row_sums;
  std::vector<uint8_t> mask;
};

// Runs every work item of the planned GEMM `g` on `blocks` emulated blocks, block b taking
// items order[b], order[b + blocks], … (the persistent kernels' grid-stride loop, with the
// order shuffled by the caller). Scratch comes fresh: NaN floats, zeroed counters; the
// counters must come back zeroed.
void run_gemm(Gemm g, unsigned blocks, const std::vector<int64_t>& order) {
  std::vector<float> floats(size_t(std::max<int64_t>(scratch_floats(g), 1)), kNaN);
  std::vector<int> counters(size_t(std::max<int64_t>(scratch_counters(g), 1)), 0);
  assign_scratch(g, floats.data(), counters.data());
  std::vector<Smem> smem = simt::garbage_shared_memory<Smem>(blocks);
  simt::launch(blocks, kBlockThreads, [&] {
    for (size_t i = blockIdx.x; i < order.size(); i += gridDim.x) run_item(g, order[i], smem[blockIdx.x]);
  });
  EXPECT_TRUE(std::all_of(counters.begin(), counters.end(), [](int c) { return c == 0; }))
      << "the tile counters must be left at zero for the next GEMM";
}

std::vector<int64_t> item_order(const Gemm& g, int how, unsigned seed) {
  std::vector<int64_t> order(size_t(g.items));
  std::iota(order.begin(), order.end(), 0);
  if (how == 1) std::reverse(order.begin(), order.end());
  if (how == 2) std::shuffle(order.begin(), order.end(), std::mt19937(seed));
  return order;
}

// One case: a GEMM of one kind with the epilogues switched on by the flags.
struct Case {
  Kind kind;
  int64_t models, M, N, K;
  int64_t target_items;  // plan(): split K until this many items
  bool bias_relu_mask;   // forward
  bool gate_by_mask;     // backward_input (else gate by values)
  bool column_sums;      // backward_input
  bool row_sums;         // backward_weight
  bool accumulate;
  bool bias_only = false;  // forward: bias without ReLU or mask (the output layer)
};

class TileEmulated : public ::testing::Test {
 protected:
  // Builds the case's operands and GEMM, runs it once per (blocks, order) and checks each run
  // against float64 and against the first run bit for bit.
  void check(const Case& k) {
    std::mt19937 rng(1234 + unsigned(k.M * 7 + k.N * 3 + k.K));
    const bool a_kc = k.kind != Kind::backward_weight, b_kc = k.kind == Kind::forward;
    Stored a = make_operand(k.models, k.M, k.K, a_kc, rng), b = make_operand(k.models, k.N, k.K, b_kc, rng);
    const std::vector<float> bias = random_vector(k.models * k.N, rng);
    const std::vector<float> initial_c = random_vector(k.models * k.M * k.N, rng);  // for accumulate
    const int64_t mask_row_bytes = (k.N + 127) / 128 * 16;
    // The backward gate: post-ReLU values with exact zeros, and the same as mask bits.
    std::vector<float> gate_values(size_t(k.models * k.M * k.N));
    std::vector<uint8_t> gate_mask(size_t(k.models * k.M * mask_row_bytes), 0);
    for (int64_t z = 0; z < k.models; ++z)
      for (int64_t m = 0; m < k.M; ++m)
        for (int64_t n = 0; n < k.N; ++n) {
          const bool open = rng() % 3 != 0;
          gate_values[size_t((z * k.M + m) * k.N + n)] = open ? 0.5f + float(rng() % 7) : 0.0f;
          if (open) gate_mask[size_t((z * k.M + m) * mask_row_bytes + n / 8)] |= uint8_t(1u << (n % 8));
        }

    // ---- the float64 reference ---------------------------------------------------------------
    std::vector<double> ref_c(size_t(k.models * k.M * k.N)), ref_columns(size_t(k.models * k.N), 0.0),
        ref_rows(size_t(k.models * k.M), 0.0);
    for (int64_t z = 0; z < k.models; ++z)
      for (int64_t m = 0; m < k.M; ++m)
        for (int64_t n = 0; n < k.N; ++n) {
          double v = 0.0;
          for (int64_t kk = 0; kk < k.K; ++kk) v += double(a.at(z, m, kk)) * double(b.at(z, n, kk));
          const size_t e = size_t((z * k.M + m) * k.N + n);
          if (k.bias_relu_mask) v = std::max(v + double(bias[size_t(z * k.N + n)]), 0.0);
          if (k.bias_only) v += double(bias[size_t(z * k.N + n)]);
          if (k.kind == Kind::backward_input && gate_values[e] == 0.0f) v = 0.0;
          if (k.accumulate) v += double(initial_c[e]);
          ref_c[e] = v;
          ref_columns[size_t(z * k.N + n)] += v;
        }
    for (int64_t z = 0; z < k.models; ++z)
      for (int64_t m = 0; m < k.M; ++m)
        for (int64_t kk = 0; kk < k.K; ++kk) ref_rows[size_t(z * k.M + m)] += double(a.at(z, m, kk));

    // ---- the GEMM, run several ways -----------------------------------------------------------
    // (blocks, item order, parallel fix-up): the last way, where K is split and no column sums
    // span the row tiles, finishes each tile in bands, every item at once on a block of its own
    // (blocks = 0: one per item), as the fused step does.
    std::vector<Outputs> runs;
    for (const auto& [blocks, how, parallel] : std::vector<std::tuple<unsigned, int, bool>>{
             {1, 0, false}, {3, 1, false}, {2, 2, false}, {0, 2, true}}) {
      if (blocks == 1 && simt::sanitizer_run()) continue;  // the sanitizers watch the runs on several
      Outputs out;
      out.c = k.accumulate ? initial_c : std::vector<float>(initial_c.size(), kNaN);
      out.column_sums.assign(size_t(k.models * k.N), kNaN);
      out.row_sums.assign(size_t(k.models * k.M), kNaN);
      out.mask.assign(size_t(k.models * k.M * mask_row_bytes), 0xA5);
      Gemm g{};
      g.kind = k.kind;
      g.a = a.op, g.b = b.op;
      g.models = k.models, g.M = k.M, g.N = k.N, g.K = k.K;
      g.c = out.c.data();
      g.accumulate = k.accumulate;
      g.mask_row_bytes = mask_row_bytes;
      if (k.bias_relu_mask) g.bias = bias.data(), g.relu = true, g.mask_out = out.mask.data();
      if (k.bias_only) g.bias = bias.data();
      if (k.kind == Kind::backward_input) {
        if (k.gate_by_mask)
          g.mask_in = gate_mask.data();
        else
          g.gate_values = gate_values.data();
        if (k.column_sums) g.column_sums = out.column_sums.data();
      }
      if (k.row_sums) g.row_sums = out.row_sums.data();
      plan(g, k.target_items);
      if (runs.empty()) planned_splits = g.splits, planned_m_tiles = g.m_tiles;
      if (parallel && (g.splits == 1 || g.column_sums)) continue;
      g.parallel_fixup = parallel;
      run_gemm(g, blocks > 0 ? blocks : unsigned(g.items), item_order(g, how, 99u + blocks));
      runs.push_back(std::move(out));
      ran_parallel = ran_parallel || parallel;
    }

    const std::string what = "kind " + std::to_string(int(k.kind)) + ", " + std::to_string(k.M) + "×" +
                             std::to_string(k.N) + "×" + std::to_string(k.K) + ", " +
                             std::to_string(planned_splits) + " splits";
    const Outputs& first = runs.front();
    EXPECT_LE(relative_error(first.c.data(), ref_c), 1e-5) << what << ": C";
    if (k.column_sums) {
      EXPECT_LE(relative_error(first.column_sums.data(), ref_columns), 1e-5) << what << ": column sums";
    }
    if (k.row_sums) {
      EXPECT_LE(relative_error(first.row_sums.data(), ref_rows), 1e-5) << what << ": row sums";
    }
    if (!k.bias_relu_mask) {  // no mask asked for: none written
      EXPECT_TRUE(std::all_of(first.mask.begin(), first.mask.end(), [](uint8_t b) { return b == 0xA5; }))
          << what << ": a mask written";
    }
    if (k.bias_relu_mask) {
      // Bit n of row m is "y ≠ 0" on the written y. The byte holding bit N−1 is written whole,
      // its bits past N as 0; the bytes after it keep what they held (0xA5: the padding is
      // never read, so never written).
      for (int64_t z = 0; z < k.models; ++z)
        for (int64_t m = 0; m < k.M; ++m) {
          const size_t row = size_t((z * k.M + m) * mask_row_bytes);
          for (int64_t n = 0; n < k.N; ++n) {
            const bool bit = (first.mask[row + size_t(n / 8)] >> (n % 8)) & 1u;
            ASSERT_EQ(bit, first.c[size_t((z * k.M + m) * k.N + n)] != 0.0f)
                << what << ": mask bit " << m << "," << n;
          }
          for (int64_t n = k.N; n % 8 != 0; ++n)
            ASSERT_EQ((first.mask[row + size_t(n / 8)] >> (n % 8)) & 1u, 0u)
                << what << ": padding bit " << m << "," << n;
          for (int64_t byte = (k.N + 7) / 8; byte < mask_row_bytes; ++byte)
            ASSERT_EQ(first.mask[row + size_t(byte)], 0xA5) << what << ": padding byte " << m << "," << byte;
        }
    }
    for (size_t r = 1; r < runs.size(); ++r) {
      EXPECT_TRUE(same_bits(runs[r].c, first.c))
          << what << ": C differs between item orders (run " << r << ")";
      if (k.column_sums) {
        EXPECT_TRUE(same_bits(runs[r].column_sums, first.column_sums)) << what << ": column sums";
      }
      if (k.row_sums) {
        EXPECT_TRUE(same_bits(runs[r].row_sums, first.row_sums)) << what << ": row sums";
      }
      EXPECT_EQ(runs[r].mask, first.mask) << what << ": mask";
    }
  }

  int planned_splits = 0, planned_m_tiles = 0;
  bool ran_parallel = false;  // the last run (bands) happened
};

// Forward with bias, ReLU and mask: K not a multiple of 16, partial row and column tiles.
TEST_F(TileEmulated, ForwardBiasReluMaskSplitK) {
  check({Kind::forward, 2, 70, 45, 100, 64, true, false, false, false, false});
  EXPECT_EQ(planned_splits, 3);
  EXPECT_TRUE(ran_parallel);
}

// The output layer's forward: a bias and no ReLU (so no mask), split K.
TEST_F(TileEmulated, ForwardBiasWithoutReluSplitK) {
  check({Kind::forward, 2, 70, 13, 100, 64, false, false, false, false, false, /*bias_only=*/true});
  EXPECT_GT(planned_splits, 1);
}

TEST_F(TileEmulated, ForwardWithoutSplitK) {
  check({Kind::forward, 2, 70, 130, 37, 1, true, false, false, false, false});
  EXPECT_EQ(planned_splits, 1);
}

// The most slices the planner makes, and the fix-up summing all of them.
TEST_F(TileEmulated, ForwardMaxSplits) {
  check({Kind::forward, 1, 33, 20, 600, 1000, false, false, false, false, false});
  EXPECT_EQ(planned_splits, kMaxSplits);
  EXPECT_TRUE(ran_parallel);
}

// Input gradient gated by post-ReLU values, column sums across 2 row tiles (the previous
// layer's bias gradient), split K.
TEST_F(TileEmulated, BackwardInputGateValuesColumnSums) {
  check({Kind::backward_input, 2, 130, 45, 77, 64, false, false, true, false, false});
  EXPECT_GT(planned_splits, 1);
  EXPECT_EQ(planned_m_tiles, 3);
}

TEST_F(TileEmulated, BackwardInputGateMaskColumnSums) {
  check({Kind::backward_input, 2, 70, 200, 13, 1, false, true, true, false, false});
}

// Gated by mask bits, with column sums across row tiles, split K: the three at once, as the
// --gemm tiled backward pass of a hidden layer runs them.
TEST_F(TileEmulated, BackwardInputGateMaskColumnSumsSplitK) {
  check({Kind::backward_input, 2, 130, 45, 77, 64, false, true, true, false, false});
  EXPECT_GT(planned_splits, 1);
  EXPECT_EQ(planned_m_tiles, 3);
}

// Column sums of one row tile, written by its items directly (no hand-off) …
TEST_F(TileEmulated, BackwardInputColumnSumsOneRowTile) {
  check({Kind::backward_input, 2, 40, 45, 30, 1, false, false, true, false, false});
  EXPECT_EQ(planned_m_tiles, 1);
}

// … and across more row tiles than the hand-off loads at once (kFixupBatch)
TEST_F(TileEmulated, BackwardInputColumnSumsFiveRowTiles) {
  check({Kind::backward_input, 1, 300, 20, 16, 1, false, true, true, false, false});
  EXPECT_EQ(planned_m_tiles, 5);
  EXPECT_GT(planned_m_tiles, kFixupBatch);
}

// Split tiles of two models finished in bands (no column sums: the parallel fix-up), gated by
// mask bits and by values: each band reads its own model's gate.
TEST_F(TileEmulated, BackwardInputGateMaskInBands) {
  check({Kind::backward_input, 2, 40, 45, 64, 64, false, true, false, false, false});
  EXPECT_GT(planned_splits, 1);
  EXPECT_TRUE(ran_parallel);
}

TEST_F(TileEmulated, BackwardInputGateValuesInBands) {
  check({Kind::backward_input, 2, 40, 45, 64, 64, false, false, false, false, false});
  EXPECT_GT(planned_splits, 1);
  EXPECT_TRUE(ran_parallel);
}

TEST_F(TileEmulated, BackwardInputAccumulates) {
  check({Kind::backward_input, 1, 64, 64, 64, 16, false, false, false, false, true});
}

// Weight gradient with this layer's bias gradient as row sums, K = the batch, split.
TEST_F(TileEmulated, BackwardWeightRowSumsSplitK) {
  check({Kind::backward_weight, 2, 45, 70, 257, 64, false, false, false, true, false});
  EXPECT_GT(planned_splits, 1);
  EXPECT_TRUE(ran_parallel);
}

TEST_F(TileEmulated, BackwardWeightAccumulatesWithoutSplitK) {
  check({Kind::backward_weight, 1, 13, 100, 50, 1, false, false, false, true, true});
}

// Accumulating into dw with K split: the fix-up's sum of the slices, then added to what dw held.
TEST_F(TileEmulated, BackwardWeightAccumulatesSplitK) {
  check({Kind::backward_weight, 1, 13, 100, 130, 64, false, false, false, true, true});
  EXPECT_GT(planned_splits, 1);
}

// The fix-up adds the slices' partial tiles (and partial row sums) in slice order, starting
// from zero: each slice run alone — a one-slice GEMM over its part of K — and the results
// summed here in float in that order give the split GEMM's bits exactly (a fix-up in any other
// order would not). A weight gradient with its bias gradient, as the backward pass has it.
TEST(TileSplitK, AddsThePartialsInSliceOrder) {
  std::mt19937 rng(5);
  const int64_t M = 33, N = 20, K = 600;
  const Stored a = make_operand(1, M, K, false, rng), b = make_operand(1, N, K, false, rng);
  auto gemm_over = [&](int64_t k0, int64_t k_len, Outputs& out) {
    out.c.assign(static_cast<size_t>(M * N), kNaN);
    out.row_sums.assign(static_cast<size_t>(M), kNaN);
    Gemm g{};
    g.kind = Kind::backward_weight;
    g.a = a.op, g.b = b.op;
    g.a.ptr += k0 * a.op.k_stride, g.b.ptr += k0 * b.op.k_stride;
    g.models = 1, g.M = M, g.N = N, g.K = k_len;
    g.c = out.c.data();
    g.row_sums = out.row_sums.data();
    return g;
  };
  Outputs split;
  Gemm g = gemm_over(0, K, split);
  plan(g, 1000);
  ASSERT_EQ(g.splits, kMaxSplits);
  run_gemm(g, 3, item_order(g, 2, 11));

  std::vector<float> c(split.c.size(), 0.0f), rows(split.row_sums.size(), 0.0f);
  for (int s = 0; s < g.splits; ++s) {
    const int64_t k0 = s * g.k_per_split, k_len = std::min(K, k0 + g.k_per_split) - k0;
    Outputs part;
    Gemm one = gemm_over(k0, k_len, part);
    plan(one, 1);
    ASSERT_EQ(one.splits, 1);
    run_gemm(one, 1, item_order(one, 0, 0));
    for (size_t e = 0; e < c.size(); ++e) c[e] = c[e] + part.c[e];
    for (size_t e = 0; e < rows.size(); ++e) rows[e] = rows[e] + part.row_sums[e];
  }
  EXPECT_TRUE(same_bits(split.c, c)) << "the fix-up did not add the " << g.splits
                                     << " partial tiles in slice order";
  EXPECT_TRUE(same_bits(split.row_sums, rows))
      << "the fix-up did not add the partial row sums in slice order";
}

// plan(): the slices cover K in whole chunks, at least min_chunks per slice (2 by default), at
// most max_splits (kMaxSplits), and never more items than the blocks that run at once (unless
// the tiles alone are more).
TEST(TilePlan, OneWaveAndWholeChunks) {
  const std::vector<std::pair<int, int>> policies{{kMaxSplits, 2}, {1, 1}, {2, 1}, {16, 1}, {16, 4}, {4, 8}};
  for (const auto& [max_splits, min_chunks] : policies)
    for (int64_t target : {1, 7, 132, 264})
      for (int64_t models : {1, 2, 3})
        for (int64_t M : {13, 64, 256, 300})
          for (int64_t N : {13, 256, 784})
            for (int64_t K : {13, 100, 256, 784}) {
              Gemm g{};
              g.models = models, g.M = M, g.N = N, g.K = K;
              if (max_splits == kMaxSplits && min_chunks == 2)
                plan(g, target);  // the defaults
              else
                plan(g, target, max_splits, min_chunks);
              const int64_t tiles = models * ceil_div(M, kTileM) * ceil_div(N, kTileN);
              const int64_t chunks = ceil_div(K, kTileK), per_slice = g.k_per_split / kTileK;
              const std::string what = std::to_string(models) + "×" + std::to_string(M) + "×" +
                                       std::to_string(N) + "×" + std::to_string(K) + " for " +
                                       std::to_string(target) + ", policy " + std::to_string(max_splits) +
                                       "/" + std::to_string(min_chunks);
              ASSERT_EQ(g.items, tiles * g.splits) << what;
              ASSERT_TRUE(g.splits == 1 || g.items <= target) << what << ": a second wave";
              ASSERT_LE(g.splits, max_splits) << what;
              ASSERT_EQ(g.k_per_split % kTileK, 0) << what;
              ASSERT_TRUE(g.splits == 1 || per_slice >= min_chunks) << what;
              ASSERT_GE(g.splits * per_slice, chunks) << what << ": K not covered";
              ASSERT_LT((g.splits - 1) * per_slice, chunks) << what << ": an empty slice";
            }
  // A policy that allows more splits takes them: 784 = 49 chunks, 16 tiles, 264 blocks.
  Gemm f0{};
  f0.models = 1, f0.M = 256, f0.N = 256, f0.K = 784;
  plan(f0, 264, 16, 2);
  EXPECT_EQ(f0.splits, 13);  // 16 wanted: 4 chunks a slice, the last one short
  plan(f0, 264);
  EXPECT_EQ(f0.splits, 7);  // the default's 8 wanted: 7 chunks a slice
  // The MNIST MLP's first weight gradient at batch 256 on 264 blocks: 52 tiles × 4 slices of
  // 4 chunks (6 slices would be 312 items: 48 blocks would run two).
  Gemm dw0{};
  dw0.models = 1, dw0.M = 256, dw0.N = 784, dw0.K = 256;
  plan(dw0, 264);
  EXPECT_EQ(dw0.splits, 4);
  EXPECT_EQ(dw0.items, 208);
}

}  // namespace
}  // namespace subliminal::cuda::tile
