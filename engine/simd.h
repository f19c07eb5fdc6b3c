// engine/simd.h — one binary, the CPU's best vector instructions for the hot loops.
//
// SUBLIMINAL_HOT_LOOP marks a function (a plain loop the compiler vectorises) to be compiled
// three times — for AVX-512, for AVX2, and for the x86-64 baseline — with the copy that fits
// the CPU chosen once when the program loads (GCC's target_clones, through an ifunc).
// The build keeps its portable -O3 baseline: no -march flag, nothing that fails on an older
// CPU. Results do not depend on the copy: the build turns FMA contraction off
// (-ffp-contract=off, CMakeLists.txt) and these loops never reassociate, so each element is
// rounded exactly as in the baseline.
#pragma once

// GCC only: clang (the fuzzing build) cannot multiversion function templates yet, and the
// sanitizer builds want the plain code (under ThreadSanitizer the ifunc resolvers would run
// before the sanitizer's runtime is up, and the program crashes as it loads).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && \
    !defined(SUBLIMINAL_NO_MULTIVERSION) && !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
#define SUBLIMINAL_HOT_LOOP __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define SUBLIMINAL_HOT_LOOP
#endif
