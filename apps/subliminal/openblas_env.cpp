// apps/subliminal/openblas_env.cpp — see openblas_env.h.
#include "apps/subliminal/openblas_env.h"

#include <unistd.h>

#include <cstdlib>
#include <set>
#include <string>

#include "engine/storage.h"  // address_space_left
#include "ops/cpu/gemm_cpu.h"

namespace subliminal::app {
namespace {

// A core type for this CPU where OpenBLAS fell back to a generic one, else nullptr.
const char* better_core_type() {
  if (std::getenv("OPENBLAS_CORETYPE")) return nullptr;  // the user's choice
  // Cores OpenBLAS falls back to when it does not recognise a CPU.
  static const std::set<std::string> generic = {"Prescott",   "Core2",   "Penryn",
                                                "Dunnington", "Nehalem", "Atom"};
  if (!generic.count(cpu::blas_core())) return nullptr;
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
    return "SkylakeX";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
  return nullptr;
}

// True where OpenBLAS's own threads may have started under an address-space limit.
bool openblas_threads_under_a_limit() {
  const char* threads = std::getenv("OPENBLAS_NUM_THREADS");
  return address_space_left() != kNoAddressSpaceLimit && !(threads && std::string(threads) == "1");
}

}  // namespace

void prepare_openblas(char** argv) {
  if (std::getenv("SUBLIMINAL_BLAS_REEXECUTED")) return;  // never loop
  const char* core = better_core_type();
  const bool one_thread = openblas_threads_under_a_limit();
  if (!core && !one_thread) return;
  const char* found = std::getenv("OPENBLAS_NUM_THREADS");
  const std::string threads_found = found ? found : "";
  if (core) setenv("OPENBLAS_CORETYPE", core, 1);
  // (The engine sets OpenBLAS's threads to 1 itself, ops/cpu/gemm_cpu.cpp; this only stops them
  // from starting at load.)
  if (one_thread) setenv("OPENBLAS_NUM_THREADS", "1", 1);
  setenv("SUBLIMINAL_BLAS_REEXECUTED", "1", 1);
  execv("/proc/self/exe", argv);
  // exec failed (no /proc?): carry on as we are, with the environment we found.
  if (core) unsetenv("OPENBLAS_CORETYPE");
  if (one_thread && found) setenv("OPENBLAS_NUM_THREADS", threads_found.c_str(), 1);
  if (one_thread && !found) unsetenv("OPENBLAS_NUM_THREADS");
  unsetenv("SUBLIMINAL_BLAS_REEXECUTED");
}

}  // namespace subliminal::app
