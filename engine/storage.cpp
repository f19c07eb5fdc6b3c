// engine/storage.cpp — the CPU caching allocator and the dispatch to the CUDA pool.
#include "engine/storage.h"

#include <sys/resource.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <mutex>
#include <new>
#include <string>
#include <unordered_map>
#include <utility>
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
  uint64_t limit = 0;  // set_cpu_memory_limit; 0: none
};

CpuCache& cpu_cache() {
  static CpuCache* cache = new CpuCache;  // never destroyed: tensors may die during static teardown
  return *cache;
}

size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

// Every cached block back to the system. The caller holds the cache's mutex.
void free_cached_blocks(CpuCache& cache) {
  for (auto& [size, blocks] : cache.free_blocks)
    for (void* p : blocks) std::free(p);
  cache.free_blocks.clear();
  cache.stats.bytes_held -= cache.stats.bytes_cached;
  cache.stats.bytes_cached = 0;
}

void* cpu_allocate(size_t bytes) {
  if (bytes > std::numeric_limits<size_t>::max() - kCpuAlignment)  // round_up would wrap to a tiny block
    throw OutOfMemoryError("out of host memory: cannot allocate " + std::to_string(bytes) + " bytes");
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
    if (cache.limit != 0 && cache.stats.bytes_held + rounded > cache.limit) free_cached_blocks(cache);
    if (cache.limit != 0 && cache.stats.bytes_held + rounded > cache.limit)
      throw OutOfMemoryError("out of host memory: allocating " + std::to_string(bytes) +
                             " bytes would take " + bytes_text(cache.stats.bytes_held + rounded) +
                             ", over the " + bytes_text(cache.limit) + " this run may use");
    cache.stats.fresh_allocations++;
    cache.stats.bytes_held += rounded;  // counted before malloc, so two threads cannot both pass the limit
    cache.stats.peak_bytes_held = std::max(cache.stats.peak_bytes_held, cache.stats.bytes_held);
  }
  void* p = std::aligned_alloc(kCpuAlignment, rounded);
  if (!p) {
    std::lock_guard<std::mutex> lock(cache.mutex);
    cache.stats.bytes_held -= rounded;
    throw OutOfMemoryError("out of host memory allocating " + std::to_string(bytes) + " bytes");
  }
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
    cache.stats.bytes_held -= rounded;
  }
}

}  // namespace

std::string bytes_text(uint64_t bytes) {
  char text[32];
  if (bytes >= 1000000000)
    std::snprintf(text, sizeof text, "%.1f GB", double(bytes) / 1e9);
  else
    std::snprintf(text, sizeof text, "%.0f MB", double(bytes) / 1e6);
  return text;
}

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
  try {
    return std::shared_ptr<Storage>(new Storage(p, bytes, device));
  } catch (...) {  // the Storage or its control block could not be allocated: the block goes back
    if (device == Device::cpu) {
      cpu_release(p, bytes);
    } else {
#ifdef SUBLIMINAL_HAS_CUDA
      cuda::device_release(p);
#endif
    }
    throw;
  }
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
  free_cached_blocks(cache);
}

CpuAllocatorStats cpu_allocator_stats() {
  CpuCache& cache = cpu_cache();
  std::lock_guard<std::mutex> lock(cache.mutex);
  return cache.stats;
}

void reset_cpu_peak() {
  CpuCache& cache = cpu_cache();
  std::lock_guard<std::mutex> lock(cache.mutex);
  cache.stats.peak_bytes_held = cache.stats.bytes_held;
}

void set_cpu_memory_limit(uint64_t bytes) {
  CpuCache& cache = cpu_cache();
  std::lock_guard<std::mutex> lock(cache.mutex);
  cache.limit = bytes;
}

uint64_t cpu_memory_limit() {
  CpuCache& cache = cpu_cache();
  std::lock_guard<std::mutex> lock(cache.mutex);
  return cache.limit;
}

namespace {

// The first number in a file (0 for "max" or a missing file).
uint64_t number_in(const char* path) {
  std::FILE* f = std::fopen(path, "r");
  if (!f) return 0;
  unsigned long long value = 0;
  const int read = std::fscanf(f, "%llu", &value);
  std::fclose(f);
  return read == 1 ? value : 0;
}

// The value of `key` in a file of "key value" lines (/proc/meminfo, a cgroup's memory.stat), or
// 0 when it is not there.
uint64_t value_in(const char* path, const char* key) {
  std::FILE* f = std::fopen(path, "r");
  if (!f) return 0;
  char line[256], name[128];
  unsigned long long value = 0;
  bool found = false;
  while (!found && std::fgets(line, sizeof line, f)) {
    // "MemAvailable:   24212080 kB" (meminfo) or "file 1234" (memory.stat)
    const bool parsed = std::sscanf(line, "%127[^: ]:%llu", name, &value) == 2 ||
                        std::sscanf(line, "%127s %llu", name, &value) == 2;
    found = parsed && std::string(name) == key;
  }
  std::fclose(f);
  return found ? value : 0;
}

}  // namespace

uint64_t host_memory_available() {
  uint64_t available = value_in("/proc/meminfo", "MemAvailable") * 1024;  // given in kB
  // In a container the cgroup's limit is what the kernel enforces: what is left of it, counting
  // the page cache (which the kernel reclaims before it kills) as free. cgroup v2, then v1; a
  // limit of "max" (v2) reads as 0 and one of ~2^63 (v1) leaves more than the machine has.
  struct Cgroup {
    const char *limit, *usage, *stat, *cache;
  };
  for (const Cgroup& c :
       {Cgroup{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current", "/sys/fs/cgroup/memory.stat",
               "file"},
        Cgroup{"/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes",
               "/sys/fs/cgroup/memory/memory.stat", "total_cache"}}) {
    const uint64_t limit = number_in(c.limit), usage = number_in(c.usage);
    if (limit == 0 || usage == 0) continue;
    const uint64_t cache = std::min(value_in(c.stat, c.cache), usage);
    const uint64_t left = limit > usage - cache ? limit - (usage - cache) : 1;
    if (available == 0 || left < available) available = left;
  }
  // (At least 1: 0 would read as "unknown", no ceiling at all.)
  const uint64_t address_space = std::max<uint64_t>(address_space_left(), 1);
  if (address_space != kNoAddressSpaceLimit && (available == 0 || address_space < available))
    available = address_space;
  return available;
}

uint64_t address_space_left() {
  uint64_t left = kNoAddressSpaceLimit;
  struct Limit {
    int resource;
    const char* mapped;  // its counterpart in /proc/self/status, in kB
  };
  for (const Limit& l : {Limit{RLIMIT_AS, "VmSize"}, Limit{RLIMIT_DATA, "VmData"}}) {
    rlimit limit{};
    if (getrlimit(l.resource, &limit) != 0 || limit.rlim_cur == RLIM_INFINITY) continue;
    const uint64_t mapped = value_in("/proc/self/status", l.mapped) * 1024;
    const uint64_t room = limit.rlim_cur > mapped ? uint64_t(limit.rlim_cur) - mapped : 0;
    left = std::min(left, room);
  }
  return left;
}

}  // namespace subliminal
