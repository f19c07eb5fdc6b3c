// bench/latency.cu — what the fused training step's building blocks cost on this GPU.
//
//   build/bench/bench_latency [--json FILE]
//
// Why. The fused step (ops/cuda/fused_step.cu) is a chain of dependent events: a phase's K
// chunks, its split-K hand-off (write a partial, count in with an acquire-release atomic, the
// last item sums the partials), its epilogue, then a grid-wide barrier. On an H100 every GEMM
// phase took at least 12 µs, however little arithmetic it held (docs/PERFORMANCE.md). This
// times each link alone, so that the next design is chosen from numbers rather than guesses:
//
//   clock       the SM clock, and the global timer's step (the phase clock's resolution)
//   L2 load     one thread, a dependent chain of __ldcg loads that hit in L2
//   atomic      one thread, a dependent chain of atomicAdd round trips
//   fence       one thread: a store then __threadfence (fence.sc), a store then a release
//               fence (fence.acq_rel), a fence alone
//   publish     one block: what a split-K item does to hand its partial over — 256 threads
//               store 16 KB, __syncthreads, one acquire-release atomic on the tile counter
//               (tile::count_in), __syncthreads; and the classic form it replaced, with a
//               __threadfence before the barrier and a plain atomicAdd
//   hand-off    thread 0 of two blocks (on two SMs, as the report checks) passes a number back
//               and forth (release store, acquire loads): one way
//   barrier     cooperative groups' grid.sync() (the fused step's), over the fused step's grid
//               (2 blocks per SM) and 1 block per SM, each thread storing a value before each
//               barrier as a phase would
//   K chunk     one 16-wide K chunk of ops/cuda/tile_gemm.cuh's 64×64 tile: the slope of a
//               tile's time over K, 1 block alone, 1 per SM and 2 per SM (the fused step's)
//   split-K     the fix-up of 8 slices: items of 2 chunks each with and without it, the tile
//               finished by its last item alone or in bands by all 8 at once
//
// One-thread chains are timed in SM cycles inside the kernel (clock64) and converted with the
// measured clock; grid-wide ones with the global timer; tile ones with CUDA events around
// launches (the launch cost cancels in the differences).
#include <cooperative_groups.h>
#include <cuda_runtime.h>
#include <cuda/atomic>

#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "bench/bench_main.h"
#include "bench/global_timer.cuh"
#include "bench/timing.h"
#include "engine/cuda/check.h"
#include "engine/cuda/runtime.h"
#include "engine/device.h"
#include "engine/random.h"
#include "engine/tensor.h"
#include "ops/cuda/tile_gemm.cuh"

namespace subliminal {
namespace {

namespace cg = cooperative_groups;
namespace tile = cuda::tile;

using DeviceAtomic = ::cuda::atomic_ref<unsigned, ::cuda::thread_scope_device>;

using bench::global_ns;
using bench::median;
__device__ inline unsigned sm_id() {
  unsigned id;
  asm volatile("mov.u32 %0, %%smid;" : "=r"(id));
  return id;
}

// ---- kernels ---------------------------------------------------------------------------------

// One thread. out[0], out[1]: SM cycles and global-timer ns over ≈ 200 µs; out[2 …]: 64
// consecutive nonzero steps of the global timer.
__global__ void clock_kernel(unsigned long long* out) {
  const unsigned long long g0 = global_ns();
  const long long c0 = clock64();
  unsigned long long g1;
  do g1 = global_ns();
  while (g1 - g0 < 200000);
  out[0] = static_cast<unsigned long long>(clock64() - c0), out[1] = g1 - g0;
  for (int i = 0; i < 64; ++i) {
    const unsigned long long a = global_ns();
    unsigned long long b;
    do b = global_ns();
    while (b == a);
    out[2 + i] = b - a;
  }
}

// One thread follows next[] (a random cycle through `hops` 128-byte lines) twice: the first lap
// brings the lines into L2, the second is timed. out[0]: cycles; out[1]: where it ended (kept,
// so that the chain is not optimised away).
__global__ void chase_kernel(const unsigned* next, int hops, long long* out) {
  unsigned j = 0;
  for (int i = 0; i < hops; ++i) j = __ldcg(&next[j]);
  const long long c0 = clock64();
  for (int i = 0; i < hops; ++i) j = __ldcg(&next[j]);
  out[0] = clock64() - c0, out[1] = j;
}

// One thread: `rounds` atomicAdds, each one's address taken from the last one's result (cell[0]
// stays 0, but the compiler cannot know that), so each waits for the round trip before it.
__global__ void atomic_chain_kernel(int* cell, int rounds, long long* out) {
  int at = 0;
  for (int i = 0; i < 8; ++i) at = atomicAdd(&cell[at], 0);
  const long long c0 = clock64();
  for (int i = 0; i < rounds; ++i) at = atomicAdd(&cell[at], 0);
  out[0] = clock64() - c0, out[1] = at;
}

enum class Fence { store_then_sc, store_then_release, alone };

// One thread, `rounds` times: [a store,] then a fence.
template <Fence kFence>
__global__ void fence_kernel(float* sink, int rounds, long long* out) {
  const long long c0 = clock64();
  for (int i = 0; i < rounds; ++i) {
    if (kFence != Fence::alone) sink[i & 1023] = float(i);
    if (kFence == Fence::store_then_release)
      ::cuda::atomic_thread_fence(::cuda::memory_order_release, ::cuda::thread_scope_device);
    else
      __threadfence();
  }
  out[0] = clock64() - c0;
}

// One block of 256 threads, `rounds` times, the split-K item's hand-off: each thread stores
// its 4×4 outputs (the block's 64×64 partial, 16 KB, into one of 8 slots), __syncthreads,
// thread 0 counts the block in (and waits for the old value), __syncthreads — as
// ops/cuda/tile_gemm.cuh does (tile::count_in), or (kClassic) with a __threadfence by every
// thread before the first barrier and a plain atomicAdd, as it did before.
template <bool kClassic>
__global__ void publish_kernel(float4* partials, int* counter, int rounds, long long* out) {
  __shared__ int seen;
  const long long c0 = clock64();
  for (int r = 0; r < rounds; ++r) {
    float4* mine = partials + (r & 7) * 1024;
    for (int i = 0; i < 4; ++i) mine[i * 256 + threadIdx.x] = make_float4(float(r), float(i), 0.0f, 0.0f);
    if (kClassic) __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) seen = kClassic ? atomicAdd(counter, 1) : tile::count_in(counter);
    __syncthreads();
  }
  if (threadIdx.x == 0) out[0] = clock64() - c0, out[1] = seen;
}

// Thread 0 of blocks 0 and 1: block 0 stores r (release) and waits for block 1 to answer r;
// block 1 waits for r (acquire) and answers. out[0]: ns for `rounds` round trips (0 if a side
// gave up: the two blocks were not running at once); out[2], out[3]: the SMs they ran on.
__global__ void ping_pong_kernel(unsigned* flags, int rounds, unsigned long long* out) {
  if (threadIdx.x != 0 || blockIdx.x > 1) return;
  DeviceAtomic ping(flags[0]), pong(flags[32]);  // two different 128-byte lines
  out[2 + blockIdx.x] = sm_id();
  constexpr long long kGiveUp = 1ll << 20;  // spins (≈ 1 s): far beyond any latency, short of a hang
  const unsigned long long t0 = global_ns();
  for (unsigned r = 1; r <= unsigned(rounds); ++r) {
    long long spins = 0;
    if (blockIdx.x == 0) {
      ping.store(r, ::cuda::memory_order_release);
      while (pong.load(::cuda::memory_order_acquire) != r)
        if (++spins > kGiveUp) return;
    } else {
      while (ping.load(::cuda::memory_order_acquire) != r)
        if (++spins > kGiveUp) return;
      pong.store(r, ::cuda::memory_order_release);
    }
  }
  if (blockIdx.x == 0) out[0] = global_ns() - t0;
}

// `rounds` barriers over the whole (cooperative) grid, each after every thread stored a value
// (a phase's pending writes). out[0]: block 0's ns from the first barrier to the last.
// (CUDA 13's grid.sync(): __syncthreads, thread 0 of each block adds to a counter with release
// semantics and spins on acquire loads until the whole grid has arrived, __syncthreads.)
__global__ void __launch_bounds__(tile::kBlockThreads, 2)
    barrier_kernel(float* sink, int rounds, unsigned long long* out) {
  cg::grid_group grid = cg::this_grid();
  grid.sync();
  const unsigned long long t0 = global_ns();
  for (int r = 1; r <= rounds; ++r) {
    sink[blockIdx.x * blockDim.x + threadIdx.x] = float(r);
    grid.sync();
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) out[0] = global_ns() - t0;
}

// The tiled GEMM's items, as the fused step runs them (same tile code, same register bound).
__global__ void __launch_bounds__(tile::kBlockThreads, 2)
    tile_items_kernel(const __grid_constant__ tile::Gemm g) {
  __shared__ __align__(16) tile::Smem sm;
  for (int64_t item = blockIdx.x; item < g.items; item += gridDim.x) tile::run_item(g, item, sm);
}

// ---- host ------------------------------------------------------------------------------------

cudaStream_t stream() { return cuda::Runtime::get().stream(); }

// A device buffer seen as T (the kernels' counters and flags are unsigned, the results 8-byte).
template <class T>
T* as(const Tensor& t) {
  return static_cast<T*>(t.raw());
}

template <class T>
std::vector<T> to_host(const Tensor& t, size_t n) {
  std::vector<T> v(n);
  CUDA_CHECK(cudaMemcpyAsync(v.data(), t.raw(), n * sizeof(T), cudaMemcpyDeviceToHost, stream()));
  CUDA_CHECK(cudaStreamSynchronize(stream()));
  return v;
}

// An 8-byte result buffer of n entries, zeroed.
Tensor results(int64_t n) { return Tensor::zeros({n}, DType::i64, Device::cuda); }

struct Report {
  double ghz = 0;  // SM cycles per ns
  nlohmann::json rows = nlohmann::json::array();
  void add(const std::string& what, double ns, const std::string& note = "") {
    std::printf("  %-58s %9.1f ns %8.0f cycles  %s\n", what.c_str(), ns, ns * ghz, note.c_str());
    rows.push_back({{"what", what}, {"ns", ns}, {"cycles", ns * ghz}, {"note", note}});
  }
};

// Median of `runs` one-thread launches of `launch` (which fills out[0] with cycles), in ns per round.
template <class Launch>
double one_thread_ns(const Report& r, Launch&& launch, int rounds, int runs = 5) {
  Tensor out = results(2);
  std::vector<double> ns;
  for (int i = 0; i < runs; ++i) {
    launch(as<long long>(out), rounds);
    CUDA_CHECK_LAUNCH();
    ns.push_back(double(to_host<long long>(out, 1)[0]) / rounds / r.ghz);
  }
  return median(ns);
}

void measure_clock(Report& r, nlohmann::json& json) {
  Tensor out = results(66);
  clock_kernel<<<1, 1, 0, stream()>>>(as<unsigned long long>(out));
  CUDA_CHECK_LAUNCH();
  const std::vector<long long> v = to_host<long long>(out, 66);
  r.ghz = double(v[0]) / double(v[1]);
  std::vector<double> steps(v.begin() + 2, v.end());
  const double step = median(steps);
  std::printf(
      "  SM clock %.3f GHz (clock64 over %.0f µs of global time); global timer step %.0f ns (median of 64)\n",
      r.ghz, double(v[1]) / 1e3, step);
  json["sm_clock_ghz"] = r.ghz;
  json["global_timer_step_ns"] = step;
}

void measure_one_thread(Report& r) {
  // A random cycle through 4096 lines of 128 bytes (512 KB: in L2, and .cg skips L1).
  constexpr int kLines = 4096, kLineWords = 32;
  std::vector<unsigned> order(kLines);
  std::iota(order.begin(), order.end(), 0u);
  std::shuffle(order.begin() + 1, order.end(), std::mt19937(7));
  std::vector<int32_t> next(size_t(kLines) * kLineWords, 0);
  for (int i = 0; i < kLines; ++i)
    next[size_t(order[size_t(i)]) * kLineWords] = int32_t(order[size_t((i + 1) % kLines)] * kLineWords);
  Tensor chain = Tensor::from_vector(next, {int64_t(next.size())}, Device::cuda);
  r.add("L2 hit, dependent __ldcg load (one thread)", one_thread_ns(
                                                          r,
                                                          [&](long long* out, int n) {
                                                            chase_kernel<<<1, 1, 0, stream()>>>(
                                                                as<const unsigned>(chain), n, out);
                                                          },
                                                          kLines));

  Tensor cell = Tensor::zeros({32}, DType::i32, Device::cuda);
  r.add("atomicAdd round trip, dependent (one thread)", one_thread_ns(
                                                            r,
                                                            [&](long long* out, int n) {
                                                              atomic_chain_kernel<<<1, 1, 0, stream()>>>(
                                                                  cell.data<int32_t>(), n, out);
                                                            },
                                                            1000));

  Tensor sink = Tensor::zeros({1024}, DType::f32, Device::cuda);
  float* s = sink.data<float>();
  r.add("store + __threadfence (fence.sc.gpu), one thread", one_thread_ns(
                                                                r,
                                                                [&](long long* out, int n) {
                                                                  fence_kernel<Fence::store_then_sc>
                                                                      <<<1, 1, 0, stream()>>>(s, n, out);
                                                                },
                                                                1000));
  r.add("store + release fence (fence.acq_rel.gpu), one thread", one_thread_ns(
                                                                     r,
                                                                     [&](long long* out, int n) {
                                                                       fence_kernel<Fence::store_then_release>
                                                                           <<<1, 1, 0, stream()>>>(s, n, out);
                                                                     },
                                                                     1000));
  r.add("__threadfence with nothing pending, one thread",
        one_thread_ns(
            r, [&](long long* out, int n) { fence_kernel<Fence::alone><<<1, 1, 0, stream()>>>(s, n, out); },
            1000));

  Tensor partials = Tensor::zeros({8 * 64 * 64}, DType::f32, Device::cuda);
  r.add("split-K publish: block stores 16 KB, sync, acq_rel atomic (the tile's)",
        one_thread_ns(
            r,
            [&](long long* out, int n) {
              publish_kernel<false><<<1, tile::kBlockThreads, 0, stream()>>>(as<float4>(partials),
                                                                             cell.data<int32_t>() + 16, n, out);
            },
            200));
  r.add("split-K publish, classic: block stores 16 KB, __threadfence, sync, atomicAdd",
        one_thread_ns(
            r,
            [&](long long* out, int n) {
              publish_kernel<true><<<1, tile::kBlockThreads, 0, stream()>>>(as<float4>(partials),
                                                                            cell.data<int32_t>() + 16, n, out);
            },
            200));
}

void measure_hand_off(Report& r) {
  Tensor flags = Tensor::zeros({64}, DType::i32, Device::cuda);
  Tensor out = results(4);
  constexpr int kRounds = 2000;
  std::vector<double> ns;
  std::vector<long long> v;
  for (int run = 0; run < 5; ++run) {
    CUDA_CHECK(cudaMemsetAsync(flags.data<int32_t>(), 0, 64 * sizeof(int32_t), stream()));
    CUDA_CHECK(cudaMemsetAsync(out.raw(), 0, 4 * sizeof(long long), stream()));
    ping_pong_kernel<<<2, 32, 0, stream()>>>(as<unsigned>(flags), kRounds, as<unsigned long long>(out));
    CUDA_CHECK_LAUNCH();
    v = to_host<long long>(out, 4);
    if (v[0] == 0) {
      std::printf("  hand-off between two blocks: they did not run at once (skipped)\n");
      return;
    }
    ns.push_back(double(v[0]) / kRounds / 2);
  }
  r.add("hand-off between two blocks, one way (release store, acquire spin)", median(ns),
        v[2] == v[3] ? "both on SM " + std::to_string(v[2]) + ": not across SMs"
                     : "SMs " + std::to_string(v[2]) + " and " + std::to_string(v[3]));
}

void measure_barriers(Report& r, int sms) {
  Tensor sink = Tensor::zeros({int64_t(2) * sms * tile::kBlockThreads}, DType::f32, Device::cuda);
  Tensor out = results(1);
  constexpr int kRounds = 1000;
  for (int per_sm : {2, 1}) {
    float* s = sink.data<float>();
    int rounds = kRounds;
    unsigned long long* o = as<unsigned long long>(out);
    void* args[] = {&s, &rounds, &o};
    std::vector<double> ns;
    for (int run = 0; run < 5; ++run) {
      // The fused step's shared memory, so that no more blocks fit per SM than there.
      CUDA_CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<void*>(barrier_kernel),
                                             dim3(unsigned(per_sm * sms)), dim3(tile::kBlockThreads), args,
                                             sizeof(tile::Smem), stream()));
      ns.push_back(double(to_host<long long>(out, 1)[0]) / kRounds);
    }
    r.add("grid.sync(), " + std::to_string(per_sm * sms) + " blocks (" + std::to_string(per_sm) + " per SM)",
          median(ns), "each thread stored a value before it");
  }
}

// Launch time of tile_items_kernel for `tiles` 64×64 tiles (one model each) with K = 16·chunks
// in `splits` slices, on `grid` blocks. Every tile reads the same x and w (model stride 0), so
// the operands stay in L2 as the fused step's do (a copy per tile would be 73 MB at the largest
// K, past the L2, and the slope would time DRAM). bands: split tiles finished in bands by all
// of their items at once (tile::Gemm::parallel_fixup), launched cooperatively so that every
// item runs at once, as in the fused step.
double tile_launch_us(int64_t tiles, int64_t chunks, int splits, int grid, bool bands = false) {
  const int64_t K = chunks * tile::kTileK;
  Tensor x = Tensor::empty({tile::kTileM, K}, DType::f32, Device::cuda);
  Tensor w = Tensor::empty({tile::kTileN, K}, DType::f32, Device::cuda);
  Tensor y = Tensor::empty({tiles, tile::kTileM, tile::kTileN}, DType::f32, Device::cuda);
  fill_uniform(x, {11, 1}, -1.0, 1.0);
  fill_uniform(w, {11, 2}, -1.0, 1.0);
  tile::Gemm g = tile::forward_product(x.data<float>(), w.data<float>(), y.data<float>(), tiles, tile::kTileM,
                                       K, tile::kTileN);
  g.a.model_stride = g.b.model_stride = 0;
  tile::plan(g, tiles * splits);
  if (g.splits != splits)
    throw ShapeError("bench_latency: planned " + std::to_string(g.splits) + " splits, not " +
                     std::to_string(splits));
  if (tile::scratch_floats(g) > 0)
    tile::assign_scratch(g, tile::grow_scratch_floats(tile::scratch_floats(g)),
                         tile::grow_scratch_counters(tile::scratch_counters(g)));
  const unsigned blocks = unsigned(std::min<int64_t>(grid, g.items));
  g.parallel_fixup = bands && splits > 1;
  if (g.parallel_fixup && g.items > blocks)
    throw ShapeError("bench_latency: " + std::to_string(g.items) + " items in bands need as many blocks");
  void* args[] = {&g};
  return bench::time_us(
      [&] {
        if (g.parallel_fixup) {
          CUDA_CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<void*>(tile_items_kernel), dim3(blocks),
                                                 dim3(tile::kBlockThreads), args, 0, stream()));
        } else {
          tile_items_kernel<<<blocks, tile::kBlockThreads, 0, stream()>>>(g);
          CUDA_CHECK_LAUNCH();
        }
      },
      20);
}

void measure_tiles(Report& r, int sms) {
  int per_sm = 0;
  CUDA_CHECK(
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, tile_items_kernel, tile::kBlockThreads, 0));
  std::printf(
      "  (tile kernel: %d blocks fit per SM; an FMA-bound chunk would take %.0f ns per block on an SM)\n",
      per_sm, 64.0 * 64 * 16 / 128 / r.ghz);
  constexpr int kFew = 2, kMany = 34;
  for (int blocks : {1, sms, std::min(2, per_sm) * sms}) {
    const double slope =
        (tile_launch_us(blocks, kMany, 1, blocks) - tile_launch_us(blocks, kFew, 1, blocks)) / (kMany - kFew);
    r.add("one 16-wide K chunk of a 64x64 tile, " + std::to_string(blocks) + " block(s) at once", 1e3 * slope,
          "slope of K = 32 … 544");
  }
  const int grid = std::min(2, per_sm) * sms, tiles = grid / 8;
  const double without = tile_launch_us(tiles * 8, 2, 1, grid);
  const double last = tile_launch_us(tiles, 2 * 8, 8, grid),
               bands = tile_launch_us(tiles, 2 * 8, 8, grid, true);
  r.add("split-K fix-up, 8 slices of 2 chunks, " + std::to_string(tiles * 8) + " items, by the last item",
        1e3 * (last - without), "items of 2 chunks with it vs without");
  r.add("split-K fix-up, 8 slices of 2 chunks, " + std::to_string(tiles * 8) + " items, in bands by all 8",
        1e3 * (bands - without), "items of 2 chunks with it vs without");
}

}  // namespace
}  // namespace subliminal

using namespace subliminal;

int main(int argc, char** argv) {
  bench::BenchArgs args;
  if (const int code = bench::parse_bench_args("bench_latency", argc, argv, args)) return code;
  try {
    const std::string gpu = device_description(Device::cuda);
    const int sms = subliminal::cuda::Runtime::get().properties().multiProcessorCount;
    std::printf("The fused step's building blocks on %s (%d SMs)\n", gpu.c_str(), sms);
    nlohmann::json json = {{"gpu", gpu}, {"sms", sms}};
    Report r;
    measure_clock(r, json);
    measure_one_thread(r);
    measure_hand_off(r);
    measure_barriers(r, sms);
    measure_tiles(r, sms);
    json["rows"] = r.rows;
    if (args.json.is_open()) args.json << json.dump(2) << "\n";
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_latency: %s\n", e.what());
    return 1;
  }
}
