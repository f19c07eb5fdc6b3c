// engine/storage.cpp — the CPU caching allocator and the dispatch to the CUDA pool.
#include "engine/storage.h"

#include <cstdlib>
#include <mutex>
#include <new>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/error.h"

#ifdef SUBLIMINAL_HAS_CUDA
#include "engine/cuda/runtime.h"
#endif

namespace subliminal {
namespace {

constexpr size_t kCpuAlignment = 64;  // a cache line; also enough for AVX-512 loads

// Free lists keyed by the exact (rounded) size. Training allocates the same handful of
// sizes every step, so exact-size reuse is all we need; no splitting or coalescing.
struct CpuCache {
  std::mutex mutex;
  std::unordered_map<size_t, std::vector<void*>> free_blocks;
  CpuAllocatorStats stats;
};

CpuCache& cpu_cache() {
  static CpuCache* cache = new CpuCache;  // never destroyed: tensors may die during static teardown
  return *cache;
}

size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

void* cpu_allocate(size_t bytes) {
  size_t rounded = round_up(bytes == 0 ? 1 : bytes, kCpuAlignment);
  CpuCache& cache = cpu_cache();
  {
    std::lock_guard<std::mutex> lock(cache.mutex);
    auto it = cache.free_blocks.find(rounded);
    if (it != cache.free_blocks.end() && !it->second.empty()) {
      void* p = it->second.back();
      it->second.pop_back();
      cache.stats.reused_allocations++;
      cache.stats.bytes_cached -= rounded;
      return p;
    }
    cache.stats.fresh_allocations++;
  }
  void* p = std::aligned_alloc(kCpuAlignment, rounded);
  if (!p) throw OutOfMemoryError("out of host memory allocating " + std::to_string(bytes) + " bytes");
  return p;
}

// Never throws (called from ~Storage): if the free list cannot grow, the block goes back to
// the system instead.
void cpu_release(void* p, size_t bytes) noexcept {
  size_t rounded = round_up(bytes == 0 ? 1 : bytes, kCpuAlignment);
  CpuCache& cache = cpu_cache();
  std::lock_guard<std::mutex> lock(cache.mutex);
  try {
    cache.free_blocks[rounded].push_back(p);
    cache.stats.bytes_cached += rounded;
  } catch (...) {
    std::free(p);
  }
}

}  // namespace

std::shared_ptr<Storage> Storage::allocate(size_t bytes, Device device) {
  void* p = nullptr;
  if (device == Device::cpu) {
    p = cpu_allocate(bytes);
  } else {
#ifdef SUBLIMINAL_HAS_CUDA
    p = cuda::device_allocate(bytes);
#else
    throw NoGpuError("this build has no CUDA backend; cannot allocate GPU memory");
#endif
  }
  return std::shared_ptr<Storage>(new Storage(p, bytes, device));
}

Storage::~Storage() {
  if (device_ == Device::cpu) {
    cpu_release(data_, bytes_);
  } else {
#ifdef SUBLIMINAL_HAS_CUDA
    cuda::device_release(data_);  // never throws: destructors must not
#endif
  }
}

void cpu_cache_trim() {
  CpuCache& cache = cpu_cache();
  std::lock_guard<std::mutex> lock(cache.mutex);
  for (auto& [size, blocks] : cache.free_blocks)
    for (void* p : blocks) std::free(p);
  cache.free_blocks.clear();
  cache.stats.bytes_cached = 0;
}

CpuAllocatorStats cpu_allocator_stats() {
  CpuCache& cache = cpu_cache();
  std::lock_guard<std::mutex> lock(cache.mutex);
  return cache.stats;
}

}  // namespace subliminal
