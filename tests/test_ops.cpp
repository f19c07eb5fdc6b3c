// tests/test_ops.cpp — forward values of the ops against computations written out here by
// hand (naive loops, the formulas of REFERENCE.md), and the GEMM layer's contracts that a
// gradient check cannot see: the ReLU bit-mask layout, NaN and zero handling, overwrite versus
// accumulate, and the masked-accumulate path that must not mask what dx already held; and the
// fused training step's CPU path (the autograd step it stands for) and its shape checks.
#include <gtest/gtest.h>

#include <chrono>    // std::chrono::seconds
#include <cmath>     // std::exp, std::log, std::isnan
#include <cstdio>    // std::fprintf
#include <cstdlib>   // std::_Exit
#include <cstring>   // std::memcmp
#include <future>    // std::promise, std::future
#include <limits>    // std::numeric_limits
#include <optional>  // std::optional
#include <thread>    // std::thread
#include <vector>    // std::vector

#include "engine/adam.h"        // Adam
#include "engine/autograd.h"    // NoGradGuard
#include "engine/kernels.h"     // fill, accumulate_and_watch, increment
#include "engine/parallel.h"    // set_cpu_threads, cpu_threads
#include "engine/step_graph.h"  // StepGraph
#include "engine/storage.h"     // cpu_allocator_stats, reset_cpu_peak, cpu_cache_trim
#include "ops/batch.h"          // noise_batch, gather_batch
#include "ops/cpu/gemm_cpu.h"   // gemm_plan, gemm_slab
#include "ops/fused_step.h"     // fused_cross_entropy_step, fused_distill_step
#include "ops/gemm.h"           // gemm::forward, backward_input, backward_weight, mask_shape
#include "ops/loss.h"           // cross_entropy, distill, distill_kl, kl_div
#include "ops/metrics.h"        // count_correct
#include "ops/mlp.h"            // mlp_forward
#include "ops/slice.h"          // slice_columns
#include "ops/softmax.h"        // softmax, log_softmax
#include "tests/test_util.h"    // random tensors, values_of

namespace {

using namespace subliminal;
using subliminal::test::random_f32;
using subliminal::test::random_f64;
using subliminal::test::random_labels;
using subliminal::test::values_of;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// ---- Losses ------------------------------------------------------------------------------------

// log Σ_{c ∈ [c0, c1)} exp(row[c]), written the naive way (inputs are small).
double log_sum_exp(const std::vector<double>& row, int64_t c0, int64_t c1) {
  double s = 0;
  for (int64_t c = c0; c < c1; ++c) s += std::exp(row[size_t(c)]);
  return std::log(s);
}

std::vector<double> row_of(const std::vector<double>& v, int64_t row, int64_t cols) {
  return {v.begin() + row * cols, v.begin() + (row + 1) * cols};
}

// F.cross_entropy(logits[:, :, 2:7], labels): the mean over the batch of −log softmax at the
// label, per model, in float64 and float32.
TEST(Ops, CrossEntropyIsMeanNegativeLogSoftmaxAtTheLabel) {
  const int64_t N = 2, B = 4, C = 9, c0 = 2, c1 = 7;
  const Tensor labels = random_labels(N, B, int32_t(c1 - c0), 1);
  for (DType dtype : {DType::f64, DType::f32}) {
    SCOPED_TRACE(dtype_name(dtype));
    const Tensor logits =
        dtype == DType::f64 ? random_f64({N, B, C}, 2, -3, 3) : random_f32({N, B, C}, 2, -3, 3);
    const std::vector<double> z = values_of(logits);
    const std::vector<int32_t> y = labels.to_vector<int32_t>();
    const std::vector<double> loss = values_of(cross_entropy(logits, labels, {c0, c1}));
    ASSERT_EQ(loss.size(), size_t(N));
    for (int64_t n = 0; n < N; ++n) {
      double expected = 0;
      for (int64_t b = 0; b < B; ++b) {
        std::vector<double> row = row_of(z, n * B + b, C);
        expected += -(row[size_t(c0 + y[size_t(n * B + b)])] - log_sum_exp(row, c0, c1)) / double(B);
      }
      EXPECT_NEAR(loss[size_t(n)], expected, dtype == DType::f64 ? 1e-12 : 1e-5) << "model " << n;
    }
  }
}

// The notebook's distillation loss: kl_div(log_softmax(s/T), softmax(t/T), "batchmean") · T²
// on the ghost columns only.
TEST(Ops, DistillKlIsTSquaredTimesTheKlByHand) {
  const int64_t N = 2, B = 3, C = 13, c0 = 10, c1 = 13;
  const double T = 2.5;
  const Tensor student = random_f64({N, B, C}, 3, -3, 3), teacher = random_f64({N, B, C}, 4, -3, 3);
  const std::vector<double> s = values_of(student), t = values_of(teacher);
  const std::vector<double> loss = values_of(distill_kl(student, teacher, {c0, c1}, T));
  for (int64_t n = 0; n < N; ++n) {
    double kl = 0;
    for (int64_t b = 0; b < B; ++b) {
      std::vector<double> sr = row_of(s, n * B + b, C), tr = row_of(t, n * B + b, C);
      for (double& v : sr) v /= T;
      for (double& v : tr) v /= T;
      const double lse_s = log_sum_exp(sr, c0, c1), lse_t = log_sum_exp(tr, c0, c1);
      for (int64_t c = c0; c < c1; ++c) {
        const double log_p = tr[size_t(c)] - lse_t, log_q = sr[size_t(c)] - lse_s;
        kl += std::exp(log_p) * (log_p - log_q);
      }
    }
    EXPECT_NEAR(loss[size_t(n)], T * T * kl / double(B), 1e-12) << "model " << n;
  }
}

// Jensen–Shannon (--divergence js): T²·the batch mean of ½ KL(p ‖ m) + ½ KL(q ‖ m),
// m = (p + q)/2, computed here from its definition. It is symmetric (swapping student and
// teacher gives the same loss), zero with zero gradient for equal rows, and below T²·log 2.
TEST(Ops, DistillJsIsTSquaredTimesTheJsByHand) {
  const int64_t N = 2, B = 3, C = 13, c0 = 10, c1 = 13;
  const double T = 2.5;
  const Tensor student = random_f64({N, B, C}, 3, -3, 3), teacher = random_f64({N, B, C}, 4, -3, 3);
  const std::vector<double> s = values_of(student), t = values_of(teacher);
  const std::vector<double> loss = values_of(distill(student, teacher, {c0, c1}, T, Divergence::js));
  for (int64_t n = 0; n < N; ++n) {
    double js = 0;
    for (int64_t b = 0; b < B; ++b) {
      std::vector<double> p(static_cast<size_t>(C)), q(static_cast<size_t>(C));
      double zp = 0, zq = 0;
      for (int64_t c = c0; c < c1; ++c) {
        p[size_t(c)] = std::exp(t[size_t((n * B + b) * C + c)] / T), zp += p[size_t(c)];
        q[size_t(c)] = std::exp(s[size_t((n * B + b) * C + c)] / T), zq += q[size_t(c)];
      }
      for (int64_t c = c0; c < c1; ++c) {
        const double pc = p[size_t(c)] / zp, qc = q[size_t(c)] / zq, m = (pc + qc) / 2;
        js += (pc * std::log(pc / m) + qc * std::log(qc / m)) / 2;
      }
    }
    EXPECT_NEAR(loss[size_t(n)], T * T * js / double(B), 1e-12) << "model " << n;
    EXPECT_GT(loss[size_t(n)], 0.0);
    EXPECT_LT(loss[size_t(n)], T * T * std::log(2.0));
  }
  const std::vector<double> swapped = values_of(distill(teacher, student, {c0, c1}, T, Divergence::js));
  for (int64_t n = 0; n < N; ++n) EXPECT_NEAR(swapped[size_t(n)], loss[size_t(n)], 1e-12) << "model " << n;

  Tensor same = teacher.clone();
  same.set_requires_grad(true);
  Tensor zero = distill(same, teacher, {c0, c1}, T, Divergence::js);
  zero.backward();
  for (double v : values_of(zero)) EXPECT_NEAR(v, 0.0, 1e-15);
  for (double v : values_of(same.grad())) EXPECT_NEAR(v, 0.0, 1e-15);
}

// A class of probability 0 (a logit of −inf) on one side only: its p·log(p/m) term drops out
// as in KL, while the other side's q·log(q/m) = q·log 2 stays — a finite loss and gradient. A
// student logit of −inf likewise.
TEST(Ops, DistillJsTakesZeroProbabilityClassesAndNaNPoisonsKlAndJs) {
  const double inf = std::numeric_limits<double>::infinity();
  auto js_by_hand = [](std::vector<double> sl, std::vector<double> tl) {
    double zs = 0, zt = 0, js = 0;
    for (double& v : sl) v = std::exp(v), zs += v;
    for (double& v : tl) v = std::exp(v), zt += v;
    for (size_t c = 0; c < sl.size(); ++c) {
      const double q = sl[c] / zs, p = tl[c] / zt, m = (p + q) / 2;
      if (p > 0) js += p * std::log(p / m) / 2;
      if (q > 0) js += q * std::log(q / m) / 2;
    }
    return js;
  };
  const std::vector<double> finite = {0.3, -0.2, 0.7}, one_out = {-inf, 1.0, 2.0};
  for (const auto& [sl, tl] : {std::pair{finite, one_out}, std::pair{one_out, finite}}) {
    Tensor student = Tensor::from_vector(sl, {1, 1, 3});
    student.set_requires_grad(true);
    Tensor loss = distill(student, Tensor::from_vector(tl, {1, 1, 3}), {0, 3}, 1.0, Divergence::js);
    EXPECT_NEAR(values_of(loss)[0], js_by_hand(sl, tl), 1e-12);
    loss.backward();
    for (double g : values_of(student.grad())) EXPECT_TRUE(std::isfinite(g)) << g;
  }
  // A NaN in either row: a NaN loss (the run's non-finite guard then stops it) and, for a NaN in
  // the student's row, NaN gradients — by KL as by JS (KL once dropped a NaN teacher's terms).
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (const Divergence divergence : {Divergence::kl, Divergence::js})
    for (const auto& [sl, tl] : {std::pair{std::vector<double>{nan, 0.0, 1.0}, finite},
                                 std::pair{finite, std::vector<double>{0.0, nan, 1.0}}}) {
      Tensor student = Tensor::from_vector(sl, {1, 1, 3});
      student.set_requires_grad(true);
      Tensor loss = distill(student, Tensor::from_vector(tl, {1, 1, 3}), {0, 3}, 1.0, divergence);
      EXPECT_TRUE(std::isnan(values_of(loss)[0])) << divergence_name(divergence);
      loss.backward();
      if (std::isnan(sl[0])) {
        for (double g : values_of(student.grad())) EXPECT_TRUE(std::isnan(g)) << divergence_name(divergence);
      }
    }
}

// Only an exact zero drops out: a NaN or negative target probability makes that model's loss NaN,
// as torch's xlogy(p, p) does (skipping every p ≤ 0 would hide a NaN teacher).
TEST(Ops, KlDivKeepsANanOrNegativeTargetInTheLoss) {
  const std::vector<double> log_q = {-0.7, -0.7, -0.7, -0.7, -0.7, -0.7};
  const std::vector<double> p = {std::nan(""), 0.5, -0.5, 1.5, 0.5, 0.5};
  const std::vector<double> loss =
      values_of(kl_div(Tensor::from_vector(log_q, {3, 1, 2}), Tensor::from_vector(p, {3, 1, 2})));
  EXPECT_TRUE(std::isnan(loss[0]));
  EXPECT_TRUE(std::isnan(loss[1]));
  EXPECT_NEAR(loss[2], 2 * 0.5 * (std::log(0.5) + 0.7), 1e-14);
}

// PyTorch's kl_div defines 0·log 0 = 0: a target with exact zeros gives a finite loss equal to
// the sum over the non-zero entries only (computed naively, 0·(log 0 − x) would be NaN).
TEST(Ops, KlDivTreatsZeroTimesLogZeroAsZero) {
  const int64_t N = 2, B = 2, C = 3;
  const std::vector<double> p = {0.5, 0.5, 0.0, /**/ 1.0, 0.0, 0.0, /**/ 0.2, 0.3, 0.5, /**/ 0.0, 0.25, 0.75};
  const std::vector<double> log_q = {-1.0, -0.5, -2.0, -0.1, -3.0, -4.0, -1.5, -1.2, -0.7, -2.2, -1.1, -0.3};
  const std::vector<double> loss =
      values_of(kl_div(Tensor::from_vector(log_q, {N, B, C}), Tensor::from_vector(p, {N, B, C})));
  for (int64_t n = 0; n < N; ++n) {
    double expected = 0;
    for (int64_t i = n * B * C; i < (n + 1) * B * C; ++i)
      if (p[size_t(i)] != 0) expected += p[size_t(i)] * (std::log(p[size_t(i)]) - log_q[size_t(i)]);
    EXPECT_NEAR(loss[size_t(n)], expected / double(B), 1e-14) << "model " << n;
  }
}

// Logits far from 0 (1000 and −1000, which an unshifted exp turns into inf and 0): the max
// shift in log-sum-exp keeps the loss the finite value it is for logits near 0, in
// cross-entropy, log_softmax and softmax.
TEST(Ops, LargeLogitsGiveFiniteLossesThroughTheMaxShift) {
  const std::vector<double> near = {0.5, -1.0, 2.0, /**/ -0.25, 0.0, 1.5};
  const Tensor labels = Tensor::from_vector(std::vector<int32_t>{2, 0}, {1, 2});
  const double expected = values_of(cross_entropy(Tensor::from_vector(near, {1, 2, 3}), labels, {0, 3}))[0];
  for (double shift : {1000.0, -1000.0}) {
    std::vector<double> far = near;
    for (double& v : far) v += shift;
    const Tensor logits = Tensor::from_vector(far, {1, 2, 3});
    EXPECT_NEAR(values_of(cross_entropy(logits, labels, {0, 3}))[0], expected, 1e-9) << "shift " << shift;
    const std::vector<double> log_p = values_of(log_softmax(logits));
    EXPECT_NEAR(log_p[2], near[2] - std::log(std::exp(0.5) + std::exp(-1.0) + std::exp(2.0)), 1e-9);
    EXPECT_NEAR(values_of(softmax(logits))[2], std::exp(log_p[2]), 1e-12);
  }
  // The distillation loss shifts the student's and the teacher's rows each by its own maximum.
  const Tensor student = random_f64({1, 2, 3}, 6), teacher = random_f64({1, 2, 3}, 7);
  for (Divergence divergence : {Divergence::kl, Divergence::js}) {
    const double near_loss = values_of(distill(student, teacher, {0, 3}, 2.0, divergence))[0];
    for (double shift : {1000.0, -1000.0}) {
      std::vector<double> s = values_of(student), t = values_of(teacher);
      for (double& v : t) v += shift;
      for (double& v : s) v -= shift;
      const Tensor far_s = Tensor::from_vector(s, {1, 2, 3}), far_t = Tensor::from_vector(t, {1, 2, 3});
      EXPECT_NEAR(values_of(distill(far_s, far_t, {0, 3}, 2.0, divergence))[0], near_loss, 1e-9)
          << divergence_name(divergence) << ", shift " << shift;
    }
  }
}

// A label outside the class range (−1, or the range's width) would read a logit outside it;
// it is a ShapeError, in the loss and in its backward.
TEST(Ops, CrossEntropyRefusesLabelsOutsideTheClasses) {
  const Tensor logits = random_f64({1, 2, 5}, 5);
  for (int32_t bad : {-1, 3}) {
    const Tensor labels = Tensor::from_vector(std::vector<int32_t>{0, bad}, {1, 2});
    EXPECT_THROW(cross_entropy(logits, labels, {1, 4}), ShapeError) << "label " << bad;
  }
  EXPECT_NO_THROW(cross_entropy(logits, Tensor::from_vector(std::vector<int32_t>{0, 2}, {1, 2}), {1, 4}));
}

// As torch (kl_div's 0·log 0 = 0), a teacher logit of −inf is a class of probability 0 that
// adds nothing to the distillation loss, rather than 0·(−inf) = NaN: the loss equals that of the
// teacher row without it, here (−inf, 1, 2) against (1, 2) on the last two columns.
TEST(Ops, DistillKlSkipsTeacherClassesOfProbabilityZero) {
  const double inf = std::numeric_limits<double>::infinity();
  const Tensor student = Tensor::from_vector(std::vector<double>{0.3, -0.2, 0.7}, {1, 1, 3});
  const Tensor teacher = Tensor::from_vector(std::vector<double>{-inf, 1.0, 2.0}, {1, 1, 3});
  const double loss = values_of(distill_kl(student, teacher, {0, 3}, 1.0))[0];
  const double q1 = std::exp(-0.2) / (std::exp(0.3) + std::exp(-0.2) + std::exp(0.7));
  const double q2 = std::exp(0.7) / (std::exp(0.3) + std::exp(-0.2) + std::exp(0.7));
  const double p1 = std::exp(1.0) / (std::exp(1.0) + std::exp(2.0)), p2 = 1 - p1;
  EXPECT_NEAR(loss, p1 * std::log(p1 / q1) + p2 * std::log(p2 / q2), 1e-12);
}

// What the loss kernels trust is checked first: a non-empty batch, labels [N, B] (not a
// transposed [B, N]), teachers that divide the students and match their batch, a positive
// temperature, and targets that are constants of the same shape.
TEST(Ops, LossArgumentsAreChecked) {
  const Tensor logits = random_f64({2, 3, 4}, 51);
  EXPECT_THROW(cross_entropy(random_f64({2, 0, 4}, 52), random_labels(2, 0, 4, 53), {0, 4}), ShapeError);
  EXPECT_THROW(cross_entropy(logits, random_labels(3, 2, 4, 54), {0, 4}), ShapeError);
  EXPECT_THROW(distill_kl(random_f64({4, 3, 4}, 55), random_f64({3, 3, 4}, 56), {0, 4}, 1.0), ShapeError);
  EXPECT_THROW(distill_kl(logits, random_f64({2, 2, 4}, 57), {0, 4}, 1.0), ShapeError);
  EXPECT_THROW(distill_kl(logits, random_f64({2, 3, 4}, 58), {0, 4}, 0.0), ShapeError);
  Tensor trained_teacher = random_f64({2, 3, 4}, 59);
  trained_teacher.set_requires_grad(true);
  EXPECT_THROW(distill_kl(logits, trained_teacher, {0, 4}, 1.0), ShapeError);
  EXPECT_THROW(kl_div(logits, trained_teacher), ShapeError);
  EXPECT_THROW(kl_div(logits, random_f64({2, 4, 3}, 60)), ShapeError);
  EXPECT_NO_THROW(distill_kl(logits, random_f64({1, 3, 4}, 61), {0, 4}, 1.0));
  // JS's checks are the same ones
  EXPECT_THROW(distill(logits, random_f64({2, 2, 4}, 57), {0, 4}, 1.0, Divergence::js), ShapeError);
  EXPECT_THROW(distill(logits, random_f64({2, 3, 4}, 58), {0, 4}, 0.0, Divergence::js), ShapeError);
  EXPECT_THROW(distill(logits, trained_teacher, {0, 4}, 1.0, Divergence::js), ShapeError);
}

// Student n learns from teacher n mod the teachers' count (by KL and by JS): with 4 students and 2 teachers,
// students 2 and 3 see teachers 0 and 1 again — each loss, and each gradient, is that of a
// one-student call against its own teacher.
TEST(Ops, DistillCyclesOverTheTeachers) {
  const int64_t N = 4, B = 3, C = 6;
  const Tensor student = random_f64({N, B, C}, 21, -3, 3), teacher = random_f64({2, B, C}, 22, -3, 3);
  for (Divergence divergence : {Divergence::kl, Divergence::js}) {
    Tensor s = student.clone();
    s.set_requires_grad(true);
    const std::vector<double> loss = values_of(distill(s, teacher, {2, 6}, 2.0, divergence));
    distill(s, teacher, {2, 6}, 2.0, divergence).backward();
    const std::vector<double> grad = values_of(s.grad());
    for (int64_t n = 0; n < N; ++n) {
      Tensor one = student.rows(n, 1).clone();
      one.set_requires_grad(true);
      Tensor own_loss = distill(one, teacher.rows(n % 2, 1), {2, 6}, 2.0, divergence);
      EXPECT_EQ(loss[size_t(n)], values_of(own_loss)[0]) << divergence_name(divergence) << ", student " << n;
      own_loss.backward();
      EXPECT_EQ(row_of(grad, n, B * C), values_of(one.grad()))
          << divergence_name(divergence) << ", student " << n;
    }
  }
}

// Column ranges must be non-empty and inside the row ([1, 1), [−1, 2) and [2, 6) of 5 columns
// are ShapeErrors), and a softmax needs at least one column.
TEST(Ops, EmptyOrOutOfRowColumnRangesAreShapeErrors) {
  const Tensor x = random_f64({2, 3, 5}, 41);
  for (ColumnRange bad : {ColumnRange{1, 1}, ColumnRange{-1, 2}, ColumnRange{2, 6}}) {
    EXPECT_THROW(slice_columns(x, bad), ShapeError) << bad.begin << ", " << bad.end;
    EXPECT_THROW(cross_entropy(x, random_labels(2, 3, 1, 42), bad), ShapeError)
        << bad.begin << ", " << bad.end;
  }
  EXPECT_EQ(slice_columns(x, {4, 5}).shape(), (Shape{2, 3, 1}));
  EXPECT_THROW(softmax(Tensor::zeros({2, 0}, DType::f64)), ShapeError);
  EXPECT_THROW(log_softmax(Tensor::zeros({2, 0}, DType::f64)), ShapeError);
}

// ---- Accuracy counting ---------------------------------------------------------------------------

// torch.argmax's rules: the first of tied maxima wins, and a NaN is the maximum (the first NaN
// if there are several). Classes sit in columns 1..4 of 5 here; counts accumulate.
TEST(Ops, CountCorrectTiesGoToTheFirstAndNaNIsMaximal) {
  const int64_t N = 2, B = 5, C = 5;
  // Column 0 is outside the classes: its huge value must be ignored.
  const std::vector<double> logits = {
      // model 0
      99, 1, 3, 3, 0,        // tie between classes 1 and 2: argmax 1
      99, 1, 3, 3, 0,        // same row, label 2: wrong
      99, 1, kNaN, 5, 0,     // NaN at class 1 beats 5
      99, 1, kNaN, 5, 0,     // same row, label 2 (the 5): wrong
      99, kNaN, 2, kNaN, 0,  // two NaNs: the first (class 0) wins
      // model 1
      99, 0, 0, 0, 0,      // all tied: class 0
      99, -1, -2, -3, -4,  // plain maximum at class 0
      99, 4, 3, 2, 1,      // label 3: wrong
      99, -kNaN, 1, 2, 3,  // a NaN of either sign is maximal
      99, 1, 2, 3, 3,      // tie between classes 2 and 3, label 3: wrong
  };
  const std::vector<int32_t> labels = {1, 2, 1, 2, 0, /**/ 0, 0, 3, 0, 3};
  Tensor counts = Tensor::from_vector(std::vector<int64_t>{10, 20}, {N});
  count_correct(Tensor::from_vector(logits, {N, B, C}), Tensor::from_vector(labels, {N, B}), {1, 5}, counts);
  EXPECT_EQ(counts.to_vector<int64_t>(), (std::vector<int64_t>{10 + 3, 20 + 3}));
  // One count per model: a shorter tensor would be written past its end.
  EXPECT_THROW(count_correct(Tensor::from_vector(logits, {N, B, C}), Tensor::from_vector(labels, {N, B}),
                             {1, 5}, Tensor::zeros({N - 1}, DType::i64)),
               ShapeError);
}

// torch.argmax takes the first of tied maxima. The test above pairs each of its ties with a twin
// labelled with the other tied class, so its counts come out the same when the last maximum wins;
// here every tie is labelled with its first class alone, so only the first winning counts 3.
TEST(Ops, CountCorrectCountsATieForItsFirstClassOnly) {
  const std::vector<double> logits = {
      // logits [1, 3, 4], classes [0, 4)
      2,  2, 0, 1,  // tie between classes 0 and 1: label 0
      0,  5, 5, 5,  // three-way tie from class 1: label 1
      -1, 0, 3, 3,  // tie between the last two classes: label 2
  };
  const std::vector<int32_t> labels = {0, 1, 2};
  for (DType dtype : {DType::f64, DType::f32}) {
    SCOPED_TRACE(dtype_name(dtype));
    const Tensor z = dtype == DType::f64
                         ? Tensor::from_vector(logits, {1, 3, 4})
                         : Tensor::from_vector(std::vector<float>(logits.begin(), logits.end()), {1, 3, 4});
    Tensor counts = Tensor::zeros({1}, DType::i64);
    count_correct(z, Tensor::from_vector(labels, {1, 3}), {0, 4}, counts);
    EXPECT_EQ(counts.to_vector<int64_t>(), (std::vector<int64_t>{3}));
  }
}

// ---- GEMMs against naive loops -------------------------------------------------------------------

constexpr int64_t N = 2, B = 5, I = 7, O = 3;  // odd sizes, two models

// y[n,b,o] = Σ_i x[n,b,i]·w[n,o,i] + bias[n,o]
std::vector<double> naive_forward(const std::vector<double>& x, const std::vector<double>& w,
                                  const std::vector<double>* bias, int64_t n_models, int64_t batch,
                                  int64_t in, int64_t out) {
  std::vector<double> y(size_t(n_models * batch * out));
  for (int64_t n = 0; n < n_models; ++n)
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t o = 0; o < out; ++o) {
        double s = bias ? (*bias)[size_t(n * out + o)] : 0.0;
        for (int64_t i = 0; i < in; ++i)
          s += x[size_t((n * batch + b) * in + i)] * w[size_t((n * out + o) * in + i)];
        y[size_t((n * batch + b) * out + o)] = s;
      }
  return y;
}

// dx[n,b,i] = Σ_o dy[n,b,o]·w[n,o,i]
std::vector<double> naive_dx(const std::vector<double>& dy, const std::vector<double>& w) {
  std::vector<double> dx(size_t(N * B * I));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < I; ++i) {
        double s = 0;
        for (int64_t o = 0; o < O; ++o) s += dy[size_t((n * B + b) * O + o)] * w[size_t((n * O + o) * I + i)];
        dx[size_t((n * B + b) * I + i)] = s;
      }
  return dx;
}

// dw[n,o,i] = Σ_b dy[n,b,o]·x[n,b,i];  db[n,o] = Σ_b dy[n,b,o]
std::vector<double> naive_dw(const std::vector<double>& dy, const std::vector<double>& x) {
  std::vector<double> dw(size_t(N * O * I));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < O; ++o)
      for (int64_t i = 0; i < I; ++i) {
        double s = 0;
        for (int64_t b = 0; b < B; ++b) s += dy[size_t((n * B + b) * O + o)] * x[size_t((n * B + b) * I + i)];
        dw[size_t((n * O + o) * I + i)] = s;
      }
  return dw;
}
std::vector<double> naive_db(const std::vector<double>& dy, int64_t features) {
  const int64_t batch = int64_t(dy.size()) / (N * features);
  std::vector<double> db(size_t(N * features), 0.0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t f = 0; f < features; ++f)
        db[size_t(n * features + f)] += dy[size_t((n * batch + b) * features + f)];
  return db;
}

void expect_near_all(const std::vector<double>& got, const std::vector<double>& expected, double tolerance,
                     const char* what) {
  ASSERT_EQ(got.size(), expected.size()) << what;
  for (size_t i = 0; i < got.size(); ++i)
    EXPECT_NEAR(got[i], expected[i], tolerance) << what << "[" << i << "]";
}

bool mask_bit(const std::vector<uint8_t>& mask, int64_t row, int64_t row_bytes, int64_t f) {
  return (mask[size_t(row * row_bytes + f / 8)] >> (f % 8)) & 1;
}

// forward with and without bias and ReLU, two models, float32 and float64.
TEST(Gemm, ForwardMatchesNaiveLoops) {
  for (DType dtype : {DType::f64, DType::f32}) {
    const double tolerance = dtype == DType::f64 ? 1e-13 : 1e-5;
    auto make = [&](const Shape& s, uint64_t seed) {
      return dtype == DType::f64 ? random_f64(s, seed) : random_f32(s, seed);
    };
    const Tensor x = make({N, B, I}, 1), w = make({N, O, I}, 2), bias = make({N, O}, 3);
    const std::vector<double> xv = values_of(x), wv = values_of(w), bv = values_of(bias);
    for (bool with_bias : {false, true}) {
      for (gemm::Activation act : {gemm::Activation::none, gemm::Activation::relu}) {
        SCOPED_TRACE(std::string(dtype_name(dtype)) + (with_bias ? " bias" : " no bias") +
                     (act == gemm::Activation::relu ? " relu" : ""));
        const bool relu = act == gemm::Activation::relu;
        Tensor y = Tensor::full({N, B, O}, kNaN, dtype);  // poisoned: every element must be written
        Tensor mask = relu ? Tensor::empty(gemm::mask_shape(N, B, O), DType::u8) : Tensor();
        gemm::forward(x, w, with_bias ? bias : Tensor(), act, y, mask);
        std::vector<double> expected = naive_forward(xv, wv, with_bias ? &bv : nullptr, N, B, I, O);
        if (relu)
          for (double& v : expected) v = v > 0 ? v : 0;
        expect_near_all(values_of(y), expected, tolerance, "y");
      }
    }
  }
}

// backward_input and backward_weight (with the bias gradient) for two models.
TEST(Gemm, BackwardMatchesNaiveLoops) {
  const Tensor x = random_f64({N, B, I}, 4), w = random_f64({N, O, I}, 5), dy = random_f64({N, B, O}, 6);
  Tensor dx = Tensor::full({N, B, I}, kNaN, DType::f64);
  gemm::backward_input(dy, w, Tensor(), dx, Tensor(), false);
  expect_near_all(values_of(dx), naive_dx(values_of(dy), values_of(w)), 1e-13, "dx");

  Tensor dw = Tensor::full({N, O, I}, kNaN, DType::f64), db = Tensor::full({N, O}, kNaN, DType::f64);
  gemm::backward_weight(dy, x, dw, false, db);
  expect_near_all(values_of(dw), naive_dw(values_of(dy), values_of(x)), 1e-13, "dw");
  expect_near_all(values_of(db), naive_db(values_of(dy), O), 1e-13, "db");
}

// ---- GEMMs cut over the CPU's threads (ops/cpu/gemm_cpu.cpp) ---------------------------------

// A slab a thread, cut along the longer side, fewer slabs where they would be thinner than
// kMinSlabExtent or smaller than kMinSlabMacs (one, when the product cannot be cut at all).
TEST(Gemm, PlanGivesEachThreadASlabWorthWaking) {
  struct Product {
    int64_t m, n, k;
  };
  for (const Product p :
       {Product{256, 13, 256}, Product{256, 784, 256}, Product{40, 13, 1024}, Product{8, 8, 8}})
    for (int threads = 1; threads <= 8; ++threads) {
      SCOPED_TRACE(std::to_string(p.m) + " × " + std::to_string(p.n) + " × " + std::to_string(p.k) + " on " +
                   std::to_string(threads) + " threads");
      const cpu::GemmPlan plan = cpu::gemm_plan(1, p.m, p.n, p.k, threads);
      EXPECT_EQ(plan.along_m, p.m >= p.n);
      EXPECT_GE(plan.parts, 1);
      EXPECT_LE(plan.parts, threads);
      EXPECT_EQ(plan.slabs, plan.parts);
      if (plan.parts > 1) {
        EXPECT_GE((plan.along_m ? p.m : p.n) / plan.parts, cpu::kMinSlabExtent);
        EXPECT_GE(p.m * p.n * p.k / plan.parts, cpu::kMinSlabMacs);
      }
    }
  EXPECT_EQ(cpu::gemm_plan(1, 256, 256, 784, 2).parts, 2);  // the first layer on two threads: two slabs
  EXPECT_EQ(cpu::gemm_plan(1, 256, 784, 256, 16).parts, 16);
  EXPECT_EQ(cpu::gemm_plan(1, 256, 13, 256, 8).parts, 6);  // 8 slabs would be under kMinSlabMacs
  EXPECT_EQ(cpu::gemm_plan(1, 40, 13, 1024, 8).parts, 2);  // 40 rows: no slab under 16
  EXPECT_EQ(cpu::gemm_plan(1, 8, 8, 8, 8).parts, 1);
  EXPECT_EQ(cpu::gemm_plan(1, 256, 256, 784, 2).grain, 1);
  EXPECT_EQ(cpu::gemm_plan(5, 8, 8, 8, 8).grain, 5);  // five tiny products: all on one thread
}

// Each model of a batch is cut exactly as it would be alone — the same slabs, covering its C
// once, in order — for 1 to 5 models on 1 to 8 threads: what keeps model m of --models N
// equal to a run of that model alone, whatever OpenBLAS's kernels do with a slab.
TEST(Gemm, ABatchCutsEachModelAsItWouldBeCutAlone) {
  struct Product {
    int64_t m, n, k;
  };
  using Cuts = std::vector<std::pair<int64_t, int64_t>>;
  const auto cuts_of = [](const cpu::GemmPlan& plan, const Product& p, int64_t model) {
    Cuts cuts;
    for (int64_t i = 0; i < plan.slabs; ++i) {
      const cpu::GemmSlab s = cpu::gemm_slab(plan, p.m, p.n, i);
      if (s.model == model) cuts.emplace_back(s.from, s.to);
    }
    return cuts;
  };
  for (const Product p :
       {Product{256, 13, 256}, Product{256, 784, 256}, Product{13, 256, 256}, Product{8, 8, 8}})
    for (int threads = 1; threads <= 8; ++threads) {
      const cpu::GemmPlan alone = cpu::gemm_plan(1, p.m, p.n, p.k, threads);
      const Cuts expected = cuts_of(alone, p, 0);
      // alone, the slabs cover the side they cut once, in order
      int64_t at = 0;
      for (const auto& [from, to] : expected) {
        EXPECT_EQ(from, at);
        EXPECT_GE(to, from);
        at = to;
      }
      EXPECT_EQ(at, alone.along_m ? p.m : p.n);
      for (int64_t models = 1; models <= 5; ++models) {
        SCOPED_TRACE(std::to_string(models) + " models of " + std::to_string(p.m) + " × " +
                     std::to_string(p.n) + " × " + std::to_string(p.k) + " on " + std::to_string(threads) +
                     " threads");
        const cpu::GemmPlan batch = cpu::gemm_plan(models, p.m, p.n, p.k, threads);
        EXPECT_EQ(batch.along_m, alone.along_m);
        int64_t slabs = 0;
        for (int64_t model = 0; model < models; ++model) {
          EXPECT_EQ(cuts_of(batch, p, model), expected) << "model " << model;
          slabs += int64_t(cuts_of(batch, p, model).size());
        }
        EXPECT_EQ(slabs, batch.slabs);  // no slab of a model outside the batch
      }
    }
}

// C (+)= op(A)·op(B) per model, in float64 with naive loops: a[m, k] = A(m, k), b[k, n] = B(k, n).
template <class A, class B>
std::vector<double> naive_product(int64_t models, int64_t m, int64_t n, int64_t k, A&& a, B&& b,
                                  std::vector<double> c) {
  for (int64_t s = 0; s < models; ++s)
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        double sum = 0;
        for (int64_t p = 0; p < k; ++p) sum += a(s, i, p) * b(s, p, j);
        c[size_t((s * m + i) * n + j)] += sum;
      }
  return c;
}

// The three products, cut into slabs of rows and of columns (transposed operands and plain
// ones, on both sides) over 1 to 7 threads, for 1 to 3 models, each slab's output poisoned or
// accumulated into: the same products as naive loops. Every product here is large enough to be
// cut (two slabs of ≥ kMinSlabExtent and ≥ kMinSlabMacs), and the last into up to 7, so that
// slabs in the middle are checked too.
TEST(Gemm, ProductsCutOverThreadsMatchNaiveLoops) {
  const int threads_before = cpu_threads();
  struct Sizes {
    int64_t batch, in, out;
  };
  for (const Sizes z : {Sizes{150, 61, 37}, Sizes{40, 57, 150}, Sizes{100, 90, 40}, Sizes{200, 90, 64}})
    for (int64_t models : {1, 2, 3})
      for (int threads : {1, 2, 3, 4, 7}) {
        SCOPED_TRACE(std::to_string(models) + " models [" + std::to_string(z.batch) + ", " +
                     std::to_string(z.in) + " → " + std::to_string(z.out) + "] on " +
                     std::to_string(threads) + " threads");
        set_cpu_threads(threads);
        const int64_t Bz = z.batch, Iz = z.in, Oz = z.out;
        const Tensor x = random_f64({models, Bz, Iz}, 21), w = random_f64({models, Oz, Iz}, 22),
                     dy = random_f64({models, Bz, Oz}, 23);
        const std::vector<double> xv = values_of(x), wv = values_of(w), dyv = values_of(dy);
        const auto X = [&](int64_t s, int64_t b, int64_t i) { return xv[size_t((s * Bz + b) * Iz + i)]; };
        const auto W = [&](int64_t s, int64_t o, int64_t i) { return wv[size_t((s * Oz + o) * Iz + i)]; };
        const auto DY = [&](int64_t s, int64_t b, int64_t o) { return dyv[size_t((s * Bz + b) * Oz + o)]; };

        Tensor y = Tensor::full({models, Bz, Oz}, kNaN, DType::f64);
        gemm::forward(x, w, Tensor(), gemm::Activation::none, y, Tensor());
        const auto Wt = [&](int64_t s, int64_t i, int64_t o) { return W(s, o, i); };
        expect_near_all(
            values_of(y),
            naive_product(models, Bz, Oz, Iz, X, Wt, std::vector<double>(size_t(models * Bz * Oz))), 1e-12,
            "y = x·wᵀ");

        const Tensor dx_prior = random_f64({models, Bz, Iz}, 24), dw_prior = random_f64({models, Oz, Iz}, 25);
        Tensor dx = dx_prior.clone();
        gemm::backward_input(dy, w, Tensor(), dx, Tensor(), true);
        expect_near_all(values_of(dx), naive_product(models, Bz, Iz, Oz, DY, W, values_of(dx_prior)), 1e-12,
                        "dx += dy·w");

        Tensor dw = dw_prior.clone();
        gemm::backward_weight(dy, x, dw, true, Tensor());
        const auto DYt = [&](int64_t s, int64_t o, int64_t b) { return DY(s, b, o); };
        expect_near_all(values_of(dw), naive_product(models, Oz, Iz, Bz, DYt, X, values_of(dw_prior)), 1e-12,
                        "dw += dyᵀ·x");
      }
  set_cpu_threads(threads_before);
}

// Model m of a batch gets exactly the bits of its product computed alone, on any thread count:
// its slabs follow its shapes and the threads, never how many models share the call (what keeps
// model m of --models N equal to a run of that model alone). float32, the production type, at
// the default run's first and last layers: with the development machine's OpenBLAS kernels a
// slab of the big one rounds like the whole, but a slab of the 13-wide one need not (giving each
// model a whole thread fails here, on 3 threads).
TEST(Gemm, EachModelOfABatchGetsTheBitsOfItsProductAlone) {
  const int threads_before = cpu_threads();
  constexpr int64_t models = 3, batch = 256;
  struct Layer {
    int64_t in, out;
  };
  for (const Layer layer : {Layer{784, 256}, Layer{256, 13}})
    for (int threads : {2, 3}) {
      SCOPED_TRACE(std::to_string(layer.in) + " → " + std::to_string(layer.out) + " on " +
                   std::to_string(threads) + " threads");
      set_cpu_threads(threads);
      const Tensor x = random_f32({models, batch, layer.in}, 31),
                   w = random_f32({models, layer.out, layer.in}, 32),
                   dy = random_f32({models, batch, layer.out}, 33);
      Tensor y = Tensor::empty({models, batch, layer.out}, DType::f32),
             dw = Tensor::empty({models, layer.out, layer.in}, DType::f32);
      gemm::forward(x, w, Tensor(), gemm::Activation::none, y, Tensor());
      gemm::backward_weight(dy, x, dw, false, Tensor());
      for (int64_t m = 0; m < models; ++m) {
        Tensor y1 = Tensor::empty({1, batch, layer.out}, DType::f32),
               dw1 = Tensor::empty({1, layer.out, layer.in}, DType::f32);
        gemm::forward(x.rows(m, 1), w.rows(m, 1), Tensor(), gemm::Activation::none, y1, Tensor());
        gemm::backward_weight(dy.rows(m, 1), x.rows(m, 1), dw1, false, Tensor());
        const std::vector<float> batched_y = y.rows(m, 1).to_vector<float>(), alone_y = y1.to_vector<float>();
        const std::vector<float> batched_dw = dw.rows(m, 1).to_vector<float>(),
                                 alone_dw = dw1.to_vector<float>();
        EXPECT_EQ(0, std::memcmp(batched_y.data(), alone_y.data(), alone_y.size() * sizeof(float)))
            << "y, model " << m;
        EXPECT_EQ(0, std::memcmp(batched_dw.data(), alone_dw.data(), alone_dw.size() * sizeof(float)))
            << "dw, model " << m;
      }
    }
  set_cpu_threads(threads_before);
}

// A GEMM inside a parallel_for body (on the job's caller and on a worker) runs its slabs on
// its own thread, engine/parallel.h's rule for nested calls, with the same slabs and so the same
// bits as outside. It used to wait forever for the pool's lock, held by the job's caller: a
// watchdog turns that into a failure within a minute rather than at ctest's timeout.
TEST(Gemm, AGemmInsideAParallelForRunsOnItsOwnThread) {
  const int threads_before = cpu_threads();
  set_cpu_threads(2);
  const Tensor x = random_f64({1, 64, 300}, 41), w = random_f64({1, 70, 300}, 42);
  Tensor outside = Tensor::empty({1, 64, 70}, DType::f64);
  gemm::forward(x, w, Tensor(), gemm::Activation::none, outside, Tensor());
  std::vector<Tensor> inside;
  for (int i = 0; i < 4; ++i) inside.push_back(Tensor::full({1, 64, 70}, kNaN, DType::f64));
  std::promise<void> done;
  std::future<void> finished = done.get_future();
  std::thread job([&] {
    parallel_for(4, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i)
        gemm::forward(x, w, Tensor(), gemm::Activation::none, inside[size_t(i)], Tensor());
    });
    done.set_value();
  });
  if (finished.wait_for(std::chrono::seconds(60)) != std::future_status::ready) {
    std::fprintf(stderr, "Gemm.AGemmInsideAParallelForRunsOnItsOwnThread: deadlocked\n");
    std::_Exit(1);
  }
  job.join();
  const std::vector<double> expected = values_of(outside);
  for (const Tensor& y : inside) {
    const std::vector<double> got = values_of(y);
    EXPECT_EQ(0, std::memcmp(got.data(), expected.data(), expected.size() * sizeof(double)));
  }
  set_cpu_threads(threads_before);
}

// The mask is cuBLASLt's format: per (model, sample) a row of roundup(F, 128) bits, bit f of
// the row at byte f/8, bit f%8 (LSB first), set where the output is > 0. F = 130 spans two
// 128-bit words, so a row is 32 bytes and a row-stride mistake shows at sample 1.
TEST(Gemm, ReluMaskBitsAreLsbFirstInRowsOf128BitWords) {
  const int64_t F = 130, In = 4, row_bytes = 32;
  ASSERT_EQ(gemm::mask_row_bits(F), 256);
  ASSERT_EQ(gemm::mask_shape(N, 3, F), (Shape{N, 3, row_bytes}));
  const Tensor x = random_f64({N, 3, In}, 7), w = random_f64({N, F, In}, 8), bias = random_f64({N, F}, 9);
  Tensor y = Tensor::empty({N, 3, F}, DType::f64);
  Tensor mask = Tensor::full(gemm::mask_shape(N, 3, F), 0xA5, DType::u8);  // garbage to overwrite
  gemm::forward(x, w, bias, gemm::Activation::relu, y, mask);
  const std::vector<double> pre = [&] {
    std::vector<double> bv = values_of(bias);
    const std::vector<double> xv = values_of(x), wv = values_of(w);
    return naive_forward(xv, wv, &bv, N, 3, In, F);
  }();
  const std::vector<uint8_t> bits = mask.to_vector<uint8_t>();
  int positives = 0;
  for (int64_t r = 0; r < N * 3; ++r)
    for (int64_t f = 0; f < F; ++f) {
      const bool positive = pre[size_t(r * F + f)] > 0;
      positives += positive;
      EXPECT_EQ(mask_bit(bits, r, row_bytes, f), positive) << "row " << r << " feature " << f;
    }
  EXPECT_GT(positives, 0);
  EXPECT_LT(positives, N * 3 * F);  // both kinds present, or the test proves little
}

// PyTorch's ReLU at the edges: an exact zero gives 0 with mask bit 0 (relu'(0) = 0); a NaN stays
// NaN with bit 1 (torch.relu propagates it, threshold_backward lets its gradient through) —
// through bias_activation and through a whole forward GEMM.
TEST(Gemm, ReluOfZeroIsZeroWithMaskZeroAndNaNStaysNaN) {
  const std::vector<double> pre = {0.0, kNaN, -0.0, -1.0, 2.0, 1e-300, -kNaN, 3.5};
  Tensor y = Tensor::from_vector(pre, {1, 1, 8});
  Tensor mask = Tensor::full(gemm::mask_shape(1, 1, 8), 0xFF, DType::u8);
  gemm::bias_activation(y, Tensor(), gemm::Activation::relu, mask);
  const std::vector<double> got = values_of(y);
  const std::vector<double> want = {0, kNaN, 0, 0, 2.0, 1e-300, kNaN, 3.5};
  for (size_t i = 0; i < want.size(); ++i) {
    if (std::isnan(want[i]))
      EXPECT_TRUE(std::isnan(got[i])) << "element " << i;
    else
      EXPECT_EQ(got[i], want[i]) << "element " << i;
  }
  EXPECT_EQ(mask.to_vector<uint8_t>()[0], 0b11110010);

  // Through the GEMM: sample 0 has a NaN input (all its outputs NaN before the ReLU); output 1
  // has a zero weight row and zero bias (pre-activation exactly 0 for every sample).
  std::vector<double> xv = values_of(random_f64({1, 2, 3}, 10, 0.5, 1.0));
  xv[1] = kNaN;
  const std::vector<double> wv = {1, 1, 1, /**/ 0, 0, 0};
  Tensor y2 = Tensor::empty({1, 2, 2}, DType::f64);
  Tensor mask2 = Tensor::full(gemm::mask_shape(1, 2, 2), 0xFF, DType::u8);
  gemm::forward(Tensor::from_vector(xv, {1, 2, 3}), Tensor::from_vector(wv, {1, 2, 3}),
                Tensor::zeros({1, 2}, DType::f64), gemm::Activation::relu, y2, mask2);
  const std::vector<double> out = values_of(y2);
  EXPECT_TRUE(std::isnan(out[0]));  // a NaN input poisons both outputs of sample 0 (0·NaN too)
  EXPECT_TRUE(std::isnan(out[1]));
  EXPECT_GT(out[2], 0.0);  // sample 1, positive weights and inputs
  EXPECT_EQ(out[3], 0.0);  // exact zero
  const std::vector<uint8_t> bits = mask2.to_vector<uint8_t>();
  EXPECT_EQ(bits[0] & 0b11, 0b11);   // sample 0: NaN passes the gradient
  EXPECT_EQ(bits[16] & 0b11, 0b01);  // sample 1 (row 16 bytes on): only output 0
}

// The ReLU gradient gate reads bit f of a row at byte f/8, bit f%8, in whole bytes and in the
// tail: with F = 19 (two whole bytes and three bits), each element of dx passes exactly where
// its bit is set, in every row (rows 16 bytes apart).
TEST(Gemm, ApplyReluMaskGatesEachFeatureByItsBit) {
  const int64_t F = 19, row_bytes = 16;
  std::vector<uint8_t> bytes(size_t(N * B * row_bytes));
  for (size_t k = 0; k < bytes.size(); ++k) bytes[k] = uint8_t(k * 37 + 11);
  const Tensor mask = Tensor::from_vector(bytes, gemm::mask_shape(N, B, F));
  Tensor dx = random_f64({N, B, F}, 38, 1, 2);
  const std::vector<double> before = values_of(dx);
  gemm::apply_relu_mask(dx, mask);
  const std::vector<double> after = values_of(dx);
  for (int64_t r = 0; r < N * B; ++r)
    for (int64_t f = 0; f < F; ++f) {
      const size_t k = size_t(r * F + f);
      EXPECT_EQ(after[k], mask_bit(bytes, r, row_bytes, f) ? before[k] : 0.0)
          << "row " << r << " feature " << f;
    }
}

// Bias gradients and non-accumulating weight gradients overwrite: a NaN already in the buffer
// must not survive (0·NaN would if the kernel scaled instead of overwriting).
TEST(Gemm, OverwritingGradientsIgnorePriorContents) {
  const Tensor x = random_f64({N, B, I}, 11), dy = random_f64({N, B, O}, 12);
  Tensor db = Tensor::full({N, O}, kNaN, DType::f64);
  gemm::bias_gradient(dy, db);
  expect_near_all(values_of(db), naive_db(values_of(dy), O), 1e-13, "bias_gradient");

  Tensor dw = Tensor::full({N, O, I}, kNaN, DType::f64), db2 = Tensor::full({N, O}, kNaN, DType::f64);
  gemm::backward_weight(dy, x, dw, false, db2);
  expect_near_all(values_of(dw), naive_dw(values_of(dy), values_of(x)), 1e-13, "dw");
  expect_near_all(values_of(db2), naive_db(values_of(dy), O), 1e-13, "db");
}

// accumulate = true adds the product to what the buffer holds (a shared weight's gradient).
// The bias gradient is always overwritten, even when dw accumulates.
TEST(Gemm, AccumulateAddsToThePriorContents) {
  const Tensor x = random_f64({N, B, I}, 13), w = random_f64({N, O, I}, 14), dy = random_f64({N, B, O}, 15);
  const Tensor prior_w = random_f64({N, O, I}, 16), prior_x = random_f64({N, B, I}, 17);

  Tensor dw = prior_w.clone(), db = Tensor::full({N, O}, 123.0, DType::f64);
  gemm::backward_weight(dy, x, dw, true, db);
  std::vector<double> expected = naive_dw(values_of(dy), values_of(x));
  const std::vector<double> pw = values_of(prior_w);
  for (size_t i = 0; i < expected.size(); ++i) expected[i] += pw[i];
  expect_near_all(values_of(dw), expected, 1e-13, "dw");
  expect_near_all(values_of(db), naive_db(values_of(dy), O), 1e-13, "db");

  Tensor dx = prior_x.clone();
  gemm::backward_input(dy, w, Tensor(), dx, Tensor(), true);
  std::vector<double> expected_x = naive_dx(values_of(dy), values_of(w));
  const std::vector<double> px = values_of(prior_x);
  for (size_t i = 0; i < expected_x.size(); ++i) expected_x[i] += px[i];
  expect_near_all(values_of(dx), expected_x, 1e-13, "dx");
}

// With a mask and accumulate, only the new product is masked: dx = prior + mask ⊙ (dy·w).
// Masking in place would zero the prior contents where the mask is 0 (ops/gemm.cpp's temporary).
TEST(Gemm, MaskedAccumulateLeavesPriorContentsUnmasked) {
  const Tensor w = random_f64({N, O, I}, 18), dy = random_f64({N, B, O}, 19);
  // A mask with about half the bits set, different per model and sample.
  std::vector<uint8_t> mask_bytes(size_t(N * B * 16), 0);
  std::vector<bool> on(size_t(N * B * I));
  for (int64_t r = 0; r < N * B; ++r)
    for (int64_t i = 0; i < I; ++i) {
      const bool bit = (r * 7 + i * 3) % 5 < 2;
      on[size_t(r * I + i)] = bit;
      if (bit) mask_bytes[size_t(r * 16 + i / 8)] |= uint8_t(1u << (i % 8));
    }
  const Tensor mask = Tensor::from_vector(mask_bytes, gemm::mask_shape(N, B, I));
  Tensor dx = Tensor::full({N, B, I}, 5.0, DType::f64);
  gemm::backward_input(dy, w, mask, dx, Tensor(), true);
  const std::vector<double> product = naive_dx(values_of(dy), values_of(w)), got = values_of(dx);
  int masked = 0;
  for (size_t k = 0; k < got.size(); ++k) {
    masked += !on[k];
    EXPECT_NEAR(got[k], 5.0 + (on[k] ? product[k] : 0.0), 1e-13)
        << "element " << k << (on[k] ? "" : " (masked)");
  }
  EXPECT_GT(masked, 0);

  // The same without accumulate: masked elements become exactly 0, the bias gradient of the
  // layer below is the batch sum of the masked product.
  Tensor dx2 = Tensor::full({N, B, I}, kNaN, DType::f64), db = Tensor::full({N, I}, kNaN, DType::f64);
  gemm::backward_input(dy, w, mask, dx2, db, false);
  std::vector<double> masked_product = product;
  for (size_t k = 0; k < masked_product.size(); ++k)
    if (!on[k]) masked_product[k] = 0;
  expect_near_all(values_of(dx2), masked_product, 1e-13, "dx");
  expect_near_all(values_of(db), naive_db(masked_product, I), 1e-13, "dbias_prev");
}

// The GEMMs trust the shapes they were given for their strides: an input whose width is not
// the weight's, or an output gradient that is not [N, B, O], is a ShapeError — never a product
// read with the wrong leading dimension.
TEST(Gemm, MismatchedShapesAreShapeErrors) {
  const Tensor x = random_f64({N, B, I}, 31), w = random_f64({N, O, I}, 32), dy = random_f64({N, B, O}, 33);
  Tensor y = Tensor::empty({N, B, O}, DType::f64), dx = Tensor::empty({N, B, I}, DType::f64);
  Tensor dw = Tensor::empty({N, O, I}, DType::f64);
  EXPECT_THROW(gemm::forward(random_f64({N, B, I + 1}, 34), w, Tensor(), gemm::Activation::none, y, Tensor()),
               ShapeError);
  EXPECT_THROW(gemm::backward_input(random_f64({N, B, O + 1}, 35), w, Tensor(), dx, Tensor(), false),
               ShapeError);
  EXPECT_THROW(gemm::backward_weight(random_f64({N, B + 1, O}, 36), x, dw, false, Tensor()), ShapeError);
  // Outputs, biases and masks of the wrong shape, and a bias gradient of the layer below
  // without the ReLU mask it is computed through.
  const Tensor mask = Tensor::zeros(gemm::mask_shape(N, B, O), DType::u8);
  EXPECT_THROW(gemm::forward(x, w, random_f64({N, O + 1}, 37), gemm::Activation::none, y, Tensor()),
               ShapeError);
  EXPECT_THROW(gemm::forward(x, w, Tensor(), gemm::Activation::relu, y, Tensor::zeros({N, B, 1}, DType::u8)),
               ShapeError);
  EXPECT_THROW(
      gemm::backward_input(dy, w, Tensor(), Tensor::empty({N, B, I + 1}, DType::f64), Tensor(), false),
      ShapeError);
  EXPECT_THROW(gemm::backward_input(dy, w, Tensor(), dx, Tensor::empty({N, I}, DType::f64), false),
               ShapeError);
  EXPECT_THROW(gemm::backward_weight(dy, x, Tensor::empty({N, O, I + 1}, DType::f64), false, Tensor()),
               ShapeError);
  // A uint8 tensor is a mask, nothing else; a mask of another dtype is refused too.
  EXPECT_THROW(
      gemm::forward(x, Tensor::zeros({N, O, I}, DType::u8), Tensor(), gemm::Activation::none, y, Tensor()),
      ShapeError);
  EXPECT_THROW(gemm::forward(x, w, Tensor(), gemm::Activation::relu, y,
                             Tensor::zeros(gemm::mask_shape(N, B, O), DType::f64)),
               ShapeError);
  // The well-shaped calls go through.
  gemm::forward(x, w, Tensor(), gemm::Activation::relu, y, mask);
  gemm::backward_input(dy, w, Tensor(), dx, Tensor(), false);
  gemm::backward_weight(dy, x, dw, false, Tensor());
}

// ---- Engine kernels the training loop relies on (engine/kernels.h) --------------------------------

// add_into scales by alpha: dst += alpha · src. copy_into moves raw bytes, so another element
// count is refused rather than read or written past the end.
TEST(Kernels, AddIntoScalesByAlphaAndCopyIntoNeedsTheSameCount) {
  Tensor dst = Tensor::from_vector(std::vector<double>{1, 2}, {2});
  add_into(dst, Tensor::from_vector(std::vector<double>{10, 20}, {2}), -0.5);
  EXPECT_EQ(values_of(dst), (std::vector<double>{-4, -8}));
  EXPECT_THROW(copy_into(dst, Tensor::zeros({3}, DType::f64)), ShapeError);
  EXPECT_THROW(copy_into(Tensor::zeros({3}, DType::f64), dst), ShapeError);
}

// The fault marker keeps the first step whose loss was not finite: a later bad step (the
// loss stays NaN once it is) must not move it on; a finite step leaves it alone.
TEST(Kernels, AccumulateAndWatchKeepsTheFirstBadStep) {
  Tensor sum = Tensor::zeros({2}, DType::f64), first_bad = Tensor::full({1}, 1e9, DType::i64);
  const Tensor bad = Tensor::from_vector(std::vector<double>{1, kNaN}, {2});
  const Tensor good = Tensor::from_vector(std::vector<double>{1, 1}, {2});
  for (int64_t step : {2, 3, 5, 6}) {
    accumulate_and_watch(sum, step == 2 ? good : bad, 1.0, Tensor::full({1}, double(step), DType::i64),
                         first_bad);
  }
  EXPECT_EQ(first_bad.to_vector<int64_t>(), std::vector<int64_t>{3});
}

// The watch's own checks: sums [N] of the values' shape and dtype, an int64 step counter.
TEST(Kernels, AccumulateAndWatchChecksItsTensors) {
  const Tensor values = Tensor::zeros({2}, DType::f64), step = Tensor::zeros({1}, DType::i64);
  const Tensor bad = Tensor::full({1}, 1e9, DType::i64);
  EXPECT_THROW(accumulate_and_watch(Tensor::zeros({3}, DType::f64), values, 1.0, step, bad), ShapeError);
  EXPECT_THROW(
      accumulate_and_watch(Tensor::zeros({1, 2}, DType::f64), values.reshaped({1, 2}), 1.0, step, bad),
      ShapeError);
  EXPECT_THROW(
      accumulate_and_watch(Tensor::zeros({2}, DType::f64), values, 1.0, Tensor::zeros({1}, DType::f64), bad),
      ShapeError);
  EXPECT_NO_THROW(accumulate_and_watch(Tensor::zeros({2}, DType::f64), values, 1.0, step, bad));
}

// Infinities count as non-finite as well as NaNs (the app stops on either).
TEST(Kernels, CountNonfiniteCountsInfinitiesAndNaNs) {
  const double inf = std::numeric_limits<double>::infinity();
  EXPECT_EQ(count_nonfinite(Tensor::from_vector(std::vector<double>{1, inf, -inf, kNaN, 0}, {5})), 3);
  EXPECT_EQ(count_nonfinite(Tensor::from_vector(std::vector<float>{1, float(inf), -2}, {3})), 1);
}

// increment takes at most 4 counters per call (the GPU kernel's fixed array).
TEST(Kernels, IncrementRefusesMoreThanFourCounters) {
  std::vector<Tensor> five;
  for (int k = 0; k < 5; ++k) five.push_back(Tensor::zeros({1}, DType::i64));
  EXPECT_THROW(increment(five), ShapeError);
  five.pop_back();
  increment(five);
  for (const Tensor& c : five) EXPECT_EQ(c.to_vector<int64_t>(), std::vector<int64_t>{1});
}

}  // namespace

// ---- The fused training step (ops/fused_step.h) on the CPU ---------------------------------------

namespace subliminal_fused_test {

using namespace subliminal;

// Each parameter's gradient (the arena's padding between tensors is not a gradient).
std::vector<std::vector<double>> gradients_of(const MlpParams& p) {
  std::vector<std::vector<double>> g;
  for (const Tensor& t : p.tensors()) g.push_back(values_of(t.grad()));
  return g;
}

MlpParams random_mlp(const std::vector<int64_t>& sizes, int64_t models, uint64_t seed) {
  MlpParams p(MlpShape{sizes}, models, DType::f64, Device::cpu);
  init_mlp(p, InitScheme::torch_default, std::vector<uint64_t>(size_t(models), seed), 0);
  return p;
}

// Without a backward pass to come, the fused MLP keeps no layer's output behind: a forward pass
// through 40 hidden layers holds about what one through 2 does. (It kept every layer's output and
// mask to the end, ≈ 475 KB a layer in the app's evaluation: 1.3 GB for 2 000 layers of width 1.)
TEST(FusedMlp, AForwardPassWithoutGradientsKeepsNoLayerBehind) {
  auto held_by_forward = [](int hidden_layers, bool grad) {
    std::vector<int64_t> sizes(size_t(hidden_layers) + 1, 64);
    sizes.push_back(10);
    const MlpParams p = random_mlp(sizes, 1, 3);
    const Tensor x = random_f64({1, 512, 64}, 2);
    cpu_cache_trim();
    reset_cpu_peak();
    const uint64_t before = cpu_allocator_stats().bytes_held;
    {
      std::optional<NoGradGuard> no_grad;
      if (!grad) no_grad.emplace();
      const Tensor logits = mlp_forward(x, p, MlpFusion::whole);
    }
    return cpu_allocator_stats().peak_bytes_held - before;
  };
  const uint64_t layer = 512 * 64 * sizeof(double);  // one hidden layer's output
  EXPECT_LT(held_by_forward(40, false), held_by_forward(2, false) + layer);
  EXPECT_GT(held_by_forward(40, true), held_by_forward(2, true) + 30 * layer);  // what a backward pass needs
}

// On the CPU the fused step is the autograd step it stands for: the same losses, the same
// gradients in the arena, whatever the arena held before.
TEST(FusedStep, CpuCrossEntropyStepIsTheAutogradStep) {
  const std::vector<int64_t> sizes{11, 9, 8, 6};
  MlpParams fused = random_mlp(sizes, 2, 5), reference = random_mlp(sizes, 2, 5);
  EXPECT_FALSE(fused_step_on_gpu(fused));
  const Tensor x = random_f64({2, 7, 11}, 1), y = random_labels(2, 7, 4, 2);
  fill(fused.grads(), 123.0);  // stale gradients must be overwritten
  const Tensor loss = fused_cross_entropy_step(x, y, fused, {1, 5});
  zero_grad(reference.tensors());
  Tensor ref_loss = cross_entropy(mlp_forward(x, reference), y, {1, 5});
  ref_loss.backward();
  EXPECT_EQ(values_of(loss), values_of(ref_loss));
  EXPECT_FALSE(loss.requires_grad()) << "the fused step returns a plain tensor, no graph";
  EXPECT_EQ(gradients_of(fused), gradients_of(reference));
}

TEST(FusedStep, CpuDistillStepIsTheAutogradStep) {
  const std::vector<int64_t> sizes{11, 9, 6};
  for (Divergence divergence : {Divergence::kl, Divergence::js}) {
    SCOPED_TRACE(divergence_name(divergence));
    MlpParams students = random_mlp(sizes, 4, 6), reference = random_mlp(sizes, 4, 6);
    const MlpParams teachers = random_mlp(sizes, 2, 7);
    const Tensor x = random_f64({4, 5, 11}, 3);
    const Tensor loss = fused_distill_step(x, students, teachers, {3, 6}, 2.0, divergence);
    Tensor teacher_logits;
    {
      NoGradGuard no_grad;
      teacher_logits = mlp_forward(x.rows(0, 2), teachers);
    }
    zero_grad(reference.tensors());
    Tensor ref_loss = distill(mlp_forward(x, reference), teacher_logits, {3, 6}, 2.0, divergence);
    ref_loss.backward();
    EXPECT_EQ(values_of(loss), values_of(ref_loss));
    EXPECT_EQ(gradients_of(students), gradients_of(reference));
  }
}

// A step's gradients are its own: the CPU step marks the arena's gradients empty first (the
// autograd step's zero_grad), so a second step does not add to the first's.
TEST(FusedStep, ConsecutiveStepsDoNotAccumulateGradients) {
  const std::vector<int64_t> sizes{11, 9, 6};
  MlpParams params = random_mlp(sizes, 2, 5);
  const MlpParams teachers = random_mlp(sizes, 2, 7);
  const Tensor x1 = random_f64({2, 7, 11}, 1), x2 = random_f64({2, 7, 11}, 2), y = random_labels(2, 7, 6, 3);
  fused_cross_entropy_step(x1, y, params, {0, 6});
  fused_cross_entropy_step(x2, y, params, {0, 6});
  MlpParams fresh = random_mlp(sizes, 2, 5);
  fused_cross_entropy_step(x2, y, fresh, {0, 6});
  EXPECT_EQ(gradients_of(params), gradients_of(fresh)) << "cross-entropy";
  fused_distill_step(x1, params, teachers, {3, 6}, 2.0, Divergence::kl);
  fused_distill_step(x2, params, teachers, {3, 6}, 2.0, Divergence::kl);
  MlpParams fresh_student = random_mlp(sizes, 2, 5);
  fused_distill_step(x2, fresh_student, teachers, {3, 6}, 2.0, Divergence::kl);
  EXPECT_EQ(gradients_of(params), gradients_of(fresh_student)) << "distillation";
}

// On the CPU a StepGraph has nothing to capture: every call runs the step.
TEST(StepGraph, OnTheCpuEveryCallRunsTheStep) {
  for (bool use_graphs : {true, false}) {
    StepGraph graph(Device::cpu, use_graphs);
    int runs = 0;
    for (int k = 0; k < 3; ++k) graph.run([&] { ++runs; });
    EXPECT_EQ(runs, 3) << "use_graphs " << use_graphs;
    EXPECT_EQ(graph.kernel_nodes(), 0u);
  }
}

// With a tail, the CPU step then makes the tail's calls: Adam, the loss sums and watch, the
// counters — the same values as making them by hand after the plain step.
TEST(FusedStep, CpuTailIsTheSeparateCalls) {
  const std::vector<int64_t> sizes{11, 9, 6};
  MlpParams fused = random_mlp(sizes, 2, 5), reference = random_mlp(sizes, 2, 5);
  Adam fused_adam(fused.values(), fused.grads(), {1e-2}),
      ref_adam(reference.values(), reference.grads(), {1e-2});
  const Tensor x = random_f64({2, 7, 11}, 1), y = random_labels(2, 7, 6, 2);
  auto counters = [] {
    return std::vector<Tensor>{Tensor::full({1}, 3.0, DType::i64), Tensor::full({1}, 9.0, DType::i64)};
  };
  std::vector<Tensor> fused_counters = counters(), ref_counters = counters();
  Tensor fused_sum = Tensor::full({2}, 0.5, DType::f64), ref_sum = Tensor::full({2}, 0.5, DType::f64);
  Tensor fused_bad = Tensor::full({1}, 1e9, DType::i64), ref_bad = Tensor::full({1}, 1e9, DType::i64);
  StepTail tail;
  tail.adam = &fused_adam;
  tail.loss_sum = fused_sum, tail.step = fused_counters[0], tail.first_bad = fused_bad,
  tail.loss_weight = 7.0;
  tail.counters = fused_counters;
  const Tensor loss = fused_cross_entropy_step(x, y, fused, {0, 6}, tail);

  const Tensor ref_loss = fused_cross_entropy_step(x, y, reference, {0, 6});
  ref_adam.step();
  accumulate_and_watch(ref_sum, ref_loss, 7.0, ref_counters[0], ref_bad);
  increment(ref_counters);
  EXPECT_EQ(values_of(loss), values_of(ref_loss));
  EXPECT_EQ(values_of(fused.values()), values_of(reference.values()));
  EXPECT_NE(values_of(fused.values()), values_of(random_mlp(sizes, 2, 5).values())) << "Adam did not run";
  EXPECT_EQ(fused_adam.steps_taken(), 1);
  EXPECT_EQ(values_of(fused_sum), values_of(ref_sum));
  EXPECT_NE(values_of(fused_sum), std::vector<double>(2, 0.5)) << "the losses were not added";
  EXPECT_EQ(fused_counters[0].to_vector<int64_t>(), std::vector<int64_t>{4});
  EXPECT_EQ(fused_counters[1].to_vector<int64_t>(), std::vector<int64_t>{10});
  EXPECT_EQ(fused_bad.to_vector<int64_t>(), std::vector<int64_t>{1000000000});

  // A tail that does not fit the step is a ShapeError.
  Adam other_adam(reference.values(), reference.grads(), {1e-2});
  StepTail wrong;
  wrong.adam = &other_adam;
  EXPECT_THROW(fused_cross_entropy_step(x, y, fused, {0, 6}, wrong), ShapeError);
  StepTail short_sums;
  short_sums.loss_sum = Tensor::zeros({3}, DType::f64);
  short_sums.step = ref_counters[0], short_sums.first_bad = ref_bad;
  EXPECT_THROW(fused_cross_entropy_step(x, y, fused, {0, 6}, short_sums), ShapeError);
  StepTail float_counter;  // increment's own checks apply to the tail's counters
  float_counter.counters = {Tensor::zeros({1}, DType::f64)};
  EXPECT_THROW(fused_cross_entropy_step(x, y, fused, {0, 6}, float_counter), ShapeError);
}

// A tail that does not fit is refused before the step runs: no gradient, no Adam update. Here
// Adam over these parameters with sums for 3 of 2 models, and an Adam that would move other
// values by these gradients. A loss_out overlapping the running sums even in part is refused.
TEST(FusedStep, ATailThatDoesNotFitIsRefusedBeforeTheStep) {
  const std::vector<int64_t> sizes{11, 9, 6};
  MlpParams params = random_mlp(sizes, 2, 5), other = random_mlp(sizes, 2, 6);
  const std::vector<double> before = values_of(params.values()), other_before = values_of(other.values());
  // Gradients a step would overwrite: still these after each refusal.
  copy_into(params.grads(), Tensor::full(params.grads().shape(), 7.0, params.grads().dtype()));
  const std::vector<double> sentinel = values_of(params.grads());
  const Tensor x = random_f64({2, 7, 11}, 1), y = random_labels(2, 7, 6, 2);
  Adam adam(params.values(), params.grads(), {1e-2});
  StepTail short_sums;
  short_sums.adam = &adam;
  short_sums.loss_sum = Tensor::zeros({3}, DType::f64);
  short_sums.step = Tensor::zeros({1}, DType::i64), short_sums.first_bad = Tensor::full({1}, 1e9, DType::i64);
  EXPECT_THROW(fused_cross_entropy_step(x, y, params, {0, 6}, short_sums), ShapeError);
  EXPECT_EQ(values_of(params.values()), before) << "Adam ran before the tail was refused";
  EXPECT_EQ(values_of(params.grads()), sentinel) << "the step ran before the tail was refused";
  EXPECT_EQ(adam.steps_taken(), 0);

  Adam crossed(other.values(), params.grads(), {1e-2});
  StepTail wrong;
  wrong.adam = &crossed;
  EXPECT_THROW(fused_cross_entropy_step(x, y, params, {0, 6}, wrong), ShapeError);
  EXPECT_EQ(values_of(params.grads()), sentinel) << "the step ran before the tail was refused";
  EXPECT_EQ(values_of(other.values()), other_before) << "the other Adam moved its values";
  EXPECT_EQ(crossed.steps_taken(), 0);

  StepTail sums;
  Tensor five = Tensor::zeros({5}, DType::f64);
  sums.loss_sum = five.rows(0, 2);
  sums.step = Tensor::zeros({1}, DType::i64), sums.first_bad = Tensor::full({1}, 1e9, DType::i64);
  EXPECT_THROW(fused_cross_entropy_step(x, y, params, {0, 6}, sums, five.rows(1, 2)), ShapeError);
  EXPECT_NO_THROW(fused_cross_entropy_step(x, y, params, {0, 6}, sums, five.rows(2, 2)));
}

// loss_out: the losses land there (a training loop's buffer that outlives its steps), and the
// step returns it; one that cannot hold them is a ShapeError.
TEST(FusedStep, LossesLandInTheGivenBuffer) {
  const std::vector<int64_t> sizes{11, 9, 6};
  MlpParams students = random_mlp(sizes, 4, 6), reference = random_mlp(sizes, 4, 6);
  const MlpParams teachers = random_mlp(sizes, 2, 7);
  const Tensor x = random_f64({4, 5, 11}, 3), y = random_labels(4, 5, 6, 2);
  Tensor out = Tensor::full({4}, -1.0, DType::f64);
  const Tensor got = fused_cross_entropy_step(x, y, students, {0, 6}, {}, out);
  EXPECT_EQ(got.raw(), out.raw()) << "the step must return loss_out itself";
  EXPECT_EQ(values_of(out), values_of(fused_cross_entropy_step(x, y, reference, {0, 6})));
  fill(out, -1.0);
  fused_distill_step(x, students, teachers, {3, 6}, 2.0, Divergence::kl, {}, out);
  EXPECT_EQ(values_of(out),
            values_of(fused_distill_step(x, reference, teachers, {3, 6}, 2.0, Divergence::kl)));
  for (const Tensor& wrong :
       {Tensor::zeros({3}, DType::f64), Tensor::zeros({4}, DType::f32), Tensor::zeros({4, 1}, DType::f64)}) {
    EXPECT_THROW(fused_cross_entropy_step(x, y, students, {0, 6}, {}, wrong), ShapeError) << wrong.describe();
    EXPECT_THROW(fused_distill_step(x, students, teachers, {3, 6}, 2.0, Divergence::kl, {}, wrong),
                 ShapeError)
        << wrong.describe();
  }
  StepTail sums;  // the losses are added to the running sums: they cannot land in them
  sums.loss_sum = Tensor::zeros({4}, DType::f64);
  sums.step = Tensor::zeros({1}, DType::i64), sums.first_bad = Tensor::full({1}, 1e9, DType::i64);
  EXPECT_THROW(fused_cross_entropy_step(x, y, students, {0, 6}, sums, sums.loss_sum), ShapeError);
}

TEST(FusedStep, BadShapesAreShapeErrors) {
  const std::vector<int64_t> sizes{11, 9, 6};
  const MlpParams students = random_mlp(sizes, 4, 6), three = random_mlp(sizes, 3, 7),
                  other = random_mlp({11, 8, 6}, 2, 8);
  const Tensor x = random_f64({4, 5, 11}, 3), empty = random_f64({4, 0, 11}, 3);
  const Tensor y = random_labels(4, 5, 6, 2);
  EXPECT_THROW(fused_cross_entropy_step(empty, random_labels(4, 0, 6, 2), students, {0, 6}), ShapeError);
  EXPECT_THROW(fused_cross_entropy_step(x.rows(0, 3), y, students, {0, 6}),
               ShapeError);  // 3 inputs, 4 models
  EXPECT_THROW(fused_cross_entropy_step(x, y.rows(0, 3), students, {0, 6}), ShapeError);  // labels
  EXPECT_THROW(fused_cross_entropy_step(x, y, students, {0, 7}), ShapeError);             // columns
  EXPECT_THROW(fused_distill_step(x, students, three, {3, 6}, 1.0, Divergence::kl),
               ShapeError);  // 4 students, 3 teachers
  EXPECT_THROW(fused_distill_step(x, students, other, {3, 6}, 1.0, Divergence::kl),
               ShapeError);  // other sizes
  const MlpParams two = random_mlp(sizes, 2, 9);
  EXPECT_THROW(fused_distill_step(x, students, two, {3, 6}, 0.0, Divergence::kl), ShapeError);  // temperature
}

// ---- The CPU's loops on several threads (engine/parallel.h) -------------------------------------

// The loops parallel_for splits — noise, the batch gather, the bias/ReLU epilogue, the ReLU
// gradient gate and Adam — give the same bits on 1, 2 and 3 threads. Sizes are large enough
// to be split, with odd widths so the ranges do not fall on round numbers.
TEST(CpuThreads, SplitLoopsGiveTheSameBitsOnAnyNumberOfThreads) {
  const int threads_before = cpu_threads();
  auto run_all = [] {
    std::vector<std::vector<float>> out;
    const Tensor step = Tensor::from_vector(std::vector<int64_t>{1}, {1});
    for (NoiseDistribution d : {NoiseDistribution::uniform, NoiseDistribution::gaussian}) {
      Tensor x = Tensor::empty({2, 70, 786}, DType::f32);
      noise_batch(99, 5, Tensor(), step, 70, 0, d, x);
      out.push_back(x.to_vector<float>());
    }
    {
      constexpr int64_t S = 200, P = 783;
      std::vector<uint8_t> pixels(static_cast<size_t>(S * P)), labels(static_cast<size_t>(S));
      for (size_t i = 0; i < pixels.size(); ++i) pixels[i] = uint8_t(i * 2654435761u >> 24);
      for (size_t i = 0; i < labels.size(); ++i) labels[i] = uint8_t(i % 10);
      std::vector<int32_t> order(size_t(2 * S));
      for (size_t i = 0; i < order.size(); ++i) order[i] = int32_t((i * 37) % S);
      Tensor x = Tensor::empty({2, 90, P}, DType::f32), y = Tensor::empty({2, 90}, DType::i32);
      gather_batch(Tensor::from_vector(pixels, {S, P}), Tensor::from_vector(labels, {S}),
                   Tensor::from_vector(order, {2, S}), step, 90, x, y);
      out.push_back(x.to_vector<float>());
    }
    {
      Tensor y = test::random_f32({2, 300, 131}, 7), bias = test::random_f32({2, 131}, 8);
      Tensor mask = Tensor::empty(gemm::mask_shape(2, 300, 131), DType::u8);
      gemm::bias_activation(y, bias, gemm::Activation::relu, mask);
      Tensor dx = test::random_f32({2, 300, 131}, 9);
      gemm::apply_relu_mask(dx, mask);
      out.push_back(y.to_vector<float>());
      out.push_back(dx.to_vector<float>());
    }
    {
      Tensor p = test::random_f32({100003}, 10), g = test::random_f32({100003}, 11);
      Adam adam(p, g, AdamOptions{});
      for (int t = 0; t < 3; ++t) adam.step();
      out.push_back(p.to_vector<float>());
    }
    return out;
  };
  set_cpu_threads(1);
  const std::vector<std::vector<float>> one = run_all();
  for (int threads : {2, 3}) {
    set_cpu_threads(threads);
    const std::vector<std::vector<float>> many = run_all();
    ASSERT_EQ(many.size(), one.size());
    for (size_t k = 0; k < one.size(); ++k) {
      ASSERT_EQ(many[k].size(), one[k].size());
      EXPECT_EQ(0, std::memcmp(many[k].data(), one[k].data(), one[k].size() * sizeof(float)))
          << "loop " << k << " differs on " << threads << " threads";
    }
  }
  set_cpu_threads(threads_before);
}

}  // namespace subliminal_fused_test
