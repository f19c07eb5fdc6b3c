// ops/cuda/cudnn_route.cpp — --gemm cudnn: the Linear GEMMs through the cuDNN engine
// (ops/cudnn), with every unsupported graph reported once and handed back to cuBLASLt.
//
// Finding on H100/H200 with cuDNN 9.14 (docs/CUDNN.md): the fused fp32 matmul graphs exist
// only as TF32 tensor-core engines, so this route asks cuDNN for TF32 math unless told not
// to (gemm::Settings::cudnn_tf32) — otherwise --gemm cudnn would be cuBLASLt in disguise.
#include <memory>
#include <set>

#include "engine/cuda/runtime.h"
#include "ops/cuda/gemm_cuda.h"

#ifdef SUBLIMINAL_HAS_CUDNN
#include "ops/cudnn/cudnn_linear.h"
#endif

namespace subliminal::cuda {

#ifdef SUBLIMINAL_HAS_CUDNN
namespace {

struct CudnnRoute {
  std::unique_ptr<cudnn::Engine> engine;
  std::set<std::string> fallbacks;
};

// Set once the first cuDNN GEMM has created the route; null while none has (a CPU run).
CudnnRoute* g_route = nullptr;

CudnnRoute& route() {
  static CudnnRoute* r = [] {
    auto* created = new CudnnRoute;  // lives as long as the runtime
    created->engine = std::make_unique<cudnn::Engine>(Runtime::get().stream());
    return g_route = created;
  }();
  return *r;
}

cudnn::Options options() { return {gemm::settings().cudnn_tf32 || gemm::settings().tf32}; }

bool note(bool ran, const char* op, const gemm::Dims& d) {
  if (!ran)
    route().fallbacks.insert(std::string("cuDNN cannot run ") + op + " (N=" + std::to_string(d.models) +
                             ", B=" + std::to_string(d.batch) + ", I=" + std::to_string(d.in) +
                             ", O=" + std::to_string(d.out) + ") here: cuBLASLt instead");
  return ran;
}

}  // namespace

bool cudnn_linear_forward(const float* x, const float* w, const float* bias, bool relu, float* y,
                          gemm::Dims d) {
  return note(route().engine->linear_forward(x, w, bias, y, d.models, d.batch, d.in, d.out, relu, options()),
              relu ? "linear_forward+relu" : "linear_forward", d);
}

bool cudnn_linear_backward_input(const float* dy, const float* w, const float* prev_output, float* dx,
                                 float* dbias_prev, gemm::Dims d) {
  return note(route().engine->linear_backward_input(dy, w, prev_output, dx, dbias_prev, d.models, d.batch,
                                                    d.in, d.out, options()),
              dbias_prev ? "linear_backward_input+dbias" : "linear_backward_input", d);
}

bool cudnn_linear_backward_weight(const float* dy, const float* x, float* dw, bool accumulate, float* dbias,
                                  gemm::Dims d) {
  return note(route().engine->linear_backward_weight(dy, x, dw, dbias, accumulate ? 1.0f : 0.0f, d.models,
                                                     d.batch, d.in, d.out, options()),
              dbias ? "linear_backward_weight+dbias" : "linear_backward_weight", d);
}

std::string cudnn_report() {
  std::string r;
  // No route yet means no cuDNN GEMM ran: nothing to report, and creating one now would
  // ask for a GPU that a CPU run may not have.
  if (!g_route) return r;
  for (const std::string& line : g_route->fallbacks) r += line + "\n";
  return r;
}

#else  // built without the cuDNN engine: nothing routes here

bool cudnn_linear_forward(const float*, const float*, const float*, bool, float*, gemm::Dims) {
  return false;
}
bool cudnn_linear_backward_input(const float*, const float*, const float*, float*, float*, gemm::Dims) {
  return false;
}
bool cudnn_linear_backward_weight(const float*, const float*, float*, bool, float*, gemm::Dims) {
  return false;
}
std::string cudnn_report() { return ""; }

#endif

}  // namespace subliminal::cuda
