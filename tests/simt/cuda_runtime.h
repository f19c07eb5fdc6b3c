// tests/simt/cuda_runtime.h — just enough of CUDA for host threads to run our device code.
//
// Why. This machine and CI have no GPU, so the CUDA kernels' tests (tests/test_cuda_*.cpp) skip
// here. Our own GEMM tile (ops/cuda/tile_gemm.cuh) is header-only device code with no inline
// PTX; compiled by the host compiler against THIS header — which tests/CMakeLists.txt puts ahead
// of the toolkit's — it runs as real threads: a "block" is blockDim.x std::threads,
// __syncthreads() is a std::barrier, atomicAdd is an atomic read-modify-write, and several blocks
// run at once. So the tile's indexing, split-K hand-off and epilogues are checked on every CI
// run, under AddressSanitizer too, and a change to them is tested before it ever meets a GPU.
//
// What it cannot check: speed, the GPU memory model's weaker corners (our threads are ordered
// by C++ atomics and barriers, which are stronger than __threadfence), warp-synchronous code
// (no shuffles here), and the real compiler's code generation. The GPU suite still does that.
#pragma once

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

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

// One block's barrier; every thread of a block points at its block's.
inline thread_local std::barrier<>* block_barrier = nullptr;

// Runs body() on blocks × threads host threads, blocks all at once (as a cooperative launch
// would), and returns when every thread has finished. body reads threadIdx/blockIdx like a
// kernel; whatever it keeps per block (its "shared memory") it indexes by blockIdx.x.
inline void launch(unsigned blocks, unsigned threads, const std::function<void()>& body) {
  std::vector<std::unique_ptr<std::barrier<>>> barriers;
  for (unsigned b = 0; b < blocks; ++b) barriers.push_back(std::make_unique<std::barrier<>>(std::ptrdiff_t(threads)));
  std::vector<std::thread> pool;
  pool.reserve(size_t(blocks) * threads);
  for (unsigned b = 0; b < blocks; ++b)
    for (unsigned t = 0; t < threads; ++t)
      pool.emplace_back([&, b, t] {
        threadIdx = dim3{t, 0, 0};
        blockIdx = dim3{b, 0, 0};
        blockDim = dim3{threads, 1, 1};
        gridDim = dim3{blocks, 1, 1};
        block_barrier = barriers[b].get();
        body();
      });
  for (std::thread& th : pool) th.join();
}

}  // namespace simt

// ---- synchronisation and memory --------------------------------------------------------------
inline void __syncthreads() { simt::block_barrier->arrive_and_wait(); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline int atomicAdd(int* address, int value) { return std::atomic_ref<int>(*address).fetch_add(value); }
// The cache-global load: on the host, a plain load (ordering comes from the atomics above).
template <class T>
inline T __ldcg(const T* address) {
  return *address;
}

// ---- the math the device code calls unqualified ------------------------------------------
using std::fmaf;
template <class T>
inline T min(T a, T b) {
  return std::min(a, b);
}
