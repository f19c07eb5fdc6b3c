#!/usr/bin/env bash
# scripts/fuzz.sh [SECONDS] — builds the libFuzzer targets with clang (CPU only) and fuzzes
# each for SECONDS (default 30) from its seed corpus. A crash input is written to
# tests/fuzz/regressions/ (ctest replays that folder from then on) and the script fails.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-30}"
# libFuzzer reads a time of 0, a negative one or text as "no limit": it would fuzz forever.
[[ $# -le 1 && "$seconds" =~ ^[1-9][0-9]*$ ]] ||
  { echo "fuzz.sh: usage: scripts/fuzz.sh [SECONDS] (a whole number ≥ 1; got '$*')" >&2; exit 2; }
log=$(mktemp)
CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSUBLIMINAL_FUZZ=ON \
  -DSUBLIMINAL_CUDA=OFF -DCMAKE_COMPILE_WARNING_AS_ERROR="${SUBLIMINAL_WARNINGS_AS_ERRORS:-OFF}" > "$log" 2>&1 ||
  { tail -20 "$log"; exit 1; }
cmake --build build-fuzz >> "$log" 2>&1 || { grep -E "error|warning" "$log" | head; exit 1; }
ctest --test-dir build-fuzz --output-on-failure   # saved regressions and the corpus still pass
for target in fuzz_idx fuzz_safetensors; do
  work=$(mktemp -d)
  cp tests/fuzz/corpus/$target/* "$work/"
  echo "fuzz.sh: $target for ${seconds}s"
  if ! build-fuzz/tests/fuzz/$target -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
      -artifact_prefix=tests/fuzz/regressions/$target- "$work" > "build-fuzz/$target.log" 2>&1; then
    tail -30 "build-fuzz/$target.log"
    echo "fuzz.sh: $target found a failure; its input is in tests/fuzz/regressions/" >&2
    exit 1
  fi
  grep -E "^#[0-9]+.*DONE|Done [0-9]+ runs" "build-fuzz/$target.log" | tail -1
  rm -rf "$work"
done
