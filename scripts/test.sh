#!/usr/bin/env bash
# scripts/test.sh — builds subliminal (CPU backend; the CUDA code too when a CUDA toolkit is
# installed) and runs the whole test suite. GPU tests skip, saying why, without a GPU;
# end-to-end tests on real MNIST run when MNIST_DIR is set.
set -euo pipefail
[ $# -eq 0 ] || { echo "test.sh: takes no arguments (got '$1'); its first lines say what it does" >&2; exit 2; }
cd "$(dirname "$0")/.."
# SUBLIMINAL_WARNINGS_AS_ERRORS=ON (CI sets it): a compiler warning, or a register spill ptxas
# reports, fails the build instead of scrolling past.
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_COMPILE_WARNING_AS_ERROR="${SUBLIMINAL_WARNINGS_AS_ERRORS:-OFF}"
cmake --build build
ctest --test-dir build --output-on-failure -j "$(nproc)"
