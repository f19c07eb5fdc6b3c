// apps/subliminal/blas_core.cpp — see blas_core.h.
#include "apps/subliminal/blas_core.h"

#include <unistd.h>

#include <cstdlib>
#include <set>
#include <string>

#include "ops/cpu/gemm_cpu.h"

namespace subliminal::app {

void ensure_blas_kernels(char** argv) {
  if (std::getenv("OPENBLAS_CORETYPE") || std::getenv("SUBLIMINAL_BLAS_REEXECUTED")) return;
  // Cores OpenBLAS falls back to when it does not recognise a CPU.
  static const std::set<std::string> generic = {"Prescott",   "Core2",   "Penryn",
                                                "Dunnington", "Nehalem", "Atom"};
  if (!generic.count(cpu::blas_core())) return;
  const char* better = nullptr;
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
    better = "SkylakeX";
  else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    better = "Haswell";
  if (!better) return;
  setenv("OPENBLAS_CORETYPE", better, 1);
  setenv("SUBLIMINAL_BLAS_REEXECUTED", "1", 1);  // never loop
  execv("/proc/self/exe", argv);
  // exec failed (no /proc?): carry on with the slower kernels.
  unsetenv("OPENBLAS_CORETYPE");
}

}  // namespace subliminal::app
