#!/usr/bin/env bash
# scripts/gpu_bundle.sh — packs what a bare GPU machine lacks into .gpu/ (git-ignored), for a
# machine with CUDA, CMake and a compiler but no package registry (this project's lent
# H100/H200 machines). Run it here; carry .gpu (and third_party/cudnn-frontend) there; then
# scripts/gpu_check.sh uses it.
#   .gpu/deps/   Debian's OpenBLAS (+ libgfortran), CLI11, nlohmann-json and zlib headers,
#                unpacked with dpkg -x (nothing installed system-wide)
#   .gpu/mnist/  the MNIST .gz files from $MNIST_DIR (default ../shared/mnist)
set -euo pipefail
cd "$(dirname "$0")/.."
mnist="${MNIST_DIR:-../shared/mnist}"
rm -rf .gpu/deps .gpu/debs && mkdir -p .gpu/deps .gpu/debs .gpu/mnist
(cd .gpu/debs && apt-get download -qq libopenblas0-pthread libopenblas-pthread-dev libopenblas-dev libgfortran5 \
  libquadmath0 libcli11-dev nlohmann-json3-dev zlib1g-dev zlib1g 2>/dev/null)
for deb in .gpu/debs/*.deb; do dpkg -x "$deb" .gpu/deps; done
rm -rf .gpu/debs .gpu/deps/usr/share/doc .gpu/deps/usr/share/man .gpu/deps/usr/share/lintian
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
