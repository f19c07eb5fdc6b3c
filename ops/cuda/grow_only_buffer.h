// ops/cuda/grow_only_buffer.h — a device buffer that only grows, for what a kernel needs
// besides its inputs and outputs (split-K scratch, the fused step's activations).
//
// Why not allocate per call: inside a captured CUDA graph every stream-ordered allocation
// becomes a memory node of the graph, replayed with it; a training step whose buffers are
// already there allocates nothing. So the buffer grows on a step's eager first call (StepGraph
// runs call 1 eagerly, then captures call 2 with the same shapes), and a request that does not
// fit inside a capture is an error naming the buffer, not a cudaMalloc the capture would
// reject. A grown-out buffer is kept, never freed: a graph captured earlier may still point at
// it (each growth at least doubles, so all of them together hold less than twice the largest).
// Like the runtime, these buffers live as long as the process, and like it they assume one
// stream: two steps in flight at once would share them.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace subliminal::cuda {

class GrowOnlyBuffer {
 public:
  // `what` names the buffer in errors; `zeroed`: fresh memory is zero-filled (counters that
  // their users leave at zero again).
  GrowOnlyBuffer(std::string what, bool zeroed) : what_(std::move(what)), zeroed_(zeroed) {}
  GrowOnlyBuffer(const GrowOnlyBuffer&) = delete;
  GrowOnlyBuffer& operator=(const GrowOnlyBuffer&) = delete;

  // At least `bytes` bytes (256-byte aligned, as cudaMalloc's), valid until a larger request.
  void* reserve(size_t bytes);

 private:
  std::string what_;
  bool zeroed_;
  void* buffer_ = nullptr;
  size_t bytes_ = 0;
  std::vector<void*> retired_;
};

}  // namespace subliminal::cuda
