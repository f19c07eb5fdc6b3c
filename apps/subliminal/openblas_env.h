// apps/subliminal/openblas_env.h — the OpenBLAS settings that must be in place before the
// library loads, so before main() runs: the program sets them and re-executes itself once.
//
// 1. Its kernels. OpenBLAS picks them when it loads, from the CPU model number. Releases older
//    than the CPU (Debian 12 ships 0.3.21) do not know newer models — an Emerald Rapids Xeon
//    (family 6, model 207) gets the SSE3 "Prescott" kernels, 4× slower than the AVX-512 ones.
//    The only knob is OPENBLAS_CORETYPE, read at load time; so when the user has not set it,
//    OpenBLAS chose a generic core, and the CPU reports AVX2 or AVX-512, we set it.
// 2. Its threads, under an address-space limit (`ulimit -v` or `-d`, as batch schedulers set).
//    OpenBLAS starts a thread per core when it loads; each maps a 128 MiB work buffer
//    (ops/cpu/gemm_cpu.h) and, if the limit refuses it, retries forever — the process never
//    exits (its exit waits for those threads). The engine never uses them (its own threads cut
//    the products, engine/parallel.h), so under a limit we set OPENBLAS_NUM_THREADS=1: none start.
#pragma once

namespace subliminal::app {

// Returns only if no re-exec is needed (or it failed, in which case we run as we are).
void prepare_openblas(char** argv);

}  // namespace subliminal::app
