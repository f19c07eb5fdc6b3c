// apps/subliminal/blas_core.h — making sure OpenBLAS uses this CPU's vector units.
//
// OpenBLAS picks its kernels when the library loads, before main(), from the CPU model
// number. Releases older than the CPU (Debian 12 ships 0.3.21) do not know newer models —
// an Emerald Rapids Xeon (family 6, model 207) gets the SSE3 "Prescott" kernels, 4× slower
// than the AVX-512 ones. The only knob is the OPENBLAS_CORETYPE environment variable, read
// at load time; so when the user has not set it, OpenBLAS chose a generic core, and the CPU
// reports AVX2 or AVX-512, we set it and re-execute the program once.
#pragma once

namespace subliminal::app {

// Returns only if no re-exec is needed (or it failed, in which case we run as we are).
void ensure_blas_kernels(char** argv);

}  // namespace subliminal::app
