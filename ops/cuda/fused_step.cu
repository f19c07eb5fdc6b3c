// ops/cuda/fused_step.cu — a training step's forward pass, loss and gradients in ONE kernel.
//
// Why. The notebook's teacher step is 26 tiny kernels on cuBLASLt (8 GEMMs of 0.002–0.1 GFLOP
// with the split-K and bias-gradient kernels cuBLASLt adds, the loss, Adam, the bookkeeping);
// on an H200 each costs 5–20 µs, mostly latency, so a step took ~130 µs
// whatever the GEMM library (docs/PERFORMANCE.md). Here the whole step is one persistent,
// cooperative kernel: as many thread blocks as fit on the GPU at once, walking a "program" of
// phases separated by grid-wide barriers (cooperative_groups grid.sync) instead of kernel
// launches. Within a phase the blocks share the work items of that phase's GEMMs (the tiles of
// ops/cuda/tile_gemm.cuh, split-K included) or the loss's rows.
//
// The program (ops/cuda/fused_program.cuh: the phases, their GEMMs and the loss rows, and the
// device code that walks them) is built on the host and passed as the kernel's parameter;
// this file lays out the step's buffers (in a buffer that outlives the step: a step in a CUDA
// graph allocates nothing), plans the grid and launches. Given the step's tail
// (FusedTail: Adam, the running loss sums, the step counters), the kernel does that too — Adam
// in the last phase, behind the gradients it needs; the loss sums and counters in block 0 — so
// that a training step in a CUDA graph is this kernel and the one that makes its batch.
//
// Limits: 2 ≤ L ≤ kFusedMaxLayers (the program is a kernel parameter), float32. The op's
// caller (ops/fused_step.cpp) uses autograd for anything else.
//
// Measured (docs/PERFORMANCE.md): on an H200, 123 vs 141 µs per teacher step and 161 vs 230 µs
// per distillation step against the autograd path in the same run; on an H100, after the
// split-K planner fit every phase in one wave, 115 and 142 µs (the tail was not yet in the
// kernel; the first build with it measured 147 and 173 µs for a reason since fixed, and the fix
// has not been timed). Most of it is inside this kernel: each GEMM phase costs at least 12 µs,
// a chain of dependent L2 round trips (about 1.6 µs per 16-wide K chunk, then the split-K
// fix-up's) plus a barrier — which is why the last layer now runs row by row, two GEMM phases
// fewer (7 → 5 for the notebook's MLP; not yet timed either), and why the K chunks now come
// through a cp.async pipeline (not yet timed). bench/layers.cpp --fused-only
// times the phases (fused_step_clock below); bench/latency.cu the links of that chain.
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "engine/cuda/check.h"
#include "engine/cuda/runtime.h"
#include "engine/error.h"
#include "ops/cuda/fused_program.cuh"
#include "ops/cuda/fused_step_cuda.h"
#include "ops/cuda/grow_only_buffer.h"
#include "ops/cuda/tile_gemm.cuh"

namespace subliminal::cuda {
namespace {

namespace cg = cooperative_groups;
using fused::Program;

__device__ inline unsigned long long global_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// The program travels as the kernel's parameter: keep it inside the classic 4 KB limit (newer
// drivers allow 32 KB, but a larger parameter costs every launch and every graph node).
static_assert(sizeof(Program) <= 4096, "the fused step's program outgrew a kernel parameter");

// The phase clock's layout: [kMaxPhases + 1] block 0's phase starts (and the end), then per
// phase the first and the last block's "done" (min and max over the blocks; the host resets
// them before each launch).
constexpr int kClockStarts = 0, kClockFirstDone = fused::kMaxPhases + 1, kClockLastDone = 2 * fused::kMaxPhases + 1;
constexpr int kClockEntries = 3 * fused::kMaxPhases + 1;

// Two blocks an SM at least: ptxas keeps to 128 registers a thread (65536 / (2 · 256)), the
// budget the tile loop and the rows' code are written to (ops/cuda/fused_program.cuh: below_row).
__global__ void __launch_bounds__(tile::kBlockThreads, 2) fused_step_kernel(const __grid_constant__ Program prog) {
  __shared__ __align__(16) tile::Smem sm;
  cg::grid_group grid = cg::this_grid();
  const bool clocks = prog.clock && blockIdx.x == 0 && threadIdx.x == 0;
  fused::run_program(
      prog, sm, [&] { grid.sync(); },
      [&](int phase) {
        if (clocks) prog.clock[kClockStarts + phase] = global_ns();
      },
      [&](int phase) {
        if (!prog.clock) return;
        __syncthreads();  // the whole block is done
        if (threadIdx.x != 0) return;
        const unsigned long long now = global_ns();
        atomicMin(&prog.clock[kClockFirstDone + phase], now);
        atomicMax(&prog.clock[kClockLastDone + phase], now);
      });
}

// --- phase timing (bench/layers.cpp) ----------------------------------------------------------
struct PhaseClock {
  unsigned long long* device = nullptr;  // kClockEntries timestamps, written by the last step
  std::vector<std::string> names;        // of the last step's phases
};
PhaseClock& phase_clock() {
  static PhaseClock* c = new PhaseClock;  // never destroyed, like the runtime
  return *c;
}

GrowOnlyBuffer& workspace() {  // the step's activations, logits and gradients (fused::Workspace)
  static GrowOnlyBuffer* b = new GrowOnlyBuffer("fused step: workspace", false);  // never destroyed
  return *b;
}

FusedSplitPolicy& split_policy() {  // the plan's knobs (bench/layers.cpp)
  static FusedSplitPolicy policy;
  return policy;
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

// A tail's parts come whole (the kernel dereferences what they name): Adam with its four
// arrays and its step count, the loss watch with its step counter and fault marker.
void check_tail(const FusedTail& tail) {
  const auto& a = tail.adam;
  if ((a.p || a.g || a.m || a.v || a.t) && !(a.p && a.g && a.m && a.v && a.t && a.n > 0))
    throw ShapeError(
        "fused_mlp_step: the tail's Adam needs parameters, gradients, both moments, a step count and n > 0");
  if (tail.loss_sum && !(tail.step && tail.first_bad))
    throw ShapeError("fused_mlp_step: the tail's loss sums need the step counter and the fault marker");
}

}  // namespace

void fused_mlp_step(const float* x, int64_t batch, const FusedMlp& trained, const FusedMlp* frozen,
                    const FusedLoss& loss, float* loss_out, const FusedTail* tail) {
  const int L = trained.layers;
  if (L < 2 || L > kFusedMaxLayers) throw ShapeError("fused_mlp_step: " + std::to_string(L) + " layers");
  const int64_t S = trained.models, F = frozen ? frozen->models : 0, B = batch;
  const std::vector<int64_t>& s = trained.sizes;
  if (S == 0 || B == 0 || (loss.distill && (F == 0 || S % F != 0)))
    throw ShapeError("fused_mlp_step: " + std::to_string(S) + " trained and " + std::to_string(F) +
                     " frozen models, batch " + std::to_string(B));
  if (tail) check_tail(*tail);

  // Activations of trained (first S) and frozen (next F) models, the logits, the gradients:
  // carved from one buffer that outlives the step (a step in a CUDA graph then allocates
  // nothing), each part 256-byte aligned like an allocation of its own — so no two share an
  // L1 line, which the program's L1 reads rely on (ops/cuda/tile_gemm.cuh).
  fused::Workspace ws;
  ws.H.assign(size_t(L), nullptr);
  ws.G.assign(size_t(L) + 1, nullptr);
  size_t bytes = 0;
  auto part = [&bytes](size_t part_bytes) {  // the offset of the next part
    const size_t at = bytes;
    bytes += (part_bytes + 255) / 256 * 256;
    return at;
  };
  std::vector<size_t> h_at(size_t(L), 0), g_at(size_t(L) + 1, 0);
  for (int l = 1; l < L; ++l) h_at[size_t(l)] = part(sizeof(float) * size_t((S + F) * B * s[size_t(l)]));
  for (int l = 1; l <= L; ++l) g_at[size_t(l)] = part(sizeof(float) * size_t(S * B * s[size_t(l)]));
  const size_t logits_at = part(sizeof(float) * size_t(fused::logit_rows(S, loss.distill) * B * s[size_t(L)]));
  const size_t row_loss_at = part(sizeof(double) * size_t(S * B));
  char* base = static_cast<char*>(workspace().reserve(bytes));
  for (int l = 1; l < L; ++l) ws.H[size_t(l)] = reinterpret_cast<float*>(base + h_at[size_t(l)]);
  for (int l = 1; l <= L; ++l) ws.G[size_t(l)] = reinterpret_cast<float*>(base + g_at[size_t(l)]);
  ws.logits = reinterpret_cast<float*>(base + logits_at);
  ws.row_loss = reinterpret_cast<double*>(base + row_loss_at);

  const int grid = resident_blocks();
  if (grid <= 0) throw DeviceError("fused_mlp_step: the kernel does not fit on this GPU");
  Program prog = fused::build_program(x, batch, trained, frozen, loss, loss_out, ws, grid, tail, split_policy());
  // The tiles' copies read through L1, which only this rule keeps from serving stale lines:
  // checked on the real buffers, at the GPU's line size (a few µs of host time, and not at
  // all when a CUDA graph replays the step).
  const std::string broken = fused::l1_rule_violation(prog, 128);
  if (!broken.empty())
    throw Error("fused_mlp_step: " + broken + " (ops/cuda/tile_gemm.cuh, \"Which loads may use L1\")");
  prog.clock = phase_clock().device;
  if (prog.clock) {
    phase_clock().names = fused::phase_names(prog);
    // "first done" starts at the largest time, "last done" at 0.
    CUDA_CHECK(cudaMemsetAsync(prog.clock + kClockFirstDone, 0xff, sizeof(unsigned long long) * fused::kMaxPhases,
                               Runtime::get().stream()));
    CUDA_CHECK(cudaMemsetAsync(prog.clock + kClockLastDone, 0, sizeof(unsigned long long) * fused::kMaxPhases,
                               Runtime::get().stream()));
  }
  int64_t floats = 0, counters = 0;
  fused::scratch_sizes(prog, floats, counters);
  fused::assign_scratch(prog, floats > 0 ? tile::grow_scratch_floats(floats) : nullptr,
                        counters > 0 ? tile::grow_scratch_counters(counters) : nullptr);

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

void fused_step_split_policy(const FusedSplitPolicy& policy) {
  if (policy.max_splits < 1 || policy.min_chunks < 1)
    throw ShapeError("fused_step_split_policy: max_splits " + std::to_string(policy.max_splits) + " and min_chunks " +
                     std::to_string(policy.min_chunks) + " must both be >= 1");
  split_policy() = policy;
}

void fused_step_clock(bool on) {
  PhaseClock& c = phase_clock();
  if (on && !c.device) {
    void* p = nullptr;
    CUDA_CHECK(cudaMalloc(&p, sizeof(unsigned long long) * kClockEntries));
    c.device = static_cast<unsigned long long*>(p);
  }
  if (!on && c.device) {
    CUDA_CHECK(cudaStreamSynchronize(Runtime::get().stream()));
    CUDA_CHECK(cudaFree(c.device));
    c.device = nullptr;
  }
}

std::vector<FusedPhaseTime> fused_step_phase_times() {
  PhaseClock& c = phase_clock();
  if (!c.device || c.names.empty()) return {};
  std::vector<unsigned long long> t(kClockEntries);
  CUDA_CHECK(cudaStreamSynchronize(Runtime::get().stream()));
  CUDA_CHECK(cudaMemcpy(t.data(), c.device, sizeof(unsigned long long) * t.size(), cudaMemcpyDeviceToHost));
  // Signed (a block that left the barrier before block 0 may finish before block 0 starts), and
  // subtracted as integers: a double cannot hold a global-timer reading to the nanosecond.
  auto us = [](unsigned long long from, unsigned long long to) { return double(int64_t(to - from)) / 1000.0; };
  std::vector<FusedPhaseTime> out;
  for (size_t i = 0; i < c.names.size(); ++i) {
    const unsigned long long start = t[kClockStarts + i];
    out.push_back({c.names[i], us(start, t[kClockStarts + i + 1]), us(start, t[kClockFirstDone + i]),
                   us(start, t[kClockLastDone + i])});
  }
  return out;
}

}  // namespace subliminal::cuda
