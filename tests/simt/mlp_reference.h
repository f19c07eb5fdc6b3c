// tests/simt/mlp_reference.h — what the emulated training steps (tests/test_fused_emulated.cpp,
// tests/test_cluster_emulated.cpp) are checked against: host MLPs, a float64 forward and
// backward, the two losses, Adam in float64, and the arena a step's tail updates — written out
// here rather than taken from the engine, since these binaries also run under ThreadSanitizer on
// host threads alone.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "engine/adam.h"  // AdamOptions
#include "ops/cuda/fused_step_cuda.h"
#include "tests/simt/compare.h"

namespace subliminal::cuda::emulated {

inline constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// `models` MLPs of the given sizes, weights [models, out, in] and biases [models, out] per
// layer, values in [-0.5, 0.5); gradient buffers of the same shapes.
struct HostMlp {
  std::vector<int64_t> sizes;
  int64_t models;
  std::vector<std::vector<float>> w, b, dw, db;

  HostMlp(std::vector<int64_t> s, int64_t n, unsigned seed) : sizes(std::move(s)), models(n) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> u(-0.5f, 0.5f);
    for (size_t l = 0; l + 1 < sizes.size(); ++l) {
      w.emplace_back(size_t(models * sizes[l + 1] * sizes[l]));
      b.emplace_back(size_t(models * sizes[l + 1]));
      for (float& v : w.back()) v = u(rng);
      for (float& v : b.back()) v = u(rng);
      dw.emplace_back(w.back().size(), kNaN);
      db.emplace_back(b.back().size(), kNaN);
    }
  }
  int layers() const { return int(sizes.size()) - 1; }

  FusedMlp view(bool with_grads) {
    FusedMlp m;
    m.layers = layers(), m.sizes = sizes, m.models = models;
    for (int l = 0; l < layers(); ++l) {
      m.weights.push_back(w[size_t(l)].data());
      m.biases.push_back(b[size_t(l)].data());
      if (with_grads)
        m.weight_grads.push_back(dw[size_t(l)].data()), m.bias_grads.push_back(db[size_t(l)].data());
    }
    return m;
  }
};

// ---- the float64 reference -----------------------------------------------------------------

using Matrix = std::vector<double>;  // [B, width], row-major

// acts[0] = x, acts[l] = relu(acts[l−1]·W_{l−1}ᵀ + b_{l−1}), the last without ReLU (the logits).
inline std::vector<Matrix> forward(const HostMlp& m, int64_t model, const float* x, int64_t B) {
  std::vector<Matrix> acts{Matrix(x, x + B * m.sizes[0])};
  for (int l = 0; l < m.layers(); ++l) {
    const int64_t in = m.sizes[size_t(l)], out = m.sizes[size_t(l) + 1];
    const float* w = m.w[size_t(l)].data() + model * out * in;
    const float* b = m.b[size_t(l)].data() + model * out;
    Matrix y(size_t(B * out));
    for (int64_t r = 0; r < B; ++r)
      for (int64_t o = 0; o < out; ++o) {
        double v = b[o];
        for (int64_t i = 0; i < in; ++i) v += acts.back()[size_t(r * in + i)] * double(w[o * in + i]);
        y[size_t(r * out + o)] = l + 1 < m.layers() ? std::max(v, 0.0) : v;
      }
    acts.push_back(std::move(y));
  }
  return acts;
}

// log Σ exp(scale·z[c]) over [c0, c1) of one row.
inline double log_sum_exp(const double* z, int64_t c0, int64_t c1, double scale) {
  double top = -INFINITY, sum = 0.0;
  for (int64_t c = c0; c < c1; ++c) top = std::max(top, scale * z[c]);
  for (int64_t c = c0; c < c1; ++c) sum += std::exp(scale * z[c] - top);
  return top + std::log(sum);
}

// Backward from dLoss/dlogits: the model's weight and bias gradients.
inline void backward(const HostMlp& m, int64_t model, const std::vector<Matrix>& acts, Matrix g, int64_t B,
                     std::vector<Matrix>& dw, std::vector<Matrix>& db) {
  dw.assign(size_t(m.layers()), {});
  db.assign(size_t(m.layers()), {});
  for (int l = m.layers() - 1; l >= 0; --l) {
    const int64_t in = m.sizes[size_t(l)], out = m.sizes[size_t(l) + 1];
    const Matrix& h = acts[size_t(l)];
    Matrix& w_grad = dw[size_t(l)];
    Matrix& b_grad = db[size_t(l)];
    w_grad.assign(size_t(out * in), 0.0);
    b_grad.assign(size_t(out), 0.0);
    for (int64_t r = 0; r < B; ++r)
      for (int64_t o = 0; o < out; ++o) {
        b_grad[size_t(o)] += g[size_t(r * out + o)];
        for (int64_t i = 0; i < in; ++i)
          w_grad[size_t(o * in + i)] += g[size_t(r * out + o)] * h[size_t(r * in + i)];
      }
    if (l == 0) break;
    const float* w = m.w[size_t(l)].data() + model * out * in;
    Matrix below(size_t(B * in), 0.0);
    for (int64_t r = 0; r < B; ++r)
      for (int64_t i = 0; i < in; ++i) {
        if (h[size_t(r * in + i)] == 0.0) continue;  // the ReLU's gate
        double v = 0.0;
        for (int64_t o = 0; o < out; ++o) v += g[size_t(r * out + o)] * double(w[o * in + i]);
        below[size_t(r * in + i)] = v;
      }
    g = std::move(below);
  }
}

// What every emulated step's test case starts with: the MLP's sizes s_0 … s_L, S trained and F
// frozen models (the teachers of a distillation step), the batch B, and the loss: cross-entropy
// over the logit columns [c0, c1), or (distill) T²·KL (or JS) at temperature T on them.
struct Problem {
  const char* name;
  std::vector<int64_t> sizes;
  int64_t trained, frozen, batch;
  bool distill;
  int64_t c0, c1;
  double temperature;
  subliminal::Divergence divergence = subliminal::Divergence::kl;
};

// Each trained model's loss and its weight and bias gradients, in float64.
struct Reference {
  std::vector<double> loss;                 // [S]
  std::vector<std::vector<Matrix>> dw, db;  // [S][layer]
};

// The reference for one step: cross-entropy of each trained model s on x[s] against labels
// [S, B] over the logit columns [c0, c1), or (distill) T²·the mean KL (or JS) from frozen model
// s mod F on x[f] to model s on x[s] — written naively, without log-space tricks: the test
// cases' logits are small.
inline Reference reference_step(const HostMlp& trained, const HostMlp& frozen, const std::vector<float>& x,
                                const std::vector<int32_t>& labels, const Problem& problem) {
  const int64_t S = trained.models, F = frozen.models, P = trained.sizes.front(), O = trained.sizes.back();
  const int64_t B = problem.batch, c0 = problem.c0, c1 = problem.c1;
  const bool distill = problem.distill;
  const double temperature = problem.temperature;
  Reference ref{std::vector<double>(size_t(S)), std::vector<std::vector<Matrix>>(size_t(S)),
                std::vector<std::vector<Matrix>>(size_t(S))};
  for (int64_t s = 0; s < S; ++s) {
    const std::vector<Matrix> acts = forward(trained, s, x.data() + s * B * P, B);
    const Matrix& z = acts.back();
    Matrix dz(size_t(B * O), 0.0);
    double total = 0.0;
    if (distill) {  // T²·mean D(p, q), p = softmax(t/T), q = softmax(z/T); dz = (T/B)·∂D/∂(z/T)
      const int64_t f = s % F;
      const Matrix t = forward(frozen, f, x.data() + f * B * P, B).back();
      const double inv_t = 1.0 / temperature;
      for (int64_t r = 0; r < B; ++r) {
        const double lse_s = log_sum_exp(&z[size_t(r * O)], c0, c1, inv_t);
        const double lse_t = log_sum_exp(&t[size_t(r * O)], c0, c1, inv_t);
        std::vector<double> p(static_cast<size_t>(c1)), q(static_cast<size_t>(c1));
        for (int64_t c = c0; c < c1; ++c) {
          p[size_t(c)] = std::exp(t[size_t(r * O + c)] * inv_t - lse_t);
          q[size_t(c)] = std::exp(z[size_t(r * O + c)] * inv_t - lse_s);
        }
        if (problem.divergence == subliminal::Divergence::kl) {  // Σ p log(p/q); ∂ = q − p
          for (int64_t c = c0; c < c1; ++c) {
            total += p[size_t(c)] * std::log(p[size_t(c)] / q[size_t(c)]);
            dz[size_t(r * O + c)] = temperature / double(B) * (q[size_t(c)] - p[size_t(c)]);
          }
          continue;
        }
        // JS: ½ Σ [p log(p/m) + q log(q/m)], m = (p + q)/2; ∂ = q·(h − Σ q·h), h = ½ log(q/m)
        double mean_h = 0.0;
        for (int64_t c = c0; c < c1; ++c) {
          const double m = (p[size_t(c)] + q[size_t(c)]) / 2;
          total +=
              (p[size_t(c)] * std::log(p[size_t(c)] / m) + q[size_t(c)] * std::log(q[size_t(c)] / m)) / 2;
          mean_h += q[size_t(c)] * std::log(q[size_t(c)] / m) / 2;
        }
        for (int64_t c = c0; c < c1; ++c) {
          const double h = std::log(2 * q[size_t(c)] / (p[size_t(c)] + q[size_t(c)])) / 2;
          dz[size_t(r * O + c)] = temperature / double(B) * q[size_t(c)] * (h - mean_h);
        }
      }
      ref.loss[size_t(s)] = temperature * temperature * total / double(B);
    } else {  // mean cross-entropy over [c0, c1); dz = (softmax − onehot)/B
      for (int64_t r = 0; r < B; ++r) {
        const double lse = log_sum_exp(&z[size_t(r * O)], c0, c1, 1.0);
        const int64_t label = labels[size_t(s * B + r)];
        total += lse - z[size_t(r * O + c0 + label)];
        for (int64_t c = c0; c < c1; ++c)
          dz[size_t(r * O + c)] =
              (std::exp(z[size_t(r * O + c)] - lse) - (c - c0 == label ? 1.0 : 0.0)) / double(B);
      }
      ref.loss[size_t(s)] = total / double(B);
    }
    backward(trained, s, acts, dz, B, ref.dw[size_t(s)], ref.db[size_t(s)]);
  }
  return ref;
}

// ---- the step's tail: Adam's arena and state --------------------------------------------------

// The trained MLP as MlpParams lays one out (engine/nn.h): W0, b0, W1, b1, … one after another
// in a value arena, with a float of padding after each, and a gradient arena of the same layout
// (biases_first: b0, W0, b1, W1, …). Adam runs over the whole arena, as the app's does: the
// fused step updates W0 and b0 tile by tile as their gradients are finished and the rest after,
// so the test needs all of them in one arena.
struct Arena {
  std::vector<float> values, grads;
  std::vector<size_t> w_at, b_at;

  explicit Arena(const HostMlp& m, bool biases_first = false) {
    values.assign(3, 0.25f);  // leading padding too, so that W0 does not start the arena
    values[0] = 0.0f;         // (at p = 0 weight decay adds nothing to its gradient: initial_tail_state)
    for (int l = 0; l < m.layers(); ++l) {
      const std::vector<float>*w = &m.w[size_t(l)], *b = &m.b[size_t(l)];
      for (const std::vector<float>* t : {biases_first ? b : w, biases_first ? w : b}) {
        (t == &m.w[size_t(l)] ? w_at : b_at).push_back(values.size());
        values.insert(values.end(), t->begin(), t->end());
        // padding after each tensor: not a parameter, but inside the arena Adam walks
        values.push_back(0.25f);
      }
    }
    grads.assign(values.size(), kNaN);
    std::fill(grads.begin(), grads.begin() + 3, 0.0f);
    for (int l = 0; l < m.layers(); ++l) {  // the padding's gradient: never written by the step
      grads[w_at[size_t(l)] + m.w[size_t(l)].size()] = 0.0f;
      grads[b_at[size_t(l)] + m.b[size_t(l)].size()] = 0.0f;
    }
  }
  FusedMlp view(const HostMlp& m) {
    FusedMlp v;
    v.layers = m.layers(), v.sizes = m.sizes, v.models = m.models;
    for (int l = 0; l < m.layers(); ++l) {
      v.weights.push_back(values.data() + w_at[size_t(l)]),
          v.biases.push_back(values.data() + b_at[size_t(l)]);
      v.weight_grads.push_back(grads.data() + w_at[size_t(l)]),
          v.bias_grads.push_back(grads.data() + b_at[size_t(l)]);
    }
    return v;
  }
};

// The state a step's tail works on besides the arena: Adam's moments and step count mid-training,
// the running loss sums, and two step counters.
struct TailState {
  std::vector<float> m, v, loss_sum;
  int64_t t, step, global_step, first_bad;
};

inline constexpr int64_t kNoFault = int64_t(1) << 62;
// Weight decay on: every term of the update.
inline const AdamOptions kTailAdam{1e-3, 0.9, 0.999, 1e-8, 1e-2};

inline TailState initial_tail_state(size_t arena, int64_t models) {
  std::mt19937 rng(21);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  TailState s;
  s.m.resize(arena), s.v.resize(arena);
  for (size_t i = 0; i < arena; ++i) s.m[i] = 0.02f * (u(rng) - 0.5f), s.v[i] = 1e-4f * u(rng);
  // The arena's first element (padding at p = 0 with gradient 0) as a parameter whose gradient
  // has been 0 since the first step (a weight from a pixel that is 0 in every image): m = v = 0,
  // which Adam's eps keeps at 0 — without it, 0/0.
  s.m[0] = s.v[0] = 0.0f;
  s.loss_sum.resize(size_t(models));
  for (float& l : s.loss_sum) l = 3.0f * u(rng);
  s.t = 4, s.step = 7, s.global_step = 1000, s.first_bad = kNoFault;
  return s;
}

// The tail the tests hand a step: Adam (kTailAdam) over the whole arena, the losses into
// s.loss_sum weighted by 37, the fault watch reading s.step, and s.step and s.global_step as the
// counters.
inline FusedTail tail_over(Arena& arena, TailState& s) {
  FusedTail tail;
  tail.adam.p = arena.values.data(), tail.adam.g = arena.grads.data();
  tail.adam.m = s.m.data(), tail.adam.v = s.v.data();
  tail.adam.n = int64_t(arena.values.size()), tail.adam.t = &s.t;
  tail.adam.options = kTailAdam;
  tail.loss_sum = s.loss_sum.data(), tail.loss_weight = 37.0f;
  tail.step = &s.step, tail.first_bad = &s.first_bad;
  tail.counters[0] = &s.step, tail.counters[2] = &s.global_step;
  return tail;
}

// torch.optim.Adam's update at step t (engine/adam.h), in float64 and written out again here as
// the oracle (this binary runs on host threads under ThreadSanitizer too, so it keeps off the
// engine's library).
inline void adam_float64(std::vector<float>& p, const std::vector<float>& g, std::vector<float>& m,
                         std::vector<float>& v, int64_t t, const AdamOptions& o) {
  const double step_size = o.lr / (1.0 - std::pow(o.beta1, double(t)));
  const double correction2 = std::sqrt(1.0 - std::pow(o.beta2, double(t)));
  for (size_t i = 0; i < p.size(); ++i) {
    const double grad = double(g[i]) + o.weight_decay * double(p[i]);
    const double mi = o.beta1 * m[i] + (1.0 - o.beta1) * grad,
                 vi = o.beta2 * v[i] + (1.0 - o.beta2) * grad * grad;
    p[i] = float(p[i] - step_size * mi / (std::sqrt(vi) / correction2 + o.eps));
    m[i] = float(mi), v[i] = float(vi);
  }
}

// ---- checking a step against the reference -----------------------------------------------------

// A step's inputs, the same for every run of a case: x [S, B, inputs] uniform in [0, 1), and
// labels [S, B] among the loss's columns.
struct StepInputs {
  std::vector<float> x;
  std::vector<int32_t> labels;
};
inline StepInputs random_inputs(const Problem& c) {
  const int64_t S = c.trained, B = c.batch, P = c.sizes.front();
  std::mt19937 rng(13);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  StepInputs in{std::vector<float>(size_t(S * B * P)), std::vector<int32_t>(size_t(S * B))};
  for (float& v : in.x) v = u(rng);
  for (int32_t& y : in.labels) y = int32_t(rng() % uint32_t(c.c1 - c.c0));
  return in;
}

// What an emulated step wrote: each trained model's loss and its gradients, per layer
// ([S, out, in] and [S, out]).
struct StepResult {
  std::vector<float> loss;
  std::vector<std::vector<float>> dw, db;
};

// Each loss and gradient within float32 rounding of float64's (‖got − ref‖/‖ref‖ ≤ 1e-5).
inline void expect_matches_reference(const std::string& what, const StepResult& got, const Reference& ref,
                                     const std::vector<int64_t>& sizes) {
  for (size_t s = 0; s < ref.loss.size(); ++s) {
    EXPECT_NEAR(got.loss[s], ref.loss[s], 1e-5 * std::max(1.0, std::abs(ref.loss[s])))
        << what << ": loss of model " << s;
    for (size_t l = 0; l + 1 < sizes.size(); ++l) {
      const int64_t in = sizes[l], out = sizes[l + 1];
      EXPECT_LE(simt::relative_error(got.dw[l].data() + int64_t(s) * out * in, ref.dw[s][l]), 1e-5)
          << what << ": dW" << l << " of model " << s;
      EXPECT_LE(simt::relative_error(got.db[l].data() + int64_t(s) * out, ref.db[s][l]), 1e-5)
          << what << ": db" << l << " of model " << s;
    }
  }
}

// Two runs of the same step give the same bits.
inline void expect_same_bits(const std::string& what, const StepResult& again, const StepResult& got) {
  EXPECT_TRUE(simt::same_bits(again.loss, got.loss)) << what << ": the loss differs between two runs";
  for (size_t l = 0; l < got.dw.size(); ++l) {
    EXPECT_TRUE(simt::same_bits(again.dw[l], got.dw[l]))
        << what << ": dW" << l << " differs between two runs";
    EXPECT_TRUE(simt::same_bits(again.db[l], got.db[l]))
        << what << ": db" << l << " differs between two runs";
  }
}

// A step's tail ran Adam over `got` (from `fresh`, with the state `initial` → `state`): every
// element must be float64's Adam from the gradients the step wrote, at step initial.t + 1
// (failures for the first three that are not). Returns which elements moved.
inline std::vector<bool> expect_adam_matches_float64(const std::string& what, const Arena& fresh,
                                                     const Arena& got, const TailState& initial,
                                                     const TailState& state) {
  Arena ref = fresh;
  TailState ref_state = initial;
  adam_float64(ref.values, got.grads, ref_state.m, ref_state.v, initial.t + 1, kTailAdam);
  auto close = [](float a, float b, float relative, float floor) {
    return (std::isnan(a) && std::isnan(b)) || std::abs(a - b) <= relative * std::abs(b) + floor;
  };
  int wrong = 0;
  std::vector<bool> moved(ref.values.size());
  for (size_t i = 0; i < ref.values.size(); ++i) {
    // m's update adds terms of either sign, 0.9·m and 0.1·(g + λp), which can nearly cancel:
    // its rounding is relative to those terms, not to m
    const float m_terms = 0.9f * std::abs(initial.m[i]) +
                          0.1f * std::abs(got.grads[i] + float(kTailAdam.weight_decay) * fresh.values[i]);
    const bool ok = close(got.values[i], ref.values[i], 1e-6f, 1e-9f) &&
                    close(state.m[i], ref_state.m[i], 1e-6f, 1e-6f * m_terms) &&
                    close(state.v[i], ref_state.v[i], 1e-6f, 1e-15f);
    if (!ok && ++wrong <= 3)
      ADD_FAILURE() << what << ": arena element " << i << " (p, m, v) = (" << got.values[i] << ", "
                    << state.m[i] << ", " << state.v[i] << "), float64's (" << ref.values[i] << ", "
                    << ref_state.m[i] << ", " << ref_state.v[i] << ")";
    moved[i] = got.values[i] != fresh.values[i] && !std::isnan(got.values[i]);
  }
  EXPECT_EQ(wrong, 0) << what << ": arena elements off float64's Adam";
  return moved;
}

// The rest of the tail (run with loss weight 37 and the state's step as the watch's step and
// its first counter, global_step the second): each model's running sum grew by 37·its loss (NaN
// for nan_model), Adam's step count and both counters advanced once, and the watch flagged the
// step (the counter's value before it advanced) when a loss was NaN.
inline void expect_tail_bookkeeping(const std::string& what, const TailState& initial, const TailState& state,
                                    const std::vector<float>& loss, int64_t nan_model) {
  for (size_t n = 0; n < loss.size(); ++n) {
    if (int64_t(n) == nan_model) {
      EXPECT_TRUE(std::isnan(state.loss_sum[n])) << what << ": model " << n << "'s running sum";
    } else {
      EXPECT_FLOAT_EQ(state.loss_sum[n], initial.loss_sum[n] + 37.0f * loss[n])
          << what << ": model " << n << "'s running loss sum";
    }
  }
  EXPECT_EQ(state.t, initial.t + 1) << what << ": Adam's step count";
  EXPECT_EQ(state.step, initial.step + 1) << what << ": the step counter";
  EXPECT_EQ(state.global_step, initial.global_step + 1) << what << ": the second counter";
  EXPECT_EQ(state.first_bad, nan_model >= 0 ? initial.step : kNoFault)
      << what << ": the watch must read the step before the counters advance";
}

}  // namespace subliminal::cuda::emulated
