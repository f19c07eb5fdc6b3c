// bench/cluster.cu — what the cluster design's building blocks would cost on this GPU.
//
//   build/bench/bench_cluster [--json FILE]
//
// Why. docs/PERFORMANCE.md ("What would reach 40 µs") sketches a training step with no
// grid-wide GEMMs: 16 thread-block clusters of 8 SMs each own 16 rows of the batch, every SM
// keeps its slice of W₀ and W₁ in shared memory, a layer costs one cluster barrier and an
// exchange through distributed shared memory, and the weight gradients meet in one
// deterministic reduce-scatter through L2 per step. Its estimate (≈ 20–25 µs a teacher step)
// rests on four numbers this program measures, so that the next GPU session can check it
// before anyone builds the design:
//
//   cluster barrier   cg::this_cluster().sync() for clusters of 2, 4, 8 and 16 blocks
//   DSMEM load        one thread, a dependent chain of loads from another block's shared
//                     memory in the cluster (and from its own, for comparison)
//   L2 passes         the reduce-scatter's three passes over the 270 093-float arena of the
//                     notebook's teacher with 16 partial copies, one block per SM: write the
//                     partials, sum them (each block 1/Nth of the arena, 16 reads per value),
//                     and every cluster reload the new weights
//   SM arithmetic     one block per SM, operands in shared memory, 4 × 4 outputs per thread:
//                     the forward of layer 0 for 16 rows and 32 outputs (K = 784, split across
//                     the 8 warps) and its weight gradient (32 × 784 outputs, K = 16); then
//                     the cluster step's own forward product (ops/cuda/smem_products.cuh's
//                     dot_accumulate, its K-group fix-up included) on one K chunk of layer 0 as
//                     the default run's plans stage it: 16 rows × 32 outputs × 392 (a teacher
//                     step) and 32 × 32 × 264 (a distillation step). docs/PERFORMANCE.md's count
//                     of its shared-memory traffic puts it at about half the FMA units' rate
//                     (an H100 SM: 128 FMAs a clock, ≈ 500 GFLOP/s at 1.98 GHz); this says —
//                     and times the same product with 8 × 4 and 8 × 8 outputs a thread
//                     (dot_accumulate_blocked), which read half as much shared memory per FMA
//                     but split K over more groups: whether the step should change blocks.
//                     Each product's sums are checked against the exact ones.
//
// Clusters need compute capability 9.0: on older GPUs those rows are skipped. Timing: the
// global timer inside the kernels (barrier, loads, arithmetic), CUDA events around launches
// less an empty launch (L2 passes).
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench/bench_main.h"
#include "bench/global_timer.cuh"
#include "bench/timing.h"
#include "engine/cuda/check.h"
#include "engine/cuda/runtime.h"
#include "engine/device.h"
#include "engine/tensor.h"
#include "ops/cuda/smem_products.cuh"  // the cluster step's own products

namespace subliminal {
namespace {

namespace cg = cooperative_groups;

constexpr int kThreads = 256;
constexpr int64_t kArena = 784 * 256 + 256 + 256 * 256 + 256 + 256 * 13 + 13;  // the teacher's floats
constexpr int kPartials = 16;                                                  // clusters in the design

using bench::global_ns;
using bench::median;

// ---- kernels ---------------------------------------------------------------------------------

// `rounds` cluster barriers; out[0]: block 0's ns from the first to the last.
__global__ void cluster_barrier_kernel(int rounds, unsigned long long* out) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  cg::cluster_group cluster = cg::this_cluster();
  cluster.sync();
  const unsigned long long t0 = global_ns();
  for (int r = 0; r < rounds; ++r) cluster.sync();
  if (blockIdx.x == 0 && threadIdx.x == 0) out[0] = global_ns() - t0;
#endif
}

// Each block of a 2-block cluster fills next[] with one cycle through its 1024 entries
// (x → 5x + 1 mod 1024 has full period); thread 0 of block 0 follows the cycle `hops` times
// in block 1's shared memory, then in its own. out: ns remote, ns local, where each ended.
__global__ void dsmem_chase_kernel(int hops, unsigned long long* out) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  __shared__ unsigned next[1024];
  for (int i = threadIdx.x; i < 1024; i += blockDim.x) next[i] = (5u * unsigned(i) + 1u) % 1024u;
  cg::cluster_group cluster = cg::this_cluster();
  cluster.sync();
  if (cluster.block_rank() == 0 && threadIdx.x == 0) {
    const unsigned* remote = cluster.map_shared_rank(next, 1);
    unsigned j = 0;
    unsigned long long t0 = global_ns();
    for (int i = 0; i < hops; ++i) j = remote[j];
    out[0] = global_ns() - t0, out[2] = j;
    t0 = global_ns();
    for (int i = 0; i < hops; ++i) j = next[j];
    out[1] = global_ns() - t0, out[3] = j;
  }
  cluster.sync();  // block 1's shared memory must outlive block 0's reads
#endif
}

__global__ void empty_kernel() {}

// Pass 1: every block writes its cluster's partial weight gradient for its slice of W:
// kPartials · kArena floats over the grid, each block a contiguous share.
__global__ void write_partials_kernel(float4* partials, int64_t float4s) {
  const int64_t share = (float4s + gridDim.x - 1) / gridDim.x, begin = blockIdx.x * share;
  const int64_t end = min(float4s, begin + share);
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x)
    partials[i] = make_float4(float(i), 1.0f, 2.0f, 3.0f);
}

// Pass 2: block b sums its 1/gridDim of the arena over the kPartials copies, in order, and
// writes the sum (where Adam would run on it).
__global__ void reduce_partials_kernel(const float4* partials, float4* sum, int64_t arena_float4s) {
  const int64_t share = (arena_float4s + gridDim.x - 1) / gridDim.x, begin = blockIdx.x * share;
  const int64_t end = min(arena_float4s, begin + share);
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    float4 s = __ldcg(&partials[i]);
    for (int p = 1; p < kPartials; ++p) {
      const float4 v = __ldcg(&partials[p * arena_float4s + i]);
      s.x += v.x, s.y += v.y, s.z += v.z, s.w += v.w;
    }
    sum[i] = s;
  }
}

// Pass 3: block b (SM s = b mod 8 of cluster b / 8) reloads slice s of the new weights, an
// eighth of the arena: every slice is read by kPartials blocks. out[b] keeps a checksum.
__global__ void reload_kernel(const float4* weights, int64_t arena_float4s, float* out) {
  const int64_t share = (arena_float4s + 7) / 8, begin = (blockIdx.x % 8) * share;
  const int64_t end = min(arena_float4s, begin + share);
  float s = 0.0f;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const float4 v = __ldcg(&weights[i]);
    s += v.x + v.y + v.z + v.w;
  }
  if (s == 12345.0f) out[blockIdx.x] = s;  // (almost) never true: keeps the loads
}

// C (M × N, row-major) = Σ_k A[k][m] · B[k][n], operands K-major in shared memory, 4 × 4
// outputs per thread; with kSplit > 1 the K range is split across groups of 256 / kSplit
// threads and their partials summed in a fixed order. `rounds` times; out[0]: block 0's ns,
// out[1 + block]: a checksum.
template <int M, int N, int K, int kSplit>
__global__ void __launch_bounds__(kThreads, 1) sm_gemm_kernel(int rounds, unsigned long long* out) {
  static_assert(M % 4 == 0 && N % 4 == 0 && K % kSplit == 0 && kThreads % kSplit == 0);
  extern __shared__ __align__(16) float smem[];
  float* a = smem;       // [K][M]
  float* b = a + K * M;  // [K][N]
  float* c = b + K * N;  // [kSplit][M][N]
  for (int i = threadIdx.x; i < K * M; i += kThreads) a[i] = float(i % 7) * 0.25f;
  for (int i = threadIdx.x; i < K * N; i += kThreads) b[i] = float(i % 5) * 0.5f;
  constexpr int kGroup = kThreads / kSplit, kBlocks4 = (M / 4) * (N / 4), kSlice = K / kSplit;
  const int slice = threadIdx.x / kGroup, lane = threadIdx.x % kGroup;
  __syncthreads();
  const unsigned long long t0 = global_ns();
  for (int r = 0; r < rounds; ++r) {
    for (int blk = lane; blk < kBlocks4; blk += kGroup) {
      const int m0 = 4 * (blk / (N / 4)), n0 = 4 * (blk % (N / 4));
      float acc[4][4] = {};
      for (int k = slice * kSlice; k < (slice + 1) * kSlice; ++k) {
        const float4 av = *reinterpret_cast<const float4*>(&a[k * M + m0]);
        const float4 bv = *reinterpret_cast<const float4*>(&b[k * N + n0]);
        const float as[4] = {av.x, av.y, av.z, av.w}, bs[4] = {bv.x, bv.y, bv.z, bv.w};
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j) acc[i][j] += as[i] * bs[j];
      }
      for (int i = 0; i < 4; ++i)
        *reinterpret_cast<float4*>(&c[(slice * M + m0 + i) * N + n0]) =
            make_float4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]);
    }
    if (kSplit > 1) {  // the partials of the K slices, summed in slice order
      __syncthreads();
      for (int i = threadIdx.x; i < M * N; i += kThreads) {
        float s = c[i];
        for (int p = 1; p < kSplit; ++p) s += c[p * M * N + i];
        c[i] = s;
      }
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    if (blockIdx.x == 0) out[0] = global_ns() - t0;
    out[1 + blockIdx.x] = static_cast<unsigned long long>(c[0] + c[M * N - 1]);
  }
}

// The cluster step's forward product for one K chunk, as cluster_program.cuh's forward calls
// it: acc[R, 32] += H[R, kc]·W[32, kc]ᵀ from staging buffers of row stride kc + 4 (an odd number
// of float4s), the K groups' partials through kpart; each thread a TM × TN block of outputs
// (4 × 4: the step's dot_accumulate). `rounds` times, each followed by the __syncthreads the
// step's pipeline puts after a chunk; out as sm_gemm_kernel's, and block 0's acc in result[R, 32].
// H[m, k] = (k mod 5 + m)/8 and W[n, k] = (k mod 3 + n)/4: no two rows alike, so an output in
// the wrong place is a wrong value; multiples of 1/32 whose sums over one round stay below 2¹⁹,
// so every order of adding gives the exact sum, which the host checks after a round.
template <int R, int KC, int TM, int TN>
__global__ void __launch_bounds__(kThreads, 1)
    dot_accumulate_kernel(int rounds, unsigned long long* out, float* result) {
  constexpr int kN = 32, kLd = KC + 4;
  extern __shared__ __align__(16) float smem[];
  float* h = smem;              // [R, kLd]
  float* w = h + R * kLd;       // [kN, kLd]
  float* acc = w + kN * kLd;    // [R, kN]
  float* kpart = acc + R * kN;  // [≤ kThreads · (TM · TN + 1)]: dot_accumulate_blocked's
  for (int i = threadIdx.x; i < R * kLd; i += kThreads)
    h[i] = i % kLd < KC ? float(i % kLd % 5 + i / kLd) * 0.125f : 0.0f;
  for (int i = threadIdx.x; i < kN * kLd; i += kThreads)
    w[i] = i % kLd < KC ? float(i % kLd % 3 + i / kLd) * 0.25f : 0.0f;
  for (int i = threadIdx.x; i < R * kN; i += kThreads) acc[i] = 0.0f;
  __syncthreads();
  const unsigned long long t0 = global_ns();
  for (int r = 0; r < rounds; ++r) {
    cuda::cluster::dot_accumulate_blocked<TM, TN>(acc, kN, h, kLd, w, kLd, R, kN, KC, kpart);
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    if (blockIdx.x == 0) out[0] = global_ns() - t0;
    out[1 + blockIdx.x] = static_cast<unsigned long long>(acc[0] + acc[R * kN - 1]);
  }
  if (blockIdx.x == 0)
    for (int i = threadIdx.x; i < R * kN; i += kThreads) result[i] = acc[i];
}

// ---- host ------------------------------------------------------------------------------------

cudaStream_t stream() { return cuda::Runtime::get().stream(); }

std::vector<unsigned long long> to_host(const Tensor& t, size_t n) {
  std::vector<unsigned long long> v(n);
  CUDA_CHECK(cudaMemcpyAsync(v.data(), t.raw(), n * sizeof(v[0]), cudaMemcpyDeviceToHost, stream()));
  CUDA_CHECK(cudaStreamSynchronize(stream()));
  return v;
}
unsigned long long* as_u64(const Tensor& t) { return static_cast<unsigned long long*>(t.raw()); }

struct Report {
  nlohmann::json rows = nlohmann::json::array();
  void add(const std::string& what, double value, const std::string& unit, const std::string& note = "") {
    std::printf("  %-64s %10.2f %-7s %s\n", what.c_str(), value, unit.c_str(), note.c_str());
    rows.push_back({{"what", what}, {"value", value}, {"unit", unit}, {"note", note}});
  }
};

// "N GB/s" for mb megabytes moved in us microseconds.
std::string gb_per_s(double mb, double us) { return std::to_string(int(mb / us * 1e3)) + " GB/s"; }

// Launches `kernel` as clusters of `size` blocks over `blocks` blocks; 0 (and a note) when
// clusters of that size cannot be resident here, else how many can be at once.
template <class... Args>
int launch_clusters(void (*kernel)(Args...), int blocks, int size, size_t smem, Args... args) {
  if (size > 8) CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(unsigned(blocks));
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = smem;
  config.stream = stream();
  cudaLaunchAttribute attribute;
  attribute.id = cudaLaunchAttributeClusterDimension;
  attribute.val.clusterDim.x = unsigned(size);
  attribute.val.clusterDim.y = attribute.val.clusterDim.z = 1;
  config.attrs = &attribute;
  config.numAttrs = 1;
  int resident = 0;
  if (cudaOccupancyMaxActiveClusters(&resident, kernel, &config) != cudaSuccess || resident == 0) {
    (void)cudaGetLastError();  // clear the refusal: nothing was launched
    std::printf("  (clusters of %d blocks cannot be resident here: skipped)\n", size);
    return 0;
  }
  CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, args...));
  CUDA_CHECK_LAUNCH();
  return resident;
}

void measure_cluster_barriers(Report& r, int sms) {
  Tensor out = Tensor::zeros({1}, DType::i64, Device::cuda);
  constexpr int kRounds = 2000;
  for (int size : {2, 4, 8, 16}) {
    const int blocks = sms / size * size;
    std::vector<double> ns;
    int resident = 0;
    for (int run = 0; run < 5; ++run) {
      resident = launch_clusters(cluster_barrier_kernel, blocks, size, 0, kRounds, as_u64(out));
      if (resident == 0) return;
      ns.push_back(double(to_host(out, 1)[0]) / kRounds);
    }
    // The design needs all of its clusters resident at once (its grid barriers).
    r.add("cluster barrier, clusters of " + std::to_string(size) + " (" + std::to_string(blocks) + " blocks)",
          median(ns), "ns", std::to_string(resident) + " such clusters fit at once");
  }
}

void measure_dsmem(Report& r) {
  Tensor out = Tensor::zeros({4}, DType::i64, Device::cuda);
  constexpr int kHops = 20000;
  std::vector<double> remote, local;
  for (int run = 0; run < 5; ++run) {
    if (launch_clusters(dsmem_chase_kernel, 2, 2, 0, kHops, as_u64(out)) == 0) return;
    const std::vector<unsigned long long> v = to_host(out, 4);
    remote.push_back(double(v[0]) / kHops);
    local.push_back(double(v[1]) / kHops);
  }
  r.add("dependent load from another block's shared memory (DSMEM)", median(remote), "ns");
  r.add("dependent load from the block's own shared memory", median(local), "ns");
}

void measure_l2_passes(Report& r, int sms) {
  const int blocks = sms / 8 * 8;
  const int64_t arena4 = (kArena + 3) / 4;
  Tensor partials = Tensor::zeros({kPartials * arena4 * 4}, DType::f32, Device::cuda);
  Tensor sum = Tensor::zeros({arena4 * 4}, DType::f32, Device::cuda);
  Tensor sink = Tensor::zeros({blocks}, DType::f32, Device::cuda);
  float4* p = static_cast<float4*>(partials.raw());
  float4* s = static_cast<float4*>(sum.raw());
  const double empty = bench::time_us([&] { empty_kernel<<<blocks, kThreads, 0, stream()>>>(); });
  const double write = bench::time_us(
      [&] { write_partials_kernel<<<blocks, kThreads, 0, stream()>>>(p, kPartials * arena4); });
  const double reduce =
      bench::time_us([&] { reduce_partials_kernel<<<blocks, kThreads, 0, stream()>>>(p, s, arena4); });
  const double reload = bench::time_us(
      [&] { reload_kernel<<<blocks, kThreads, 0, stream()>>>(s, arena4, sink.data<float>()); });
  CUDA_CHECK_LAUNCH();
  const double mb = double(kArena) * 4 / 1e6;
  std::printf(
      "  (the teacher's arena: %.2f MB; %d partial copies; %d blocks, one per SM; an empty launch %.2f µs)\n",
      mb, kPartials, blocks, empty);
  r.add("write the partials (" + std::to_string(kPartials) + " × arena)", write - empty, "µs",
        gb_per_s(kPartials * mb, write - empty));
  r.add("sum the partials, each block 1/" + std::to_string(blocks) + " of the arena", reduce - empty, "µs",
        gb_per_s((kPartials + 1) * mb, reduce - empty));
  r.add("reload: every block an eighth of the arena", reload - empty, "µs",
        gb_per_s(blocks / 8.0 * mb, reload - empty));
  r.add("the reduce-scatter per step (the three passes)", write + reduce + reload - 3 * empty, "µs");
}

// Runs `kernel` (a one-block-per-SM arithmetic kernel: (rounds, out), out[0] block 0's ns) on
// every SM and reports µs a round and GFLOP/s per SM for `flop` a round: medians of 5 launches.
template <class Kernel>
void measure_one_sm(Report& r, int sms, Kernel kernel, size_t smem, double flop, const std::string& what) {
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  Tensor out = Tensor::zeros({1 + sms}, DType::i64, Device::cuda);
  constexpr int kRounds = 200;
  std::vector<double> ns;
  for (int run = 0; run < 5; ++run) {
    kernel<<<sms, kThreads, smem, stream()>>>(kRounds, as_u64(out));
    CUDA_CHECK_LAUNCH();
    ns.push_back(double(to_host(out, 1)[0]) / kRounds);
  }
  const double us = median(ns) / 1e3;
  r.add(what, us, "µs", std::to_string(int(flop / us * 1e-3)) + " GFLOP/s per SM");
}

template <int M, int N, int K, int kSplit>
void measure_sm_gemm(Report& r, int sms, const std::string& what) {
  const size_t smem = sizeof(float) * (size_t(K) * M + size_t(K) * N + size_t(kSplit) * M * N);
  measure_one_sm(r, sms, sm_gemm_kernel<M, N, K, kSplit>, smem, 2.0 * M * N * K, what);
}

// dot_accumulate_kernel with TM × TN blocks, timed as measure_one_sm times its kernels, after
// block 0's sums of one round are compared with the exact ones: a block size that computed something else
// would be timed for nothing, so its row says WRONG instead of a rate (and it returns false).
template <int R, int KC, int TM, int TN>
bool measure_dot_accumulate(Report& r, int sms, const std::string& what) {
  constexpr int kN = 32, kLd = KC + 4;
  const size_t smem = sizeof(float) * (size_t(R + kN) * kLd + size_t(R) * kN +
                                       size_t(kThreads) * (TM * TN + (TM > 4 ? 1 : 0)));
  const auto kernel = dot_accumulate_kernel<R, KC, TM, TN>;
  const std::string name = what + ", " + std::to_string(TM) + " × " + std::to_string(TN) + " a thread";
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  Tensor out = Tensor::zeros({1 + sms}, DType::i64, Device::cuda);
  Tensor result = Tensor::zeros({R * kN}, DType::f32, Device::cuda);
  kernel<<<sms, kThreads, smem, stream()>>>(1, as_u64(out), static_cast<float*>(result.raw()));  // checked
  CUDA_CHECK_LAUNCH();
  std::vector<float> got(size_t(R) * kN);
  CUDA_CHECK(cudaMemcpyAsync(got.data(), result.raw(), got.size() * sizeof(float), cudaMemcpyDeviceToHost,
                             stream()));
  CUDA_CHECK(cudaStreamSynchronize(stream()));
  int64_t wrong = 0;
  for (int m = 0; m < R; ++m)
    for (int n = 0; n < kN; ++n) {
      double sum = 0.0;
      for (int k = 0; k < KC; ++k) sum += (k % 5 + m) * 0.125 * ((k % 3 + n) * 0.25);
      wrong += double(got[size_t(m) * kN + n]) != sum;
    }
  if (wrong > 0) {
    r.add(name, double(wrong), "wrong", "WRONG: outputs that differ from the exact sums");
    return false;
  }
  constexpr int kRounds = 200;
  std::vector<double> ns;
  for (int run = 0; run < 5; ++run) {
    kernel<<<sms, kThreads, smem, stream()>>>(kRounds, as_u64(out), static_cast<float*>(result.raw()));
    CUDA_CHECK_LAUNCH();
    ns.push_back(double(to_host(out, 1)[0]) / kRounds);
  }
  const double us = median(ns) / 1e3;
  r.add(name, us, "µs", std::to_string(int(2.0 * R * kN * KC / us * 1e-3)) + " GFLOP/s per SM");
  return true;
}

}  // namespace
}  // namespace subliminal

using namespace subliminal;

int main(int argc, char** argv) {
  bench::BenchArgs args;
  if (const int code = bench::parse_bench_args("bench_cluster", argc, argv, args)) return code;
  try {
    const cudaDeviceProp& props = subliminal::cuda::Runtime::get().properties();
    const std::string gpu = device_description(Device::cuda);
    const int sms = props.multiProcessorCount;
    std::printf("The cluster design's building blocks on %s (%d SMs)\n", gpu.c_str(), sms);
    nlohmann::json json = {{"gpu", gpu}, {"sms", sms}};
    Report r;
    // Each group on its own: a refusal in one (a cluster shape this driver will not launch)
    // should not cost the others their numbers.
    int failures = 0;
    auto attempt = [&](const char* group, auto&& measure) {
      try {
        measure();
      } catch (const std::exception& e) {
        std::printf("  (%s: %s)\n", group, e.what());
        ++failures;
      }
    };
    if (props.major >= 9) {
      attempt("cluster barriers", [&] { measure_cluster_barriers(r, sms); });
      attempt("distributed shared memory", [&] { measure_dsmem(r); });
    } else {
      std::printf("  (clusters need compute capability 9.0; this GPU has %d.%d: skipped)\n", props.major,
                  props.minor);
    }
    attempt("L2 passes", [&] { measure_l2_passes(r, sms); });
    attempt("SM arithmetic", [&] {
      measure_sm_gemm<16, 32, 784, 8>(r, sms, "layer 0 forward on one SM: 16 rows × 32 outputs, K = 784");
      measure_sm_gemm<32, 784, 16, 1>(r, sms, "layer 0 weight gradient on one SM: 32 × 784, K = 16");
      // The step's 4 × 4 blocks, then the larger ones docs/PERFORMANCE.md weighs against them.
      const std::string teacher = "dot_accumulate, a teacher chunk: 16 × 32, K = 392";
      const std::string distill = "dot_accumulate, a distillation chunk: 32 × 32, K = 264";
      for (const bool right : {measure_dot_accumulate<16, 392, 4, 4>(r, sms, teacher),
                               measure_dot_accumulate<16, 392, 8, 4>(r, sms, teacher),
                               measure_dot_accumulate<16, 392, 8, 8>(r, sms, teacher),
                               measure_dot_accumulate<32, 264, 4, 4>(r, sms, distill),
                               measure_dot_accumulate<32, 264, 8, 4>(r, sms, distill),
                               measure_dot_accumulate<32, 264, 8, 8>(r, sms, distill)})
        failures += !right;  // a wrong sum fails the run (exit 1), after every row is printed
    });
    json["rows"] = r.rows;
    if (args.json.is_open()) args.json << json.dump(2) << "\n";
    return failures == 0 ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_cluster: %s\n", e.what());
    return 1;
  }
}
