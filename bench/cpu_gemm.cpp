// bench/cpu_gemm.cpp — the CPU's GEMMs of one training step: the engine's slabs on its own
// threads against OpenBLAS's own threads, at each thread count.
//
//   bench_cpu_gemm [--threads 1,2,4,...] [--json FILE]
//
// The engine cuts each model's product into a slab per thread and runs each slab as one
// single-threaded cblas call (ops/cpu/gemm_cpu.cpp, gemm_plan). Every slab packs the whole of
// the operand it shares with the others, so the work grows with the thread count; OpenBLAS's
// own threads share their packed panels instead, but cost a fork and join per call. On the
// 2-core development machine the slabs win (docs/PERFORMANCE.md); on many cores that is
// unmeasured, and this benchmark measures it: the products of a teacher step (1 model) and
// of a distillation step's two students (2 models, the student and the control) at batch 256
// for the notebook's MLP 784 → 256 → 256 → 13, timed both ways at each thread count.
//
// Per model a step's products are (B = 256; layer l maps I_l inputs to O_l outputs):
//   forward          y[B,O] = x[B,I] · w[O,I]ᵀ       layers 1, 2, 3
//   backward_input   dx[B,I] = dy[B,O] · w[O,I]      layers 3, 2 (layer 1's input is the data)
//   backward_weight  dw[O,I] = dy[B,O]ᵀ · x[B,I]     layers 1, 2, 3
// No bias and no ReLU: the epilogues are the same loops both ways and are not timed here.
#include <cblas.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "apps/subliminal/openblas_env.h"  // prepare_openblas
#include "engine/device.h"              // device_description
#include "engine/parallel.h"            // set_cpu_threads
#include "engine/storage.h"             // address_space_left
#include "ops/cpu/gemm_cpu.h"           // linear_forward, linear_backward_input/weight, blas_core

extern "C" void openblas_set_num_threads(int threads);  // OpenBLAS's own, beside cblas.h's API

using namespace subliminal;

namespace {

constexpr int64_t kBatch = 256;
struct Layer {
  int64_t in, out;
};
const Layer kLayers[] = {{784, 256}, {256, 256}, {256, 13}};

// The buffers of `models` models' products, filled with small values (their bits do not matter
// for the time; NaNs and subnormals, which could, are not among them).
struct StepBuffers {
  int64_t models;
  std::vector<std::vector<float>> x, w, y, dy, dx, dw;  // per layer, every model's, back to back
  explicit StepBuffers(int64_t n) : models(n) {
    for (const Layer& l : kLayers) {
      x.emplace_back(size_t(n * kBatch * l.in), 0.01f);
      w.emplace_back(size_t(n * l.out * l.in), 0.02f);
      y.emplace_back(size_t(n * kBatch * l.out));
      dy.emplace_back(size_t(n * kBatch * l.out), 0.03f);
      dx.emplace_back(size_t(n * kBatch * l.in));
      dw.emplace_back(size_t(n * l.out * l.in));
    }
  }
};

// Multiply-adds of one step's products, per model.
double step_macs() {
  double macs = 0;
  for (int l = 0; l < 3; ++l) {
    const double product = double(kBatch) * double(kLayers[l].in) * double(kLayers[l].out);
    macs += product * (l == 0 ? 2 : 3);  // forward and backward_weight; backward_input but in layer 1
  }
  return macs;
}

// One step's products the engine's way: ops/cpu's Linear GEMMs on the engine's threads.
void engine_step(StepBuffers& s) {
  for (int l = 0; l < 3; ++l) {
    const cpu::GemmDims d{s.models, kBatch, kLayers[l].in, kLayers[l].out};
    cpu::linear_forward<float>(s.x[l].data(), s.w[l].data(), nullptr, false, s.y[l].data(), nullptr, d);
  }
  for (int l = 2; l >= 0; --l) {
    const cpu::GemmDims d{s.models, kBatch, kLayers[l].in, kLayers[l].out};
    if (l > 0)
      cpu::linear_backward_input<float>(s.dy[l].data(), s.w[l].data(), nullptr, s.dx[l].data(), nullptr,
                                        false, d);
    cpu::linear_backward_weight<float>(s.dy[l].data(), s.x[l].data(), s.dw[l].data(), false, nullptr, d);
  }
}

// The same products as whole cblas calls, model after model, on OpenBLAS's threads (the
// engine's way before the slabs).
void openblas_step(StepBuffers& s) {
  for (int64_t m = 0; m < s.models; ++m) {
    for (int l = 0; l < 3; ++l) {
      const int I = int(kLayers[l].in), O = int(kLayers[l].out), B = int(kBatch);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, B, O, I, 1.f, &s.x[l][size_t(m * B * I)], I,
                  &s.w[l][size_t(m * O * I)], I, 0.f, &s.y[l][size_t(m * B * O)], O);
    }
    for (int l = 2; l >= 0; --l) {
      const int I = int(kLayers[l].in), O = int(kLayers[l].out), B = int(kBatch);
      if (l > 0)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, B, I, O, 1.f, &s.dy[l][size_t(m * B * O)], O,
                    &s.w[l][size_t(m * O * I)], I, 0.f, &s.dx[l][size_t(m * B * I)], I);
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, O, I, B, 1.f, &s.dy[l][size_t(m * B * O)], O,
                  &s.x[l][size_t(m * B * I)], I, 0.f, &s.dw[l][size_t(m * O * I)], I);
    }
  }
}

// Microseconds per call: the median of 7 blocks of calls, each block ≈ 30 ms, after a warm-up.
double time_us(const std::function<void()>& call) {
  using clock = std::chrono::steady_clock;
  auto seconds_since = [](clock::time_point t) {
    return std::chrono::duration<double>(clock::now() - t).count();
  };
  const clock::time_point warm = clock::now();
  int calls = 0;
  while (calls < 3 || seconds_since(warm) < 0.03) {
    call();
    ++calls;
  }
  const int per_block = std::max(1, int(0.03 / (seconds_since(warm) / calls)));
  std::vector<double> blocks;
  for (int b = 0; b < 7; ++b) {
    const clock::time_point start = clock::now();
    for (int i = 0; i < per_block; ++i) call();
    blocks.push_back(1e6 * seconds_since(start) / per_block);
  }
  std::sort(blocks.begin(), blocks.end());
  return blocks[blocks.size() / 2];
}

// "1,2,4" → {1, 2, 4}: each 1 … 1024; anything else is a usage error (empty result).
std::vector<int> parse_threads(const std::string& text) {
  std::vector<int> list;
  size_t begin = 0;
  while (begin <= text.size()) {
    const size_t end = std::min(text.find(',', begin), text.size());
    int v = 0;
    const auto [stop, error] = std::from_chars(text.data() + begin, text.data() + end, v);
    if (error != std::errc() || stop != text.data() + end || v < 1 || v > 1024) return {};
    list.push_back(v);
    begin = end + 1;
  }
  return list;
}

// 1, 2, 4, … and the hardware's thread count itself.
std::vector<int> default_threads() {
  const int hardware = int(std::max(1u, std::thread::hardware_concurrency()));
  std::vector<int> list;
  for (int t = 1; t < hardware; t *= 2) list.push_back(t);
  list.push_back(hardware);
  return list;
}

}  // namespace

int main(int argc, char** argv) {
  // OpenBLAS 0.3.21 gives CPUs newer than itself its SSE3 kernels: the app's remedy, here too.
  app::prepare_openblas(argv);
  const char* usage = "usage: bench_cpu_gemm [--threads N,N,...] [--json FILE]";
  std::vector<int> threads = default_threads();
  std::string json_path;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--threads" && i + 1 < argc) {
      threads = parse_threads(argv[++i]);
      if (threads.empty()) {
        std::fprintf(
            stderr,
            "bench_cpu_gemm: --threads: expected whole numbers 1-1024 separated by commas, got \"%s\"\n",
            argv[i]);
        return 2;
      }
    } else if (a == "--json" && i + 1 < argc) {
      json_path = argv[++i];
    } else {
      std::fprintf(stderr, "%s\n", usage);
      return 2;
    }
  }
  // OpenBLAS's threads hold a 128 MiB work buffer each, and OpenBLAS retries one it cannot map
  // forever (ops/cpu/gemm_cpu.h): under an address-space limit this benchmark could hang.
  if (address_space_left() != kNoAddressSpaceLimit) {
    std::fprintf(stderr,
                 "bench_cpu_gemm: runs without an address-space limit only (ulimit -v or -d is set here: "
                 "OpenBLAS's threads would hang where their buffers did not fit)\n");
    return 2;
  }
  std::ofstream json_file;  // opened before anything is measured: a bad path should not cost the numbers
  if (!json_path.empty()) {
    json_file.open(json_path);
    if (!json_file) {
      std::fprintf(stderr, "bench_cpu_gemm: --json: cannot write %s\n", json_path.c_str());
      return 2;
    }
  }

  const std::string machine = device_description(Device::cpu) + ", OpenBLAS " + cpu::blas_core();
  std::printf("CPU GEMMs of one step (MLP 784->256->256->13, batch 256) on %s\n", machine.c_str());
  std::printf("µs per step, medians of 7 blocks; GFLOP/s in brackets\n");
  std::printf("%7s %-24s %18s %18s %9s\n", "threads", "step", "engine slabs", "OpenBLAS threads", "slabs ×");
  nlohmann::json out = {{"machine", machine}, {"batch", kBatch}, {"rows", nlohmann::json::array()}};
  for (const int t : threads) {
    for (const int64_t models : {int64_t(1), int64_t(2)}) {
      StepBuffers buffers(models);
      openblas_set_num_threads(1);  // the slabs are single-threaded calls
      set_cpu_threads(t);
      const double engine_us = time_us([&] { engine_step(buffers); });
      openblas_set_num_threads(t);
      set_cpu_threads(1);
      const double openblas_us = time_us([&] { openblas_step(buffers); });
      const double flop = 2 * step_macs() * double(models);
      const char* step = models == 1 ? "teacher (1 model)" : "distillation (2 models)";
      std::printf("%7d %-24s %10.0f (%5.0f) %10.0f (%5.0f) %8.2f\n", t, step, engine_us,
                  flop / engine_us / 1e3, openblas_us, flop / openblas_us / 1e3, openblas_us / engine_us);
      std::fflush(stdout);
      out["rows"].push_back({{"threads", t},
                             {"models", models},
                             {"engine_us", engine_us},
                             {"openblas_us", openblas_us},
                             {"gflop", flop / 1e9}});
    }
  }
  openblas_set_num_threads(1);
  if (json_file.is_open()) json_file << out.dump(1) << "\n";
  return 0;
}
