// ops/cuda/fused_step.cu — a training step's forward pass, loss and gradients in ONE kernel.
//
// Why. The notebook's step is ~20 tiny kernels (8 GEMMs of 0.002–0.1 GFLOP, the loss, the
// bias gradients); on an H200 each costs 5–20 µs, mostly latency, so a step took ~130 µs
// whatever the GEMM library (docs/PERFORMANCE.md). Here the whole step is one persistent,
// cooperative kernel: as many thread blocks as fit on the GPU at once, walking a "program" of
// phases separated by grid-wide barriers (cooperative_groups grid.sync) instead of kernel
// launches. Within a phase the blocks share the work items of that phase's GEMMs (the tiles of
// ops/cuda/tile_gemm.cuh, split-K included) or the loss's rows.
//
// The program for an MLP of L layers (sizes s_0 … s_L), S trained models and F frozen ones
// (the teachers of a distillation step; F = 0 for cross-entropy). H_0 = x, H_l the post-ReLU
// activations, Z the logits, G_l = dLoss/d(pre-activation of layer l's output):
//
//   phase          work                                                      shapes per model
//   F_0 … F_{L−1}  H_{l+1} = relu(H_l·W_lᵀ + b_l) for trained and frozen      [B, s_{l+1}]
//                  models; the last layer writes the logits Z (no ReLU)
//   loss           one warp per (model, row): the loss row, G_L = dLoss/dZ     [B, s_L]
//                  (the same row math as the loss kernels: ops/cuda/loss_rows.cuh)
//   B_{L−1}        dW_{L−1} = G_Lᵀ·H_{L−1}, db_{L−1} = Σ_b G_L;              [s_L, s_{L−1}]
//                  G_{L−1} = (G_L·W_{L−1}) ⊙ [H_{L−1} ≠ 0], db_{L−2} = Σ_b G_{L−1};
//                  block 0 also sums the rows' losses into each model's mean
//   B_l, l ≥ 1     dW_l = G_{l+1}ᵀ·H_l; G_l and db_{l−1} as above
//   B_0            dW_0 = G_1ᵀ·x
//
// 2L + 1 phases, 2L barriers (L = 3: 6 barriers). Gradients are written (not accumulated) into
// the parameters' gradient buffers; Adam runs after, as its own kernel. Every reduction sums in
// a fixed order, so a step gives the same bits on every run.
//
// Limits: 2 ≤ L ≤ kFusedMaxLayers (the program is a kernel parameter), float32. The op's
// caller (ops/fused_step.cpp) uses autograd for anything else.
//
// Measured on an H200 (docs/PERFORMANCE.md): 6 kernels per teacher step instead of 26, 123 vs
// 141 µs per teacher step and 161 vs 230 µs per distillation step against the autograd path
// in the same run. Most of what remains is inside this kernel: each phase is a chain of
// dependent L2 round trips (one per K chunk, one per split-K partial) plus a barrier.
// bench/layers.cpp --fused-only times the phases (fused_step_clock below).
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <string>
#include <utility>
#include <vector>

#include "engine/cuda/check.h"
#include "engine/cuda/runtime.h"
#include "engine/error.h"
#include "engine/tensor.h"
#include "ops/cuda/fused_step_cuda.h"
#include "ops/cuda/loss_rows.cuh"
#include "ops/cuda/tile_gemm.cuh"

namespace subliminal::cuda {
namespace {

namespace cg = cooperative_groups;
using tile::Gemm;
using tile::Kind;

constexpr int kMaxPhases = 2 * kFusedMaxLayers + 1;
constexpr int kMaxGemms = 2 * kFusedMaxLayers + 2 * kFusedMaxLayers - 1;  // forward ×2, backward

struct Phase {
  int first_gemm, gemms;
};

struct LossRows {
  const float* logits;          // [S + F, B, O]: trained models, then frozen
  float* dlogits;               // [S, B, O]
  double* row_loss;             // [S, B]
  float* loss_out;              // [S]
  const int32_t* labels;        // [S, B] (cross-entropy)
  int64_t trained, frozen, batch, cols, c0, c1;
  bool distill;
  double inv_t, temperature;    // distill: 1/T and T
};

struct Program {
  int phases, loss_phase;       // loss_phase + 1 also reduces the per-model losses
  Phase phase[kMaxPhases];
  Gemm gemm[kMaxGemms];
  LossRows loss;
  unsigned long long* clock;    // null, or [phases + 1]: block 0's global timer as each phase begins, and at the end
};

__device__ inline unsigned long long global_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// One warp per (model, sample) row: the row's loss and its logits' gradient (dLoss/dZ with the
// loss a per-model mean, so dLoss = 1 per model).
__device__ void loss_rows(const LossRows& p) {
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  const int lane = threadIdx.x & 31;
  for (int64_t r = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32; r < p.trained * p.batch; r += warps) {
    const int64_t model = r / p.batch, b = r % p.batch;
    const float* z = p.logits + r * p.cols;
    double row;
    if (p.distill) {
      const float* t = p.logits + ((p.trained + model % p.frozen) * p.batch + b) * p.cols;
      row = rows::distill_kl_row(z, t, p.cols, p.c0, p.c1, p.inv_t, p.temperature / double(p.batch),
                                 p.dlogits + r * p.cols, false);
    } else {
      row = rows::cross_entropy_row(z, p.cols, p.c0, p.c1, p.labels[r], 1.0f / float(p.batch),
                                    p.dlogits + r * p.cols, false);
    }
    if (lane == 0) p.row_loss[r] = row;
  }
}

// Block 0: each model's loss, the rows summed in order (cross-entropy: the mean; distillation:
// T²·the mean, as the loss kernels compute it).
__device__ void reduce_losses(const LossRows& p) {
  for (int64_t model = threadIdx.x; model < p.trained; model += blockDim.x) {
    double sum = 0.0;
    for (int64_t b = 0; b < p.batch; ++b) sum += __ldcg(&p.row_loss[model * p.batch + b]);
    const double scale = p.distill ? p.temperature * p.temperature : 1.0;
    p.loss_out[model] = float(scale * sum / double(p.batch));
  }
}

__global__ void __launch_bounds__(tile::kBlockThreads, 2) fused_step_kernel(const __grid_constant__ Program prog) {
  __shared__ __align__(16) tile::Smem sm;
  cg::grid_group grid = cg::this_grid();
  const bool clocks = prog.clock && blockIdx.x == 0 && threadIdx.x == 0;
  for (int ph = 0; ph < prog.phases; ++ph) {
    if (clocks) prog.clock[ph] = global_ns();
    if (ph == prog.loss_phase) loss_rows(prog.loss);
    if (ph == prog.loss_phase + 1 && blockIdx.x == 0) reduce_losses(prog.loss);
    const Phase& phase = prog.phase[ph];
    int64_t total = 0;
    for (int j = 0; j < phase.gemms; ++j) total += prog.gemm[phase.first_gemm + j].items;
    for (int64_t item = blockIdx.x; item < total; item += gridDim.x) {
      int j = phase.first_gemm;
      int64_t local = item;
      while (local >= prog.gemm[j].items) local -= prog.gemm[j++].items;
      tile::run_item(prog.gemm[j], local, sm);
    }
    if (ph + 1 < prog.phases) grid.sync();  // this phase's writes are visible to the next
  }
  if (clocks) prog.clock[prog.phases] = global_ns();
}

// --- phase timing (bench/layers.cpp) ----------------------------------------------------------
struct PhaseClock {
  unsigned long long* device = nullptr;  // kMaxPhases + 1 timestamps, written by the last step
  std::vector<std::string> names;        // of the last step's phases
};
PhaseClock& phase_clock() {
  static PhaseClock* c = new PhaseClock;  // never destroyed, like the runtime
  return *c;
}

// The cooperative grid: as many blocks as can be resident at once.
int resident_blocks() {
  static int blocks = [] {
    int per_sm = 0;
    CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, fused_step_kernel, tile::kBlockThreads, 0));
    return per_sm * Runtime::get().properties().multiProcessorCount;
  }();
  return blocks;
}

Gemm forward_gemm(const float* in, int64_t in_stride_model, const float* w, const float* b, float* out,
                  int64_t models, int64_t batch, int64_t fan_in, int64_t fan_out, bool relu) {
  Gemm g{};
  g.kind = Kind::forward;
  g.a = {in, fan_in, 1, in_stride_model};   // a(m=b, k=i) = H[b, i]
  g.b = {w, fan_in, 1, fan_out * fan_in};   // b(n=o, k=i) = W[o, i]
  g.models = models, g.M = batch, g.N = fan_out, g.K = fan_in;
  g.c = out;
  g.bias = b;
  g.relu = relu;
  return g;
}

}  // namespace

void fused_mlp_step(const float* x, int64_t batch, const FusedMlp& trained, const FusedMlp* frozen,
                    const FusedLoss& loss, float* loss_out) {
  const int L = trained.layers;
  if (L < 2 || L > kFusedMaxLayers) throw ShapeError("fused_mlp_step: " + std::to_string(L) + " layers");
  const int64_t S = trained.models, F = frozen ? frozen->models : 0, B = batch;
  const std::vector<int64_t>& s = trained.sizes;
  if (S == 0 || B == 0 || (loss.distill && (F == 0 || S % F != 0)))
    throw ShapeError("fused_mlp_step: " + std::to_string(S) + " trained and " + std::to_string(F) +
                     " frozen models, batch " + std::to_string(B));
  const Device gpu = Device::cuda;

  // Activations of trained (first S) and frozen (next F) models, the logits, the gradients.
  std::vector<Tensor> H(static_cast<size_t>(L)), G(static_cast<size_t>(L) + 1);  // H[l], l = 1 … L−1; G[l], 1 … L
  for (int l = 1; l < L; ++l) H[size_t(l)] = Tensor::empty({S + F, B, s[size_t(l)]}, DType::f32, gpu);
  for (int l = 1; l <= L; ++l) G[size_t(l)] = Tensor::empty({S, B, s[size_t(l)]}, DType::f32, gpu);
  Tensor logits = Tensor::empty({S + F, B, s[size_t(L)]}, DType::f32, gpu);
  Tensor row_loss = Tensor::empty({S, B}, DType::f64, gpu);
  auto h_in = [&](int l) -> const float* { return l == 0 ? x : H[size_t(l)].data<float>(); };
  auto h_out = [&](int l) -> float* { return l + 1 < L ? H[size_t(l) + 1].data<float>() : logits.data<float>(); };
  auto stride = [&](int l) { return B * s[size_t(l)]; };  // one model's activations of width s_l

  Program prog{};
  int gemms = 0, phases = 0;
  auto begin_phase = [&] { prog.phase[phases++] = Phase{gemms, 0}; };
  auto add = [&](const Gemm& g) {
    prog.gemm[gemms++] = g;
    ++prog.phase[phases - 1].gemms;
  };

  // Forward: trained models, then frozen ones, which read x[f] for f < F and write after the trained.
  for (int l = 0; l < L; ++l) {
    begin_phase();
    const bool relu = l + 1 < L;
    add(forward_gemm(h_in(l), stride(l), trained.weights[size_t(l)], trained.biases[size_t(l)], h_out(l), S, B,
                     s[size_t(l)], s[size_t(l) + 1], relu));
    if (F > 0)
      add(forward_gemm(h_in(l) + (l == 0 ? 0 : S * stride(l)), stride(l), frozen->weights[size_t(l)],
                       frozen->biases[size_t(l)], h_out(l) + S * stride(l + 1), F, B, s[size_t(l)],
                       s[size_t(l) + 1], relu));
  }
  prog.loss_phase = phases;
  begin_phase();  // the loss rows (no GEMMs)
  prog.loss = LossRows{logits.data<float>(), G[size_t(L)].data<float>(), row_loss.data<double>(), loss_out,
                       loss.labels, S, F, B, s[size_t(L)], loss.c0, loss.c1, loss.distill,
                       loss.distill ? 1.0 / loss.temperature : 1.0, loss.temperature};

  // Backward: layer l's weight gradient and, for l ≥ 1, the gradient below it.
  for (int l = L - 1; l >= 0; --l) {
    begin_phase();
    const int64_t in = s[size_t(l)], out = s[size_t(l) + 1];
    const float* g_out = G[size_t(l) + 1].data<float>();
    Gemm dw{};
    dw.kind = Kind::backward_weight;
    dw.a = {g_out, 1, out, B * out};           // a(m=o, k=b) = G[b, o]
    dw.b = {h_in(l), 1, in, stride(l)};        // b(n=i, k=b) = H[b, i]
    dw.models = S, dw.M = out, dw.N = in, dw.K = B;
    dw.c = trained.weight_grads[size_t(l)];
    dw.row_sums = l == L - 1 ? trained.bias_grads[size_t(l)] : nullptr;  // the others come from below
    add(dw);
    if (l >= 1) {
      Gemm dx{};
      dx.kind = Kind::backward_input;
      dx.a = {g_out, out, 1, B * out};         // a(m=b, k=o) = G[b, o]
      dx.b = {trained.weights[size_t(l)], 1, in, out * in};  // b(n=i, k=o) = W[o, i]
      dx.models = S, dx.M = B, dx.N = in, dx.K = out;
      dx.c = G[size_t(l)].data<float>();
      dx.gate_values = H[size_t(l)].data<float>();  // the trained models' part comes first
      dx.column_sums = trained.bias_grads[size_t(l) - 1];
      add(dx);
    }
  }
  prog.phases = phases;
  prog.clock = phase_clock().device;
  if (prog.clock) {
    std::vector<std::string>& names = phase_clock().names;
    names.clear();
    for (int l = 0; l < L; ++l) names.push_back("forward, layer " + std::to_string(l));
    names.push_back("loss rows");
    for (int l = L - 1; l >= 0; --l) names.push_back("backward, layer " + std::to_string(l));
  }

  // Plan every GEMM for the whole grid, then give each its own scratch.
  const int grid = resident_blocks();
  if (grid <= 0) throw DeviceError("fused_mlp_step: the kernel does not fit on this GPU");
  int64_t floats = 0, counters = 0;
  for (int ph = 0; ph < phases; ++ph)
    for (int j = prog.phase[ph].first_gemm; j < prog.phase[ph].first_gemm + prog.phase[ph].gemms; ++j) {
      tile::plan(prog.gemm[j], grid / prog.phase[ph].gemms);  // the phase's GEMMs share the grid
      floats += tile::scratch_floats(prog.gemm[j]);
      counters += tile::scratch_counters(prog.gemm[j]);
    }
  float* float_base = floats > 0 ? tile::grow_scratch_floats(floats) : nullptr;
  int* counter_base = counters > 0 ? tile::grow_scratch_counters(counters) : nullptr;
  for (int j = 0; j < gemms; ++j) {
    tile::assign_scratch(prog.gemm[j], float_base, counter_base);
    if (float_base) float_base += tile::scratch_floats(prog.gemm[j]);
    if (counter_base) counter_base += tile::scratch_counters(prog.gemm[j]);
  }

  cudaLaunchConfig_t config{};
  config.gridDim = dim3(unsigned(grid));
  config.blockDim = dim3(tile::kBlockThreads);
  config.stream = Runtime::get().stream();
  cudaLaunchAttribute cooperative{};
  cooperative.id = cudaLaunchAttributeCooperative;
  cooperative.val.cooperative = 1;
  config.attrs = &cooperative;
  config.numAttrs = 1;
  CUDA_CHECK(cudaLaunchKernelEx(&config, fused_step_kernel, prog));
}

void fused_step_clock(bool on) {
  PhaseClock& c = phase_clock();
  if (on && !c.device) {
    void* p = nullptr;
    CUDA_CHECK(cudaMalloc(&p, sizeof(unsigned long long) * (kMaxPhases + 1)));
    c.device = static_cast<unsigned long long*>(p);
  }
  if (!on && c.device) {
    CUDA_CHECK(cudaStreamSynchronize(Runtime::get().stream()));
    CUDA_CHECK(cudaFree(c.device));
    c.device = nullptr;
  }
}

std::vector<std::pair<std::string, double>> fused_step_phase_us() {
  PhaseClock& c = phase_clock();
  if (!c.device || c.names.empty()) return {};
  std::vector<unsigned long long> t(c.names.size() + 1);
  CUDA_CHECK(cudaStreamSynchronize(Runtime::get().stream()));
  CUDA_CHECK(cudaMemcpy(t.data(), c.device, sizeof(unsigned long long) * t.size(), cudaMemcpyDeviceToHost));
  std::vector<std::pair<std::string, double>> out;
  for (size_t i = 0; i < c.names.size(); ++i) out.push_back({c.names[i], double(t[i + 1] - t[i]) / 1000.0});
  return out;
}

}  // namespace subliminal::cuda
