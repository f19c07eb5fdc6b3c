#!/usr/bin/env bash
# scripts/setup.sh — installs everything subliminal needs to build, test and benchmark on a
# Debian/Ubuntu machine. Safe to run again: apt skips what is there.
#
#   scripts/setup.sh            build + test dependencies (compiler, CMake, OpenBLAS, zlib,
#                               GoogleTest, CLI11, nlohmann-json), the cudnn-frontend headers
#                               when a CUDA toolkit is present, and MNIST when it can be found
#                               or fetched
#   scripts/setup.sh --bench    also PyTorch from PyPI (into .venv, ~5 GB) and matplotlib, for
#                               bench/ and scripts/plot.py
#   scripts/setup.sh --fuzz     also clang/libFuzzer for tests/fuzz
set -euo pipefail
cd "$(dirname "$0")/.."

want_bench=0
want_fuzz=0
for arg in "$@"; do
  case "$arg" in
    --bench) want_bench=1 ;;
    --fuzz) want_fuzz=1 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option $arg (try --help)" >&2; exit 2 ;;
  esac
done

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "setup.sh: run as root or install sudo" >&2; exit 1; }
  sudo="sudo"
fi

packages=(cmake ninja-build g++ make pkg-config libopenblas-dev zlib1g-dev libgtest-dev libcli11-dev
          nlohmann-json3-dev python3 pyflakes3 curl)
[ "$want_bench" = 1 ] && packages+=(python3-venv python3-matplotlib)
[ "$want_fuzz" = 1 ] && packages+=(clang libclang-rt-dev)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup.sh: installing ${missing[*]}"
  $sudo apt-get update -qq
  # Through env: sudo's env_reset would drop a variable set before it.
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# PyTorch for the comparisons comes from PyPI (Debian's 1.13 is far older and slower), in a
# virtual environment of the project's own: bench/compare.py --python .venv/bin/python.
# What is installed is checked by importing it, not by .venv/bin/python existing: a run whose
# pip failed (offline) leaves the venv behind without torch, and the next run must install again.
bench_pip=(torch torchvision numpy pillow matplotlib)
bench_imports="torch, torchvision, numpy, PIL, matplotlib"  # the same packages, as python imports them
venv_has_bench() { [ -x .venv/bin/python ] && .venv/bin/python -c "import $bench_imports" >/dev/null 2>&1; }
if [ "$want_bench" = 1 ] && ! venv_has_bench; then
  echo "setup.sh: installing PyTorch from PyPI into .venv (a few GB)"
  python3 -m venv .venv
  if ! .venv/bin/pip install -q --upgrade pip || ! .venv/bin/pip install -q "${bench_pip[@]}" || ! venv_has_bench; then
    echo "setup.sh: could not install ${bench_pip[*]} into .venv (offline? see pip's messages above); run setup.sh --bench again" >&2
    exit 1
  fi
fi

# The cuDNN engine needs the cudnn-frontend headers (never committed; see third_party/README.md).
if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
  scripts/get_cudnn_frontend.sh || echo "setup.sh: cudnn-frontend headers unavailable; the cuDNN engine will be off"
fi

# MNIST: use what is there ($MNIST_DIR, ./data/mnist, torchvision's cache), else copy it from a
# folder beside the checkout (../shared/mnist, where this project's workplace keeps the canonical
# files), else try the public mirrors. Either way fetch_mnist.sh checks every file's SHA-256.
mnist_files=(train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte)
has_mnist() {  # DIR holds the four files, raw or .gz (what the app asks of a folder)
  for f in "${mnist_files[@]}"; do [ -e "$1/$f" ] || [ -e "$1/$f.gz" ] || return 1; done
}
has_gz_mnist() {  # DIR holds the four .gz files (the ones fetch_mnist.sh knows the checksums of)
  for f in "${mnist_files[@]}"; do [ -f "$1/$f.gz" ] || return 1; done
}
if [ -n "${MNIST_DIR:-}" ]; then
  has_mnist "$MNIST_DIR" ||
    echo "setup.sh: MNIST_DIR=$MNIST_DIR does not hold the four MNIST files; the app will refuse it (unset it, or fetch them with scripts/fetch_mnist.sh \"\$MNIST_DIR\")"
elif has_mnist data/mnist || { [ -n "${HOME:-}" ] && has_mnist "$HOME/.pytorch/MNIST_data/MNIST/raw"; }; then
  # (torchvision's cache under ~ is looked at only when HOME is set: set -u would stop the script)
  :
elif has_gz_mnist ../shared/mnist; then
  # Copied as they are; fetch_mnist.sh then checks each one's SHA-256 and fetches from the
  # mirrors any that does not match.
  mkdir -p data/mnist
  for f in "${mnist_files[@]}"; do cp -- "../shared/mnist/$f.gz" data/mnist/ || true; done
  scripts/fetch_mnist.sh data/mnist || echo "setup.sh: could not fetch MNIST (offline?); set MNIST_DIR to a folder with the IDX files"
else
  scripts/fetch_mnist.sh data/mnist || echo "setup.sh: could not fetch MNIST (offline?); set MNIST_DIR to a folder with the IDX files"
fi
echo "setup.sh: done"
