// bench/layers.cpp — per-layer and per-step GPU times of the Linear GEMM engines on the MNIST
// shapes (issue: cuBLASLt vs cuDNN side by side).
//
//   build/bench/bench_layers [--json FILE] [--fused-only] [--no-cluster]
//
// For batch 256 and 1024 and each layer of the notebook's MLP (784→256 ReLU, 256→256 ReLU,
// 256→13), times forward, backward_input (ReLU gate + the lower layer's bias gradient) and
// backward_weight (+ bias gradient) for each engine:
//   cublaslt        fused epilogues, fp32 (the default)
//   cublaslt-plain  plain GEMMs + our epilogue kernels, fp32 (--fusion none's GEMMs)
//   cublaslt-tf32   fused epilogues, TF32 tensor cores
//   cudnn-tf32      the cuDNN-frontend graphs (TF32: fp32 fused graphs do not exist on Hopper)
//   tiled           our own fp32 kernels, one launch per GEMM, split-K (ops/cuda/gemm_tiled.cu)
// and a whole teacher training step (forward, loss, backward, Adam) replayed as a CUDA graph;
// then the fused training step (ops/fused_step.h) phase by phase, the step under both designs of
// its kernels (grid and cluster), and (not with --fused-only) the fused step at batch 256 under
// a sweep of split-K policies and the cluster design under other tunings (K chunk, clusters,
// overlapped launches, prefetch). --no-cluster leaves the cluster design out.
// Times are CUDA-event medians over 7 blocks of 50 calls after a warm-up, in microseconds.
#include <algorithm>
#include <cstdio>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench/bench_main.h"
#include "bench/timing.h"
#include "engine/adam.h"
#include "engine/autograd.h"
#include "engine/cuda/runtime.h"
#include "engine/kernels.h"
#include "engine/nn.h"
#include "engine/random.h"
#include "engine/step_graph.h"
#include "ops/batch.h"
#include "ops/cuda/fused_step_cuda.h"
#include "ops/fused_step.h"
#include "ops/gemm.h"
#include "ops/loss.h"
#include "ops/mlp.h"

using namespace subliminal;
using bench::time_us;

namespace {

struct Engine {
  const char* name;
  gemm::GpuEngine engine;
  bool fuse, tf32;
};

const Engine kEngines[] = {{"cublaslt", gemm::GpuEngine::cublaslt, true, false},
                           {"cublaslt-plain", gemm::GpuEngine::cublaslt, false, false},
                           {"cublaslt-tf32", gemm::GpuEngine::cublaslt, true, true},
                           {"cudnn-tf32", gemm::GpuEngine::cudnn, true, true},
                           {"tiled", gemm::GpuEngine::tiled, true, false}};

void use(const Engine& e) {
  gemm::settings().engine = e.engine;
  gemm::settings().fuse_epilogues = e.fuse;
  gemm::settings().tf32 = e.tf32;
  gemm::settings().cudnn_tf32 = true;
}

Tensor random_tensor(const Shape& shape, uint64_t stream) {
  Tensor t = Tensor::empty(shape, DType::f32, Device::cuda);
  fill_uniform(t, {1234, stream}, -1.0, 1.0);
  return t;
}

// One teacher step (gather, MLP, cross-entropy, backward, Adam) as a replayed CUDA graph.
double step_us(int64_t batch) {
  const MlpShape shape{{784, 256, 256, 13}};
  MlpParams params(shape, 1, DType::f32, Device::cuda);
  init_mlp(params, InitScheme::torch_default, {0}, 0);
  Adam adam(params.values(), params.grads(), {});
  const int64_t samples = 8192;
  std::vector<uint8_t> pixels(static_cast<size_t>(samples * 784)), labels(static_cast<size_t>(samples));
  for (size_t i = 0; i < pixels.size(); ++i) pixels[i] = uint8_t(random_word({7, 1}, i));
  for (size_t i = 0; i < labels.size(); ++i) labels[i] = uint8_t(random_word({7, 2}, i) % 10);
  Tensor images = Tensor::from_vector(pixels, {samples, 784}, Device::cuda);
  Tensor targets = Tensor::from_vector(labels, {samples}, Device::cuda);
  std::vector<int32_t> identity(static_cast<size_t>(samples));
  for (size_t i = 0; i < identity.size(); ++i) identity[i] = int32_t(i);
  Tensor order = Tensor::from_vector(identity, {1, samples}, Device::cuda);
  Tensor step = Tensor::zeros({1}, DType::i64, Device::cuda);
  StepGraph graph(Device::cuda, true);
  const std::vector<Tensor> parameters = params.tensors();
  const int64_t steps = samples / batch;
  return time_us(
      [&] {
        graph.run([&] {
          Tensor x = Tensor::empty({1, batch, 784}, DType::f32, Device::cuda);
          Tensor y = Tensor::empty({1, batch}, DType::i32, Device::cuda);
          gather_batch(images, targets, order, step, 0, x, y);  // stride 0: always the first batch
          Tensor loss = cross_entropy(mlp_forward(x, params), y, {0, 10});
          zero_grad(parameters);
          loss.backward();
          adam.step();
          increment(step);
        });
      },
      int(std::min<int64_t>(steps, 50)));
}

// A fused training step (ops/fused_step.h) of the notebook's MLP at batch B, ready to launch:
// distill: two students and one frozen teacher on the ghost logits, as in the app. The step gets
// Adam as its tail, as in the app (whose tail also carries the loss sums and counters: a few
// loads and stores in block 0).
class FusedStepSetup {
 public:
  FusedStepSetup(int64_t batch, bool distill)
      : distill_(distill),
        trained_(shape(), distill ? 2 : 1, DType::f32, Device::cuda),
        frozen_(shape(), 1, DType::f32, Device::cuda) {
    init_mlp(trained_, InitScheme::torch_default,
             distill ? std::vector<uint64_t>{0, 1} : std::vector<uint64_t>{0}, 0);
    init_mlp(frozen_, InitScheme::torch_default, {2}, 0);
    x_ = random_tensor({trained_.models(), batch, 784}, 5);
    std::vector<int32_t> labels(static_cast<size_t>(trained_.models() * batch));
    for (size_t i = 0; i < labels.size(); ++i) labels[i] = int32_t(random_word({7, 3}, i) % 10);
    y_ = Tensor::from_vector(labels, {trained_.models(), batch}, Device::cuda);
    adam_ = std::make_unique<Adam>(trained_.values(), trained_.grads(), AdamOptions{3e-4});
    tail_.adam = adam_.get();
  }
  void step() {
    if (distill_)
      fused_distill_step(x_, trained_, frozen_, {10, 13}, 1.0, Divergence::kl, tail_);
    else
      fused_cross_entropy_step(x_, y_, trained_, {0, 10}, tail_);
  }

 private:
  static MlpShape shape() { return MlpShape{{784, 256, 256, 13}}; }
  bool distill_;
  MlpParams trained_, frozen_;
  Tensor x_, y_;
  std::unique_ptr<Adam> adam_;
  StepTail tail_;
};

// The fused step at batch B, launched eagerly reps + 3 times with the phase clock on: each
// launch's phases after the first three (a warm-up).
std::vector<std::vector<cuda::FusedPhaseTime>> time_fused_step(int64_t batch, bool distill, int reps) {
  FusedStepSetup setup(batch, distill);
  cuda::fused_step_clock(true);
  std::vector<std::vector<cuda::FusedPhaseTime>> runs;
  for (int r = 0; r < reps + 3; ++r) {
    setup.step();
    if (r >= 3) runs.push_back(cuda::fused_step_phase_times());
  }
  cuda::fused_step_clock(false);
  return runs;
}

// The two designs of the fused step's GPU kernels (FusedStepDesign: one persistent kernel of
// grid-wide phases, or row blocks in thread-block clusters) side by side: µs per step, eager
// launches back to back, CUDA-event medians. The cluster design needs compute capability 9.0
// (and `cluster`: --no-cluster leaves it out).
nlohmann::json design_table(bool cluster) {
  std::printf(
      "fused step, the two designs of its kernels (µs per step, eager launches, CUDA-event medians):\n");
  std::printf("%-6s %-8s %10s %10s\n", "batch", "step", "grid", "cluster");
  nlohmann::json rows = nlohmann::json::array();
  for (int64_t B : {256, 1024})
    for (bool distill : {false, true}) {
      nlohmann::json row = {{"batch", B}, {"step", distill ? "distill" : "teacher"}};
      std::printf("%-6lld %-8s", (long long)B, distill ? "distill" : "teacher");
      for (FusedStepDesign design : {FusedStepDesign::grid, FusedStepDesign::cluster}) {
        const char* name = design == FusedStepDesign::grid ? "grid" : "cluster";
        if (design == FusedStepDesign::cluster && !(cluster && cuda::cluster_step_supported())) {
          std::printf(" %10s", "n/a");
          continue;
        }
        set_fused_step_design(design);
        FusedStepSetup setup(B, distill);
        const double us = time_us([&] { setup.step(); }, 20, 7, 5);
        std::printf(" %10.1f", us);
        row[name] = us;
      }
      set_fused_step_design(FusedStepDesign::grid);
      std::printf("\n");
      rows.push_back(row);
    }
  return rows;
}

// The cluster design under other tunings (cuda::ClusterStepTuning) than its default (the
// first row): K chunks capped (long chunks are few — less per-chunk overhead, a wait and two
// barriers — but the first one's load is not hidden behind any arithmetic; short ones start
// computing sooner); the rows spread over fewer clusters (fewer gradient partials for the
// second kernel to add, more arithmetic per cluster); the kernels launched only once the one
// ahead has finished; each layer's first chunk issued only after the barrier ahead of it; the
// hidden layers' forward products in 8 × 8 register blocks (half the shared-memory reads per
// FMA; bench_cluster times one chunk of it alone).
nlohmann::json cluster_tuning_sweep(int64_t batch) {
  nlohmann::json rows = nlohmann::json::array();
  if (!cuda::cluster_step_supported()) return rows;
  struct Tuning {
    std::string name;
    cuda::ClusterStepTuning tuning;
  };
  std::vector<Tuning> tunings{{"default", {}}};
  for (int cap : {32, 64, 128, 256, 400})
    tunings.push_back({"K chunk <= " + std::to_string(cap), {.max_chunk = cap}});
  for (int clusters : {2, 4, 8, 12})
    tunings.push_back({"clusters <= " + std::to_string(clusters), {.max_clusters = clusters}});
  tunings.push_back({"launches not overlapped", {.overlap_launches = false}});
  tunings.push_back({"no prefetch", {.prefetch = false}});
  tunings.push_back({"8 x 8 forward blocks", {.register_block = 8}});
  std::printf("cluster step, batch %lld, tuned (µs per step, eager launches, CUDA-event medians):\n",
              (long long)batch);
  std::printf("%-24s %10s %10s\n", "tuning", "teacher", "distill");
  set_fused_step_design(FusedStepDesign::cluster);
  for (const Tuning& t : tunings) {
    cuda::cluster_step_tuning(t.tuning);
    nlohmann::json row = {{"batch", batch},
                          {"tuning", t.name},
                          {"max_chunk", t.tuning.max_chunk},
                          {"max_clusters", t.tuning.max_clusters},
                          {"overlap_launches", t.tuning.overlap_launches},
                          {"prefetch", t.tuning.prefetch},
                          {"register_block", t.tuning.register_block}};
    std::printf("%-24s", t.name.c_str());
    for (bool distill : {false, true}) {
      FusedStepSetup setup(batch, distill);
      const double us = time_us([&] { setup.step(); }, 20, 7, 5);
      std::printf(" %10.1f", us);
      row[distill ? "distill" : "teacher"] = us;
    }
    std::printf("\n");
    rows.push_back(row);
  }
  cuda::cluster_step_tuning({});
  set_fused_step_design(FusedStepDesign::grid);
  return rows;
}

// The median over launches of field(phase ph), and of the whole kernel (its phases' sum).
double median_over(const std::vector<std::vector<cuda::FusedPhaseTime>>& runs, size_t ph,
                   double (*field)(const cuda::FusedPhaseTime&)) {
  std::vector<double> v;
  for (const auto& run : runs) v.push_back(field(run[ph]));
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}
double median_kernel_us(const std::vector<std::vector<cuda::FusedPhaseTime>>& runs) {
  std::vector<double> totals;
  for (const auto& run : runs) {
    double total = 0.0;
    for (const cuda::FusedPhaseTime& t : run) total += t.us;
    totals.push_back(total);
  }
  std::sort(totals.begin(), totals.end());
  return totals[totals.size() / 2];
}

// The fused step phase by phase, medians of `reps` launches: each phase's time (block 0's view
// of the grid-wide barriers), when the first and the last block finished the phase's work, the
// rest (the barrier's hand-over to the next phase; after the last phase, block 0's tail), and
// the whole kernel.
nlohmann::json fused_phases(int64_t batch, bool distill, int reps = 30) {
  const auto runs = time_fused_step(batch, distill, reps);
  nlohmann::json out = {{"batch", batch}, {"step", distill ? "distillation (2 students + frozen teacher)" : "teacher"},
                        {"phases", nlohmann::json::array()}};
  std::printf("fused %s step, batch %lld (medians of %d eager launches, µs from block 0's start of the phase):\n",
              distill ? "distillation" : "teacher", (long long)batch, reps);
  std::printf("  %-22s %8s %11s %11s %11s\n", "phase", "phase", "first done", "last done", "hand-over");
  for (size_t ph = 0; ph < runs.front().size(); ++ph) {
    const double us = median_over(runs, ph, [](const cuda::FusedPhaseTime& t) { return t.us; });
    const double first = median_over(runs, ph, [](const cuda::FusedPhaseTime& t) { return t.first_done_us; });
    const double last = median_over(runs, ph, [](const cuda::FusedPhaseTime& t) { return t.last_done_us; });
    const double hand_over = median_over(runs, ph, [](const cuda::FusedPhaseTime& t) { return t.us - t.last_done_us; });
    const std::string& name = runs.front()[ph].name;
    std::printf("  %-22s %8.2f %11.2f %11.2f %11.2f\n", name.c_str(), us, first, last, hand_over);
    out["phases"].push_back(
        {{"phase", name}, {"us", us}, {"first_done_us", first}, {"last_done_us", last}, {"hand_over_us", hand_over}});
  }
  out["kernel_us"] = median_kernel_us(runs);
  std::printf("  %-22s %8.2f\n", "whole kernel", out["kernel_us"].get<double>());
  return out;
}

// The fused step under other split-K policies (cuda::FusedSplitPolicy): how far to split K is
// a trade between shorter slices and the fix-up's dependent round trips (the partial's store,
// the counter's acquire-release atomic, the partials' loads), whose costs only a GPU can say.
// The fix-up itself is the other knob: a split tile finished in bands by all of its items at
// once ("bands", the default) or by the last of them alone ("last").
// One row per policy: the whole kernel and each phase, medians of `reps` launches. The default
// policy is restored afterwards.
nlohmann::json split_sweep(int64_t batch, int reps = 15) {
  nlohmann::json out = nlohmann::json::array();
  std::printf(
      "fused step, batch %lld, split-K policies (medians of %d eager launches, µs; default 8 / 2, bands):\n",
      (long long)batch, reps);
  std::printf("  %10s %10s %6s  %-12s %8s  %s\n", "max splits", "min chunks", "fix-up", "step", "kernel",
              "phases");
  for (int max_splits : {1, 2, 4, 8, 16})
    for (int min_chunks : {1, 2, 4})
      for (bool bands : {true, false}) {
        if (max_splits == 1 && (min_chunks > 1 || !bands)) continue;  // no split: nothing to vary
        cuda::fused_step_split_policy({max_splits, min_chunks, bands});
        for (bool distill : {false, true}) {
          const auto runs = time_fused_step(batch, distill, reps);
          nlohmann::json row = {{"max_splits", max_splits},
                                {"min_chunks", min_chunks},
                                {"fixup", bands ? "bands" : "last"},
                                {"step", distill ? "distillation" : "teacher"},
                                {"kernel_us", median_kernel_us(runs)},
                                {"phases_us", nlohmann::json::array()}};
          std::printf("  %10d %10d %6s  %-12s %8.2f ", max_splits, min_chunks, bands ? "bands" : "last",
                      distill ? "distillation" : "teacher", row["kernel_us"].get<double>());
          for (size_t ph = 0; ph < runs.front().size(); ++ph) {
            const double us = median_over(runs, ph, [](const cuda::FusedPhaseTime& t) { return t.us; });
            std::printf(" %6.2f", us);
            row["phases_us"].push_back(us);
          }
          std::printf("\n");
          out.push_back(row);
        }
      }
  cuda::fused_step_split_policy({});
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  bench::BenchArgs args;
  bool fused_only = false, no_cluster = false;
  if (const int code = bench::parse_bench_args(
          "bench_layers", argc, argv, args, {{"--fused-only", &fused_only}, {"--no-cluster", &no_cluster}}))
    return code;
  try {
    const std::string gpu = device_description(Device::cuda);
    nlohmann::json out = {{"gpu", gpu}, {"rows", nlohmann::json::array()}};
    if (!fused_only) {
      std::printf("Linear-layer GEMMs on %s (µs per call, CUDA-event medians)\n", gpu.c_str());
      std::printf("%-6s %-16s %-16s", "batch", "layer", "op");
      for (const Engine& e : kEngines) std::printf(" %14s", e.name);
      std::printf("\n");
      struct Layer {
        const char* name;
        int64_t in, out;
        bool relu;        // this layer's output goes through a ReLU
        bool relu_below;  // its input came out of a ReLU (backward_input gates on it)
      };
      const Layer layers[] = {{"784->256 relu", 784, 256, true, false},
                              {"256->256 relu", 256, 256, true, true},
                              {"256->13", 256, 13, false, true}};
      // One line of the table (and its JSON row): `measure` timed with each engine in turn.
      auto table_row = [](int64_t B, const char* layer, const char* op, const char* json_op,
                          const std::function<double()>& measure) {
        std::printf("%-6lld %-16s %-16s", (long long)B, layer, op);
        nlohmann::json row = {{"batch", B}, {"layer", layer}, {"op", json_op}};
        for (const Engine& e : kEngines) {
          use(e);
          const double us = measure();
          std::printf(" %14.2f", us);
          row[e.name] = us;
        }
        std::printf("\n");
        return row;
      };
      for (int64_t B : {256, 1024}) {
        for (const Layer& L : layers) {
          Tensor x = random_tensor({1, B, L.in}, 1), w = random_tensor({1, L.out, L.in}, 2);
          Tensor b = random_tensor({1, L.out}, 3), dy = random_tensor({1, B, L.out}, 4);
          Tensor y = Tensor::empty({1, B, L.out}, DType::f32, Device::cuda);
          Tensor mask = Tensor::empty(gemm::mask_shape(1, B, L.out), DType::u8, Device::cuda);
          Tensor x_mask = Tensor::empty(gemm::mask_shape(1, B, L.in), DType::u8, Device::cuda);
          Tensor x_relu = Tensor::empty({1, B, L.in}, DType::f32, Device::cuda);
          x_relu.copy_from(x);
          gemm::bias_activation(x_relu, Tensor(), gemm::Activation::relu, x_mask);  // a real ReLU output + mask
          Tensor dx = Tensor::empty({1, B, L.in}, DType::f32, Device::cuda);
          Tensor dw = Tensor::empty({1, L.out, L.in}, DType::f32, Device::cuda);
          Tensor db = Tensor::empty({1, L.out}, DType::f32, Device::cuda);
          Tensor db_below = Tensor::empty({1, L.in}, DType::f32, Device::cuda);
          const auto act = L.relu ? gemm::Activation::relu : gemm::Activation::none;
          const std::pair<const char*, std::function<void()>> ops[] = {
              {"forward", [&] { gemm::forward(x_relu, w, b, act, y, L.relu ? mask : Tensor()); }},
              {"backward_input",
               [&] {
                 gemm::backward_input(dy, w, L.relu_below ? x_mask : Tensor(), dx,
                                      L.relu_below ? db_below : Tensor(), false, x_relu);
               }},
              {"backward_weight", [&] { gemm::backward_weight(dy, x_relu, dw, false, db); }},
          };
          for (const auto& [op, call] : ops)
            out["rows"].push_back(table_row(B, L.name, op, op, [&] { return time_us(call); }));
        }
        out["rows"].push_back(
            table_row(B, "whole MLP", "training step", "training step (CUDA graph)", [&] { return step_us(B); }));
      }
    }
    out["fused_step"] = nlohmann::json::array();
    for (int64_t B : {256, 1024})
      for (bool distill : {false, true}) out["fused_step"].push_back(fused_phases(B, distill));
    out["designs"] = design_table(!no_cluster);
    if (!fused_only) {
      out["split_sweep"] = split_sweep(256);
      if (!no_cluster) out["cluster_tunings"] = cluster_tuning_sweep(256);
    }
    use(kEngines[0]);
    const std::string fallbacks = gemm::fallback_report();
    if (!fallbacks.empty()) std::printf("Fallbacks:\n%s", fallbacks.c_str());
    std::printf("cuBLASLt autotuning:\n%s", gemm::tuning_report().c_str());
    out["fallbacks"] = fallbacks;
    out["autotune"] = gemm::tuning_report();
    if (args.json.is_open()) args.json << out.dump(2) << "\n";
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_layers: %s\n", e.what());
    return 1;
  }
}
