// engine/storage.h — a reference-counted block of memory on one device.
//
// Tensors share Storage through std::shared_ptr: a view (a model's slice of a batched
// parameter, a parameter inside the flat parameter arena) keeps its storage alive.
//
// Where the bytes come from:
//   cpu  — a caching allocator: freed blocks go to a free list keyed by their size rounded up
//          to 64 bytes and are handed out again, so a training loop whose step allocates the same
//          sizes every time stops calling malloc after its first step.
//   cuda — cudaMallocAsync on the run's stream, from a stream-ordered pool whose release
//          threshold is raised so freed memory stays in the pool (see engine/cuda/runtime.h).
//          Inside a CUDA-graph capture these calls become the graph's own memory nodes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "engine/device.h"

namespace subliminal {

class Storage {
 public:
  // Uninitialised memory; 64-byte aligned on the CPU, 256-byte on the GPU (cuBLASLt wants that).
  static std::shared_ptr<Storage> allocate(size_t bytes, Device device);

  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

 private:
  Storage(void* data, size_t bytes, Device device) : data_(data), bytes_(bytes), device_(device) {}
  void* data_;
  size_t bytes_;
  Device device_;
};

// Counters of the CPU caching allocator, for tests that prove a loop stops allocating.
struct CpuAllocatorStats {
  uint64_t fresh_allocations = 0;   // calls that had to go to the system allocator
  uint64_t reused_allocations = 0;  // calls served from the free lists
  uint64_t bytes_cached = 0;        // bytes sitting in the free lists now
  uint64_t bytes_held = 0;          // taken from the system and not given back: in use or cached
  uint64_t peak_bytes_held = 0;     // the most bytes_held has been since reset_cpu_peak()
};
CpuAllocatorStats cpu_allocator_stats();
void reset_cpu_peak();  // peak_bytes_held starts again from bytes_held

// Returns every cached CPU block to the system: between phases whose sizes differ (the
// teacher's batches, then the students'), so peak memory is one phase's, not their sum.
void cpu_cache_trim();

// A ceiling on the bytes the CPU allocator holds from the system, cached blocks included (0, the
// default: none). An allocation that would pass it first returns the cache to the system, then,
// if it still would, throws OutOfMemoryError. Linux grants far more than it has (overcommit) and
// kills the process, without a word, once the pages are touched; a ceiling set from
// host_memory_available() turns that into an error naming the bytes, at the allocation.
void set_cpu_memory_limit(uint64_t bytes);
uint64_t cpu_memory_limit();  // the ceiling set (0: none)

// The memory this process could still take now: /proc/meminfo's MemAvailable, or less where a
// cgroup (a container's memory limit) or an address-space limit (below) allows less. 0 when
// none can be read.
uint64_t host_memory_available();

// What this process's address-space limits still let it map: RLIMIT_AS (`ulimit -v`) less the
// address space it has mapped (/proc/self/status's VmSize), or RLIMIT_DATA (`ulimit -d`, which
// counts private writable mappings since Linux 4.7) less VmData, whichever is smaller;
// kNoAddressSpaceLimit when neither limit is set, as on most machines (batch schedulers set
// them). Address space is not memory: a mapping counts whole here however little of it is
// touched, as OpenBLAS's work buffers are (ops/cpu/gemm_cpu.h).
inline constexpr uint64_t kNoAddressSpaceLimit = ~uint64_t(0);
uint64_t address_space_left();

std::string bytes_text(uint64_t bytes);  // "3.2 GB", or "470 MB" below a gigabyte: for messages

}  // namespace subliminal
