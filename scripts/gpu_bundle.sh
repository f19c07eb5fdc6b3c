#!/usr/bin/env bash
# scripts/gpu_bundle.sh — packs what a bare GPU machine lacks into .gpu/ (git-ignored), for a
# machine with CUDA, CMake and a compiler but no package registry (this project's lent
# H100/H200 machines). Run it here; carry .gpu (and third_party/cudnn-frontend) there; then
# scripts/gpu_check.sh uses it.
#   .gpu/deps/   Debian's OpenBLAS (+ libgfortran), CLI11, nlohmann-json and zlib headers,
#                unpacked with dpkg -x (nothing installed system-wide)
#   .gpu/mnist/  the MNIST .gz files from $MNIST_DIR (default ../shared/mnist)
set -euo pipefail
[ $# -eq 0 ] || { echo "gpu_bundle.sh: takes no arguments (got '$1'); its first lines say what it does" >&2; exit 2; }
cd "$(dirname "$0")/.."
mnist="${MNIST_DIR:-../shared/mnist}"
# Checked before anything is replaced: a failed bundle must not leave .gpu/ emptied.
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
  [ -f "$mnist/$f.gz" ] || { echo "gpu_bundle.sh: $mnist/$f.gz not found (set MNIST_DIR to the MNIST .gz files)" >&2; exit 2; }
done
debs=$(mktemp -d)
trap 'rm -rf "$debs"' EXIT
(cd "$debs" && apt-get download -qq libopenblas0-pthread libopenblas-pthread-dev libopenblas-dev libgfortran5 \
  libquadmath0 libcli11-dev nlohmann-json3-dev zlib1g-dev zlib1g 2>"$debs/apt.log") ||
  { echo "gpu_bundle.sh: apt-get download failed: $(tail -1 "$debs/apt.log") (run apt-get update; needs a package mirror)" >&2; exit 1; }
rm -rf .gpu/deps && mkdir -p .gpu/deps .gpu/mnist
for deb in "$debs"/*.deb; do dpkg -x "$deb" .gpu/deps; done
rm -rf .gpu/deps/usr/share/doc .gpu/deps/usr/share/man .gpu/deps/usr/share/lintian
# Only the shared OpenBLAS is needed; the static archive and the LAPACK copy are large.
find .gpu/deps -name 'libopenblas*.a' -delete -o -name 'liblapack*' -delete -o -name 'libblas*' -delete
# dpkg's alternatives would have made these links; -x does not run maintainer scripts.
lib=.gpu/deps/usr/lib/x86_64-linux-gnu
ln -sf openblas-pthread/libopenblas.so "$lib/libopenblas.so"
ln -sf openblas-pthread/libopenblas.so.0 "$lib/libopenblas.so.0"
ln -sf ../../../lib/x86_64-linux-gnu/libz.so.1 "$lib/libz.so"
rm -f "$lib/libz.a"
cp "$mnist"/*-ubyte.gz .gpu/mnist/
du -sh .gpu/deps .gpu/mnist
