// ops/cudnn/cuda13_compat.h — lets cudnn-frontend 1.8.0 compile against CUDA 13's runtime headers.
//
// Include this before <cudnn_frontend.h>, and only from the cuDNN translation unit.
//
// Why: CUDA 13 gave four CUDA-graph functions an extra `cudaGraphEdgeData*` argument (edge data,
// optional, nullptr meaning "plain edges") and dropped the old 3/4-argument forms. cudnn-frontend
// 1.8.0 (the version Debian packages) still calls the old forms — cudnn_frontend_shim.h calls
// cudaGraphNodeGetDependentNodes(node, nodes, count) — so it fails to compile. These inline C++
// overloads restore the old signatures by forwarding nullptr as the edge data, which is exactly what
// CUDA 12's versions did. They are ordinary overloads (the CUDA ones keep their C linkage), so nothing
// changes for code that already uses the new forms. Remove this file once the frontend is ≥ a release
// that knows CUDA 13 (upstream fixed it after 1.8.0).
#pragma once

#include <cuda_runtime_api.h>

#if defined(CUDART_VERSION) && CUDART_VERSION >= 13000

// node's dependencies (incoming edges); old form had no edge data.
inline cudaError_t cudaGraphNodeGetDependencies(cudaGraphNode_t node, cudaGraphNode_t* dependencies,
                                                size_t* count) {
  return cudaGraphNodeGetDependencies(node, dependencies, static_cast<cudaGraphEdgeData*>(nullptr), count);
}

// node's dependent nodes (outgoing edges).
inline cudaError_t cudaGraphNodeGetDependentNodes(cudaGraphNode_t node, cudaGraphNode_t* dependents,
                                                  size_t* count) {
  return cudaGraphNodeGetDependentNodes(node, dependents, static_cast<cudaGraphEdgeData*>(nullptr), count);
}

// Adds `count` edges from[k] -> to[k].
inline cudaError_t cudaGraphAddDependencies(cudaGraph_t graph, const cudaGraphNode_t* from,
                                            const cudaGraphNode_t* to, size_t count) {
  return cudaGraphAddDependencies(graph, from, to, static_cast<const cudaGraphEdgeData*>(nullptr), count);
}

// Removes `count` edges from[k] -> to[k].
inline cudaError_t cudaGraphRemoveDependencies(cudaGraph_t graph, const cudaGraphNode_t* from,
                                               const cudaGraphNode_t* to, size_t count) {
  return cudaGraphRemoveDependencies(graph, from, to, static_cast<const cudaGraphEdgeData*>(nullptr), count);
}

#endif  // CUDART_VERSION >= 13000
