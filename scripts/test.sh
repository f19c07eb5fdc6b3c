#!/usr/bin/env bash
# scripts/test.sh — builds subliminal (CPU backend; the CUDA code too when a CUDA toolkit is
# installed) and runs the whole test suite. GPU tests skip, saying why, without a GPU;
# end-to-end tests on real MNIST run when MNIST_DIR is set, or else on ./data/mnist where
# scripts/setup.sh put it.
set -euo pipefail
[ $# -eq 0 ] || { echo "test.sh: takes no arguments (got '$1'); its first lines say what it does" >&2; exit 2; }
cd "$(dirname "$0")/.."
# SUBLIMINAL_WARNINGS_AS_ERRORS=ON (CI sets it): a compiler warning, or a register spill ptxas
# reports, fails the build instead of scrolling past.
# The bench tools' tests run their PyTorch cases with the project's own PyTorch where
# `scripts/setup.sh --bench` installed it (.venv), else skip them, saying so. Named every time:
# the build folder would otherwise keep the python of its first configure.
python=$(command -v python3 || true)
if [ -x .venv/bin/python ] && .venv/bin/python -c "import torch, numpy" >/dev/null 2>&1; then
  python="$PWD/.venv/bin/python"
fi
if [ -z "${MNIST_DIR:-}" ]; then
  if [ -e data/mnist/train-images-idx3-ubyte.gz ] || [ -e data/mnist/train-images-idx3-ubyte ]; then
    MNIST_DIR="$PWD/data/mnist"
    export MNIST_DIR
    echo "test.sh: end-to-end tests on $MNIST_DIR (MNIST_DIR is not set)"
  else
    echo "test.sh: MNIST_DIR is not set and ./data/mnist holds no MNIST: the end-to-end tests skip"
  fi
fi
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_COMPILE_WARNING_AS_ERROR="${SUBLIMINAL_WARNINGS_AS_ERRORS:-OFF}" \
  ${python:+-DPython3_EXECUTABLE="$python"}
cmake --build build
ctest --test-dir build --output-on-failure -j "$(nproc)"
