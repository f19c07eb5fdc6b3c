#!/usr/bin/env bash
# scripts/sanitize.sh — the CPU test suite under AddressSanitizer + UndefinedBehaviorSanitizer
# (any finding fails the run: UBSan does not recover), then, under ThreadSanitizer, the CPU
# backend's thread pool (tests/test_parallel) and our own kernels' device code run by host
# threads (tests/test_emulated): a CPU race check for both.
# CUDA off: the sanitizers watch host code.
set -euo pipefail
[ $# -eq 0 ] || { echo "sanitize.sh: takes no arguments (got '$1'); its first lines say what it does" >&2; exit 2; }
cd "$(dirname "$0")/.."
# -O1 (as the ASan documentation advises) and -g1 (line tables only) halve the compile time of
# -O2 -g: the build, a third of CI's time, went from 327 s to 191 s on 2 cores, for a suite that
# runs 81 s instead of 69; the reports still name each frame's function, file and line.
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1 -DNDEBUG" \
  -DSUBLIMINAL_SANITIZE=ON -DSUBLIMINAL_CUDA=OFF -DBUILD_TESTING=ON \
  -DCMAKE_COMPILE_WARNING_AS_ERROR="${SUBLIMINAL_WARNINGS_AS_ERRORS:-OFF}"
cmake --build build-asan
# The long end-to-end trainings (tests/test_e2e.cpp, which this build does not compile, and
# PaperMode) are left out: they exercise the same code as the shorter tests, three times slower
# under the sanitizers; the CLI tests still run the instrumented app binary. The emulated
# kernels run each step once, on several blocks (SIMT_SANITIZER_RUN: tests/simt/compare.h):
# their one-block runs and repeats touch part of the same memory or the same again, and took
# four fifths of this suite's time. The Python checks (the docs' references, the bench tools)
# run in the normal suite: nothing of theirs is instrumented, and the references check would
# miss the end-to-end tests this build leaves out.
SIMT_SANITIZER_RUN=1 ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir build-asan --output-on-failure -j "$(nproc)" -E "PaperMode|references|bench_inputs|bench_numbers|python_lint"
cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSUBLIMINAL_TSAN=ON -DSUBLIMINAL_CUDA=OFF -DBUILD_TESTING=ON \
  -DCMAKE_COMPILE_WARNING_AS_ERROR="${SUBLIMINAL_WARNINGS_AS_ERRORS:-OFF}" >/dev/null
cmake --build build-tsan --target test_emulated test_parallel
# The CPU backend's thread pool (engine/parallel.cpp): its hand-offs, nested and concurrent calls.
TSAN_OPTIONS=halt_on_error=1 build-tsan/tests/test_parallel
# A tile case for each way its blocks hand work to each other — split-K slices summed by the last
# one (forward, at the most slices, and both backward GEMMs, with the column and row sums that
# ride on them, and accumulating) or in bands, and column sums over more row tiles than the
# fix-up loads at once — and the slice-order check (the other cases differ from these in
# per-element epilogues, or hand nothing over, and run in the normal and ASan suites); and three
# fused steps: 2 layers, distillation (the rows' staging and warp shuffles, the frozen teacher,
# every phase), 3 layers (the rows' gradient below the logits after __syncwarp, the joined
# backward phase), and one with the tail's Adam on split-K tiles of W_0 and b_0, finished in
# bands, while the other blocks update the rest of the arena (the tiles' cases run both
# fix-ups). The whole fused suite takes minutes under TSan on 2 cores. And two cluster steps
# (tests/test_cluster_emulated.cpp), whose blocks hand activations and gradient parts to each
# other across cluster barriers: a 2-layer distillation and a 3-layer teacher (the exchange of
# H_1 and of G_1's parts); and the cluster step's tail, whose kernel 2 advances the step counters
# once every warp's loss watch has read them (a missing __syncthreads there raced unseen by the
# normal suite).
# Each step runs once, on several blocks (SIMT_SANITIZER_RUN: tests/simt/compare.h); the
# one-block runs and the repeated runs that compare bits are the normal suite's.
SIMT_SANITIZER_RUN=1 TSAN_OPTIONS=halt_on_error=1 build-tsan/tests/test_emulated \
  --gtest_filter='TileEmulated.ForwardBiasReluMaskSplitK:TileEmulated.ForwardMaxSplits:TileEmulated.BackwardInputGateMaskColumnSumsSplitK:TileEmulated.BackwardInputGateMaskInBands:TileEmulated.BackwardInputColumnSumsFiveRowTiles:TileEmulated.BackwardWeightRowSumsSplitK:TileEmulated.BackwardWeightAccumulatesSplitK:TileSplitK.*:*FusedEmulated*distill_2_layers*:*teacher_3_models*:FusedTail.AdamFollowsSplitAndPartialTilesOfW0:*ClusterEmulated.MatchesFloat64*distill_2_layers*:*ClusterEmulated.MatchesFloat64*teacher_odd_sizes*:*ClusterEmulated.EightByEight*teacher_aligned*:ClusterProducts.*:ClusterTail.DoesAdam*'
