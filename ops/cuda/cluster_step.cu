// ops/cuda/cluster_step.cu — a training step by row blocks in thread-block clusters: two
// kernels (ops/cuda/cluster_program.cuh has their device code and why; ops/cuda/cluster_plan.h
// the host's plan).
//
// Kernel 1 runs one cluster of kClusterBlocks blocks (one per SM: each takes most of an SM's
// shared memory) per row block of each trained model: forward, loss and backward for those
// rows, with cluster barriers between the layers and no grid barrier. Kernel 2 sums the row
// blocks' gradient partials and does the step's tail. Both go into a CUDA graph like the fused
// step (the step allocates nothing: its buffers outlive it). By default each is launched as the
// kernel ahead of it finishes (programmatic dependent launch), so that its launch latency hides
// behind that kernel's last blocks (ClusterStepTuning::overlap_launches).
//
// Needs sm_90 (clusters). It is chosen with set_fused_step_design (ops/fused_step.h; the app's
// --step cluster) and has not yet been timed on a GPU: docs/PERFORMANCE.md has the design and
// what it should cost.
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <string>
#include <utility>  // std::move
#include <vector>

#include "engine/cuda/check.h"
#include "engine/cuda/runtime.h"
#include "engine/error.h"
#include "ops/cuda/cluster_plan.h"
#include "ops/cuda/fused_step_cuda.h"
#include "ops/cuda/grow_only_buffer.h"

namespace subliminal::cuda {
namespace {

namespace cg = cooperative_groups;
using cluster::Program;
using cluster::ReduceProgram;

static_assert(sizeof(Program) <= 4096, "the cluster step's program outgrew a kernel parameter");
static_assert(sizeof(ReduceProgram) <= 4096, "the cluster step's reduction outgrew a kernel parameter");

// kBlock: the program's register block (Program::block, ClusterStepTuning::register_block), a
// kernel each, so that the default's code is the same as without the choice.
template <int kBlock>
__global__ void __launch_bounds__(cluster::kThreads, 1)
    cluster_rows_kernel(const __grid_constant__ Program p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  extern __shared__ float4 dynamic_smem[];
  cg::cluster_group cluster = cg::this_cluster();
  // Launched early (ClusterStepTuning::overlap_launches), the kernel reads nothing before the
  // kernel ahead of it has finished (the batch's gather, or the last step's Adam); and it lets
  // kernel 2 be launched at once, whose blocks wait the same way for this kernel's results.
  // Without the launch attribute both are no-ops.
  cudaTriggerProgrammaticLaunchCompletion();
  cudaGridDependencySynchronize();
  // cluster.sync() is barrier_arrive() then barrier_wait(); prefetches go between the two.
  cluster::run_rows<kBlock>(p, reinterpret_cast<float*>(dynamic_smem), [&](auto&& between) {
    auto token = cluster.barrier_arrive();
    between();
    cluster.barrier_wait(std::move(token));
  });
#else
  __trap();  // the host never launches this body (cluster_step_supported: compiled_for_clusters)
#endif
}

__global__ void __launch_bounds__(cluster::kThreads)
    cluster_reduce_kernel(const __grid_constant__ ReduceProgram p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  cudaGridDependencySynchronize();  // kernel 1's partials and row losses (see above)
#endif
  cluster::run_reduce(p);
}

GrowOnlyBuffer& scratch() {  // kernel 1's exchange buffers and gradient partials
  static GrowOnlyBuffer* b = new GrowOnlyBuffer("cluster step: scratch", false);  // never destroyed
  return *b;
}

// The launch attribute for clusters of `blocks` blocks along x.
cudaLaunchAttribute cluster_dims(int blocks) {
  cudaLaunchAttribute dims{};
  dims.id = cudaLaunchAttributeClusterDimension;
  dims.val.clusterDim.x = unsigned(blocks), dims.val.clusterDim.y = 1, dims.val.clusterDim.z = 1;
  return dims;
}

// Whether cluster_rows_kernel's body here is its sm_90 one. A build without sm_90 code (say
// CMAKE_CUDA_ARCHITECTURES=80) still runs on a Hopper, through the driver's JIT of its compute_80
// PTX, and there the body is the __trap() above: the GPU's capability is not enough to know.
bool compiled_for_clusters() {
  cudaFuncAttributes attributes{};
  if (cudaFuncGetAttributes(&attributes, cluster_rows_kernel<4>) != cudaSuccess) {
    (void)cudaGetLastError();  // not sticky: cleared, and answered "no"
    return false;
  }
  return attributes.ptxVersion >= 90;
}

// The machine as the planner sees it, and the kernel's shared memory limit raised to it (once,
// on the first step: that one runs eagerly, outside any graph capture).
const cluster::Machine& machine() {
  static const cluster::Machine m = [] {
    const cudaDeviceProp& props = Runtime::get().properties();
    if (props.major < 9)
      throw DeviceError(
          "cluster step: needs thread-block clusters (compute capability 9.0 or later); this GPU is " +
          std::to_string(props.major) + "." + std::to_string(props.minor));
    if (!compiled_for_clusters())
      throw DeviceError(
          "cluster step: this build has no sm_90 code for it (CMAKE_CUDA_ARCHITECTURES must include 90)");
    cluster::Machine mc;
    mc.cluster = cluster::kClusterBlocks;
    mc.threads = cluster::kThreads;
    mc.smem_floats = int64_t(props.sharedMemPerBlockOptin) / int64_t(sizeof(float));
    for (auto kernel : {cluster_rows_kernel<4>, cluster_rows_kernel<8>})
      CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      int(props.sharedMemPerBlockOptin)));
    // How many clusters of this shape run at once (one block per SM at this much memory, for
    // either kernel).
    cudaLaunchConfig_t config{};
    config.gridDim = dim3(unsigned(mc.cluster));
    config.blockDim = dim3(unsigned(mc.threads));
    config.dynamicSmemBytes = props.sharedMemPerBlockOptin;
    cudaLaunchAttribute dims = cluster_dims(mc.cluster);
    config.attrs = &dims;
    config.numAttrs = 1;
    int clusters = 0;
    CUDA_CHECK(cudaOccupancyMaxActiveClusters(&clusters, cluster_rows_kernel<4>, &config));
    if (clusters <= 0) throw DeviceError("cluster step: a cluster of 8 blocks does not fit on this GPU");
    mc.clusters = clusters;
    return mc;
  }();
  return m;
}

ClusterStepTuning& tuning() {  // set by cluster_step_tuning
  static ClusterStepTuning t;
  return t;
}

// Launches kernel<<<config>>>(args) in clusters of `cluster` blocks (1: none), and with
// `overlap`, as the stream's previous kernel finishes (programmatic dependent launch: the
// kernel waits for that one's results with cudaGridDependencySynchronize).
template <class Program>
void launch(void (*kernel)(Program), cudaLaunchConfig_t config, int cluster, bool overlap, const Program& p) {
  cudaLaunchAttribute attrs[2]{};
  unsigned n = 0;
  if (cluster > 1) attrs[n++] = cluster_dims(cluster);
  if (overlap) {
    attrs[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attrs[n].val.programmaticStreamSerializationAllowed = 1;
    ++n;
  }
  config.attrs = attrs;
  config.numAttrs = n;
  CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, p));
}

}  // namespace

void cluster_step_tuning(const ClusterStepTuning& t) {
  cluster::check_tuning(t);
  tuning() = t;
}

bool cluster_step_supported() {
  const cudaDeviceProp& props = Runtime::get().properties();
  return props.major >= 9 && compiled_for_clusters();
}

void cluster_mlp_step(const float* x, int64_t batch, const FusedMlp& trained, const FusedMlp* frozen,
                      const FusedLoss& loss, float* loss_out, const FusedTail* tail) {
  const int L = trained.layers;
  if (L < 2 || L > kFusedMaxLayers) throw ShapeError("cluster_mlp_step: " + std::to_string(L) + " layers");
  const int64_t S = trained.models, F = frozen ? frozen->models : 0;
  if (S == 0 || batch == 0 || (loss.distill && (F == 0 || S % F != 0)))
    throw ShapeError("cluster_mlp_step: " + std::to_string(S) + " trained and " + std::to_string(F) +
                     " frozen models, batch " + std::to_string(batch));
  const ClusterStepTuning t = tuning();
  const cluster::Machine mc = cluster::tuned(machine(), t);
  Program p = cluster::build_rows_program(x, batch, trained, frozen, loss, tail, mc);
  p.prefetch = t.prefetch;

  // The scratch: one buffer that outlives the step, each part 256-byte aligned.
  int64_t doubles = 0;
  const std::vector<int64_t> floats = cluster::scratch_floats(p, doubles);
  std::vector<size_t> at;
  size_t bytes = 0;
  auto part = [&bytes](size_t part_bytes) {
    const size_t here = bytes;
    bytes += (part_bytes + 255) / 256 * 256;
    return here;
  };
  for (int64_t n : floats) at.push_back(part(sizeof(float) * size_t(n)));
  const size_t row_loss_at = part(sizeof(double) * size_t(doubles));
  char* base = static_cast<char*>(scratch().reserve(bytes));
  std::vector<float*> parts;
  for (size_t o : at) parts.push_back(reinterpret_cast<float*>(base + o));
  cluster::assign_scratch(p, parts, reinterpret_cast<double*>(base + row_loss_at));
  const ReduceProgram r = cluster::build_reduce_program(p, trained, loss_out, tail);

  cudaLaunchConfig_t config{};
  config.gridDim = dim3(unsigned(S * p.row_blocks * p.cluster));
  config.blockDim = dim3(unsigned(mc.threads));
  config.dynamicSmemBytes = size_t(p.smem.total) * sizeof(float);
  config.stream = Runtime::get().stream();
  launch(p.block == 8 ? cluster_rows_kernel<8> : cluster_rows_kernel<4>, config, p.cluster,
         t.overlap_launches, p);

  // Kernel 2: a thread per gradient element where they fit in one wave of resident blocks, so
  // that each thread's partial loads are one batch of round trips, not several in a row.
  int64_t elements = 0;
  for (int k = 0; k < r.segments; ++k) elements += r.seg[k].count;
  for (int k = 0; k < r.rests; ++k) elements += r.rest[k].end - r.rest[k].begin;
  static const int64_t wave = [] {
    int per_sm = 0;
    CUDA_CHECK(
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, cluster_reduce_kernel, cluster::kThreads, 0));
    return int64_t(std::max(per_sm, 1)) * Runtime::get().properties().multiProcessorCount;
  }();
  const unsigned blocks =
      unsigned(std::min<int64_t>(wave, (elements + cluster::kThreads - 1) / cluster::kThreads));
  cudaLaunchConfig_t reduce{};
  reduce.gridDim = dim3(blocks);
  reduce.blockDim = dim3(unsigned(cluster::kThreads));
  reduce.stream = Runtime::get().stream();
  launch(cluster_reduce_kernel, reduce, 1, t.overlap_launches, r);
}

}  // namespace subliminal::cuda
