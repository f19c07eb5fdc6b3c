// engine/cuda/launch.cuh — launch-shape helpers shared by the CUDA kernels.
#pragma once

#include <cstdint>

namespace subliminal::cuda {

constexpr int kThreads = 256;  // threads per block for elementwise kernels

// Enough blocks to cover n elements with kThreads each, capped: grid-stride loops do the rest.
inline unsigned grid_for(int64_t n) {
  int64_t blocks = (n + kThreads - 1) / kThreads;
  if (blocks > 65535) blocks = 65535;
  return static_cast<unsigned>(blocks < 1 ? 1 : blocks);
}

}  // namespace subliminal::cuda
