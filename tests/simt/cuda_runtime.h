// tests/simt/cuda_runtime.h — just enough of CUDA for host threads to run our device code.
//
// Why. This machine and CI have no GPU, so the CUDA kernels' tests (tests/test_cuda_*.cpp) skip
// here. Our own GEMM tile (ops/cuda/tile_gemm.cuh) is header-only device code with no inline
// PTX; compiled by the host compiler against THIS header — which tests/CMakeLists.txt puts ahead
// of the toolkit's — it runs as real threads: a "block" is blockDim.x std::threads,
// __syncthreads() is a barrier (simt::Barrier), cuda::atomic_ref is std::atomic_ref (tests/simt/cuda/atomic)
// with the memory orders the device code asks for, and several blocks run at once. So the
// tile's indexing, split-K hand-off and epilogues are checked on every CI run, under
// AddressSanitizer and ThreadSanitizer too, and a change to them is tested before it ever
// meets a GPU.
//
// The fused training step (ops/cuda/fused_program.cuh) runs here too: cooperative groups'
// grid.sync() is simt::grid_sync(), a barrier over every thread of the launch, and warp
// shuffles swap values through per-warp slots, a barrier between writing and reading.
//
// What it cannot check: speed, the GPU memory model's weaker corners (C++'s acquire and
// release, and the barriers, are what our host threads are ordered by: the same orders the
// device code asks for, which ThreadSanitizer follows, but not PTX's scopes or its L1),
// divergent warps, and the real compiler's code generation. The GPU suite still does that.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <thread>
#include <type_traits>
#include <vector>

#include "tests/simt/cuda_pipeline_primitives.h"  // each thread's cp.async queue (checked at its end)

// ---- the language's qualifiers: nothing on the host ------------------------------------------
#define __device__
#define __host__
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

// ---- vector types --------------------------------------------------------------------------
struct alignas(16) float4 {
  float x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};

// ---- where a thread is: set by simt::launch for each of its threads -----------------------
inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace simt {

// The barrier behind __syncthreads(), the warps' and the grid's (and the clusters' of
// tests/test_cluster_emulated.cpp). Waiting threads sleep on a futex (std::atomic::wait) until
// the last to arrive moves the phase on: with far more threads than cores, a barrier costs a
// sleep and a wake per thread, and std::barrier, which spins before it sleeps, made
// scripts/sanitize.sh's ThreadSanitizer run 1.6× as long (170 s against 109 on 2 cores). Arriving is an
// acquire-release increment and waiting an acquire of the phase that the last arrival releases: everything
// before the barrier, in any thread, happens before everything after it, in any thread, and no more —
// ThreadSanitizer sees exactly a barrier's ordering.
class Barrier {
 public:
  explicit Barrier(std::ptrdiff_t count) : count_(count) {}
  // Arrive without waiting, for work to do between arriving and waiting (a cluster barrier's
  // split arrive and wait); returns the phase to wait for the end of.
  unsigned arrive() {
    // (The phase cannot move on between this load and the increment: it needs this arrival.)
    const unsigned phase = phase_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) + 1 == count_) {
      arrived_.store(0, std::memory_order_relaxed);  // before the phase moves: no one arrives again before it
      phase_.fetch_add(1, std::memory_order_acq_rel);
      phase_.notify_all();
    }
    return phase;
  }
  void wait(unsigned phase) const {
    while (phase_.load(std::memory_order_acquire) == phase) phase_.wait(phase, std::memory_order_acquire);
  }
  void arrive_and_wait() { wait(arrive()); }

 private:
  const std::ptrdiff_t count_;
  std::atomic<std::ptrdiff_t> arrived_{0};
  std::atomic<unsigned> phase_{0};
};

// A warp's lanes swap values through these slots (see __shfl_xor_sync below): two sets, used by
// turns, so that one barrier per shuffle is enough.
struct Warp {
  explicit Warp(std::ptrdiff_t lanes) : barrier(lanes) {}
  simt::Barrier barrier;
  alignas(8) unsigned char slot[2][32][8];
};

// Which of its warp's two slot sets this thread's next shuffle writes (each launch's threads are
// new, so it starts at 0 in every warp; every lane shuffles as often as the others).
inline thread_local unsigned shuffle_turn = 0;

// What each host thread knows of its place: its block's and warp's barriers, and the grid's.
inline thread_local simt::Barrier* block_barrier = nullptr;
inline thread_local Warp* warp = nullptr;
inline thread_local simt::Barrier* grid_barrier = nullptr;

// `blocks` blocks' shared memory of type T as a GPU hands it over: garbage. Every byte is 0xFF,
// so every float in it is a NaN, and a padding the device code forgets to zero, or a value it
// reads before writing, poisons the sums it enters.
template <class T>
std::vector<T> garbage_shared_memory(unsigned blocks) {
  static_assert(std::is_trivially_copyable_v<T>, "shared memory holds plain data");
  std::vector<T> smem(blocks);
  std::memset(static_cast<void*>(smem.data()), 0xFF, smem.size() * sizeof(T));
  return smem;
}

// Runs body() for blocks first_block … first_block + count − 1 of a grid of grid_blocks, each
// on `threads` host threads, all at once, and returns when every thread has finished. body reads
// threadIdx/blockIdx like a kernel; what it keeps per block (its "shared memory") it indexes by
// blockIdx.x — aligned as the device code expects (tile::Smem is alignas(16), so a std::vector
// of them is). threads must be a multiple of 32. grid_sync() (below) is a barrier over the
// threads of this call, so only a call that runs the whole grid may use it: a cooperative
// launch, whose blocks are all resident at once. Running a grid's blocks in several calls is
// how a test stands for the GPU running them in waves, in an order it does not promise.
inline void launch_blocks(unsigned first_block, unsigned count, unsigned grid_blocks, unsigned threads,
                          const std::function<void()>& body) {
  std::atomic<bool> unwaited_copies{false};
  std::vector<std::unique_ptr<simt::Barrier>> barriers;
  std::vector<std::unique_ptr<Warp>> warps;
  for (unsigned b = 0; b < count; ++b) {
    barriers.push_back(std::make_unique<simt::Barrier>(std::ptrdiff_t(threads)));
    for (unsigned w = 0; w < threads / 32; ++w) warps.push_back(std::make_unique<Warp>(32));
  }
  const bool whole_grid = first_block == 0 && count == grid_blocks;
  simt::Barrier grid(std::ptrdiff_t(count) * threads);
  std::vector<std::thread> pool;
  pool.reserve(size_t(count) * threads);
  for (unsigned b = 0; b < count; ++b)
    for (unsigned t = 0; t < threads; ++t)
      pool.emplace_back([&, b, t] {
        threadIdx = dim3{t, 0, 0};
        blockIdx = dim3{first_block + b, 0, 0};
        blockDim = dim3{threads, 1, 1};
        gridDim = dim3{grid_blocks, 1, 1};
        block_barrier = barriers[b].get();
        warp = warps[b * (threads / 32) + t / 32].get();
        grid_barrier = whole_grid ? &grid : nullptr;
        body();
        // A copy issued and never waited for is work the kernel threw away, or a wait forgotten.
        if (!copy_queue.open.empty() || !copy_queue.committed.empty()) unwaited_copies = true;
        copy_queue = CopyQueue{};
      });
  for (std::thread& th : pool) th.join();
  if (unwaited_copies)
    throw std::logic_error("simt::launch: a thread ended with asynchronous copies it never waited for");
}

// The whole grid at once, as a cooperative launch runs it.
inline void launch(unsigned blocks, unsigned threads, const std::function<void()>& body) {
  launch_blocks(0, blocks, blocks, threads, body);
}

// cooperative_groups' grid.sync(): every thread of every block.
inline void grid_sync() {
  if (grid_barrier == nullptr) {  // a thread cannot throw to the test; say why and stop
    std::fputs("simt::grid_sync: called in a launch of part of the grid (launch_blocks)\n", stderr);
    std::abort();
  }
  grid_barrier->arrive_and_wait();
}

}  // namespace simt

// ---- synchronisation and memory --------------------------------------------------------------
inline void __syncthreads() { simt::block_barrier->arrive_and_wait(); }
inline unsigned long long atomicMin(unsigned long long* address, unsigned long long value) {
  std::atomic_ref<unsigned long long> a(*address);
  unsigned long long seen = a.load();
  while (value < seen && !a.compare_exchange_weak(seen, value)) {
  }
  return seen;
}
// A polling thread's pause: let the threads it waits for run (there are far more of them than
// cores). And the device's trap: the launch fails; here the process.
inline void __nanosleep(unsigned /*ns*/) { std::this_thread::yield(); }
[[noreturn]] inline void __trap() { std::abort(); }
// The cache-global load: on the host, a plain load (ordering comes from the barriers and from
// the acquire-release atomics of tests/simt/cuda/atomic).
template <class T>
inline T __ldcg(const T* address) {
  return *address;
}

// Lane i gets lane (i ^ lane_mask)'s v. All 32 lanes must call it together, as the device code
// does (its loops over rows are uniform across a warp); the mask of lanes is not checked.
template <class T>
inline T __shfl_xor_sync(unsigned /*lanes*/, T v, int lane_mask) {
  static_assert(sizeof(T) <= 8, "one slot per lane");
  simt::Warp& w = *simt::warp;
  const unsigned lane = threadIdx.x % 32, turn = simt::shuffle_turn;
  simt::shuffle_turn ^= 1u;
  std::memcpy(w.slot[turn][lane], &v, sizeof(T));
  w.barrier.arrive_and_wait();  // every lane's value is in its slot
  T out;
  std::memcpy(&out, w.slot[turn][lane ^ unsigned(lane_mask)], sizeof(T));
  // No second barrier: the next shuffle writes the other set, and the one after it, this set
  // again, only past the next shuffle's barrier, which no lane reaches before reading here.
  return out;
}

// The warp's barrier: all 32 lanes must call it together, as the device code does.
inline void __syncwarp(unsigned /*lanes*/ = 0xffffffffu) { simt::warp->barrier.arrive_and_wait(); }

// ---- the math the device code calls unqualified --------------------------------------------
// (expf, logf and fmaxf are <cmath>'s global ones.)
using std::exp;
using std::fmax;
using std::fmaf;
using std::isfinite;
using std::isinf;
using std::log;
using std::pow;
using std::sqrt;
// The correctly rounded float operations: what host float arithmetic does anyway (SSE, no
// contraction across these calls).
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
template <class T>
inline T min(T a, T b) {
  return std::min(a, b);
}
