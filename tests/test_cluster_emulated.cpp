// tests/test_cluster_emulated.cpp — the cluster step's two kernels (ops/cuda/cluster_program.cuh)
// run by host threads, against the float64 reference of tests/simt/mlp_reference.h.
//
// On a GPU, ops/cuda/cluster_step.cu runs this program in clusters of 8 blocks (tested in
// tests/test_cuda_training.cpp: every CudaFusedStep case also runs as *_cluster, on sm_90).
// Here a cluster is Q consecutive blocks of host threads and its barrier a simt::Barrier over all
// of their threads. The cases use small blocks and clusters (64 threads, Q = 2 or 3) and short
// K chunks, so that every path runs: several row blocks per model with a partial last one, rows
// and widths that are not multiples of 4, columns split unevenly over the cluster, both ways of
// staging (16-byte copies and single loads), one or several K chunks, K split over groups of
// threads; and one case has the GPU's shape (8 blocks of 256 threads, the notebook's widths).
// Checked:
//   - each trained model's loss and every gradient against float64 (‖got − ref‖/‖ref‖ ≤ 1e-5),
//     with the outputs, every scratch buffer and the shared memory poisoned with NaN;
//   - two runs give the same bits, and so do a run without the prefetch (each layer's first
//     chunk issued after the barrier ahead of it) and one that runs the clusters one at a
//     time, the last first (a GPU runs them in waves, in no promised order);
//   - the tail: Adam over the whole arena (its padding too), the running loss sums, the
//     counters; an arena without every parameter is refused;
//   - kernel 2 alone over more row blocks than it loads at once, in row-block order;
//   - the forward product with larger register blocks (dot_accumulate_blocked, 8 × 4 and 8 × 8:
//     bench/cluster.cu's candidates) against float64, and every step case with the hidden
//     layers' forward products in 8 × 8 blocks (ClusterStepTuning::register_block);
//   - the plans for the app's default run, --models 10 and the paper's sizes on an H100 (132
//     SMs, 227 KB of shared memory a block), and under a tuning that caps the clusters or the
//     K chunk; and over many shapes, K chunks in whole multiples of 8 (the staging's bank groups).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <ostream>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "ops/cuda/cluster_plan.h"
#include "tests/simt/compare.h"
#include "tests/simt/mlp_reference.h"

namespace subliminal::cuda::cluster {
namespace {

using namespace emulated;  // HostMlp, the float64 reference, Arena, TailState

constexpr int kEmulatedThreads = 64;

struct Case : Problem {
  int cluster, clusters;           // Q, and the clusters the rows are spread over
  int max_chunk;                   // the K chunk's cap (below the widest K: several chunks per product)
  int threads = kEmulatedThreads;  // a block's
};
void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

// What a step wrote, and how it was planned.
struct Output : StepResult {
  int64_t rows = 0, row_blocks = 0;
  int kc = 0;
};

// How run_step runs kernel 1.
struct RunOptions {
  bool prefetch = true;  // each layer's first chunk issued during the barrier ahead of it
  // Every cluster at once (true), or one cluster at a time, the last first: on a GPU the
  // clusters run in waves (16 at once on an H100), in an order it does not promise, so no
  // cluster may wait for, or read, another's work. If one did, this would hang, or read the
  // NaN the scratch is poisoned with.
  bool clusters_together = true;
  int block = 4;  // ClusterStepTuning::register_block
};

// One step: kernel 1 on S·P·Q blocks in clusters of Q, then kernel 2 on 3 blocks. With
// trained_view, the gradients land where it points (and out.dw, out.db stay empty).
Output run_step(const Case& c, HostMlp& trained, HostMlp& frozen, const std::vector<float>& x,
                const std::vector<int32_t>& labels, const FusedTail* tail = nullptr,
                const FusedMlp* trained_view = nullptr, const RunOptions& options = {}) {
  for (auto& v : trained.dw) std::fill(v.begin(), v.end(), kNaN);
  for (auto& v : trained.db) std::fill(v.begin(), v.end(), kNaN);
  FusedLoss loss;
  loss.distill = c.distill, loss.c0 = c.c0, loss.c1 = c.c1, loss.temperature = c.temperature;
  loss.divergence = c.divergence;
  loss.labels = labels.data();
  const FusedMlp view = trained_view ? *trained_view : trained.view(true);
  const FusedMlp frozen_view = frozen.view(false);
  Machine mc{c.cluster, c.clusters, c.threads, int64_t(1) << 20, c.max_chunk, options.block};
  Program p = build_rows_program(x.data(), c.batch, view, c.distill ? &frozen_view : nullptr, loss, tail, mc);
  p.prefetch = options.prefetch;

  // Every scratch buffer poisoned: each element must be written before it is read.
  int64_t doubles = 0;
  const std::vector<int64_t> sizes = scratch_floats(p, doubles);
  std::vector<std::vector<float>> scratch;
  std::vector<float*> parts;
  for (int64_t n : sizes) {
    scratch.emplace_back(size_t(n), kNaN);
    parts.push_back(scratch.back().data());
  }
  std::vector<double> row_loss(size_t(doubles), std::nan(""));
  assign_scratch(p, parts, row_loss.data());
  Output out;
  out.loss.assign(size_t(c.trained), kNaN);
  const ReduceProgram r = build_reduce_program(p, view, out.loss.data(), tail);
  out.rows = p.rows, out.row_blocks = p.row_blocks, out.kc = p.kc;

  const unsigned blocks = unsigned(c.trained * p.row_blocks * p.cluster);
  std::vector<std::unique_ptr<simt::Barrier>> cluster_barriers;
  for (unsigned k = 0; k < blocks / unsigned(p.cluster); ++k)
    cluster_barriers.push_back(std::make_unique<simt::Barrier>(std::ptrdiff_t(p.cluster) * c.threads));
  // Shared memory starts as garbage on a GPU: NaN here, so that a padding the code forgets to
  // zero poisons the sums it enters.
  std::vector<std::vector<float4>> smem(
      blocks, std::vector<float4>(size_t(p.smem.total + 3) / 4, float4{kNaN, kNaN, kNaN, kNaN}));
  const auto cluster_sync = [&](auto&& between) {
    simt::Barrier& cluster_barrier = *cluster_barriers[blockIdx.x / unsigned(p.cluster)];
    const unsigned phase = cluster_barrier.arrive();
    between();
    cluster_barrier.wait(phase);
  };
  const auto kernel_1 = [&] {  // as cluster_step.cu picks its kernel
    float* sm = reinterpret_cast<float*>(smem[blockIdx.x].data());
    if (p.block == 8)
      run_rows<8>(p, sm, cluster_sync);
    else
      run_rows<4>(p, sm, cluster_sync);
  };
  const unsigned Q = unsigned(p.cluster);
  if (options.clusters_together) {
    simt::launch(blocks, unsigned(c.threads), kernel_1);
  } else {
    for (unsigned first = blocks; first > 0; first -= Q)
      simt::launch_blocks(first - Q, Q, blocks, unsigned(c.threads), kernel_1);
  }
  simt::launch(3, unsigned(c.threads), [&] { run_reduce(r); });
  if (!trained_view) out.dw = trained.dw, out.db = trained.db;
  return out;
}

class ClusterEmulated : public ::testing::TestWithParam<Case> {};

TEST_P(ClusterEmulated, MatchesFloat64AndRepeatsBitForBit) {
  const Case& c = GetParam();
  const int64_t S = c.trained;
  HostMlp trained(c.sizes, S, 11), frozen(c.sizes, c.frozen, 12);
  const auto [x, labels] = random_inputs(c);
  const Reference ref = reference_step(trained, frozen, x, labels, c);

  const Output got = run_step(c, trained, frozen, x, labels);
  EXPECT_GT(got.row_blocks, 1) << "the case should spread each model's rows over several clusters";
  EXPECT_NE(got.rows * got.row_blocks, c.batch) << "the case should end in a partial row block";
  const int64_t widest_k = *std::max_element(c.sizes.begin(), c.sizes.end() - 1);
  if (c.max_chunk < widest_k) {
    EXPECT_LT(got.kc, widest_k) << "the case should take several K chunks";
  } else {
    EXPECT_GE(got.kc, widest_k) << "the case should take every product in one K chunk";
  }
  expect_matches_reference(c.name, got, ref, c.sizes);
  if (!simt::sanitizer_run()) expect_same_bits(c.name, run_step(c, trained, frozen, x, labels), got);
}

// A step of case c run the default way and run under `options` give the same bits. (Under the
// sanitizers only the run under `options` is new: MatchesFloat64AndRepeatsBitForBit runs the
// default way.)
void expect_same_bits_as_by_default(const Case& c, const RunOptions& options, const std::string& what) {
  HostMlp trained(c.sizes, c.trained, 11), frozen(c.sizes, c.frozen, 12);
  const auto [x, labels] = random_inputs(c);
  if (simt::sanitizer_run()) {
    run_step(c, trained, frozen, x, labels, nullptr, nullptr, options);
    return;
  }
  const Output by_default = run_step(c, trained, frozen, x, labels);
  expect_same_bits(std::string(c.name) + " " + what,
                   run_step(c, trained, frozen, x, labels, nullptr, nullptr, options), by_default);
}

// Each layer's first chunk issued after the barrier ahead of it, not during it: the same bits.
TEST_P(ClusterEmulated, WithoutThePrefetchGivesTheSameBits) {
  expect_same_bits_as_by_default(GetParam(), {.prefetch = false}, "without the prefetch");
}

// The clusters one at a time, the last first, as a GPU may schedule them: the same bits.
TEST_P(ClusterEmulated, OneClusterAtATimeInReverseGivesTheSameBits) {
  expect_same_bits_as_by_default(GetParam(), {.clusters_together = false}, "one cluster at a time");
}

// 8 × 8 register blocks in the hidden layers' forward products (ClusterStepTuning::
// register_block): the same step to float32 rounding, and the same bits run after run. Where the
// rows or a block's columns are not multiples of 8 those products stay 4 × 4.
TEST_P(ClusterEmulated, EightByEightBlocksMatchFloat64) {
  const Case& c = GetParam();
  HostMlp trained(c.sizes, c.trained, 11), frozen(c.sizes, c.frozen, 12);
  const auto [x, labels] = random_inputs(c);
  const Reference ref = reference_step(trained, frozen, x, labels, c);
  const RunOptions eight{.block = 8};
  const Output got = run_step(c, trained, frozen, x, labels, nullptr, nullptr, eight);
  expect_matches_reference(std::string(c.name) + " 8 × 8", got, ref, c.sizes);
  if (!simt::sanitizer_run())
    expect_same_bits(std::string(c.name) + " 8 × 8",
                     run_step(c, trained, frozen, x, labels, nullptr, nullptr, eight), got);
}

// … and where the shapes allow it, the 8 × 8 products do run: a quarter as many blocks of
// outputs split K over more groups, which add in another order, so the gradients differ from
// the 4 × 4 step's in their last bits. (Not always: where K is short, both may split it into
// the same groups of one float4 each — the first case at K chunks of 24 floats did.) Rows in
// blocks of 8 and columns in multiples of 8 a block: widths 64/40/24 over 3 blocks (16 and 8
// columns, rounded), 30 rows over 4 clusters, chunks of 64; and the GPU's shape at 16 rows a
// cluster.
TEST(ClusterEightByEight, RunsWhereTheShapesAllow) {
  for (const Case& c :
       {Case{{"teacher_aligned_B30", {64, 40, 24, 13}, 1, 0, 30, false, 0, 10, 1.0}, 3, 4, 64},
        Case{{"gpu_shape_B32", {784, 256, 256, 13}, 1, 0, 32, false, 0, 10, 1.0}, 8, 2, 400, 256}}) {
    HostMlp trained(c.sizes, c.trained, 11), frozen(c.sizes, c.frozen, 12);
    const auto [x, labels] = random_inputs(c);
    const Reference ref = reference_step(trained, frozen, x, labels, c);
    const Output four = run_step(c, trained, frozen, x, labels);
    const Output eight = run_step(c, trained, frozen, x, labels, nullptr, nullptr, {.block = 8});
    EXPECT_EQ(eight.rows % 8, 0) << c.name;
    expect_matches_reference(std::string(c.name) + " 8 × 8", eight, ref, c.sizes);
    bool differ = false;
    for (size_t l = 0; l < four.dw.size(); ++l) differ = differ || !simt::same_bits(four.dw[l], eight.dw[l]);
    EXPECT_TRUE(differ) << c.name << ": the 8 × 8 step gave the 4 × 4 one's bits; did its products run?";
  }
}

// Widths 64/40/24 stage by 16-byte copies (rows of x and W aligned), 53/29/31 by single loads;
// hidden widths split unevenly over Q = 3 (13, 13, 14 columns); every product in one K chunk
// (the notebook's layers past the first, on the GPU); teachers of 6 students; and the GPU's
// shape: the notebook's widths in clusters of 8 blocks of 256 threads, 784 in 7 chunks.
INSTANTIATE_TEST_SUITE_P(
    Steps, ClusterEmulated,
    ::testing::Values(
        Case{{"teacher_odd_sizes_B37", {53, 29, 31, 13}, 2, 0, 37, false, 0, 10, 1.0}, 3, 5, 20},
        Case{{"teacher_aligned_B30", {64, 40, 24, 13}, 1, 0, 30, false, 0, 10, 1.0}, 3, 4, 24},
        Case{{"teacher_one_chunk_B29", {53, 29, 31, 13}, 1, 0, 29, false, 0, 10, 1.0}, 3, 4, 1 << 20},
        Case{{"teacher_2_layers_B46", {53, 29, 7}, 2, 0, 46, false, 0, 7, 1.0}, 2, 5, 16},
        Case{{"teacher_wide_last_layer_B21", {40, 36, 40}, 1, 0, 21, false, 25, 40, 1.0}, 2, 4, 16},
        Case{{"distill_6_from_3_ghosts_T2", {53, 29, 31, 13}, 6, 3, 11, true, 10, 13, 2.0}, 2, 12, 20},
        Case{{"distill_aligned_all_logits", {64, 40, 24, 13}, 2, 1, 31, true, 0, 13, 1.0}, 3, 5, 32},
        Case{{"distill_2_layers_B23", {40, 33, 13}, 2, 1, 23, true, 0, 13, 2.0}, 2, 4, 16},
        Case{{"distill_js_4_from_2_ghosts_T2", {53, 29, 31, 13}, 4, 2, 11, true, 10, 13, 2.0, Divergence::js},
             2,
             6,
             20},
        Case{{"gpu_shape_B21", {784, 256, 256, 13}, 1, 0, 21, false, 0, 10, 1.0}, 8, 2, 120, 256}),
    [](const ::testing::TestParamInfo<Case>& info) { return std::string(info.param.name); });

// The tail: Adam (against float64, from the gradients the step wrote) over the whole arena,
// which holds every parameter and padding between them; the running loss sums; the counters
// advanced after the watch read them; a NaN in one model's input flags the step. A teacher step
// (NaN in model 1's input) with the arena's biases after and before their weights, and a
// distillation step of 4 students from 2 frozen teachers (NaN in student 3's, a row no teacher
// reads).
TEST(ClusterTail, DoesAdamTheLossSumsAndTheCountersAsTheSeparateCallsWould) {
  const Case teacher{{"tail", {53, 29, 31, 13}, 3, 0, 19, false, 0, 10, 1.0}, 2, 6, 20};
  const Case distill{{"distill_tail", {53, 29, 31, 13}, 4, 2, 11, true, 10, 13, 2.0}, 2, 8, 20};
  for (const auto& [c, nan_model, biases_first] :
       {std::tuple{teacher, int64_t(1), false}, std::tuple{teacher, int64_t(1), true},
        std::tuple{distill, int64_t(3), false}}) {
    const int64_t S = c.trained, B = c.batch, P = c.sizes.front();
    HostMlp trained(c.sizes, S, 11), frozen(c.sizes, c.distill ? c.frozen : 0, 12);
    auto [x, labels] = random_inputs(c);
    x[size_t(nan_model * B * P + 5)] = kNaN;
    const Arena fresh(trained, biases_first);
    const TailState initial = initial_tail_state(fresh.values.size(), S);
    Arena got = fresh;
    TailState state = initial;
    const FusedTail tail = tail_over(got, state);
    const FusedMlp view = got.view(trained);
    const Output out = run_step(c, trained, frozen, x, labels, &tail, &view);

    const std::string what = std::string(c.name) + ", biases " + (biases_first ? "first" : "last");
    const std::vector<bool> moved = expect_adam_matches_float64(what, fresh, got, initial, state);
    EXPECT_GT(std::count(moved.begin(), moved.end(), true), int64_t(moved.size()) / 2)
        << what << ": Adam moved too little of the arena";
    expect_tail_bookkeeping(what, initial, state, out.loss, nan_model);
  }
}

// An Adam arena that does not hold every parameter at its gradient's place is refused.
TEST(ClusterTail, AnArenaWithoutEveryParameterIsRefused) {
  const Case c{{"tail", {53, 29, 31, 13}, 1, 0, 8, false, 0, 10, 1.0}, 2, 2, 64};
  HostMlp trained(c.sizes, 1, 11), frozen(c.sizes, 0, 12);
  Arena arena(trained);
  const FusedMlp view = arena.view(trained);
  std::vector<float> m(arena.values.size()), v(arena.values.size()), x(size_t(8 * 53));
  int64_t t = 0;
  FusedLoss loss;
  loss.c1 = 10;
  const Machine mc{2, 2, kEmulatedThreads, int64_t(1) << 20};
  // (the last case: an arena that ends where the last bias does, as the app's does when that
  // bias's size is a multiple of 64 floats, its padding)
  const size_t past_last_bias = arena.b_at.back() + trained.b.back().size();
  for (const auto& [first, end] : std::vector<std::pair<size_t, size_t>>{
           {0, arena.values.size()}, {arena.b_at[0], arena.values.size()}, {0, past_last_bias}}) {
    FusedTail tail;
    tail.adam.p = arena.values.data() + first, tail.adam.g = arena.grads.data() + first;
    tail.adam.m = m.data(), tail.adam.v = v.data(), tail.adam.t = &t;
    tail.adam.n = int64_t(end - first);
    Program p = build_rows_program(x.data(), 8, view, nullptr, loss, &tail, mc);
    if (first == 0) {
      EXPECT_NO_THROW(build_reduce_program(p, view, nullptr, &tail))
          << "the arena's elements [0, " << end << ")";
    } else {
      EXPECT_THROW(build_reduce_program(p, view, nullptr, &tail), ShapeError)
          << "an arena that starts past W0";
    }
  }
}

// Kernel 2 alone, with more row blocks than it loads at once (16: the cases above have 2 or 3,
// the default run 16; a plan whose rows the shared memory caps has more): each gradient is its
// P partials summed in row-block order from 0, the same bits as that sum here.
TEST(ClusterReduce, SumsMoreRowBlocksThanOneBatchInOrder) {
  const int64_t P = 37;
  std::mt19937 rng(9);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<std::vector<float>> parts, grads;
  ReduceProgram r{};
  r.parts = P;
  for (int64_t count : {53, 7}) {
    parts.emplace_back(size_t(P * count));
    for (float& v : parts.back()) v = u(rng);
    grads.emplace_back(size_t(count), kNaN);
    r.seg[r.segments++] = Segment{grads.back().data(), parts.back().data(), count};
  }
  simt::launch(3, kEmulatedThreads, [&] { run_reduce(r); });
  for (size_t k = 0; k < grads.size(); ++k) {
    const int64_t count = r.seg[k].count;
    std::vector<float> sums(size_t(count), 0.0f);
    for (int64_t p = 0; p < P; ++p)
      for (int64_t e = 0; e < count; ++e) sums[size_t(e)] += parts[k][size_t(p * count + e)];
    EXPECT_TRUE(simt::same_bits(grads[k], sums))
        << "segment " << k << ": not the partials summed in row-block order";
  }
}

// dot_accumulate_blocked, whose larger blocks bench/cluster.cu times against the step's 4 × 4:
// acc += A·Bᵀ over shapes with one block a thread and with K split over many groups (the
// bench's chunks: 16 × 32 × 392 and 32 × 32 × 264 at 256 threads), against float64, onto an
// acc that already holds values, the columns past N4 of acc's rows and the K groups' scratch
// poisoned with NaN (the sum may not read them, nor write past N4). Each block size gives the
// same bits on every run.
template <int TM, int TN>
void check_blocked_dot(int threads, int M4, int N4, int K4) {
  SCOPED_TRACE(std::to_string(TM) + " × " + std::to_string(TN) + " blocks, " + std::to_string(threads) +
               " threads, " + std::to_string(M4) + " × " + std::to_string(N4) + " × " + std::to_string(K4));
  const int ld = K4 + 4, ldc = N4 + 3;
  std::mt19937 rng(uint32_t(M4 * 1000 + N4 * 10 + K4));
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  // float4s, so that the operands' rows are 16-byte aligned as in shared memory.
  std::vector<float4> a4(size_t(M4 * ld / 4)), b4(size_t(N4 * ld / 4));
  float* A = reinterpret_cast<float*>(a4.data());
  float* B = reinterpret_cast<float*>(b4.data());
  for (int i = 0; i < M4 * ld; ++i) A[i] = i % ld < K4 ? u(rng) : kNaN;  // the padding is never read
  for (int i = 0; i < N4 * ld; ++i) B[i] = i % ld < K4 ? u(rng) : kNaN;
  std::vector<float> start(size_t(M4 * ldc), kNaN);
  for (int m = 0; m < M4; ++m)
    for (int n = 0; n < N4; ++n) start[size_t(m * ldc + n)] = u(rng);
  auto run = [&] {
    std::vector<float> acc = start, kpart(size_t(threads * (TM * TN + (TM > 4 ? 1 : 0))), kNaN);
    simt::launch(1, unsigned(threads), [&] {
      dot_accumulate_blocked<TM, TN>(acc.data(), ldc, A, ld, B, ld, M4, N4, K4, kpart.data());
    });
    return acc;
  };
  const std::vector<float> got = run();
  for (int m = 0; m < M4; ++m) {
    for (int n = 0; n < N4; ++n) {
      double want = start[size_t(m * ldc + n)];
      for (int k = 0; k < K4; ++k) want += double(A[m * ld + k]) * double(B[n * ld + k]);
      ASSERT_NEAR(got[size_t(m * ldc + n)], want, 1e-5 * (1.0 + std::sqrt(double(K4))))
          << "acc[" << m << ", " << n << "]";
    }
    for (int n = N4; n < ldc; ++n) ASSERT_TRUE(std::isnan(got[size_t(m * ldc + n)])) << "wrote past N4";
  }
  EXPECT_TRUE(simt::same_bits(run(), got)) << "a second run gave other bits";
}

TEST(ClusterProducts, BlockedDotAccumulateMatchesFloat64) {
  for (const auto& [threads, M4, N4, K4] : std::vector<std::tuple<int, int, int, int>>{{64, 8, 8, 4},
                                                                                       {64, 8, 16, 20},
                                                                                       {64, 24, 32, 36},
                                                                                       {64, 16, 8, 128},
                                                                                       {256, 16, 32, 392},
                                                                                       {256, 32, 32, 264}}) {
    check_blocked_dot<4, 4>(threads, M4, N4, K4);
    check_blocked_dot<8, 4>(threads, M4, N4, K4);
    check_blocked_dot<8, 8>(threads, M4, N4, K4);
  }
}

// The plan for the app's runs on an H100 (132 SMs: 16 clusters of 8 at once; 227 KB of shared
// memory a block): the default run's teacher steps take 16 row blocks of 16 rows, its
// distillation steps (2 students) 8 of 32, and every plan fits the memory. The input layer's
// K = 784 goes in even chunks (2 × 392; 3 × 264 where the rows leave room for 384 at most:
// 384 + 384 + 16 would spend a pipeline round on the last 16), each of at least a hidden
// layer's width, so the other layers take one chunk.
TEST(ClusterPlan, DefaultRunOnAnH100) {
  const Machine h100{8, 16, 256, 232448 / 4};
  const std::vector<int64_t> sizes{784, 256, 256, 13};
  struct Want {
    int64_t models, batch, rows, row_blocks;
    int kc;
  };
  for (const Want& w : {Want{1, 256, 16, 16, 392}, Want{2, 256, 32, 8, 264}, Want{1, 96, 6, 16, 392},
                        Want{2, 96, 12, 8, 392}}) {
    FusedMlp trained;
    trained.layers = 3, trained.sizes = sizes, trained.models = w.models;
    trained.weights.assign(3, nullptr), trained.biases.assign(3, nullptr);
    FusedLoss loss;
    loss.c1 = 10;
    const Program p = build_rows_program(nullptr, w.batch, trained, nullptr, loss, nullptr, h100);
    const std::string what = std::to_string(w.models) + " models at batch " + std::to_string(w.batch);
    EXPECT_EQ(p.rows, w.rows) << what;
    EXPECT_EQ(p.row_blocks, w.row_blocks) << what;
    EXPECT_LE(p.smem.total, h100.smem_floats) << what;
    EXPECT_EQ(p.kc, w.kc) << what;
  }
  // Ten models (--models 10) and the paper preset's 100 at batch 1024: more row blocks than
  // clusters at once, in waves, each as large as the memory allows, the rows evened out — with
  // 4 × 4 and 8 × 8 register blocks (whose K groups' partials take 4 times the room).
  for (const auto& [models, batch] : std::vector<std::pair<int64_t, int64_t>>{{10, 256}, {100, 1024}})
    for (int block : {4, 8}) {
      FusedMlp many;
      many.layers = 3, many.sizes = sizes, many.models = models;
      many.weights.assign(3, nullptr), many.biases.assign(3, nullptr);
      FusedLoss loss;
      loss.c1 = 10;
      const Program p = build_rows_program(nullptr, batch, many, nullptr, loss, nullptr,
                                           tuned(h100, {.register_block = block}));
      const std::string what = std::to_string(models) + " models at batch " + std::to_string(batch) + ", " +
                               std::to_string(block) + " × " + std::to_string(block);
      EXPECT_LE(p.smem.total, h100.smem_floats) << what;
      EXPECT_GE(p.row_blocks * p.rows, batch) << what;
      EXPECT_LT(p.row_blocks * p.rows - batch, p.row_blocks) << what << ": the row blocks are uneven";
      EXPECT_GE(p.rows, 64) << what << ": rows per cluster well short of what the memory holds";
    }
}

// A tuned machine (ClusterStepTuning, bench_layers' sweep): the rows spread over fewer
// clusters take longer row blocks, a cap above what runs at once changes nothing, K chunks are
// capped, and a negative cap is refused.
TEST(ClusterPlan, TuningCapsTheClustersAndTheChunks) {
  const Machine h100{8, 16, 256, 232448 / 4};
  FusedMlp trained;
  trained.layers = 3, trained.sizes = {784, 256, 256, 13}, trained.models = 1;
  trained.weights.assign(3, nullptr), trained.biases.assign(3, nullptr);
  FusedLoss loss;
  loss.c1 = 10;
  auto plan = [&](ClusterStepTuning t) {
    return build_rows_program(nullptr, 256, trained, nullptr, loss, nullptr, tuned(h100, t));
  };
  const Program four = plan({.max_clusters = 4});
  EXPECT_EQ(four.row_blocks, 4);
  EXPECT_EQ(four.rows, 64);
  const Program uncapped = plan({}), above = plan({.max_clusters = 100});
  EXPECT_EQ(above.row_blocks, uncapped.row_blocks) << "a cap above the 16 clusters that run at once";
  EXPECT_EQ(above.rows, uncapped.rows);
  EXPECT_EQ(plan({.max_chunk = 64}).kc, 64);
  EXPECT_GT(uncapped.kc, 64);
  EXPECT_THROW(tuned(h100, {.max_chunk = -1}), ShapeError);
  EXPECT_THROW(tuned(h100, {.max_clusters = -1}), ShapeError);
  // 8 × 8 register blocks: the K groups' partials take threads · 64 floats (a 4 × 4 plan's,
  // threads · 16), and the default run's teacher step keeps its 16 row blocks of 16 rows.
  const Program eight = plan({.register_block = 8});
  EXPECT_EQ(eight.block, 8);
  EXPECT_EQ(uncapped.block, 4);
  EXPECT_GE(eight.smem.acc - eight.smem.kpart, 256 * 64);
  EXPECT_GE(uncapped.smem.acc - uncapped.smem.kpart, 256 * 16);
  EXPECT_EQ(eight.rows, 16);
  EXPECT_EQ(eight.row_blocks, 16);
  EXPECT_THROW(tuned(h100, {.register_block = 6}), ShapeError);
}

// K chunks are whole multiples of 8 floats on every plan, not only on the H100's: the staging
// stride kc + 4 is then an odd number of float4s, which is what spreads dot_accumulate's quarter
// warps over 8 bank groups (SmemLayout). A chunk rounded to 4 instead computes the same sums —
// every step test passes with it — and on the GPU only runs slower, with 2-way bank conflicts
// on every operand read: nothing but the plan shows it. Checked over layer sizes, clusters,
// blocks, shared memory and chunk caps, with the plan's other promises beside it: it fits, and
// its rows cover the batch in row blocks that differ by at most one row.
TEST(ClusterPlan, ChunksAreMultiplesOfEightOverManyShapes) {
  int planned = 0;
  for (const std::vector<int64_t>& sizes :
       {std::vector<int64_t>{784, 256, 256, 13}, std::vector<int64_t>{53, 29, 31, 13},
        std::vector<int64_t>{300, 40, 20, 13}, std::vector<int64_t>{100, 37, 7}})
    for (int Q : {1, 3, 8})
      for (int64_t smem_floats : {int64_t(232448 / 4), int64_t(16384)})
        for (int max_chunk : {1 << 30, 100, 20})
          for (int block : {4, 8})
            for (const auto& [models, batch] :
                 std::vector<std::pair<int64_t, int64_t>>{{1, 21}, {2, 256}, {10, 1000}}) {
              FusedMlp trained;
              trained.layers = int(sizes.size()) - 1, trained.sizes = sizes, trained.models = models;
              trained.weights.assign(sizes.size() - 1, nullptr);
              trained.biases.assign(sizes.size() - 1, nullptr);
              FusedLoss loss;
              loss.c1 = sizes.back();
              const Machine mc{Q, 16, 256, smem_floats, max_chunk, block};
              Program p;
              try {
                p = build_rows_program(nullptr, batch, trained, nullptr, loss, nullptr, mc);
              } catch (const ShapeError&) {
                continue;  // not one row fits this memory
              }
              ++planned;
              const std::string what =
                  std::to_string(sizes.front()) + "-wide input, Q = " + std::to_string(Q) + ", " +
                  std::to_string(smem_floats) + " floats, chunks ≤ " + std::to_string(max_chunk) + ", " +
                  std::to_string(models) + " models at batch " + std::to_string(batch);
              ASSERT_EQ(p.kc % 8, 0) << what << ": a chunk of " << p.kc;
              ASSERT_EQ((p.kc + 4) / 4 % 2, 1) << what << ": the staging stride is an even number of float4s";
              ASSERT_LE(p.smem.total, smem_floats) << what;
              ASSERT_GE(p.rows * p.row_blocks, batch) << what << ": rows left out";
              ASSERT_LT(p.rows * p.row_blocks - batch, p.row_blocks) << what << ": the row blocks are uneven";
            }
  EXPECT_GT(planned, 100) << "most of the shapes should fit";
}

}  // namespace
}  // namespace subliminal::cuda::cluster
