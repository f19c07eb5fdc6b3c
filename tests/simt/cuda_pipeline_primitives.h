// tests/simt/cuda_pipeline_primitives.h — CUDA's asynchronous copies (cp.async) for host threads,
// standing in for the toolkit's header of the same name (see cuda_runtime.h beside it).
//
// On the GPU a copy lands in shared memory at some moment between __pipeline_memcpy_async and
// the __pipeline_wait_prior that lets it be read. Here it reads its source when issued AND when it
// lands, and stops the test if the two differ; and it lands as LATE as the rules allow: each
// thread queues its copies, __pipeline_commit closes a group, and only __pipeline_wait_prior(n)
// performs them — every group but the n newest. So device code that reads a stage before
// waiting for it reads the stage's old contents and fails its test, and code that reads
// another thread's copies without a __syncthreads after that thread's wait races with it
// (which ThreadSanitizer reports) instead of passing by luck.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <vector>

namespace simt {

struct AsyncCopy {
  void* dst;
  const void* src;
  size_t bytes;
  unsigned char at_issue[16];  // the source's bytes when the copy was issued
};

// This thread's copies: the open group (not yet committed) and the committed ones, oldest first.
struct CopyQueue {
  std::vector<AsyncCopy> open;
  std::deque<std::vector<AsyncCopy>> committed;
};
inline thread_local CopyQueue copy_queue;

}  // namespace simt

// Copies size_and_align bytes (4, 8 or 16, both addresses aligned to it); with zfill, the last
// zfill bytes are zeros instead of the source's.
inline void __pipeline_memcpy_async(void* dst_shared, const void* src_global, size_t size_and_align,
                                    size_t zfill = 0) {
  // A GPU faults on a copy of another size or from or to a misaligned address ("misaligned
  // address", the launch lost); x86 would copy it without a word. So it is checked here.
  const bool size_ok = size_and_align == 4 || size_and_align == 8 || size_and_align == 16;
  if (!size_ok || reinterpret_cast<uintptr_t>(dst_shared) % size_and_align != 0 ||
      reinterpret_cast<uintptr_t>(src_global) % size_and_align != 0 || zfill > size_and_align) {
    std::fprintf(stderr,
                 "__pipeline_memcpy_async: %zu bytes from %p to %p (zfill %zu): not 4, 8 or 16 bytes "
                 "at addresses aligned to the size\n",
                 size_and_align, src_global, dst_shared, zfill);
    std::abort();  // a thread cannot throw to the test
  }
  // The zero fill happens when the copy lands, as the source bytes do.
  auto issue = [](void* dst, const void* src, size_t bytes) {
    simt::AsyncCopy copy{dst, src, bytes, {}};
    std::memcpy(copy.at_issue, src, bytes);
    simt::copy_queue.open.push_back(copy);
  };
  static const unsigned char zeros[16] = {};
  issue(dst_shared, src_global, size_and_align - zfill);
  if (zfill) issue(static_cast<char*>(dst_shared) + (size_and_align - zfill), zeros, zfill);
}

inline void __pipeline_commit() {
  simt::copy_queue.committed.push_back(std::move(simt::copy_queue.open));
  simt::copy_queue.open.clear();
}

// Waits until at most `prior` of this thread's committed groups are still in flight: performs
// all older ones, in the order they were issued. A source that changed since its copy was
// issued is a bug even where this late copy reads the new bytes: a GPU may have read the old
// ones (e.g. a load issued before a barrier, of data another block writes before that barrier).
inline void __pipeline_wait_prior(size_t prior) {
  auto& q = simt::copy_queue.committed;
  while (q.size() > prior) {
    for (const simt::AsyncCopy& c : q.front()) {
      if (std::memcmp(c.src, c.at_issue, c.bytes) != 0) {
        std::fprintf(stderr, "__pipeline_wait_prior: the source of an asynchronous copy (%zu bytes at %p) "
                     "changed while the copy was in flight\n", c.bytes, c.src);
        std::abort();  // a thread cannot throw to the test
      }
      std::memcpy(c.dst, c.src, c.bytes);
    }
    q.pop_front();
  }
}
