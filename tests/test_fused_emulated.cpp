// tests/test_fused_emulated.cpp — the fused training step's program (ops/cuda/fused_program.cuh)
// run by host threads, against a float64 forward and backward written out here.
//
// On a GPU, ops/cuda/fused_step.cu runs this program as one cooperative kernel (tested in
// tests/test_cuda_training.cpp, CudaFusedStep). Here tests/simt/cuda_runtime.h plays the grid:
// a few blocks of 256 std::threads, grid.sync() a barrier over all of them, warp shuffles
// through per-warp slots. Checked, on every machine:
//   - cross-entropy (teacher) and distillation steps, 3- and 2-layer MLPs, odd sizes, several
//     trained models and (distillation) frozen teachers, student s learning from teacher s mod F;
//   - each trained model's loss and every weight and bias gradient against float64
//     (‖got − ref‖/‖ref‖ ≤ 1e-5), with every output and intermediate buffer poisoned with NaN;
//   - two runs on the same grid give the same bits;
//   - the step's tail (Adam, the running loss sums and NaN watch, the step counters) against a
//     float64 Adam and the separate calls' order, and block 0's per-model loss sums at sizes past
//     one round of their batched loads;
//   - the loss rows alone where the steps do not reach: logits past exp's overflow, dz
//     accumulated into (the loss kernels' way), labels outside the loss's columns;
//   - the plan: bands (the parallel fix-up) only where a phase's items fit one wave;
//   - on every program built, the rule that lets the tiles' copies and the rows' W loads go
//     through L1 (l1_rule_violation, at byte granularity: the host buffers are not line-aligned).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "engine/adam.h"  // AdamOptions
#include "ops/cuda/fused_program.cuh"
#include "tests/simt/compare.h"
#include "tests/simt/mlp_reference.h"

namespace subliminal::cuda::fused {
namespace {

using namespace emulated;  // HostMlp, the float64 reference, Arena, TailState
using simt::relative_error;
using simt::same_bits;

// ---- one step, emulated ----------------------------------------------------------------------

struct Step : Problem {
  unsigned grid;             // blocks of the multi-block runs (each case also runs on 1 block)
  bool split_k;              // the case is there to exercise split-K: some GEMM must split on `grid`
  FusedSplitPolicy split{};  // how far K may split (the default, unless the case is about that)
};

// What a step wrote: the losses and the trained models' gradients, flattened.
struct StepOutput : StepResult {
  int most_splits = 1;      // of the program's GEMMs
  int parallel_fixups = 0;  // GEMMs whose split tiles are finished in bands, all items at once
};

// One step on `blocks` blocks. With trained_view, the trained MLP is the one it points at (its
// gradients land there, and out.dw, out.db stay empty); `trained` then gives only the shapes.
StepOutput run_step(const Step& st, HostMlp& trained, HostMlp& frozen, const std::vector<float>& x,
                    const std::vector<int32_t>& labels, unsigned blocks, const FusedTail* tail = nullptr,
                    const FusedMlp* trained_view = nullptr) {
  const int L = trained.layers();
  const int64_t S = st.trained, F = st.distill ? st.frozen : 0, B = st.batch;
  for (auto& v : trained.dw) std::fill(v.begin(), v.end(), kNaN);
  for (auto& v : trained.db) std::fill(v.begin(), v.end(), kNaN);
  // The workspace, poisoned: every element is written before it is read.
  std::vector<std::vector<float>> H(static_cast<size_t>(L)), G(static_cast<size_t>(L) + 1);
  Workspace ws;
  ws.H.assign(size_t(L), nullptr);
  ws.G.assign(size_t(L) + 1, nullptr);
  for (int l = 1; l < L; ++l)
    H[size_t(l)].assign(size_t((S + F) * B * st.sizes[size_t(l)]), kNaN),
        ws.H[size_t(l)] = H[size_t(l)].data();
  for (int l = 1; l <= L; ++l)
    G[size_t(l)].assign(size_t(S * B * st.sizes[size_t(l)]), kNaN), ws.G[size_t(l)] = G[size_t(l)].data();
  std::vector<float> logits(size_t(logit_rows(S, st.distill) * B * st.sizes[size_t(L)]), kNaN);
  std::vector<double> row_loss(size_t(S * B), std::nan(""));
  ws.logits = logits.data();
  ws.row_loss = row_loss.data();

  FusedLoss loss;
  loss.distill = st.distill, loss.c0 = st.c0, loss.c1 = st.c1, loss.temperature = st.temperature;
  loss.divergence = st.divergence;
  loss.labels = labels.data();
  StepOutput out;
  out.loss.assign(size_t(S), kNaN);
  const FusedMlp frozen_view = frozen.view(false);
  Program prog = build_program(x.data(), B, trained_view ? *trained_view : trained.view(true),
                               st.distill ? &frozen_view : nullptr, loss, out.loss.data(), ws, int(blocks),
                               tail, st.split);
  EXPECT_EQ(l1_rule_violation(prog, 1), "")
      << "the program breaks the rule that lets its tiles read through L1";
  int64_t floats = 0, counters = 0;
  scratch_sizes(prog, floats, counters);
  std::vector<float> scratch(size_t(std::max<int64_t>(floats, 1)), kNaN);
  std::vector<int> counter_scratch(size_t(std::max<int64_t>(counters, 1)), 0);
  assign_scratch(prog, scratch.data(), counter_scratch.data());

  for (int j = 0; j < prog.gemms; ++j) {
    out.most_splits = std::max(out.most_splits, prog.gemm[j].splits);
    out.parallel_fixups += prog.gemm[j].parallel_fixup;
  }
  std::vector<tile::Smem> smem = simt::garbage_shared_memory<tile::Smem>(blocks);
  simt::launch(blocks, tile::kBlockThreads, [&] {
    run_program(
        prog, smem[blockIdx.x], [] { simt::grid_sync(); }, [](int) {}, [](int) {});
  });
  EXPECT_TRUE(std::all_of(counter_scratch.begin(), counter_scratch.end(), [](int c) { return c == 0; }))
      << "the program's GEMMs must leave their counters at zero";
  if (!trained_view) out.dw = trained.dw, out.db = trained.db;
  return out;
}

void PrintTo(const Step& st, std::ostream* os) { *os << st.name; }

class FusedEmulated : public ::testing::TestWithParam<Step> {};

TEST_P(FusedEmulated, MatchesFloat64AndRepeatsBitForBit) {
  const Step& st = GetParam();
  const int64_t S = st.trained, F = st.frozen;
  HostMlp trained(st.sizes, S, 11), frozen(st.sizes, F, 12);
  const auto [x, labels] = random_inputs(st);

  const Reference ref = reference_step(trained, frozen, x, labels, st);
  const std::vector<unsigned> block_counts =
      simt::sanitizer_run() ? std::vector<unsigned>{st.grid} : std::vector<unsigned>{1u, st.grid};
  for (unsigned blocks : block_counts) {
    const std::string what = std::string(st.distill ? "distillation" : "cross-entropy") + " step, " +
                             std::to_string(st.sizes.size() - 1) + " layers, " + std::to_string(blocks) +
                             " blocks";
    const StepOutput got = run_step(st, trained, frozen, x, labels, blocks);
    if (st.split_k && blocks > 1) {
      // … and past the default's limit when the case's policy allows more
      const int wanted = st.split.max_splits > tile::kMaxSplits ? tile::kMaxSplits + 1 : 2;
      EXPECT_GE(got.most_splits, wanted) << what << ": no GEMM split K into " << wanted << " or more slices";
      EXPECT_EQ(got.parallel_fixups > 0, st.split.parallel_fixup)
          << what << ": " << got.parallel_fixups << " GEMMs finish their split tiles in bands";
    }
    expect_matches_reference(what, got, ref, st.sizes);
    if (!simt::sanitizer_run()) expect_same_bits(what, run_step(st, trained, frozen, x, labels, blocks), got);
  }
}

// Odd sizes (row tiles 64 wide: a batch of 70 is two), several models; the distillation steps
// train 6 students from 3 teachers on 3 "ghost" columns at T = 2.
INSTANTIATE_TEST_SUITE_P(
    Steps, FusedEmulated,
    ::testing::Values(
        Step{{"teacher_3_models_B37", {53, 29, 31, 13}, 3, 0, 37, false, 0, 10, 1.0}, 5, false},
        Step{{"teacher_two_row_tiles_B70", {53, 70, 31, 13}, 2, 0, 70, false, 0, 10, 1.0}, 5, false},
        Step{{"teacher_2_layers_B45", {53, 29, 7}, 2, 0, 45, false, 0, 7, 1.0}, 5, false},
        Step{{"teacher_split_k_B100", {300, 40, 20, 13}, 1, 0, 100, false, 0, 10, 1.0}, 12, true},
        // The last layer row by row: a hidden layer wider than one staged chunk
        // of 256 under more logits than lanes, the loss on logits 25 … 39
        Step{{"teacher_wide_last_layer_B37", {40, 300, 40}, 1, 0, 37, false, 25, 40, 1.0}, 5, false},
        Step{{"distill_6_from_3_ghosts_T2", {53, 29, 31, 13}, 6, 3, 37, true, 10, 13, 2.0}, 5, false},
        Step{{"distill_2_layers_all_logits_B70", {40, 33, 13}, 2, 1, 70, true, 0, 13, 1.0}, 5, false},
        // Jensen–Shannon in place of KL (--divergence js): only the loss rows differ
        Step{{"distill_js_6_from_3_ghosts_T2", {53, 29, 31, 13}, 6, 3, 37, true, 10, 13, 2.0, Divergence::js},
             5,
             false},
        Step{{"distill_split_k_B100", {300, 40, 20, 13}, 2, 1, 100, true, 10, 13, 2.0}, 12, true},
        // Another split policy (bench_layers sweeps them): slices of one chunk,
        // more of them than the default's 8, so the fix-up sums 10 partials
        Step{{"teacher_10_splits_B100", {300, 40, 20, 13}, 1, 0, 100, false, 0, 10, 1.0}, 24, true, {16, 1}},
        // Split tiles finished by their last item alone, not in bands by all
        Step{
            {"teacher_last_item", {300, 40, 20, 13}, 1, 0, 100, false, 0, 10, 1.0}, 12, true, {8, 2, false}}),
    [](const ::testing::TestParamInfo<Step>& info) { return std::string(info.param.name); });

// ---- the step's tail: Adam, the running loss sums, the counters ------------------------------

// One step with the tests' tail (tail_over).
StepOutput run_tail_step(const Step& st, HostMlp& trained, HostMlp& frozen, const std::vector<float>& x,
                         const std::vector<int32_t>& labels, unsigned blocks, Arena& arena, TailState& s) {
  const FusedTail tail = tail_over(arena, s);
  const FusedMlp view = arena.view(trained);
  return run_step(st, trained, frozen, x, labels, blocks, &tail, &view);
}

// The tail does in the kernel what the separate calls would: engine/adam.h's update over the
// whole arena (against float64, from the gradients this very step wrote: W0 tile by tile in
// the last phase, the rest after), the sums and the watch as accumulate_and_watch, the counters
// advanced after the watch has read them. nan_model ≥ 0 poisons that model's input (its loss is
// NaN, and the watch must flag the step). With more than one block count, the runs must also
// agree bit for bit (when their split-K plans are the same).
void check_tail(const Step& st, const std::vector<unsigned>& block_counts, int64_t nan_model,
                bool biases_first = false) {
  const int64_t S = st.trained, B = st.batch, P = st.sizes.front();
  HostMlp trained(st.sizes, S, 11), frozen(st.sizes, st.distill ? st.frozen : 0, 12);
  auto [x, labels] = random_inputs(st);
  if (nan_model >= 0) x[size_t(nan_model * B * P + 5)] = kNaN;
  const Arena fresh(trained, biases_first);
  const TailState initial = initial_tail_state(fresh.values.size(), S);
  const size_t w0_begin = fresh.w_at[0], w0_end = w0_begin + trained.w[0].size();

  std::vector<std::pair<Arena, TailState>> runs;
  for (unsigned blocks : block_counts) {
    const std::string what = std::string(st.name) + ", " + std::to_string(blocks) + " blocks";
    Arena got = fresh;
    TailState state = initial;
    const StepOutput out = run_tail_step(st, trained, frozen, x, labels, blocks, got, state);
    if (st.split_k) {
      EXPECT_GT(out.most_splits, 1) << what << ": no GEMM split K";
      EXPECT_EQ(out.parallel_fixups > 0, st.split.parallel_fixup) << what << ": bands or the last item";
    }

    // the separate calls: Adam from the gradients the step wrote
    const std::vector<bool> moved = expect_adam_matches_float64(what, fresh, got, initial, state);
    const auto moved_in = [&moved](size_t begin, size_t end) {
      return std::count(moved.begin() + ptrdiff_t(begin), moved.begin() + ptrdiff_t(end), true);
    };
    EXPECT_GT(moved_in(0, w0_begin), 0) << what << ": Adam did not move the arena before W0";
    EXPECT_GT(moved_in(w0_begin, w0_end), 0) << what << ": Adam did not move W0";
    EXPECT_GT(moved_in(w0_end, moved.size()), 0) << what << ": Adam did not move the parameters after W0";
    expect_tail_bookkeeping(what, initial, state, out.loss, nan_model);

    if (!simt::sanitizer_run()) {
      Arena again = fresh;
      TailState again_state = initial;
      run_tail_step(st, trained, frozen, x, labels, blocks, again, again_state);
      EXPECT_TRUE(same_bits(again.values, got.values) && same_bits(again_state.m, state.m) &&
                  same_bits(again_state.v, state.v))
          << what << ": two runs differ";
    }
    runs.emplace_back(std::move(got), std::move(state));
  }
  for (size_t r = 1; r < runs.size(); ++r)
    EXPECT_TRUE(same_bits(runs[0].first.values, runs[r].first.values) &&
                same_bits(runs[0].second.m, runs[r].second.m) &&
                same_bits(runs[0].second.v, runs[r].second.v))
        << st.name << ": " << block_counts[0] << " and " << block_counts[r] << " blocks give different bits";
}

// Three models, one tile of W0 each, a NaN loss; 1 and 5 blocks give the same bits.
TEST(FusedTail, DoesAdamTheLossSumsAndTheCountersAsTheSeparateCallsWould) {
  check_tail(Step{{"teacher_tail", {53, 29, 31, 13}, 3, 0, 37, false, 0, 10, 1.0}, 5, false}, {1u, 5u}, 1);
}

// A distillation step's tail: 4 students learning from 2 frozen teachers (the app's student and
// control arms), a NaN in student 3's input (a row no teacher reads), 1 and 5 blocks.
TEST(FusedTail, DistillationStepsDoTheirTailToo) {
  check_tail(Step{{"distill_tail", {53, 29, 31, 13}, 4, 2, 37, true, 10, 13, 2.0}, 5, false}, {1u, 5u}, 3);
}

// W0's gradient in 2 × 2 tiles, partial at both edges (65 × 70), and split over K on 17 blocks:
// each tile's Adam runs in the item that finishes it, at its own offsets.
TEST(FusedTail, AdamFollowsSplitAndPartialTilesOfW0) {
  check_tail(Step{{"tail_split_k", {70, 65, 31, 13}, 1, 0, 64, false, 0, 10, 1.0}, 17, true}, {17u}, -1);
}

// As above, each split tile of W0 finished by its last item alone (the other fix-up).
TEST(FusedTail, AdamFollowsSplitTilesFinishedByTheLastItem) {
  check_tail(
      Step{
          {"tail_split_k_last_item", {70, 65, 31, 13}, 1, 0, 64, false, 0, 10, 1.0}, 17, true, {8, 2, false}},
      {17u}, -1);
}

// The arena with each layer's bias before its weights: the pass over the rest of the arena
// leaves out the tiles' ranges (b0, then W0 here) in either order.
TEST(FusedTail, BiasesBeforeWeightsInTheArena) {
  check_tail(Step{{"tail_biases_first", {70, 65, 31, 13}, 1, 0, 64, false, 0, 10, 1.0}, 17, true}, {17u}, -1,
             true);
}

// Two layers: the last phase is dW_0's (and db_0's, its row sums, whose tiles update b_0), and
// every other gradient Adam reads after it must be final a barrier earlier. 17 blocks finish
// their dW_0 items at different times.
TEST(FusedTail, TwoLayersHandAdamOnlyFinalGradients) {
  check_tail(Step{{"two_layer_tail", {53, 29, 7}, 2, 0, 64, false, 0, 7, 1.0}, 17, false}, {17u}, -1);
}

// An Adam arena that does not hold the first layer's weights and biases with their gradients
// cannot be updated tile by tile: building the program refuses it.
TEST(FusedTail, AnArenaWithoutTheFirstLayerIsRefused) {
  const Step st{{"teacher_tail", {53, 29, 31, 13}, 1, 0, 8, false, 0, 10, 1.0}, 2, false};
  HostMlp trained(st.sizes, 1, 11);
  Arena arena(trained);
  std::vector<float> m(arena.values.size()), v(arena.values.size());
  int64_t t = 0;
  std::vector<float> x(size_t(8 * 53)), h1(size_t(8 * 29)), h2(size_t(8 * 31)), logits(size_t(8 * 13));
  Workspace ws{{nullptr, h1.data(), h2.data()}, std::vector<float*>(4, nullptr), logits.data(), nullptr};
  FusedLoss loss;
  loss.c1 = 10;
  // Why building the program with Adam over the arena's elements [first, first + n), for the
  // MLP `view`, is refused ("" if it is not).
  auto refusal = [&](size_t first, size_t n, const FusedMlp& view) -> std::string {
    FusedTail tail;
    tail.adam.p = arena.values.data() + first, tail.adam.g = arena.grads.data() + first;
    tail.adam.m = m.data(), tail.adam.v = v.data(), tail.adam.t = &t;
    tail.adam.n = int64_t(n);
    try {
      build_program(x.data(), 8, view, nullptr, loss, nullptr, ws, 2, &tail);
    } catch (const ShapeError& e) {
      return e.what();
    }
    return "";
  };
  const FusedMlp view = arena.view(trained);
  FusedMlp overlapping = view;  // b0 and its gradient where W0's begin
  overlapping.biases[0] = overlapping.weights[0], overlapping.bias_grads[0] = overlapping.weight_grads[0];
  const size_t all = arena.values.size();
  const auto says = [](const std::string& message, const char* part) {
    return message.find(part) != std::string::npos;
  };
  const std::string past_w0 = refusal(arena.b_at[0], all - arena.b_at[0], view);
  EXPECT_TRUE(says(past_w0, "does not hold")) << "an arena that starts past W0: \"" << past_w0 << '"';
  const std::string before_b0 = refusal(0, arena.b_at[0], view);
  EXPECT_TRUE(says(before_b0, "does not hold")) << "an arena that ends before b0: \"" << before_b0 << '"';
  const std::string overlap = refusal(0, all, overlapping);
  EXPECT_TRUE(says(overlap, "overlap")) << "W0 and b0 overlapping: \"" << overlap << '"';
  EXPECT_EQ(refusal(0, all, view), "") << "the whole arena";
  // (the app's arena has no padding after a tensor whose size is a multiple of 64 floats)
  EXPECT_EQ(refusal(0, arena.b_at[0] + trained.b[0].size(), view), "") << "an arena that ends where b0 does";
}

// Block 0's per-model loss sums on their own (a whole step at these sizes is slow to emulate):
// 10 models, more than a block's 8 warps, and 300 rows, more than one round of 8 loads × 32
// lanes; against float64 sums, for both losses' scales, with the watch flagging a NaN row.
TEST(FusedLossSums, ManyModelsAndRowsMatchFloat64) {
  const int64_t S = 10, B = 300;
  std::mt19937 rng(5);
  std::uniform_real_distribution<double> u(0.0, 3.0);
  std::vector<double> rows(static_cast<size_t>(S * B));
  for (double& r : rows) r = u(rng);
  for (bool distill : {false, true}) {
    const std::string what = distill ? "distillation" : "cross-entropy";
    std::vector<float> loss(size_t(S), kNaN), sums(size_t(S), 1.0f);
    std::vector<double> with_nan = rows;
    with_nan[size_t(7 * B + 299)] = std::nan("");  // model 7's last row
    int64_t step = 41, first_bad = kNoFault;
    LossRows p{};
    p.row_loss = with_nan.data(), p.loss_out = loss.data();
    p.trained = S, p.batch = B, p.distill = distill, p.temperature = 2.0;
    FusedTail tail;
    tail.loss_sum = sums.data(), tail.loss_weight = float(B), tail.step = &step, tail.first_bad = &first_bad;
    simt::launch(1, tile::kBlockThreads, [&] { reduce_losses(p, tail); });
    for (int64_t m = 0; m < S; ++m) {
      double sum = 0.0;
      for (int64_t b = 0; b < B; ++b) sum += rows[size_t(m * B + b)];
      const double expected = (distill ? 4.0 : 1.0) * sum / double(B);
      if (m == 7) {
        EXPECT_TRUE(std::isnan(loss[size_t(m)]) && std::isnan(sums[size_t(m)]))
            << what << ": model 7's NaN row";
        continue;
      }
      EXPECT_NEAR(loss[size_t(m)], expected, 1e-6 * expected) << what << ": model " << m;
      EXPECT_EQ(sums[size_t(m)], 1.0f + float(B) * loss[size_t(m)])
          << what << ": model " << m << "'s running sum";
    }
    EXPECT_EQ(first_bad, 41) << what << ": the NaN row's step";
  }
}

// ---- the loss rows on their own (ops/cuda/loss_rows.cuh) --------------------------------------
// The steps above reach the row math with small logits, labels inside the loss's columns and dz
// overwritten. Here one warp runs it on a row that reaches the rest, against float64: logits
// far past where exp overflows (float's at 88, double's at 709: the max shift keeps the sums
// finite), the loss on [c0, c1) = [5, 38) of 40 columns (more than a warp's lanes), dz
// accumulated into, as the loss kernels (ops/cuda/rowwise.cu) do, and labels outside the loss's
// columns.
constexpr int64_t kRowCols = 40, kRowC0 = 5, kRowC1 = 38;

std::vector<float> row_around(float centre, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-3.0f, 3.0f);
  std::vector<float> row(static_cast<size_t>(kRowCols));
  for (float& v : row) v = centre + u(rng);
  return row;
}

// log Σ exp(scale·row[c]) over the loss's columns, in float64.
double row_log_sum_exp(const std::vector<float>& row, double scale) {
  double top = -INFINITY, sum = 0.0;
  for (int64_t c = kRowC0; c < kRowC1; ++c) top = std::max(top, scale * double(row[size_t(c)]));
  for (int64_t c = kRowC0; c < kRowC1; ++c) sum += std::exp(scale * double(row[size_t(c)]) - top);
  return top + std::log(sum);
}

TEST(LossRows, CrossEntropyOfLargeLogitsAccumulatesIntoDz) {
  const std::vector<float> z = row_around(500.0f, 1), before = row_around(0.0f, 2);  // expf(500) = inf
  const int32_t label = 7;
  const float g = 0.25f;
  const double lse = row_log_sum_exp(z, 1.0);
  for (bool accumulate : {true, false}) {
    std::vector<float> dz = before;
    double loss = kNaN;
    simt::launch(1, 32, [&] {
      const double row =
          rows::cross_entropy_row(z.data(), kRowCols, kRowC0, kRowC1, label, g, dz.data(), accumulate);
      if (threadIdx.x == 0) loss = row;
    });
    const std::string what = accumulate ? "accumulating" : "overwriting";
    EXPECT_NEAR(loss, lse - double(z[size_t(kRowC0 + label)]), 1e-4) << what;
    for (int64_t c = 0; c < kRowCols; ++c) {
      const bool inside = c >= kRowC0 && c < kRowC1;
      const double v =
          inside ? g * (std::exp(double(z[size_t(c)]) - lse) - (c - kRowC0 == label ? 1.0 : 0.0)) : 0.0;
      EXPECT_NEAR(dz[size_t(c)], (accumulate ? double(before[size_t(c)]) : 0.0) + v, 5e-5)
          << what << ": dz[" << c << "]";
    }
  }
  // A label outside [0, c1 − c0) gives a NaN loss — also one whose column c0 + label is still
  // in the row (33: column 38 of 40), which must not be read as the label's logit.
  for (int32_t bad : {-1, int32_t(kRowC1 - kRowC0)}) {
    double loss = 0.0;
    simt::launch(1, 32, [&] {
      const double row = rows::cross_entropy_row(z.data(), kRowCols, kRowC0, kRowC1, bad, g, nullptr, false);
      if (threadIdx.x == 0) loss = row;
    });
    EXPECT_TRUE(std::isnan(loss)) << "label " << bad << " gave the loss " << loss;
  }
}

TEST(LossRows, DistillationOfLargeLogitsAccumulatesIntoDs) {
  const double inv_t = 0.5, g = 0.5;  // T = 2: scaled logits near 1000, past double's exp too
  const std::vector<float> s = row_around(2000.0f, 3), t = row_around(2000.0f, 4),
                           before = row_around(0.0f, 5);
  const double lse_s = row_log_sum_exp(s, inv_t), lse_t = row_log_sum_exp(t, inv_t);
  double kl_ref = 0.0;
  for (int64_t c = kRowC0; c < kRowC1; ++c) {
    const double log_p = inv_t * double(t[size_t(c)]) - lse_t, log_q = inv_t * double(s[size_t(c)]) - lse_s;
    kl_ref += std::exp(log_p) * (log_p - log_q);
  }
  for (bool accumulate : {true, false}) {
    std::vector<float> ds = before;
    double kl = kNaN;
    simt::launch(1, 32, [&] {
      const double row =
          rows::distill_kl_row(s.data(), t.data(), kRowCols, kRowC0, kRowC1, inv_t, g, ds.data(), accumulate);
      if (threadIdx.x == 0) kl = row;
    });
    const std::string what = accumulate ? "accumulating" : "overwriting";
    EXPECT_NEAR(kl, kl_ref, 1e-9 * std::max(1.0, kl_ref)) << what;
    for (int64_t c = 0; c < kRowCols; ++c) {
      const bool inside = c >= kRowC0 && c < kRowC1;
      const double v = inside ? g * (std::exp(inv_t * double(s[size_t(c)]) - lse_s) -
                                     std::exp(inv_t * double(t[size_t(c)]) - lse_t))
                              : 0.0;
      EXPECT_NEAR(ds[size_t(c)], (accumulate ? double(before[size_t(c)]) : 0.0) + v, 1e-6)
          << what << ": ds[" << c << "]";
    }
  }
}

// Jensen–Shannon's row (--divergence js), the same way, against the naive float64 formula: the
// loss ½ Σ [p log(p/m) + q log(q/m)] and ds (+)= g·q·(h − Σ q·h), h = ½ log(q/m) — on logits far
// past exp's overflow, and on rows whose softmaxes barely overlap (p ≈ 1 where q ≈ 0 and back;
// then JS nears its bound, log 2, and terms of an underflowed p or q drop out).
TEST(LossRows, JensenShannonOfLargeAndDisjointRowsAccumulatesIntoDs) {
  const double inv_t = 0.5, g = 0.5;
  std::vector<float> apart_s = row_around(0.0f, 6), apart_t = row_around(0.0f, 7);
  apart_s[size_t(kRowC0)] += 300.0f, apart_t[size_t(kRowC1 - 1)] += 300.0f;  // 150 after 1/T: e^−150 ≈ 7e−66
  const std::vector<std::pair<std::vector<float>, std::vector<float>>> cases = {
      {row_around(2000.0f, 3), row_around(2000.0f, 4)}, {apart_s, apart_t}};
  for (size_t k = 0; k < cases.size(); ++k) {
    const auto& [s, t] = cases[k];
    const double lse_s = row_log_sum_exp(s, inv_t), lse_t = row_log_sum_exp(t, inv_t);
    std::vector<double> p(static_cast<size_t>(kRowCols)), q(static_cast<size_t>(kRowCols));
    double js_ref = 0.0, mean_h = 0.0;
    for (int64_t c = kRowC0; c < kRowC1; ++c) {
      p[size_t(c)] = std::exp(inv_t * double(t[size_t(c)]) - lse_t);
      q[size_t(c)] = std::exp(inv_t * double(s[size_t(c)]) - lse_s);
      const double m = (p[size_t(c)] + q[size_t(c)]) / 2;
      js_ref += (p[size_t(c)] * std::log(p[size_t(c)] / m) + q[size_t(c)] * std::log(q[size_t(c)] / m)) / 2;
      mean_h += q[size_t(c)] * std::log(q[size_t(c)] / m) / 2;
    }
    if (k == 1) {
      EXPECT_NEAR(js_ref, std::log(2.0), 1e-3) << "the rows should barely overlap";
    }
    const std::vector<float> before = row_around(0.0f, 5);
    for (bool accumulate : {true, false}) {
      std::vector<float> ds = before;
      double js = kNaN;
      simt::launch(1, 32, [&] {
        const double row = rows::distill_js_row(s.data(), t.data(), kRowCols, kRowC0, kRowC1, inv_t, g,
                                                ds.data(), accumulate);
        if (threadIdx.x == 0) js = row;
      });
      const std::string what = std::string(k == 0 ? "large logits, " : "disjoint rows, ") +
                               (accumulate ? "accumulating" : "overwriting");
      EXPECT_NEAR(js, js_ref, 1e-12) << what;
      for (int64_t c = 0; c < kRowCols; ++c) {
        const bool inside = c >= kRowC0 && c < kRowC1;
        const double h = inside ? std::log(2 * q[size_t(c)] / (p[size_t(c)] + q[size_t(c)])) / 2 : 0.0;
        const double v = inside ? g * q[size_t(c)] * (h - mean_h) : 0.0;
        EXPECT_NEAR(ds[size_t(c)], (accumulate ? double(before[size_t(c)]) : 0.0) + v, 1e-6)
            << what << ": ds[" << c << "]";
      }
    }
  }
}

// The rows' edges: a class of probability 0 on one side (a logit of −inf) keeps the loss and
// its gradient finite, by KL (only the teacher's side: KL(p ‖ q) is infinite where q alone is
// 0) and by JS (either side); a NaN logit in either row makes the loss NaN, and a NaN in the
// student's row its gradient too.
TEST(LossRows, ZeroProbabilityClassesAndNaNLogits) {
  auto run = [](Divergence divergence, const std::vector<float>& s, const std::vector<float>& t,
                std::vector<float>& ds) {
    double loss = kNaN;
    simt::launch(1, 32, [&] {
      const double row = rows::distill_row(divergence, s.data(), t.data(), kRowCols, kRowC0, kRowC1, 0.5, 1.0,
                                           ds.data(), false);
      if (threadIdx.x == 0) loss = row;
    });
    return loss;
  };
  const std::vector<float> finite = row_around(0.0f, 8);
  std::vector<float> with_minus_inf = row_around(0.0f, 9), with_nan = row_around(0.0f, 10);
  with_minus_inf[size_t(kRowC0 + 3)] = -INFINITY;
  with_nan[size_t(kRowC1 - 2)] = NAN;
  for (const Divergence divergence : {Divergence::kl, Divergence::js}) {
    const std::string what = divergence_name(divergence);
    std::vector<float> ds(static_cast<size_t>(kRowCols), 0.0f);
    EXPECT_TRUE(std::isfinite(run(divergence, finite, with_minus_inf, ds)))
        << what << ": −inf in the teacher";
    for (float v : ds) EXPECT_TRUE(std::isfinite(v)) << what << ": −inf in the teacher";
    if (divergence == Divergence::js) {
      EXPECT_TRUE(std::isfinite(run(divergence, with_minus_inf, finite, ds)))
          << what << ": −inf in the student";
      for (float v : ds) EXPECT_TRUE(std::isfinite(v)) << what << ": −inf in the student";
    }
    EXPECT_TRUE(std::isnan(run(divergence, finite, with_nan, ds))) << what << ": NaN in the teacher";
    EXPECT_TRUE(std::isnan(run(divergence, with_nan, finite, ds))) << what << ": NaN in the student";
    EXPECT_TRUE(std::isnan(ds[size_t(kRowC0)])) << what << ": NaN in the student, its gradient";
  }
}

// On the GPU the L1 rule is checked at the line size (128 bytes): a workspace buffer that
// shared a line with the input would be caught there though no element overlaps — which is
// why ops/cuda/fused_step.cu starts every buffer on a 256-byte boundary.
TEST(FusedL1Rule, ABufferSharingALineWithTheInputIsCaughtAtLineSize) {
  const std::vector<int64_t> sizes{21, 16, 16, 13};
  const int64_t B = 8;
  HostMlp trained(sizes, 1, 3);
  std::vector<float> arena(8192);
  float* const base = reinterpret_cast<float*>((uintptr_t(arena.data()) + 127) / 128 * 128);
  auto build = [&](bool h1_right_after_x) {
    float* next = base;
    auto take = [&next, base](int64_t floats) {  // the next part, from a 128-byte boundary
      next = base + (next - base + 31) / 32 * 32;
      float* at = next;
      next += floats;
      return at;
    };
    float* x = take(B * sizes[0]);  // 168 floats: x's last 128-byte line is partly free
    Workspace ws;
    ws.H.assign(3, nullptr), ws.G.assign(4, nullptr);
    if (h1_right_after_x) {
      ws.H[1] = next;  // x + 168 floats
      next += B * sizes[1];
    } else {
      ws.H[1] = take(B * sizes[1]);
    }
    ws.H[2] = take(B * sizes[2]);
    for (int l = 1; l <= 3; ++l) ws.G[size_t(l)] = take(B * sizes[size_t(l)]);
    ws.logits = take(B * sizes[3]);
    ws.row_loss = reinterpret_cast<double*>(take(2 * B));
    float* loss_out = take(1);
    FusedLoss loss;
    loss.c0 = 0, loss.c1 = 10;
    return build_program(x, B, trained.view(true), nullptr, loss, loss_out, ws, 4, nullptr);
  };
  EXPECT_EQ(l1_rule_violation(build(false), 128), "") << "every buffer on its own lines";
  EXPECT_EQ(l1_rule_violation(build(true), 1), "") << "no element of H1 overlaps x";
  EXPECT_NE(l1_rule_violation(build(true), 128), "")
      << "H1 starts inside x's last line: forward layer 0 caches it, writes H1, and layer 1 reads H1";
}

// The program's plan for the app's default run on an H100/H200 (132 SMs × 2 blocks): every
// phase's items fit in one wave of the grid, and a phase's GEMMs get items of similar length.
TEST(FusedPlan, DefaultRunPhasesFitOneWave) {
  const int grid = 264;
  const std::vector<int64_t> sizes{784, 256, 256, 13};
  for (const auto& [S, F] : std::vector<std::pair<int64_t, int64_t>>{{1, 0}, {2, 1}}) {
    FusedMlp trained, frozen;
    for (FusedMlp* m : {&trained, &frozen}) {
      m->layers = 3, m->sizes = sizes;
      m->weights.assign(3, nullptr), m->biases.assign(3, nullptr);
      m->weight_grads.assign(3, nullptr), m->bias_grads.assign(3, nullptr);
    }
    trained.models = S, frozen.models = F;
    // Buffers of the real sizes: build_program only offsets into them (nothing runs here).
    const int64_t B = 256;
    std::vector<float> x(static_cast<size_t>(S * B * sizes[0])),
        h1(static_cast<size_t>((S + F) * B * sizes[1])), h2(static_cast<size_t>((S + F) * B * sizes[2])),
        logits(static_cast<size_t>(logit_rows(S, F > 0) * B * sizes[3]));
    Workspace ws{{nullptr, h1.data(), h2.data()}, std::vector<float*>(4, nullptr), logits.data(), nullptr};
    FusedLoss loss;
    loss.distill = F > 0, loss.c0 = F > 0 ? 10 : 0, loss.c1 = F > 0 ? 13 : 10;
    const Program prog =
        build_program(x.data(), B, trained, F > 0 ? &frozen : nullptr, loss, nullptr, ws, grid, nullptr);
    for (int ph = 0; ph < prog.phases; ++ph) {
      int64_t items = 0, longest = 0, shortest = 1 << 30;
      for (int j = prog.phase[ph].first_gemm; j < prog.phase[ph].first_gemm + prog.phase[ph].gemms; ++j) {
        const Gemm& g = prog.gemm[j];
        items += g.items;
        longest = std::max(longest, g.k_per_split), shortest = std::min(shortest, g.k_per_split);
      }
      const std::string what =
          (F > 0 ? "distillation" : "teacher") + std::string(" step, phase ") + std::to_string(ph);
      EXPECT_LE(items, grid) << what << ": a second wave";
      if (prog.phase[ph].gemms > 1 && prog.gemm[prog.phase[ph].first_gemm].K > 32) {
        EXPECT_LE(longest, 2 * shortest) << what << ": its GEMMs' slices are far apart in length";
      }
    }
  }
}

// A GEMM finishes its split tiles in bands only where its whole phase fits one wave: every item
// of the phase on a block of its own, all running at once. An item waits for the others of its
// tile; were one of them queued behind another waiting item on the same block, the grid would
// hang (on the GPU the poll traps). Checked over sizes and grids where some phases take more
// items than the grid (those GEMMs finish their tiles by the last item instead).
TEST(FusedPlan, BandsOnlyWhereTheWholePhaseFitsOneWave) {
  int over_one_wave = 0;  // phases with a split GEMM and more items than the grid
  for (const std::vector<int64_t>& sizes :
       {std::vector<int64_t>{784, 256, 256, 13}, std::vector<int64_t>{300, 40, 20, 13},
        std::vector<int64_t>{53, 29, 7}})
    for (const auto& [S, F] : std::vector<std::pair<int64_t, int64_t>>{{1, 0}, {3, 0}, {2, 1}})
      for (int64_t B : {37, 256})
        for (int grid : {5, 17, 64, 132})
          for (const FusedSplitPolicy& split : {FusedSplitPolicy{}, FusedSplitPolicy{16, 1, true}}) {
            const int L = int(sizes.size()) - 1;
            FusedMlp trained, frozen;
            for (FusedMlp* m : {&trained, &frozen}) {
              m->layers = L, m->sizes = sizes;
              m->weights.assign(size_t(L), nullptr), m->biases.assign(size_t(L), nullptr);
              m->weight_grads.assign(size_t(L), nullptr), m->bias_grads.assign(size_t(L), nullptr);
            }
            trained.models = S, frozen.models = F;
            std::vector<float> x(size_t(S * B * sizes[0])),
                logits(size_t(logit_rows(S, F > 0) * B * sizes.back()));
            std::vector<std::vector<float>> h(static_cast<size_t>(L));
            Workspace ws{std::vector<float*>(size_t(L), nullptr), std::vector<float*>(size_t(L) + 1, nullptr),
                         logits.data(), nullptr};
            for (int l = 1; l < L; ++l)
              h[size_t(l)].resize(size_t((S + F) * B * sizes[size_t(l)])),
                  ws.H[size_t(l)] = h[size_t(l)].data();
            FusedLoss loss;
            loss.distill = F > 0, loss.c0 = 0, loss.c1 = sizes.back();
            const Program prog = build_program(x.data(), B, trained, F > 0 ? &frozen : nullptr, loss, nullptr,
                                               ws, grid, nullptr, split);
            for (int ph = 0; ph < prog.phases; ++ph) {
              int64_t items = 0;
              bool split_here = false;
              for (int j = prog.phase[ph].first_gemm; j < prog.phase[ph].first_gemm + prog.phase[ph].gemms;
                   ++j)
                items += prog.gemm[j].items, split_here = split_here || prog.gemm[j].splits > 1;
              over_one_wave += split_here && items > grid;
              for (int j = prog.phase[ph].first_gemm; j < prog.phase[ph].first_gemm + prog.phase[ph].gemms;
                   ++j)
                ASSERT_TRUE(!prog.gemm[j].parallel_fixup || items <= grid)
                    << "phase " << ph << " of " << sizes.size() - 1 << " layers, " << S << "+" << F
                    << " models, batch " << B << ", grid " << grid << ": " << items << " items, GEMM " << j
                    << " finishes in bands";
            }
          }
  EXPECT_GT(over_one_wave, 0) << "no phase took more items than the grid: the check above checked nothing";
}

}  // namespace
}  // namespace subliminal::cuda::fused
