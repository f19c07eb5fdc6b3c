// apps/subliminal/build_info.cpp — see build_info.h.
#include "apps/subliminal/build_info.h"

#include <sstream>

#include "ops/cpu/gemm_cpu.h"  // blas_config

#ifdef SUBLIMINAL_HAS_CUDA
#include <cuda_runtime_api.h>  // CUDART_VERSION: the toolkit the CUDA code was compiled with
#endif
#ifdef SUBLIMINAL_HAS_CUDNN
#include "ops/cudnn/cudnn_linear.h"  // library_version
#endif

namespace subliminal::app {
namespace {

std::string compiler() {
#if defined(__clang__)
  std::string version = "Clang " __clang_version__;  // ("14.0.6 ": it may end in a space)
#elif defined(__GNUC__)
  std::string version = "GCC " __VERSION__;
#else
  std::string version = "unknown compiler";
#endif
  while (!version.empty() && version.back() == ' ') version.pop_back();
  return version;
}

#ifdef SUBLIMINAL_HAS_CUDA
// "CUDA 13.0, architectures 80,90": the toolkit, and CMAKE_CUDA_ARCHITECTURES as the build set it
// ("80,90", "90a", "native", …; passed in by apps/CMakeLists.txt).
std::string cuda() {
  std::ostringstream s;
  s << "CUDA " << CUDART_VERSION / 1000 << "." << (CUDART_VERSION % 1000) / 10 << ", architectures "
    << SUBLIMINAL_CUDA_ARCHITECTURES;
  return s.str();
}
#endif

}  // namespace

BuildInfo build_info() {
  BuildInfo info;
  info.commit = kBuildCommit;
  info.build_type = SUBLIMINAL_BUILD_TYPE;
  info.compiler = compiler();
#ifdef SUBLIMINAL_HAS_CUDA
  info.cuda = cuda();
#endif
#ifdef SUBLIMINAL_HAS_CUDNN
  info.cudnn = cudnn::library_version();
#endif
  info.openblas = cpu::blas_config();
  return info;
}

std::string build_info_text(const BuildInfo& info) {
  std::ostringstream s;
  s << "subliminal " << info.commit << "\n"
    << "  build:    " << info.build_type << ", " << info.compiler << "\n"
    << "  CUDA:     " << (info.cuda.empty() ? "none (a CPU-only build)" : info.cuda) << "\n"
    << "  cuDNN:    " << (info.cudnn.empty() ? "none (built without the cuDNN engine)" : info.cudnn) << "\n"
    << "  OpenBLAS: " << info.openblas << "\n";
  return s.str();
}

nlohmann::json build_info_json(const BuildInfo& info) {
  return {{"commit", info.commit}, {"build_type", info.build_type}, {"compiler", info.compiler},
          {"cuda", info.cuda},     {"cudnn", info.cudnn},           {"openblas", info.openblas}};
}

}  // namespace subliminal::app
