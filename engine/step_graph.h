// engine/step_graph.h — replaying a training step as a CUDA graph.
//
// An autograd training step on the GPU is 15–28 small kernels (docs/PERFORMANCE.md);
// launched one by one, the CPU's launch overhead (a few µs each) is the step's cost. Captured
// once into a CUDA graph and replayed, the whole step is one launch. Everything that changes
// from step to step must then live in device memory, not in kernel arguments: the batch index
// and Adam's step count are counters that kernels inside the graph read and advance
// (engine/kernels.h: increment), and the noise position derives from them.
//
// StepGraph::run(fn):
//   - CPU, or graphs disabled: calls fn().
//   - CUDA: call 1 runs fn() eagerly (warm-up: lazily created buffers and cuBLASLt plans
//     come into being outside the capture); call 2 captures fn() into a graph and launches
//     it; later calls only launch. A step whose shape differs (the last, partial batch of an
//     epoch) uses its own StepGraph.
// fn must allocate only temporaries that die before it returns (stream-ordered
// allocations inside a capture become the graph's own memory nodes, which memory_nodes()
// counts; a step whose buffers outlive it has none), must not synchronise, and must read no
// host state that changes between calls.
#pragma once

#include <functional>
#include <memory>

#include "engine/device.h"

namespace subliminal {

class StepGraph {
 public:
  StepGraph(Device device, bool use_graphs);
  ~StepGraph();
  StepGraph(const StepGraph&) = delete;
  StepGraph& operator=(const StepGraph&) = delete;

  void run(const std::function<void()>& fn);
  // Number of kernel nodes in the captured graph (0 before capture or on the CPU).
  size_t kernel_nodes() const;
  // Number of memory nodes (allocations and frees of the step's temporaries) in it.
  size_t memory_nodes() const;

 private:
  struct CudaGraph;
  Device device_;
  bool use_graphs_;
  int calls_ = 0;
  std::unique_ptr<CudaGraph> graph_;
};

}  // namespace subliminal
