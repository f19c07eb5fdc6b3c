// engine/step_graph.cpp — warm-up, capture, replay.
#include "engine/step_graph.h"

#include "engine/error.h"

#ifdef SUBLIMINAL_HAS_CUDA
#include <cuda_runtime_api.h>

#include <vector>

#include "engine/cuda/check.h"
#include "engine/cuda/runtime.h"
#endif

namespace subliminal {

#ifdef SUBLIMINAL_HAS_CUDA
struct StepGraph::CudaGraph {
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  size_t kernels = 0, memory = 0;
  ~CudaGraph() {
    if (exec) cudaGraphExecDestroy(exec);
    if (graph) cudaGraphDestroy(graph);
  }
};
#else
struct StepGraph::CudaGraph {
  size_t kernels = 0, memory = 0;
};
#endif

StepGraph::StepGraph(Device device, bool use_graphs) : device_(device), use_graphs_(use_graphs) {}
StepGraph::~StepGraph() = default;

void StepGraph::run(const std::function<void()>& fn) {
  // The first call runs eagerly, creating what the step allocates lazily; counted only once it
  // has returned, so a first call that throws is not followed by a capture of a step that never ran.
  if (device_ != Device::cuda || !use_graphs_ || calls_ == 0) {
    fn();
    ++calls_;
    return;
  }
  ++calls_;
#ifdef SUBLIMINAL_HAS_CUDA
  cudaStream_t stream = cuda::Runtime::get().stream();
  if (!graph_) {
    // Built aside and kept only when capture and instantiation both succeed, so a failure
    // leaves no half-made graph behind for the next call to launch.
    auto graph = std::make_unique<CudaGraph>();
    CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    try {
      fn();
    } catch (...) {
      cudaGraph_t broken = nullptr;
      cudaStreamEndCapture(stream, &broken);  // leave the stream usable before rethrowing
      if (broken) cudaGraphDestroy(broken);
      throw;
    }
    CUDA_CHECK(cudaStreamEndCapture(stream, &graph->graph));
    CUDA_CHECK(cudaGraphInstantiate(&graph->exec, graph->graph, 0));
    size_t count = 0;
    CUDA_CHECK(cudaGraphGetNodes(graph->graph, nullptr, &count));
    std::vector<cudaGraphNode_t> nodes(count);
    CUDA_CHECK(cudaGraphGetNodes(graph->graph, nodes.data(), &count));
    for (cudaGraphNode_t node : nodes) {
      cudaGraphNodeType type;
      CUDA_CHECK(cudaGraphNodeGetType(node, &type));
      graph->kernels += type == cudaGraphNodeTypeKernel;
      graph->memory += type == cudaGraphNodeTypeMemAlloc || type == cudaGraphNodeTypeMemFree;
    }
    graph_ = std::move(graph);
  }
  CUDA_CHECK(cudaGraphLaunch(graph_->exec, stream));
#else
  fn();
#endif
}

size_t StepGraph::kernel_nodes() const { return graph_ ? graph_->kernels : 0; }
size_t StepGraph::memory_nodes() const { return graph_ ? graph_->memory : 0; }

}  // namespace subliminal
